"""migrate_instance.yml with mode live for a VM on shared storage (issue 5), on the lab.

Tenant shl: net 10.35.1.0/24 on cloud_a with s1 (10.35.1.10, ``storage: shared``, pinned
to mcm-a2), its disk in the pool mcm-shared at /var/lib/mcm/shared/vms - the lab's shared
directory, the same bind mount in every lab host. A marker is written to the guest's disk
from inside the guest; the VM moves live to cloud_b (memory only: the disk stays in the
shared directory) and back with mode auto, which must choose live as well. The ledger and
the placement record live in a temporary state directory. The module fixture makes the
hosts' TLS material when missing (migration_tls), creates the tenant with create_infra.yml
and removes it with delete_infra.yml, also after a failure, and checks that the shared
volume is gone afterwards. Run with -s to see the measured downtime and bytes (MEASURED).
"""

from __future__ import annotations

import json
import time
import uuid
import xml.etree.ElementTree as ET

import pytest

from conftest import console
from migration_lab import changed, ledger, playbook, tenant_env
from migration_lab import placement as read_placement
from migration_lab import where as domain_states

pytestmark = pytest.mark.lab

TENANT = "shl"
SPEC = {
    "tenants": [
        {
            "name": TENANT,
            "networks": [
                {
                    "name": "net",
                    "cloud": "cloud_a",
                    "subnet": "10.35.1.0/24",
                    "vms": [
                        {"name": "s1", "vcpus": 1, "memory": "128MiB", "disk": "64MiB",
                         "ip": "10.35.1.10", "host": "mcm-a2", "storage": "shared"},
                    ],
                },
            ],
        }
    ]
}  # fmt: skip
DOMAIN, IP = "shl-s1", "10.35.1.10"
SHARED_DIR = "/var/lib/mcm/shared/vms"
DISK = f"{SHARED_DIR}/{DOMAIN}.qcow2"
DHCP_NS = "qdhcp-shl.net"
NETWORK_NODE = "mcm-a1"  # cloud_a's first host: DHCP namespace and router
MARKER = f"shl-marker-{uuid.uuid4().hex[:12]}"
READ_MARKER = "sync; echo 3 > /proc/sys/vm/drop_caches; cat /mnt/disk/marker"
MIGRATE_TASK = "Migrate each VM of this source host"
MEASURED: dict[str, dict] = {}


@pytest.fixture(scope="module")
def env(hosts, tmp_path_factory):
    try:
        with tenant_env(tmp_path_factory.mktemp("shl"), SPEC, TENANT, hosts) as env:
            yield env
    finally:
        # the shared volume was deleted (once, by the host that ran the VM): it is gone
        # from the directory every host shares; a leftover is removed so the lab stays clean
        left = {n: h.run("test -e %s", DISK).rc == 0 for n, h in hosts.items()}
        hosts[NETWORK_NODE].run("rm -f %s", DISK)
        domains = {n: h.run("virsh list --all --name").stdout for n, h in hosts.items()}
        print("MEASURED", json.dumps(MEASURED))
        assert not any(left.values()), f"the shared volume {DISK} was left: {left}"
        assert not [n for n, out in domains.items() if DOMAIN in out], domains


def where(hosts) -> dict[str, str]:
    return domain_states(hosts, DOMAIN)


def mac_and_disk(host) -> tuple[str, str]:
    root = ET.fromstring(host.run("virsh dumpxml %s", DOMAIN).stdout)
    mac = root.find("./devices/interface/mac").get("address")
    disk = root.find("./devices/disk/source").get("file")
    return mac, disk


def pings(host, namespace: str, ip: str, attempts: int = 10) -> bool:
    for _attempt in range(attempts):  # bounded: the FDB of the stretched segment may still learn
        if host.run("ip netns exec %s ping -c 2 -i 0.3 -W 1 %s", namespace, ip).rc == 0:
            return True
        time.sleep(2)
    return False


def failures(data: dict) -> list[str]:
    """The messages of every failed task (and loop item) of a playbook's JSON output."""
    out = []
    for play in data.get("plays", []):
        for task in play["tasks"]:
            for host, result in task["hosts"].items():
                items = [result, *result.get("results", [])]
                out += [f"{host}: {r.get('msg')}" for r in items if r.get("failed")]
    return out


def migrate_results(data: dict) -> list[dict]:
    """The vm_migrate results of the flow's migrate task (one per moved VM)."""
    out = []
    for play in data["plays"]:
        for task in play["tasks"]:
            if task["task"]["name"] == MIGRATE_TASK:
                for result in task["hosts"].values():
                    out += [r for r in result.get("results", []) if "mode" in r]
    return out


