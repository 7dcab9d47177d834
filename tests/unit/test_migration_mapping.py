"""Mapping and conversion in the migration plan (issue #9): network_map, storage_map and
disk_format of migrate_instance.yml / migrate_subnet.yml, the VM's new address, what the
placement record keeps (``layout``) and how the hosts' plans and create_infra see it."""

from __future__ import annotations

import copy

import plan
import pytest
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from test_docs import role_options
from test_migration_plan import RUNNING, PlanError, mp
from test_plan import example, hosts, net

TO_DB = {"acme/web": "acme/db"}
FAST = {"mcm": {"pool": "mcm-fast", "path": "/var/lib/mcm/fast"}}


def instance(spec=None, placement=None, running=None, **kwargs):
    args = {"instance": "web1", "to": "cloud_b", **kwargs}
    return mp.instance_migration(spec or example(), hosts(), placement or {},
                                 running or RUNNING, **args)  # fmt: skip


def findings(names: dict[str, list[str]]) -> dict[str, list[dict]]:
    """vm_info's findings: every domain running where ``names`` says."""
    return {host: [{"name": n, "state": "running"} for n in doms] for host, doms in names.items()}


def dnsmasq_hosts(host_plan: dict, namespace: str) -> list[dict]:
    [instance_] = [d for d in host_plan["dnsmasq"] if d["name"] == namespace]
    return instance_["hosts"]


def vm_config(vm_plan: dict, domain: str) -> dict:
    [config] = [v for v in vm_plan["vms"] if v["name"] == domain]
    return config


def test_network_map_moves_the_nic_keeps_the_mac_and_takes_a_free_address():
    m = instance(network_map=TO_DB, storage_map=FAST, disk_format="raw")
    [move] = m["moves"]
    web1 = next(v for v in net(example(), "acme", "web")["vms"] if v["name"] == "web1")
    db = net(example(), "acme", "db")
    assert move["mac"] == web1["mac"]
    # db 10.10.2.0/24: gateway .1, DHCP server .254, range .128-.253: .2 is the lowest free
    assert (move["network"], move["ip"]) == ("db", "10.10.2.2")
    assert (move["source_network"], move["source_ip"]) == ("web", "10.10.1.10")
    assert move["destination_bridge"] == db["bridge"] and move["destination_network"] == "db"
    pool = (move["destination_pool"], move["destination_pool_path"])
    assert pool == ("mcm-fast", "/var/lib/mcm/fast")
    assert move["disk_format"] == "raw"
    assert move["mode"] == "cold" and m["mode"] == "cold", "auto picks cold for a mapping"
    assert move["mapping"] == [
        "network acme/web -> acme/db (ip 10.10.1.10 -> 10.10.2.2)",
        "pool mcm -> mcm-fast (created at /var/lib/mcm/fast if missing)",
        "disk qcow2 -> raw",
    ]
    laid = {"network": "db", "ip": "10.10.2.2", "pool": "mcm-fast",
            "pool_path": "/var/lib/mcm/fast", "disk_format": "raw"}  # fmt: skip
    assert m["record"] == {"vms": {"acme/web1": "mcm-b1"},
                           "layout": {"acme/web1": {"mcm-b1": laid}}}  # fmt: skip
    assert m["start_record"] == {"layout": {"acme/web1": {"mcm-b1": laid}}}
    assert m["revert_record"] == {"vms": {"acme/web1": None}, "layout": {"acme/web1": None}}
    # the flow verifies the VM from the DHCP namespace of its new network
    assert m["network"]["key"] == "acme/db" and m["network"]["dhcp_namespace"] == "qdhcp-acme.db"


def test_the_mapped_network_serves_the_new_address_and_the_old_one_lets_go():
    m = instance(network_map=TO_DB)
    final = m["plans"]["final"]["mcm-a1"]  # cloud_a's network node serves web and db
    assert {"mac": m["moves"][0]["mac"], "ip": "10.10.2.2", "name": "web1"} in dnsmasq_hosts(
        final, "qdhcp-acme.db"
    )
    assert "web1" not in [h["name"] for h in dnsmasq_hosts(final, "qdhcp-acme.web")]
    # the destination host carries the mapped network's segment
    db_bridge = net(example(), "acme", "db")["bridge"]
    assert db_bridge in [link["name"] for link in m["plans"]["final"]["mcm-b1"]["links"]]
    # while the VM still runs on its source, that host keeps its old network
    web_bridge = net(example(), "acme", "web")["bridge"]
    assert web_bridge in [link["name"] for link in m["plans"]["mid"]["mcm-a1"]["links"]]


