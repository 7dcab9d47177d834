"""The node overlay on the lab (issue 6): setup_ovs.yml and build_overlay.yml.

setup_ovs runs on mcm-a1 and mcm-a2 only (the lab's OVS tunnel endpoints live on the
cloud_a underlay, see docs/overlay.md): Open vSwitch started without systemd, userspace
datapath, endpoint bridge ovsul0 on eth0, overlay bridge xenbr0 (10.250.0.<id>/24, MTU
1450) with a protected VXLAN port on UDP 4790. Traffic is checked with a namespace on each
side plugged into xenbr0: DHCP (dnsmasq on mcm-a1, busybox udhcpc on mcm-a2) and a bounded
TCP transfer. build_overlay runs on all three hosts with the Linux bridge backend.

The fixtures remove what the tests create (bridges, OVS database and daemons when they
were not there before, namespaces, dnsmasq, files), even when a test fails. UDP 4789 is
left to the tenant networks of the other lab users; nothing leaves the lab's networks.
"""

from __future__ import annotations

import json
import time

import pytest

from conftest import ansible_json

pytestmark = pytest.mark.lab

OVS_HOSTS = ("mcm-a1", "mcm-a2")
ALL_HOSTS = ("mcm-a1", "mcm-a2", "mcm-b1")
IDS = {"mcm-a1": 1, "mcm-a2": 2, "mcm-b1": 3}
PORT = "4790"
NS = "ovt-ns"
VETH = "ovt-v0"  # in the root namespace, a port of xenbr0
VETH_NS = "ovt-p0"  # in NS
RUN = "/var/run/openvswitch"
DB = "/var/lib/openvswitch/conf.db"
NIC_SYSCTLS = (  # of the endpoint bridge's NIC; the fixture puts the values back
    "/proc/sys/net/ipv4/conf/eth0/arp_ignore",
    "/proc/sys/net/ipv4/conf/eth0/arp_announce",
)


def play(playbook: str, *extra: str, timeout: float = 900) -> dict[str, dict]:
    """Run a playbook; per host its stats and the tasks that changed."""
    proc, data = ansible_json(["ansible-playbook", f"playbooks/{playbook}", *extra],
                              timeout=timeout)  # fmt: skip
    stats = data["stats"]
    failed = {h: s for h, s in stats.items() if s.get("failures") or s.get("unreachable")}
    msgs = [
        (task["task"]["name"], host, res.get("msg"))
        for p in data["plays"] for task in p["tasks"]
        for host, res in task["hosts"].items() if res.get("failed") and not res.get("ignore_errors")
    ]  # fmt: skip
    assert proc.returncode == 0 and not failed, f"{msgs}\n{proc.stderr[-2000:]}"
    out: dict[str, dict] = {h: {"stats": s, "changed": [], "results": {}} for h, s in stats.items()}
    for p in data["plays"]:
        for task in p["tasks"]:
            name = task["task"]["name"].split(" : ", 1)[-1]  # without the role's prefix
            for host, res in task["hosts"].items():
                out[host]["results"].setdefault(name, []).append(res)
                if res.get("changed"):
                    out[host]["changed"].append(name)
    return out


def sh(host, cmd: str, timeout: int = 60) -> str:
    """A command on a lab host, bounded; its stdout (asserts rc 0)."""
    result = host.run("timeout %s sh -c %s", str(timeout), cmd)
    assert result.rc == 0, f"{cmd}: rc {result.rc}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def wait_for(what: str, check, timeout: float = 30, step: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(step)


# --- setup_ovs ------------------------------------------------------------------------


def stop_process(host, pid: str | int, tries: int) -> None:
    """SIGTERM, up to ``tries`` quarter-seconds for the process to go, then SIGKILL."""
    host.run(f"kill {pid}")
    for _attempt in range(tries):
        if host.run(f"kill -0 {pid}").rc != 0:
            break
        time.sleep(0.25)
    host.run(f"kill -9 {pid}")


