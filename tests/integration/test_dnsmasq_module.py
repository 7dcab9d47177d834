"""multicloud.migration.dnsmasq on the lab: a real dnsmasq in a namespace, real DHCP and DNS.

On mcm-a2: a bridge ``dmtest-br`` with two veth legs, one into the DHCP namespace
``qdhcp-dmtest-net`` (10.77.0.254/24, where dnsmasq listens) and one into a client
namespace ``dmtest-cli``. The node has no DHCP client and no dig, so a small Python tool
(TOOL below, copied into the node) speaks DHCP (DISCOVER/OFFER/REQUEST/ACK over a UDP
socket bound to the client leg) and DNS (one A query over UDP).

The tests run in file order and share the set-up of the ``net`` fixture, which removes
everything the tests created, even when they fail.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest

from conftest import ansible_json

pytestmark = pytest.mark.lab

NODE = "mcm-a2"
NS = "qdhcp-dmtest-net"
CLI_NS = "dmtest-cli"
BRIDGE = "dmtest-br"
LEG = "dmtest-l1"  # inside NS
CLI_LEG = "dmtest-c1"  # inside CLI_NS
SERVER = "10.77.0.254"
STATE_DIR = "/var/lib/mcm/dhcp/dmtest-net"
TOOL_PATH = "/tmp/dmtest_tool.py"
DOMAIN = "dmtest.lab"
RESERVED = {"mac": "52:54:00:77:00:10", "ip": "10.77.0.10", "name": "vm10"}
ADDED = {"mac": "52:54:00:77:00:11", "ip": "10.77.0.11", "name": "vm11"}
DYNAMIC_MAC = "52:54:00:77:00:99"

INSTANCE = {
    "name": "dmtest-net",
    "namespace": NS,
    "interface": LEG,
    "server": SERVER,
    "subnet": "10.77.0.0/24",
    "range": ["10.77.0.100", "10.77.0.200"],
    "gateway": "10.77.0.1",
    "domain": DOMAIN,
    "hosts": [RESERVED],
}

PLAYBOOK = """\
- name: dnsmasq module test
  hosts: mcm-a2
  gather_facts: false
  tasks:
    - name: Converge the test's dnsmasq instances
      multicloud.migration.dnsmasq:
        state: "{{ dm_state }}"
        scope: dmtest
        config: "{{ dm_config }}"
