"""The northbound spec: loading, validation (every problem, exact paths), normalisation."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import naming
import pytest
import spec

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docs" / "examples" / "tenants.yml"
CLOUDS = {"cloud_a", "cloud_b"}


def tiny(name: str, ip: str | None = None) -> dict[str, Any]:
    vm: dict[str, Any] = {"name": name, "vcpus": 1, "memory": "128MiB", "disk": "64MiB"}
    if ip is not None:
        vm["ip"] = ip
    return vm


BASE: dict[str, Any] = {
    "tenants": [
        {
            "name": "acme",
            "networks": [
                {
                    "name": "web",
                    "cloud": "cloud_a",
                    "subnet": "10.10.1.0/24",
                    "vms": [tiny("web1", "10.10.1.10"), tiny("web2", "10.10.1.11")],
                },
                {
                    "name": "db",
                    "cloud": "cloud_a",
                    "subnet": "10.10.2.0/24",
                    "vms": [tiny("db1")],
                },
            ],
        },
        {
            "name": "globex",
            "networks": [
                {
                    "name": "app",
                    "cloud": "cloud_b",
                    "subnet": "10.10.1.0/24",
                    "vms": [tiny("app1", "10.10.1.10")],
                },
            ],
        },
    ]
}


def base() -> dict[str, Any]:
    return copy.deepcopy(BASE)


def net(s: dict[str, Any], t: int = 0, n: int = 0) -> dict[str, Any]:
    return s["tenants"][t]["networks"][n]


def vm(s: dict[str, Any], t: int = 0, n: int = 0, v: int = 0) -> dict[str, Any]:
    return net(s, t, n)["vms"][v]


def add_net(s: dict[str, Any], t: int = 0, **fields: Any) -> None:
    s["tenants"][t]["networks"].append({"cloud": "cloud_a", **fields})


def messages_at(problems: list[spec.Problem], path: str) -> list[str]:
    return [p.message for p in problems if p.path == path]


# --------------------------------------------------------------------------- valid


def test_base_is_valid():
    assert spec.validate(base(), CLOUDS) == []
    assert spec.validate(base()) == []


def test_example_file_validates_with_the_lab_clouds():
    data = spec.load_spec_text(EXAMPLE.read_text(), str(EXAMPLE))
    assert spec.validate(data, {"cloud_a", "cloud_b"}) == []
    assert data == BASE  # the tests' base spec is the demo's spec
    problems = spec.validate(data, {"cloud_a"})
    assert [p.path for p in problems] == ["tenants[1].networks[0].cloud"]
    assert "unknown cloud group 'cloud_b'" in problems[0].message


def test_same_cidr_in_different_tenants_is_allowed():
    s = base()
    assert net(s, 0, 0)["subnet"] == net(s, 1, 0)["subnet"]
    assert spec.validate(s, CLOUDS) == []


def test_empty_tenant_list_is_valid():
    assert spec.validate({"tenants": []}) == []
    assert spec.normalize({"tenants": []}) == {"tenants": []}


def test_absent_tenant_needs_no_networks():
    s = base()
    s["tenants"][1] = {"name": "globex", "state": "absent"}
    assert spec.validate(s) == []
    assert spec.normalize(s)["tenants"][1] == {
        "name": "globex",
        "state": "absent",
        "router_namespace": "qrouter-globex",
        "floating_range": None,
        "firewall_table": "mcm-globex",
        "transit": {
            "vni": 12264344,
            "bridge": "brq-12264344",
            "vxlan": "vxlan-12264344",
            "legs": ["qrb-12264344", "qr-12264344"],
        },
        "networks": [],
    }


def test_absent_state_propagates_and_skips_address_conflicts():
    s = base()
    # An absent network may overlap and reuse IPs: it is being removed.
    add_net(s, name="old", subnet="10.10.1.0/25", state="absent", vms=[tiny("old1", "10.10.1.10")])
    s["tenants"][1]["state"] = "absent"
    vm(s, 0, 0, 1)["state"] = "absent"
    vm(s, 0, 0, 1)["ip"] = "10.10.1.10"  # same as web1, but web2 is going away
    assert spec.validate(s) == []
    normal = spec.normalize(s)
    acme, globex = normal["tenants"]
    assert [v["state"] for v in acme["networks"][0]["vms"]] == ["present", "absent"]
    assert acme["networks"][2]["state"] == "absent"
    assert acme["networks"][2]["vms"][0]["state"] == "absent"
    assert globex["networks"][0]["state"] == "absent"
    assert globex["networks"][0]["vms"][0]["state"] == "absent"


def test_reservation_in_the_upper_half_shrinks_the_default_range():
    s = base()
    vm(s, 0, 0, 1)["ip"] = "10.10.1.200"
    dhcp = spec.normalize(s)["tenants"][0]["networks"][0]["dhcp"]
    # Longest free run of .128-.253 around .200: .128-.199 (72) beats .201-.253 (53).
    assert dhcp["range"] == ["10.10.1.128", "10.10.1.199"]


def test_gateway_on_the_last_address_moves_the_dhcp_server():
    s = base()
    net(s)["gateway"] = "10.10.1.254"
    network = spec.normalize(s)["tenants"][0]["networks"][0]
    assert network["gateway"] == "10.10.1.254"
    assert network["dhcp"]["server"] == "10.10.1.253"
    assert network["dhcp"]["range"] == ["10.10.1.128", "10.10.1.252"]


def test_smallest_dhcp_subnet():
    s = base()
    net(s, 0, 1)["subnet"] = "10.10.2.0/29"
    del net(s, 0, 1)["vms"]
    network = spec.normalize(s)["tenants"][0]["networks"][1]
    assert network["gateway"] == "10.10.2.1"
    assert network["dhcp"]["server"] == "10.10.2.6"
    assert network["dhcp"]["range"] == ["10.10.2.4", "10.10.2.5"]
    assert network["vms"] == []


def test_explicit_range_is_kept_and_reservations_outside_it_are_fine():
    s = base()
    net(s)["dhcp"] = {"range": ["10.10.1.100", "10.10.1.200"], "domain": "Web.Example."}
    dhcp = spec.normalize(s)["tenants"][0]["networks"][0]["dhcp"]
    assert dhcp["range"] == ["10.10.1.100", "10.10.1.200"]
    assert dhcp["domain"] == "web.example"


def test_dhcp_disabled_and_other_modes():
    s = base()
    net(s, 0, 0)["dhcp"] = {"enabled": False}
    net(s, 0, 1)["mode"] = "static"
    vm(s, 0, 1)["ip"] = "10.10.2.5"
    add_net(s, name="wire", mode="system", subnet="10.10.9.0/30", vni=77)
    networks = spec.normalize(s)["tenants"][0]["networks"]
    web, db, wire = networks
    assert web["dhcp"] == {
        "enabled": False,
        "range": None,
        "server": None,
        "domain": "web.acme",
        "namespace": None,
        "legs": None,
    }
    assert web["routed"] is True
    assert db["dhcp"]["enabled"] is True
    assert db["dhcp"]["range"] is None  # reservations only
    assert db["dhcp"]["server"] == "10.10.2.254"
    assert wire["routed"] is False
    assert wire["gateway"] is None  # system: no default gateway
    assert wire["router_namespace"] is None
    assert wire["router_legs"] is None
    assert wire["dhcp"]["enabled"] is False
    assert wire["dhcp"]["domain"] is None
    assert (wire["vni"], wire["bridge"], wire["vxlan"]) == (77, "brq-77", "vxlan-77")


def test_system_network_has_no_default_gateway():
    s = base()
    add_net(s, name="wire", mode="system", subnet="10.10.9.0/24", vms=[tiny("w1", "10.10.9.1")])
    assert spec.validate(s) == []
    net(s, 0, 2)["gateway"] = "10.10.9.1"  # an explicit one is checked like any gateway
    assert messages_at(spec.validate(s), "tenants[0].networks[2].vms[0].ip") == [
        "ip 10.10.9.1 is the gateway address of the network"
    ]


def test_novlan_networks_of_a_tenant_and_cloud_share_a_segment():
    s = base()
    add_net(s, name="n2", subnet="10.20.2.0/24", mode="managed-novlan")
    add_net(s, name="n1", subnet="10.20.1.0/24", mode="managed-novlan", vni=300)
    add_net(s, name="n3", subnet="10.20.3.0/24", mode="managed-novlan", cloud="cloud_b")
    assert spec.validate(s) == []
    networks = {n["name"]: n for n in spec.normalize(s)["tenants"][0]["networks"]}
    assert networks["n1"]["vni"] == networks["n2"]["vni"] == 300
    assert networks["n1"]["bridge"] == networks["n2"]["bridge"] == "brq-300"
    assert networks["n1"]["router_legs"] == networks["n2"]["router_legs"] == ["qrb-300", "qr-300"]
    assert networks["n1"]["dhcp"]["legs"] == ["dhb-300", "dhn-300"]  # by name: n1 first
    assert networks["n2"]["dhcp"]["legs"] == ["dhb-300-1", "dhn-300-1"]
    assert networks["n1"]["dhcp"]["namespace"] == "qdhcp-acme.n1"
    assert networks["n3"]["vni"] != 300  # another cloud: another segment
    assert (
        networks["n3"]["vni"]
        == spec.allocate_vnis({"acme/~novlan/cloud_b": None})["acme/~novlan/cloud_b"]
    )


# --------------------------------------------------------------------------- normalize


def test_normalize_example_exactly():
    normal = spec.normalize(base(), CLOUDS)
    web = normal["tenants"][0]["networks"][0]
    assert normal["tenants"][0]["name"] == "acme"
    assert normal["tenants"][0]["state"] == "present"
    assert normal["tenants"][0]["router_namespace"] == "qrouter-acme"
    assert web == {
        "tenant": "acme",
        "name": "web",
        "state": "present",
        "cloud": "cloud_a",
        "mode": "managed",
        "subnet": "10.10.1.0/24",
        "prefixlen": 24,
        "netmask": "255.255.255.0",
        "gateway": "10.10.1.1",
        "routed": True,
        "vni": 16593158,
        "bridge": "brq-16593158",
        "vxlan": "vxlan-16593158",
        "router_namespace": "qrouter-acme",
        "router_legs": ["qrb-16593158", "qr-16593158"],
        "gateway_mac": "02:6d:63:40:a4:44",
        "dhcp": {
            "enabled": True,
            "range": ["10.10.1.128", "10.10.1.253"],
            "server": "10.10.1.254",
            "domain": "web.acme",
            "namespace": "qdhcp-acme.web",
            "legs": ["dhb-16593158", "dhn-16593158"],
        },
        "security_group": None,
        "vms": [
            {
                "tenant": "acme",
                "network": "web",
                "name": "web1",
                "state": "present",
                "vcpus": 1,
                "memory_mib": 128,
                "disk_mib": 64,
                "ip": "10.10.1.10",
                "floating_ip": None,
                "image": None,
                "host": None,
                "storage": "local",
                "storage_pool": None,
                "storage_path": None,
                "mac": "52:54:00:88:97:61",
                "domain_name": "acme-web1",
                "adopted": False,
                "fqdn": "web1.web.acme",
            },
            {
                "tenant": "acme",
                "network": "web",
                "name": "web2",
                "state": "present",
                "vcpus": 1,
                "memory_mib": 128,
                "disk_mib": 64,
                "ip": "10.10.1.11",
                "floating_ip": None,
                "image": None,
                "host": None,
                "storage": "local",
                "storage_pool": None,
                "storage_path": None,
                "mac": "52:54:00:50:c5:1d",
                "domain_name": "acme-web2",
                "adopted": False,
                "fqdn": "web2.web.acme",
            },
        ],
    }
    db = normal["tenants"][0]["networks"][1]
    assert (db["vni"], db["gateway"], db["dhcp"]["range"]) == (
        3076861,
        "10.10.2.1",
        ["10.10.2.128", "10.10.2.253"],
    )
    assert db["vms"][0]["ip"] is None
    app = normal["tenants"][1]["networks"][0]
    assert (app["vni"], app["dhcp"]["namespace"], app["vms"][0]["mac"]) == (
        2643749,
        "qdhcp-globex.app",
        "52:54:00:5d:1d:d5",
    )


def test_normalize_does_not_touch_its_input():
    s = base()
    spec.normalize(s)
    assert s == BASE


def test_normalize_raises_with_every_problem():
    s = base()
    net(s)["subnet"] = "10.10.1.5/24"
    vm(s, 1)["memory"] = "abc"
    with pytest.raises(spec.SpecError) as info:
        spec.normalize(s)
    assert [p.path for p in info.value.problems] == [
        "tenants[0].networks[0].subnet",
        "tenants[1].networks[0].vms[0].memory",
    ]
    assert "2 problems in the spec" in str(info.value)
    assert "tenants[0].networks[0].subnet: '10.10.1.5/24' has host bits set" in str(info.value)


def vnis_of(s: dict[str, Any]) -> dict[str, int]:
    return {
        f"{t['name']}/{n['name']}": n["vni"]
        for t in spec.normalize(s)["tenants"]
        for n in t["networks"]
    }


def test_vni_is_stable_when_an_unrelated_network_is_added_or_removed():
    before = vnis_of(base())
    s = base()
    add_net(s, name="cache", subnet="10.10.3.0/24")
    add_net(s, t=1, name="aaa", subnet="10.30.0.0/24", cloud="cloud_b")
    after_add = vnis_of(s)
    assert {k: after_add[k] for k in before} == before
    s = base()
    del s["tenants"][0]["networks"][1]  # remove acme/db
    after_remove = vnis_of(s)
    assert after_remove == {k: v for k, v in before.items() if k != "acme/db"}
    s = base()
    net(s)["cloud"] = "cloud_b"  # moving a network to another cloud keeps its VNI
    assert vnis_of(s) == before


def test_vni_allocation_rule_and_collision_resolution():
    auto = spec.allocate_vnis({"acme/web": None})["acme/web"]
    assert auto == 16593158
    assert spec.VNI_AUTO_MIN <= auto <= naming.VNI_MAX
    # An explicit VNI on the allocated value pushes the allocation to the next free one.
    assert spec.allocate_vnis({"acme/web": None, "x/y": auto}) == {
        "acme/web": auto + 1,
        "x/y": auto,
    }
    # Explicit VNIs are claimed first, whatever the order of the keys.
    assert spec.allocate_vnis({"acme/web": None, "a/b": auto}) == {
        "acme/web": auto + 1,
        "a/b": auto,
    }


def test_explicit_vni_below_auto_range_never_moves_allocations():
    before = vnis_of(base())
    s = base()
    net(s, 0, 1)["vni"] = 10
    after = vnis_of(s)
    assert after["acme/db"] == 10
    assert after["acme/web"] == before["acme/web"]
    assert after["globex/app"] == before["globex/app"]


def test_mac_is_stable_across_moves_and_edits():
    def macs(s: dict[str, Any]) -> dict[str, str]:
        return {
            v["name"]: v["mac"]
            for t in spec.normalize(s)["tenants"]
            for n in t["networks"]
            for v in n["vms"]
        }

    before = macs(base())
    s = base()
    moved = net(s)["vms"].pop(0)
    moved["ip"] = "10.10.2.10"
    net(s, 0, 1)["vms"].append(moved)  # move web1 to db
    vm(s, 0, 0, 0)["memory"] = 1
    net(s, 0, 0)["vms"].append(tiny("web3"))
    after = macs(s)
    assert {k: after[k] for k in before} == before


@pytest.mark.parametrize(
    ("value", "mib"),
    [
        (1, 1024),
        (2, 2048),
        (0.25, 256),
        (0.5, 512),
        (1.5, 1536),
        (0.1, 103),  # 102.4 MiB rounds up
        ("256MiB", 256),
        ("256mib", 256),
        ("1 GiB", 1024),
        ("1GiB", 1024),
        ("1gb", 1024),
        ("512M", 512),
        ("512MB", 512),
        ("2g", 2048),
        ("0.5G", 512),
        (".5G", 512),
        ("2048KiB", 2),
        ("1536K", 2),  # 1.5 MiB rounds up
        ("1T", 1024 * 1024),
        ("1TiB", 1024 * 1024),
        ("3", 3072),  # a numeric string is GB, like a number
        (" 128 MiB ", 128),
    ],
)
def test_sizes(value, mib):
    assert spec.parse_size_mib(value) == mib


def test_units_normalised_in_vms():
    s = base()
    vm(s)["memory"] = 0.25
    vm(s)["disk"] = 1
    vm(s, 0, 0, 1)["memory"] = "1 GiB"
    vm(s, 0, 0, 1)["disk"] = "512M"
    vms = spec.normalize(s)["tenants"][0]["networks"][0]["vms"]
    assert [(v["memory_mib"], v["disk_mib"]) for v in vms] == [(256, 1024), (1024, 512)]


def test_optional_vm_fields_are_kept():
    s = base()
    vm(s)["image"] = "busybox"
    vm(s)["host"] = "mcm-a1"
    vm(s)["vcpus"] = 64
    result = spec.normalize(s)["tenants"][0]["networks"][0]["vms"][0]
    assert (result["image"], result["host"], result["vcpus"]) == ("busybox", "mcm-a1", 64)


def test_storage_defaults_to_local():
    result = spec.normalize(base())["tenants"][0]["networks"][0]["vms"][0]
    assert (result["storage"], result["storage_pool"], result["storage_path"]) == (
        "local",
        None,
        None,
    )


def test_shared_storage_vm_gets_the_default_pool_and_directory():
    s = base()
    vm(s)["storage"] = "shared"
    vms = spec.normalize(s)["tenants"][0]["networks"][0]["vms"]
    assert (vms[0]["storage"], vms[0]["storage_pool"], vms[0]["storage_path"]) == (
        "shared",
        spec.DEFAULT_SHARED_POOL,
        spec.DEFAULT_SHARED_PATH,
    )
    assert (spec.DEFAULT_SHARED_POOL, spec.DEFAULT_SHARED_PATH) == (
        "mcm-shared",
        "/var/lib/mcm/shared/vms",
    )
    assert vms[1]["storage"] == "local"  # per VM


def test_shared_storage_can_be_placed_elsewhere_and_is_normalised():
    s = base()
    s["shared_storage"] = {"path": "/srv/nfs//vms/", "pool": "nfs-vms"}
    vm(s)["storage"] = "shared"
    assert spec.validate(s, CLOUDS) == []
    result = spec.normalize(s, CLOUDS)
    assert "shared_storage" not in result  # resolved into each shared VM
    first = result["tenants"][0]["networks"][0]["vms"][0]
    assert (first["storage_pool"], first["storage_path"]) == ("nfs-vms", "/srv/nfs/vms")


def test_shared_storage_problems_are_all_reported():
    s = base()
    s["shared_storage"] = {"path": "relative", "pool": "mcm"}
    vm(s)["storage"] = "nfs"
    assert [str(p) for p in spec.validate(s, CLOUDS)] == [
        "shared_storage.path: 'relative' is not an absolute path: write it from /",
        "shared_storage.pool: pool 'mcm' is the pool of local disks (at /var/lib/mcm/vms): "
        "name the shared pool differently, e.g. 'mcm-shared'",
        "tenants[0].networks[0].vms[0].storage: invalid storage 'nfs': allowed are local, shared",
    ]


# --------------------------------------------------------------------------- bad specs

Mutation = Callable[[dict[str, Any]], None]

N0 = "tenants[0].networks[0]"
N1 = "tenants[0].networks[1]"
V0 = f"{N0}.vms[0]"
V1 = f"{N0}.vms[1]"


def setter(getter: Callable[[dict[str, Any]], dict[str, Any]], key: str, value: Any) -> Mutation:
    def mutate(s: dict[str, Any]) -> None:
        getter(s)[key] = value

    return mutate


def deleter(getter: Callable[[dict[str, Any]], dict[str, Any]], key: str) -> Mutation:
    def mutate(s: dict[str, Any]) -> None:
        del getter(s)[key]

    return mutate


def shared(key: str, value: Any) -> Mutation:
    def mutate(s: dict[str, Any]) -> None:
        s.setdefault("shared_storage", {})[key] = value

    return mutate


def both(*mutations: Mutation) -> Mutation:
    def mutate(s: dict[str, Any]) -> None:
        for mutation in mutations:
            mutation(s)

    return mutate


def n0(s: dict[str, Any]) -> dict[str, Any]:
    return net(s, 0, 0)


def n1(s: dict[str, Any]) -> dict[str, Any]:
    return net(s, 0, 1)


def v0(s: dict[str, Any]) -> dict[str, Any]:
    return vm(s, 0, 0, 0)


def v1(s: dict[str, Any]) -> dict[str, Any]:
    return vm(s, 0, 0, 1)


def t0(s: dict[str, Any]) -> dict[str, Any]:
    return s["tenants"][0]


def t1(s: dict[str, Any]) -> dict[str, Any]:
    return s["tenants"][1]


def dhcp0(s: dict[str, Any]) -> dict[str, Any]:
    return n0(s).setdefault("dhcp", {})


def novlan_pair(vni_a: int, vni_b: int) -> Mutation:
    def mutate(s: dict[str, Any]) -> None:
        add_net(s, name="n1", subnet="10.20.1.0/24", mode="managed-novlan", vni=vni_a)
        add_net(s, name="n2", subnet="10.20.2.0/24", mode="managed-novlan", vni=vni_b)

    return mutate


def replace_vms(getter: Callable[[dict[str, Any]], dict[str, Any]], *vms: Any) -> Mutation:
    return setter(getter, "vms", list(vms))


def rename_tenants(first: str, second: str, net_a: str, net_b: str) -> Mutation:
    def mutate(s: dict[str, Any]) -> None:
        t0(s)["name"], t1(s)["name"] = first, second
        n0(s)["name"], net(s, 1, 0)["name"] = net_a, net_b

    return mutate


BAD: list[tuple[str, Mutation, str, str]] = [
    # --- CIDR, gateway, addresses
    ("cidr-syntax", setter(n0, "subnet", "10.10.1.0/33"), f"{N0}.subnet", "invalid CIDR"),
    ("cidr-garbage", setter(n0, "subnet", "ten/24"), f"{N0}.subnet", "invalid CIDR 'ten/24'"),
    (
        "cidr-host-bits",
        setter(n0, "subnet", "10.10.1.5/24"),
        f"{N0}.subnet",
        "has host bits set: did you mean 10.10.1.0/24?",
    ),
    ("cidr-no-prefix", setter(n0, "subnet", "10.10.1.0"), f"{N0}.subnet", "no prefix length"),
    ("cidr-ipv6", setter(n0, "subnet", "fd00::/64"), f"{N0}.subnet", "only IPv4 is supported"),
    ("cidr-type", setter(n0, "subnet", 10), f"{N0}.subnet", "must be a CIDR string"),
    (
        "overlap",
        setter(n1, "subnet", "10.10.1.128/25"),
        f"{N1}.subnet",
        "overlaps 10.10.1.0/24 of network 'web'",
    ),
    (
        "overlap-same-cidr",
        setter(n1, "subnet", "10.10.1.0/24"),
        f"{N1}.subnet",
        "10.10.1.0/24 overlaps 10.10.1.0/24",
    ),
    ("ip-outside", setter(v1, "ip", "10.10.2.5"), f"{V1}.ip", "is outside subnet 10.10.1.0/24"),
    ("ip-network", setter(v1, "ip", "10.10.1.0"), f"{V1}.ip", "is the network address"),
    ("ip-broadcast", setter(v1, "ip", "10.10.1.255"), f"{V1}.ip", "is the broadcast address"),
    ("ip-gateway", setter(v1, "ip", "10.10.1.1"), f"{V1}.ip", "is the gateway address"),
    (
        "ip-explicit-gateway",
        both(setter(n0, "gateway", "10.10.1.11")),
        f"{V1}.ip",
        "ip 10.10.1.11 is the gateway address",
    ),
    ("ip-dhcp-server", setter(v1, "ip", "10.10.1.254"), f"{V1}.ip", "DHCP server address"),
    ("ip-duplicate", setter(v1, "ip", "10.10.1.10"), f"{V1}.ip", "duplicate ip 10.10.1.10"),
    ("ip-syntax", setter(v1, "ip", "10.10.1.300"), f"{V1}.ip", "not an IPv4 address"),
    ("ip-ipv6", setter(v1, "ip", "fd00::5"), f"{V1}.ip", "only IPv4 is supported"),
    ("ip-type", setter(v1, "ip", 5), f"{V1}.ip", "must be an IPv4 address string"),
    ("gw-outside", setter(n0, "gateway", "10.10.2.1"), f"{N0}.gateway", "outside subnet"),
    ("gw-network", setter(n0, "gateway", "10.10.1.0"), f"{N0}.gateway", "network address"),
    ("gw-broadcast", setter(n0, "gateway", "10.10.1.255"), f"{N0}.gateway", "broadcast address"),
    # --- DHCP
    (
        "range-outside",
        setter(dhcp0, "range", ["10.10.1.100", "10.10.2.10"]),
        f"{N0}.dhcp.range",
        "range end 10.10.2.10 is outside subnet 10.10.1.0/24",
    ),
    (
        "range-reversed",
        setter(dhcp0, "range", ["10.10.1.200", "10.10.1.100"]),
        f"{N0}.dhcp.range",
        "reversed: start 10.10.1.200 is after end 10.10.1.100",
    ),
    (
        "range-gateway",
        both(
            setter(n0, "gateway", "10.10.1.150"),
            setter(dhcp0, "range", ["10.10.1.100", "10.10.1.200"]),
        ),
        f"{N0}.dhcp.range",
        "contains the gateway 10.10.1.150",
    ),
    (
        "range-reservation",
        setter(dhcp0, "range", ["10.10.1.5", "10.10.1.20"]),
        f"{N0}.dhcp.range",
        "contains 10.10.1.10, reserved for vm 'web1'",
    ),
    (
        "range-dhcp-server",
        setter(dhcp0, "range", ["10.10.1.100", "10.10.1.254"]),
        f"{N0}.dhcp.range",
        "contains the DHCP server address 10.10.1.254",
    ),
    (
        "range-not-a-list",
        setter(dhcp0, "range", "10.10.1.100-10.10.1.200"),
        f"{N0}.dhcp.range",
        "must be a list [first, last]",
    ),
    (
        "range-three-items",
        setter(dhcp0, "range", ["10.10.1.100", "10.10.1.150", "10.10.1.200"]),
        f"{N0}.dhcp.range",
        "must be a list [first, last]",
    ),
    (
        "range-bad-address",
        setter(dhcp0, "range", ["10.10.1.100", "x"]),
        f"{N0}.dhcp.range",
        "invalid range end 'x'",
    ),
    (
        "dhcp-small-30",
        both(setter(n1, "subnet", "10.10.2.0/30"), deleter(n1, "vms")),
        f"{N1}.subnet",
        "too small for DHCP",
    ),
    (
        "dhcp-small-31",
        both(setter(n1, "subnet", "10.10.2.0/31"), deleter(n1, "vms")),
        f"{N1}.subnet",
        "10.10.2.0/31 is too small for DHCP",
    ),
    (
        "small-32-no-dhcp",
        both(
            setter(n1, "subnet", "10.10.2.0/32"),
            setter(n1, "dhcp", {"enabled": False}),
            deleter(n1, "vms"),
        ),
        f"{N1}.subnet",
        "10.10.2.0/32 is too small: it needs a gateway",
    ),
    (
        "default-range-full",
        both(
            setter(n1, "subnet", "10.10.2.0/29"),
            replace_vms(n1, tiny("db1", "10.10.2.4"), tiny("db2", "10.10.2.5")),
        ),
        f"{N1}.dhcp.range",
        "no free address left",
    ),
    (
        "dhcp-with-system",
        both(setter(n1, "mode", "system"), setter(n1, "dhcp", {"enabled": True})),
        f"{N1}.dhcp",
        "mode system has no addressing",
    ),
    (
        "range-with-static",
        both(
            setter(n1, "mode", "static"),
            setter(n1, "dhcp", {"range": ["10.10.2.100", "10.10.2.200"]}),
            replace_vms(n1, tiny("db1", "10.10.2.5")),
        ),
        f"{N1}.dhcp.range",
        "mode static hands out reservations only",
    ),
    ("static-without-ip", setter(n1, "mode", "static"), f"{N1}.vms[0].ip", "every VM needs an ip"),
    ("dhcp-enabled-type", setter(dhcp0, "enabled", "yes"), f"{N0}.dhcp.enabled", "true or false"),
    ("dhcp-domain", setter(dhcp0, "domain", "bad_domain"), f"{N0}.dhcp.domain", "invalid DNS"),
    ("dhcp-type", setter(n0, "dhcp", True), f"{N0}.dhcp", "must be a mapping"),
    # --- sizes and vcpus
    ("memory-abc", setter(v0, "memory", "abc"), f"{V0}.memory", "invalid size 'abc'"),
    ("memory-zero", setter(v0, "memory", 0), f"{V0}.memory", "must be positive, got 0 GB"),
    ("memory-negative", setter(v0, "memory", -1), f"{V0}.memory", "must be positive"),
    ("memory-negative-str", setter(v0, "memory", "-1G"), f"{V0}.memory", "invalid size '-1G'"),
    ("memory-bool", setter(v0, "memory", True), f"{V0}.memory", "a boolean"),
    ("memory-too-small", setter(v0, "memory", "8MiB"), f"{V0}.memory", "at least 16 MiB"),
    ("memory-bad-unit", setter(v0, "memory", "128 XB"), f"{V0}.memory", "invalid size"),
    ("memory-bytes", setter(v0, "memory", "128B"), f"{V0}.memory", "invalid size"),
    ("memory-list", setter(v0, "memory", [1]), f"{V0}.memory", "got a list"),
    ("memory-nan", setter(v0, "memory", float("nan")), f"{V0}.memory", "finite"),
    ("disk-zero", setter(v0, "disk", "0MiB"), f"{V0}.disk", "must be positive"),
    ("disk-abc", setter(v0, "disk", "lots"), f"{V0}.disk", "invalid size 'lots'"),
    ("vcpus-zero", setter(v0, "vcpus", 0), f"{V0}.vcpus", "integer from 1 to 64"),
    ("vcpus-65", setter(v0, "vcpus", 65), f"{V0}.vcpus", "integer from 1 to 64"),
    ("vcpus-bool", setter(v0, "vcpus", True), f"{V0}.vcpus", "got a boolean"),
    ("vcpus-string", setter(v0, "vcpus", "2"), f"{V0}.vcpus", "got a string"),
    ("vcpus-float", setter(v0, "vcpus", 1.5), f"{V0}.vcpus", "got a number"),
    # --- names
    ("tenant-upper", setter(t0, "name", "Acme"), "tenants[0].name", "lowercase letters"),
    ("tenant-underscore", setter(t0, "name", "ac_me"), "tenants[0].name", "invalid tenant name"),
    ("tenant-hyphen", setter(t0, "name", "-acme"), "tenants[0].name", "not starting or ending"),
    ("tenant-too-long", setter(t0, "name", "a" * 25), "tenants[0].name", "at most 24"),
    ("tenant-empty", setter(t0, "name", ""), "tenants[0].name", "must not be empty"),
    ("network-too-long", setter(n0, "name", "n" * 64), f"{N0}.name", "at most 63"),
    ("network-dot", setter(n0, "name", "web.1"), f"{N0}.name", "invalid network name"),
    ("vm-name", setter(v0, "name", "web_1"), f"{V0}.name", "invalid vm name 'web_1'"),
    ("vm-name-int", setter(v0, "name", 123), f"{V0}.name", "must be a string"),
    ("host-invalid", setter(v0, "host", "bad_host!"), f"{V0}.host", "invalid host name"),
    ("host-label-long", setter(v0, "host", "h" * 64), f"{V0}.host", "invalid host name"),
    ("image-empty", setter(v0, "image", " "), f"{V0}.image", "non-empty string"),
    # --- duplicates and derived-name clashes
    ("dup-tenant", setter(t1, "name", "acme"), "tenants[1].name", "duplicate tenant name 'acme'"),
    ("dup-network", setter(n1, "name", "web"), f"{N1}.name", "duplicate network name 'web'"),
    (
        "dup-vm-across-networks",
        setter(lambda s: vm(s, 0, 1, 0), "name", "web1"),
        f"{N1}.vms[0].name",
        "duplicate vm name 'web1' in tenant 'acme' (also tenants[0].networks[0].vms[0])",
    ),
    (
        "mac-collision",
        both(setter(v0, "name", "vm1075"), setter(v1, "name", "vm1846")),
        f"{V1}.name",
        "derived MAC 52:54:00:2d:a2:ec collides with vm 'vm1075'",
    ),
    (
        "domain-name-clash",
        both(
            setter(t0, "name", "x-y"),
            setter(t1, "name", "x"),
            setter(lambda s: vm(s, 1, 0, 0), "name", "y-web1"),
            setter(v0, "name", "web1"),
        ),
        "tenants[1].networks[0].vms[0].name",
        "derived libvirt domain name 'x-y-web1' clashes",
    ),
    # --- VNI
    ("vni-zero", setter(n0, "vni", 0), f"{N0}.vni", "out of range 1..16777215"),
    ("vni-too-big", setter(n0, "vni", 16777216), f"{N0}.vni", "out of range"),
    ("vni-string", setter(n0, "vni", "100"), f"{N0}.vni", "must be an integer"),
    ("vni-bool", setter(n0, "vni", True), f"{N0}.vni", "must be an integer"),
    (
        "vni-duplicate",
        both(setter(n0, "vni", 100), setter(lambda s: net(s, 1, 0), "vni", 100)),
        "tenants[1].networks[0].vni",
        "VNI 100 is already used by network 'web' of tenant 'acme'",
    ),
    (
        "vni-novlan-conflict",
        novlan_pair(100, 200),
        "tenants[0].networks[3].vni",
        "share one segment",
    ),
    (
        "vni-novlan-vs-managed",
        both(novlan_pair(100, 100), setter(n0, "vni", 100)),
        "tenants[0].networks[2].vni",
        "VNI 100 is already used",
    ),
    # --- clouds, modes, states
    (
        "cloud-unknown",
        setter(n0, "cloud", "cloud_z"),
        f"{N0}.cloud",
        "unknown cloud group 'cloud_z'",
    ),
    ("cloud-typo", setter(n0, "cloud", "cloud-a"), f"{N0}.cloud", "did you mean 'cloud_a'?"),
    ("cloud-type", setter(n0, "cloud", ["cloud_a"]), f"{N0}.cloud", "name of an inventory group"),
    ("mode-typo", setter(n0, "mode", "manged"), f"{N0}.mode", "did you mean 'managed'?"),
    ("mode-type", setter(n0, "mode", 1), f"{N0}.mode", "must be one of managed"),
    ("state-tenant", setter(t0, "state", "gone"), "tenants[0].state", "invalid state 'gone'"),
    ("state-network", setter(n0, "state", "deleted"), f"{N0}.state", "present, absent"),
    ("state-vm", setter(v0, "state", False), f"{V0}.state", "must be one of present, absent"),
    # --- keys and types
    ("unknown-top", lambda s: s.update(tenant=[]), "tenant", "did you mean 'tenants'?"),
    ("unknown-tenant", setter(t0, "netwroks", []), "tenants[0].netwroks", "'networks'?"),
    (
        "unknown-network",
        setter(n0, "subnett", "10.0.0.0/24"),
        f"{N0}.subnett",
        "unknown key 'subnett' (did you mean 'subnet'?)",
    ),
    ("unknown-dhcp", setter(dhcp0, "ranges", []), f"{N0}.dhcp.ranges", "did you mean 'range'?"),
    ("unknown-vm", setter(v0, "memroy", 1), f"{V0}.memroy", "did you mean 'memory'?"),
    ("unknown-no-guess", setter(v0, "colour", "red"), f"{V0}.colour", "known keys: name, vcpus"),
    ("tenants-string", lambda s: s.update(tenants="acme"), "tenants", "must be a list of tenants"),
    ("tenants-null", lambda s: s.update(tenants=None), "tenants", "must be a list of tenants"),
    ("networks-mapping", setter(t0, "networks", {}), "tenants[0].networks", "list of networks"),
    ("vms-string", setter(n0, "vms", "web1"), f"{N0}.vms", "must be a list of VMs"),
    ("tenant-string", lambda s: s["tenants"].append("x"), "tenants[2]", "must be a mapping"),
    ("vm-list", lambda s: n0(s)["vms"].append([]), f"{N0}.vms[2]", "must be a mapping"),
    ("missing-tenants", lambda s: s.pop("tenants"), "tenants", "missing required key"),
    ("missing-networks", deleter(t0, "networks"), "tenants[0].networks", "missing required key"),
    ("missing-subnet", deleter(n0, "subnet"), f"{N0}.subnet", "missing required key"),
    ("missing-cloud", deleter(n0, "cloud"), f"{N0}.cloud", "missing required key"),
    ("missing-name", deleter(v0, "name"), f"{V0}.name", "missing required key"),
    ("missing-memory", deleter(v0, "memory"), f"{V0}.memory", "missing required key"),
    ("missing-vcpus", deleter(v0, "vcpus"), f"{V0}.vcpus", "missing required key"),
    # --- storage and shared_storage
    ("storage-typo", setter(v0, "storage", "sharde"), f"{V0}.storage", "did you mean 'shared'?"),
    ("storage-type", setter(v0, "storage", True), f"{V0}.storage", "must be one of local, shared"),
    ("shared-string", lambda s: s.update(shared_storage="/x"), "shared_storage", "mapping"),
    ("shared-key", shared("paht", "/x"), "shared_storage.paht", "did you mean 'path'?"),
    ("shared-relative", shared("path", "vms"), "shared_storage.path", "is not an absolute path"),
    ("shared-dotdot", shared("path", "/srv/../etc"), "shared_storage.path", "contains '..'"),
    ("shared-root", shared("path", "//"), "shared_storage.path", "root directory"),
    ("shared-space", shared("path", "/srv/my vms"), "shared_storage.path", "whitespace"),
    ("shared-number", shared("path", 7), "shared_storage.path", "absolute directory path"),
    ("shared-local", shared("path", "/var/lib/mcm/vms/"), "shared_storage.path", "local disks"),
    ("shared-pool-mcm", shared("pool", "mcm"), "shared_storage.pool", "pool of local disks"),
    ("shared-pool-name", shared("pool", "a/b"), "shared_storage.pool", "invalid pool name"),
]


def test_enough_distinct_bad_specs():
    assert len({case[0] for case in BAD}) == len(BAD) >= 35


@pytest.mark.parametrize(
    ("mutate", "path", "fragment"), [c[1:] for c in BAD], ids=[c[0] for c in BAD]
)
def test_bad_spec(mutate, path, fragment):
    s = base()
    mutate(s)
    problems = spec.validate(s, CLOUDS)
    found = messages_at(problems, path)
    assert any(fragment in message for message in found), (
        f"no problem at {path!r} containing {fragment!r}; got: {[str(p) for p in problems]}"
    )
    with pytest.raises(spec.SpecError):
        spec.normalize(s, CLOUDS)


def test_root_must_be_a_mapping():
    assert [str(p) for p in spec.validate(["tenants"])] == [
        "(top level): the spec must be a mapping with a 'tenants' list, got a list"
    ]


def test_clouds_none_skips_the_group_check():
    s = base()
    net(s)["cloud"] = "somewhere_else"
    assert spec.validate(s) == []
    assert messages_at(spec.validate(s, CLOUDS), f"{N0}.cloud")


def test_several_problems_are_all_reported_in_path_order():
    s = base()
    s["tenants"][1]["name"] = "acme"  # duplicate tenant
    net(s)["subnett"] = "10.0.0.0/8"  # unknown key
    vm(s)["memory"] = "abc"
    vm(s, 0, 0, 1)["ip"] = "10.10.9.9"
    vm(s, 0, 1, 0)["vcpus"] = 0
    net(s, 0, 1)["subnet"] = "10.10.1.0/25"  # overlaps web
    problems = spec.validate(s, CLOUDS)
    assert [p.path for p in problems] == [
        "tenants[0].networks[0].subnett",
        "tenants[0].networks[0].vms[0].memory",
        "tenants[0].networks[0].vms[1].ip",
        "tenants[0].networks[1].subnet",
        "tenants[0].networks[1].vms[0].vcpus",
        "tenants[1].name",
    ]
    assert str(problems[0]) == (
        "tenants[0].networks[0].subnett: unknown key 'subnett' (did you mean 'subnet'?)"
    )


def test_no_cascade_from_one_bad_subnet():
    s = base()
    net(s)["subnet"] = "not-a-cidr/24"
    assert [p.path for p in spec.validate(s)] == ["tenants[0].networks[0].subnet"]


def test_problem_str_and_spec_error():
    problem = spec.Problem("tenants[0].name", "bad")
    assert str(problem) == "tenants[0].name: bad"
    error = spec.SpecError([problem])
    assert error.problems == [problem]
    assert str(error) == "1 problem in the spec:\n  - tenants[0].name: bad"


# --------------------------------------------------------------------------- loading

SYNTAX_ERROR = """\
tenants:
  - name: acme
    networks:
      - name: web
        cloud: cloud_a
        subnet: 10.10.1.0/24
       vms: []