def ovs_snapshot(host) -> dict:
    """What existed before the tests: running daemons and the database file."""
    pids = {}
    for daemon in ("ovsdb-server", "ovs-vswitchd"):
        res = host.run(f"cat {RUN}/{daemon}.pid")
        pid = res.stdout.strip()
        if res.rc == 0 and pid.isdigit() and host.run(f"kill -0 {pid}").rc == 0:
            pids[daemon] = pid
    dirs = {d: host.file(d).exists for d in (RUN, "/var/log/openvswitch")}
    sysctls = {path: sh(host, f"cat {path}").strip() for path in NIC_SYSCTLS}
    return {"pids": pids, "db": host.run(f"test -s {DB}").rc == 0, "dirs": dirs,
            "sysctls": sysctls}  # fmt: skip


def ovs_cleanup(host, before: dict) -> None:
    host.run(f"ip netns pids {NS} | xargs -r kill")
    host.run(f"ip netns del {NS}")
    host.run(f"ip link del {VETH}")
    host.run("rm -rf /tmp/ovt-*")
    if host.run(f"test -S {RUN}/db.sock").rc == 0:
        for bridge in ("xenbr0", "ovsul0"):
            host.run(f"timeout 20 ovs-vsctl --timeout=15 --if-exists del-br {bridge}")
    for daemon in ("ovs-vswitchd", "ovsdb-server"):  # stop only what the tests started
        if daemon in before["pids"]:
            continue
        pid = host.run(f"cat {RUN}/{daemon}.pid").stdout.strip()
        if pid.isdigit():
            stop_process(host, pid, tries=20)
        host.run(f"rm -f {RUN}/{daemon}.pid {RUN}/{daemon}.*.ctl /var/log/openvswitch/{daemon}.log")
    if not before["pids"]:
        host.run(f"rm -f {RUN}/db.sock")
    if not before["db"]:
        host.run(f"rm -f {DB} /var/lib/openvswitch/.conf.db.~lock~")
    for path, existed in before["dirs"].items():
        if not existed:
            host.run(f"rmdir {path}")
    for path, value in before["sysctls"].items():  # the role sets them on the NIC, eth0
        host.run(f"echo {value} > {path}")


def ovs_json(host, *args: str) -> list[dict]:
    """ovs-vsctl --format=json rows as dicts (sets and maps decoded)."""
    out = json.loads(sh(host, "ovs-vsctl --timeout=10 --format=json " + " ".join(args)))

    def value(v):
        if isinstance(v, list) and v and v[0] == "map":
            return {k: value(x) for k, x in v[1]}
        if isinstance(v, list) and v and v[0] == "set":
            return [value(x) for x in v[1]]
        if isinstance(v, list) and v and v[0] == "uuid":
            return v[1]
        return v

    return [dict(zip(out["headings"], map(value, row), strict=True)) for row in out["data"]]


def tunnel_options(host, port: str) -> dict:
    (row,) = ovs_json(host, "--columns=name,type,options", "find", "Interface", f"name={port}")
    assert row["type"] == "vxlan"
    return row["options"]


def ovs_diagnostics(hosts: dict) -> str:
    """What a failed transfer leaves to look at: the tunnels' next hops, the datapath's
    flows and counters, the daemon's warnings and the test's dnsmasq log."""
    commands = (
        "ovs-appctl tnl/arp/show", "ovs-appctl fdb/show ovsul0", "ovs-appctl fdb/show xenbr0",
        "ovs-appctl dpctl/dump-flows", "ovs-appctl dpif-netdev/pmd-stats-show",
        "grep -v '|INFO|' /var/log/openvswitch/ovs-vswitchd.log | tail -20",
        "tail -20 /tmp/ovt-dnsmasq.log",
    )  # fmt: skip
    return "\n".join(
        f"--- {name}: {command}\n{host.run('timeout 10 sh -c %s', command).stdout}"
        for name, host in hosts.items() for command in commands
    )  # fmt: skip


def plug_namespace(host, address: str | None) -> None:
    """Namespace NS with a veth leg on xenbr0 (tx checksum offload off on both ends: the
    userspace datapath forwards the kernel's partial checksums as they are)."""
    sh(host, f"ip netns add {NS}")
    sh(host, f"ip link add {VETH} mtu 1450 type veth peer name {VETH_NS} mtu 1450 netns {NS}")
    sh(host, f"ethtool -K {VETH} tx off >/dev/null && ip link set {VETH} up")
    sh(host, f"ip netns exec {NS} ethtool -K {VETH_NS} tx off >/dev/null")
    sh(host, f"ip -n {NS} link set lo up && ip -n {NS} link set {VETH_NS} up")
    sh(host, f"ovs-vsctl --timeout=10 add-port xenbr0 {VETH}")
    if address:
        sh(host, f"ip -n {NS} addr add {address} dev {VETH_NS}")


