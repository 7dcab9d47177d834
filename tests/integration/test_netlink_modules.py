"""netns, link, address, route and fdb modules on the lab: a VXLAN segment between mcm-a1
and mcm-a2 with a DHCP-style namespace on each side, idempotence, check mode with diff,
scoped overridden/deleted, and real traffic across the mesh.

Every object is named so that it cannot clash with anything else on the lab: VNIs
990001-990099, namespaces qdhcp-nltest-* / qrouter-nltest*, owner tags mcm:nltest*.
"""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from conftest import ansible_json

pytestmark = pytest.mark.lab

HOSTS = ("mcm-a1", "mcm-a2")
UNDERLAY = {"mcm-a1": "172.30.1.11", "mcm-a2": "172.30.1.12", "mcm-b1": "172.30.2.11"}
TENANT_IP = {"mcm-a1": "10.199.1.11", "mcm-a2": "10.199.1.12"}
VNI = 990001
OWNER = "mcm:nltest/base"
MODULES = ("netns", "link", "fdb", "address", "route")


def netns_name(host: str) -> str:
    return f"qdhcp-nltest-{host.removeprefix('mcm-')}"


def base_config(host: str) -> dict:
    """Everything one host carries: namespace, links, fdb, address, route."""
    other = next(h for h in HOSTS if h != host)
    ns = netns_name(host)
    return {
        "netns": [
            {"name": ns, "forwarding": False},
            {"name": "qrouter-nltest", "forwarding": True},
        ],
        "link": [
            {"name": f"brq-{VNI}", "kind": "bridge", "mtu": 1450, "owner": OWNER},
            {
                "name": f"vxlan-{VNI}",
                "kind": "vxlan",
                "master": f"brq-{VNI}",
                "mtu": 1450,
                "owner": OWNER,
                "vxlan": {"id": VNI, "port": 4789, "local": UNDERLAY[host]},
            },
            {
                "name": f"dhb-{VNI}",
                "kind": "veth",
                "master": f"brq-{VNI}",
                "mtu": 1450,
                "owner": OWNER,
                "peer": {"name": f"dhn-{VNI}", "namespace": ns},
            },
            {"name": "lo", "kind": "device", "namespace": ns, "state": "up"},
        ],
        "fdb": [{"device": f"vxlan-{VNI}", "entries": [{"dst": UNDERLAY[other]}]}],
        "address": [
            {"namespace": ns, "interface": f"dhn-{VNI}", "addresses": [f"{TENANT_IP[host]}/24"]}
        ],
        "route": [{"namespace": ns, "routes": [{"dst": "default", "gateway": "10.199.1.254"}]}],
    }


def edited_config(host: str) -> dict:
    """The base with an MTU change, a VNI change and one more FDB peer."""
    config = copy.deepcopy(base_config(host))
    config["link"][0]["mtu"] = 1400
    config["link"][1]["vxlan"]["id"] = VNI + 1
    config["fdb"][0]["entries"].append({"dst": UNDERLAY["mcm-b1"]})
    return config


def write_play(tmp_path, name: str, per_host: dict[str, dict], modules=MODULES, **module_args):
    """A playbook with one task per module; each host gets its own config from per_host."""
    tasks = []
    for module in modules:
        args = {"config": f"{{{{ nl[inventory_hostname]['{module}'] | default([]) }}}}"}
        args.update(module_args.get(module, {}))
        if "state" in module_args:
            args["state"] = module_args["state"]
        tasks.append({"name": module, f"multicloud.migration.{module}": args})
    play = [
        {
            "hosts": ",".join(per_host),
            "gather_facts": False,
            "vars": {"nl": per_host},
            "tasks": tasks,
        }
    ]
    path = tmp_path / f"{name}.yml"
    path.write_text(yaml.safe_dump(play, sort_keys=False))
    return path


def play(path, *extra):
    proc, data = ansible_json(["ansible-playbook", str(path), *extra])
    assert proc.returncode == 0, yaml.safe_dump(_failures(data)) + proc.stderr[-2000:]
    return data


