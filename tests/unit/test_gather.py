"""gather.build_spec: hosts' facts back to a spec (issue 9), and the spec's adopted VMs.

The facts are made from the plans of a spec (what create_infra would leave on the hosts),
so a round trip must give back a spec whose plans are the same.
"""

from __future__ import annotations

import copy

import pytest
import yaml

from ansible_collections.multicloud.migration.plugins.module_utils import gather
from ansible_collections.multicloud.migration.plugins.module_utils import plan as planmod
from ansible_collections.multicloud.migration.plugins.module_utils import spec as specmod
from ansible_collections.multicloud.migration.plugins.module_utils.dnsmasq import (
    normalize_instance,
)

CLOUDS = ["cloud_a", "cloud_b"]
HOSTS = {
    "mcm-a1": planmod.Host("mcm-a1", "cloud_a", "172.30.1.11", "172.30.0.11"),
    "mcm-a2": planmod.Host("mcm-a2", "cloud_a", "172.30.1.12", "172.30.0.12"),
    "mcm-b1": planmod.Host("mcm-b1", "cloud_b", "172.30.2.11", "172.30.0.21"),
}
BOOT = {h: {"kernel": "/k", "initrd": "/i", "cmdline": "console=ttyS0"} for h in HOSTS}
VM = {"vcpus": 1, "memory": "128MiB", "disk": "64MiB"}
SPEC = {
    "tenants": [
        {
            "name": "gth",
            "networks": [
                {"name": "net", "cloud": "cloud_a", "subnet": "10.39.1.0/24",
                 "vms": [{"name": "g1", "ip": "10.39.1.10", "host": "mcm-a2", **VM},
                         {"name": "g2", "host": "mcm-a1", **VM}]},
                {"name": "st", "cloud": "cloud_a", "subnet": "10.39.2.0/24", "mode": "static",
                 "gateway": "10.39.2.9", "dhcp": {"domain": "st.example"},
                 "vms": [{"name": "s1", "ip": "10.39.2.20", "host": "mcm-a1", **VM}]},
            ],
        },
        {
            "name": "oth",
            "networks": [{"name": "app", "cloud": "cloud_b", "subnet": "10.39.1.0/24",
                          "vms": [{"name": "o1", "host": "mcm-b1", **VM}]}],
        },
    ]
}  # fmt: skip


def normal(spec):
    return specmod.normalize(spec, CLOUDS)


def facts_of(spec) -> dict:
    """What create_infra leaves on every host for ``spec`` (as infra_facts returns it)."""
    norm = normal(spec)
    facts = {}
    vm_plans = planmod.vm_plans(norm, HOSTS, {}, boot=BOOT)
    for host in HOSTS:
        plan = planmod.host_plan(norm, HOSTS, host)
        links = []
        for link in plan["links"]:
            record = {"name": link["name"], "namespace": link.get("namespace"),
                      "kind": link["kind"] if link["kind"] != "device" else None,
                      "mtu": link.get("mtu", 65536), "master": link.get("master"),
                      "state": link.get("state"), "owner": link.get("owner")}  # fmt: skip
            if link.get("vxlan"):
                record["vxlan"] = {**link["vxlan"], "local": None, "ttl": 0}
            links.append(record)
            if link.get("peer"):
                peer = link["peer"]
                links.append({"name": peer["name"], "namespace": peer["namespace"],
                              "kind": "veth", "mtu": peer["mtu"], "master": None,
                              "state": peer["state"], "owner": peer["owner"]})  # fmt: skip
        links.append({"name": "eth0", "namespace": None, "kind": None, "mtu": 1500,
                      "master": None, "state": "up", "owner": None})  # fmt: skip
        vms = []
        for vm in vm_plans[host]["vms"]:
            log = vm["console_log"]
            vms.append({
                "name": vm["name"], "state": "running", "memory_mib": vm["memory_mib"],
                "vcpus": vm["vcpus"], "max_vcpus": vm["vcpus"], "boot": vm["boot"],
                "console": {"socket": log.replace(".log", ".console"), "log": log},
                "metadata": vm["metadata"],
                "interfaces": [{"mac": vm["mac"], "bridge": vm["bridge"], "mtu": 1450}],
                "disks": [{"device": "disk", "target": "vda", "format": "qcow2", "backing": None,
                           "path": f"/var/lib/mcm/vms/{vm['name']}.qcow2",
                           "capacity_mib": vm["disk_mib"]}],
            })  # fmt: skip
        dnsmasq = [
            {"name": d["name"], "config": normalize_instance(d), "running": True, "leases": []}
            for d in plan["dnsmasq"]
        ]
        facts[host] = {
            "netns": [*plan["netns"], {"name": "someone-elses", "forwarding": False}],
            "links": links,
            "addresses": plan["addresses"],
            "dnsmasq": dnsmasq,
            "vms": vms,
        }
    return facts


