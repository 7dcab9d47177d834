"""create_infra / delete_infra on the lab (issue 3): the network model end to end.

Three tenants: `ita` (front 10.0.0.0/24 and back 10.0.1.0/24 on cloud_a), `itb` (front
10.0.0.0/24 on cloud_b) and `itc` (front 10.0.0.0/24 on cloud_a, the same hosts as ita).
Client namespaces stand in for VMs: busybox udhcpc on a veth plugged into a tenant
bridge on mcm-a2, so DHCP crosses the VXLAN to the network node mcm-a1. The tests run
in file order on one set-up; the module fixture removes every tenant and client, even
when a test fails.
"""

from __future__ import annotations

import re
import textwrap

import pytest
import yaml

from ansible_collections.multicloud.migration.plugins.module_utils import spec as specmod
from conftest import ansible_json, run

pytestmark = pytest.mark.lab

SPEC = {
    "tenants": [
        {
            "name": "ita",
            "networks": [
                {"name": "front", "cloud": "cloud_a", "subnet": "10.0.0.0/24"},
                {"name": "back", "cloud": "cloud_a", "subnet": "10.0.1.0/24"},
            ],
        },
        {
            "name": "itb",
            "networks": [{"name": "front", "cloud": "cloud_b", "subnet": "10.0.0.0/24"}],
        },
        {
            "name": "itc",
            "networks": [
                {
                    "name": "front",
                    "cloud": "cloud_a",
                    "subnet": "10.0.0.0/24",
                    "dhcp": {"range": ["10.0.0.50", "10.0.0.60"]},
                }
            ],
        },
    ]
}
CLOUDS = {"cloud_a", "cloud_b"}
TENANTS = ("ita", "itb", "itc")
UDHCPC_SCRIPT = "/tmp/it-udhcpc.sh"
# busybox udhcpc hands the lease to a script; this one configures the client namespace
# and writes what it got to $LEASE_FILE.
SCRIPT = textwrap.dedent(
    """\
    #!/bin/sh
    case "$1" in
    bound|renew)
        ip addr flush dev "$interface"
        ip addr add "$ip/$mask" dev "$interface"
        [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
        [ -n "$router" ] && ip route replace default via "${router%% *}"
        echo "ip=$ip mtu=$mtu router=$router dns=$dns domain=$domain" > "$LEASE_FILE"
        ;;
    deconfig) ip addr flush dev "$interface" ;;
    esac
    """
)


def normal(data=None):
    return specmod.normalize(SPEC if data is None else data, clouds=CLOUDS)


def net(data, tenant, name):
    t = next(t for t in data["tenants"] if t["name"] == tenant)
    return next(n for n in t["networks"] if n["name"] == name)


def apply(tmp_path, data, *args):
    path = tmp_path / "spec.yml"
    path.write_text(yaml.safe_dump(data))
    return ansible_json(
        ["ansible-playbook", "playbooks/create_infra.yml", "-e", f"spec_file={path}", *args]
    )


def delete(tenant):
    return ansible_json(
        ["ansible-playbook", "playbooks/delete_infra.yml", "-e", f"tenant={tenant}"]
    )


def changed_hosts(data):
    return {h: s["changed"] for h, s in data["stats"].items() if s["changed"]}


def ok(proc, data):
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert all(s["failures"] == 0 and s["unreachable"] == 0 for s in data["stats"].values())


class Client:
    """A namespace with a veth on a tenant bridge of a lab host, running busybox udhcpc."""

    def __init__(self, host, name, bridge):
        self.host, self.ns, self.bridge = host, f"itcl-{name}", bridge
        self.leg = f"itc{name}"[:15]
        self.lease_file = f"/tmp/{self.ns}.lease"

    def sh(self, cmd, check=True):
        res = self.host.run(cmd)
        if check:
            assert res.rc == 0, f"{cmd}: {res.stdout}{res.stderr}"
        return res

    def in_ns(self, cmd, check=True):
        return self.sh(f"ip netns exec {self.ns} {cmd}", check)

    def create(self, hostname):
        self.sh(f"ip netns add {self.ns}")
        self.sh(f"ip link add {self.leg} type veth peer name eth0 netns {self.ns}")
        self.sh(f"ip link set {self.leg} master {self.bridge} mtu 1450 up")
        self.in_ns("ip link set lo up")
        self.in_ns("ip link set eth0 up")
        res = self.in_ns(
            f"env LEASE_FILE={self.lease_file} busybox udhcpc -i eth0 -n -q -t 6 -T 3 "
            f"-O mtu -x hostname:{hostname} -s {UDHCPC_SCRIPT}",
            check=False,
        )
        assert res.rc == 0, f"no lease in {self.ns}: {res.stdout}{res.stderr}"
        text = self.sh(f"cat {self.lease_file}").stdout
        self.lease = dict(kv.split("=", 1) for kv in text.split())
        return self.lease

    def ping(self, ip, count=3):
        res = self.in_ns(f"ping -c {count} -W 1 -i 0.2 {ip}", check=False)
        match = re.search(r"(\d+) received", res.stdout)
        return int(match.group(1)) if match else 0

    def remove(self):
        self.host.run(f"ip netns del {self.ns}")
        self.host.run(f"ip link del {self.leg}")
        self.host.run(f"rm -f {self.lease_file}")


