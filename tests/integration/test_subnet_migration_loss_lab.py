"""Reachability during a subnet migration (issue 5, "Must show") on the lab.

Tenant pls: app 10.34.1.0/24 with p1 (10.34.1.10) and p2 (10.34.1.11) on cloud_a, and
cli 10.34.2.0/24 on cloud_a, whose segment holds the ping client: the namespace pls-ping
on mcm-a2 with a veth on cli's bridge (10.34.2.50, default route via the tenant router).
A placement record written before create_infra puts p1 on mcm-a1 (the network node: the
router and DHCP of app) and p2 on mcm-a2; the migration drops those pins.

While ``migrate_subnet.yml -e subnet=10.34.1.0/24 -e to=cloud_b`` runs, the client pings
each VM every 10 ms (iputils ping -D -O in the background, bounded by -c and -w). After
it, each VM may have lost at most the pings of its own live-migration downtime (libvirt's
downtime_ms in the ledger) plus NET_SLACK; nothing of app remains on cloud_a;
a DHCP renewal of p1 is answered by dnsmasq in qdhcp-pls.app on mcm-b1 (its lease file
moves on). The lost pings are matched with the playbook's task timeline (the json
callback's durations), which the failure message prints.

The module fixture removes the tenant (delete_infra.yml), the ping client and any ping
still running, also after a failure.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import yaml

from conftest import CONSOLE_DIR, ansible_json, console, run
from migration_lab import read_state, remove_state, state_args, state_dir, write_placement

pytestmark = pytest.mark.lab

TENANT = "pls"
SUBNET = "10.34.1.0/24"
VMS = {"p1": "10.34.1.10", "p2": "10.34.1.11"}
PINNED = {"p1": "mcm-a1", "p2": "mcm-a2"}
SPEC = {
    "tenants": [
        {
            "name": TENANT,
            "networks": [
                {
                    "name": "app",
                    "cloud": "cloud_a",
                    "subnet": SUBNET,
                    "vms": [
                        {"name": vm, "vcpus": 1, "memory": "128MiB", "disk": "64MiB", "ip": ip}
                        for vm, ip in VMS.items()
                    ],
                },
                {"name": "cli", "cloud": "cloud_a", "subnet": "10.34.2.0/24"},
            ],
        }
    ]
}
CLIENT_HOST, CLIENT_NS, CLIENT_IP = "mcm-a2", "pls-ping", "10.34.2.50"
CLIENT_LEGS = ("pls-pg0", "pls-pg1")
DHCP_NS = "qdhcp-pls.app"
LEASES = f"/var/lib/mcm/dhcp/{DHCP_NS}/leases"
# A ping every 10 ms; every ping process is bounded in count and time.
INTERVAL = 0.01
PING_COUNT, PING_DEADLINE = 60000, 600
# What a VM may lose: the pings sent during its live migration's own pause (libvirt's
# downtime_ms: 41-132 ms under TCG with TLS on 2 shared cores with the lab's QEMU 10,
# 50-700 ms with QEMU 7.2, docs/migration.md; what qemu and the CPU decide,
# benchmarked in bench/migration_downtime.py) plus NET_SLACK
# for what this collection decides: the destination's announcement reaching the other
# carriers and the gateway changing router. The fresh-clone CI once lost 21 pings in a
# 0.45 s pause, over the fixed bound of 20 this test had then.
NET_SLACK = 10
PING_RE = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from [\d.]+: icmp_seq=(\d+) ")
SUMMARY_RE = re.compile(r"(\d+) packets transmitted, (\d+) received")


def ping_files(vm: str) -> tuple[str, str]:
    return f"/tmp/pls-ping-{vm}.out", f"/tmp/pls-ping-{vm}.pid"


def stop_pings(host: Any) -> None:
    """SIGINT (ping prints its summary) to every ping this test started, then wait."""
    for vm in VMS:
        _out, pidfile = ping_files(vm)
        host.run("test -s %s && kill -INT $(cat %s)", pidfile, pidfile)
    for _attempt in range(50):
        alive = [vm for vm in VMS if host.run("kill -0 $(cat %s)", ping_files(vm)[1]).rc == 0]
        if not alive:
            return
        time.sleep(0.2)
    for vm in VMS:
        host.run("kill -KILL $(cat %s)", ping_files(vm)[1])


@pytest.fixture(scope="module")
def env(hosts, tmp_path_factory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("pls")
    spec = tmp / "spec.yml"
    spec.write_text(yaml.safe_dump(SPEC))
    state = state_dir(tmp)
    pins = {f"{TENANT}/{vm}": host for vm, host in PINNED.items()}
    write_placement(state, {"networks": {}, "vms": pins})
    extra = ["-e", f"spec_file={spec}", *state_args(state)]
    client = hosts[CLIENT_HOST]
    try:
        made = run(["ansible-playbook", "playbooks/create_infra.yml", *extra])
        assert made.returncode == 0, made.stdout[-3000:]
        yield {"extra": extra, "state": state}
    finally:
        stop_pings(client)
        for vm in VMS:
            client.run("rm -f %s %s", *ping_files(vm))
        client.run("ip link del %s", CLIENT_LEGS[0])
        client.run("ip netns del %s", CLIENT_NS)
        gone = run(["ansible-playbook", "playbooks/delete_infra.yml", "-e", f"tenant={TENANT}"])
        remove_state(state)
        assert gone.returncode == 0, gone.stdout[-3000:]


def bridge_of(host: Any, network: str, kind: str = "bridge") -> str:
    """The name of a network's bridge (or VXLAN device) on a host, by its owner tag."""
    for line in host.run("ip -o -d link show type %s", kind).stdout.splitlines():
        if f"mcm:{TENANT}/{network}" in line:
            return line.split(":")[1].strip().split("@")[0]
    raise AssertionError(f"no {kind} of {TENANT}/{network} on {host}")