def build(facts, **kwargs):
    kwargs.setdefault("boot", BOOT)
    return gather.build_spec(facts, HOSTS, **kwargs)


def plans(spec) -> dict:
    norm = normal(spec)
    return {h: planmod.host_plan(norm, HOSTS, h) for h in HOSTS}


def hand_made(name="legacy_db", bridge=None, mac="52:54:00:aa:bb:cc", **extra) -> dict:
    record = {
        "name": name, "state": "shutoff", "memory_mib": 96, "vcpus": 1, "max_vcpus": 1,
        "boot": None, "console": None, "metadata": None,
        "interfaces": [{"mac": mac, "bridge": bridge, "mtu": None}],
        "disks": [{"device": "disk", "target": "vda", "format": "raw", "backing": None,
                   "path": f"/srv/{name}.img", "capacity_mib": 200}],
    }  # fmt: skip
    record.update(extra)
    return record


def bridge_of(spec, tenant="gth", network="net"):
    for t in normal(spec)["tenants"]:
        for n in t["networks"]:
            if (t["name"], n["name"]) == (tenant, network):
                return n["bridge"]
    raise KeyError(network)


def test_round_trip_gives_the_same_plans():
    result = build(facts_of(SPEC))
    assert result["problems"] == [] and result["skipped"] == [], result["skipped"]
    assert result["tenants"] == ["gth", "oth"]
    assert plans(result["spec"]) == plans(SPEC)
    net, st = result["spec"]["tenants"][0]["networks"]
    vni = normal(SPEC)["tenants"][0]["networks"][0]["vni"]
    assert net == {
        "name": "net", "cloud": "cloud_a", "subnet": "10.39.1.0/24", "vni": vni,
        "dhcp": {"range": ["10.39.1.128", "10.39.1.253"], "domain": "net.gth"},
        "vms": [{"name": "g1", "vcpus": 1, "memory": "128MiB", "disk": "64MiB",
                 "ip": "10.39.1.10", "host": "mcm-a2"},
                {"name": "g2", "vcpus": 1, "memory": "128MiB", "disk": "64MiB",
                 "host": "mcm-a1"}],
    }  # fmt: skip
    assert (st["mode"], st["gateway"], st["dhcp"]) == ("static", "10.39.2.9",
                                                       {"domain": "st.example"})  # fmt: skip


def test_the_file_is_valid_yaml_with_a_header():
    result = build(facts_of(SPEC))
    text = gather.render(result, "hosts mcm-a1")
    assert text.startswith("# Written by multicloud.migration gather_infra.yml from hosts mcm-a1.")
    data = specmod.load_spec_text(text)
    assert data == result["spec"]
    assert specmod.validate(data, CLOUDS) == []