def test_create_infra_after_the_move_keeps_the_vm_where_and_as_it_landed():
    m = instance(network_map=TO_DB, storage_map=FAST, disk_format="vmdk")
    record = plan.normalize_placement(m["record"])
    moved = {"mcm-a1": ["acme-db1"], "mcm-a2": ["acme-web2"],
             "mcm-b1": ["globex-app1", "acme-web1"]}  # fmt: skip
    vms = plan.vm_plans(example(), hosts(), moved, placement=record)
    config = vm_config(vms["mcm-b1"], "acme-web1")
    assert config["bridge"] == net(example(), "acme", "db")["bridge"]
    assert config["metadata"] == {"tenant": "acme", "network": "db", "vm": "web1"}
    assert (config["pool"], config["pool_path"], config["disk_format"]) == (
        "mcm-fast", "/var/lib/mcm/fast", "vmdk")  # fmt: skip
    assert not any(v["name"] == "acme-web1" for h in ("mcm-a1", "mcm-a2") for v in vms[h]["vms"])
    # a later plain migration finds it on db, in its pool, and keeps both
    again = instance(placement=record, running=findings(moved), to="cloud_a", host="mcm-a2")
    [move] = again["moves"]
    assert (move["network"], move["ip"], move["mode"]) == ("db", "10.10.2.2", "auto")
    assert (move["pool"], move["pool_path"]) == ("mcm-fast", "/var/lib/mcm/fast")
    assert "disk_format" not in move and "destination_bridge" not in move
    assert again["record"]["layout"] == {"acme/web1": {"mcm-a2": {
        "network": "db", "ip": "10.10.2.2", "pool": "mcm-fast", "pool_path": "/var/lib/mcm/fast",
        "disk_format": "vmdk"}}}  # fmt: skip
    # mapped back to its spec layout: nothing left to record
    home = instance(placement=record, running=findings(moved), to="cloud_a", host="mcm-a2",
                    network_map={"acme/db": "acme/web"}, storage_map={"mcm-fast": "mcm"},
                    disk_format="qcow2")  # fmt: skip
    [move] = home["moves"]
    assert (move["network"], move["ip"]) == ("web", "10.10.1.10"), "its own address is free again"
    assert home["record"]["layout"] == {"acme/web1": None}
    assert home["revert_record"]["layout"]["acme/web1"]["mcm-b1"]["disk_format"] == "vmdk"


def test_the_plans_of_a_mapped_vm_pass_the_roles_argument_specs():
    m = instance(network_map=TO_DB, storage_map=FAST, disk_format="raw")
    record = plan.normalize_placement(m["record"])
    moved = {"mcm-a1": ["acme-db1"], "mcm-a2": ["acme-web2"], "mcm-b1": ["acme-web1"]}
    vms = plan.vm_plans(example(), hosts(), moved, placement=record)
    assert vm_config(vms["mcm-b1"], "acme-web1")["disk_format"] == "raw"
    validator = ArgumentSpecValidator(role_options("vm_provision"))
    for vm_plan in vms.values():
        assert not validator.validate({"vm_provision_plan": vm_plan}).error_messages
    validator = ArgumentSpecValidator(role_options("tenant_infra"))
    for step in ("mid", "final"):
        for host_plan in m["plans"][step].values():
            assert not validator.validate({"tenant_infra_plan": host_plan}).error_messages


