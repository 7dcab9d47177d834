"""Security groups and floating addresses on the lab (issue 9), with real traffic.

Tenant sgt on cloud_a: client 10.40.1.0/24 (no VMs) and web 10.40.2.0/24 with one VM,
s1 10.40.2.10, floating address 10.40.100.10 (tenant floating range 10.40.100.0/24). web's
security group: tcp/8080 from 10.40.1.32/27, icmp from 10.40.1.0/24, the rest dropped.
In s1 two busybox nc listeners answer on tcp/8080 and tcp/9090 with their port.

Two client namespaces on mcm-a1 (cloud_a's network node) stand in for VMs of the client
network: sgt-c40 (10.40.1.40, inside the /27) and sgt-c70 (10.40.1.70, outside), each
a veth on the client network's bridge with the network's gateway as default route. They
connect to s1's fixed and floating addresses through the tenant router qrouter-sgt,
before and after s1 moves to cloud_b (migrate_instance.yml, live-block).

The module fixture creates the tenant with create_infra.yml and removes it with
delete_infra.yml, also after a failure; the client namespaces are removed too.
"""

from __future__ import annotations

import json

import pytest

from conftest import console
from migration_lab import changed, ledger, playbook, tenant_env
from migration_lab import where as domain_states

pytestmark = pytest.mark.lab

TENANT = "sgt"
VM = {"name": "s1", "vcpus": 1, "memory": "128MiB", "disk": "64MiB", "ip": "10.40.2.10",
      "floating_ip": "10.40.100.10"}  # fmt: skip
SPEC = {
    "tenants": [
        {
            "name": TENANT,
            "floating_range": "10.40.100.0/24",
            "networks": [
                {"name": "client", "cloud": "cloud_a", "subnet": "10.40.1.0/24"},
                {
                    "name": "web",
                    "cloud": "cloud_a",
                    "subnet": "10.40.2.0/24",
                    "security_group": {
                        "default": "drop",
                        "ingress": [
                            {"proto": "tcp", "ports": 8080, "from": "10.40.1.32/27"},
                            {"proto": "icmp", "from": "10.40.1.0/24"},
                        ],
                    },
                    "vms": [VM],
                },
            ],
        }
    ]
}
DOMAIN, FIXED, FLOATING = "sgt-s1", "10.40.2.10", "10.40.100.10"
ROUTER, TABLE = "qrouter-sgt", "mcm-sgt"
CLIENT_HOST = "mcm-a1"
# namespace -> (address, veth name prefix)
CLIENTS = {"sgt-c40": ("10.40.1.40", "sgtc40"), "sgt-c70": ("10.40.1.70", "sgtc70")}
# in braces: the console runs "echo BEGIN; CMD; echo END", where "CMD &;" would not parse
LISTENERS = tuple(
    f"{{ (while :; do nc -l -p {port} -e /bin/echo open{port}; done) "
    "</dev/null >/dev/null 2>&1 & }"
    for port in (8080, 9090)
)
LISTENING = ":1F90 ", ":2382 "  # 8080 and 9090 in /proc/net/tcp6 (nc listens on ::)


def client_bridge(hosts) -> str:
    """The client network's bridge on mcm-a1 (brq-<vni>, found by its owner tag)."""
    out = hosts[CLIENT_HOST].run("ip -o link show type bridge").stdout
    for line in out.splitlines():
        if "alias mcm:sgt/client" in line:
            return line.split(":")[1].strip().split("@")[0]
    # ip -o puts the alias on the same line only in newer versions: ask each bridge
    for line in out.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        alias = hosts[CLIENT_HOST].run("cat /sys/class/net/%s/ifalias", name).stdout.strip()
        if alias == "mcm:sgt/client":
            return name
    raise AssertionError(f"no bridge of sgt/client on {CLIENT_HOST}:\n{out}")


def remove_clients(host) -> None:
    for ns, (_ip, veth) in CLIENTS.items():
        host.run("ip netns del %s", ns)
        host.run("ip link del %sa", veth)


def add_clients(hosts) -> None:
    host = hosts[CLIENT_HOST]
    bridge = client_bridge(hosts)
    remove_clients(host)
    for ns, (ip, veth) in CLIENTS.items():
        script = f"""set -e
ip netns add {ns}
ip link add {veth}a mtu 1450 type veth peer name {veth}b netns {ns}
ip link set {veth}a master {bridge} up
ip -n {ns} link set lo up
ip -n {ns} link set {veth}b up
ip -n {ns} addr add {ip}/24 dev {veth}b
ip -n {ns} route add default via 10.40.1.1
"""
        result = host.run("sh -c %s", script)
        assert result.rc == 0, result.stderr