def _failures(data: dict) -> dict:
    out = {}
    for task in data["plays"][0]["tasks"]:
        for host, result in task["hosts"].items():
            if result.get("failed"):
                out[f"{host}/{task['task']['name']}"] = result.get("msg")
    return out


def results(data: dict, module: str) -> dict[str, dict]:
    for task in data["plays"][0]["tasks"]:
        if task["task"]["name"] == module:
            return task["hosts"]
    raise AssertionError(f"no task {module}")


def changed_count(data: dict) -> dict[str, int]:
    return {host: stats["changed"] for host, stats in data["stats"].items()}


def summary(result: dict) -> list[tuple[str, str]]:
    return [(c["action"], c["name"]) for c in result["changes"]]


def cleanup(tmp_path, hosts) -> None:
    """Remove every test object: with the modules, then (fallback) with ip on the host."""
    path = tmp_path / "cleanup.yml"
    path.write_text(
        yaml.safe_dump(
            [
                {
                    "hosts": ",".join(HOSTS),
                    "gather_facts": False,
                    "tasks": [
                        {
                            "multicloud.migration.link": {
                                "state": "deleted",
                                "scope": "mcm:nltest",
                            },
                            "ignore_errors": True,
                        },
                        {
                            "multicloud.migration.netns": {
                                "state": "deleted",
                                "scope_namespaces": ["qdhcp-nltest-", "qrouter-nltest"],
                            },
                            "ignore_errors": True,
                        },
                    ],
                }
            ]
        )
    )
    ansible_json(["ansible-playbook", str(path)])
    for name in HOSTS:
        host = hosts[name]
        for line in host.check_output("ip netns list").splitlines():
            ns = line.split()[0] if line.strip() else ""
            if "nltest" in ns:
                host.run(f"ip netns del {ns}")
        for line in host.check_output("ip -o link show").splitlines():
            match = re.match(r"\d+: ([^:@]+)", line)
            if match and re.search(r"-9900\d\d$", match.group(1)):
                host.run(f"ip link del {match.group(1)}")


@pytest.fixture
def clean(tmp_path, hosts):
    cleanup(tmp_path, hosts)
    try:
        yield
    finally:
        cleanup(tmp_path, hosts)


def link_details(host, name: str, ns: str | None = None) -> str:
    prefix = f"ip netns exec {ns} " if ns else ""
    return host.check_output(f"{prefix}ip -d link show {name}")


def fdb_of(host, device: str) -> str:
    return host.check_output(f"bridge fdb show dev {device}")


def test_create_is_changed_then_idempotent_and_carries_traffic(tmp_path, hosts, clean):
    path = write_play(tmp_path, "base", {h: base_config(h) for h in HOSTS})
    first = play(path)
    for host in HOSTS:
        for module in MODULES:
            assert results(first, module)[host]["changed"], (host, module)
        link = results(first, "link")[host]
        assert summary(link) == [
            ("create", f"brq-{VNI}"),
            ("create", f"vxlan-{VNI}"),
            ("create", f"dhb-{VNI}"),
            ("update", "lo"),
        ]
    # what the host really has
    for name in HOSTS:
        host, ns = hosts[name], netns_name(name)
        vx = link_details(host, f"vxlan-{VNI}")
        assert f"vxlan id {VNI} local {UNDERLAY[name]}" in vx and "dstport 4789" in vx
        assert f"master brq-{VNI}" in vx and "mtu 1450" in vx and f"alias {OWNER}" in vx
        other = next(h for h in HOSTS if h != name)
        assert f"00:00:00:00:00:00 dst {UNDERLAY[other]} self permanent" in fdb_of(
            host, f"vxlan-{VNI}"
        )
        leg = link_details(host, f"dhn-{VNI}", ns)
        assert "veth" in leg and f"alias {OWNER}" in leg and ",UP" in leg
        assert f"dhb-{VNI}" not in host.check_output(f"ip netns exec {ns} ip -o link")
        addr = host.check_output(f"ip netns exec {ns} ip -4 -o addr show dev dhn-{VNI}")
        assert f"{TENANT_IP[name]}/24" in addr
        route = host.check_output(f"ip netns exec {ns} ip -4 route show default")
        assert "default via 10.199.1.254" in route
        fwd = host.check_output("ip netns exec qrouter-nltest cat /proc/sys/net/ipv4/ip_forward")
        assert fwd.strip() == "1"
        assert host.check_output(f"ip netns exec {ns} cat /proc/sys/net/ipv4/ip_forward") == "0"
        # nothing of the tenant in the root namespace
        assert "10.199." not in host.check_output("ip -4 -o addr show")
    # idempotent
    second = play(path)
    assert changed_count(second) == dict.fromkeys(HOSTS, 0)
    # real traffic: namespace on mcm-a1 <-> namespace on mcm-a2 over the VXLAN mesh
    for name in HOSTS:
        other = next(h for h in HOSTS if h != name)
        cmd = f"ip netns exec {netns_name(name)} ping -c 3 -W 2 {TENANT_IP[other]}"
        out = hosts[name].run(cmd)
        assert out.rc == 0, out.stdout + out.stderr