def dnsmasq_pids(host):
    out = host.run("ps -eo pid,args").stdout
    return {
        m.group(2): int(m.group(1))
        for m in re.finditer(
            r"^\s*(\d+) /usr/sbin/dnsmasq --conf-file=/var/lib/mcm/dhcp/([^/]+)/", out, re.M
        )
    }


def ifindex(host, name):
    res = host.run(f"cat /sys/class/net/{name}/ifindex")
    return int(res.stdout) if res.rc == 0 else None


def namespaces(host):
    return set(re.findall(r"^(\S+)", host.run("ip netns list").stdout, re.M))


def links(host):
    return set(host.run("ls /sys/class/net").stdout.split())


@pytest.fixture(scope="module")
def lab(hosts, tmp_path_factory):
    for h in hosts.values():
        h.run(f"cat > {UDHCPC_SCRIPT} <<'EOF'\n{SCRIPT}EOF\nchmod +x {UDHCPC_SCRIPT}")
    clients = []
    try:
        yield {"hosts": hosts, "clients": clients, "tmp": tmp_path_factory.mktemp("infra")}
    finally:
        for c in clients:
            c.remove()
        for tenant in TENANTS:
            delete(tenant)
        for h in hosts.values():
            h.run(f"rm -f {UDHCPC_SCRIPT}")


def test_create_puts_every_object_on_the_right_hosts(lab):
    hosts = lab["hosts"]
    proc, data = apply(lab["tmp"], SPEC)
    ok(proc, data)
    n = normal()
    ita_front, ita_back = net(n, "ita", "front"), net(n, "ita", "back")
    itb, itc = net(n, "itb", "front"), net(n, "itc", "front")
    for name in ("mcm-a1", "mcm-a2"):
        have = links(hosts[name])
        for nw in (ita_front, ita_back, itc):
            assert {nw["bridge"], nw["vxlan"]} <= have, name
        assert itb["bridge"] not in have
        fdb = hosts[name].check_output("bridge fdb show dev " + ita_front["vxlan"])
        other = "172.30.1.12" if name == "mcm-a1" else "172.30.1.11"
        assert f"00:00:00:00:00:00 dst {other} self permanent" in fdb
    assert {
        "qdhcp-ita.front",
        "qdhcp-ita.back",
        "qrouter-ita",
        "qdhcp-itc.front",
        "qrouter-itc",
    } <= namespaces(hosts["mcm-a1"])
    assert not {
        ns for ns in namespaces(hosts["mcm-a2"]) if ns.startswith(("qdhcp-it", "qrouter-it"))
    }
    assert {"qdhcp-itb.front", "qrouter-itb"} <= namespaces(hosts["mcm-b1"])
    assert {itb["bridge"], itb["vxlan"]} <= links(hosts["mcm-b1"])
    assert set(dnsmasq_pids(hosts["mcm-a1"])) >= {
        "qdhcp-ita.front",
        "qdhcp-ita.back",
        "qdhcp-itc.front",
    }
    assert "qdhcp-itb.front" in dnsmasq_pids(hosts["mcm-b1"])
    # no tenant address in the root namespace of any host
    for h in hosts.values():
        assert "10.0." not in h.check_output("ip -4 -o addr show")
    gw = hosts["mcm-a1"].check_output("ip netns exec qrouter-ita ip -4 -o addr show")
    assert "10.0.0.1/24" in gw and "10.0.1.1/24" in gw
    assert (
        hosts["mcm-a1"]
        .check_output("ip netns exec qrouter-ita cat /proc/sys/net/ipv4/ip_forward")
        .strip()
        == "1"
    )


def test_second_run_changes_nothing(lab):
    proc, data = apply(lab["tmp"], SPEC)
    ok(proc, data)
    assert changed_hosts(data) == {}


