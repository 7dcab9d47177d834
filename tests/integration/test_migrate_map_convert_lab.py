"""Mapping and conversion on the lab (issue #9): a cold migration with network_map and
storage_map lands the VM on the mapped network and pool, and a disk converted to raw and
back keeps what the guest sees (ledger and placement in a temporary state directory).

Tenant nmap: web 10.61.1.0/24 on cloud_a with m1 (10.61.1.10, mcm-a1) and c1 (10.61.1.11,
mcm-a2); web2 10.61.2.0/24 on cloud_b, empty. m1 moves to cloud_b onto web2 (a new
address, its MAC kept) with its disk in the pool nmap-fast, created on mcm-b1 from a
directory; c1 goes to cloud_b converted to raw into the pool nmap-raw (made the same way)
and comes back to mcm-a2 as qcow2 in the pool mcm. The module fixture creates the tenant
with create_infra.yml and removes it with delete_infra.yml, the pools nmap-fast and
nmap-raw with their directories, and the state directory, also after a failure.
"""

from __future__ import annotations

import datetime
import json
import shutil

import pytest

from ansible_collections.multicloud.migration.plugins.module_utils import spec as specmod
from conftest import console
from migration_lab import changed, ledger, messages, placement, playbook, tenant_env, where

pytestmark = pytest.mark.lab

TENANT = "nmap"
SPEC = {
    "tenants": [
        {
            "name": TENANT,
            "networks": [
                {
                    "name": "web",
                    "cloud": "cloud_a",
                    "subnet": "10.61.1.0/24",
                    "vms": [
                        {"name": "m1", "vcpus": 1, "memory": "128MiB", "disk": "64MiB",
                         "ip": "10.61.1.10", "host": "mcm-a1"},
                        {"name": "c1", "vcpus": 1, "memory": "128MiB", "disk": "64MiB",
                         "ip": "10.61.1.11", "host": "mcm-a2"},
                    ],
                },
                {"name": "web2", "cloud": "cloud_b", "subnet": "10.61.2.0/24", "vms": []},
            ],
        }
    ]
}  # fmt: skip
CLOUDS = {"cloud_a": ["mcm-a1", "mcm-a2"], "cloud_b": ["mcm-b1"]}
MAPPED, CONVERTED = "nmap-m1", "nmap-c1"
# web2 10.61.2.0/24: gateway .1, DHCP server .254, dynamic range .128-.253: the lowest free
# address outside them is m1's new one
MAPPED_IP = "10.61.2.2"
POOL, POOL_DIR = "nmap-fast", "/var/lib/mcm/nmap-fast"
# c1's raw copy goes into a pool of its own, made on mcm-b1 by the same migration
RAW_POOL, RAW_DIR = "nmap-raw", "/var/lib/mcm/nmap-raw"
POOLS = {POOL: POOL_DIR, RAW_POOL: RAW_DIR}
NETWORK_MAP = json.dumps({"network_map": {f"{TENANT}/web": f"{TENANT}/web2"}})
STORAGE_MAP = json.dumps({"storage_map": {"mcm": {"pool": POOL, "path": POOL_DIR}}})


def bridges() -> dict[str, str]:
    """Each network's bridge, as the collection derives it."""
    normal = specmod.normalize(SPEC, clouds=CLOUDS)
    return {n["name"]: n["bridge"] for n in normal["tenants"][0]["networks"]}


@pytest.fixture(scope="module")
def env(hosts, tmp_path_factory):
    work = tmp_path_factory.mktemp("nmap")
    try:
        with tenant_env(work, SPEC, TENANT, hosts) as made:
            yield made
    finally:
        b1 = hosts["mcm-b1"]
        for pool, directory in POOLS.items():
            b1.run("virsh pool-destroy %s", pool)
            b1.run("virsh pool-undefine %s", pool)
            b1.run("rm -rf %s", directory)
        shutil.rmtree(work, ignore_errors=True)
        for name, host in hosts.items():
            left = host.run("ls /var/lib/mcm/vms %s %s /var/lib/mcm/convert", POOL_DIR,
                            RAW_DIR).stdout  # fmt: skip
            assert "nmap-" not in left, f"{name} keeps {left}"
        for pool in POOLS:
            assert b1.run("virsh pool-info %s", pool).rc != 0, f"pool {pool} is left on mcm-b1"