def test_check_mode_reports_the_edit_with_a_diff_then_applies_exactly_that(tmp_path, hosts, clean):
    play(write_play(tmp_path, "base", {h: base_config(h) for h in HOSTS}))
    edited = write_play(tmp_path, "edited", {h: edited_config(h) for h in HOSTS})
    checked = play(edited, "--check", "--diff")
    expected_links = [("recreate", f"vxlan-{VNI}"), ("update", f"brq-{VNI}")]
    expected_fdb = [("create", f"00:00:00:00:00:00 dst {UNDERLAY['mcm-b1']}")]
    for name in HOSTS:
        link, fdb = results(checked, "link")[name], results(checked, "fdb")[name]
        assert link["changed"] and summary(link) == expected_links
        assert link["changes"][0]["details"]["vxlan.id"] == {"from": VNI, "to": VNI + 1}
        assert link["changes"][1]["details"] == {"mtu": {"from": 1450, "to": 1400}}
        assert summary(fdb) == expected_fdb
        for module in ("netns", "address", "route"):
            assert not results(checked, module)[name]["changed"], module
        diff = link["diff"]
        assert f"id={VNI}" in diff["before"] and f"id={VNI + 1}" in diff["after"]
        assert "mtu=1400" in diff["after"] and "mtu=1400" not in diff["before"]
        assert UNDERLAY["mcm-b1"] in fdb["diff"]["after"]
        assert UNDERLAY["mcm-b1"] not in fdb["diff"]["before"]
        # nothing changed on the host
        host = hosts[name]
        assert f"vxlan id {VNI} " in link_details(host, f"vxlan-{VNI}")
        assert "mtu 1450" in link_details(host, f"brq-{VNI}")
        assert UNDERLAY["mcm-b1"] not in fdb_of(host, f"vxlan-{VNI}")

    applied = play(edited, "--diff")
    for name in HOSTS:
        assert summary(results(applied, "link")[name]) == expected_links
        assert summary(results(applied, "fdb")[name]) == expected_fdb
        for module in ("netns", "address", "route"):
            assert not results(applied, module)[name]["changed"], module
        host = hosts[name]
        vx = link_details(host, f"vxlan-{VNI}")
        assert f"vxlan id {VNI + 1} " in vx and f"master brq-{VNI}" in vx
        assert "mtu 1400" in link_details(host, f"brq-{VNI}")
        entries = fdb_of(host, f"vxlan-{VNI}")
        other = next(h for h in HOSTS if h != name)
        # the recreated device kept its flood list and got the new peer
        assert f"dst {UNDERLAY[other]} self permanent" in entries
        assert f"dst {UNDERLAY['mcm-b1']} self permanent" in entries
    assert changed_count(play(edited)) == dict.fromkeys(HOSTS, 0)
    # both sides on the new VNI: traffic flows again
    out = hosts["mcm-a1"].run(
        f"ip netns exec {netns_name('mcm-a1')} ping -c 3 -W 2 {TENANT_IP['mcm-a2']}"
    )
    assert out.rc == 0, out.stdout + out.stderr