def test_check_mode_reports_an_edit_and_changes_nothing(lab):
    hosts = lab["hosts"]
    edited = yaml.safe_load(yaml.safe_dump(SPEC))
    edited["tenants"][0]["networks"][1]["dhcp"] = {"range": ["10.0.1.20", "10.0.1.40"]}
    conf = "cat /var/lib/mcm/dhcp/qdhcp-ita.back/dnsmasq.conf"
    before = hosts["mcm-a1"].check_output(conf)
    pids = dnsmasq_pids(hosts["mcm-a1"])
    proc, data = apply(lab["tmp"], edited, "--check", "--diff")
    ok(proc, data)
    assert changed_hosts(data) == {"mcm-a1": 1}
    task = next(
        t
        for p in data["plays"]
        for t in p["tasks"]
        if t["task"]["name"].endswith("DHCP and DNS per network (dnsmasq)")
    )
    result = task["hosts"]["mcm-a1"]
    assert result["changed"]
    assert "10.0.1.20,10.0.1.40" in str(result["diff"])
    assert hosts["mcm-a1"].check_output(conf) == before
    assert dnsmasq_pids(hosts["mcm-a1"]) == pids


def test_client_gets_a_lease_with_mtu_1450_over_vxlan_and_resolves_names(lab):
    hosts = lab["hosts"]
    n = normal()
    front = net(n, "ita", "front")
    client = Client(hosts["mcm-a2"], "af", front["bridge"])
    lab["clients"].append(client)
    lease = client.create("cli-front")
    assert lease["mtu"] == "1450"
    assert lease["router"] == "10.0.0.1"
    assert lease["dns"] == front["dhcp"]["server"]
    assert lease["domain"] == "front.ita"
    first, last = (int(a.rsplit(".", 1)[1]) for a in front["dhcp"]["range"])
    assert first <= int(lease["ip"].rsplit(".", 1)[1]) <= last
    assert client.in_ns("cat /sys/class/net/eth0/mtu").stdout.strip() == "1450"
    answer = client.in_ns(
        f"busybox nslookup cli-front.front.ita {front['dhcp']['server']}", check=False
    )
    assert lease["ip"] in answer.stdout, answer.stdout + answer.stderr
    # DNS answers only for the tenant: nothing is forwarded off the host
    outside = client.in_ns(f"busybox nslookup example.com {front['dhcp']['server']}", check=False)
    assert outside.rc != 0
    assert client.ping(front["dhcp"]["server"]) == 3


def test_two_subnets_of_a_tenant_reach_each_other_through_its_router(lab):
    hosts = lab["hosts"]
    n = normal()
    front_client = lab["clients"][0]
    back = Client(hosts["mcm-a2"], "ab", net(n, "ita", "back")["bridge"])
    lab["clients"].append(back)
    lease = back.create("cli-back")
    assert lease["ip"].startswith("10.0.1.")
    assert front_client.ping(lease["ip"]) == 3
    assert back.ping(front_client.lease["ip"]) == 3


def test_tenants_with_the_same_cidr_are_isolated(lab):
    hosts = lab["hosts"]
    n = normal()
    ita = lab["clients"][0]
    itc = Client(hosts["mcm-a2"], "cf", net(n, "itc", "front")["bridge"])
    lab["clients"].append(itc)
    lease = itc.create("cli-c")
    assert 50 <= int(lease["ip"].rsplit(".", 1)[1]) <= 60  # its own dnsmasq, its own range
    assert lease["ip"] != ita.lease["ip"]
    # capture ICMP in itc's client while ita's client pings that address and back
    capture = f"timeout 6 tcpdump -i eth0 -n -c 1 -p icmp and src {ita.lease['ip']}"
    proc = itc.host.backend.run(
        f"ip netns exec {itc.ns} {capture} > /tmp/itc.cap 2>&1 & echo started"
    )
    assert "started" in proc.stdout
    itc.host.run("sleep 1")
    assert ita.ping(lease["ip"], count=5) == 0
    itc.host.run("sleep 5")
    captured = itc.host.run("cat /tmp/itc.cap; rm -f /tmp/itc.cap").stdout
    assert "0 packets captured" in captured, captured
    # and the other way round, and nothing of itb on cloud_b is reachable either
    assert itc.ping(ita.lease["ip"]) == 0
    b_client = Client(hosts["mcm-b1"], "bf", net(n, "itb", "front")["bridge"])
    lab["clients"].append(b_client)
    b_lease = b_client.create("cli-b")
    assert ita.ping(b_lease["ip"]) == 0 or b_lease["ip"] == ita.lease["ip"]
    assert b_client.ping(net(n, "itb", "front")["dhcp"]["server"]) == 3