def test_a_hand_made_domain_on_a_tenant_bridge_is_adopted():
    facts = facts_of(SPEC)
    facts["mcm-a2"]["vms"].append(hand_made(bridge=bridge_of(SPEC)))
    result = build(facts)
    assert result["skipped"] == []
    vms = {v["name"]: v for v in result["spec"]["tenants"][0]["networks"][0]["vms"]}
    assert vms["legacy-db"] == {
        "name": "legacy-db", "adopted": True, "domain_name": "legacy_db",
        "mac": "52:54:00:aa:bb:cc", "vcpus": 1, "memory": "96MiB", "disk": "200MiB",
        "host": "mcm-a2",
    }  # fmt: skip
    assert result["adopted"] == [
        {"domain": "legacy_db", "host": "mcm-a2", "tenant": "gth", "network": "net",
         "vm": "legacy-db", "disks": ["/srv/legacy_db.img"]}
    ]  # fmt: skip
    # re-applied: the same network plans, and the domain is not placed anywhere
    assert plans(result["spec"]) == plans(SPEC)
    placed = planmod.vm_plans(normal(result["spec"]), HOSTS, {}, boot=BOOT)
    assert "legacy_db" not in [v["name"] for p in placed.values() for v in p["vms"]]
    assert "# Adopted" in gather.render(result)


def test_an_adopted_domain_with_a_reservation_keeps_it():
    spec = copy.deepcopy(SPEC)
    facts = facts_of(spec)
    # a reservation someone made for the hand-made domain (by its MAC) is its ip
    [dhcp] = [d for d in facts["mcm-a1"]["dnsmasq"] if d["name"] == "qdhcp-gth.net"]
    dhcp["config"]["hosts"].append({"mac": "52:54:00:aa:bb:cc", "ip": "10.39.1.50",
                                    "name": "legacy"})  # fmt: skip
    facts["mcm-a1"]["vms"].append(hand_made(name="gth-legacy", bridge=bridge_of(spec)))
    result = build(facts)
    assert result["skipped"] == [], result["skipped"]
    vms = {v["name"]: v for v in result["spec"]["tenants"][0]["networks"][0]["vms"]}
    assert vms["legacy"]["ip"] == "10.39.1.50" and "domain_name" not in vms["legacy"]
    norm = normal(result["spec"])
    plan = planmod.host_plan(norm, HOSTS, "mcm-a1")
    [instance] = [d for d in plan["dnsmasq"] if d["name"] == "qdhcp-gth.net"]
    assert {"mac": "52:54:00:aa:bb:cc", "ip": "10.39.1.50", "name": "legacy"} in instance["hosts"]
    assert "52:54:00:aa:bb:cc" not in plan["dhcp_clients"]  # nobody waits for its lease


def test_a_domain_on_no_tenant_network_is_reported():
    facts = facts_of(SPEC)
    facts["mcm-b1"]["vms"].append(hand_made(name="lonely", bridge="virbr0"))
    result = build(facts)
    assert result["tenants"] == ["gth", "oth"]
    assert result["skipped"] == [
        {"object": "domain lonely on mcm-b1",
         "reason": "not on a written tenant network (bridge virbr0)"}
    ]  # fmt: skip
    # scoped to a tenant, other domains are none of its business
    assert build(facts, tenants=["gth"])["skipped"] == []


def test_a_domain_the_spec_cannot_describe_is_reported():
    facts = facts_of(SPEC)
    facts["mcm-a1"]["vms"].append(hand_made(name="tiny", bridge=bridge_of(SPEC), memory_mib=8))
    result = build(facts, tenants=["gth"])
    assert result["tenants"] == ["gth"]
    [skip] = result["skipped"]
    assert skip["object"] == "domain tiny on mcm-a1" and "8 MiB of memory" in skip["reason"]


def test_a_tenant_whose_cloud_was_not_read_in_full_is_left_out():
    facts = facts_of(SPEC)
    del facts["mcm-a2"]
    result = build(facts)
    assert result["tenants"] == ["oth"]
    [skip] = result["skipped"]
    assert skip["object"] == "tenant gth"
    assert "mcm-a2 of its clouds were not gathered" in skip["reason"]
    # what cannot be derived from a partial read says that hosts were not read
    facts = facts_of(SPEC)
    del facts["mcm-a1"]  # the network node: no DHCP, no gateway seen
    result = build(facts, tenants=["gth"])
    assert "host(s) mcm-a1 were not gathered (-l?)" in result["skipped"][0]["reason"]


