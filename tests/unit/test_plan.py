"""The southbound plan: what each host carries for a normalised spec."""

from __future__ import annotations

import re
from pathlib import Path

import plan
import pytest
import spec

ROOT = Path(__file__).resolve().parents[2]
GROUPS = {"cloud_a": ["mcm-a1", "mcm-a2"], "cloud_b": ["mcm-b1"]}
HOSTVARS = {
    "mcm-a1": {"underlay_ip": "172.30.1.11", "wan_ip": "172.30.0.11"},
    "mcm-a2": {"underlay_ip": "172.30.1.12", "wan_ip": "172.30.0.12"},
    "mcm-b1": {"underlay_ip": "172.30.2.11", "wan_ip": "172.30.0.21"},
}


def example():
    text = (ROOT / "docs/examples/tenants.yml").read_text()
    return spec.normalize(spec.load_spec_text(text), clouds=GROUPS)


def hosts():
    return plan.hosts_from_inventory(GROUPS, GROUPS, HOSTVARS)


def net(normal, tenant, name):
    t = next(t for t in normal["tenants"] if t["name"] == tenant)
    return next(n for n in t["networks"] if n["name"] == name)


def names(items, kind=None):
    return [i["name"] for i in items if kind is None or i["kind"] == kind]


def test_every_cloud_host_carries_bridge_and_vxlan_meshed_to_its_peers():
    normal = example()
    web = net(normal, "acme", "web")
    for host, peer in (("mcm-a1", "172.30.1.12"), ("mcm-a2", "172.30.1.11")):
        p = plan.host_plan(normal, hosts(), host)
        assert web["bridge"] in names(p["links"], "bridge")
        vx = next(x for x in p["links"] if x["name"] == web["vxlan"])
        assert vx["vxlan"] == {"id": web["vni"], "port": 4789, "learning": True}
        assert vx["master"] == web["bridge"] and vx["mtu"] == 1450
        assert vx["owner"] == "mcm:acme/web"
        fdb = next(f for f in p["fdb"] if f["device"] == web["vxlan"])
        assert fdb["entries"] == [{"dst": peer}]
    # cloud_b carries nothing of acme
    b1 = plan.host_plan(normal, hosts(), "mcm-b1")
    assert web["bridge"] not in names(b1["links"])


def test_dhcp_and_router_only_on_the_network_node():
    normal = example()
    web, db = net(normal, "acme", "web"), net(normal, "acme", "db")
    a1 = plan.host_plan(normal, hosts(), "mcm-a1")
    a2 = plan.host_plan(normal, hosts(), "mcm-a2")
    assert [n["name"] for n in a1["netns"]] == ["qdhcp-acme.db", "qdhcp-acme.web", "qrouter-acme"]
    assert {n["name"]: n["forwarding"] for n in a1["netns"]}["qrouter-acme"] is True
    assert a2["netns"] == [] and a2["dnsmasq"] == []
    veth = next(x for x in a1["links"] if x["name"] == web["dhcp"]["legs"][0])
    assert veth["kind"] == "veth" and veth["master"] == web["bridge"]
    assert veth["peer"]["namespace"] == "qdhcp-acme.web"
    assert veth["peer"]["name"] == web["dhcp"]["legs"][1]
    # the router holds both gateways, each on its own leg
    router_addrs = {
        a["interface"]: a["addresses"] for a in a1["addresses"] if a["namespace"] == "qrouter-acme"
    }
    assert router_addrs == {
        web["router_legs"][1]: ["10.10.1.1/24"],
        db["router_legs"][1]: ["10.10.2.1/24"],
    }
    # nothing tenant-owned is addressed in the root namespace
    assert all(a["namespace"] for a in a1["addresses"])


def test_dnsmasq_instance_serves_the_network_only():
    normal = example()
    web = net(normal, "acme", "web")
    a1 = plan.host_plan(normal, hosts(), "mcm-a1")
    inst = next(d for d in a1["dnsmasq"] if d["name"] == "qdhcp-acme.web")
    assert inst["interface"] == web["dhcp"]["legs"][1]
    assert inst["server"] == web["dhcp"]["server"]
    assert inst["range"] == web["dhcp"]["range"]
    assert inst["gateway"] == "10.10.1.1" and inst["mtu"] == 1450
    assert inst["domain"] == "web.acme"
    assert inst["hosts"] == [
        {"mac": vm["mac"], "ip": vm["ip"], "name": vm["name"]} for vm in web["vms"]
    ]