def test_overridden_with_scope_removes_only_what_is_in_scope(tmp_path, hosts, clean):
    host_name = "mcm-a1"
    host = hosts[host_name]
    base = base_config(host_name)
    extra = copy.deepcopy(base)
    extra["netns"] += [{"name": "qdhcp-nltest-extra"}, {"name": "qdhcp-nltestx-keep"}]
    extra["link"] += [
        {"name": "brq-990010", "kind": "bridge", "owner": "mcm:nltest/extra"},
        {"name": "brq-990011", "kind": "bridge", "owner": "mcm:nltestx/keep"},
    ]
    play(write_play(tmp_path, "extra", {host_name: extra}))
    assert "qdhcp-nltest-extra" in host.check_output("ip netns list")

    overridden = write_play(
        tmp_path,
        "overridden",
        {host_name: base},
        modules=("netns", "link"),
        state="overridden",
        link={"scope": "mcm:nltest/"},
        netns={"scope_namespaces": ["qdhcp-nltest-", "qrouter-nltest"]},
    )
    data = play(overridden)
    assert summary(results(data, "link")[host_name]) == [("delete", "brq-990010")]
    assert summary(results(data, "netns")[host_name]) == [("delete", "qdhcp-nltest-extra")]
    namespaces = host.check_output("ip netns list")
    assert "qdhcp-nltest-extra" not in namespaces
    assert "qdhcp-nltestx-keep" in namespaces and netns_name(host_name) in namespaces
    links = host.check_output("ip -o link show")
    assert "brq-990010" not in links and "brq-990011" in links and f"brq-{VNI}" in links
    # never anything that is not ours: the lab's own interfaces are all still there
    assert "eth0" in links and "eth1" in links
    assert changed_count(play(overridden)) == {host_name: 0}


def test_deleted_removes_everything(tmp_path, hosts, clean):
    play(write_play(tmp_path, "base", {h: base_config(h) for h in HOSTS}))
    scoped = {
        "link": {"scope": OWNER},
        "fdb": {"scope": OWNER},
        "address": {"scope": OWNER, "scope_namespaces": ["qdhcp-nltest-"]},
        "route": {"scope": OWNER, "scope_namespaces": ["qdhcp-nltest-"]},
        "netns": {"scope_namespaces": ["qdhcp-nltest-", "qrouter-nltest"]},
    }
    path = write_play(
        tmp_path,
        "deleted",
        {name: {} for name in HOSTS},
        modules=("route", "address", "fdb", "link", "netns"),
        state="deleted",
        **scoped,
    )
    data = play(path, "--diff")
    for name in HOSTS:
        for module in MODULES:
            assert results(data, module)[name]["changed"], module
        assert results(data, "link")[name]["after"] == []
        host = hosts[name]
        assert "nltest" not in host.check_output("ip netns list")
        assert not re.search(r"-9900\d\d", host.check_output("ip -o link show"))
    assert changed_count(play(path)) == dict.fromkeys(HOSTS, 0)


def test_errors_name_the_object_and_the_cause(tmp_path, hosts, clean):
    bad = {
        "link": [
            {
                "name": "vxlan-990099",
                "kind": "vxlan",
                "master": "brq-990098",
                "owner": "mcm:nltest/bad",
                "vxlan": {"id": 990099},
            }
        ]
    }
    path = write_play(tmp_path, "bad", {"mcm-a1": bad}, modules=("link",))
    proc, data = ansible_json(["ansible-playbook", str(path)])
    assert proc.returncode != 0
    result = results(data, "link")["mcm-a1"]
    assert result["msg"] == (
        "link vxlan-990099: master brq-990098 does not exist in namespace root"
    )
    assert "vxlan-990099" not in hosts["mcm-a1"].check_output("ip -o link show")
