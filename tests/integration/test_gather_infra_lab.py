"""gather_infra.yml on the lab (issue 9, "Gather"): a tenant built by create_infra from a
spec, plus a domain defined by hand on the tenant's bridge, gathered into a spec file;
that file, re-applied with create_infra.yml, changes nothing and adopts the hand-made
domain.

Tenant `gth`: network net 10.39.1.0/24 on cloud_a, VM g1 (10.39.1.10) pinned to mcm-a2;
the domain `gthhand-legacy` (no metadata of ours, its own MAC, a 64 MiB volume in the pool
`mcm`, defined and not started) on mcm-a2, NIC on the tenant's bridge. The module fixture
removes the tenant, the domain and its volume, even when a test fails.
"""

from __future__ import annotations

import json

import pytest
import yaml

from ansible_collections.multicloud.migration.plugins.module_utils import spec as specmod
from conftest import ansible_json, libvirt_cleanup, libvirt_probe

pytestmark = pytest.mark.lab

TENANT = "gth"
HOST = "mcm-a2"
HAND = "gthhand-legacy"  # the hand-made domain (and its volume's prefix)
HAND_PREFIX = "gthhand-"
HAND_MAC = "52:54:00:39:01:77"
SPEC = {
    "tenants": [
        {
            "name": TENANT,
            "networks": [
                {
                    "name": "net",
                    "cloud": "cloud_a",
                    "subnet": "10.39.1.0/24",
                    "vms": [
                        {"name": "g1", "vcpus": 1, "memory": "128MiB", "disk": "64MiB",
                         "ip": "10.39.1.10", "host": HOST},
                    ],
                }
            ],
        }
    ]
}  # fmt: skip

# Run on the host: a 64 MiB qcow2 volume in the pool mcm and a domain on the bridge,
# defined by hand with libvirt-python (as an operator would with virsh), not started.
_DEFINE = r"""
import libvirt, sys
name, bridge, mac = sys.argv[1:4]
conn = libvirt.open("qemu:///system")
pool = conn.storagePoolLookupByName("mcm")
vol = pool.createXML(f'''<volume><name>{name}.qcow2</name>
  <capacity unit="MiB">64</capacity><target><format type="qcow2"/></target></volume>''', 0)
conn.defineXML(f'''<domain type="qemu"><name>{name}</name>
  <memory unit="MiB">96</memory><vcpu>1</vcpu>
  <os><type arch="x86_64" machine="pc">hvm</type><boot dev="hd"/></os>
  <devices>
    <disk type="file" device="disk"><driver name="qemu" type="qcow2"/>
      <source file="{vol.path()}"/><target dev="vda" bus="virtio"/></disk>
    <interface type="bridge"><mac address="{mac}"/><source bridge="{bridge}"/>
      <model type="virtio"/></interface>
  </devices></domain>''')
print(vol.path())
"""


def bridge() -> str:
    normal = specmod.normalize(SPEC, clouds={"cloud_a", "cloud_b"})
    return normal["tenants"][0]["networks"][0]["bridge"]


def playbook(*args: str) -> tuple:
    return ansible_json(["ansible-playbook", *args])


def changed(data: dict) -> dict[str, int]:
    return {h: s["changed"] for h, s in data["stats"].items() if s["changed"]}


def failed(proc, data) -> str:
    return f"rc {proc.returncode}: {proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"


def remove_all(host) -> None:
    playbook("playbooks/delete_infra.yml", "-e", f"tenant={TENANT}")
    libvirt_cleanup(host, HAND_PREFIX)