def test_same_cidr_in_two_tenants_is_isolated_by_namespace_and_vni():
    normal = example()
    web, app = net(normal, "acme", "web"), net(normal, "globex", "app")
    assert web["subnet"] == app["subnet"] and web["vni"] != app["vni"]
    b1 = plan.host_plan(normal, hosts(), "mcm-b1")
    assert [n["name"] for n in b1["netns"]] == ["qdhcp-globex.app", "qrouter-globex"]
    assert b1["fdb"] == [{"device": app["vxlan"], "entries": []}]  # alone in its cloud


def test_absent_network_leaves_the_plan_but_stays_in_scope():
    data = spec.load_spec_text((ROOT / "docs/examples/tenants.yml").read_text())
    data["tenants"][0]["networks"][1]["state"] = "absent"  # acme/db
    normal = spec.normalize(data, clouds=GROUPS)
    db = net(normal, "acme", "db")
    a1 = plan.host_plan(normal, hosts(), "mcm-a1")
    assert db["bridge"] not in names(a1["links"])
    assert "qdhcp-acme.db" not in [n["name"] for n in a1["netns"]]
    assert a1["scopes"] == ["mcm:acme/", "mcm:globex/"]


def test_placement_overrides_the_spec_cloud_and_peers_use_wan_across_clouds():
    normal = example()
    web = net(normal, "acme", "web")
    moved = {"networks": {"acme/web": "cloud_b"}}
    b1 = plan.host_plan(normal, hosts(), "mcm-b1", placement=moved)
    assert web["bridge"] in names(b1["links"])
    assert "qdhcp-acme.web" in [n["name"] for n in b1["netns"]]
    a1 = plan.host_plan(normal, hosts(), "mcm-a1", placement=moved)
    assert web["bridge"] not in names(a1["links"])
    me, peer = hosts()["mcm-a1"], hosts()["mcm-b1"]
    assert plan.peer_address(me, peer) == "172.30.0.21"
    assert plan.peer_address(me, hosts()["mcm-a2"]) == "172.30.1.12"


def test_links_are_ordered_bridges_first():
    p = plan.host_plan(example(), hosts(), "mcm-a1")
    kinds = [x["kind"] for x in p["links"]]
    assert kinds == sorted(kinds, key=["bridge", "vxlan", "veth", "device"].index)


def test_plan_is_deterministic():
    assert plan.host_plan(example(), hosts(), "mcm-a1") == plan.host_plan(
        example(), hosts(), "mcm-a1"
    )


def test_network_node_can_be_chosen():
    hv = {**HOSTVARS, "mcm-a2": {**HOSTVARS["mcm-a2"], "mcm_network_node": True}}
    h = plan.hosts_from_inventory(GROUPS, GROUPS, hv)
    assert plan.network_node(h, "cloud_a").name == "mcm-a2"
    hv["mcm-a1"] = {**HOSTVARS["mcm-a1"], "mcm_network_node": True}
    with pytest.raises(plan.PlanError, match="several hosts with mcm_network_node"):
        plan.network_node(plan.hosts_from_inventory(GROUPS, GROUPS, hv), "cloud_a")


@pytest.mark.parametrize(
    ("hostvars", "message"),
    [
        ({**HOSTVARS, "mcm-b1": {"wan_ip": "172.30.0.21"}}, "mcm-b1 (cloud_b) lacks underlay_ip"),
        (
            {**HOSTVARS, "mcm-b1": {"underlay_ip": "nope", "wan_ip": "172.30.0.21"}},
            "mcm-b1: underlay_ip 'nope' is not an IPv4 address",
        ),
    ],
)
def test_inventory_problems_are_named(hostvars, message):
    with pytest.raises(plan.PlanError, match=re.escape(message)):
        plan.hosts_from_inventory(GROUPS, GROUPS, hostvars)


def test_empty_cloud_and_unknown_host():
    with pytest.raises(plan.PlanError, match="cloud group 'cloud_c' has no hosts"):
        plan.hosts_from_inventory(["cloud_c"], {"cloud_c": []}, {})
    with pytest.raises(plan.PlanError, match="'nope' is not in any cloud group"):
        plan.host_plan(example(), hosts(), "nope")


def test_scopes_name_exactly_the_spec_tenants():
    p = plan.host_plan(example(), hosts(), "mcm-b1")
    assert p["scopes"] == ["mcm:acme/", "mcm:globex/"]
    assert p["namespace_scopes"] == [
        "qdhcp-acme.",
        "qrouter-acme",
        "qdhcp-globex.",
        "qrouter-globex",
    ]
    assert p["dhcp_scopes"] == ["qdhcp-acme.", "qdhcp-globex."]