def test_updates_touch_only_their_network(lab):
    hosts = lab["hosts"]
    a1 = hosts["mcm-a1"]
    n = normal()
    front, back = net(n, "ita", "front"), net(n, "ita", "back")
    before_idx = {b: ifindex(a1, b) for b in (front["bridge"], back["bridge"])}
    pids = dnsmasq_pids(a1)

    # add a network
    added = yaml.safe_load(yaml.safe_dump(SPEC))
    added["tenants"][0]["networks"].append(
        {"name": "extra", "cloud": "cloud_a", "subnet": "10.0.2.0/24"}
    )
    proc, data = apply(lab["tmp"], added)
    ok(proc, data)
    extra = net(normal(added), "ita", "extra")
    assert extra["bridge"] in links(a1) and "qdhcp-ita.extra" in namespaces(a1)
    assert {b: ifindex(a1, b) for b in before_idx} == before_idx
    now = dnsmasq_pids(a1)
    assert {k: now[k] for k in pids} == pids

    # change a DHCP range: only that network's dnsmasq restarts
    ranged = yaml.safe_load(yaml.safe_dump(added))
    ranged["tenants"][0]["networks"][1]["dhcp"] = {"range": ["10.0.1.20", "10.0.1.40"]}
    proc, data = apply(lab["tmp"], ranged)
    ok(proc, data)
    assert changed_hosts(data) == {"mcm-a1": 1}
    now = dnsmasq_pids(a1)
    assert now["qdhcp-ita.back"] != pids["qdhcp-ita.back"]
    assert {k: now[k] for k in pids if k != "qdhcp-ita.back"} == {
        k: v for k, v in pids.items() if k != "qdhcp-ita.back"
    }
    assert now["qdhcp-ita.front"] == pids["qdhcp-ita.front"]
    assert "dhcp-range=10.0.1.20,10.0.1.40" in a1.check_output(
        "cat /var/lib/mcm/dhcp/qdhcp-ita.back/dnsmasq.conf"
    )

    # remove the added network again (gone from the spec): only it goes
    ranged["tenants"][0]["networks"].pop()
    proc, data = apply(lab["tmp"], ranged)
    ok(proc, data)
    for h in ("mcm-a1", "mcm-a2"):
        assert extra["bridge"] not in links(hosts[h]) and extra["vxlan"] not in links(hosts[h])
    assert "qdhcp-ita.extra" not in namespaces(a1)
    assert "qdhcp-ita.extra" not in dnsmasq_pids(a1)
    assert {b: ifindex(a1, b) for b in before_idx} == before_idx
    assert dnsmasq_pids(a1)["qdhcp-ita.front"] == pids["qdhcp-ita.front"]
    # the clients on the remaining networks still reach each other
    assert lab["clients"][0].ping(lab["clients"][1].lease["ip"]) == 3


def test_delete_removes_exactly_the_tenant(lab):
    hosts = lab["hosts"]
    n = normal()
    proc, data = delete("ita")
    ok(proc, data)
    for name, h in hosts.items():
        assert not {ns for ns in namespaces(h) if ns.startswith(("qdhcp-ita.", "qrouter-ita"))}, (
            name
        )
        have = links(h)
        for nw in ("front", "back"):
            assert (
                net(n, "ita", nw)["bridge"] not in have and net(n, "ita", nw)["vxlan"] not in have
            )
        assert not [k for k in dnsmasq_pids(h) if k.startswith("qdhcp-ita.")]
    # itc, with the same CIDR on the same hosts, is untouched and still serves its client
    assert "qrouter-itc" in namespaces(hosts["mcm-a1"])
    assert "qdhcp-itc.front" in dnsmasq_pids(hosts["mcm-a1"])
    itc = next(c for c in lab["clients"] if c.ns == "itcl-cf")
    assert itc.ping(net(n, "itc", "front")["dhcp"]["server"]) == 3
    # a second delete changes nothing
    proc, data = delete("ita")
    ok(proc, data)
    assert changed_hosts(data) == {}


def test_bad_spec_touches_no_host(lab, hosts):
    bad = yaml.safe_load(yaml.safe_dump(SPEC))
    bad["tenants"][2]["networks"][0]["subnet"] = "10.0.0.5/24"
    bad["tenants"][1]["networks"][0]["cloud"] = "cloud_z"
    before = {name: (namespaces(h), links(h)) for name, h in hosts.items()}
    path = lab["tmp"] / "bad.yml"
    path.write_text(yaml.safe_dump(bad))
    proc = run(
        [".venv/bin/ansible-playbook", "playbooks/create_infra.yml", "-e", f"spec_file={path}"]
    )
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "tenants[2].networks[0].subnet" in out and "tenants[1].networks[0].cloud" in out
    assert "mcm-a1" not in re.findall(r"^(\S+)\s+:\s+ok=", proc.stdout, re.M)
    assert {name: (namespaces(h), links(h)) for name, h in hosts.items()} == before
