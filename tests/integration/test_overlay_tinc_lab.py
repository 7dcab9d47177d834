"""build_overlay.yml with overlay_encryption=tinc on the lab (issue 6).

The three hosts join the tinc network ``mcmoverlay`` (10.251.0.<id>/24 on its interface);
the VXLAN tunnels between cloud_a and cloud_b go to tinc addresses, those inside cloud_a
stay plain on eth0. Checked: every pair of nodes pings over the overlay, a full-size frame
(MTU 1370) crosses clouds with DF set, the WAN (mcm-b1's eth1) carries tinc on port 655
and no VXLAN of the overlay (UDP 4790) while the ping payload is visible in cloud_a's plain
tunnel and not on the WAN, a second run changes nothing (same keys, same daemons), a lost
host file is put back by a restart of that node's tincd only, encryption none removes tinc
and goes back to public addresses, switching tinc on again also encrypts the flows the
VXLAN devices had learned behind public addresses, and state absent removes everything.

UDP 4789 is the tenant networks' (other lab users): the overlay uses 4790, and only our
own ports are captured. Every ping and capture is bounded in count and time; the fixture
removes tincd (found by its pid file or its ``--net=mcmoverlay`` command line), the tinc
files, the overlay's links and the capture files, even when a test fails.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from test_overlay_lab import (
    ALL_HOSTS,
    IDS,
    PORT,
    fdb_dsts,
    overlay_cleanup,
    play,
    sh,
    stop_process,
    wait_for,
)
from testinfra.host import Host

pytestmark = pytest.mark.lab

TINC = ("-e", "overlay_encryption=tinc")
NET = "mcmoverlay"
TINC_DIR = f"/etc/tinc/{NET}"
PIDFILE = f"/run/tinc.{NET}.pid"
LOGFILE = f"/var/log/tinc.{NET}.log"
TINC_IP = {name: f"10.251.0.{IDS[name]}" for name in ALL_HOSTS}
OVERLAY_IP = {name: f"10.250.0.{IDS[name]}" for name in ALL_HOSTS}
# ping -p: the payload repeats these bytes ("mcmtincX"), to be looked for in captures
PATTERN_HEX = "6d636d74696e6358"
PATTERN = "mcmtincX"
CAPTURE = "/tmp/ovtinc-capture"
# expected flood lists: a peer of the same cloud at its private address, of the other
# cloud at its tinc address
FLOOD = {
    "mcm-a1": ["10.251.0.3", "172.30.1.12"],
    "mcm-a2": ["10.251.0.3", "172.30.1.11"],
    "mcm-b1": ["10.251.0.1", "10.251.0.2"],
}
HOST_FILES = {
    "mcm-a1": ["mcm_a1", "mcm_b1"],
    "mcm-a2": ["mcm_a2", "mcm_b1"],
    "mcm-b1": ["mcm_a1", "mcm_a2", "mcm_b1"],
}


def tincd_pids(host: Host) -> list[str]:
    """tincd processes of our network: the pid file's, and any started for --net=mcmoverlay."""
    pids = set(host.run(f"pgrep -f -- '^tincd --net={NET} '").stdout.split())
    pid = host.run(f"cat {PIDFILE}").stdout.strip()
    if pid.isdigit() and host.run(f"cat /proc/{pid}/comm").stdout.strip() == "tincd":
        pids.add(pid)
    return sorted(pids)


def tinc_cleanup(host: Host) -> None:
    for pid in tincd_pids(host):
        stop_process(host, pid, tries=40)
    host.run(f"rm -rf {TINC_DIR} {PIDFILE} {LOGFILE} {CAPTURE}.*")
    host.run(f"ip link del {NET}")


def assert_no_tinc(host: Host) -> None:
    assert tincd_pids(host) == []
    for path in (TINC_DIR, PIDFILE, LOGFILE, f"/sys/class/net/{NET}"):
        assert not host.file(path).exists, path


def ping(host: Host, address: str, *options: str, count: int = 2) -> str:
    """A bounded ping from the host's overlay bridge; its output (asserts no loss)."""
    out = sh(host, f"ping -n -c {count} -i 0.2 -W 2 -I xenbr0 {' '.join(options)} {address}",
             timeout=30)  # fmt: skip
    assert f"{count} received, 0% packet loss" in out, out
    return out