def test_removal_plan_carries_nothing_and_scopes_the_tenant():
    p = plan.removal_plan("mcm-a1", ["acme"])
    assert p["scopes"] == ["mcm:acme/"] and p["namespace_scopes"] == ["qdhcp-acme.", "qrouter-acme"]
    assert all(p[k] == [] for k in ("netns", "links", "addresses", "routes", "fdb", "dnsmasq"))


BOOT = {"kernel": "/img/vmlinuz", "initrd": "/img/initrd.img", "cmdline": "console=ttyS0"}


def vms_of(plans):
    return {h: [v["name"] for v in p["vms"]] for h, p in plans.items()}


def test_vms_spread_over_the_cloud_and_get_their_network():
    normal = example()
    plans = plan.vm_plans(normal, hosts(), {}, boot=dict.fromkeys(HOSTVARS, BOOT))
    assert vms_of(plans) == {
        "mcm-a1": ["acme-db1", "acme-web1"],
        "mcm-a2": ["acme-web2"],
        "mcm-b1": ["globex-app1"],
    }
    web1 = next(v for p in plans.values() for v in p["vms"] if v["name"] == "acme-web1")
    web = net(normal, "acme", "web")
    assert web1["bridge"] == web["bridge"] and web1["mac"] == web["vms"][0]["mac"]
    assert web1["memory_mib"] == 128 and web1["disk_mib"] == 64 and web1["state"] == "running"
    assert web1["metadata"] == {"tenant": "acme", "network": "web", "vm": "web1"}
    assert web1["boot"]["cmdline"] == "console=ttyS0 mcm.hostname=web1"
    assert web1["console_log"] == "/var/lib/mcm/console/acme-web1.log"
    # web1 and web2 land on different hosts: the two-host cloud is used
    placed = {v["name"]: h for h, p in plans.items() for v in p["vms"]}
    assert placed["acme-web1"] != placed["acme-web2"]
    assert plans["mcm-a1"]["tenants"] == ["acme", "globex"]


def test_vms_stay_where_they_run_and_new_ones_do_not_move_them():
    normal = example()
    existing = {"mcm-a2": ["acme-web1", "acme-web2", "acme-db1"]}
    plans = plan.vm_plans(normal, hosts(), existing)
    assert vms_of(plans)["mcm-a2"] == ["acme-db1", "acme-web1", "acme-web2"]
    assert vms_of(plans)["mcm-a1"] == []
    assert "boot" not in plans["mcm-a2"]["vms"][0]  # no boot settings: boot from disk
    # a VM found on a host outside its cloud is placed in its cloud again
    plans = plan.vm_plans(normal, hosts(), {"mcm-b1": ["acme-web1"]})
    assert "acme-web1" not in vms_of(plans)["mcm-b1"]


def test_vm_host_pin_must_be_in_the_cloud():
    data = spec.load_spec_text((ROOT / "docs/examples/tenants.yml").read_text())
    data["tenants"][0]["networks"][0]["vms"][0]["host"] = "mcm-a2"
    data["tenants"][0]["networks"][0]["vms"][1]["host"] = "mcm-a2"
    plans = plan.vm_plans(spec.normalize(data, clouds=GROUPS), hosts(), {})
    assert {"acme-web1", "acme-web2"} <= set(vms_of(plans)["mcm-a2"])
    data["tenants"][0]["networks"][0]["vms"][0]["host"] = "mcm-b1"
    with pytest.raises(plan.PlanError, match=r"vm acme/web1: host mcm-b1 is not in cloud cloud_a"):
        plan.vm_plans(spec.normalize(data, clouds=GROUPS), hosts(), {})


def test_absent_vms_are_not_planned():
    data = spec.load_spec_text((ROOT / "docs/examples/tenants.yml").read_text())
    data["tenants"][0]["networks"][0]["vms"][1]["state"] = "absent"
    plans = plan.vm_plans(spec.normalize(data, clouds=GROUPS), hosts(), {})
    assert "acme-web2" not in [v for vs in vms_of(plans).values() for v in vs]


def _link(p, name, namespace=None):
    return next(x for x in p["links"] if x["name"] == name and x.get("namespace") == namespace)


def _routes(p, namespace):
    return next((r["routes"] for r in p["routes"] if r["namespace"] == namespace), [])


