"""libvirt_vm without libvirt: domain XML, reading it back, drift detection, input checks."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET

import pytest
from fake_libvirt import NO_DOMAIN, NO_STORAGE_POOL, NO_STORAGE_VOL, LibvirtError

from ansible_collections.multicloud.migration.plugins.module_utils import libvirt_vm as lv
from ansible_collections.multicloud.migration.plugins.module_utils import naming

NS = {"mcm": lv.XMLNS}


def make_vm(**overrides) -> dict:
    item = {
        "name": "acme-web1",
        "memory_mib": 128,
        "vcpus": 1,
        "bridge": "brq-1001",
        "disk": "/var/lib/mcm/vms/acme-web1.qcow2",
        "boot": {
            "kernel": "/var/lib/mcm/images/vmlinuz",
            "initrd": "/var/lib/mcm/images/initrd.img",
            "cmdline": "console=ttyS0 panic=-1 mcm.hostname=web1",
        },
        "console_log": "/var/lib/mcm/console/acme-web1.log",
        "metadata": {"tenant": "acme", "network": "web", "vm": "web1"},
    }
    item.update(overrides)
    return lv.normalize_vm(item)


def test_domain_xml_every_field():
    vm = make_vm(vcpus=2, max_vcpus=4, mtu=1400, mac="52:54:00:AA:bb:01")
    root = ET.fromstring(lv.domain_xml(vm, "qemu", "x86_64"))
    assert root.tag == "domain" and root.get("type") == "qemu"
    assert root.findtext("name") == "acme-web1"
    assert root.find("uuid") is None
    assert root.find("memory").get("unit") == "MiB" and root.findtext("memory") == "128"
    assert root.findtext("currentMemory") == "128"
    vcpu = root.find("vcpu")
    assert (vcpu.text, vcpu.get("current")) == ("4", "2")
    os_type = root.find("os/type")
    assert (os_type.text, os_type.get("arch"), os_type.get("machine")) == ("hvm", "x86_64", "pc")
    assert root.findtext("os/kernel") == "/var/lib/mcm/images/vmlinuz"
    assert root.findtext("os/initrd") == "/var/lib/mcm/images/initrd.img"
    assert root.findtext("os/cmdline") == "console=ttyS0 panic=-1 mcm.hostname=web1"
    assert root.find("os/boot") is None
    assert root.find("features/acpi") is not None and root.find("features/apic") is not None
    disk = root.find("devices/disk")
    assert (disk.get("type"), disk.get("device")) == ("file", "disk")
    assert disk.find("driver").get("type") == "qcow2"
    assert disk.find("source").get("file") == "/var/lib/mcm/vms/acme-web1.qcow2"
    assert (disk.find("target").get("dev"), disk.find("target").get("bus")) == ("vda", "virtio")
    nic = root.find("devices/interface")
    assert nic.get("type") == "bridge"
    assert nic.find("mac").get("address") == "52:54:00:aa:bb:01"
    assert nic.find("source").get("bridge") == "brq-1001"
    assert nic.find("model").get("type") == "virtio"
    assert nic.find("mtu").get("size") == "1400"
    serial = root.find("devices/serial")
    assert serial.get("type") == "unix"
    assert serial.find("source").get("mode") == "bind"
    assert serial.find("source").get("path") == "/var/lib/mcm/console/acme-web1.console"
    assert serial.find("log").get("file") == "/var/lib/mcm/console/acme-web1.log"
    assert serial.find("log").get("append") == "on"
    assert root.find("devices/memballoon").get("model") == "none"
    assert root.find("devices/graphics") is None
    meta = root.find("metadata/mcm:vm", NS)
    assert dict(meta.attrib) == {"tenant": "acme", "network": "web", "vm": "web1"}


def test_domain_xml_defaults_and_disk_boot():
    vm = lv.normalize_vm({"name": "plain", "mac": "52:54:00:00:00:01", "bridge": "br0"})
    root = ET.fromstring(lv.domain_xml(vm, "kvm"))
    assert root.get("type") == "kvm"
    assert root.find("os/boot").get("dev") == "hd"
    assert root.find("os/kernel") is None
    assert root.find("vcpu").get("current") is None and root.findtext("vcpu") == "1"
    assert root.find("devices/interface/mtu").get("size") == str(lv.DEFAULT_MTU)
    assert root.find("devices/disk/source").get("file") == "/var/lib/mcm/vms/plain.qcow2"
    assert root.find("devices/serial").get("type") == "pty"
    assert root.find("metadata") is None
    assert vm["managed_volume"] is True


def test_domain_xml_escapes():
    vm = make_vm(boot={"kernel": "/k", "initrd": None, "cmdline": "a='1' & b<2"})
    root = ET.fromstring(lv.domain_xml(vm))
    assert root.findtext("os/cmdline") == "a='1' & b<2"
    assert root.find("os/initrd") is None


def test_mac_derived_from_metadata():
    vm = make_vm()
    assert vm["mac"] == naming.vm_mac("acme", "web1")
    assert make_vm()["mac"] == vm["mac"]  # deterministic


def test_uuid_kept_on_redefinition():
    vm = make_vm(uuid="0b5e5d3a-1111-2222-3333-444455556666")
    root = ET.fromstring(lv.domain_xml(vm))
    assert root.findtext("uuid") == "0b5e5d3a-1111-2222-3333-444455556666"


def test_metadata_round_trip():
    vm = make_vm(metadata={"tenant": "acme", "network": "db", "vm": "x&<y"})
    parsed = lv.parse_domain(lv.domain_xml(vm))
    assert parsed["metadata"] == {"tenant": "acme", "network": "db", "vm": "x&<y"}
    assert lv.compare(vm, lv.domain_xml(vm)) == []


def test_parse_reads_back_what_domain_xml_writes():
    vm = make_vm(vcpus=2, max_vcpus=3)
    parsed = lv.parse_domain(lv.domain_xml(vm))
    assert {k: parsed[k] for k in lv.managed_view(vm)} == lv.managed_view(vm)


# A domain as libvirt returns it (KiB, addresses, aliases, a second console element).
LIVE = """<domain type='qemu' id='7'>
  <name>acme-web1</name>
  <uuid>6f1c7a30-9a51-4f7e-9a4b-0d6f7e1c2b3a</uuid>
  <metadata>
    <mcm:vm xmlns:mcm="https://multicloud.migration/xmlns/vm/1"
            tenant="acme" network="web" vm="web1"/>
  </metadata>
  <memory unit='KiB'>131072</memory>
  <currentMemory unit='KiB'>131072</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>
    <kernel>/var/lib/mcm/images/vmlinuz</kernel>
    <initrd>/var/lib/mcm/images/initrd.img</initrd>
    <cmdline>console=ttyS0 panic=-1 mcm.hostname=web1</cmdline>
    <boot dev='hd'/>
  </os>
  <features><acpi/><apic/></features>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/mcm/vms/acme-web1.qcow2' index='1'/>
      <backingStore type='file' index='2'>
        <format type='qcow2'/>
        <source file='/var/lib/mcm/images/disk.qcow2'/>
      </backingStore>
      <target dev='vda' bus='virtio'/>
      <alias name='virtio-disk0'/>
    </disk>
    <interface type='bridge'>
      <mac address='MAC'/>
      <source bridge='brq-1001'/>
      <target dev='vnet3'/>
      <model type='virtio'/>
      <mtu size='1450'/>
      <alias name='net0'/>
    </interface>
    <serial type='unix'>
      <source mode='bind' path='/var/lib/mcm/console/acme-web1.console'/>
      <log file='/var/lib/mcm/console/acme-web1.log' append='on'/>
      <target type='isa-serial' port='0'><model name='isa-serial'/></target>
    </serial>
    <console type='unix'>
      <source mode='bind' path='/var/lib/mcm/console/acme-web1.console'/>
      <target type='serial' port='0'/>
    </console>
    <memballoon model='none'/>
  </devices>