SERVER = r"""
import hashlib, socket, sys
srv = socket.socket(); srv.settimeout(40)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 5001)); srv.listen(1)
conn, peer = srv.accept(); conn.settimeout(20)
digest, size = hashlib.sha256(), 0
while chunk := conn.recv(65536):
    digest.update(chunk); size += len(chunk)
print(peer[0], size, digest.hexdigest(), flush=True)
"""

CLIENT = r"""
import hashlib, os, socket, sys, time
data = os.urandom(4 * 1024 * 1024)
started = time.monotonic()
conn = socket.create_connection((sys.argv[1], 5001), timeout=20)
conn.sendall(data); conn.close()
print(len(data), hashlib.sha256(data).hexdigest(), f"{time.monotonic() - started:.2f}")
"""


class TestSetupOvs:
    @pytest.fixture(scope="class")
    @classmethod
    def ovs_lab(cls, hosts):
        before = {name: ovs_snapshot(hosts[name]) for name in OVS_HOSTS}
        try:
            yield {name: hosts[name] for name in OVS_HOSTS}
        finally:
            for name in OVS_HOSTS:
                ovs_cleanup(hosts[name], before[name])

    def test_setup_ovs_builds_bridges_and_tunnels(self, ovs_lab):
        started = time.monotonic()
        result = play("setup_ovs.yml", "-l", ",".join(OVS_HOSTS))
        print(f"setup_ovs first run: {time.monotonic() - started:.1f} s")
        for name, host in ovs_lab.items():
            me, peer = IDS[name], IDS[next(h for h in OVS_HOSTS if h != name)]
            found = ovs_json(host, "--columns=name,datapath_type", "list", "Bridge")
            bridges = {b["name"]: b for b in found}
            assert bridges["xenbr0"]["datapath_type"] == "netdev"
            assert bridges["ovsul0"]["datapath_type"] == "netdev"
            assert sh(host, "ovs-vsctl list-ports ovsul0").split() == ["eth0"]
            assert sh(host, "ovs-vsctl list-ports xenbr0").split() == [f"vxo-{peer}"]
            assert tunnel_options(host, f"vxo-{peer}") == {
                "remote_ip": f"10.251.1.{peer}", "local_ip": f"10.251.1.{me}",
                "key": "5000", "dst_port": PORT,
            }  # fmt: skip
            assert sh(host, f"ovs-vsctl get port vxo-{peer} protected").strip() == "true"
            assert sh(host, "cat /sys/class/net/xenbr0/mtu").strip() == "1450"  # eth0 1500 - 50
            assert f"10.250.0.{me}/24" in sh(host, "ip -br addr show dev xenbr0")
            assert sh(host, "cat /proc/sys/net/ipv4/conf/ovsul0/arp_ignore").strip() == "1"
            assert [sh(host, f"cat {path}").strip() for path in NIC_SYSCTLS] == ["1", "2"]
            assert result[name]["changed"]

    def test_only_the_endpoint_bridge_answers_arp_for_its_address(self, ovs_lab):
        """The tunnel's next hop is whatever MAC answers ARP for the peer's endpoint
        address. eth0 answering too (with its own MAC) let OVS keep eth0's MAC now and then,
        and the peer's OVS does not take frames sent to eth0's MAC off the tunnel: the
        overlay went dead in one direction (a CI run lost every DHCP discover)."""
        for name, host in ovs_lab.items():
            peer = next(h for h in OVS_HOSTS if h != name)
            bridge_mac = sh(ovs_lab[peer], "cat /sys/class/net/ovsul0/address").strip()
            out = sh(host, f"busybox arping -c 1 -w 2 -I eth0 -s 10.251.1.{IDS[name]}"
                           f" 10.251.1.{IDS[peer]}")  # fmt: skip
            replies = [line.split("[", 1)[1].split("]")[0].lower()
                       for line in out.splitlines() if "reply from" in line]  # fmt: skip
            assert replies == [bridge_mac], out

    def test_setup_ovs_second_run_changes_nothing_and_drift_is_corrected(self, ovs_lab):
        started = time.monotonic()
        again = play("setup_ovs.yml", "-l", ",".join(OVS_HOSTS))
        print(f"setup_ovs second run: {time.monotonic() - started:.1f} s")
        assert {h: r["changed"] for h, r in again.items()} == {h: [] for h in OVS_HOSTS}
        a1 = ovs_lab["mcm-a1"]
        sh(a1, "ovs-vsctl set interface vxo-2 options:dst_port=4799 options:key=77"
               " options:tos=inherit")  # fmt: skip
        fixed = play("setup_ovs.yml", "-l", ",".join(OVS_HOSTS))
        assert fixed["mcm-a1"]["changed"] == ["The overlay bridge and its tunnels"]
        assert fixed["mcm-a2"]["changed"] == []
        (change,) = fixed["mcm-a1"]["results"]["The overlay bridge and its tunnels"][0]["changes"]
        assert change["action"] == "update" and set(change["details"]) == {"options"}
        assert tunnel_options(a1, "vxo-2") == {"remote_ip": "10.251.1.2", "local_ip": "10.251.1.1",
                                               "key": "5000", "dst_port": PORT}  # fmt: skip

    def test_traffic_crosses_the_userspace_datapath_dhcp_and_tcp(self, ovs_lab):
        a1, a2 = ovs_lab["mcm-a1"], ovs_lab["mcm-a2"]
        plug_namespace(a1, "10.250.9.1/24")
        plug_namespace(a2, None)
        sh(a1, f"ip netns exec {NS} dnsmasq --no-resolv --no-hosts --bind-interfaces"
               f" --interface={VETH_NS} --except-interface=lo"
               " --dhcp-range=10.250.9.100,10.250.9.110,5m --dhcp-option=26,1450"
               " --dhcp-leasefile=/tmp/ovt-leases --pid-file=/tmp/ovt-dnsmasq.pid"
               " --log-facility=/tmp/ovt-dnsmasq.log --log-dhcp")  # fmt: skip
        # busybox udhcpc: three discovers, then give up; the lease is printed, not applied
        started = time.monotonic()
        dhcp = a2.run("timeout 40 ip netns exec %s busybox udhcpc -i %s -n -q -t 5 -T 2 -f"
                      " -s /bin/true 2>&1", NS, VETH_NS)  # fmt: skip
        if dhcp.rc != 0:
            pytest.fail(f"no DHCP lease through OVS: {dhcp.stdout}\n{ovs_diagnostics(ovs_lab)}")
        out = dhcp.stdout
        print(f"DHCP lease through OVS: {time.monotonic() - started:.1f} s")
        assert "lease of 10.250.9.1" in out, out
        lease = out.split("lease of ", 1)[1].split()[0]
        assert lease in sh(a1, "cat /tmp/ovt-leases")
        sh(a2, f"ip -n {NS} addr add {lease}/24 dev {VETH_NS}")
        sh(a2, f"ip netns exec {NS} ping -c 3 -W 2 10.250.9.1")
        a1.run("ip netns exec %s setsid timeout 60 python3 -c %s > /tmp/ovt-server.out 2>&1 &",
               NS, SERVER)  # fmt: skip
        wait_for("TCP server listening", lambda: ":5001" in a1.run(
            f"ip netns exec {NS} ss -ltn").stdout, timeout=20)  # fmt: skip
        size, digest, seconds = sh(a2, f"ip netns exec {NS} python3 -c '{CLIENT}' 10.250.9.1",
                                   timeout=60).split()  # fmt: skip

        def server_output() -> str:
            return a1.run("cat /tmp/ovt-server.out").stdout.strip()

        received = wait_for("TCP transfer received", server_output, timeout=30)
        print(f"TCP 4 MiB through OVS userspace VXLAN: {seconds} s")
        assert received.split() == [lease, size, digest]