def test_gateway_has_a_fixed_mac_on_the_router_leg():
    normal = example()
    web = net(normal, "acme", "web")
    a1 = plan.host_plan(normal, hosts(), "mcm-a1")
    leg = _link(a1, web["router_legs"][0])
    assert leg["peer"]["mac"] == web["gateway_mac"]
    assert re.fullmatch(r"02:6d:63(:[0-9a-f]{2}){3}", web["gateway_mac"])
    # every tenant router in one cloud: no transit segment
    acme = next(t for t in normal["tenants"] if t["name"] == "acme")
    assert acme["transit"]["bridge"] not in names(a1["links"])


def test_a_migrated_vm_stretches_its_network_and_the_routers_get_a_transit():
    normal = example()
    web, db = net(normal, "acme", "web"), net(normal, "acme", "db")
    acme = next(t for t in normal["tenants"] if t["name"] == "acme")
    moved = {"vms": {"acme/web1": "mcm-b1"}}
    b1 = plan.host_plan(normal, hosts(), "mcm-b1", placement=moved)
    a1 = plan.host_plan(normal, hosts(), "mcm-a1", placement=moved)
    a2 = plan.host_plan(normal, hosts(), "mcm-a2", placement=moved)
    # the segment reaches mcm-b1 (WAN addresses across clouds), DHCP and gateway stay home
    assert web["bridge"] in names(b1["links"]) and db["bridge"] not in names(b1["links"])
    fdb_b1 = next(f for f in b1["fdb"] if f["device"] == web["vxlan"])
    assert fdb_b1["entries"] == [{"dst": "172.30.0.11"}, {"dst": "172.30.0.12"}]
    fdb_a2 = next(f for f in a2["fdb"] if f["device"] == web["vxlan"])
    assert {"dst": "172.30.0.21"} in fdb_a2["entries"]
    assert "qdhcp-acme.web" not in [n["name"] for n in b1["netns"]]
    # routers of both clouds on one transit segment; b's reaches both subnets through a's
    transit = acme["transit"]
    assert transit["bridge"] in names(b1["links"]) and transit["bridge"] in names(a1["links"])
    assert transit["bridge"] not in names(a2["links"])  # network nodes only
    assert _routes(b1, "qrouter-acme") == [
        {"dst": "10.10.1.0/24", "gateway": "169.254.0.1", "metric": 100},
        {"dst": "10.10.2.0/24", "gateway": "169.254.0.1", "metric": 100},
    ]
    assert _routes(a1, "qrouter-acme") == []
    addr = {(a["namespace"], a["interface"]): a["addresses"] for a in b1["addresses"]}
    assert addr[("qrouter-acme", transit["legs"][1])] == ["169.254.0.2/24"]
    # the VM itself goes where the record says, whatever its network's cloud
    vms = plan.vm_plans(normal, hosts(), {"mcm-a1": ["acme-web1"]}, placement=moved)
    assert "acme-web1" in [v["name"] for v in vms["mcm-b1"]["vms"]]
    assert "acme-web1" not in [v["name"] for v in vms["mcm-a1"]["vms"]]


def test_a_vm_placed_on_a_cloud_goes_to_its_least_loaded_host():
    normal = example()
    vms = plan.vm_plans(normal, hosts(), {}, placement={"vms": {"acme/db1": "cloud_b"}})
    assert "acme-db1" in [v["name"] for v in vms["mcm-b1"]["vms"]]


def test_subnet_move_make_before_break():
    """The gateway is held by both routers while it moves, with a transit route under it."""
    normal = example()
    web = net(normal, "acme", "web")
    overlap = {"networks": {"acme/web": "cloud_b"}, "gateways": {"acme/web": ["cloud_a"]},
               "stretch": {"acme/web": ["mcm-a1", "mcm-a2"]}}  # fmt: skip
    final = {"networks": {"acme/web": "cloud_b"}}
    a1 = plan.host_plan(normal, hosts(), "mcm-a1", placement=overlap)
    b1 = plan.host_plan(normal, hosts(), "mcm-b1", placement=overlap)
    for p in (a1, b1):
        assert _link(p, web["router_legs"][0])["peer"]["mac"] == web["gateway_mac"]
    # a keeps its connected route; the metric-100 one takes over once its leg goes
    assert {"dst": "10.10.1.0/24", "gateway": "169.254.0.2", "metric": 100} in _routes(
        a1, "qrouter-acme"
    )
    assert "qdhcp-acme.web" in [n["name"] for n in b1["netns"]]
    assert "qdhcp-acme.web" not in [n["name"] for n in a1["netns"]]
    a1f = plan.host_plan(normal, hosts(), "mcm-a1", placement=final)
    a2f = plan.host_plan(normal, hosts(), "mcm-a2", placement=final)
    assert web["bridge"] not in names(a1f["links"]) and web["bridge"] not in names(a2f["links"])
    assert _routes(a1f, "qrouter-acme") == _routes(a1, "qrouter-acme")