def add_client(host: Any) -> None:
    bridge = bridge_of(host, "cli")
    outer, inner = CLIENT_LEGS
    for cmd in (f"ip netns add {CLIENT_NS}",
                f"ip link add {outer} type veth peer name {inner} netns {CLIENT_NS}",
                f"ip link set {outer} master {bridge} mtu 1450 up",
                f"ip -n {CLIENT_NS} link set {inner} mtu 1450 up",
                f"ip -n {CLIENT_NS} addr add {CLIENT_IP}/24 dev {inner}",
                f"ip -n {CLIENT_NS} route add default via 10.34.2.1"):  # fmt: skip
        assert host.run(cmd).rc == 0, cmd


def answers(host: Any, ip: str) -> bool:
    """Bounded: up to 20 rounds of 3 pings."""
    for _attempt in range(20):
        if host.run("ip netns exec %s ping -n -c 3 -i 0.3 -W 1 %s", CLIENT_NS, ip).rc == 0:
            return True
        time.sleep(1)
    return False


def start_ping(host: Any, vm: str) -> None:
    out, pidfile = ping_files(vm)
    script = (f"ping -D -O -n -i {INTERVAL} -c {PING_COUNT} -w {PING_DEADLINE} {VMS[vm]} "
              f">{out} 2>&1 </dev/null & echo $! >{pidfile}")  # fmt: skip
    assert host.run("ip netns exec %s sh -c %s", CLIENT_NS, script).rc == 0
    assert host.run("kill -0 $(cat %s)", pidfile).rc == 0, f"ping of {vm} did not start"


def parse_ping(text: str) -> dict[str, Any]:
    """Replies by sequence number (epoch time), the summary, and the runs of lost pings
    between the first and the last reply: [(first seq, last seq, time before, time after)].
    Pings after the last reply count as lost too, but one (in flight when ping stopped)."""
    replies: dict[int, float] = {}
    for line in text.splitlines():
        match = PING_RE.match(line)
        if match:
            replies.setdefault(int(match.group(2)), float(match.group(1)))
    summary = SUMMARY_RE.search(text)
    assert summary and replies, f"no ping summary or replies:\n{text[-2000:]}"
    seqs = sorted(replies)
    runs = []
    for before, after in itertools.pairwise(seqs):
        if after - before > 1:
            runs.append((before + 1, after - 1, replies[before], replies[after]))
    # lost before the first reply, between replies, and after the last one (but the ping
    # that may have been in flight when SIGINT stopped ping)
    before, after = seqs[0] - 1, max(0, int(summary.group(1)) - seqs[-1] - 1)
    between = sum(last - first + 1 for first, last, _b, _a in runs)
    return {
        "transmitted": int(summary.group(1)),
        "received": int(summary.group(2)),
        "first": seqs[0],
        "last": seqs[-1],
        "lost": before + between + after,
        "runs": runs,
    }


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def timeline(data: dict) -> list[tuple[float, float, str]]:
    """(start, end, 'play / task') of every task of a json-callback run."""
    steps = []
    for play in data.get("plays", []):
        for task in play.get("tasks", []):
            duration = task["task"].get("duration") or {}
            if duration.get("start") and duration.get("end"):
                name = f"{play['play']['name']} / {task['task']['name']}"
                steps.append((_epoch(duration["start"]), _epoch(duration["end"]), name))
    return steps


