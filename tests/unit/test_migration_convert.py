"""vm_migrate's mapping and conversion (cold), without libvirt: the new file name, the
domain XML on the destination, the guest-visible checksum of a sparse file, the upload of
a file with its holes, and the checks made before the VM is touched."""

from __future__ import annotations

import hashlib
import os
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import pytest
from fake_libvirt import NO_INTERFACE, NO_STORAGE_POOL, LibvirtError

from ansible_collections.multicloud.migration.plugins.module_utils import libvirt_migrate as lm
from ansible_collections.multicloud.migration.plugins.module_utils import libvirt_vm as lv

MIB = 1024 * 1024
# libvirt 9.0's dir pool formats (virConnectGetStoragePoolCapabilities on the lab): no vhdx
CAPABILITIES = """<storagepoolCapabilities>
  <pool type='dir' supported='yes'><volOptions><defaultFormat type='raw'/>
    <enum name='targetFormatType'><value>none</value><value>raw</value><value>vpc</value>
      <value>qcow2</value><value>qed</value><value>vmdk</value></enum>
  </volOptions></pool>
  <pool type='logical' supported='yes'/>
</storagepoolCapabilities>"""


def guest_xml(**overrides: object) -> str:
    vm = lv.normalize_vm({
        "name": "acme-web1", "bridge": "brq-1", "metadata": {"tenant": "acme", "network": "web",
                                                             "vm": "web1"},
        "console_log": "/var/lib/mcm/console/acme-web1.log", **overrides,
    })  # fmt: skip
    return lv.domain_xml(vm)


@pytest.mark.parametrize(
    ("path", "fmt", "name"),
    [
        ("/var/lib/mcm/vms/acme-web1.qcow2", "raw", "acme-web1.raw"),
        ("/var/lib/mcm/vms/acme-web1.raw", "qcow2", "acme-web1.qcow2"),
        ("/srv/disk.img", "vmdk", "disk.img.vmdk"),
    ],
)
def test_a_converted_disk_is_named_after_its_format(path, fmt, name):
    assert lm.converted_name(path, fmt) == name


def test_relayout_xml_moves_disk_and_nic_and_keeps_the_rest():
    xml = guest_xml()
    out = lm.relayout_xml(
        xml, {"/var/lib/mcm/vms/acme-web1.qcow2": ("/var/lib/mcm/fast/acme-web1.raw", "raw")},
        bridge="brq-2", network="web2",
    )  # fmt: skip
    have, was = lv.parse_domain(out), lv.parse_domain(xml)
    assert (have["disk"], have["disk_format"]) == ("/var/lib/mcm/fast/acme-web1.raw", "raw")
    assert have["bridge"] == "brq-2" and have["mac"] == was["mac"]
    assert have["metadata"] == {"tenant": "acme", "network": "web2", "vm": "web1"}
    for key in ("name", "memory_mib", "vcpus", "console", "mtu"):
        assert have[key] == was[key], key
    # what create_infra then wants of the VM is exactly what it finds
    want = lv.normalize_vm({"name": "acme-web1", "bridge": "brq-2", "pool": "mcm-fast",
                            "pool_path": "/var/lib/mcm/fast", "disk_format": "raw",
                            "metadata": {"tenant": "acme", "network": "web2", "vm": "web1"},
                            "console_log": "/var/lib/mcm/console/acme-web1.log"})  # fmt: skip
    assert lv.compare(want, out) == []


def test_relayout_xml_drops_the_backing_chain_only_of_a_converted_disk():
    xml = guest_xml().replace(
        "<target dev='vda' bus='virtio'/>",
        "<target dev='vda' bus='virtio'/><backingStore type='file'><format type='qcow2'/>"
        "<source file='/var/lib/mcm/images/disk.qcow2'/></backingStore>",
    )
    moved = lm.relayout_xml(xml, {"/var/lib/mcm/vms/acme-web1.qcow2":
                                  ("/var/lib/mcm/fast/acme-web1.qcow2", "qcow2")})  # fmt: skip
    assert "backingStore" in moved
    converted = lm.relayout_xml(xml, {"/var/lib/mcm/vms/acme-web1.qcow2":
                                      ("/var/lib/mcm/vms/acme-web1.raw", "raw")})  # fmt: skip
    assert "backingStore" not in converted
    root = ET.fromstring(converted)
    assert root.find("./devices/disk/driver").get("type") == "raw"
    with pytest.raises(lm.MigrationError, match="no NIC on a bridge"):
        lm.relayout_xml(guest_xml().replace("type='bridge'", "type='network'"), {}, bridge="b")