class Capture:
    """tcpdump on one interface of a lab host, bounded in packets and seconds, to a file."""

    def __init__(self, host: Host, interface: str, seconds: int = 30, count: int = 400) -> None:
        self.host, self.base = host, f"{CAPTURE}.{interface}"
        host.run(f"rm -f {self.base}.*")
        # the shell's pid is timeout's (exec): INT to it stops tcpdump, which flushes the file
        host.run(
            "setsid sh -c %s > /dev/null 2>&1 &",
            f"echo $$ > {self.base}.pid; exec timeout -s INT {seconds} tcpdump -n -i {interface}"
            f" -U -c {count} -w {self.base}.pcap 'port 655 or udp port {PORT}'"
            f" 2> {self.base}.err",
        )
        wait_for(f"tcpdump listening on {interface}",
                 lambda: "listening on" in host.run(f"cat {self.base}.err").stdout,
                 timeout=15)  # fmt: skip

    def stop(self) -> dict[str, int]:
        """Stops the capture; packets of tinc (port 655: all, UDP), of the overlay's VXLAN
        (UDP PORT), and how often PATTERN is found in the raw capture."""
        pid = self.host.run(f"cat {self.base}.pid").stdout.strip()
        time.sleep(1)  # what the kernel still buffers for tcpdump is lost when it stops
        self.host.run(f"kill -INT {pid}")
        wait_for("tcpdump stopped", lambda: self.host.run(f"test -d /proc/{pid}").rc != 0,
                 timeout=15)  # fmt: skip
        lines = sh(self.host, f"tcpdump -n -r {self.base}.pcap 2>/dev/null").splitlines()
        found = self.host.run(f"grep -c -a {PATTERN} {self.base}.pcap").stdout.strip()
        tinc = [line for line in lines if ".655 >" in line or ".655:" in line]
        return {
            "tinc": len(tinc),
            "tinc_udp": sum(1 for line in tinc if ": UDP," in line),
            PORT: sum(1 for line in lines if f".{PORT} >" in line or f".{PORT}:" in line),
            "pattern": int(found or 0),
        }


def learned_dsts(host: Host) -> list[str]:
    """Remotes behind which the overlay's VXLAN device learned a MAC (not the flood list)."""
    out = sh(host, "bridge fdb show dev vxo-5000")
    return sorted({line.split(" dst ")[1].split()[0] for line in out.splitlines()
                   if " dst " in line and not line.startswith("00:00:00:00:00:00")})  # fmt: skip


def tinc_state(host: Host) -> dict[str, str]:
    """The key's checksum and the daemon's pid: what a second run must not change."""
    return {"key": sh(host, f"sha256sum {TINC_DIR}/rsa_key.priv").split()[0],
            "pid": sh(host, f"cat {PIDFILE}").strip()}  # fmt: skip


@pytest.fixture(scope="module")
def tinc_lab(hosts: dict[str, Host]) -> Iterator[dict[str, Host]]:
    """The three hosts, without any tinc or overlay of ours before and after the tests."""
    for name in ALL_HOSTS:
        tinc_cleanup(hosts[name])
    overlay_cleanup(hosts)
    try:
        yield {name: hosts[name] for name in ALL_HOSTS}
    finally:
        for name in ALL_HOSTS:
            tinc_cleanup(hosts[name])
        overlay_cleanup(hosts)