def test_drift_that_the_spec_cannot_express_leaves_the_tenant_out():
    facts = facts_of(SPEC)
    [vx] = [link for link in facts["mcm-a2"]["links"]
            if link["kind"] == "vxlan" and link["owner"] == "mcm:gth/net"]  # fmt: skip
    vx["mtu"] = 1400
    facts["mcm-a1"]["vms"][0]["console"] = None  # a console the vm module would add back
    result = build(facts)
    assert result["tenants"] == ["oth"]
    [skip] = result["skipped"]
    assert "re-applying it would change" in skip["reason"]
    assert "mtu 1400" in skip["reason"] and "console None" in skip["reason"]


def test_a_stopped_vm_of_ours_would_be_started():
    facts = facts_of(SPEC)
    facts["mcm-b1"]["vms"][0]["state"] = "shutoff"
    result = build(facts, tenants=["oth"])
    assert result["tenants"] == []
    assert "is shutoff: it would be started" in result["skipped"][0]["reason"]


def test_a_network_without_dhcp_or_gateway_is_not_expressible():
    raw = {"name": "raw", "cloud": "cloud_b", "subnet": "10.39.9.0/24", "mode": "system"}
    spec = {"tenants": [{"name": "sys", "networks": [raw]}]}
    result = build(facts_of(spec))
    assert result["tenants"] == []
    assert "subnet is recorded nowhere" in result["skipped"][0]["reason"]


def test_managed_novlan_and_dhcp_off_round_trip():
    spec = {"tenants": [{"name": "nv", "networks": [
        {"name": "a", "cloud": "cloud_a", "subnet": "10.39.3.0/24", "mode": "managed-novlan"},
        {"name": "b", "cloud": "cloud_a", "subnet": "10.39.4.0/24", "mode": "managed-novlan"},
        {"name": "c", "cloud": "cloud_b", "subnet": "10.39.5.0/24", "dhcp": {"enabled": False}},
    ]}]}  # fmt: skip
    result = build(facts_of(spec))
    assert result["skipped"] == [], result["skipped"]
    assert plans(result["spec"]) == plans(spec)
    modes = [n.get("mode") for n in result["spec"]["tenants"][0]["networks"]]
    assert modes == ["managed-novlan", "managed-novlan", None]


def test_foreign_dnsmasq_and_wrong_facts():
    facts = facts_of(SPEC)
    facts["mcm-a1"]["dnsmasq"].append({"name": "legacy", "config": None, "running": True})
    assert {"object": "dnsmasq legacy on mcm-a1",
            "reason": "not an instance of this collection (no settings line)"} in (
        build(facts)["skipped"])  # fmt: skip
    with pytest.raises(gather.GatherError, match="lack vms"):
        build({"mcm-a1": {"netns": [], "links": [], "addresses": [], "dnsmasq": []}})
    with pytest.raises(gather.GatherError, match="in no cloud group"):
        build({"elsewhere": {key: [] for key in gather.FACT_KEYS}})


def test_unknown_tenant_asked_for():
    result = build(facts_of(SPEC), tenants=["nope"])
    assert result["spec"] == {"tenants": []}
    assert result["skipped"] == [{"object": "tenant nope", "reason": "nothing of it on the hosts"}]


@pytest.mark.parametrize(
    ("domain", "tenant", "name"),
    [("gth-web1", "gth", "web1"), ("Legacy_DB", "gth", "legacy-db"), ("__", "gth", None),
     ("a--b.", "x", "a-b"), ("x" * 80, "gth", "x" * 63)],
)  # fmt: skip
def test_vm_name_for(domain, tenant, name):
    assert gather.vm_name_for(domain, tenant) == name


# ---------------------------------------------------------------- the spec's adopted VMs


def with_vm(**vm):
    spec = copy.deepcopy(SPEC)
    spec["tenants"][0]["networks"][0]["vms"].append({"name": "x", **VM, **vm})
    return spec


