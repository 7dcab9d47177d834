"""A cold copy of more than one segment on the lab (issue 8): vm_migrate mode cold moves a
sparse raw disk of 600 MiB (3 segments of 256 MiB, data in each) from mcm-a1 to mcm-b1,
reading each segment back from mcm-b1 while the next one is sent.

The guest is never started: a shut-off domain of the vm module, whose raw volume (made by
the module, with the pool when the lab has none yet) then gets its data. Afterwards
the destination's file must have the source's content (sha256 of the whole file, holes as
zeros) and stay sparse, and the module's checksums must match. Everything named ``segc-``
is removed from both hosts before and after, also when the test fails.
"""

from __future__ import annotations

import pytest
import yaml

from conftest import (
    GUEST_BOOT,
    ansible_json,
    host_python,
    lab_bridge,
    libvirt_cleanup,
    migration_tls,
)

pytestmark = pytest.mark.lab

SRC, DST = "mcm-a1", "mcm-b1"
WAN = {"mcm-b1": "172.30.0.21"}
DOMAIN = "segc-c1"
DISK = f"/var/lib/mcm/vms/{DOMAIN}.raw"  # the vm module's volume <name>.<disk_format>
BRIDGE = "segc-br"
SIZE_MIB = 600
# 4 MiB of random data at each offset (MiB): the first, second and third segments
EXTENTS = (0, 300, 590)


def facts(host, path: str) -> dict:
    """sha256 of the whole file (holes read as zeros), apparent size, allocated bytes."""
    digest = host.check_output("sha256sum %s", path).split()[0]
    size, blocks, unit = host.check_output("stat -c '%%s %%b %%B' %s", path).split()
    return {"sha256": digest, "size": int(size), "allocated": int(blocks) * int(unit)}


def cleanup(hosts) -> None:
    for name in (SRC, DST):
        libvirt_cleanup(hosts[name], "segc-")
        hosts[name].run(f"rm -f {DISK}; ip link del {BRIDGE}")


@pytest.fixture
def guest(hosts, tmp_path):
    migration_tls(hosts, (SRC, DST))  # vm_migrate's default encryption
    cleanup(hosts)
    try:
        for name in (SRC, DST):
            lab_bridge(hosts[name], BRIDGE)
        vm = {"name": DOMAIN, "state": "shutoff", "memory_mib": 128, "vcpus": 1,
              "bridge": BRIDGE, "disk_mib": SIZE_MIB, "disk_format": "raw",
              "boot": GUEST_BOOT,
              "metadata": {"tenant": "segc", "network": "net", "vm": "c1"}}  # fmt: skip
        play = [{"hosts": SRC, "gather_facts": False,
                 "tasks": [{"multicloud.migration.vm": {"config": [vm]}}]}]  # fmt: skip
        path = tmp_path / "define.yml"
        path.write_text(yaml.safe_dump(play, sort_keys=False))
        proc, _data = ansible_json(["ansible-playbook", str(path)])
        assert proc.returncode == 0, proc.stdout[-3000:]
        writes = " && ".join(
            f"dd if=/dev/urandom of={DISK} bs=1M count=4 seek={at} conv=notrunc status=none"
            for at in EXTENTS
        )
        assert hosts[SRC].run(f"{writes} && virsh -q pool-refresh mcm").rc == 0
        yield tmp_path
    finally:
        cleanup(hosts)


def test_a_disk_of_three_segments_moves_and_reads_back_equal(guest, hosts):
    before = facts(hosts[SRC], DISK)
    assert before["allocated"] < 20 * 2**20  # sparse: 12 MiB of data
    args = {"name": DOMAIN, "destination": DST, "destination_address": WAN[DST], "mode": "cold"}
    play = [{"hosts": SRC, "gather_facts": False,
             "tasks": [{"multicloud.migration.vm_migrate": args}]}]  # fmt: skip
    path = guest / "cold.yml"
    path.write_text(yaml.safe_dump(play, sort_keys=False))
    proc, data = ansible_json(["ansible-playbook", str(path)])
    result = data["plays"][0]["tasks"][0]["hosts"][SRC]
    assert proc.returncode == 0 and not result.get("failed"), result.get("msg")
    [check] = result["checksum"]
    assert check["match"] and check["source"] == check["destination"], check
    assert check["sparse"] is True
    stats = result["stats"]
    assert stats["disk_bytes"] == SIZE_MIB * 2**20
    assert 12 * 2**20 <= stats["bytes"] <= 16 * 2**20  # the data crossed, not the holes
    assert stats["disk_hole_bytes"] == stats["disk_bytes"] - stats["bytes"]
    after = facts(hosts[DST], DISK)
    assert after["sha256"] == before["sha256"]
    assert after["size"] == before["size"] == SIZE_MIB * 2**20
    assert after["allocated"] < 20 * 2**20  # the holes stayed holes
    states = host_python(hosts[DST], f"import libvirt; c = libvirt.open('qemu:///system'); "
                                     f"print(c.lookupByName('{DOMAIN}').info()[0])")  # fmt: skip
    assert states.strip() == "5"  # VIR_DOMAIN_SHUTOFF: defined, not started