@pytest.fixture(scope="module")
def gathered(hosts, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gather")
    host = hosts[HOST]
    remove_all(host)
    try:
        spec_file = tmp / "spec.yml"
        spec_file.write_text(yaml.safe_dump(SPEC))
        proc, data = playbook("playbooks/create_infra.yml", "-e", f"spec_file={spec_file}")
        assert proc.returncode == 0, failed(proc, data)
        out = host.run("python3 -c %s %s %s %s", _DEFINE, HAND, bridge(), HAND_MAC)
        assert out.rc == 0, out.stderr
        before = libvirt_probe(host, HAND_PREFIX)
        out_file = tmp / "gathered.yml"
        check_file = tmp / "check.yml"
        check = playbook("playbooks/gather_infra.yml", "--check", "-e", f"gather_out={check_file}",
                         "-e", f"tenant={TENANT}")  # fmt: skip
        proc, data = playbook("playbooks/gather_infra.yml", "-e", f"gather_out={out_file}",
                              "-e", f"tenant={TENANT}")  # fmt: skip
        assert proc.returncode == 0, failed(proc, data)
        yield {"host": host, "tmp": tmp, "file": out_file, "check": (check, check_file),
               "before": before, "volume": out.stdout.strip()}  # fmt: skip
    finally:
        remove_all(host)


def written(gathered: dict) -> dict:
    return yaml.safe_load(gathered["file"].read_text())


def test_check_mode_writes_nothing_and_shows_the_spec(gathered):
    (proc, data), path = gathered["check"]
    assert proc.returncode == 0, failed(proc, data)
    assert not path.exists()
    write = [t for t in data["plays"][0]["tasks"] if t["task"]["name"] == "Write the spec file"]
    result = next(iter(write[0]["hosts"].values()))
    assert result["changed"] and "diff" in result
    assert f"name: {TENANT}" in json.dumps(result["diff"])


def test_the_written_spec_passes_the_validator(gathered):
    text = gathered["file"].read_text()
    assert text.startswith("# Written by multicloud.migration gather_infra.yml")
    data = specmod.load_spec_text(text, source="gathered.yml")
    assert specmod.validate(data, clouds={"cloud_a", "cloud_b"}) == []


def test_the_tenant_and_the_hand_made_domain_are_in_it(gathered):
    spec = written(gathered)
    assert [t["name"] for t in spec["tenants"]] == [TENANT]
    [net] = spec["tenants"][0]["networks"]
    normal = specmod.normalize(SPEC, clouds={"cloud_a", "cloud_b"})["tenants"][0]["networks"][0]
    assert (net["name"], net["cloud"], net["subnet"], net["vni"]) == (
        "net", "cloud_a", "10.39.1.0/24", normal["vni"]
    )  # fmt: skip
    assert net["dhcp"] == {"range": ["10.39.1.128", "10.39.1.253"], "domain": "net.gth"}
    vms = {v["name"]: v for v in net["vms"]}
    assert vms["g1"] == {"name": "g1", "vcpus": 1, "memory": "128MiB", "disk": "64MiB",
                         "ip": "10.39.1.10", "host": HOST}  # fmt: skip
    hand = vms[HAND]
    assert hand == {"name": HAND, "adopted": True, "domain_name": HAND, "mac": HAND_MAC,
                    "vcpus": 1, "memory": "96MiB", "disk": "64MiB", "host": HOST}  # fmt: skip
    # the header names it with its disk
    assert f"{HAND} on {HOST} -> {TENANT}/net vm {HAND}, disk {gathered['volume']}" in (
        gathered["file"].read_text()
    )


def test_reapplied_it_changes_nothing_and_leaves_the_domain_alone(gathered):
    proc, data = playbook("playbooks/create_infra.yml", "-e", f"spec_file={gathered['file']}")
    assert proc.returncode == 0, failed(proc, data)
    assert changed(data) == {}, changed(data)
    summary = [
        line
        for play in data["plays"]
        for task in play["tasks"]
        if task["task"]["name"] == "Print the tenants' networks, their VMs and where they live"
        for result in task["hosts"].values()
        for line in result["msg"]
    ]
    assert any(f"vm {HAND} " in x and f"adopted on {HOST}, left alone" in x for x in summary), (
        summary
    )
    after = libvirt_probe(gathered["host"], HAND_PREFIX)
    assert after == gathered["before"]
    assert after["domains"][HAND]["active"] is False
    # the second gather writes the same file
    again = gathered["tmp"] / "again.yml"
    proc, data = playbook("playbooks/gather_infra.yml", "-e", f"gather_out={again}",
                          "-e", f"tenant={TENANT}")  # fmt: skip
    assert proc.returncode == 0, failed(proc, data)
    assert again.read_text() == gathered["file"].read_text()