def test_vxlan_learning_is_off_while_a_migration_stretches_the_network():
    """A learned entry that follows a VM from an underlay peer to a WAN peer keeps the old
    route in the kernel: while a network is stretched, its VXLAN devices flood instead."""
    normal = example()
    web, db = net(normal, "acme", "web"), net(normal, "acme", "db")
    mid = {"stretch": {"acme/web": ["mcm-a1", "mcm-a2", "mcm-b1"]}}
    overlap = {"networks": {"acme/web": "cloud_b"}, "gateways": {"acme/web": ["cloud_a"]},
               "stretch": {"acme/web": ["mcm-a1", "mcm-a2"]}}  # fmt: skip
    for placement, hosts_of_web in ((mid, ("mcm-a1", "mcm-a2", "mcm-b1")),
                                    (overlap, ("mcm-a1", "mcm-a2", "mcm-b1"))):  # fmt: skip
        for host in hosts_of_web:
            p = plan.host_plan(normal, hosts(), host, placement=placement)
            assert _link(p, web["vxlan"])["vxlan"]["learning"] is False, host
        a1 = plan.host_plan(normal, hosts(), "mcm-a1", placement=placement)
        assert _link(a1, db["vxlan"])["vxlan"]["learning"] is True  # not moving
    for placement, host in (({}, "mcm-a1"), ({"networks": {"acme/web": "cloud_b"}}, "mcm-b1"),
                            ({"vms": {"acme/web1": "mcm-b1"}}, "mcm-b1")):  # fmt: skip
        p = plan.host_plan(normal, hosts(), host, placement=placement)
        assert _link(p, web["vxlan"])["vxlan"]["learning"] is True, placement


def test_placement_errors_name_the_entry():
    normal = example()
    with pytest.raises(plan.PlanError, match="unknown key"):
        plan.host_plan(normal, hosts(), "mcm-a1", placement={"acme/web": "cloud_b"})
    with pytest.raises(plan.PlanError, match="acme/web1 is placed on 'nowhere'"):
        plan.host_plan(normal, hosts(), "mcm-a1", placement={"vms": {"acme/web1": "nowhere"}})


def _shared_example(*names: str):
    data = spec.load_spec_text((ROOT / "docs/examples/tenants.yml").read_text())
    for vm in data["tenants"][0]["networks"][0]["vms"]:
        if vm["name"] in names:
            vm["storage"] = "shared"
    return spec.normalize(data, clouds=GROUPS)


def test_a_shared_storage_vm_gets_the_shared_pool_local_ones_the_default():
    plans = plan.vm_plans(_shared_example("web1"), hosts(), {"mcm-a1": ["acme-web1"]})
    web1 = next(v for v in plans["mcm-a1"]["vms"] if v["name"] == "acme-web1")
    assert (web1["pool"], web1["pool_path"]) == ("mcm-shared", "/var/lib/mcm/shared/vms")
    others = [v for p in plans.values() for v in p["vms"] if v["name"] != "acme-web1"]
    assert others and all("pool" not in v and "pool_path" not in v for v in others)
    # the same pool wherever the placement puts it (a migrated VM)
    moved = plan.vm_plans(_shared_example("web1"), hosts(), {},
                          placement={"vms": {"acme/web1": "mcm-b1"}})  # fmt: skip
    [on_b1] = [v for v in moved["mcm-b1"]["vms"] if v["name"] == "acme-web1"]
    assert on_b1["pool"] == "mcm-shared"


def _migration_plan():
    from ansible_collections.multicloud.migration.plugins.module_utils import migration_plan

    return migration_plan


RUNNING = {"mcm-a1": [{"name": "acme-web1", "state": "running"},
                      {"name": "acme-web2", "state": "running"}]}  # fmt: skip


