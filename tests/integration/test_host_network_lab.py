"""host_network on the lab (issue 8): a whole host plan in one call.

Tenant `hntest`, network `web` (VNI 991001, 10.198.1.0/24) stretched over mcm-a1 and
mcm-a2: on both a bridge and a VXLAN device with an FDB entry to the other; on mcm-a1 the
DHCP namespace with its leg, address, default route and dnsmasq, and the router namespace
with the gateway. The tests run in file order on one set-up; the module fixture removes
everything of `hntest` (with the module, then by hand), even when a test fails.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import zlib

import pytest
import yaml

from conftest import ROOT, ansible_json, host_python, libvirt_cleanup

pytestmark = pytest.mark.lab

HOSTS = ("mcm-a1", "mcm-a2")
UNDERLAY = {"mcm-a1": "172.30.1.11", "mcm-a2": "172.30.1.12"}
TENANT = "hntest"
VNI = 991001
OWNER = f"mcm:{TENANT}/web"
DHCP_NS = f"qdhcp-{TENANT}.web"
ROUTER_NS = f"qrouter-{TENANT}"
CONF = f"/var/lib/mcm/dhcp/{DHCP_NS}/dnsmasq.conf"
SCOPES = {
    "tenants": [TENANT],
    "scopes": [f"mcm:{TENANT}/"],
    "namespace_scopes": [f"qdhcp-{TENANT}.", ROUTER_NS],
    "dhcp_scopes": [f"qdhcp-{TENANT}."],
}


def segment(host: str, vni: int = VNI) -> list[dict]:
    other = next(h for h in HOSTS if h != host)
    return [
        {"name": f"brq-{vni}", "kind": "bridge", "mtu": 1450, "owner": OWNER},
        {
            "name": f"vxlan-{vni}", "kind": "vxlan", "master": f"brq-{vni}", "mtu": 1450,
            "owner": OWNER, "vxlan": {"id": vni, "local": UNDERLAY[host]},
        },
    ], {"device": f"vxlan-{vni}", "entries": [{"dst": UNDERLAY[other]}]}  # fmt: skip


def plan(host: str) -> dict:
    links, fdb = segment(host)
    out = {"host": host, "cloud": "cloud_a", **copy.deepcopy(SCOPES), "links": links,
           "fdb": [fdb], "netns": [], "addresses": [], "routes": [], "dnsmasq": []}  # fmt: skip
    if host == "mcm-a1":
        out["netns"] = [{"name": DHCP_NS}, {"name": ROUTER_NS, "forwarding": True}]
        out["links"] += [
            {"name": f"dhb-{VNI}", "kind": "veth", "master": f"brq-{VNI}", "mtu": 1450,
             "owner": OWNER, "peer": {"name": f"dhn-{VNI}", "namespace": DHCP_NS}},
            {"name": f"qrb-{VNI}", "kind": "veth", "master": f"brq-{VNI}", "mtu": 1450,
             "owner": OWNER, "peer": {"name": f"qr-{VNI}", "namespace": ROUTER_NS}},
            {"name": "lo", "kind": "device", "namespace": DHCP_NS, "state": "up"},
            {"name": "lo", "kind": "device", "namespace": ROUTER_NS, "state": "up"},
        ]  # fmt: skip
        out["addresses"] = [
            {"namespace": DHCP_NS, "interface": f"dhn-{VNI}", "addresses": ["10.198.1.2/24"]},
            {"namespace": ROUTER_NS, "interface": f"qr-{VNI}", "addresses": ["10.198.1.1/24"]},
        ]
        out["routes"] = [
            {"namespace": DHCP_NS, "routes": [{"dst": "default", "gateway": "10.198.1.1"}]}
        ]
        out["dnsmasq"] = [
            {"name": DHCP_NS, "namespace": DHCP_NS, "interface": f"dhn-{VNI}",
             "server": "10.198.1.2", "subnet": "10.198.1.0/24", "gateway": "10.198.1.1",
             "range": ["10.198.1.100", "10.198.1.150"], "domain": f"web.{TENANT}"}
        ]  # fmt: skip
    return out


DOMAIN = f"{TENANT}-vm1"
DOMAIN_XML = f"""<domain type='qemu'>
  <name>{DOMAIN}</name>
  <metadata><mcm:vm xmlns:mcm='https://multicloud.migration/xmlns/vm/1'
    tenant='{TENANT}' network='web' vm='vm1'/></metadata>
  <memory unit='MiB'>32</memory>
  <os><type>hvm</type></os>