"""

TOOL = r'''
"""DHCP client (one DISCOVER/OFFER/REQUEST/ACK) and DNS A query, stdlib only."""
import json
import random
import socket
import struct
import sys
import time

COOKIE = b"\x63\x82\x53\x63"


def options(data):
    result, i = {}, 0
    while i < len(data) and data[i] != 255:
        if data[i] == 0:
            i += 1
            continue
        code, size = data[i], data[i + 1]
        result[code] = data[i + 2 : i + 2 + size]
        i += 2 + size
    return result


def dhcp(iface, mac, hostname, timeout=5.0):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
    sock.bind(("0.0.0.0", 68))
    xid = random.getrandbits(32)
    chaddr = bytes.fromhex(mac.replace(":", ""))

    def send(msgtype, extra=b""):
        head = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000,
                           bytes(4), bytes(4), bytes(4), bytes(4), chaddr, b"", b"")
        name = hostname.encode()
        opts = bytes([53, 1, msgtype, 55, 7, 1, 3, 6, 15, 26, 51, 54])
        opts += bytes([12, len(name)]) + name + extra + b"\xff"
        sock.sendto(head + COOKIE + opts, ("255.255.255.255", 67))

    def receive(wanted):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = sock.recv(4096)
            except socket.timeout:
                break
            if len(data) < 240 or struct.unpack("!I", data[4:8])[0] != xid:
                continue
            opts = options(data[240:])
            if opts.get(53, b"\x00")[0] in (wanted, 6):  # 6: NAK
                return data, opts
        raise SystemExit(json.dumps({"error": f"no DHCP reply of type {wanted}"}))

    started = time.monotonic()
    send(1)
    offer, opts = receive(2)
    send(3, bytes([50, 4]) + offer[16:20] + bytes([54, 4]) + opts[54])
    ack, opts = receive(5)
    if opts[53][0] != 5:
        raise SystemExit(json.dumps({"error": "NAK", "message": opts.get(56, b"").decode()}))
    ip4 = lambda raw: [socket.inet_ntoa(raw[i : i + 4]) for i in range(0, len(raw), 4)]
    return {
        "ip": socket.inet_ntoa(ack[16:20]),
        "server": ip4(opts[54])[0],
        "netmask": ip4(opts[1])[0] if 1 in opts else None,
        "router": ip4(opts[3]) if 3 in opts else [],
        "dns": ip4(opts[6]) if 6 in opts else [],
        "domain": opts[15].decode() if 15 in opts else None,
        "mtu": struct.unpack("!H", opts[26])[0] if 26 in opts else None,
        "lease": struct.unpack("!I", opts[51])[0] if 51 in opts else None,
        "seconds": time.monotonic() - started,
    }


def dns(server, name, timeout=2.0):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    ident = random.getrandbits(16)
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"
    query = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)
    sock.sendto(query, (server, 53))
    try:
        data = sock.recv(4096)
    except socket.timeout:
        return {"timeout": True}
    flags, qdcount, ancount = struct.unpack("!HHH", data[2:8])
    i = 12
    for _ in range(qdcount):
        while data[i]:
            i += 1 + data[i]
        i += 5
    answers = []
    for _ in range(ancount):
        i += 2 if data[i] & 0xC0 == 0xC0 else len(qname)
        rtype, _cls, _ttl, size = struct.unpack("!HHIH", data[i : i + 10])
        i += 10
        if rtype == 1:
            answers.append(socket.inet_ntoa(data[i : i + size]))
        i += size
    return {"timeout": False, "rcode": flags & 0xF, "answers": answers}


if __name__ == "__main__":
    if sys.argv[1] == "dhcp":
        print(json.dumps(dhcp(sys.argv[2], sys.argv[3], sys.argv[4])))
    else:
        print(json.dumps(dns(sys.argv[2], sys.argv[3])))
'''

SETUP = f"""
set -e
ip netns add {NS}
ip netns add {CLI_NS}
ip link add {BRIDGE} type bridge
ip link set {BRIDGE} up
ip link add dmtest-l0 type veth peer name {LEG} netns {NS}
ip link set dmtest-l0 master {BRIDGE} up
ip -n {NS} link set lo up
ip -n {NS} addr add {SERVER}/24 dev {LEG}
ip -n {NS} link set {LEG} up
ip link add dmtest-c0 type veth peer name {CLI_LEG} netns {CLI_NS}
ip link set dmtest-c0 master {BRIDGE} up
ip -n {CLI_NS} link set lo up
ip -n {CLI_NS} link set {CLI_LEG} up
"""

# Ends only the dnsmasq processes of this test (their command line names a dmtest state
# directory), by pid; then removes namespaces (their veth ends go with them), links and files.
TEARDOWN = f"""
for cmdline in /proc/[0-9]*/cmdline; do
  pid=${{cmdline#/proc/}}; pid=${{pid%/cmdline}}
  [ "$(cat /proc/$pid/comm 2>/dev/null)" = dnsmasq ] || continue  # not this shell: it matches too
  if tr '\\0' ' ' < "$cmdline" 2>/dev/null | grep -q -- '--conf-file=/var/lib/mcm/dhcp/dmtest'; then
    kill -9 "$pid" 2>/dev/null || true
  fi
done
ip netns del {NS} 2>/dev/null || true
ip netns del {CLI_NS} 2>/dev/null || true
ip link del dmtest-l0 2>/dev/null || true
ip link del dmtest-c0 2>/dev/null || true
ip link del dmtest-l2 2>/dev/null || true
ip link del {BRIDGE} 2>/dev/null || true
rm -rf /var/lib/mcm/dhcp/dmtest-* {TOOL_PATH}
"""


@pytest.fixture(scope="module")
def node(hosts):
    return hosts[NODE]


@pytest.fixture(scope="module")
def net(node):
    node.run(TEARDOWN)  # leftovers of an interrupted run
    try:
        node.check_output(SETUP)
        encoded = base64.b64encode(TOOL.encode()).decode()
        node.check_output(f"echo {encoded} | base64 -d > {TOOL_PATH}")
        yield node
    finally:
        node.run(TEARDOWN)


@pytest.fixture(scope="module")
def measured():
    values: dict[str, float] = {}
    yield values
    print("\ndnsmasq timings:", json.dumps(values))


def converge(
    tmp_path: Path, state: str, config: list[dict], *, check: bool = False
) -> tuple[int, dict, dict]:
    """Run the module through ansible-playbook: (return code, module result, stats)."""
    playbook = tmp_path / "dnsmasq.yml"
    playbook.write_text(PLAYBOOK)
    extra = tmp_path / "vars.json"
    extra.write_text(json.dumps({"dm_state": state, "dm_config": config}))
    argv = ["ansible-playbook", str(playbook), "-e", f"@{extra}", "--diff"]
    if check:
        argv.append("--check")
    proc, data = ansible_json(argv, timeout=120)
    result = data["plays"][0]["tasks"][0]["hosts"][NODE]
    return proc.returncode, result, data["stats"][NODE]


def actions(result: dict) -> list[str]:
    return [change["action"] for change in result["changes"]]


def dhcp(node, mac: str, hostname: str = "client") -> dict:
    out = node.check_output(
        f"ip netns exec {CLI_NS} python3 {TOOL_PATH} dhcp {CLI_LEG} {mac} {hostname}"
    )
    lease = json.loads(out)
    assert "error" not in lease, lease
    return lease


def dns(node, name: str) -> dict:
    # From the client namespace, with an address of its own (outside the range).
    node.run(f"ip -n {CLI_NS} addr replace 10.77.0.50/24 dev {CLI_LEG}")
    return json.loads(
        node.check_output(f"ip netns exec {CLI_NS} python3 {TOOL_PATH} dns {SERVER} {name}")
    )


def pid_of(node) -> int:
    return int(node.check_output(f"cat {STATE_DIR}/pid"))


def lease_file(node) -> list[tuple[str, str]]:
    text = node.check_output(f"cat {STATE_DIR}/leases")
    return sorted((line.split()[1], line.split()[2]) for line in text.splitlines())


def test_start_then_idempotent(net, tmp_path, measured):
    began = time.monotonic()
    rc, result, stats = converge(tmp_path, "merged", [INSTANCE])
    measured["first_run_wall"] = round(time.monotonic() - began, 3)
    assert rc == 0, result
    assert actions(result) == ["write", "start"]
    measured["start_seconds"] = result["changes"][1]["seconds"]
    assert stats["changed"] == 1
    pid = pid_of(net)
    assert result["changes"][1]["pid"] == pid
    # dnsmasq runs in the DHCP namespace, not in the node's root namespace
    assert net.check_output(f"ip netns identify {pid}") == NS
    assert not net.run("ss -lun | grep -q ':67 '").succeeded
    assert f"{SERVER}:53" in net.check_output(f"ip netns exec {NS} ss -lun")

    rc, result, stats = converge(tmp_path, "merged", [INSTANCE])
    assert rc == 0, result
    assert result["changed"] is False and result["changes"] == []
    assert stats["changed"] == 0
    assert pid_of(net) == pid


def test_dynamic_lease_with_mtu_and_router(net, measured):
    lease = dhcp(net, DYNAMIC_MAC, "cli1")
    measured["dhcp_exchange_seconds"] = round(lease["seconds"], 4)
    assert 100 <= int(lease["ip"].rsplit(".", 1)[1]) <= 200, lease
    assert lease["mtu"] == 1450
    assert lease["router"] == ["10.77.0.1"]
    assert lease["dns"] == [SERVER]
    assert lease["domain"] == DOMAIN
    assert lease["netmask"] == "255.255.255.0"
    assert lease["lease"] == 3600
    assert (DYNAMIC_MAC, lease["ip"]) in lease_file(net)
    # the client's name is registered in DNS
    assert dns(net, f"cli1.{DOMAIN}")["answers"] == [lease["ip"]]


def test_reserved_mac_gets_reserved_ip_and_name(net):
    lease = dhcp(net, RESERVED["mac"], "whatever")
    assert lease["ip"] == RESERVED["ip"]
    assert lease["mtu"] == 1450
    answer = dns(net, f"{RESERVED['name']}.{DOMAIN}")
    assert answer["rcode"] == 0 and answer["answers"] == [RESERVED["ip"]]


def test_outside_names_are_not_forwarded(net):
    answer = dns(net, "example.com")
    assert answer["timeout"] or answer["rcode"] in (3, 5), answer  # NXDOMAIN or REFUSED
    assert not answer.get("answers")
    # and there is nowhere to send it: no route out of the namespace, no upstream
    assert "default" not in net.check_output(f"ip -n {NS} route show")
    conf = net.check_output(f"cat {STATE_DIR}/dnsmasq.conf")
    assert "no-resolv" in conf.splitlines()
    assert not [line for line in conf.splitlines() if line.startswith("server=")]


def test_check_mode_reports_and_changes_nothing(net, tmp_path):
    before = net.check_output(f"cat {STATE_DIR}/dnsmasq.conf")
    pid = pid_of(net)
    rc, result, stats = converge(tmp_path, "merged", [{**INSTANCE, "mtu": 1300}], check=True)
    assert rc == 0, result
    assert actions(result) == ["write", "restart"]
    assert stats["changed"] == 1
    assert "option:mtu,1300" in result["diff"][0]["after"]
    assert net.check_output(f"cat {STATE_DIR}/dnsmasq.conf") == before
    assert pid_of(net) == pid


def test_added_reservation_reloads(net, tmp_path, measured):
    pid = pid_of(net)
    leases = lease_file(net)
    rc, result, _stats = converge(
        tmp_path, "merged", [{"name": INSTANCE["name"], "hosts": [ADDED]}]
    )
    assert rc == 0, result
    assert actions(result) == ["write", "reload"]
    assert result["changes"][0]["files"] == ["hosts", "addn_hosts"]
    measured["reload_seconds"] = result["changes"][1]["seconds"]
    assert pid_of(net) == pid
    assert lease_file(net) == leases
    # merged keeps the first reservation
    assert {h["mac"] for h in result["after"][0]["hosts"]} == {RESERVED["mac"], ADDED["mac"]}
    # the module waited until dnsmasq's log showed the reservations read again
    assert not result.get("warnings"), result["warnings"]
    assert dhcp(net, ADDED["mac"])["ip"] == ADDED["ip"]
    assert dns(net, f"{ADDED['name']}.{DOMAIN}")["answers"] == [ADDED["ip"]]


def test_mtu_change_restarts_and_keeps_leases(net, tmp_path, measured):
    pid = pid_of(net)
    leases = lease_file(net)
    assert len(leases) == 3
    config = {**INSTANCE, "mtu": 1400, "hosts": [RESERVED, ADDED]}
    rc, result, _stats = converge(tmp_path, "replaced", [config])
    assert rc == 0, result
    assert actions(result) == ["write", "restart"]
    assert result["changes"][0]["files"] == ["dnsmasq.conf"]
    measured["restart_seconds"] = result["changes"][1]["seconds"]
    new_pid = pid_of(net)
    assert new_pid != pid and result["changes"][1]["pid"] == new_pid
    assert lease_file(net) == leases
    # the dynamic client renews its address, now with the new MTU
    lease = dhcp(net, DYNAMIC_MAC, "cli1")
    assert lease["mtu"] == 1400
    assert (DYNAMIC_MAC, lease["ip"]) in leases
    rc, result, _stats = converge(tmp_path, "replaced", [config])
    assert rc == 0 and result["changes"] == []


def test_recreated_namespace_restarts(net, tmp_path):
    """The namespace is deleted and created again: dnsmasq must follow it, not linger."""
    pid = pid_of(net)
    old_leases = lease_file(net)
    net.check_output(f"""
set -e
ip netns del {NS}
ip netns add {NS}
ip link add dmtest-l2 type veth peer name {LEG} netns {NS}
ip link set dmtest-l2 master {BRIDGE} up
ip -n {NS} link set lo up
ip -n {NS} addr add {SERVER}/24 dev {LEG}
ip -n {NS} link set {LEG} up
""")
    config = {**INSTANCE, "mtu": 1400, "hosts": [RESERVED, ADDED]}
    rc, result, _stats = converge(tmp_path, "replaced", [config])
    assert rc == 0, result
    assert actions(result) == ["restart"]
    assert "re-created" in result["changes"][0]["reason"]
    new_pid = pid_of(net)
    assert new_pid != pid and net.check_output(f"ip netns identify {new_pid}") == NS
    assert not net.run(f"test -e /proc/{pid}").succeeded
    assert lease_file(net) == old_leases
    assert dhcp(net, RESERVED["mac"])["ip"] == RESERVED["ip"]


def test_gathered(net, tmp_path):
    rc, result, stats = converge(tmp_path, "gathered", [])
    assert rc == 0 and stats["changed"] == 0
    (gathered,) = result["gathered"]
    assert gathered["name"] == "dmtest-net" and gathered["running"] is True
    assert gathered["pid"] == pid_of(net)
    assert gathered["config"]["mtu"] == 1400
    assert {lease["mac"] for lease in gathered["leases"]} == {
        DYNAMIC_MAC,
        RESERVED["mac"],
        ADDED["mac"],
    }


def test_errors_name_the_instance_and_the_cause(net, tmp_path):
    rc, result, _stats = converge(
        tmp_path, "merged", [{**INSTANCE, "name": "dmtest-nons", "namespace": "dmtest-missing"}]
    )
    assert rc != 0 and result["failed"]
    assert "'dmtest-nons'" in result["msg"] and "does not exist" in result["msg"]

    rc, result, _stats = converge(
        tmp_path, "merged", [{**INSTANCE, "name": "dmtest-noif", "interface": "dmtest-zz"}]
    )
    assert rc != 0 and "interface 'dmtest-zz' does not exist" in result["msg"]

    # A second server on the same leg cannot bind the DHCP port: the log tail is reported.
    rc, result, _stats = converge(tmp_path, "merged", [{**INSTANCE, "name": "dmtest-dup"}])
    assert rc != 0 and "'dmtest-dup'" in result["msg"]
    assert "failed to start" in result["msg"] and "Address already in use" in result["msg"], result
    assert not net.run("test -d /var/lib/mcm/dhcp/dmtest-nons").succeeded


def test_overridden_removes_unlisted_instances_in_scope(net, tmp_path):
    # dmtest-dup (left by the failed start above) is in scope and not listed
    config = {**INSTANCE, "mtu": 1400, "hosts": [RESERVED, ADDED]}
    rc, result, _stats = converge(tmp_path, "overridden", [config])
    assert rc == 0, result
    assert [(c["instance"], c["action"]) for c in result["changes"]] == [("dmtest-dup", "remove")]
    assert not net.run("test -d /var/lib/mcm/dhcp/dmtest-dup").succeeded


def test_deleted_stops_and_removes(net, tmp_path):
    pid = pid_of(net)
    rc, result, stats = converge(tmp_path, "deleted", [{"name": "dmtest-net"}])
    assert rc == 0, result
    assert actions(result) == ["stop", "remove"]
    assert stats["changed"] == 1
    assert not net.run(f"test -e /proc/{pid}").succeeded
    assert not net.run(f"test -d {STATE_DIR}").succeeded
    rc, result, stats = converge(tmp_path, "deleted", [{"name": "dmtest-net"}])
    assert rc == 0 and stats["changed"] == 0