def test_a_failed_move_keeps_the_layout_of_the_host_the_vm_stayed_on():
    """The start record adds the destination's layout to the VM's entry: whichever host the
    VM ends up recorded on, its layout there is known."""
    first = instance(network_map=TO_DB, disk_format="raw")
    record = plan.normalize_placement(first["record"])
    moved = {"mcm-a1": ["acme-db1"], "mcm-a2": ["acme-web2"], "mcm-b1": ["acme-web1"]}
    second = instance(placement=record, running=findings(moved), to="cloud_a", host="mcm-a2",
                      disk_format="qcow2")  # fmt: skip
    start = second["start_record"]["layout"]["acme/web1"]
    assert start["mcm-b1"]["disk_format"] == "raw" and start["mcm-a2"] == {
        "network": "db", "ip": "10.10.2.2"}  # fmt: skip
    failed = plan.normalize_placement({**record, "layout": second["start_record"]["layout"]})
    vms = plan.vm_plans(example(), hosts(), moved, placement=failed)
    assert vm_config(vms["mcm-b1"], "acme-web1")["disk_format"] == "raw"


def test_new_ip_is_checked_against_the_mapped_subnet():
    [move] = instance(network_map=TO_DB, new_ip="10.10.2.20")["moves"]
    assert move["ip"] == "10.10.2.20"
    for wrong, why in (("10.10.1.20", "outside subnet"), ("10.10.2.1", "gateway"),
                       ("10.10.2.254", "DHCP server"), ("10.10.2.130", "DHCP range"),
                       ("10.10.2.0", "network or broadcast"), ("nope", "not an IPv4")):  # fmt: skip
        with pytest.raises(PlanError, match=why):
            instance(network_map=TO_DB, new_ip=wrong)
    with pytest.raises(PlanError, match="new_ip is for a VM network_map moves"):
        instance(new_ip="10.10.2.20")


def test_an_address_inside_the_mapped_subnet_is_kept_when_free():
    db = net(example(), "acme", "db")
    assert mp.choose_ip(db, {"name": "x", "ip": "10.10.2.50"}) == "10.10.2.50"
    assert mp.choose_ip(db, {"name": "x", "ip": "10.10.2.130"}) == "10.10.2.2", "in the range"
    assert mp.choose_ip(db, {"name": "x", "ip": None}) is None, "a dynamic VM stays dynamic"
    taken = copy.deepcopy(db)
    taken["vms"].append({"name": "y", "ip": "10.10.2.2", "state": "present"})
    assert mp.choose_ip(taken, {"name": "x", "ip": "10.10.1.9"}) == "10.10.2.3"


def test_maps_that_cannot_be_applied_are_refused_with_what_to_do():
    with pytest.raises(PlanError, match="acme/nope is not a present network of tenant acme "
                                        r"\(its networks: db, web\)"):  # fmt: skip
        instance(network_map={"acme/web": "acme/nope"})
    with pytest.raises(PlanError, match="crosses tenants"):
        instance(network_map={"acme/web": "globex/app"})
    with pytest.raises(PlanError, match="applied by a cold migration only, not mode=live-block"):
        instance(network_map=TO_DB, mode="live-block")
    with pytest.raises(PlanError, match="applied by a migration to another host"):
        instance(to="cloud_a", host="mcm-a1", disk_format="raw")
    with pytest.raises(PlanError, match="disk_format='qed' is not one of qcow2, raw, vmdk, vhdx"):
        instance(disk_format="qed")
    no_dhcp = example()
    net(no_dhcp, "acme", "db")["dhcp"]["enabled"] = False
    with pytest.raises(PlanError, match="acme/db has no DHCP"):
        instance(spec=no_dhcp, network_map=TO_DB)
    with pytest.raises(PlanError, match=r"network_map is refused for migrate_subnet\.yml"):
        mp.subnet_migration(example(), hosts(), {}, RUNNING, subnet="acme/web", to="cloud_b",
                            network_map=TO_DB)  # fmt: skip
    # a map may name other networks of the tenant; a bare name is one of the VM's tenant
    [move] = instance(network_map={"web": "db", "acme/db": "acme/web"})["moves"]
    assert move["network"] == "db"
    assert instance(network_map={"globex/app": "globex/app"})["moves"][0]["network"] == "web"