@pytest.mark.parametrize("mode", ["auto", "live"])
def test_an_instance_move_carries_its_shared_storage(mode):
    mp = _migration_plan()
    out = mp.instance_migration(_shared_example("web1"), hosts(), {}, RUNNING,
                                instance="web1", to="cloud_b", mode=mode)  # fmt: skip
    [move] = out["moves"]
    assert (move["source"], move["destination"], move["mode"]) == ("mcm-a1", "mcm-b1", mode)
    assert move["storage"] == "shared"
    # vm_migrate: the disk is under shared_paths (auto picks live, nothing is copied) and
    # the destination gets the shared pool
    assert move["shared_paths"] == ["/var/lib/mcm/shared/vms"]
    assert (move["pool"], move["pool_path"]) == ("mcm-shared", "/var/lib/mcm/shared/vms")


def test_a_local_instance_move_keeps_the_module_defaults():
    mp = _migration_plan()
    out = mp.instance_migration(_shared_example(), hosts(), {}, RUNNING,
                                instance="web1", to="cloud_b", mode="live-block")  # fmt: skip
    [move] = out["moves"]
    assert move["storage"] == "local"
    assert not {"pool", "pool_path", "shared_paths"} & set(move)


def test_live_is_refused_for_a_local_disk_before_anything_moves():
    mp = _migration_plan()
    with pytest.raises(plan.PlanError, match=r"mode=live .* VM acme/web1 has storage local"):
        mp.instance_migration(_shared_example(), hosts(), {}, RUNNING,
                              instance="web1", to="cloud_b", mode="live")  # fmt: skip
    # a subnet with one local VM cannot move live either; auto decides per VM
    with pytest.raises(plan.PlanError, match="VM acme/web2 has storage local"):
        mp.subnet_migration(_shared_example("web1"), hosts(), {}, RUNNING,
                            subnet="acme/web", to="cloud_b", mode="live")  # fmt: skip
    out = mp.subnet_migration(_shared_example("web1"), hosts(), {}, RUNNING,
                              subnet="acme/web", to="cloud_b")  # fmt: skip
    assert {m["vm"]: m["storage"] for m in out["moves"]} == {"web1": "shared", "web2": "local"}


def test_confirming_a_cold_move_of_a_shared_vm_keeps_its_disk():
    mp = _migration_plan()
    normal = _shared_example("web1")
    out = mp.instance_migration(normal, hosts(), {}, RUNNING, instance="web1", to="cloud_b")
    [move] = out["moves"]
    row = {"id": 1, "kind": "instance", "object": "acme/web1", "tenant": "acme",
           "status": "finished", "vms": [move],
           "results": [{"vm": "acme/web1", "status": "moved", "mode": "cold"}]}  # fmt: skip
    existing = {"mcm-a1": [{"name": "acme-web1", "state": "shutoff"}],
                "mcm-b1": [{"name": "acme-web1", "state": "running"}]}  # fmt: skip
    reversal = mp.migration_reversal(normal, hosts(), out["placement"]["final"], existing, row=row)
    disk = "/var/lib/mcm/shared/vms/acme-web1.qcow2"
    # the vm module leaves a disk given by path: only the domain goes
    assert reversal["remove"]["confirm"] == {
        "mcm-a1": [{"name": "acme-web1", "state": "absent", "disk": disk}]
    }
    assert reversal["remove"]["revert"] == {
        "mcm-b1": [{"name": "acme-web1", "state": "absent", "disk": disk}]
    }


def test_a_vm_pinned_by_the_spec_can_be_moved_to_another_cloud():
    data = spec.load_spec_text((ROOT / "docs/examples/tenants.yml").read_text())
    data["tenants"][0]["networks"][0]["vms"][0]["host"] = "mcm-a2"
    normal = spec.normalize(data, clouds=GROUPS)
    # the placement record (cloud_b) overrides the spec's host; in its cloud the pin holds
    moved = plan.vm_plans(normal, hosts(), {}, placement={"vms": {"acme/web1": "cloud_b"}})
    assert "acme-web1" in vms_of(moved)["mcm-b1"]
    back = plan.vm_plans(normal, hosts(), {}, placement={"vms": {"acme/web1": "cloud_a"}})
    assert "acme-web1" in vms_of(back)["mcm-a2"]
    running = {"mcm-a2": [{"name": "acme-web1", "state": "running"}]}
    out = _migration_plan().instance_migration(normal, hosts(), {}, running, instance="web1",
                                               to="cloud_b")  # fmt: skip
    assert [(m["source"], m["destination"]) for m in out["moves"]] == [("mcm-a2", "mcm-b1")]