@pytest.mark.parametrize(
    ("vm", "path", "message"),
    [
        ({"mac": "52:54:00:00:00:01"}, "mac", "only an adopted VM"),
        ({"domain_name": "foo"}, "domain_name", "only an adopted VM"),
        ({"adopted": "yes"}, "adopted", "must be true or false"),
        ({"adopted": True, "mac": "zz"}, "mac", "must be a MAC"),
        ({"adopted": True, "mac": "01:00:5e:00:00:01"}, "mac", "multicast"),
        ({"adopted": True, "domain_name": "a/b"}, "domain_name", "invalid libvirt domain"),
        ({"adopted": True, "domain_name": "gth-g1"}, "domain_name", "clashes"),
    ],
)
def test_adopted_keys_are_validated(vm, path, message):
    problems = specmod.validate(with_vm(**vm), CLOUDS)
    assert any(p.path.endswith(f"vms[2].{path}") and message in p.message for p in problems), (
        problems
    )


def test_an_adopted_mac_collides_like_a_derived_one():
    mac = specmod.normalize(SPEC, CLOUDS)["tenants"][0]["networks"][0]["vms"][0]["mac"]
    problems = specmod.validate(with_vm(adopted=True, mac=mac), CLOUDS)
    assert [p.path for p in problems if "collides" in p.message] == [
        "tenants[0].networks[0].vms[2].mac"
    ]


def test_adopted_normalises_with_its_own_names():
    spec = with_vm(adopted=True, mac="52:54:00:AA:00:01", domain_name="old_vm")
    vm = normal(spec)["tenants"][0]["networks"][0]["vms"][2]
    assert (vm["adopted"], vm["mac"], vm["domain_name"]) == (True, "52:54:00:aa:00:01", "old_vm")
    plain = normal(with_vm(adopted=True))["tenants"][0]["networks"][0]["vms"][2]
    assert (plain["mac"], plain["domain_name"]) == (
        specmod.vm_mac("gth", "x"), "gth-x"
    )  # fmt: skip
    # a static network's adopted VM needs no reservation
    spec = copy.deepcopy(SPEC)
    spec["tenants"][0]["networks"][1]["vms"].append({"name": "y", "adopted": True, **VM})
    assert specmod.validate(spec, CLOUDS) == []


def test_render_round_trips_through_yaml():
    result = build(facts_of(SPEC))
    assert yaml.safe_load(gather.render(result)) == result["spec"]


def test_a_tenant_routed_across_clouds_round_trips_and_needs_every_cloud():
    spec = {"tenants": [{"name": "two", "networks": [
        {"name": "a", "cloud": "cloud_a", "subnet": "10.39.6.0/24"},
        {"name": "b", "cloud": "cloud_b", "subnet": "10.39.7.0/24"},
    ]}]}  # fmt: skip
    facts = facts_of(spec)
    assert any(link["owner"] == "mcm:two/~transit" for link in facts["mcm-b1"]["links"])
    result = build(facts)
    assert result["tenants"] == ["two"] and plans(result["spec"]) == plans(spec)
    del facts["mcm-a2"]  # a host of cloud_a not read
    result = build(facts, tenants=["two"])
    assert result["tenants"] == []
    assert "mcm-a2 of its clouds were not gathered" in result["skipped"][0]["reason"]


def test_a_tenant_with_a_firewall_table_is_left_out_until_rules_are_gathered():
    """Security groups and floating addresses are not gathered: written without them, the
    spec would delete the tenant's table when re-applied, so the tenant is left out."""
    facts = facts_of(SPEC)
    router = next(n["name"] for n in facts["mcm-a1"]["netns"] if n["name"] == "qrouter-gth")
    facts["mcm-a1"]["nft_tables"] = [
        {"namespace": router, "family": "inet", "name": "mcm-gth"},
        {"namespace": router, "family": "inet", "name": "someone-elses"},
    ]
    result = build(facts)
    assert result["tenants"] == ["oth"]
    [skip] = result["skipped"]
    assert "nftables table inet mcm-gth in qrouter-gth: would be removed" in skip["reason"]
    assert "someone-elses" not in skip["reason"]