</domain>"""


def removal(host: str) -> dict:
    return {"host": host, **copy.deepcopy(SCOPES)}


def write_play(tmp_path, name: str, plans: dict[str, dict], ignore_errors: bool = False):
    task = {
        "name": "host_network",
        "multicloud.migration.host_network": {"plan": "{{ plans[inventory_hostname] }}"},
    }
    if ignore_errors:
        task["ignore_errors"] = True
    play = [{"hosts": ",".join(plans), "gather_facts": False, "vars": {"plans": plans},
             "tasks": [task]}]  # fmt: skip
    path = tmp_path / f"{name}.yml"
    path.write_text(yaml.safe_dump(play, sort_keys=False))
    return path


def run(path, *extra, expect_ok: bool = True) -> dict[str, dict]:
    """The host_network result of every host."""
    proc, data = ansible_json(["ansible-playbook", str(path), *extra])
    results = data["plays"][0]["tasks"][0]["hosts"] if data["plays"][0]["tasks"] else {}
    if expect_ok:
        failed = {h: r.get("msg") for h, r in results.items() if r.get("failed")}
        assert proc.returncode == 0 and not failed, f"{failed}\n{proc.stderr[-2000:]}"
    return results


def namespaces(host) -> set[str]:
    return set(re.findall(r"^(\S+)", host.check_output("ip netns list"), re.M))


def links(host) -> set[str]:
    return set(host.check_output("ls /sys/class/net").split())


def dnsmasq_pid(host) -> str:
    return host.run(f"cat /var/lib/mcm/dhcp/{DHCP_NS}/pid").stdout.strip()


def cleanup(tmp_path, hosts) -> None:
    run(write_play(tmp_path, "cleanup", {h: removal(h) for h in HOSTS}, True), expect_ok=False)
    for name in HOSTS:  # by hand, in case the module itself is what is broken
        host = hosts[name]
        pid = dnsmasq_pid(host)
        if pid.isdigit():
            host.run(f"kill {pid}")
        host.run(f"rm -rf /var/lib/mcm/dhcp/qdhcp-{TENANT}.*")
        for ns in namespaces(host):
            if ns.startswith((f"qdhcp-{TENANT}.", ROUTER_NS)):
                host.run(f"ip netns del {ns}")
        for link in links(host):
            if link.endswith((f"-{VNI}", f"-{VNI + 1}")):
                host.run(f"ip link del {link}")
    libvirt_cleanup(hosts["mcm-a1"], f"{TENANT}-")


@pytest.fixture(scope="module")
def lab(hosts, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("host_network")
    cleanup(tmp, hosts)
    try:
        yield {"hosts": hosts, "tmp": tmp}
    finally:
        cleanup(tmp, hosts)


def test_create_applies_every_step_in_one_call(lab):
    hosts, tmp = lab["hosts"], lab["tmp"]
    results = run(write_play(tmp, "base", {h: plan(h) for h in HOSTS}))
    a1, a2 = results["mcm-a1"], results["mcm-a2"]
    assert a1["changed"] and a2["changed"]
    assert set(a1["resources"]) == {"netns", "link", "address", "route", "fdb", "dnsmasq"}
    assert all(r["changed"] for r in a1["resources"].values())
    assert set(a2["resources"]) == {"netns", "link", "fdb", "dnsmasq"}
    assert not a2["resources"]["netns"]["changed"]
    assert [c["action"] for c in a1["resources"]["dnsmasq"]["changes"]] == ["write", "start"]
    assert a1["leases"] == {DHCP_NS: []}
    # what the hosts really have
    a1h, a2h = hosts["mcm-a1"], hosts["mcm-a2"]
    assert {DHCP_NS, ROUTER_NS} <= namespaces(a1h)
    assert not {n for n in namespaces(a2h) if TENANT in n}
    for name in HOSTS:
        vx = hosts[name].check_output(f"ip -d link show vxlan-{VNI}")
        assert f"vxlan id {VNI} local {UNDERLAY[name]}" in vx and f"master brq-{VNI}" in vx
        other = next(h for h in HOSTS if h != name)
        fdb = hosts[name].check_output(f"bridge fdb show dev vxlan-{VNI}")
        assert f"00:00:00:00:00:00 dst {UNDERLAY[other]} self permanent" in fdb
    addr = a1h.check_output(f"ip netns exec {DHCP_NS} ip -4 -o addr show dev dhn-{VNI}")
    assert "10.198.1.2/24" in addr
    route = a1h.check_output(f"ip netns exec {DHCP_NS} ip -4 route show default")
    assert "default via 10.198.1.1" in route
    fwd = a1h.check_output(f"ip netns exec {ROUTER_NS} cat /proc/sys/net/ipv4/ip_forward")
    assert fwd.strip() == "1"
    assert dnsmasq_pid(a1h).isdigit()
    assert "dhcp-range=10.198.1.100,10.198.1.150" in a1h.check_output(f"cat {CONF}")
    # the DHCP server answers through the router namespace
    ping = a1h.run(f"ip netns exec {ROUTER_NS} ping -c 2 -W 2 10.198.1.2")
    assert ping.rc == 0, ping.stdout + ping.stderr


def test_second_run_changes_nothing_and_returns_no_state(lab):
    results = run(write_play(lab["tmp"], "base", {h: plan(h) for h in HOSTS}))
    for name in HOSTS:
        result = results[name]
        assert not result["changed"], result
        assert all(not r["changed"] and not r["changes"] for r in result["resources"].values())
        assert all("before" not in r for r in result["resources"].values())
        # the invocation counts the plan's objects instead of echoing the plan
        echoed = result["invocation"]["module_args"]["plan"]
        assert echoed["tenants"] == [TENANT]
        assert echoed["links"] == f"{len(plan(name)['links'])} items"


# On the host: the netlink engine's reads through rtnl (plain sockets, only the attributes
# read) and through pyroute2 (what they replaced) must give the same links, addresses,
# routes and FDB entries. The two module_utils are shipped as source, as AnsiballZ would
# (compressed: an argument of python3 -c may not exceed 128 kB).
COMPARE_READS = """
import base64, json, os, shutil, sys, tempfile, zlib
SOURCES = json.loads(zlib.decompress(base64.b64decode(PACKED)))
top = tempfile.mkdtemp()
try:
    pkg = os.path.join(top, "ansible_collections/multicloud/migration/plugins/module_utils")
    os.makedirs(pkg)
    for name, text in SOURCES.items():
        with open(os.path.join(pkg, name + ".py"), "w") as handle:
            handle.write(text)
    sys.path.insert(0, top)
    from ansible_collections.multicloud.migration.plugins.module_utils import netlink as nl
    session = nl.Session()
    spaces = [None] + [n for n in session.namespaces() if TENANT in n]
    ours = {str(ns): session.link_records(ns) for ns in spaces}
    theirs = {str(ns): [nl._parse_link(m, ns) for m in session.ipr(ns).get_links()]
              for ns in spaces}
    links = nl.read_links(session, spaces)
    reads = {}
    for name, read, kind, args in (
        ("addresses", nl.read_addresses, "get_addr", {"family": 2}),
        ("routes", nl.read_routes, "get_routes", {"family": 2}),
        ("fdb", nl.read_fdb, "get_neighbours", {"family": 7}),
    ):
        fast = read(session, links, spaces)
        session.dump = lambda ns, what, family=0, kind=kind, args=args: getattr(
            session.ipr(ns), kind)(**args)
        slow = read(session, links, spaces)
        del session.dump
        reads[name] = {"same": fast == slow, "ours": repr(sorted(fast.items(), key=repr))}
    peers = {r["name"]: r["peer"] for r in links.values() if r["kind"] == "veth"}
    print(json.dumps({"spaces": [str(s) for s in spaces], "same_links": ours == theirs,
                      "links": sum(map(len, ours.values())), "reads": reads,
                      "peers": peers}))