def domain_xml(hosts, host: str, domain: str) -> str:
    return hosts[host].run("virsh dumpxml --inactive %s", domain).stdout


def answers(hosts, host: str, namespace: str, ip: str) -> bool:
    return hosts[host].run("ip netns exec %s ping -c 3 -i 0.3 -W 1 %s", namespace, ip).rc == 0


def report(row: dict) -> None:
    """The figures of a ledger row (docs/migration.md quotes them; pytest -s shows them)."""
    started, ended = (datetime.datetime.fromisoformat(row[k]) for k in ("started", "ended"))
    for result in row["results"]:
        for disk in result["checksum"]:
            print(f"{row['object']} {disk['source_format']}->{disk['destination_format']} "
                  f"({disk['content']}): row {(ended - started).total_seconds():.1f} s, "
                  f"downtime {result['downtime_ms']} ms, copy and checks {disk['seconds']} s, "
                  f"{disk['data_bytes'] / 1048576:.1f} MiB of data sent, "
                  f"{disk['bytes'] / 1048576:.1f} MiB checked")  # fmt: skip


def marker(host: str, domain: str) -> str:
    [out] = console(host, domain, "cat /mnt/disk/marker")
    return out["out"]


def test_network_and_storage_map_land_the_vm_on_the_mapped_network_and_pool(env, hosts):
    """Three refusals, the plan in check mode, the mapped cold move, confirm and a no-op
    create_infra. About 60 s: eight playbook runs, one of them a cold move with a boot."""
    [out] = console("mcm-a1", MAPPED, f"echo {MAPPED}-marker > /mnt/disk/marker && sync")
    assert out["rc"] == 0, out
    mac = hosts["mcm-a1"].run("virsh domiflist %s", MAPPED).stdout.split()[-1]
    move = ["-e", "instance=m1", "-e", "to=cloud_b", "-e", "shutdown_timeout=5",
            "-e", NETWORK_MAP, "-e", STORAGE_MAP]  # fmt: skip

    # what an operator gets wrong is refused before anything moves, saying what to do
    rc, data = playbook(env, "migrate_instance.yml", "-e", "instance=m1", "-e", "to=cloud_b",
                        "-e", json.dumps({"network_map": {"nmap/web": "nmap/nope"}}))  # fmt: skip
    assert rc != 0 and "nmap/nope is not a present network of tenant nmap" in messages(data)
    rc, data = playbook(env, "migrate_instance.yml", *move, "-e", "mode=live-block")
    assert rc != 0 and "applied by a cold migration only" in messages(data)
    nopool = json.dumps({"storage_map": {"mcm": "nmap-nopool"}})
    rc, data = playbook(env, "migrate_instance.yml", "-e", "instance=m1", "-e", "to=cloud_b",
                        "-e", nopool, "--check")  # fmt: skip
    assert rc != 0 and "has no storage pool nmap-nopool" in messages(data), messages(data)[-2000:]

    # --check prints the plan with the mapping and changes nothing
    rc, data = playbook(env, "migrate_instance.yml", *move, "--check")
    assert rc == 0, messages(data)[-3000:]
    text = messages(data)
    assert f"network nmap/web -> nmap/web2 (ip 10.61.1.10 -> {MAPPED_IP})" in text
    assert f"pool mcm -> {POOL} (created at {POOL_DIR} if missing)" in text
    assert where(hosts, MAPPED) == {"mcm-a1": "running"}
    assert hosts["mcm-b1"].run("virsh pool-info %s", POOL).rc != 0

    rc, data = playbook(env, "migrate_instance.yml", *move)
    assert rc == 0, messages(data)[-3000:]
    assert where(hosts, MAPPED) == {"mcm-a1": "shut off", "mcm-b1": "running"}
    xml = domain_xml(hosts, "mcm-b1", MAPPED)
    assert f"<source bridge='{bridges()['web2']}'/>" in xml, xml
    assert f"<source file='{POOL_DIR}/{MAPPED}.qcow2'/>" in xml, xml
    assert 'network="web2"' in xml or "network='web2'" in xml, xml
    assert hosts["mcm-b1"].run("virsh domiflist %s", MAPPED).stdout.split()[-1] == mac
    volumes = hosts["mcm-b1"].run("virsh vol-list %s", POOL).stdout
    assert [line.split()[0] for line in volumes.splitlines() if MAPPED in line] == [
        f"{MAPPED}.qcow2"], volumes  # fmt: skip
    # the guest took its new address on web2 by DHCP and answers there
    assert answers(hosts, "mcm-b1", "qdhcp-nmap.web2", MAPPED_IP)
    [lease] = console("mcm-b1", MAPPED, "cat /run/mcm-guest.lease")
    assert f"ip={MAPPED_IP}" in lease["out"], lease
    assert marker("mcm-b1", MAPPED) == f"{MAPPED}-marker"
    [row] = ledger(env)
    assert row["status"] == "finished" and row["mode"] == "cold", row
    report(row)
    [result] = row["results"]
    assert (result["network"], result["ip"]) == ("web2", MAPPED_IP), result
    [disk] = result["disks"]
    assert disk["destination_path"] == f"{POOL_DIR}/{MAPPED}.qcow2", disk
    assert (disk["source_format"], disk["destination_format"]) == ("qcow2", "qcow2"), disk
    assert placement(env)["vms"] == {f"{TENANT}/m1": "mcm-b1"}
    assert placement(env)["layout"] == {f"{TENANT}/m1": {"mcm-b1": {
        "network": "web2", "ip": MAPPED_IP, "pool": POOL, "pool_path": POOL_DIR}}}  # fmt: skip

    # confirmed, a later create_infra.yml neither moves nor re-creates it
    rc, data = playbook(env, "confirm_migration.yml", "-e", f"id={row['id']}")
    assert rc == 0, messages(data)[-3000:]
    assert where(hosts, MAPPED) == {"mcm-b1": "running"}
    rc, data = playbook(env, "create_infra.yml")
    assert rc == 0 and changed(data) == 0, messages(data)[-3000:]
    assert where(hosts, MAPPED) == {"mcm-b1": "running"}
    assert domain_xml(hosts, "mcm-b1", MAPPED) == xml
    assert answers(hosts, "mcm-b1", "qdhcp-nmap.web2", MAPPED_IP)