@pytest.fixture(scope="module")
def env(hosts, tmp_path_factory):
    try:
        with tenant_env(tmp_path_factory.mktemp(TENANT), SPEC, TENANT, hosts) as env:
            add_clients(hosts)
            yield env
    finally:
        remove_clients(hosts[CLIENT_HOST])


def tcp(hosts, client: str, address: str, port: int) -> str:
    """What a TCP connection from a client namespace reads ('' when it gets nowhere)."""
    result = hosts[CLIENT_HOST].run(
        "ip netns exec %s timeout 8 busybox nc -w 3 %s %s </dev/null", client, address, str(port)
    )
    return result.stdout.strip()


def pings(hosts, client: str, address: str) -> bool:
    cmd = "ip netns exec %s ping -c 3 -i 0.3 -W 1 %s"
    return hosts[CLIENT_HOST].run(cmd, client, address).rc == 0


def vm_host(hosts) -> str:
    states = domain_states(hosts, DOMAIN)
    running = [host for host, state in states.items() if state == "running"]
    assert len(running) == 1, states
    return running[0]


def start_listeners(hosts) -> None:
    host = vm_host(hosts)
    outs = console(host, DOMAIN, *LISTENERS, "sleep 1; cat /proc/net/tcp /proc/net/tcp6")
    listening = outs[-1]["out"]
    assert all(port in listening for port in LISTENING), outs


def table(hosts, host: str) -> str:
    result = hosts[host].run("ip netns exec %s nft list table inet %s", ROUTER, TABLE)
    return result.stdout if result.rc == 0 else ""


def expect_rules_hold(hosts, address: str) -> None:
    """The group allows exactly tcp/8080 from the /27 and icmp from the /24."""
    assert tcp(hosts, "sgt-c40", address, 8080) == "open8080"
    assert tcp(hosts, "sgt-c40", address, 9090) == ""  # not allowed: default drop
    assert tcp(hosts, "sgt-c70", address, 8080) == ""  # 8080, but from outside the /27
    assert pings(hosts, "sgt-c70", address)  # icmp from the whole client subnet


def test_table_in_the_router_and_create_infra_is_idempotent(env, hosts):
    text = table(hosts, "mcm-a1")
    assert "chain sg-web" in text and f"dnat ip to {FIXED}" in text, text
    assert "tcp dport 8080" in text and "ip saddr 10.40.1.32/27" in text, text
    assert table(hosts, "mcm-a2") == "" and table(hosts, "mcm-b1") == ""
    rc, data = playbook(env, "create_infra.yml")
    assert rc == 0 and changed(data) == 0, json.dumps(data)[-3000:]


def test_security_group_allows_and_blocks_exactly_what_it_says(env, hosts):
    start_listeners(hosts)
    # the server answers on both ports inside its own network (no router on the way)
    outs = console(vm_host(hosts), DOMAIN, "nc -w 3 127.0.0.1 9090 </dev/null")
    assert outs[0]["out"] == "open9090", outs
    expect_rules_hold(hosts, FIXED)
    counters = (
        hosts["mcm-a1"].run("ip netns exec %s nft list chain inet %s sg-web", ROUTER, TABLE).stdout
    )
    drops = [line for line in counters.splitlines() if line.strip().startswith("counter")]
    assert drops and " 0 bytes" not in drops[-1], counters  # the default drop counted


def test_floating_address_reaches_the_vm(env, hosts):
    assert pings(hosts, "sgt-c40", FLOATING)
    expect_rules_hold(hosts, FLOATING)  # the group applies behind the floating address


def test_floating_address_after_migration_to_cloud_b(env, hosts):
    rc, data = playbook(env, "migrate_instance.yml", "-e", "instance=s1", "-e", f"tenant={TENANT}",
                        "-e", "to=cloud_b", "-e", "mode=live-block")  # fmt: skip
    assert rc == 0, json.dumps(data)[-3000:]
    assert domain_states(hosts, DOMAIN) == {"mcm-b1": "running"}
    assert ledger(env)[-1]["status"] == "completed"
    # the listeners moved with the guest's memory; the router of the network (cloud_a)
    # still DNATs and filters, reaching the VM over the stretched segment
    assert pings(hosts, "sgt-c40", FLOATING)
    expect_rules_hold(hosts, FLOATING)
    expect_rules_hold(hosts, FIXED)
    rc, again = playbook(env, "create_infra.yml")
    assert rc == 0 and changed(again) == 0, json.dumps(again)[-3000:]


def test_delete_infra_removes_router_and_table(env, hosts):
    rc, data = playbook(env, "delete_infra.yml", "-e", f"tenant={TENANT}")
    assert rc == 0, json.dumps(data)[-3000:]
    for name, host in hosts.items():
        assert ROUTER not in host.run("ip netns list").stdout, name
        assert table(hosts, name) == ""