def failures(data: dict) -> list[str]:
    """'play / task host: message' of every failed task of a json-callback run."""
    out = []
    for play in data.get("plays", []):
        for task in play.get("tasks", []):
            for host, res in task.get("hosts", {}).items():
                if res.get("failed") and not res.get("ignore_errors"):
                    msg = res.get("msg") or [r.get("msg") for r in res.get("results", [])
                                             if r.get("failed")]  # fmt: skip
                    out.append(f"{play['play']['name']} / {task['task']['name']} {host}: {msg}")
    return out


def explain(result: dict[str, Any], steps: list[tuple[float, float, str]]) -> list[str]:
    """Each run of lost pings with its duration and the tasks running meanwhile."""
    lines = []
    for first, last, before, after in result["runs"]:
        during = [name for start, end, name in steps if start <= after and end >= before]
        lines.append(f"  seq {first}-{last} ({last - first + 1} lost, {after - before:.2f} s, "
                     f"{time.strftime('%H:%M:%S', time.gmtime(before))}): "
                     f"{'; '.join(during) or 'between tasks'}")  # fmt: skip
    return lines


def loss_bound(downtime_ms: int) -> int:
    """Pings a VM may lose: its pause at one ping per INTERVAL, plus NET_SLACK."""
    return -(-downtime_ms // round(INTERVAL * 1000)) + NET_SLACK


def lease_expiry(host: Any, ip: str) -> int | None:
    for line in host.run("cat %s", LEASES).stdout.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == ip:
            return int(fields[0])
    return None


def test_subnet_moves_losing_at_most_a_few_pings_per_vm(env, hosts):
    a1, a2, b1 = hosts["mcm-a1"], hosts["mcm-a2"], hosts["mcm-b1"]
    client = hosts[CLIENT_HOST]
    for vm, host in PINNED.items():
        assert hosts[host].run("virsh domstate %s-%s", TENANT, vm).stdout.strip() == "running"
    app_bridge, app_vxlan = bridge_of(a1, "app"), bridge_of(a1, "app", "vxlan")
    add_client(client)
    for vm, ip in VMS.items():
        assert answers(client, ip), f"{vm} ({ip}) does not answer before the migration"

    logs = {vm: f"{CONSOLE_DIR}/{TENANT}-{vm}.log" for vm in VMS}
    log_start = {vm: int(b1.run("stat -c %%s %s || echo 0", logs[vm]).stdout.split()[-1])
                 for vm in VMS}  # fmt: skip
    for vm in VMS:
        start_ping(client, vm)
    started = time.monotonic()
    proc, data = ansible_json(["ansible-playbook", "playbooks/migrate_subnet.yml", *env["extra"],
                               "-e", f"subnet={SUBNET}", "-e", "to=cloud_b"])  # fmt: skip
    took = time.monotonic() - started
    time.sleep(1)  # the last replies
    still = {vm: client.run("kill -0 $(cat %s)", ping_files(vm)[1]).rc == 0 for vm in VMS}
    stop_pings(client)
    steps = timeline(data)
    results = {vm: parse_ping(client.file(ping_files(vm)[0]).content_string) for vm in VMS}
    rows = read_state(env["state"])["rows"]
    row = rows[-1] if rows else {}
    downtime = {r["vm"].split("/")[-1]: r.get("downtime_ms") for r in row.get("results", [])}
    resets = {r["vm"].split("/")[-1]: r.get("guest_resets") for r in row.get("results", [])}
    # what each guest's console printed on mcm-b1 since the migration began
    since = {vm: b1.run("tail -c +%s %s", str(log_start[vm] + 1), logs[vm]).stdout for vm in VMS}
    panics = {vm: [line for line in since[vm].splitlines()
                   if re.search(r"Kernel panic|Oops|BUG:", line)] for vm in VMS}  # fmt: skip
    report = [f"migrate_subnet.yml took {took:.1f} s"]
    for vm, res in results.items():
        report.append(f"{vm} ({VMS[vm]}, from {PINNED[vm]}): {res['lost']} lost of "
                      f"{res['transmitted']} (replies {res['received']}); libvirt downtime "
                      f"{downtime.get(vm)} ms; guest resets {resets.get(vm)}")  # fmt: skip
        report.extend(explain(res, steps))
        report.extend(f"  console: {line}" for line in panics[vm][:4])
    print("\n".join(report))
    assert proc.returncode == 0, "\n".join(report + failures(data))[-4000:]
    assert all(still.values()), f"a ping ended before the migration did: {still}"
    assert row.get("status") == "completed" and row["object"] == f"{TENANT}/app", row
    crashed = sorted(vm for vm in VMS if resets.get(vm))
    for vm, res in results.items():
        assert isinstance(downtime.get(vm), int), f"{vm}: no downtime in the ledger: {row}"
        assert res["first"] == 1, f"{vm}: no reply to the first pings\n" + "\n".join(report)
        # a guest whose kernel died on the destination must have been reported as reset
        assert not panics[vm] or vm in crashed, f"{vm} not reported as reset\n" + "\n".join(report)
        if vm not in crashed:
            assert res["lost"] <= loss_bound(downtime[vm]), "\n".join(report)
    if crashed:
        assert row["error"] and all(f"{TENANT}/{vm}" in row["error"] for vm in crashed), row
    # The lab's QEMU (>= 9.0, lab/node/backports.txt) keeps every write of a TCG guest during
    # the memory copy; with Debian 12's 7.2 about 3% of moves under this load crashed the
    # guest on its destination (docs/migration.md). A reset is a failure again.
    why = f"guest(s) {crashed} reset on the destination: {row['error']}"
    assert not crashed, "\n".join([why, *report])

    # nothing of the subnet remains on cloud_a; its domains run on mcm-b1
    for name, host in (("mcm-a1", a1), ("mcm-a2", a2)):
        links = host.run("ip -d link show").stdout
        assert f"mcm:{TENANT}/app" not in links, name
        assert app_bridge not in links and app_vxlan not in links, name
        assert DHCP_NS not in host.run("ip netns list").stdout, name
        assert host.run("test -e /var/lib/mcm/dhcp/%s", DHCP_NS).rc != 0, name
        assert DHCP_NS not in host.run("ps -eo args").stdout, name
        assert "10.34.1.1/" not in host.run("ip -n qrouter-%s -4 addr", TENANT).stdout, name
        domains = host.run("virsh list --all --name").stdout.split()
        assert not [d for d in domains if d.startswith(f"{TENANT}-p")], (name, domains)
        for vm in VMS:
            assert host.run("test -e /var/lib/mcm/vms/%s-%s.qcow2", TENANT, vm).rc != 0, name
    for vm, ip in VMS.items():
        assert b1.run("virsh domstate %s-%s", TENANT, vm).stdout.strip() == "running"
        assert answers(client, ip), f"{vm} does not answer after the migration"

    # a DHCP renewal from cloud_b: p1's udhcpc renews, dnsmasq on mcm-b1 answers it
    assert DHCP_NS in b1.run("ip netns list").stdout
    before = lease_expiry(b1, VMS["p1"])
    assert before is not None, b1.run("cat %s", LEASES).stdout
    time.sleep(1.5)  # the lease's expiry has a resolution of 1 s
    [sent] = console("mcm-b1", f"{TENANT}-p1", "kill -USR1 $(pidof udhcpc)")
    assert sent["rc"] == 0, sent
    renewed = None
    for _attempt in range(30):
        renewed = lease_expiry(b1, VMS["p1"])
        if renewed is not None and renewed > before:
            break
        time.sleep(1)
    log = console("mcm-b1", f"{TENANT}-p1", "tail -n 5 /var/log/udhcpc.log")[0]["out"]
    assert renewed is not None and renewed > before, (before, renewed, log)
    assert f"lease of {VMS['p1']} obtained" in log, log


def test_loss_bound_counts_the_pause_in_pings():
    """The bound on canned downtimes (needs no lab)."""
    assert [loss_bound(ms) for ms in (0, 1, 10, 95, 450)] == [10, 11, 11, 20, 55]


def test_ping_parser_counts_runs():
    """The parser on a canned output (needs no lab)."""
    text = "\n".join([
        "[1.00] 64 bytes from 10.0.0.1: icmp_seq=1 ttl=63 time=0.5 ms",
        "[1.01] 64 bytes from 10.0.0.1: icmp_seq=2 ttl=63 time=0.5 ms",
        "[1.05] no answer yet for icmp_seq=3",
        "[1.06] 64 bytes from 10.0.0.1: icmp_seq=6 ttl=63 time=0.5 ms",
        "[1.07] 64 bytes from 10.0.0.1: icmp_seq=6 ttl=63 time=0.5 ms (DUP!)",
        "[1.08] 64 bytes from 10.0.0.1: icmp_seq=7 ttl=63 time=0.5 ms",
        "--- 10.0.0.1 ping statistics ---",
        "8 packets transmitted, 5 received, +1 duplicates, 37.5% packet loss, time 70ms",
    ])  # fmt: skip
    res = parse_ping(text)
    assert res["lost"] == 3 and res["runs"] == [(3, 5, 1.01, 1.06)]
    assert (res["transmitted"], res["received"], res["first"], res["last"]) == (8, 5, 1, 7)
    # a VM that stops answering: the pings after its last reply are lost too
    res = parse_ping(text.replace("8 packets transmitted", "11 packets transmitted"))
    assert res["lost"] == 3 + 11 - 7 - 1
