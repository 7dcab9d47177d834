"""Security groups and floating addresses: spec validation, the plan, the nftables engine."""

from __future__ import annotations

import copy
import importlib
from typing import Any

import plan
import pytest
import spec

UTILS = "ansible_collections.multicloud.migration.plugins.module_utils"
fw = importlib.import_module(f"{UTILS}.firewall")
hn = importlib.import_module(f"{UTILS}.host_network")

CLOUDS = {"cloud_a", "cloud_b"}
GROUPS = {"cloud_a": ["mcm-a1", "mcm-a2"], "cloud_b": ["mcm-b1"]}
HOSTVARS = {
    "mcm-a1": {"underlay_ip": "172.30.1.11", "wan_ip": "172.30.0.11"},
    "mcm-a2": {"underlay_ip": "172.30.1.12", "wan_ip": "172.30.0.12"},
    "mcm-b1": {"underlay_ip": "172.30.2.11", "wan_ip": "172.30.0.21"},
}
VM = {"name": "s1", "vcpus": 1, "memory": "128MiB", "disk": "64MiB", "ip": "10.40.2.10",
      "floating_ip": "10.40.100.10"}  # fmt: skip
GROUP = {
    "default": "drop",
    "ingress": [
        {"proto": "tcp", "ports": 8080, "from": "10.40.1.32/27"},
        {"proto": "udp", "ports": "5000-5010", "action": "drop"},
        {"proto": "icmp", "from": "10.40.1.0/24"},
    ],
}


def base() -> dict[str, Any]:
    return {
        "tenants": [
            {
                "name": "sgt",
                "floating_range": "10.40.100.0/24",
                "networks": [
                    {"name": "client", "cloud": "cloud_a", "subnet": "10.40.1.0/24"},
                    {
                        "name": "web",
                        "cloud": "cloud_a",
                        "subnet": "10.40.2.0/24",
                        "security_group": copy.deepcopy(GROUP),
                        "vms": [dict(VM)],
                    },
                ],
            }
        ]
    }


def web(data: dict) -> dict:
    return data["tenants"][0]["networks"][1]


def problems(data: dict) -> list[str]:
    return [str(p) for p in spec.validate(data, CLOUDS)]


def hosts():
    return plan.hosts_from_inventory(GROUPS, GROUPS, HOSTVARS)


# --------------------------------------------------------------------------- spec


def test_security_group_and_floating_address_normalise():
    normal = spec.normalize(base(), CLOUDS)
    tenant = normal["tenants"][0]
    assert tenant["floating_range"] == "10.40.100.0/24"
    assert tenant["firewall_table"] == "mcm-sgt"
    assert tenant["networks"][0]["security_group"] is None
    group = tenant["networks"][1]["security_group"]
    assert group == {
        "default": "drop",
        "chain": "sg-web",
        "ingress": [
            {"proto": "tcp", "ports": "8080", "from": "10.40.1.32/27", "action": "accept"},
            {"proto": "udp", "ports": "5000-5010", "from": "0.0.0.0/0", "action": "drop"},
            {"proto": "icmp", "ports": None, "from": "10.40.1.0/24", "action": "accept"},
        ],
    }
    assert tenant["networks"][1]["vms"][0]["floating_ip"] == "10.40.100.10"


def test_an_empty_group_drops_everything_by_default():
    data = base()
    web(data)["security_group"] = {}
    group = spec.normalize(data, CLOUDS)["tenants"][0]["networks"][1]["security_group"]
    assert group == {"default": "drop", "ingress": [], "chain": "sg-web"}


@pytest.mark.parametrize(
    ("rule", "path", "text"),
    [
        ({"proto": "tpc"}, "proto", "did you mean 'tcp'?"),
        ({"proto": "icmp", "ports": 22}, "ports", "ports need proto tcp or udp"),
        ({"ports": 22}, "ports", "ports need proto tcp or udp (proto is 'any')"),
        ({"proto": "tcp", "ports": 70000}, "ports", "out of range 1..65535"),
        ({"proto": "tcp", "ports": "9000-8000"}, "ports", "reversed: write 8000-9000"),
        ({"proto": "tcp", "ports": "http"}, "ports", "must be a port (22) or a range"),
        ({"proto": "tcp", "ports": True}, "ports", "must be a port"),
        ({"from": "10.40.1.33/27"}, "from", "host bits set: did you mean 10.40.1.32/27?"),
        ({"from": "fe80::/64"}, "from", "IPv6"),
        ({"action": "reject"}, "action", "must be one of accept, drop"),
        ({"port": 22}, "port", "unknown key 'port' (did you mean 'ports'?)"),
    ],
)
def test_bad_rules_are_named_by_path(rule, path, text):
    data = base()
    web(data)["security_group"]["ingress"] = [rule]
    found = problems(data)
    where = f"tenants[0].networks[1].security_group.ingress[0].{path}: "
    assert any(p.startswith(where) and text in p for p in found), found


