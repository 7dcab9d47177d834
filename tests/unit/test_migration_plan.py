"""Migration planning on the controller: instance and subnet moves, confirm and revert."""

from __future__ import annotations

import importlib

import pytest
from test_plan import GROUPS, example, hosts

mp = importlib.import_module(
    "ansible_collections.multicloud.migration.plugins.module_utils.migration_plan"
)
PlanError = mp.PlanError

RUNNING = {
    "mcm-a1": [{"name": "acme-web1", "state": "running"}, {"name": "acme-db1", "state": "running"}],
    "mcm-a2": [{"name": "acme-web2", "state": "running"}],
    "mcm-b1": [{"name": "globex-app1", "state": "running"}],
}


def instance(**kwargs):
    args = {"instance": "web1", "to": "cloud_b", **kwargs}
    return mp.instance_migration(example(), hosts(), {}, RUNNING, **args)


def subnet(name: str, **kwargs):
    return mp.subnet_migration(example(), hosts(), {}, RUNNING, subnet=name, to="cloud_b",
                               **kwargs)  # fmt: skip


def test_instance_move_keeps_mac_and_ip_and_plans_each_step():
    m = instance(mode="cold")
    [move] = m["moves"]
    assert (move["source"], move["destination"], move["mode"]) == ("mcm-a1", "mcm-b1", "cold")
    assert move["ip"] == "10.10.1.10" and move["mac"].startswith("52:54:00")
    assert move["destination_address"] == "172.30.0.21"  # WAN between clouds
    assert m["record"] == {"vms": {"acme/web1": "mcm-b1"}}
    assert m["revert_record"] == {"vms": {"acme/web1": None}}
    assert m["placement"]["mid"]["stretch"]["acme/web"] == ["mcm-a1", "mcm-a2"]
    assert set(m["plans"]) == {"before", "mid", "final"}


def test_a_migration_plans_only_its_own_tenant():
    """Another tenant's networks (maybe mid-migration themselves) are never touched."""
    m = instance()
    for step in m["plans"].values():
        for host_plan in step.values():
            assert host_plan["tenants"] == ["acme"], host_plan["tenants"]


def test_instance_errors_name_what_to_fix():
    with pytest.raises(PlanError, match="not a cloud of the inventory"):
        instance(to="cloud_z")
    with pytest.raises(PlanError, match="no present VM 'nope'"):
        instance(instance="nope")
    with pytest.raises(PlanError, match="not a host of cloud cloud_b"):
        instance(host="mcm-a2")
    with pytest.raises(PlanError, match="not running on any cloud host"):
        mp.instance_migration(example(), hosts(), {}, {}, instance="web1", to="cloud_b")
    assert instance(to="cloud_a")["noop"]


def test_subnet_by_cidr_name_or_tenant_and_name():
    by_key = subnet("acme/web")
    assert by_key["object"] == "acme/web" and len(by_key["moves"]) == 2
    assert subnet("web", tenant="acme")["object"] == "acme/web"  # AWX asks them apart
    with pytest.raises(PlanError, match="give the tenant too"):
        subnet("web")
    # 10.10.1.0/24 is acme/web (cloud_a) and globex/app (already on cloud_b): only one
    # of them can be moved to cloud_b
    assert subnet("10.10.1.0/24")["object"] == "acme/web"
    towards_a = mp.subnet_migration(example(), hosts(), {}, RUNNING, subnet="10.10.1.0/24",
                                    to="cloud_a")  # fmt: skip
    assert towards_a["object"] == "globex/app"
    # run again after the move: both are on cloud_b, nothing moves
    moved = {
        "mcm-a1": [{"name": "acme-db1", "state": "running"}],
        "mcm-b1": [
            {"name": n, "state": "running"} for n in ("globex-app1", "acme-web1", "acme-web2")
        ],
    }
    placed = {"networks": {"acme/web": "cloud_b"}, "vms": {}}
    again = mp.subnet_migration(example(), hosts(), placed, moved, subnet="10.10.1.0/24",
                                to="cloud_b")  # fmt: skip
    assert again["noop"] and again["moves"] == []


def test_subnet_move_records_the_network_and_lets_vms_follow():
    m = subnet("acme/web")
    assert m["record"] == {"networks": {"acme/web": "cloud_b"},
                           "vms": {"acme/web1": None, "acme/web2": None}}  # fmt: skip
    assert m["new_network_node"] == "mcm-b1" and m["network"]["network_node"] == "mcm-a1"
    assert m["placement"]["overlap"]["gateways"] == {"acme/web": ["cloud_a"]}