def test_created_in_the_shared_pool_with_a_marker_written_in_the_guest(env, hosts):
    assert where(hosts) == {"mcm-a2": "running"}
    mac, disk = mac_and_disk(hosts["mcm-a2"])
    assert disk == DISK
    assert hosts["mcm-a2"].run("virsh vol-path --pool mcm-shared %s.qcow2", DOMAIN).rc == 0
    # the lab's shared directory: the volume is visible on every host
    for name, host in hosts.items():
        assert host.run("test -s %s", DISK).rc == 0, name
        assert host.run("test -e /var/lib/mcm/vms/%s.qcow2", DOMAIN).rc != 0, name
    [out] = console("mcm-a2", DOMAIN, f"echo {MARKER} > /mnt/disk/marker && sync", timeout=300)
    assert out["rc"] == 0, out
    env["mac"] = mac
    rc, again = playbook(env, "create_infra.yml")
    assert rc == 0 and changed(again) == 0


def test_auto_plans_live_and_check_mode_changes_nothing(env, hosts):
    rc, data = playbook(env, "migrate_instance.yml", "-e", "instance=s1", "-e", "to=cloud_b",
                        "--check")  # fmt: skip
    assert rc == 0, failures(data)
    assert "disk on shared storage (stays)" in json.dumps(data)
    [result] = migrate_results(data)
    assert result["mode"] == "live" and result["mode_reason"].startswith("auto")
    assert result["unsafe"] and "VIR_MIGRATE_UNSAFE" in result["plan"]["flags"]
    assert result["plan"]["copied_disks"] == [] and result["plan"]["disk_bytes"] == 0
    assert where(hosts) == {"mcm-a2": "running"}
    assert ledger(env) == []


def test_live_keeps_ip_mac_and_the_disk_on_shared_storage(env, hosts):
    started = time.monotonic()
    rc, data = playbook(env, "migrate_instance.yml", "-e", "instance=s1", "-e", "to=cloud_b",
                        "-e", "mode=live")  # fmt: skip
    wall = time.monotonic() - started
    assert rc == 0, failures(data)
    [result] = migrate_results(data)
    assert result["mode"] == "live" and result["mode_reason"] == "requested"
    assert result["plan"]["copied_disks"] == [] and result["source_disks_left"] == []
    assert where(hosts) == {"mcm-b1": "running"}
    mac, disk = mac_and_disk(hosts["mcm-b1"])
    assert mac == env["mac"] and disk == DISK
    # not copied: the one volume is still in the shared directory, none in a local pool
    for name, host in hosts.items():
        assert host.run("test -s %s", DISK).rc == 0, name
        assert host.run("test -e /var/lib/mcm/vms/%s.qcow2", DOMAIN).rc != 0, name
    # the destination has the shared pool now, and it holds the volume
    assert hosts["mcm-b1"].run("virsh vol-path --pool mcm-shared %s.qcow2", DOMAIN).rc == 0
    assert pings(hosts[NETWORK_NODE], DHCP_NS, IP)
    [out] = console("mcm-b1", DOMAIN, READ_MARKER, timeout=300)
    assert out["out"] == MARKER
    [row] = ledger(env)
    assert row["status"] == "completed" and row["kind"] == "instance" and row["mode"] == "live"
    assert (row["source"], row["destination"]) == ("mcm-a2", "mcm-b1")
    assert row["bytes"] > 0 and row["downtime_ms"] is not None
    assert row["started"] and row["ended"] and row["ended"] >= row["started"]
    [moved] = row["results"]
    assert moved["status"] == "moved" and moved["mode"] == "live"
    MEASURED["live"] = {"downtime_ms": row["downtime_ms"], "bytes": row["bytes"],
                        "elapsed_ms": moved["elapsed_ms"],
                        "playbook_s": round(wall, 1)}  # fmt: skip
    rc, again = playbook(env, "create_infra.yml")
    assert rc == 0 and changed(again) == 0, (failures(again), again["stats"])
    assert where(hosts) == {"mcm-b1": "running"}
    placement = read_placement(env)
    assert placement["vms"] == {"shl/s1": "mcm-b1"}


def test_auto_moves_it_back_live(env, hosts):
    rc, data = playbook(env, "migrate_instance.yml", "-e", "instance=s1", "-e", "to=cloud_a")
    assert rc == 0, failures(data)
    [result] = migrate_results(data)
    assert result["mode"] == "live" and result["mode_reason"].startswith("auto")
    assert where(hosts) == {"mcm-a2": "running"}
    assert mac_and_disk(hosts["mcm-a2"]) == (env["mac"], DISK)
    assert pings(hosts[NETWORK_NODE], DHCP_NS, IP)
    [out] = console("mcm-a2", DOMAIN, READ_MARKER, timeout=300)
    assert out["out"] == MARKER
    row = ledger(env)[-1]
    assert row["status"] == "completed" and row["mode"] == "auto"
    assert row["results"][0]["mode"] == "live" and row["bytes"] > 0
    MEASURED["auto"] = {"downtime_ms": row["downtime_ms"], "bytes": row["bytes"],
                        "elapsed_ms": row["results"][0]["elapsed_ms"]}  # fmt: skip
    rc, again = playbook(env, "create_infra.yml")
    assert rc == 0 and changed(again) == 0, (failures(again), again["stats"])