def test_group_default_and_shape():
    data = base()
    web(data)["security_group"] = {"default": "reject", "ingres": []}
    found = problems(data)
    assert any("security_group.default: must be one of drop, accept" in p for p in found), found
    assert any("unknown key 'ingres' (did you mean 'ingress'?)" in p for p in found), found
    data["tenants"][0]["networks"][1]["security_group"] = ["tcp"]
    assert any("security_group: must be a mapping" in p for p in problems(data))


def test_system_networks_have_no_group_and_no_floating_address():
    data = base()
    web(data)["mode"] = "system"
    found = problems(data)
    assert any("security_group: a network in mode system is not routed" in p for p in found)
    assert any("vms[0].floating_ip: a network in mode system is not routed" in p for p in found)


@pytest.mark.parametrize(
    ("change", "path", "text"),
    [
        (lambda d: d["tenants"][0].pop("floating_range"), "vms[0].floating_ip",
         "tenant 'sgt' has no floating_range"),
        (lambda d: web(d)["vms"][0].update(floating_ip="10.40.101.10"), "vms[0].floating_ip",
         "not a usable address of the tenant's floating range 10.40.100.0/24"),
        (lambda d: web(d)["vms"][0].update(floating_ip="10.40.100.255"), "vms[0].floating_ip",
         "not a usable address"),
        (lambda d: web(d)["vms"][0].pop("ip"), "vms[0].floating_ip",
         "needs the VM's ip (a reservation)"),
        (lambda d: web(d)["vms"][0].update(floating_ip="banana"), "vms[0].floating_ip",
         "not an IPv4 address"),
    ],
)  # fmt: skip
def test_bad_floating_addresses(change, path, text):
    data = base()
    change(data)
    found = problems(data)
    assert any(p.startswith(f"tenants[0].networks[1].{path}: ") and text in p for p in found), found


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("10.40.2.0/23", "overlaps subnet 10.40.2.0/24 of network 'web'"),
        ("169.254.10.0/24", "not unicast address space"),
        ("10.40.100.1/24", "host bits set"),
        ("10.40.100.0", "has no prefix length"),
        ("10.40.100.0/31", "too small"),
    ],
)
def test_bad_floating_ranges(value, text):
    data = base()
    data["tenants"][0]["floating_range"] = value
    found = problems(data)
    assert any(p.startswith("tenants[0].floating_range: ") and text in p for p in found), found


def test_floating_addresses_are_unique_across_tenants():
    data = base()
    other = copy.deepcopy(data["tenants"][0])
    other["name"] = "sgu"
    data["tenants"].append(other)
    found = problems(data)
    assert found == [
        "tenants[1].networks[1].vms[0].floating_ip: floating_ip 10.40.100.10 is also given to "
        "vm 's1' of tenant 'sgt' (tenants[0].networks[1].vms[0])"
    ]
    # an absent VM gives its floating address up
    other["networks"][1]["vms"][0]["state"] = "absent"
    assert problems(data) == []


# --------------------------------------------------------------------------- plan


def firewall_of(p: dict) -> list[dict]:
    return p["firewall"]


def test_the_router_holding_the_gateway_gets_the_table():
    normal = spec.normalize(base(), CLOUDS)
    a1 = plan.host_plan(normal, hosts(), "mcm-a1")
    [item] = firewall_of(a1)
    assert item["namespace"] == "qrouter-sgt" and item["table"] == "mcm-sgt"
    assert item["state"] == "present"
    assert [n["name"] for n in item["networks"]] == ["web"]
    assert item["networks"][0]["ingress"][0]["ports"] == "8080"
    assert item["floating"] == [
        {"address": "10.40.100.10", "fixed": "10.40.2.10", "subnet": "10.40.2.0/24"}
    ]
    assert firewall_of(plan.host_plan(normal, hosts(), "mcm-a2")) == []
    assert firewall_of(plan.host_plan(normal, hosts(), "mcm-b1")) == []


def test_a_router_without_groups_removes_its_table():
    data = base()
    web(data).pop("security_group")
    web(data)["vms"][0].pop("floating_ip")
    normal = spec.normalize(data, CLOUDS)
    [item] = firewall_of(plan.host_plan(normal, hosts(), "mcm-a1"))
    assert item == {"namespace": "qrouter-sgt", "table": "mcm-sgt", "state": "absent"}
    assert plan.removal_plan("mcm-a1", ["sgt"])["firewall"] == []


