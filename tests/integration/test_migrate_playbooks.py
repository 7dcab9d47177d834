"""migrate_instance.yml and migrate_subnet.yml on the lab, with the ledger and the placement
record in a temporary state directory.

Tenant mgp: web 10.31.1.0/24 (w1 10.31.1.10) and db 10.31.2.0/24, both on cloud_a. The
module fixture creates it with create_infra.yml and removes it with delete_infra.yml
(also after a failure); the ping client namespace mgp-ping on mcm-a2 is removed too.
"""

from __future__ import annotations

import json

import pytest

from conftest import console
from migration_lab import changed, ledger, playbook, tenant_env
from migration_lab import placement as read_placement
from migration_lab import where as domain_states

pytestmark = pytest.mark.lab

SPEC = {
    "tenants": [
        {
            "name": "mgp",
            "networks": [
                {
                    "name": "web",
                    "cloud": "cloud_a",
                    "subnet": "10.31.1.0/24",
                    "vms": [
                        {
                            "name": "w1",
                            "vcpus": 1,
                            "memory": "128MiB",
                            "disk": "64MiB",
                            "ip": "10.31.1.10",
                        }
                    ],
                },
                {"name": "db", "cloud": "cloud_a", "subnet": "10.31.2.0/24"},
            ],
        }
    ]
}
DOMAIN, IP = "mgp-w1", "10.31.1.10"
PING_NS = "mgp-ping"


@pytest.fixture(scope="module")
def env(hosts, tmp_path_factory):
    try:
        with tenant_env(tmp_path_factory.mktemp("mgp"), SPEC, "mgp", hosts) as env:
            yield env
    finally:
        hosts["mcm-a2"].run("ip netns del %s", PING_NS)


def where(hosts) -> dict[str, str]:
    return domain_states(hosts, DOMAIN)


def pings_from(host, namespace: str, ip: str) -> bool:
    return host.run("ip netns exec %s ping -c 3 -i 0.3 -W 1 %s", namespace, ip).rc == 0


def test_check_mode_plans_and_changes_nothing(env, hosts):
    before = where(hosts)
    rc, data = playbook(env, "migrate_instance.yml", "-e", "instance=w1", "-e", "to=cloud_b",
                        "--check")  # fmt: skip
    assert rc == 0
    text = json.dumps(data)
    assert "mgp/w1 (mgp-w1, 10.31.1.10" in text and "-> mcm-b1 (cloud_b)" in text
    assert where(hosts) == before == {"mcm-a1": "running"}
    assert ledger(env) == []


def test_instance_live_block_keeps_ip_and_mac_and_stays_put(env, hosts):
    mac = hosts["mcm-a1"].run("virsh domiflist %s", DOMAIN).stdout.split()[-1]
    [out] = console("mcm-a1", DOMAIN, f"echo {DOMAIN}-marker > /mnt/disk/marker && sync")
    assert out["rc"] == 0, out
    rc, data = playbook(env, "migrate_instance.yml", "-e", "instance=w1", "-e", "to=cloud_b",
                        "-e", "mode=live-block")  # fmt: skip
    assert rc == 0, json.dumps(data)[-3000:]
    assert where(hosts) == {"mcm-b1": "running"}
    assert hosts["mcm-b1"].run("virsh domiflist %s", DOMAIN).stdout.split()[-1] == mac
    [out] = console("mcm-b1", DOMAIN, "cat /mnt/disk/marker")
    assert out["out"] == f"{DOMAIN}-marker", "the disk was mirrored with what the guest wrote"
    # the same IP answers from its DHCP namespace in cloud_a (network stretched over the WAN)
    assert pings_from(hosts["mcm-a1"], "qdhcp-mgp.web", IP)
    [row] = ledger(env)
    assert row["status"] == "completed" and row["kind"] == "instance"
    assert row["source"] == "mcm-a1" and row["destination"] == "mcm-b1"
    assert row["bytes"] > 0 and row["downtime_ms"] is not None and row["ended"]
    assert row["results"][0]["status"] == "moved"
    # the source disk is gone; a second create_infra moves nothing back
    assert hosts["mcm-a1"].run("test -e /var/lib/mcm/vms/%s.qcow2", DOMAIN).rc != 0
    rc, again = playbook(env, "create_infra.yml")
    assert rc == 0 and changed(again) == 0
    assert where(hosts) == {"mcm-b1": "running"}
    placement = read_placement(env)
    assert placement["vms"] == {"mgp/w1": "mcm-b1"}


def test_subnet_moves_dhcp_and_gateway_and_leaves_nothing_on_cloud_a(env, hosts):
    rc, data = playbook(env, "migrate_subnet.yml", "-e", "subnet=10.31.1.0/24", "-e", "to=cloud_b")
    assert rc == 0, json.dumps(data)[-3000:]
    row = ledger(env)[-1]
    assert row["status"] == "completed" and row["object"] == "mgp/web"
    b1 = hosts["mcm-b1"]
    assert "qdhcp-mgp.web" in b1.run("ip netns list").stdout
    assert "52:54:00" in b1.run("cat /var/lib/mcm/dhcp/qdhcp-mgp.web/leases").stdout
    for name in ("mcm-a1", "mcm-a2"):
        out = hosts[name].run("ip -d link show").stdout + hosts[name].run("ip netns list").stdout
        assert "mcm:mgp/web" not in out and "qdhcp-mgp.web" not in out, name
    # db (cloud_a) reaches web (cloud_b) through the tenant's transit between its routers
    a2 = hosts["mcm-a2"]
    db_bridge = next(line.split(":")[1].strip().split("@")[0]
                     for line in hosts["mcm-a1"].run("ip -o -d link show type bridge").stdout
                     .splitlines() if "mcm:mgp/db" in line)  # fmt: skip
    for cmd in (f"ip netns add {PING_NS}",
                f"ip link add mgp-p0 type veth peer name mgp-p1 netns {PING_NS}",
                f"ip link set mgp-p0 master {db_bridge} mtu 1450 up",
                f"ip -n {PING_NS} link set mgp-p1 mtu 1450 up",
                f"ip -n {PING_NS} addr add 10.31.2.50/24 dev mgp-p1",
                f"ip -n {PING_NS} route add default via 10.31.2.1"):  # fmt: skip
        assert a2.run(cmd).rc == 0, cmd
    assert pings_from(a2, PING_NS, IP)
    rc, again = playbook(env, "create_infra.yml")
    assert rc == 0 and changed(again) == 0
    rc, listed = playbook(env, "migrations.yml")
    assert rc == 0 and "mgp/web" in json.dumps(listed)