def sparse_file(path, layout: list[tuple[str, int]]) -> bytes:
    """A file of data and holes; its content as bytes."""
    content = bytearray()
    with open(path, "wb") as handle:
        for kind, size in layout:
            if kind == "hole":
                handle.seek(size, os.SEEK_CUR)
                content += bytes(size)
            else:
                chunk = hashlib.sha256(str(len(content)).encode()).digest() * (size // 32)
                handle.write(chunk)
                content += chunk
        handle.truncate(len(content))
    return bytes(content)


def block_digest(content: bytes) -> str:
    digest = lm.BlockDigest()
    digest.update(content)
    return digest.hexdigest()


def test_the_guest_checksum_of_a_sparse_file_reads_its_data_only(tmp_path):
    path = tmp_path / "disk.raw"
    content = sparse_file(path, [("data", MIB), ("hole", 6 * MIB), ("data", 64 * 1024),
                                 ("hole", 3 * MIB + 512)])  # fmt: skip
    result = lm.hash_file(str(path), deadline=float("inf"))
    assert result["checksum"] == block_digest(content)
    assert result["bytes"] == len(content) == os.path.getsize(path)
    assert result["data_bytes"] + result["hole_bytes"] == len(content)
    assert result["hole_bytes"] >= 6 * MIB, "holes are skipped, not read"
    pieces = list(lm.file_segments(str(path)))
    assert sum(p if isinstance(p, int) else len(p) for p in pieces) == len(content)
    assert all(len(p) <= lm.CHUNK for p in pieces if isinstance(p, bytes))


class Stream:
    """An upload stream that rebuilds the file it receives."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.holes = 0
        self.state = "open"

    def send(self, data: bytes) -> int:
        self.received += data
        return len(data)

    def sendHole(self, length: int, flags: int = 0) -> None:
        self.holes += 1
        self.received += bytes(length)

    def finish(self) -> None:
        self.state = "finished"

    def abort(self) -> None:
        self.state = "aborted"


@pytest.mark.parametrize("sparse", [1, 0])
def test_a_file_is_uploaded_with_its_holes_and_the_same_checksum(tmp_path, monkeypatch, sparse):
    monkeypatch.setattr(lm, "libvirt", SimpleNamespace(
        VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM=sparse, libvirtError=RuntimeError))  # fmt: skip
    path = tmp_path / "disk.raw"
    content = sparse_file(path, [("hole", 2 * MIB), ("data", MIB + 100), ("hole", MIB)])
    stream = Stream()
    uploads = []
    conn = SimpleNamespace(newStream=lambda flags: stream)
    vol = SimpleNamespace(upload=lambda *args: uploads.append(args))
    done = []
    sent = lm.send_file(str(path), conn, vol, deadline=float("inf"), progress=done.append)
    assert bytes(stream.received) == content and stream.state == "finished"
    assert (stream.holes > 0) == bool(sparse)
    assert uploads == [(stream, 0, 0, sparse)]
    assert sent["checksum"] == lm.hash_file(str(path), float("inf"))["checksum"]
    assert done[-1] == len(content)


def test_a_failed_upload_aborts_the_stream(tmp_path, monkeypatch):
    monkeypatch.setattr(lm, "libvirt", SimpleNamespace(
        VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM=1, libvirtError=RuntimeError))  # fmt: skip
    path = tmp_path / "disk.raw"
    sparse_file(path, [("data", MIB)])
    stream = Stream()
    stream.send = lambda data: -1
    conn = SimpleNamespace(newStream=lambda flags: stream)
    vol = SimpleNamespace(upload=lambda *args: None)
    with pytest.raises(lm.MigrationError, match="stream send returned -1"):
        lm.send_file(str(path), conn, vol, deadline=float("inf"))
    assert stream.state == "aborted"


def test_relayout_needs_a_cold_copy():
    assert lm.choose_mode("auto", ["/d"], True, [], ["disk_format"])[0] == "cold"
    assert lm.choose_mode("cold", ["/d"], True, [], ["destination_pool"]) == (
        "cold", "requested: destination_pool (applied by a cold copy)")  # fmt: skip
    for mode in ("live", "live-block"):
        with pytest.raises(lm.MigrationError, match="applied by a cold migration only"):
            lm.choose_mode(mode, ["/d"], True, [], ["destination_bridge"])
    assert lm.MigrateOptions(disk_format="raw", destination_network="w").relayout() == [
        "disk_format"]  # fmt: skip
    assert lm.MigrateOptions().relayout() == []


def test_the_formats_the_destination_can_run():
    assert lm.pool_formats(CAPABILITIES) == ["none", "raw", "vpc", "qcow2", "qed", "vmdk"]
    assert lm.pool_formats("<storagepoolCapabilities/>") == []
    argv = lm.qemu_img_convert_argv("/a.qcow2", "qcow2", "/b.raw", "raw")
    assert argv == ["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", "/a.qcow2", "/b.raw"]


class Dst:
    """A destination libvirt for the relayout checks: its capabilities, its bridges."""

    def __init__(self, bridges: tuple[str, ...] = ()) -> None:
        self.bridges = bridges

    def getStoragePoolCapabilities(self, flags: int = 0) -> str:
        return CAPABILITIES

    def interfaceLookupByName(self, name: str) -> object:
        if name not in self.bridges:
            raise LibvirtError(f"Interface not found: {name}", NO_INTERFACE)
        return object()


def job(monkeypatch, dst: Dst, check_mode: bool = False, **opts: object) -> lm.Migration:
    space = SimpleNamespace(libvirtError=LibvirtError, VIR_ERR_NO_INTERFACE=NO_INTERFACE)
    monkeypatch.setattr(lm, "libvirt", space)
    monkeypatch.setattr(lm, "qemu_img_formats", lambda: ["qcow2", "raw", "vmdk", "vhdx"])
    return lm.Migration(None, dst, "qemu+tls://172.30.0.21/system", "acme-web1",
                        opts=lm.MigrateOptions(**opts), check_mode=check_mode)  # fmt: skip


DISK = {"path": "/var/lib/mcm/vms/acme-web1.qcow2", "format": "qcow2", "shared": False,
        "chain_allocated_bytes": MIB}  # fmt: skip


def test_a_format_the_destination_cannot_run_is_refused_before_the_vm_is_touched(monkeypatch):
    refused = r"cannot run a disk in format vhdx.*choose disk_format qcow2 or raw or vmdk"
    with pytest.raises(lm.MigrationError, match=refused):
        job(monkeypatch, Dst(), disk_format="vhdx").check_relayout([DISK])
    job(monkeypatch, Dst(), disk_format="vmdk").check_relayout([DISK])
    monkeypatch.setattr(lm, "qemu_img_formats", list)
    migration = lm.Migration(None, Dst(), "qemu+tls://h/system", "acme-web1",
                             opts=lm.MigrateOptions(disk_format="raw"))  # fmt: skip
    with pytest.raises(lm.MigrationError, match="needs qemu-img on the source"):
        migration.check_relayout([DISK])


def test_the_new_bridge_must_exist_on_the_destination(monkeypatch):
    with pytest.raises(lm.MigrationError, match="has no bridge brq-2 for the NIC"):
        job(monkeypatch, Dst(), destination_bridge="brq-2").check_relayout([DISK])
    job(monkeypatch, Dst(("brq-2",)), destination_bridge="brq-2").check_relayout([DISK])
    planned = job(monkeypatch, Dst(), check_mode=True, destination_bridge="brq-2")
    planned.check_relayout([DISK])  # check mode: the playbook builds it just before the copy
    assert "has no bridge brq-2 yet" in planned.warnings[0]


def test_the_source_needs_room_for_the_temporary_images(monkeypatch, tmp_path):
    migration = job(monkeypatch, Dst(), disk_format="vmdk", convert_dir=str(tmp_path / "c"))
    huge = {**DISK, "chain_allocated_bytes": 1 << 62}
    with pytest.raises(lm.MigrationError, match="not enough space on the source"):
        migration.check_convert_room([huge])
    migration.check_convert_room([DISK])


class Pool:
    def __init__(self, name: str, path: str, kind: str = "dir", active: bool = True) -> None:
        self._name, self.path, self.kind, self.active = name, path, kind, active

    def name(self) -> str:
        return self._name

    def XMLDesc(self, flags: int = 0) -> str:
        return f"<pool type='{self.kind}'><target><path>{self.path}</path></target></pool>"

    def isActive(self) -> bool:
        return self.active

    def create(self, flags: int = 0) -> None:
        self.active = True


class Pools(Dst):
    def __init__(self, *pools: Pool) -> None:
        super().__init__()
        self.pools = {p.name(): p for p in pools}

    def storagePoolLookupByName(self, name: str) -> Pool:
        if name not in self.pools:
            raise LibvirtError(f"no pool {name}", NO_STORAGE_POOL)
        return self.pools[name]


def test_the_destination_pool_must_exist_or_come_with_its_directory(monkeypatch):
    monkeypatch.setattr(lv, "libvirt", SimpleNamespace(libvirtError=LibvirtError,
                                                       VIR_ERR_NO_STORAGE_POOL=49))  # fmt: skip
    with pytest.raises(lm.MigrationError, match="has no storage pool fast: define it there"):
        job(monkeypatch, Pools(), destination_pool="fast").destination_pool()
    planned = job(monkeypatch, Pools(), check_mode=True, destination_pool="fast",
                  destination_pool_path="/var/lib/mcm/fast")  # fmt: skip
    assert planned.destination_pool() == (None, "/var/lib/mcm/fast")
    assert planned.changes[0]["action"] == "create" and planned.changes[0]["object"] == "pool"
    target = planned.target(DISK, "cold")
    assert target["destination_path"] == "/var/lib/mcm/fast/acme-web1.qcow2"
    assert not target["convert"]
    idle = Pool("fast", "/srv/fast", active=False)
    found = job(monkeypatch, Pools(idle), destination_pool="fast", disk_format="raw")
    assert found.destination_pool() == (idle, "/srv/fast") and idle.active
    assert found.target(DISK, "cold")["destination_path"] == "/srv/fast/acme-web1.raw"
    with pytest.raises(lm.MigrationError, match="is at /srv/fast, not at /var/lib/mcm/fast"):
        job(monkeypatch, Pools(Pool("fast", "/srv/fast")), destination_pool="fast",
            destination_pool_path="/var/lib/mcm/fast").destination_pool()  # fmt: skip
    with pytest.raises(lm.MigrationError, match="of type logical"):
        job(monkeypatch, Pools(Pool("vg", "/dev/vg", kind="logical")),
            destination_pool="vg").destination_pool()  # fmt: skip


def test_the_vm_modules_own_volume_is_named_after_its_format():
    assert lv.volume_name("acme-web1") == "acme-web1.qcow2"
    assert lv.volume_name("acme-web1", "raw") == "acme-web1.raw"
    assert set(lv.own_volume_names("a")) == {"a.qcow2", "a.raw", "a.vmdk", "a.vhdx"}
    vm = lv.normalize_vm({"name": "a", "bridge": "b", "mac": "52:54:00:00:00:01",
                          "pool_path": "/srv/fast", "disk_format": "raw"})  # fmt: skip
    assert vm["disk"] == "/srv/fast/a.raw" and vm["managed_volume"]
    with pytest.raises(lv.VmError, match="must be one of qcow2, raw, vmdk, vhdx"):
        lv.normalize_vm({"name": "a", "bridge": "b", "mac": "52:54:00:00:00:01",
                         "disk_format": "qed"})  # fmt: skip


def test_the_checksum_record_of_a_copy_and_of_a_conversion():
    disk = {"path": "/var/lib/mcm/vms/vm1.qcow2", "format": "qcow2"}
    sent = {"checksum": "aa", "bytes": 4096, "data_bytes": 1024, "hole_bytes": 3072,
            "sparse": True}  # fmt: skip
    copy = lm.checksum_record(disk, disk["path"], "qcow2", "file", sent, destination="aa",
                              total_bytes=4096, started=0.0)  # fmt: skip
    assert copy["source"] == "aa" and copy["match"] and copy["content"] == "file"
    assert copy["source_format"] == copy["destination_format"] == "qcow2"
    assert (copy["bytes"], copy["data_bytes"], copy["hole_bytes"]) == (4096, 1024, 3072)
    assert copy["algorithm"] == lm.CHECKSUM_ALGORITHM and copy["seconds"] > 0
    raw = lm.checksum_record(disk, "/pool/vm1.raw", "raw", "guest", sent, source="bb",
                             destination="cc", total_bytes=8192, started=0.0)  # fmt: skip
    assert raw["source"] == "bb" and not raw["match"] and raw["content"] == "guest"
    assert (raw["source_format"], raw["destination_format"]) == ("qcow2", "raw")
    assert raw["destination_path"] == "/pool/vm1.raw" and raw["bytes"] == 8192


QEMU_IMG_HELP_7 = """usage: qemu-img [standard options] command [command options]
  snapshot - List or manipulate snapshots within image

Supported formats: blkdebug file qcow2 raw vdi vhdx vmdk vpc

See <https://qemu.org/contribute/report-a-bug> for how to report bugs.
"""
QEMU_IMG_HELP_10 = """Usage: qemu-img [standard options] COMMAND [--help | command options]
  snapshot - List or manipulate snapshots within image

Supported image formats:

  blkdebug blklogwrites blkverify bochs cloop compress copy-before-write
  qcow2 qed quorum raw rbd replication snapshot-access ssh throttle vdi vhdx
  vmdk vpc vvfat

See <https://qemu.org/contribute/report-a-bug> for how to report bugs.
More information on the QEMU project at <https://qemu.org>.
"""


def test_qemu_img_formats_of_both_help_layouts():
    """QEMU 7.2 lists the formats on one line, QEMU 10 in an indented block."""
    old = lm.parse_qemu_img_formats(QEMU_IMG_HELP_7)
    assert old == ["blkdebug", "file", "qcow2", "raw", "vdi", "vhdx", "vmdk", "vpc"]
    new = lm.parse_qemu_img_formats(QEMU_IMG_HELP_10)
    assert new[:2] == ["blkdebug", "blklogwrites"] and new[-3:] == ["vmdk", "vpc", "vvfat"]
    assert {"qcow2", "raw", "vhdx"} <= set(new) and "See" not in new and len(new) == 21
    assert lm.parse_qemu_img_formats("qemu-img: unknown option\n") == []