def test_a_moved_subnet_takes_its_rules_and_floating_address_along():
    normal = spec.normalize(base(), CLOUDS)
    moved = {"networks": {"sgt/web": "cloud_b"}}
    a1 = plan.host_plan(normal, hosts(), "mcm-a1", moved)
    b1 = plan.host_plan(normal, hosts(), "mcm-b1", moved)
    assert firewall_of(a1) == [{"namespace": "qrouter-sgt", "table": "mcm-sgt", "state": "absent"}]
    [item] = firewall_of(b1)
    assert item["state"] == "present" and item["floating"][0]["address"] == "10.40.100.10"
    # cloud_a's router sends the floating address over the transit to cloud_b's
    routes = next(r["routes"] for r in a1["routes"] if r["namespace"] == "qrouter-sgt")
    assert {"dst": "10.40.100.10/32", "gateway": "169.254.0.2", "metric": 100} in routes
    # while the gateway moves (make-before-break) both routers filter and DNAT
    overlap = {**moved, "gateways": {"sgt/web": ["cloud_a"]},
               "stretch": {"sgt/web": ["mcm-a1", "mcm-a2"]}}  # fmt: skip
    a1 = plan.host_plan(normal, hosts(), "mcm-a1", overlap)
    assert firewall_of(a1)[0]["state"] == "present"


def test_a_moved_instance_stays_behind_its_networks_router():
    normal = spec.normalize(base(), CLOUDS)
    moved = {"vms": {"sgt/s1": "mcm-b1"}}
    [a1] = firewall_of(plan.host_plan(normal, hosts(), "mcm-a1", moved))
    assert a1["state"] == "present" and a1["floating"][0]["fixed"] == "10.40.2.10"
    b1 = plan.host_plan(normal, hosts(), "mcm-b1", moved)
    assert firewall_of(b1) == [{"namespace": "qrouter-sgt", "table": "mcm-sgt", "state": "absent"}]
    routes = next(r["routes"] for r in b1["routes"] if r["namespace"] == "qrouter-sgt")
    assert {"dst": "10.40.100.10/32", "gateway": "169.254.0.1", "metric": 100} in routes


def test_host_network_runs_the_firewall_step_last_when_the_plan_lists_tables():
    normal = spec.normalize(base(), CLOUDS)
    a1 = plan.host_plan(normal, hosts(), "mcm-a1")
    names = [r for r, _args in hn.steps(a1)]
    assert names[-1] == "firewall"
    assert dict(hn.steps(a1))["firewall"] == {"config": a1["firewall"]}
    a2 = plan.host_plan(normal, hosts(), "mcm-a2")
    assert "firewall" not in [r for r, _args in hn.steps(a2)]


# --------------------------------------------------------------------------- engine


class FakeNft:
    """nft -j in memory: tables per namespace, listed as nft prints them (with handles)."""

    def __init__(self, namespaces=("qrouter-sgt",)) -> None:
        self.tables: dict[str, dict[str, dict]] = {ns: {} for ns in namespaces}
        self.applied: list[tuple[str, list[dict]]] = []
        self.handle = 0

    def has_namespace(self, namespace: str) -> bool:
        return namespace in self.tables

    def ruleset(self, namespace: str) -> list[dict]:
        out: list[dict] = [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}]
        for name, table in self.tables[namespace].items():
            out.append({"table": {"family": "inet", "name": name, "handle": 1}})
            out.extend({"chain": c} for c in table["chains"])
            out.extend({"rule": r} for r in table["rules"])
        return out

    def apply(self, namespace: str, commands: list[dict]) -> None:
        self.applied.append((namespace, commands))
        tables = self.tables[namespace]
        for command in commands:
            [(verb, obj)] = command.items()
            [(kind, body)] = obj.items()
            self.handle += 1
            if kind == "table" and verb == "add":
                tables.setdefault(body["name"], {"chains": [], "rules": []})
            elif kind == "table" and verb == "delete":
                del tables[body["name"]]
            elif kind == "chain":
                tables[body["table"]]["chains"].append({**body, "handle": self.handle})
            elif kind == "rule":
                rule = copy.deepcopy(body)
                for stmt in rule["expr"]:
                    if "counter" in stmt:
                        stmt["counter"] = {"packets": 7, "bytes": 420}  # traffic went by
                tables[body["table"]]["rules"].append({**rule, "handle": self.handle})


def item(**extra) -> dict:
    normal = spec.normalize(base(), CLOUDS)
    [fw_item] = plan.host_plan(normal, hosts(), "mcm-a1")["firewall"]
    return {**fw_item, **extra}