# --- build_overlay (Linux bridge backend) ----------------------------------------------

OVERLAY_DEVICE = "vxo-5000"
MOVED = "172.30.1.212"  # a second address of mcm-a2's eth0, the test's "new" private address


def overlay_cleanup(hosts) -> None:
    for name in ALL_HOSTS:
        host = hosts[name]
        host.run(f"ip link del {OVERLAY_DEVICE}")
        if "mcm:overlay" in host.run("cat /sys/class/net/xenbr0/ifalias").stdout:
            host.run("ip link del xenbr0")  # the Linux bridge of the role, never OVS's
    hosts["mcm-a2"].run(f"ip addr del {MOVED}/24 dev eth0")


def fdb_dsts(host) -> list[str]:
    out = sh(host, f"bridge fdb show dev {OVERLAY_DEVICE}")
    return sorted(line.split(" dst ")[1].split()[0] for line in out.splitlines()
                  if line.startswith("00:00:00:00:00:00") and " dst " in line)  # fmt: skip


class TestBuildOverlay:
    @pytest.fixture(scope="class")
    @classmethod
    def overlay_lab(cls, hosts, tmp_path_factory):
        overlay_cleanup(hosts)
        try:
            yield {"hosts": hosts, "tmp": tmp_path_factory.mktemp("overlay")}
        finally:
            overlay_cleanup(hosts)

    def test_every_pair_of_nodes_pings_over_the_overlay(self, overlay_lab):
        hosts = overlay_lab["hosts"]
        started = time.monotonic()
        result = play("build_overlay.yml")
        print(f"build_overlay first run: {time.monotonic() - started:.1f} s")
        assert all(result[h]["changed"] for h in ALL_HOSTS)
        assert fdb_dsts(hosts["mcm-a1"]) == ["172.30.0.21", "172.30.1.12"]  # a2 private, b1 public
        assert fdb_dsts(hosts["mcm-a2"]) == ["172.30.0.21", "172.30.1.11"]
        assert fdb_dsts(hosts["mcm-b1"]) == ["172.30.0.11", "172.30.0.12"]  # all public
        for name in ALL_HOSTS:
            details = sh(hosts[name], f"ip -d link show {OVERLAY_DEVICE}")
            assert "vxlan id 5000" in details and f"dstport {PORT}" in details, details
            assert "master xenbr0" in details
            assert sh(hosts[name], "cat /sys/class/net/xenbr0/mtu").strip() == "1450"
            for peer in ALL_HOSTS:
                if peer != name:
                    sh(hosts[name], f"ping -c 2 -W 2 -I xenbr0 10.250.0.{IDS[peer]}")

    def test_second_run_changes_nothing(self, overlay_lab):
        started = time.monotonic()
        again = play("build_overlay.yml")
        print(f"build_overlay second run: {time.monotonic() - started:.1f} s")
        assert {h: r["changed"] for h, r in again.items()} == {h: [] for h in ALL_HOSTS}

    def test_a_new_address_updates_only_the_tunnels_that_involve_it(self, overlay_lab):
        hosts, tmp = overlay_lab["hosts"], overlay_lab["tmp"]
        sh(hosts["mcm-a2"], f"ip addr add {MOVED}/24 dev eth0")
        extra = tmp / "moved.yml"
        moved = "{{ '" + MOVED + "' if inventory_hostname == 'mcm-a2' else '' }}"
        extra.write_text(f'overlay_private_ip: "{moved}"\n')
        result = play("build_overlay.yml", "-e", f"@{extra}")
        assert result["mcm-a1"]["changed"] == ["Flood list, one entry per peer"]
        assert result["mcm-a2"]["changed"] == [] and result["mcm-b1"]["changed"] == []
        (fdb,) = result["mcm-a1"]["results"]["Flood list, one entry per peer"]
        assert sorted((c["action"], c["details"]["dst"]) for c in fdb["changes"]) == [
            ("create", MOVED), ("delete", "172.30.1.12")]  # fmt: skip
        assert fdb_dsts(hosts["mcm-a1"]) == ["172.30.0.21", MOVED]
        sh(hosts["mcm-a1"], "ping -c 2 -W 2 -I xenbr0 10.250.0.2")
        sh(hosts["mcm-b1"], "ping -c 2 -W 2 -I xenbr0 10.250.0.2")