@pytest.mark.parametrize(
    ("given", "parsed"),
    [
        ("mcm=mcm-fast", {"mcm": {"pool": "mcm-fast", "path": None}}),
        ("mcm=fast:/var/lib/fast, /var/lib/mcm/vms/=other",
         {"mcm": {"pool": "fast", "path": "/var/lib/fast"},
          "/var/lib/mcm/vms": {"pool": "other", "path": None}}),
        ({"mcm": "fast"}, {"mcm": {"pool": "fast", "path": None}}),
        ({"mcm": {"pool": "fast", "path": "/srv/fast/"}},
         {"mcm": {"pool": "fast", "path": "/srv/fast"}}),
        ("", {}),
        (None, {}),
    ],
)  # fmt: skip
def test_storage_map_forms(given, parsed):
    assert mp.parse_storage_map(given) == parsed


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ("mcm", "is not SOURCE=DESTINATION"),
        ({"mcm": "a/b"}, "is not a pool name"),
        ({"mcm": {"pool": "fast", "path": "relative"}}, "is not an absolute directory"),
        ({"mcm": {"pool": "fast", "size": 3}}, "unknown key"),
        ({"no pool!": "fast"}, "neither a pool name nor an absolute path"),
        (["mcm"], "a mapping of source pool"),
    ],
)
def test_storage_map_mistakes(given, problem):
    with pytest.raises(PlanError, match=problem):
        mp.parse_storage_map(given)


def test_network_map_forms():
    parsed = mp.parse_network_map("acme/web=acme/db, web2=db2")
    assert parsed == {"acme/web": "acme/db", "web2": "db2"}
    assert mp.parse_network_map("") == {} and mp.parse_network_map(None) == {}
    with pytest.raises(PlanError, match="network_map: a mapping"):
        mp.parse_network_map({"acme/web": ""})


def test_storage_map_matches_the_pool_or_its_directory_and_spares_shared_disks():
    [move] = instance(storage_map={"/var/lib/mcm/vms": "fast"})["moves"]
    assert move["destination_pool"] == "fast" and "destination_pool_path" not in move
    assert move["mode"] == "cold"
    [move] = instance(storage_map={"other": "fast"})["moves"]
    assert "destination_pool" not in move and move["mode"] == "auto", "not this VM's pool"
    shared = example()
    web1 = next(v for v in net(shared, "acme", "web")["vms"] if v["name"] == "web1")
    web1.update(storage="shared", storage_pool="mcm-shared", storage_path="/var/lib/mcm/shared/vms")
    with pytest.raises(PlanError, match="keeps its disk on shared storage"):
        instance(spec=shared, storage_map={"mcm-shared": "fast"})
    with pytest.raises(PlanError, match="keeps its disk on shared storage"):
        instance(spec=shared, disk_format="raw")
    [move] = instance(spec=shared, network_map=TO_DB)["moves"]
    assert move["mode"] == "cold" and move["pool"] == "mcm-shared", "a shared disk stays"


def test_subnet_move_converts_every_disk_and_pins_the_vms_it_converted():
    m = mp.subnet_migration(example(), hosts(), {}, RUNNING, subnet="acme/web", to="cloud_b",
                            disk_format="raw", storage_map="mcm=fast")  # fmt: skip
    assert [(x["vm"], x["mode"], x["disk_format"], x["destination_pool"]) for x in m["moves"]] == [
        ("web1", "cold", "raw", "fast"), ("web2", "cold", "raw", "fast")]  # fmt: skip
    assert m["mode"] == "cold"
    laid = {"pool": "fast", "disk_format": "raw"}
    assert m["record"]["vms"] == {"acme/web1": "mcm-b1", "acme/web2": "mcm-b1"}
    assert m["record"]["layout"] == {"acme/web1": {"mcm-b1": laid}, "acme/web2": {"mcm-b1": laid}}
    assert m["start_record"]["layout"] == m["record"]["layout"]
    with pytest.raises(PlanError, match="applied by a cold migration only"):
        mp.subnet_migration(example(), hosts(), {}, RUNNING, subnet="acme/web", to="cloud_b",
                            disk_format="raw", mode="live-block")  # fmt: skip
    plain = mp.subnet_migration(example(), hosts(), {}, RUNNING, subnet="acme/web", to="cloud_b")
    assert "layout" not in plain["record"] and not plain["start_record"]