class TestBuildOverlayTinc:
    def test_check_mode_on_a_fresh_lab_changes_nothing(self, tinc_lab):
        result = play("build_overlay.yml", *TINC, "--check")
        assert all(result[h]["changed"] for h in ALL_HOSTS)
        for host in tinc_lab.values():
            assert_no_tinc(host)
            assert not host.file("/sys/class/net/xenbr0").exists

    def test_every_pair_pings_and_the_wan_carries_only_tinc(self, tinc_lab):
        started = time.monotonic()
        result = play("build_overlay.yml", *TINC)
        print(f"build_overlay with tinc, first run: {time.monotonic() - started:.1f} s")
        assert all(result[h]["changed"] for h in ALL_HOSTS)
        for name, host in tinc_lab.items():
            assert fdb_dsts(host) == FLOOD[name]
            assert len(tincd_pids(host)) == 1
            assert f"{TINC_IP[name]}/24" in sh(host, f"ip -br addr show dev {NET}")
            assert sh(host, f"cat /sys/class/net/{NET}/mtu").strip() == "1420"  # 1500 - 80
            assert sh(host, "cat /sys/class/net/xenbr0/mtu").strip() == "1370"  # - 50 more
            assert sorted(sh(host, f"ls {TINC_DIR}/hosts").split()) == HOST_FILES[name]
            assert sh(host, f"stat -c %a {TINC_DIR}/rsa_key.priv").strip() == "600"
            for peer in ALL_HOSTS:
                if peer != name:
                    ping(host, OVERLAY_IP[peer])
        # a full-size frame between clouds, DF set: 1370 = 1342 + ICMP 8 + IPv4 20
        ping(tinc_lab["mcm-b1"], OVERLAY_IP["mcm-a1"], "-M do -s 1342")
        ping(tinc_lab["mcm-a2"], OVERLAY_IP["mcm-b1"], "-M do -s 1342")

        wan = Capture(tinc_lab["mcm-b1"], "eth1")
        lan = Capture(tinc_lab["mcm-a2"], "eth0")
        for source, target in (("mcm-b1", "mcm-a1"), ("mcm-b1", "mcm-a2"), ("mcm-a1", "mcm-b1"),
                               ("mcm-a1", "mcm-a2")):  # fmt: skip
            ping(tinc_lab[source], OVERLAY_IP[target], f"-p {PATTERN_HEX}", count=5)
        on_wan, in_cloud_a = wan.stop(), lan.stop()
        print(f"mcm-b1 eth1 (WAN): {on_wan}; mcm-a2 eth0 (cloud_a): {in_cloud_a}")
        # 15 pings across and their replies, through tinc (UDP once it knows the path MTU);
        # none as plain VXLAN, and the payload nowhere in clear
        assert on_wan["tinc"] >= 30 and on_wan["tinc_udp"] > 0, on_wan
        assert on_wan[PORT] == 0 and on_wan["pattern"] == 0, on_wan
        # inside cloud_a the tunnel is plain VXLAN: the payload can be read
        assert in_cloud_a[PORT] >= 10 and in_cloud_a["tinc"] == 0, in_cloud_a
        assert in_cloud_a["pattern"] > 0, in_cloud_a

    def test_second_run_changes_nothing_and_keeps_keys_and_daemons(self, tinc_lab):
        before = {name: tinc_state(host) for name, host in tinc_lab.items()}
        started = time.monotonic()
        again = play("build_overlay.yml", *TINC)
        print(f"build_overlay with tinc, second run: {time.monotonic() - started:.1f} s")
        assert {h: r["changed"] for h, r in again.items()} == {h: [] for h in ALL_HOSTS}
        assert {name: tinc_state(host) for name, host in tinc_lab.items()} == before

    def test_a_lost_host_file_is_put_back_and_only_that_tincd_restarts(self, tinc_lab):
        before = {name: tinc_state(host) for name, host in tinc_lab.items()}
        a1 = tinc_lab["mcm-a1"]
        sh(a1, f"rm {TINC_DIR}/hosts/mcm_b1")
        result = play("build_overlay.yml", *TINC)
        assert result["mcm-a1"]["changed"] == ["Configuration and host files of the tinc network",
                                               "Start tincd, or restart it with a new"
                                               " configuration"]  # fmt: skip
        assert result["mcm-a2"]["changed"] == [] and result["mcm-b1"]["changed"] == []
        after = {name: tinc_state(host) for name, host in tinc_lab.items()}
        assert after["mcm-a1"]["pid"] != before["mcm-a1"]["pid"]
        assert after["mcm-a1"]["key"] == before["mcm-a1"]["key"]
        assert {n: after[n] for n in ("mcm-a2", "mcm-b1")} == {
            n: before[n] for n in ("mcm-a2", "mcm-b1")}  # fmt: skip
        ping(tinc_lab["mcm-b1"], OVERLAY_IP["mcm-a1"])

    def test_encryption_none_removes_tinc_and_goes_back_to_public_addresses(self, tinc_lab):
        result = play("build_overlay.yml")
        for name, host in tinc_lab.items():
            assert "Stop tincd" in result[name]["changed"]
            assert_no_tinc(host)
            assert sh(host, "cat /sys/class/net/xenbr0/mtu").strip() == "1450"
        assert fdb_dsts(tinc_lab["mcm-b1"]) == ["172.30.0.11", "172.30.0.12"]
        ping(tinc_lab["mcm-b1"], OVERLAY_IP["mcm-a1"])
        ping(tinc_lab["mcm-a2"], OVERLAY_IP["mcm-b1"])

    def test_switching_tinc_on_encrypts_flows_already_learned(self, tinc_lab):
        a2, b1 = tinc_lab["mcm-a2"], tinc_lab["mcm-b1"]
        ping(a2, OVERLAY_IP["mcm-b1"])
        # plain mesh: mcm-a2's VXLAN device learned mcm-b1's MAC behind its WAN address
        assert "172.30.0.21" in learned_dsts(a2), learned_dsts(a2)
        play("build_overlay.yml", *TINC)  # built again, with new keys
        for host in tinc_lab.values():
            assert len(tincd_pids(host)) == 1
        assert not [d for d in learned_dsts(a2) if d.startswith("172.30.0.")], learned_dsts(a2)
        wan = Capture(b1, "eth1")
        ping(a2, OVERLAY_IP["mcm-b1"], f"-p {PATTERN_HEX}", count=5)
        ping(b1, OVERLAY_IP["mcm-a2"], f"-p {PATTERN_HEX}", count=5)
        on_wan = wan.stop()
        print(f"mcm-b1 eth1 (WAN) after switching tinc on: {on_wan}")
        assert on_wan["tinc"] >= 20 and on_wan[PORT] == 0 and on_wan["pattern"] == 0, on_wan

    def test_state_absent_leaves_no_tincd_interface_or_file(self, tinc_lab):
        started = time.monotonic()
        result = play("build_overlay.yml", *TINC, "-e", "overlay_state=absent")
        print(f"build_overlay with tinc, teardown: {time.monotonic() - started:.1f} s")
        for name, host in tinc_lab.items():
            assert "Stop tincd" in result[name]["changed"]
            assert_no_tinc(host)
            for link in ("xenbr0", "vxo-5000"):
                assert not host.file(f"/sys/class/net/{link}").exists, link
        again = play("build_overlay.yml", *TINC, "-e", "overlay_state=absent")
        assert {h: r["changed"] for h, r in again.items()} == {h: [] for h in ALL_HOSTS}