</domain>
""".replace("MAC", naming.vm_mac("acme", "web1"))


def attributes(diffs):
    return {d["attribute"]: (d["from"], d["to"]) for d in diffs}


def test_compare_nothing_changed():
    assert lv.compare(make_vm(), LIVE) == []


def test_compare_memory_change():
    assert attributes(lv.compare(make_vm(memory_mib=256), LIVE)) == {"memory_mib": (128, 256)}


def test_compare_lowered_current_memory_is_drift():
    live = LIVE.replace("<currentMemory unit='KiB'>131072", "<currentMemory unit='KiB'>65536")
    assert attributes(lv.compare(make_vm(), live)) == {"memory_mib": (64, 128)}


def test_compare_vcpu_change():
    assert attributes(lv.compare(make_vm(vcpus=2), LIVE)) == {
        "vcpus": (1, 2),
        "max_vcpus": (1, 2),
    }
    live = LIVE.replace("<vcpu placement='static'>1", "<vcpu placement='static' current='1'>4")
    assert attributes(lv.compare(make_vm(vcpus=2, max_vcpus=4), live)) == {"vcpus": (1, 2)}


def test_compare_mac_change():
    diffs = attributes(lv.compare(make_vm(mac="52:54:00:00:00:99"), LIVE))
    assert diffs == {"mac": (naming.vm_mac("acme", "web1"), "52:54:00:00:00:99")}


def test_compare_bridge_and_mtu_change():
    diffs = attributes(lv.compare(make_vm(bridge="brq-2002", mtu=1400), LIVE))
    assert diffs == {"bridge": ("brq-1001", "brq-2002"), "mtu": (1450, 1400)}


def test_compare_disk_boot_console_metadata():
    vm = make_vm(
        disk="/srv/other.qcow2",
        boot=None,
        console_log=None,
        metadata={"tenant": "acme", "network": "db", "vm": "web1"},
    )
    assert set(attributes(lv.compare(vm, LIVE))) == {"disk", "boot", "console", "metadata"}


def test_compare_foreign_domain_has_no_metadata():
    live = LIVE.replace('tenant="acme"', 'tenant="other"')
    assert attributes(lv.compare(make_vm(), live))["metadata"][0]["tenant"] == "other"
    no_meta = LIVE.split("<metadata>", maxsplit=1)[0] + LIVE.split("</metadata>", maxsplit=1)[1]
    assert lv.parse_domain(no_meta)["metadata"] is None


def test_compare_domain_type_only_when_asked():
    assert lv.compare(make_vm(), LIVE.replace("type='qemu'", "type='kvm'", 1)) == []
    want = make_vm(domain_type="qemu")
    live = LIVE.replace("type='qemu'", "type='kvm'", 1)
    assert attributes(lv.compare(want, live)) == {"domain_type": ("kvm", "qemu")}


def test_parse_live_details():
    parsed = lv.parse_domain(LIVE)
    assert parsed["interfaces"][0]["target"] == "vnet3"
    assert parsed["disks"][0]["backing"] == "/var/lib/mcm/images/disk.qcow2"
    assert parsed["uuid"].startswith("6f1c7a30")


CAPS = """<capabilities><host><cpu><arch>x86_64</arch></cpu></host>
<guest><os_type>hvm</os_type><arch name='x86_64'><domain type='qemu'/>{kvm}</arch></guest>
</capabilities>"""


def test_domain_type(tmp_path):
    device = tmp_path / "kvm"
    assert lv.pick_domain_type(CAPS.format(kvm=""), str(device)) == ("qemu", "x86_64")
    assert lv.pick_domain_type(CAPS.format(kvm="<domain type='kvm'/>"), str(device))[0] == "qemu"
    device.write_text("")
    assert lv.pick_domain_type(CAPS.format(kvm="<domain type='kvm'/>"), str(device))[0] == "kvm"
    assert lv.pick_domain_type(CAPS.format(kvm=""), str(device))[0] == "qemu"


def test_qcow2_virtual_size(tmp_path):
    image = tmp_path / "disk.qcow2"
    image.write_bytes(b"QFI\xfb" + b"\0" * 20 + struct.pack(">Q", 64 << 20) + b"\0" * 64)
    assert lv.qcow2_virtual_size(str(image)) == 64 << 20
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\0" * 64)
    assert lv.qcow2_virtual_size(str(raw)) is None


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"name": "v", "bridge": "b"}, "give mac, or metadata"),
        ({"name": "v", "mac": "52:54:00:00:00:01"}, "bridge is required"),
        ({"name": "v", "mac": "nope", "bridge": "b"}, "not a MAC"),
        ({"name": "v", "mac": "01:00:5e:00:00:01", "bridge": "b"}, "multicast"),
        ({"name": "v", "mac": "52:54:00:00:00:01", "bridge": "b", "vcpus": 4, "max_vcpus": 2},
         "max_vcpus"),
        ({"name": "v", "mac": "52:54:00:00:00:01", "bridge": "b", "memory_mib": 0}, "memory_mib"),
        ({"name": "v", "mac": "52:54:00:00:00:01", "bridge": "b", "state": "paused"}, "state"),
        ({"name": "v", "mac": "52:54:00:00:00:01", "bridge": "b",
          "console_log": "/" + "x" * 120 + "/log"}, "longer than"),
    ],
)  # fmt: skip
def test_input_errors_name_the_vm(item, message):
    with pytest.raises(lv.VmError, match=message) as info:
        lv.normalize_vm(item)
    assert "VM v" in str(info.value)


def test_absent_needs_only_the_name():
    vm = lv.normalize_vm({"name": "gone", "state": "absent"})
    assert vm["state"] == "absent" and vm["pool"] == lv.DEFAULT_POOL


def test_metadata_with_only_nones_is_none():
    vm = lv.normalize_vm(
        {"name": "v", "mac": "52:54:00:00:00:01", "bridge": "b",
         "metadata": {"tenant": None, "network": None, "vm": None}}
    )  # fmt: skip
    assert vm["metadata"] is None
    assert "metadata" not in lv.domain_xml(vm)


def test_scope_matches_tenant_exactly():
    assert lv._in_scope({"tenant": "acme"}, ["acme"])
    assert not lv._in_scope({"tenant": "acme-x"}, ["acme"])
    assert not lv._in_scope(None, ["acme"])
    assert lv._in_scope({"tenant": "anyone"}, None)
    assert not lv._in_scope(None, None)  # foreign domains are never ours


# --------------------------------------------------------------------------- shared storage


_FAKE = {"VIR_ERR_NO_DOMAIN": NO_DOMAIN, "VIR_ERR_NO_STORAGE_POOL": NO_STORAGE_POOL,
         "VIR_ERR_NO_STORAGE_VOL": NO_STORAGE_VOL}  # fmt: skip


class _Vol:
    def __init__(self, pool: _Pool, name: str) -> None:
        self.pool, self._name = pool, name

    def name(self) -> str:
        return self._name

    def path(self) -> str:
        return f"{self.pool.target}/{self._name}"

    def info(self) -> list[int]:
        return [0, self.pool.files[self._name], 0]

    def storagePoolLookupByVolume(self) -> _Pool:
        return self.pool

    def delete(self, _flags: int) -> None:
        del self.pool.files[self._name]
        self.pool.known.discard(self._name)


class _Pool:
    """A dir pool on a directory shared by hosts (``files``): it sees new files on refresh."""

    def __init__(self, name: str, target: str, files: dict[str, int]) -> None:
        self._name, self.target, self.files = name, target, files
        self.known: set[str] = set(files)
        self.refreshed = 0

    def name(self) -> str:
        return self._name

    def isActive(self) -> bool:
        return True

    def autostart(self) -> bool:
        return True

    def XMLDesc(self, _flags: int) -> str:
        return (
            f"<pool type='dir'><name>{self._name}</name>"
            f"<target><path>{self.target}</path></target></pool>"
        )

    def refresh(self, _flags: int) -> None:
        self.refreshed += 1
        self.known = set(self.files)

    def info(self) -> list[int]:
        return [2, 10 * 2**30, 0, 10 * 2**30]

    def storageVolLookupByName(self, name: str) -> _Vol:
        if name not in self.known:
            raise LibvirtError(code=NO_STORAGE_VOL)
        return _Vol(self, name)


class _Conn:
    def __init__(self, pool: _Pool) -> None:
        self.pool = pool

    def storagePoolLookupByName(self, name: str) -> _Pool:
        if name != self.pool.name():
            raise LibvirtError(code=NO_STORAGE_POOL)
        return self.pool

    def listAllStoragePools(self, _flags: int) -> list[_Pool]:
        return [self.pool]

    def storageVolLookupByPath(self, path: str) -> _Vol:
        name = path.rsplit("/", 1)[-1]
        if path.rsplit("/", 1)[0] != self.pool.target or name not in self.pool.known:
            raise LibvirtError(code=NO_STORAGE_VOL)
        return _Vol(self.pool, name)

    def lookupByName(self, _name: str) -> None:
        raise LibvirtError(code=NO_DOMAIN)


@pytest.fixture
def shared_pool(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(lv, "libvirt", SimpleNamespace(libvirtError=LibvirtError, **_FAKE))
    files: dict[str, int] = {}  # the shared directory, as every host sees it
    return files, _Pool("mcm-shared", "/var/lib/mcm/shared/vms", files)


def test_a_volume_another_host_created_is_found_not_created_again(shared_pool):
    files, pool = shared_pool
    files["t-v.qcow2"] = 64 * 2**20  # created by another host after this pool was scanned
    changes: list = []
    storage = lv.Storage(_Conn(pool), False, changes)
    vol, created = storage.volume(pool, pool_name="mcm-shared", pool_path=pool.target,
                                  name="t-v.qcow2", capacity_mib=64, fmt="qcow2", image=None,
                                  image_format="qcow2", owner="VM t-v")  # fmt: skip
    assert vol is not None and not created and changes == []


def test_removal_finds_the_shared_volume_by_path_once_and_keeps_a_given_disk(shared_pool):
    files, pool = shared_pool
    conv = lv.Converger(_Conn(pool), False)
    files["t-v.qcow2"] = 64 * 2**20  # not known to this host's pool yet
    vol = conv._volume_by_path(f"{pool.target}/t-v.qcow2")
    assert vol is not None and vol.name() == "t-v.qcow2" and pool.refreshed == 1
    # state absent with the disk given by path: the disk is the user's (another copy uses it)
    conv.remove("t-v", "mcm-shared", keep_disk=True)
    assert "t-v.qcow2" in files and conv.changes == []
    conv.remove("t-v", "mcm-shared")
    assert "t-v.qcow2" not in files
    assert [c["action"] for c in conv.changes] == ["delete"]
    conv.remove("t-v", "mcm-shared")  # deleted by another host: nothing left to do
    assert [c["action"] for c in conv.changes] == ["delete"]
    assert lv.normalize_vm({"name": "t-v", "state": "absent", "disk": "/d"})["keep_disk"]
    assert not lv.normalize_vm({"name": "t-v", "state": "absent"})["keep_disk"]


class _BusyPool:
    """A pool whose refresh fails with libvirt's 'asynchronous jobs running' ``busy`` times."""

    def __init__(self, busy: int, message: str = "internal error: pool 'mcm' has asynchronous "
                                                 "jobs running.") -> None:  # fmt: skip
        self.busy, self.message, self.calls = busy, message, 0

    def refresh(self, _flags: int) -> int:
        self.calls += 1
        if self.calls <= self.busy:
            raise LibvirtError(self.message)
        return 0


def test_refresh_pool_waits_while_a_volume_is_being_built(shared_pool):
    pool = _BusyPool(busy=3)
    lv.refresh_pool(pool, timeout=5)
    assert pool.calls == 4


def test_refresh_pool_gives_up_after_its_timeout_and_raises_other_errors_at_once(shared_pool):
    pool = _BusyPool(busy=1000)
    with pytest.raises(LibvirtError, match="asynchronous jobs"):
        lv.refresh_pool(pool, timeout=0.2)
    assert 1 < pool.calls < 10
    other = _BusyPool(busy=5, message="storage pool 'mcm' is not active")
    with pytest.raises(LibvirtError, match="not active"):
        lv.refresh_pool(other, timeout=5)
    assert other.calls == 1