"""


def test_yaml_syntax_error_names_the_line():
    with pytest.raises(spec.SpecError) as info:
        spec.load_spec_text(SYNTAX_ERROR, "tenants.yml")
    (problem,) = info.value.problems
    assert problem.path == "tenants.yml"
    assert problem.message.startswith("line 7, column 8: ")


def test_yaml_unclosed_flow_names_the_line():
    with pytest.raises(spec.SpecError) as info:
        spec.load_spec_text("tenants:\n  - {name: acme, networks: [\n")
    assert info.value.problems[0].message.startswith("line 3, column 1: ")
    assert info.value.problems[0].path == "<spec>"


def test_yaml_duplicate_key_is_an_error():
    text = "tenants:\n  - name: acme\n    networks: []\n    name: other\n"
    with pytest.raises(spec.SpecError) as info:
        spec.load_spec_text(text)
    assert info.value.problems[0].message == (
        "line 4, column 5: duplicate key 'name' (first given on line 2)"
    )


def test_yaml_merge_keys_are_not_duplicates():
    text = (
        "sizes: &tiny {vcpus: 1, memory: 128MiB, disk: 64MiB}\n"
        "tenants:\n  - name: acme\n    networks:\n"
        "      - {name: web, cloud: a, subnet: 10.0.0.0/24,"
        " vms: [{<<: *tiny, name: w1, vcpus: 2}]}\n"
    )
    data = spec.load_spec_text(text)
    assert data["tenants"][0]["networks"][0]["vms"][0] == {
        "vcpus": 2,
        "memory": "128MiB",
        "disk": "64MiB",
        "name": "w1",
    }
    # Loading is not validating: the extra top-level key is reported by validate.
    assert [p.path for p in spec.validate(data)] == ["sizes"]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "the document is empty"),
        ("# only a comment\n", "the document is empty"),
        ("- acme\n", "the top level must be a mapping with a 'tenants' list, got a list"),
        ("acme\n", "got a string"),
    ],
)
def test_yaml_document_shape(text, fragment):
    with pytest.raises(spec.SpecError) as info:
        spec.load_spec_text(text, "x.yml")
    (problem,) = info.value.problems
    assert problem.path == "x.yml"
    assert fragment in problem.message


def test_loaded_example_normalises():
    data = spec.load_spec_text(EXAMPLE.read_text())
    normal = spec.normalize(data, CLOUDS)
    assert [(t["name"], [n["name"] for n in t["networks"]]) for t in normal["tenants"]] == [
        ("acme", ["web", "db"]),
        ("globex", ["app"]),
    ]
    sizes = {
        (v["vcpus"], v["memory_mib"], v["disk_mib"])
        for t in normal["tenants"]
        for n in t["networks"]
        for v in n["vms"]
    }
    assert sizes == {(1, 128, 64)}