def test_a_disk_converted_to_raw_and_back_keeps_what_the_guest_sees(env, hosts):
    """vhdx refused, qcow2 -> raw on cloud_b, raw -> qcow2 back on cloud_a, each confirmed.
    Over 60 s (about 70 s): two cold moves, each converting, checksumming the guest's view
    on both ends and booting the guest, and seven playbook runs."""
    [out] = console("mcm-a2", CONVERTED, f"echo {CONVERTED}-marker > /mnt/disk/marker && sync")
    assert out["rc"] == 0, out
    first = len(ledger(env))

    # vhdx: qemu-img makes it, but libvirt 9.0 on the destination cannot run a disk in it
    rc, data = playbook(env, "migrate_instance.yml", "-e", "instance=c1", "-e", "to=cloud_b",
                        "-e", "disk_format=vhdx", "--check")  # fmt: skip
    assert rc != 0 and "cannot run a disk in format vhdx" in messages(data), messages(data)[-2000:]
    assert where(hosts, CONVERTED) == {"mcm-a2": "running"}

    # to cloud_b as raw, into a pool made there from its directory (auto picks cold)
    into_raw_pool = json.dumps({"storage_map": {"mcm": {"pool": RAW_POOL, "path": RAW_DIR}}})
    rc, data = playbook(env, "migrate_instance.yml", "-e", "instance=c1", "-e", "to=cloud_b",
                        "-e", "disk_format=raw", "-e", into_raw_pool,
                        "-e", "shutdown_timeout=5")  # fmt: skip
    assert rc == 0, messages(data)[-3000:]
    assert where(hosts, CONVERTED) == {"mcm-a2": "shut off", "mcm-b1": "running"}
    xml = domain_xml(hosts, "mcm-b1", CONVERTED)
    assert f"<source file='{RAW_DIR}/{CONVERTED}.raw'/>" in xml and "type='raw'" in xml
    info = hosts["mcm-b1"].run("qemu-img info --output=json %s/%s.raw", RAW_DIR, CONVERTED)
    assert json.loads(info.stdout)["format"] == "raw"
    row = ledger(env)[first]
    assert row["status"] == "finished" and row["mode"] == "cold", row
    report(row)
    [result] = row["results"]
    [check] = result["checksum"]
    assert check["content"] == "guest" and check["match"], check
    assert check["source"] == check["destination"], check
    [disk] = result["disks"]
    assert (disk["source_format"], disk["destination_format"]) == ("qcow2", "raw"), disk
    assert disk["guest_checksum"] == check["destination"]
    assert answers(hosts, "mcm-a1", "qdhcp-nmap.web", "10.61.1.11")
    assert marker("mcm-b1", CONVERTED) == f"{CONVERTED}-marker"
    assert placement(env)["layout"][f"{TENANT}/c1"] == {"mcm-b1": {
        "pool": RAW_POOL, "pool_path": RAW_DIR, "disk_format": "raw"}}  # fmt: skip
    rc, data = playbook(env, "confirm_migration.yml", "-e", f"id={row['id']}")
    assert rc == 0, messages(data)[-3000:]

    # back to mcm-a2 as qcow2, into the pool of the VMs' own disks
    rc, data = playbook(env, "migrate_instance.yml", "-e", "instance=c1", "-e", "to=cloud_a",
                        "-e", "host=mcm-a2", "-e", "disk_format=qcow2", "-e", "mode=cold",
                        "-e", f"storage_map={RAW_POOL}=mcm",  # the text form (AWX)
                        "-e", "shutdown_timeout=5")  # fmt: skip
    assert rc == 0, messages(data)[-3000:]
    assert where(hosts, CONVERTED) == {"mcm-a2": "running", "mcm-b1": "shut off"}
    xml = domain_xml(hosts, "mcm-a2", CONVERTED)
    assert f"<source file='/var/lib/mcm/vms/{CONVERTED}.qcow2'/>" in xml and "type='qcow2'" in xml
    back = ledger(env)[-1]
    report(back)
    [check] = back["results"][0]["checksum"]
    assert (check["source_format"], check["destination_format"]) == ("raw", "qcow2"), check
    assert check["content"] == "guest" and check["source"] == check["destination"], check
    assert marker("mcm-a2", CONVERTED) == f"{CONVERTED}-marker"
    assert answers(hosts, "mcm-a1", "qdhcp-nmap.web", "10.61.1.11")
    rc, data = playbook(env, "confirm_migration.yml", "-e", f"id={back['id']}")
    assert rc == 0, messages(data)[-3000:]
    assert where(hosts, CONVERTED) == {"mcm-a2": "running"}
    # the disk is the VM's own qcow2 in the pool mcm again: no layout left to record
    assert f"{TENANT}/c1" not in placement(env)["layout"]
    rc, data = playbook(env, "create_infra.yml")
    assert rc == 0 and changed(data) == 0, messages(data)[-3000:]
    assert domain_xml(hosts, "mcm-a2", CONVERTED) == xml