def test_converge_creates_then_changes_nothing_counters_ignored():
    nft = FakeNft()
    first = fw.converge([item()], nft)
    assert first.changed and [c["action"] for c in first.changes] == ["create"]
    assert first.changes[0]["details"] == {"chains": 4, "rules": 9}
    assert "ip saddr 10.40.1.32/27 tcp dport 8080 counter accept" in first.after[0]["ruleset"]
    assert "udp dport 5000-5010 counter drop" in first.after[0]["ruleset"]
    assert first.before[0]["ruleset"] == ""
    again = fw.converge([item()], nft)
    assert not again.changed and again.changes == [] and len(nft.applied) == 1


def test_the_replacement_is_one_atomic_transaction():
    nft = FakeNft()
    fw.converge([item()], nft)
    [(namespace, commands)] = nft.applied
    assert namespace == "qrouter-sgt"
    assert [list(c) + list(next(iter(c.values()))) for c in commands[:3]] == [
        ["add", "table"], ["delete", "table"], ["add", "table"],
    ]  # fmt: skip
    kinds = [next(iter(next(iter(c.values())))) for c in commands[3:]]
    assert kinds == sorted(kinds, key=lambda k: k != "chain")  # chains before rules


def test_drift_and_edits_are_replaced_and_diffed():
    nft = FakeNft()
    fw.converge([item()], nft)
    nft.tables["qrouter-sgt"]["mcm-sgt"]["rules"].pop()  # someone removed a rule
    fixed = fw.converge([item()], nft)
    assert [c["action"] for c in fixed.changes] == ["replace"]
    edited = item()
    edited["networks"][0]["ingress"][0]["ports"] = "8081"
    result = fw.converge([edited], nft, check_mode=True)
    assert result.changed and len(nft.applied) == 2  # check mode applied nothing
    [diff] = result.diff
    assert "tcp dport 8080" in diff["before"] and "tcp dport 8081" in diff["after"]
    assert diff["before_header"] == "qrouter-sgt: inet mcm-sgt"


def test_absent_deletes_only_its_table():
    nft = FakeNft()
    fw.converge([item()], nft)
    nft.tables["qrouter-sgt"]["other"] = {"chains": [], "rules": []}
    gone = fw.converge([{"namespace": "qrouter-sgt", "table": "mcm-sgt", "state": "absent"}], nft)
    assert [c["action"] for c in gone.changes] == ["delete"]
    assert list(nft.tables["qrouter-sgt"]) == ["other"]
    again = fw.converge([{"namespace": "qrouter-sgt", "table": "mcm-sgt", "state": "absent"}], nft)
    assert not again.changed
    # nothing to remove where the namespace is gone
    elsewhere = {"namespace": "qrouter-x", "table": "t", "state": "absent"}
    assert not fw.converge([elsewhere], nft).changed


def test_a_missing_namespace_is_predicted_in_check_mode_and_refused_otherwise():
    nft = FakeNft(namespaces=())
    predicted = fw.converge([item()], nft, check_mode=True)
    assert predicted.changed and "does not exist (yet)" in predicted.warnings[0]
    with pytest.raises(fw.FirewallError, match="namespace qrouter-sgt does not exist"):
        fw.converge([item()], nft)


@pytest.mark.parametrize(
    ("edit", "text"),
    [
        (lambda i: i["networks"][0]["ingress"][0].update(ports="1-70000"), "inside 1..65535"),
        (lambda i: i["networks"][0]["ingress"][2].update(ports=22), "only with proto tcp or udp"),
        (lambda i: i["networks"][0].update(subnet="10.40.2.1/24"), "without host bits"),
        (lambda i: i["floating"][0].update(fixed="nope"), "is not an IPv4 address"),
        (lambda i: i["floating"].append(dict(i["floating"][0])), "listed twice"),
    ],
)
def test_bad_items_name_namespace_table_and_field(edit, text):
    bad = item()
    edit(bad)
    with pytest.raises(fw.FirewallError, match="qrouter-sgt: table inet mcm-sgt: ") as err:
        fw.converge([bad], FakeNft())
    assert text in str(err.value)


def test_render_reads_like_nft():
    text = fw.render("mcm-sgt", fw.wanted(item()))
    assert text.splitlines()[:4] == [
        "table inet mcm-sgt {",
        "  chain forward {",
        "    type filter hook forward priority 0; policy accept;",
        "    ct state established,related accept",
    ]
    assert "    ip daddr 10.40.100.10 counter dnat ip to 10.40.2.10" in text
    assert "    ct status dnat ip saddr 10.40.2.0/24 ip daddr 10.40.2.10 masquerade" in text