finally:
    shutil.rmtree(top)
"""


def test_fast_reads_equal_pyroute2_reads_on_the_host(lab):
    """rtnl (issue 8: the no-op run's netlink reads) decodes what pyroute2 decodes."""
    utils = ROOT / "plugins" / "module_utils"
    sources = {name: (utils / f"{name}.py").read_text() for name in ("rtnl", "netlink")}
    packed = base64.b64encode(zlib.compress(json.dumps(sources).encode())).decode()
    script = f"PACKED = {packed!r}\nTENANT = {TENANT!r}\n" + COMPARE_READS
    out = json.loads(host_python(lab["hosts"]["mcm-a1"], script))
    assert sorted(out["spaces"], key=str) == sorted(["None", DHCP_NS, ROUTER_NS])
    assert out["same_links"] and out["links"] > 4, out
    for name, read in out["reads"].items():
        assert read["same"], (name, read)
    # what the host carries is in them: the FDB entry, the addresses, the default route
    assert UNDERLAY["mcm-a2"] in out["reads"]["fdb"]["ours"]
    assert "10.198.1.2/24" in out["reads"]["addresses"]["ours"]
    assert "'gateway': '10.198.1.1'" in out["reads"]["routes"]["ours"]
    assert out["peers"][f"dhb-{VNI}"] == {"name": f"dhn-{VNI}", "namespace": DHCP_NS}


def test_read_vms_returns_what_vm_info_returns_in_the_same_call(lab):
    """create_infra.yml places the VMs from host_network's read_vms (no vm_info task)."""
    host = lab["hosts"]["mcm-a1"]
    libvirt_cleanup(host, f"{TENANT}-")
    host_python(host, f"import libvirt; libvirt.open('qemu:///system').defineXML({DOMAIN_XML!r})")
    nothing = {**plan("mcm-a1"), **{k: [] for k in SCOPES}}
    play = [{"hosts": "mcm-a1", "gather_facts": False,
             "vars": {"plan": plan("mcm-a1"), "nothing": nothing},
             "tasks": [
                 {"multicloud.migration.host_network": {"plan": "{{ plan }}", "read_vms": True}},
                 {"multicloud.migration.vm_info": {"scope": [TENANT]}},
                 {"multicloud.migration.host_network": {"plan": "{{ nothing }}", "read_vms": True}},
                 {"multicloud.migration.host_network": {"plan": "{{ plan }}"}},
             ]}]  # fmt: skip
    path = lab["tmp"] / "read_vms.yml"
    path.write_text(yaml.safe_dump(play, sort_keys=False))
    proc, data = ansible_json(["ansible-playbook", str(path)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    with_vms, info, no_tenant, without = (t["hosts"]["mcm-a1"] for t in data["plays"][0]["tasks"])
    assert not with_vms["changed"], with_vms
    assert [v["name"] for v in with_vms["vms"]] == [DOMAIN]
    assert with_vms["vms"][0]["metadata"]["tenant"] == TENANT
    assert with_vms["vms"][0]["state"] == "shutoff"
    assert with_vms["vms"] == info["vms"]
    assert no_tenant["vms"] == []  # a plan without tenants lists no domain (not every one)
    assert "vms" not in without


def test_check_mode_reports_an_edit_with_a_diff_and_changes_nothing(lab):
    hosts, tmp = lab["hosts"], lab["tmp"]
    a1 = hosts["mcm-a1"]
    edited = {h: plan(h) for h in HOSTS}
    edited["mcm-a1"]["dnsmasq"][0]["range"] = ["10.198.1.20", "10.198.1.40"]
    edited["mcm-a1"]["links"][0]["mtu"] = 1400
    conf, pid = a1.check_output(f"cat {CONF}"), dnsmasq_pid(a1)
    mtu = a1.check_output(f"cat /sys/class/net/brq-{VNI}/mtu")
    results = run(write_play(tmp, "edited", edited), "--check", "--diff")
    result = results["mcm-a1"]
    assert result["changed"]
    assert not results["mcm-a2"]["changed"]
    assert [(c["action"], c["name"]) for c in result["resources"]["link"]["changes"]] == [
        ("update", f"brq-{VNI}")
    ]
    assert [c["action"] for c in result["resources"]["dnsmasq"]["changes"]] == [
        "write",
        "restart",
    ]
    diff = result["diff"]
    assert isinstance(diff, list) and len(diff) >= 2
    assert any("mtu=1400" in d["after"] and "mtu=1450" in d["before"] for d in diff)
    assert any("10.198.1.20,10.198.1.40" in d["after"] and d["after_header"] == CONF for d in diff)
    assert a1.check_output(f"cat {CONF}") == conf
    assert dnsmasq_pid(a1) == pid
    assert a1.check_output(f"cat /sys/class/net/brq-{VNI}/mtu") == mtu


def test_check_mode_predicts_a_new_network_without_creating_it(lab):
    hosts, tmp = lab["hosts"], lab["tmp"]
    a1 = hosts["mcm-a1"]
    grown = {h: plan(h) for h in HOSTS}
    ns = f"qdhcp-{TENANT}.db"
    links_db, fdb_db = segment("mcm-a1", VNI + 1)
    p = grown["mcm-a1"]
    p["netns"].append({"name": ns})
    p["links"] += [
        *links_db,
        {"name": f"dhb-{VNI + 1}", "kind": "veth", "master": f"brq-{VNI + 1}", "mtu": 1450,
         "owner": f"mcm:{TENANT}/db", "peer": {"name": f"dhn-{VNI + 1}", "namespace": ns}},
        {"name": "lo", "kind": "device", "namespace": ns, "state": "up"},
    ]  # fmt: skip
    p["fdb"].append(fdb_db)
    p["addresses"].append(
        {"namespace": ns, "interface": f"dhn-{VNI + 1}", "addresses": ["10.198.2.2/24"]}
    )
    p["dnsmasq"].append(
        {"name": ns, "namespace": ns, "interface": f"dhn-{VNI + 1}", "server": "10.198.2.2",
         "subnet": "10.198.2.0/24", "range": ["10.198.2.100", "10.198.2.150"]}
    )  # fmt: skip
    result = run(write_play(tmp, "grown", grown), "--check")["mcm-a1"]
    assert result["changed"]
    created = {c["name"] for c in result["resources"]["link"]["changes"]}
    assert {f"brq-{VNI + 1}", f"vxlan-{VNI + 1}", f"dhb-{VNI + 1}"} <= created
    assert [c["action"] for c in result["resources"]["dnsmasq"]["changes"]] == ["write", "start"]
    assert ns not in namespaces(a1)
    assert f"brq-{VNI + 1}" not in links(a1)
    assert a1.run(f"test -e /var/lib/mcm/dhcp/{ns}").rc != 0


def test_an_error_names_the_step_and_the_object(lab):
    broken = {"mcm-a1": plan("mcm-a1")}
    broken["mcm-a1"]["addresses"].append(
        {"namespace": DHCP_NS, "interface": "nosuch0", "addresses": ["10.198.1.3/24"]}
    )
    result = run(write_play(lab["tmp"], "broken", broken, True), expect_ok=False)["mcm-a1"]
    assert result["failed"]
    assert result["resource"] == "address"
    assert "nosuch0" in result["msg"] and DHCP_NS in result["msg"]
    assert set(result["resources"]) == {"netns", "link"}


def test_removal_plan_removes_everything_then_changes_nothing(lab):
    hosts, tmp = lab["hosts"], lab["tmp"]
    path = write_play(tmp, "removal", {h: removal(h) for h in HOSTS})
    results = run(path, "--diff")
    assert results["mcm-a1"]["changed"] and results["mcm-a2"]["changed"]
    assert [c["action"] for c in results["mcm-a1"]["resources"]["dnsmasq"]["changes"]] == [
        "stop",
        "remove",
    ]
    for name in HOSTS:
        host = hosts[name]
        assert not {n for n in namespaces(host) if TENANT in n}, name
        assert not {link for link in links(host) if link.endswith(f"-{VNI}")}, name
        assert host.run(f"test -e /var/lib/mcm/dhcp/{DHCP_NS}").rc != 0
    again = run(path)
    assert not again["mcm-a1"]["changed"] and not again["mcm-a2"]["changed"]