def test_reverting_a_mapped_move_brings_the_vm_back_to_its_network_and_address():
    m = instance(network_map=TO_DB, storage_map=FAST)
    [move] = m["moves"]
    row = {"id": 1, "kind": "instance", "object": "acme/web1", "tenant": "acme",
           "status": "finished", "vms": m["moves"], "placement_before": m["revert_record"],
           "results": [{"vm": "acme/web1", "status": "moved", "mode": "cold"}]}  # fmt: skip
    found = {"mcm-a1": [{"name": "acme-web1", "state": "shutoff"}],
             "mcm-b1": [{"name": "acme-web1", "state": "running"}]}  # fmt: skip
    rev = mp.migration_reversal(example(), hosts(), m["record"], found, row=row)
    [vm] = rev["vms"]
    assert (vm["network"], vm["ip"], vm["mac"]) == ("web", "10.10.1.10", move["mac"])
    assert rev["network"]["after"]["dhcp_namespace"] == "qdhcp-acme.web"
    assert "acme/web1" not in rev["placement"]["after"]["layout"]
    a1 = rev["plans"]["after"]["mcm-a1"]
    assert "web1" in [h["name"] for h in dnsmasq_hosts(a1, "qdhcp-acme.web")]


def test_layout_applies_on_the_pinned_host_only_and_names_what_is_wrong():
    laid = {"acme/web1": {"mcm-b1": {"network": "db", "ip": "10.10.2.2", "disk_format": "raw"}}}
    pinned = plan.apply_layout(example(), {"vms": {"acme/web1": "mcm-b1"}, "layout": laid})
    db = next(n for n in pinned["tenants"][0]["networks"] if n["name"] == "db")
    [web1] = [v for v in db["vms"] if v["name"] == "web1"]
    assert (web1["ip"], web1["disk_format"], web1["network"], web1["mapped_from"]) == (
        "10.10.2.2", "raw", "db", "web")  # fmt: skip
    assert web1["fqdn"] == "web1.db.acme"
    elsewhere = plan.apply_layout(example(), {"vms": {"acme/web1": "mcm-a2"}, "layout": laid})
    assert "web1" in [v["name"] for v in net(elsewhere, "acme", "web")["vms"]]
    spec = example()
    before = copy.deepcopy(spec)
    plan.apply_layout(spec, {"vms": {"acme/web1": "mcm-b1"}, "layout": laid})
    assert spec == before, "the spec given is not changed"
    gone = example()
    net(gone, "acme", "db")["state"] = "absent"
    with pytest.raises(plan.PlanError, match=r"acme/db .* not a present network of the spec"):
        plan.apply_layout(gone, {"vms": {"acme/web1": "mcm-b1"}, "layout": laid})
    clash = example()
    db1 = next(v for v in net(clash, "acme", "db")["vms"] if v["name"] == "db1")
    db1["ip"] = "10.10.2.2"
    with pytest.raises(plan.PlanError, match="collides with vm db1"):
        plan.apply_layout(clash, {"vms": {"acme/web1": "mcm-b1"}, "layout": laid})
    with pytest.raises(plan.PlanError, match=r"placement\.layout: acme/web1: a mapping of host"):
        plan.normalize_placement({"layout": {"acme/web1": "mcm-b1"}})
    assert plan.normalize_placement({"layout": {"acme/web1": None}})["layout"] == {}


def test_the_spec_follow_up_wins_for_the_address():
    """An operator who moved the VM into its new network in the spec gives its address."""
    spec = example()
    web, db = net(spec, "acme", "web"), net(spec, "acme", "db")
    [web1] = [v for v in web["vms"] if v["name"] == "web1"]
    web["vms"].remove(web1)
    db["vms"].append({**web1, "network": "db", "ip": "10.10.2.30"})
    laid = {"acme/web1": {"mcm-b1": {"network": "db", "ip": "10.10.2.2"}}}
    carried = plan.apply_layout(spec, {"vms": {"acme/web1": "mcm-b1"}, "layout": laid})
    [moved] = [v for v in net(carried, "acme", "db")["vms"] if v["name"] == "web1"]
    assert moved["ip"] == "10.10.2.30"