def _row(m: dict, status: str = "finished", mode: str = "cold") -> dict:
    return {
        "id": 7, "kind": m["kind"], "object": m["object"], "tenant": m["tenant"],
        "source": m["source"], "destination": m["destination"], "status": status,
        "placement_before": m["revert_record"], "vms": m["moves"],
        "results": [{"vm": x["key"], "mode": mode, "status": "moved"} for x in m["moves"]],
    }  # fmt: skip


def test_reversal_of_a_cold_instance_move():
    m = instance(mode="cold")
    after_move = {
        "mcm-a1": [{"name": "acme-web1", "state": "shutoff"}, RUNNING["mcm-a1"][1]],
        "mcm-a2": RUNNING["mcm-a2"],
        "mcm-b1": [*RUNNING["mcm-b1"], {"name": "acme-web1", "state": "running"}],
    }  # fmt: skip
    r = mp.migration_reversal(example(), hosts(), m["record"], after_move, row=_row(m))
    [vm] = r["vms"]
    assert (vm["source_state"], vm["destination_state"]) == ("shutoff", "running")
    assert r["remove"] == {
        "confirm": {"mcm-a1": [{"name": "acme-web1", "state": "absent"}]},
        "revert": {"mcm-b1": [{"name": "acme-web1", "state": "absent"}]},
    }
    assert r["placement"]["after"]["vms"] == {} and r["live_moved"] == []
    assert "start the source copy on mcm-a1 (shutoff)" in r["lines"]["revert"][0]
    assert r["plans"]["after"]["mcm-b1"]["tenants"] == ["acme"]
    # after a revert that stopped half-way the destination copy is gone: nothing to remove
    half = {**after_move, "mcm-b1": RUNNING["mcm-b1"]}
    again = mp.migration_reversal(example(), hosts(), {}, half, row=_row(m))
    assert again["remove"]["revert"] == {}


def test_reversal_of_a_subnet_brings_its_network_home():
    m = subnet("acme/web", mode="cold")
    r = mp.migration_reversal(example(), hosts(), m["record"], RUNNING, row=_row(m))
    assert (
        r["network"]["now"]["home"] == "cloud_b" and r["network"]["now"]["network_node"] == "mcm-b1"
    )
    assert r["network"]["after"]["home"] == "cloud_a"
    assert r["network"]["after"]["network_node"] == "mcm-a1"
    assert r["placement"]["after"]["networks"] == {}
    assert any("DHCP and gateway cloud_b -> cloud_a" in line for line in r["lines"]["revert"])


def test_live_moves_are_not_reverted():
    m = instance()
    r = mp.migration_reversal(example(), hosts(), m["record"], RUNNING,
                              row=_row(m, status="completed", mode="live-block"))  # fmt: skip
    assert r["vms"] == [] and r["live_moved"] == ["acme/web1"]


def test_groups_fixture_is_the_lab_shape():
    assert sorted(GROUPS) == ["cloud_a", "cloud_b"]


def test_check_mode_estimate_lines():
    flt = importlib.import_module(
        "ansible_collections.multicloud.migration.plugins.filter.migration"
    )
    web1 = {
        "mode": "live-block",
        "memory_bytes": 128 << 20,
        "disk_bytes": 4 << 20,
        "estimated_seconds": 1.32,
        "bandwidth_mib": 100,
        "bandwidth_assumed": True,
    }
    web2 = {
        "mode": "cold",
        "memory_bytes": 0,
        "disk_bytes": 64 << 20,
        "estimated_seconds": 0.64,
        "bandwidth_mib": 100,
        "bandwidth_assumed": False,
    }
    planned = [
        {"item": {"key": "acme/web1"}, "plan": web1},
        {"item": {"key": "acme/web2"}, "plan": web2},
        {"item": {"key": "acme/db1"}, "skipped": True},
    ]  # fmt: skip
    head, web1, web2, total = flt.migration_estimate(planned)
    assert head.startswith("check mode: nothing was changed")
    assert web1.startswith("  acme/web1: live-block, 132.0 MiB (memory 128.0, disks 4.0)")
    assert "about 1.3 s at 100 MiB/s (bandwidth assumed" in web1
    assert web2.endswith("in about 0.6 s at 100 MiB/s")
    assert total == "  total: about 2.0 s one VM after the other"


def test_adopted_vms_are_not_migrated():
    spec = example()
    web = spec["tenants"][0]["networks"][0]
    web["vms"][0]["adopted"] = True  # web1: a domain the collection did not create
    with pytest.raises(PlanError, match="web1 is adopted"):
        mp.instance_migration(spec, hosts(), {}, RUNNING, instance="web1", to="cloud_b")
    with pytest.raises(PlanError, match=r"adopted VM\(s\) web1"):
        mp.subnet_migration(spec, hosts(), {}, RUNNING, subnet="acme/web", to="cloud_b")
