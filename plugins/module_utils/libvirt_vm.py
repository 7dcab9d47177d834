# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""VMs with libvirt-python: domain XML, drift detection, storage and the converge loop.

Shared by the vm, vm_volume and vm_info modules (private to the collection).

- ``domain_xml`` renders a domain from a normalized VM dict; ``parse_domain`` reads the
  same attributes back from any domain XML, and ``compare`` lists what differs. Both are
  pure Python (ElementTree) and unit-tested without libvirt.
- Ownership lives in the domain itself: ``<metadata><mcm:vm tenant= network= vm=/>``
  in the namespace ``XMLNS``; only domains carrying it are ever removed by a scope.
- Storage goes through the storage pool API only (a dir pool, qcow2 volumes, an
  optional copy-on-write backing image); libvirt runs qemu-img itself where needed.
- The MAC is an input (naming.vm_mac derives it when tenant and vm are known): a
  redefinition never invents one, so it stays stable across runs and migrations.

libvirt is imported lazily: the pure part works on the controller and in unit tests.
"""

from __future__ import annotations

import glob
import os
import struct
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from .dnsmasq import parse_leases
from .naming import vm_mac

try:
    import libvirt

    HAS_LIBVIRT = True
    LIBVIRT_IMPORT_ERROR: str | None = None
except ImportError as _exc:  # domain_xml/parse_domain/compare work without it
    libvirt = None
    HAS_LIBVIRT = False
    LIBVIRT_IMPORT_ERROR = str(_exc)

__all__ = [
    "DEFAULT_POOL",
    "DEFAULT_POOL_PATH",
    "HAS_LIBVIRT",
    "LEASES_GLOB",
    "STATES",
    "XMLNS",
    "VmError",
    "compare",
    "domain_xml",
    "normalize_vm",
    "parse_domain",
    "run_vm",
    "run_vm_info",
    "run_vm_volume",
]

XMLNS = "https://multicloud.migration/xmlns/vm/1"
XMLNS_PREFIX = "mcm"
DEFAULT_POOL = "mcm"
DEFAULT_POOL_PATH = "/var/lib/mcm/vms"
DEFAULT_MTU = 1450  # VXLAN over a 1500-byte underlay
DEFAULT_MEMORY_MIB = 128
DEFAULT_DISK_MIB = 1024
DEFAULT_SHUTDOWN_TIMEOUT = 60
LEASES_GLOB = "/var/lib/mcm/dhcp/*/leases"
CONNECT_URI = "qemu:///system"
MIB = 1024 * 1024
SUN_PATH_MAX = 107  # sockaddr_un.sun_path minus the trailing NUL

STATES = ("merged", "overridden", "deleted", "gathered")
VM_STATES = ("running", "shutoff", "absent")
VOLUME_STATES = ("merged", "deleted", "gathered")
METADATA_KEYS = ("tenant", "network", "vm")
BOOT_KEYS = ("kernel", "initrd", "cmdline")
# Attributes that the API changes in place; everything else needs a redefinition.
IN_PLACE = ("memory_mib", "vcpus", "max_vcpus")

_UNITS = {
    "b": 1,
    "bytes": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": MIB,
    "mib": MIB,
    "mb": 1000**2,
    "g": 1024**3,
    "gib": 1024**3,
    "gb": 1000**3,
    "t": 1024**4,
    "tib": 1024**4,
    "tb": 1000**4,
}

_DOMAIN_STATES = {
    0: "nostate",
    1: "running",
    2: "blocked",
    3: "paused",
    4: "shutdown",
    5: "shutoff",
    6: "crashed",
    7: "pmsuspended",
}


class VmError(Exception):
    """A VM could not be converged; ``changes`` holds what was done before the failure."""

    def __init__(self, message: str, changes: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.changes: list[dict[str, Any]] = changes if changes is not None else []


# --------------------------------------------------------------------------- input


# Disk formats of a VM's own volume, which is named after the format (<name>.<format>): a
# VM is created with qcow2; a migration may convert it (vm_migrate disk_format).
VOLUME_FORMATS = ("qcow2", "raw", "vmdk", "vhdx")


def volume_name(vm_name: str, fmt: str = "qcow2") -> str:
    """Name of the volume the vm module owns for a VM (<domain name>.<format>, .qcow2 when
    created by it)."""
    return f"{vm_name}.{fmt}"


def own_volume_names(vm_name: str) -> tuple[str, ...]:
    """Every name a VM's own volume may have (in any of VOLUME_FORMATS)."""
    return tuple(volume_name(vm_name, fmt) for fmt in VOLUME_FORMATS)


def console_socket(vm: Mapping[str, Any]) -> str | None:
    """Unix socket of the serial console, next to its log: <dir of console_log>/<name>.console."""
    log = vm.get("console_log")
    if not log:
        return None
    return os.path.join(os.path.dirname(log), f"{vm['name']}.console")


def normalize_vm(item: Mapping[str, Any]) -> dict[str, Any]:
    """A VM dict with every default filled in; raises VmError naming the VM and the field."""
    name = item.get("name")
    if not name or not isinstance(name, str):
        raise VmError("every VM needs a name (the libvirt domain name)")
    vm: dict[str, Any] = {"name": name}
    vm["state"] = item.get("state") or "running"
    if vm["state"] not in VM_STATES:
        raise VmError(f"VM {name}: state must be one of {', '.join(VM_STATES)}")
    vm["pool"] = item.get("pool") or DEFAULT_POOL
    vm["pool_path"] = item.get("pool_path") or DEFAULT_POOL_PATH
    vm["shutdown_timeout"] = _int(item, "shutdown_timeout", DEFAULT_SHUTDOWN_TIMEOUT, 0)
    metadata = item.get("metadata")
    if metadata and any(v is not None for v in metadata.values()):
        unknown = set(metadata) - set(METADATA_KEYS)
        if unknown:
            raise VmError(f"VM {name}: unknown metadata keys {sorted(unknown)}")
        vm["metadata"] = {k: metadata.get(k) for k in METADATA_KEYS}
    else:
        vm["metadata"] = None
    if vm["state"] == "absent":
        # A disk given by path is the user's: removing the VM leaves it (shared storage).
        vm["keep_disk"] = bool(item.get("disk"))
        return vm
    vm["memory_mib"] = _int(item, "memory_mib", DEFAULT_MEMORY_MIB, 1)
    vm["vcpus"] = _int(item, "vcpus", 1, 1)
    vm["max_vcpus"] = _int(item, "max_vcpus", vm["vcpus"], 1)
    if vm["max_vcpus"] < vm["vcpus"]:
        raise VmError(f"VM {name}: max_vcpus ({vm['max_vcpus']}) is below vcpus ({vm['vcpus']})")
    mac = item.get("mac")
    if not mac:
        if not (vm["metadata"] and vm["metadata"]["tenant"] and vm["metadata"]["vm"]):
            raise VmError(f"VM {name}: give mac, or metadata with tenant and vm to derive it")
        mac = vm_mac(vm["metadata"]["tenant"], vm["metadata"]["vm"])
    vm["mac"] = _mac(name, mac)
    if not item.get("bridge"):
        raise VmError(f"VM {name}: bridge is required")
    vm["bridge"] = item["bridge"]
    vm["mtu"] = _int(item, "mtu", DEFAULT_MTU, 68)
    # No disk path given: the module owns the volume <name>.<disk_format> in the pool.
    vm["managed_volume"] = not item.get("disk")
    vm["disk_format"] = item.get("disk_format") or "qcow2"
    if vm["managed_volume"] and vm["disk_format"] not in VOLUME_FORMATS:
        raise VmError(f"VM {name}: disk_format of its own volume must be one of "
                      f"{', '.join(VOLUME_FORMATS)}")  # fmt: skip
    vm["disk"] = item.get("disk") or os.path.join(
        vm["pool_path"], volume_name(name, vm["disk_format"])
    )
    vm["disk_mib"] = _int(item, "disk_mib", DEFAULT_DISK_MIB, 1)
    vm["image"] = item.get("image") or None
    vm["image_format"] = item.get("image_format") or "qcow2"
    boot = item.get("boot")
    if boot:
        if not boot.get("kernel"):
            raise VmError(f"VM {name}: boot needs a kernel (direct kernel boot)")
        vm["boot"] = {k: boot.get(k) or None for k in BOOT_KEYS}
    else:
        vm["boot"] = None
    vm["console_log"] = item.get("console_log") or None
    sock = console_socket(vm)
    if sock and len(sock.encode()) > SUN_PATH_MAX:
        raise VmError(f"VM {name}: console socket path {sock} is longer than {SUN_PATH_MAX} bytes")
    vm["autostart"] = bool(item.get("autostart"))
    vm["domain_type"] = item.get("domain_type") or None
    vm["uuid"] = item.get("uuid") or None
    return vm


def _int(item: Mapping[str, Any], key: str, default: int, minimum: int) -> int:
    value = item.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise VmError(f"VM {item.get('name')}: {key} must be an integer >= {minimum}")
    return value


def _mac(name: str, mac: str) -> str:
    parts = mac.lower().split(":")
    if len(parts) != 6 or not all(
        len(p) == 2 and all(c in "0123456789abcdef" for c in p) for p in parts
    ):
        raise VmError(f"VM {name}: {mac!r} is not a MAC address")
    if int(parts[0], 16) & 1:
        raise VmError(f"VM {name}: {mac} is a multicast MAC address")
    return ":".join(parts)


# --------------------------------------------------------------------------- XML


def domain_xml(vm: Mapping[str, Any], domain_type: str = "qemu", arch: str = "x86_64") -> str:
    """The domain definition of a normalized VM (see normalize_vm)."""
    q = quoteattr
    name = vm["name"]
    dtype = vm.get("domain_type") or domain_type
    machine = " machine='pc'" if arch in ("x86_64", "i686") else ""
    lines = [f"<domain type={q(dtype)}>", f"  <name>{escape(name)}</name>"]
    if vm.get("uuid"):
        lines.append(f"  <uuid>{escape(vm['uuid'])}</uuid>")
    metadata = vm.get("metadata")
    if metadata:
        attrs = "".join(
            f" {k}={q(str(metadata[k]))}" for k in METADATA_KEYS if metadata.get(k) is not None
        )
        lines += [
            "  <metadata>",
            f"    <{XMLNS_PREFIX}:vm xmlns:{XMLNS_PREFIX}={q(XMLNS)}{attrs}/>",
            "  </metadata>",
        ]
    memory, vcpus = vm.get("memory_mib", DEFAULT_MEMORY_MIB), vm.get("vcpus", 1)
    max_vcpus = vm.get("max_vcpus") or vcpus
    current = f" current='{vcpus}'" if vcpus != max_vcpus else ""
    lines += [
        f"  <memory unit='MiB'>{memory}</memory>",
        f"  <currentMemory unit='MiB'>{memory}</currentMemory>",
        f"  <vcpu placement='static'{current}>{max_vcpus}</vcpu>",
        "  <os>",
        f"    <type arch={q(arch)}{machine}>hvm</type>",
    ]
    boot = vm.get("boot")
    if boot:
        lines.append(f"    <kernel>{escape(boot['kernel'])}</kernel>")
        if boot.get("initrd"):
            lines.append(f"    <initrd>{escape(boot['initrd'])}</initrd>")
        if boot.get("cmdline"):
            lines.append(f"    <cmdline>{escape(boot['cmdline'])}</cmdline>")
    else:
        lines.append("    <boot dev='hd'/>")
    lines += [
        "  </os>",
        "  <features><acpi/><apic/></features>",
        "  <on_poweroff>destroy</on_poweroff>",
        "  <on_reboot>restart</on_reboot>",
        "  <on_crash>destroy</on_crash>",
        "  <devices>",
        "    <disk type='file' device='disk'>",
        f"      <driver name='qemu' type={q(vm.get('disk_format') or 'qcow2')}/>",
        f"      <source file={q(vm['disk'])}/>",
        "      <target dev='vda' bus='virtio'/>",
        "    </disk>",
        "    <interface type='bridge'>",
        f"      <mac address={q(vm['mac'])}/>",
        f"      <source bridge={q(vm['bridge'])}/>",
        "      <model type='virtio'/>",
        f"      <mtu size='{vm.get('mtu') or DEFAULT_MTU}'/>",
        "    </interface>",
    ]
    sock = console_socket(vm)
    if sock:
        lines += [
            "    <serial type='unix'>",
            f"      <source mode='bind' path={q(sock)}/>",
            f"      <log file={q(vm['console_log'])} append='on'/>",
            "      <target port='0'/>",
            "    </serial>",
        ]
    else:
        lines += ["    <serial type='pty'>", "      <target port='0'/>", "    </serial>"]
    lines += ["    <memballoon model='none'/>", "  </devices>", "</domain>"]
    return "\n".join(lines) + "\n"


def _size(elem: ET.Element | None, default_unit: str = "KiB") -> int | None:
    """A libvirt size element (value + unit attribute) in bytes."""
    if elem is None or not (elem.text or "").strip():
        return None
    unit = (elem.get("unit") or default_unit).lower()
    return int(elem.text.strip()) * _UNITS[unit]


def _mib(value: int | None) -> int | None:
    return None if value is None else value // MIB


def parse_domain(xml: str) -> dict[str, Any]:
    """The attributes we manage, read from a domain XML (ours or anybody's).

    ``disks`` and ``interfaces`` list every device; ``mac``/``bridge``/``mtu`` and
    ``disk``/``disk_format`` are those of the first NIC and of the disk on vda (or the
    first disk), the ones ``domain_xml`` writes.
    """
    root = ET.fromstring(xml)
    memory = _mib(_size(root.find("memory")))
    current = _mib(_size(root.find("currentMemory")))
    vcpu = root.find("vcpu")
    max_vcpus = int(vcpu.text.strip()) if vcpu is not None and vcpu.text else None
    vcpus = int(vcpu.get("current")) if vcpu is not None and vcpu.get("current") else max_vcpus
    os_elem = root.find("os")
    boot = None
    if os_elem is not None and os_elem.find("kernel") is not None:
        boot = {k: (os_elem.findtext(k) or None) for k in BOOT_KEYS}
    interfaces = []
    for nic in root.findall("./devices/interface"):
        mtu = nic.find("mtu")
        interfaces.append(
            {
                "type": nic.get("type"),
                "mac": (nic.find("mac").get("address") or "").lower()
                if nic.find("mac") is not None
                else None,
                "bridge": nic.find("source").get("bridge")
                if nic.find("source") is not None
                else None,
                "mtu": int(mtu.get("size")) if mtu is not None and mtu.get("size") else None,
                "model": nic.find("model").get("type") if nic.find("model") is not None else None,
                "target": nic.find("target").get("dev") if nic.find("target") is not None else None,
            }
        )
    disks = []
    for disk in root.findall("./devices/disk"):
        source, target = disk.find("source"), disk.find("target")
        driver, backing = disk.find("driver"), disk.find("backingStore/source")
        disks.append(
            {
                "device": disk.get("device"),
                "target": target.get("dev") if target is not None else None,
                "bus": target.get("bus") if target is not None else None,
                "path": (source.get("file") or source.get("dev") or source.get("volume"))
                if source is not None
                else None,
                "format": driver.get("type") if driver is not None else None,
                "backing": backing.get("file") if backing is not None else None,
            }
        )
    main_disk = next(
        (d for d in disks if d["target"] == "vda"),
        next((d for d in disks if d["device"] == "disk"), None),
    )
    nic0 = interfaces[0] if interfaces else {}
    console = None
    serial = root.find("./devices/serial")
    if serial is not None and serial.get("type") == "unix":
        source, log = serial.find("source"), serial.find("log")
        console = {
            "socket": source.get("path") if source is not None else None,
            "log": log.get("file") if log is not None else None,
        }
    metadata = None
    ours = root.find(f"./metadata/{{{XMLNS}}}vm")
    if ours is not None:
        metadata = {k: ours.get(k) for k in METADATA_KEYS}
    return {
        "name": root.findtext("name"),
        "uuid": root.findtext("uuid"),
        "domain_type": root.get("type"),
        "memory_mib": memory,
        "current_memory_mib": current if current is not None else memory,
        "vcpus": vcpus,
        "max_vcpus": max_vcpus,
        "mac": nic0.get("mac"),
        "bridge": nic0.get("bridge"),
        "mtu": nic0.get("mtu"),
        "disk": main_disk["path"] if main_disk else None,
        "disk_format": main_disk["format"] if main_disk else None,
        "boot": boot,
        "console": console,
        "metadata": metadata,
        "interfaces": interfaces,
        "disks": disks,
    }


def managed_view(vm: Mapping[str, Any]) -> dict[str, Any]:
    """The compared attributes of a normalized VM, in parse_domain's shape."""
    sock = console_socket(vm)
    return {
        "memory_mib": vm["memory_mib"],
        "vcpus": vm["vcpus"],
        "max_vcpus": vm["max_vcpus"],
        "mac": vm["mac"],
        "bridge": vm["bridge"],
        "mtu": vm["mtu"],
        "disk": vm["disk"],
        "disk_format": vm["disk_format"],
        "boot": vm["boot"],
        "console": {"socket": sock, "log": vm["console_log"]} if sock else None,
        "metadata": vm["metadata"],
    }


def compare(want: Mapping[str, Any], live_xml: str) -> list[dict[str, Any]]:
    """Every managed attribute of ``want`` (normalized) that differs in ``live_xml``.

    Each difference is ``{attribute, from, to}``; an empty list means nothing to do.
    ``domain_type`` is compared only when ``want`` names one.
    """
    have = parse_domain(live_xml)
    wanted = managed_view(want)
    if want.get("domain_type"):
        wanted["domain_type"] = want["domain_type"]
    diffs = []
    for key, value in wanted.items():
        current = have.get(key)
        if key == "memory_mib" and current == value:
            current = have["current_memory_mib"]  # maximum right, current lowered
        if current != value:
            diffs.append({"attribute": key, "from": current, "to": value})
    return diffs


def pick_domain_type(capabilities_xml: str, kvm_device: str = "/dev/kvm") -> tuple[str, str]:
    """(domain type, guest arch): ``kvm`` when the host offers it and /dev/kvm is usable."""
    root = ET.fromstring(capabilities_xml)
    arch = root.findtext("./host/cpu/arch") or "x86_64"
    offers_kvm = any(
        guest.find(f"./arch[@name='{arch}']/domain[@type='kvm']") is not None
        for guest in root.findall("guest")
    )
    usable = os.path.exists(kvm_device) and os.access(kvm_device, os.R_OK | os.W_OK)
    return ("kvm" if offers_kvm and usable else "qemu"), arch


def qcow2_virtual_size(path: str) -> int | None:
    """Virtual size in bytes from a qcow2 header (magic QFI\\xfb, size at offset 24)."""
    with open(path, "rb") as handle:
        header = handle.read(32)
    if len(header) < 32 or header[:4] != b"QFI\xfb":
        return None
    return struct.unpack(">Q", header[24:32])[0]


def _attribute_text(record: Mapping[str, Any] | None) -> str:
    if not record:
        return ""
    lines = []
    for key in sorted(record):
        value = record[key]
        if isinstance(value, Mapping):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
            value = "{" + value + "}"
        lines.append(f"{key}: {value}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- libvirt


def _lv_error_code(exc: Exception) -> int | None:
    getter = getattr(exc, "get_error_code", None)
    return getter() if getter else None


def _flag(name: str) -> int:
    return getattr(libvirt, name, 0)


def connect(uri: str = CONNECT_URI) -> Any:
    if not HAS_LIBVIRT:
        raise VmError(f"libvirt-python is required on the managed host: {LIBVIRT_IMPORT_ERROR}")
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise VmError(f"cannot connect to {uri}: {exc}") from exc


def lookup_domain(conn: Any, name: str) -> Any | None:
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if _lv_error_code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def lookup_pool(conn: Any, name: str) -> Any | None:
    try:
        return conn.storagePoolLookupByName(name)
    except libvirt.libvirtError as exc:
        if _lv_error_code(exc) == libvirt.VIR_ERR_NO_STORAGE_POOL:
            return None
        raise


def refresh_pool(pool: Any, timeout: float = 60.0) -> None:
    """``pool.refresh``, waiting while the pool has asynchronous jobs running.

    libvirt refuses to refresh a pool while a volume of it is being built (another VM's
    disk created at the same moment: two VMs migrating to one host in parallel); such a
    build takes milliseconds to seconds, so this retries until ``timeout`` and then
    raises libvirt's error."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        try:
            pool.refresh(0)
            return
        except libvirt.libvirtError as exc:
            busy = "asynchronous jobs running" in str(exc)
            if not busy or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def lookup_volume(pool: Any | None, name: str) -> Any | None:
    if pool is None or not pool.isActive():
        return None
    try:
        return pool.storageVolLookupByName(name)
    except libvirt.libvirtError as exc:
        if _lv_error_code(exc) == libvirt.VIR_ERR_NO_STORAGE_VOL:
            return None
        raise


def domain_state(dom: Any) -> str:
    return _DOMAIN_STATES.get(dom.state()[0], "unknown")


def _pool_xml(name: str, path: str) -> str:
    return (
        f"<pool type='dir'><name>{escape(name)}</name>"
        f"<target><path>{escape(path)}</path>"
        "<permissions><mode>0711</mode></permissions></target></pool>"
    )


def _volume_xml(
    name: str, capacity_mib: int, fmt: str, image: str | None, image_format: str
) -> str:
    backing = ""
    if image:
        backing = (
            f"<backingStore><path>{escape(image)}</path>"
            f"<format type={quoteattr(image_format)}/></backingStore>"
        )
    return (
        f"<volume><name>{escape(name)}</name>"
        f"<capacity unit='MiB'>{capacity_mib}</capacity>"
        f"<allocation unit='MiB'>0</allocation>"
        f"<target><format type={quoteattr(fmt)}/>"
        "<permissions><mode>0600</mode></permissions></target>"
        f"{backing}</volume>"
    )


def volume_record(vol: Any, pool_name: str) -> dict[str, Any]:
    root = ET.fromstring(vol.XMLDesc(0))
    _kind, capacity, allocation = vol.info()
    fmt = root.find("./target/format")
    backing = root.findtext("./backingStore/path")
    return {
        "name": vol.name(),
        "pool": pool_name,
        "path": vol.path(),
        "capacity_mib": capacity // MIB,
        "allocation_mib": round(allocation / MIB, 1),
        "format": fmt.get("type") if fmt is not None else None,
        "image": backing or None,
    }


class Storage:
    """Pools and volumes through the storage API; records what it created for rollback."""

    def __init__(self, conn: Any, check_mode: bool, changes: list[dict[str, Any]]) -> None:
        self.conn = conn
        self.check_mode = check_mode
        self.changes = changes

    def pool(self, name: str, path: str, owner: str) -> Any | None:
        """The pool, created, built, started and autostarted if missing (None in check mode)."""
        pool = lookup_pool(self.conn, name)
        if pool is not None:
            if not pool.isActive():
                self._change("start", "pool", name, owner, {"path": path})
                if not self.check_mode:
                    pool.create(0)
            if not pool.autostart():
                self._change(
                    "update", "pool", name, owner, {"autostart": {"from": False, "to": True}}
                )
                if not self.check_mode:
                    pool.setAutostart(1)
            return pool
        self._change("create", "pool", name, owner, {"path": path})
        if self.check_mode:
            return None
        try:
            pool = self.conn.storagePoolDefineXML(_pool_xml(name, path), 0)
            pool.build(0)
            pool.create(0)
            pool.setAutostart(1)
        except libvirt.libvirtError as exc:
            # Another run on this host may have created it at the same moment.
            pool = lookup_pool(self.conn, name)
            if pool is None or not pool.isActive():
                message = f"{owner}: cannot create storage pool {name} at {path}: {exc}"
                raise VmError(message) from exc
        return pool

    def room_bytes(self, pool: Any) -> int | None:
        if pool is None or not pool.isActive():
            return None
        refresh_pool(pool)
        return pool.info()[3]

    def volume(
        self,
        pool: Any | None,
        *,
        pool_name: str,
        pool_path: str,
        name: str,
        capacity_mib: int,
        fmt: str,
        image: str | None,
        image_format: str,
        owner: str,
    ) -> tuple[Any | None, bool]:
        """Create the volume if missing, grow it if smaller; (volume, created now)."""
        if image:
            if not os.path.isfile(image):
                raise VmError(f"{owner}: image {image} is missing")
            if image_format == "qcow2":
                size = qcow2_virtual_size(image)
                if size is not None and capacity_mib * MIB < size:
                    raise VmError(
                        f"{owner}: disk of {capacity_mib} MiB is smaller than its "
                        f"image {image} ({size // MIB} MiB)"
                    )
        # Refreshed first: in a pool on shared storage another host may have created the
        # volume since this host last looked.
        room = self.room_bytes(pool)
        vol = lookup_volume(pool, name)
        if vol is None:
            if room is not None and room < capacity_mib * MIB:
                raise VmError(
                    f"{owner}: storage pool {pool_name} has no room for a "
                    f"{capacity_mib} MiB volume ({room // MIB} MiB available)"
                )
            details = {
                "capacity_mib": capacity_mib,
                "format": fmt,
                "image": image,
                "path": os.path.join(pool_path, name),
            }
            self._change("create", "volume", name, owner, details)
            if self.check_mode or pool is None:
                return None, True
            try:
                vol = pool.createXML(_volume_xml(name, capacity_mib, fmt, image, image_format), 0)
            except libvirt.libvirtError as exc:
                raise VmError(
                    f"{owner}: cannot create volume {name} in pool {pool_name}: {exc}"
                ) from exc
            return vol, True
        capacity = vol.info()[1]
        if capacity > capacity_mib * MIB:
            raise VmError(
                f"{owner}: volume {name} is {capacity // MIB} MiB, more than the "
                f"{capacity_mib} MiB asked for; volumes are never shrunk"
            )
        if capacity < capacity_mib * MIB:
            grow = capacity_mib * MIB - capacity
            if room is not None and room < grow:
                raise VmError(
                    f"{owner}: storage pool {pool_name} has no room to grow volume "
                    f"{name} by {grow // MIB} MiB ({room // MIB} MiB available)"
                )
            self._change(
                "update",
                "volume",
                name,
                owner,
                {"capacity_mib": {"from": capacity // MIB, "to": capacity_mib}},
            )
            if not self.check_mode:
                self._grow(vol, capacity_mib * MIB, owner)
        return vol, False

    def _grow(self, vol: Any, size: int, owner: str) -> None:
        # A disk in use by a running domain is grown through qemu, never under its feet.
        path = vol.path()
        for dom in self.conn.listAllDomains(_flag("VIR_CONNECT_LIST_DOMAINS_ACTIVE")):
            for disk in parse_domain(dom.XMLDesc(0))["disks"]:
                if disk["path"] == path and disk["target"]:
                    dom.blockResize(disk["target"], size, _flag("VIR_DOMAIN_BLOCK_RESIZE_BYTES"))
                    return
        try:
            vol.resize(size, 0)
        except libvirt.libvirtError as exc:
            raise VmError(f"{owner}: cannot grow volume {vol.name()}: {exc}") from exc

    def delete(self, vol: Any, pool_name: str, owner: str) -> None:
        self._change("delete", "volume", vol.name(), owner, {"pool": pool_name, "path": vol.path()})
        if not self.check_mode:
            vol.delete(0)

    def _change(
        self, action: str, obj: str, name: str, owner: str, details: dict[str, Any]
    ) -> None:
        self.changes.append(
            {"action": action, "object": obj, "name": name, "vm": owner, "details": details}
        )


# --------------------------------------------------------------------------- reading


def _leases(paths: Iterable[str] | None) -> list[dict[str, Any]]:
    """Leases of the given dnsmasq lease files (default: every /var/lib/mcm/dhcp/*/leases)."""
    files = list(paths) if paths else sorted(glob.glob(LEASES_GLOB))
    leases = []
    for path in files:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                text = handle.read()
        except OSError:
            continue
        for lease in parse_leases(text):
            lease["file"] = path
            leases.append(lease)
    return leases


def describe(dom: Any, leases: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """What vm_info returns for one domain (live XML when it runs)."""
    parsed = parse_domain(dom.XMLDesc(0))
    state = domain_state(dom)
    record: dict[str, Any] = {
        "name": dom.name(),
        "uuid": dom.UUIDString(),
        "state": state,
        "active": bool(dom.isActive()),
        "persistent": bool(dom.isPersistent()),
        "autostart": bool(dom.autostart()) if dom.isPersistent() else False,
        "domain_type": parsed["domain_type"],
        "memory_mib": parsed["memory_mib"],
        "current_memory_mib": parsed["current_memory_mib"],
        "vcpus": parsed["vcpus"],
        "max_vcpus": parsed["max_vcpus"],
        "boot": parsed["boot"],
        "console": parsed["console"],
        "metadata": parsed["metadata"],
        "interfaces": parsed["interfaces"],
        "disks": parsed["disks"],
    }
    all_leases = []
    for nic in record["interfaces"]:
        nic["leases"] = [dict(x) for x in leases or [] if x["mac"] == nic["mac"]]
        all_leases.extend(nic["leases"])
    record["leases"] = all_leases
    record["ip"] = next((x["ip"] for x in all_leases), None)
    for disk in record["disks"]:
        disk["capacity_mib"] = None
        if disk["target"] and disk["path"]:
            try:
                disk["capacity_mib"] = dom.blockInfo(disk["target"], 0)[0] // MIB
            except libvirt.libvirtError:
                pass  # an unreadable or missing image: report the disk without its size
    return record


def _in_scope(metadata: Mapping[str, Any] | None, scope: Iterable[str] | None) -> bool:
    """Ours (carries our metadata) and, with a scope, of one of the scope's tenants."""
    if not metadata:
        return False
    scopes = list(scope or [])
    return not scopes or metadata.get("tenant") in scopes


def run_vm_info(params: Mapping[str, Any]) -> dict[str, Any]:
    conn = connect()
    try:
        names = set(params.get("name") or [])
        scope = params.get("scope")
        leases = _leases(params.get("lease_files"))
        vms = []
        for dom in sorted(conn.listAllDomains(0), key=lambda d: d.name()):
            if names and dom.name() not in names:
                continue
            record = describe(dom, leases)
            if scope and not _in_scope(record["metadata"], scope):
                continue
            vms.append(record)
        return {"changed": False, "vms": vms, "missing": sorted(names - {v["name"] for v in vms})}
    except libvirt.libvirtError as exc:
        raise VmError(str(exc)) from exc
    finally:
        conn.close()


# --------------------------------------------------------------------------- converging


class Converger:
    """One vm module call: every VM in order, with rollback of what a failed VM created."""

    def __init__(
        self, conn: Any, check_mode: bool, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.conn = conn
        self.check_mode = check_mode
        self.sleep = sleep
        self.changes: list[dict[str, Any]] = []
        self.storage = Storage(conn, check_mode, self.changes)
        self.restart_needed: dict[str, list[str]] = {}
        self.warnings: list[str] = []
        self.timings: dict[str, dict[str, float]] = {}
        self._dtype: tuple[str, str] | None = None
        self._memory_started = 0  # MiB started by this call, not yet visible as used

    def domain_type(self) -> tuple[str, str]:
        if self._dtype is None:
            self._dtype = pick_domain_type(self.conn.getCapabilities())
        return self._dtype

    def change(self, action: str, name: str, details: dict[str, Any] | None = None) -> None:
        self.changes.append(
            {
                "action": action,
                "object": "domain",
                "name": name,
                "vm": name,
                "details": details or {},
            }
        )

    def timed(self, name: str, step: str, started: float) -> None:
        self.timings.setdefault(name, {})[step] = round(time.monotonic() - started, 3)

    # ------------------------------------------------------------------ one VM
    def converge(self, vm: dict[str, Any]) -> None:
        if vm["state"] == "absent":
            self.remove(vm["name"], vm["pool"], keep_disk=vm.get("keep_disk", False))
            return
        created: dict[str, Any] = {}
        try:
            self._converge(vm, created)
        except VmError:
            self._rollback(vm["name"], created)
            raise
        except libvirt.libvirtError as exc:
            self._rollback(vm["name"], created)
            raise VmError(f"VM {vm['name']}: {exc}") from exc

    def _rollback(self, name: str, created: Mapping[str, Any]) -> None:
        """Remove the domain and the volume this call created for a VM that failed."""
        dom = created.get("domain")
        if dom is not None:
            try:
                if dom.isActive():
                    dom.destroy()
                dom.undefineFlags(self._undefine_flags())
            except libvirt.libvirtError as exc:
                self.warnings.append(f"VM {name}: rollback could not undefine it: {exc}")
        vol = created.get("volume")
        if vol is not None:
            try:
                vol.delete(0)
            except libvirt.libvirtError as exc:
                self.warnings.append(f"VM {name}: rollback could not delete its volume: {exc}")

    def _converge(self, vm: dict[str, Any], created: dict[str, Any]) -> None:
        name = vm["name"]
        label = f"VM {name}"
        total_mib = self.conn.getInfo()[1]
        if vm["memory_mib"] > total_mib:
            raise VmError(
                f"{label}: needs {vm['memory_mib']} MiB of memory, the host has only "
                f"{total_mib} MiB in total"
            )
        for key in ("kernel", "initrd"):
            path = (vm["boot"] or {}).get(key)
            if path and not os.path.isfile(path):
                raise VmError(f"{label}: boot {key} {path} is missing")
        dom = lookup_domain(self.conn, name)
        if vm["managed_volume"]:
            pool = self.storage.pool(vm["pool"], vm["pool_path"], label)
            started = time.monotonic()
            if (
                vm["image"]
                and vm["disk_format"] != "qcow2"
                and not lookup_volume(pool, volume_name(name, vm["disk_format"]))
            ):
                raise VmError(
                    f"{label}: a new {vm['disk_format']} volume cannot be an overlay of the "
                    f"image {vm['image']}: only qcow2 has a backing image"
                )
            vol, new = self.storage.volume(
                pool,
                pool_name=vm["pool"],
                pool_path=vm["pool_path"],
                name=volume_name(name, vm["disk_format"]),
                capacity_mib=vm["disk_mib"],
                fmt=vm["disk_format"],
                image=vm["image"],
                image_format=vm["image_format"],
                owner=label,
            )
            if new and vol is not None:
                created["volume"] = vol
                self.timed(name, "volume_create", started)
            if vol is not None:
                vm["disk"] = vol.path()
        elif not os.path.exists(vm["disk"]):
            raise VmError(f"{label}: disk {vm['disk']} is missing")
        if vm["console_log"] and not self.check_mode:
            os.makedirs(os.path.dirname(vm["console_log"]), exist_ok=True)
        dtype, arch = self.domain_type()
        if dom is None:
            self.change("define", name, {"xml": domain_xml(vm, dtype, arch)})
            if not self.check_mode:
                started = time.monotonic()
                dom = self.conn.defineXML(domain_xml(vm, dtype, arch))
                created["domain"] = dom
                self.timed(name, "define", started)
        else:
            self._update(vm, dom, dtype, arch)
        if dom is not None and bool(dom.autostart()) != vm["autostart"]:
            self.change(
                "update", name, {"autostart": {"from": not vm["autostart"], "to": vm["autostart"]}}
            )
            if not self.check_mode:
                dom.setAutostart(int(vm["autostart"]))
        active = bool(dom.isActive()) if dom is not None else False
        if vm["state"] == "running" and not active:
            self._start(vm, dom)
        elif vm["state"] == "shutoff" and active:
            self._stop(vm, dom)
        if dom is not None and not self.check_mode and dom.isActive():
            pending = compare(vm, dom.XMLDesc(0))
            if pending:
                attrs = [d["attribute"] for d in pending]
                self.restart_needed[name] = attrs
                self.warnings.append(
                    f"VM {name}: the running domain still has the old "
                    f"{', '.join(attrs)}; restart it to apply"
                )

    def _update(self, vm: dict[str, Any], dom: Any, dtype: str, arch: str) -> None:
        name = vm["name"]
        want = dict(vm)
        want["domain_type"] = vm["domain_type"] or dtype
        inactive = dom.XMLDesc(_flag("VIR_DOMAIN_XML_INACTIVE"))
        diffs = compare(want, inactive)
        if not diffs:
            return
        details = {d["attribute"]: {"from": d["from"], "to": d["to"]} for d in diffs}
        in_place = all(d["attribute"] in IN_PLACE for d in diffs)
        self.change("update" if in_place else "redefine", name, details)
        if self.check_mode:
            return
        active = bool(dom.isActive())
        if in_place:
            self._update_in_place(dom, vm, details, active)
        else:
            want["uuid"] = dom.UUIDString()  # same domain: a redefinition keeps its identity
            self.conn.defineXML(domain_xml(want, dtype, arch))
            if active and "vcpus" in details:
                self._live_vcpus(dom, vm["vcpus"])
        if active and "metadata" in details and vm["metadata"]:
            # Ownership is read from the live XML too (vm_info): no restart needed for it.
            dom.setMetadata(
                _flag("VIR_DOMAIN_METADATA_ELEMENT"),
                domain_xml_metadata(vm["metadata"]),
                XMLNS_PREFIX,
                XMLNS,
                _flag("VIR_DOMAIN_AFFECT_LIVE"),
            )

    def _update_in_place(
        self, dom: Any, vm: Mapping[str, Any], details: Mapping[str, Any], active: bool
    ) -> None:
        config = _flag("VIR_DOMAIN_AFFECT_CONFIG")
        if "max_vcpus" in details:
            dom.setVcpusFlags(vm["max_vcpus"], config | _flag("VIR_DOMAIN_VCPU_MAXIMUM"))
        if "vcpus" in details or "max_vcpus" in details:
            dom.setVcpusFlags(vm["vcpus"], config)
            if active:
                self._live_vcpus(dom, vm["vcpus"])
        if "memory_mib" in details:
            kib = vm["memory_mib"] * 1024
            # Without a balloon device the memory of a running guest cannot change: config
            # only, and the result says a restart is needed.
            dom.setMemoryFlags(kib, config | _flag("VIR_DOMAIN_MEM_MAXIMUM"))
            dom.setMemoryFlags(kib, config)

    def _live_vcpus(self, dom: Any, vcpus: int) -> None:
        try:
            dom.setVcpusFlags(vcpus, _flag("VIR_DOMAIN_AFFECT_LIVE"))
        except libvirt.libvirtError as exc:
            self.warnings.append(f"VM {dom.name()}: vCPUs not changed live ({exc})")

    def _start(self, vm: Mapping[str, Any], dom: Any | None) -> None:
        name = vm["name"]
        free_mib = self.conn.getFreeMemory() // MIB - self._memory_started
        if vm["memory_mib"] > free_mib:
            raise VmError(
                f"VM {name}: needs {vm['memory_mib']} MiB of memory to start, the host "
                f"has {max(free_mib, 0)} MiB free"
            )
        self.change("start", name, {"memory_mib": vm["memory_mib"]})
        if self.check_mode or dom is None:
            return
        if vm["console_log"]:
            sock = console_socket(vm)
            if sock and os.path.exists(sock):
                os.unlink(sock)  # a stale socket of an earlier run would fail the bind
        started = time.monotonic()
        dom.create()
        self._memory_started += vm["memory_mib"]
        self.timed(name, "start", started)

    def _stop(self, vm: Mapping[str, Any], dom: Any) -> None:
        name = vm["name"]
        details: dict[str, Any] = {"timeout": vm["shutdown_timeout"]}
        self.changes.append(
            {"action": "stop", "object": "domain", "name": name, "vm": name, "details": details}
        )
        if self.check_mode:
            return
        started = time.monotonic()
        details["graceful"] = self._shutdown(dom, vm["shutdown_timeout"])
        details["seconds"] = round(time.monotonic() - started, 2)

    def _shutdown(self, dom: Any, timeout: float) -> bool:
        """ACPI shutdown, bounded wait, then destroy; True if the guest went down by itself."""
        if timeout > 0:
            try:
                dom.shutdown()
            except libvirt.libvirtError as exc:
                self.warnings.append(f"VM {dom.name()}: graceful shutdown refused ({exc})")
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if not dom.isActive():
                    return True
                self.sleep(0.5)
        if dom.isActive():
            try:
                dom.destroy()
            except libvirt.libvirtError as exc:
                if dom.isActive():
                    raise VmError(f"VM {dom.name()}: cannot stop it: {exc}") from exc
        return False

    @staticmethod
    def _undefine_flags() -> int:
        flags = 0
        for name in (
            "VIR_DOMAIN_UNDEFINE_MANAGED_SAVE",
            "VIR_DOMAIN_UNDEFINE_NVRAM",
            "VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA",
            "VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA",
        ):
            flags |= _flag(name)
        return flags

    # ------------------------------------------------------------------ removal
    def remove(self, name: str, pool_name: str | None = None, *, keep_disk: bool = False) -> None:
        """Destroy, undefine and delete the VM's volume; nothing to do when all are gone.

        ``keep_disk``: the disk was given by path (the user's): it is left alone.
        """
        dom = lookup_domain(self.conn, name)
        disk_path = None
        if dom is not None:
            disk_path = parse_domain(dom.XMLDesc(_flag("VIR_DOMAIN_XML_INACTIVE")))["disk"]
            if dom.isActive():
                self.changes.append(
                    {
                        "action": "destroy",
                        "object": "domain",
                        "name": name,
                        "vm": name,
                        "details": {},
                    }
                )
                if not self.check_mode:
                    dom.destroy()
            self.change("undefine", name)
            if not self.check_mode:
                try:
                    dom.undefineFlags(self._undefine_flags())
                except libvirt.libvirtError as exc:
                    if _lv_error_code(exc) != libvirt.VIR_ERR_NO_DOMAIN:
                        raise VmError(f"VM {name}: cannot undefine it: {exc}") from exc
        if keep_disk:
            return
        vol, vol_pool = self._own_volume(name, disk_path, pool_name)
        if vol is not None:
            self.storage.delete(vol, vol_pool, f"VM {name}")

    def _own_volume(
        self, name: str, disk_path: str | None, pool_name: str | None
    ) -> tuple[Any | None, str]:
        """The volume the vm module owns for this VM (<name>.<format>), if any.

        A disk given by path (not named after the VM) is the user's and is left alone.
        """
        if disk_path:
            vol = self._volume_by_path(disk_path)
            if vol is not None and vol.name() in own_volume_names(name):
                return vol, vol.storagePoolLookupByVolume().name()
        pool_name = pool_name or DEFAULT_POOL
        pool = lookup_pool(self.conn, pool_name)
        if pool is not None and pool.isActive():
            refresh_pool(pool)  # on shared storage another host may have deleted it
        for candidate in own_volume_names(name):
            vol = lookup_volume(pool, candidate)
            if vol is not None:
                return vol, pool_name
        return None, pool_name

    def _volume_by_path(self, path: str) -> Any | None:
        """The volume at ``path``; pools of its directory are refreshed when it is not known
        (a pool on shared storage does not see what another host created)."""
        return volume_at(self.conn, path)

    # ------------------------------------------------------------------ records
    def record(self, name: str) -> dict[str, Any] | None:
        dom = lookup_domain(self.conn, name)
        if dom is None:
            return None
        parsed = parse_domain(dom.XMLDesc(_flag("VIR_DOMAIN_XML_INACTIVE")))
        view = {k: parsed[k] for k in (*managed_view_keys(), "domain_type")}
        view["name"] = name
        view["state"] = domain_state(dom)
        view["autostart"] = bool(dom.autostart())
        return view


def managed_view_keys() -> tuple[str, ...]:
    return (
        "memory_mib",
        "vcpus",
        "max_vcpus",
        "mac",
        "bridge",
        "mtu",
        "disk",
        "disk_format",
        "boot",
        "console",
        "metadata",
    )


def domain_xml_metadata(metadata: Mapping[str, Any]) -> str:
    attrs = "".join(
        f" {k}={quoteattr(str(metadata[k]))}" for k in METADATA_KEYS if metadata.get(k) is not None
    )
    return f"<vm{attrs}/>"


def _predict(before: dict[str, Any] | None, vm: Mapping[str, Any]) -> dict[str, Any] | None:
    """The record of a VM after a check-mode run."""
    if vm["state"] == "absent":
        return None
    after = dict(before or {})
    after.update(managed_view(vm))
    after["name"] = vm["name"]
    after["state"] = vm["state"]
    after["autostart"] = vm["autostart"]
    return after


def run_vm(params: Mapping[str, Any], check_mode: bool, diff_mode: bool) -> dict[str, Any]:
    state = params.get("state") or "merged"
    if state not in STATES:
        raise VmError(f"state must be one of {', '.join(STATES)}")
    scope = params.get("scope") or []
    items = params.get("config") or []
    if state == "deleted":
        want = [normalize_vm({**item, "state": "absent"}) for item in items]
    elif state == "gathered":
        want = [normalize_vm({**item, "state": "absent"}) for item in items]
    else:
        want = [normalize_vm(item) for item in items]
    names = [vm["name"] for vm in want]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise VmError(f"VMs listed more than once: {', '.join(duplicates)}")
    conn = connect()
    try:
        return _run_vm(
            conn,
            want,
            items=items,
            state=state,
            scope=scope,
            check_mode=check_mode,
            diff_mode=diff_mode,
        )
    except libvirt.libvirtError as exc:
        raise VmError(str(exc)) from exc
    finally:
        conn.close()


def _run_vm(
    conn: Any,
    want: list[dict[str, Any]],
    *,
    items: list[Any],
    state: str,
    scope: list[str],
    check_mode: bool,
    diff_mode: bool,
) -> dict[str, Any]:
    names = [vm["name"] for vm in want]
    conv = Converger(conn, check_mode)
    if state == "gathered":
        leases = _leases(None)
        gathered = []
        for dom in sorted(conn.listAllDomains(0), key=lambda d: d.name()):
            record = describe(dom, leases)
            if (names and record["name"] in names) or (
                not names and _in_scope(record["metadata"], scope)
            ):
                gathered.append(record)
        return {"changed": False, "changes": [], "gathered": gathered, "warnings": []}
    # overridden/deleted with a scope: our domains that are not listed go too
    extra: list[str] = []
    if state == "overridden" or (state == "deleted" and not items and scope):
        for dom in sorted(conn.listAllDomains(0), key=lambda d: d.name()):
            meta = parse_domain(dom.XMLDesc(_flag("VIR_DOMAIN_XML_INACTIVE")))["metadata"]
            if dom.name() not in names and _in_scope(meta, scope):
                extra.append(dom.name())
    before = {n: conv.record(n) for n in [*names, *extra]}
    try:
        for vm in want:
            conv.converge(vm)
        for name in extra:
            conv.remove(name)
    except VmError as exc:
        exc.changes = conv.changes
        raise
    except libvirt.libvirtError as exc:
        raise VmError(str(exc), conv.changes) from exc
    if check_mode:
        after = {vm["name"]: _predict(before[vm["name"]], vm) for vm in want}
        after.update({n: None for n in extra})
    else:
        after = {n: conv.record(n) for n in before}
    result: dict[str, Any] = {
        "changed": bool(conv.changes),
        "changes": conv.changes,
        "before": [r for r in before.values() if r],
        "after": [r for r in after.values() if r],
        "restart_needed": conv.restart_needed,
        "timings": conv.timings,
        "warnings": conv.warnings,
    }
    if diff_mode:
        result["diff"] = [
            {
                "before_header": f"domain {n}",
                "after_header": f"domain {n}",
                "before": _attribute_text(before[n]),
                "after": _attribute_text(after[n]),
            }
            for n in before
            if before[n] != after[n]
        ]
    return result


# --------------------------------------------------------------------------- volumes


def normalize_volume(item: Mapping[str, Any]) -> dict[str, Any]:
    name = item.get("name")
    if not name:
        raise VmError("every volume needs a name")
    vol = {
        "name": name,
        "pool": item.get("pool") or DEFAULT_POOL,
        "pool_path": item.get("pool_path") or DEFAULT_POOL_PATH,
        "capacity_mib": item.get("capacity_mib"),
        "image": item.get("image") or None,
        "image_format": item.get("image_format") or "qcow2",
        "format": item.get("format") or "qcow2",
        "path": item.get("path") or None,
    }
    if "/" in name:
        raise VmError(f"volume {name}: a volume name cannot contain '/'")
    if vol["path"] and os.path.basename(vol["path"]) != name:
        raise VmError(f"volume {name}: path {vol['path']} names another file")
    return vol


def volume_at(conn: Any, path: str) -> Any | None:
    """The volume at ``path`` in whichever pool holds its directory (those pools refreshed
    when it is not known yet), or None."""
    for attempt in range(2):
        try:
            return conn.storageVolLookupByPath(path)
        except libvirt.libvirtError:
            if attempt:
                return None
        directory = os.path.normpath(os.path.dirname(path))
        for pool in conn.listAllStoragePools(0):
            if not pool.isActive():
                continue
            target = ET.fromstring(pool.XMLDesc(0)).findtext("./target/path")
            if target and os.path.normpath(target) == directory:
                refresh_pool(pool)
    return None


def run_vm_volume(params: Mapping[str, Any], check_mode: bool, diff_mode: bool) -> dict[str, Any]:
    state = params.get("state") or "merged"
    if state not in VOLUME_STATES:
        raise VmError(f"state must be one of {', '.join(VOLUME_STATES)}")
    want = [normalize_volume(item) for item in params.get("config") or []]
    if state == "merged":
        for vol in want:
            if not vol["capacity_mib"] or vol["capacity_mib"] < 1:
                raise VmError(f"volume {vol['name']}: capacity_mib is required (>= 1)")
    conn = connect()
    changes: list[dict[str, Any]] = []
    storage = Storage(conn, check_mode, changes)

    def find(vol: Mapping[str, Any]) -> tuple[Any | None, str]:
        """(volume, its pool's name): by path when given (state deleted), else by name."""
        if vol["path"] and state == "deleted":
            found = volume_at(conn, vol["path"])
            return found, found.storagePoolLookupByVolume().name() if found else vol["pool"]
        return lookup_volume(lookup_pool(conn, vol["pool"]), vol["name"]), vol["pool"]

    def read(vol: Mapping[str, Any]) -> dict[str, Any] | None:
        found, pool_name = find(vol)
        return volume_record(found, pool_name) if found is not None else None

    try:
        if state == "gathered":
            gathered = []
            pools = (
                [lookup_pool(conn, p) for p in sorted({v["pool"] for v in want})]
                if want
                else conn.listAllStoragePools(0)
            )
            listed = {(v["pool"], v["name"]) for v in want}
            for pool in pools:
                if pool is None or not pool.isActive():
                    continue
                refresh_pool(pool)
                for found in sorted(pool.listAllVolumes(0), key=lambda v: v.name()):
                    if not want or (pool.name(), found.name()) in listed:
                        gathered.append(volume_record(found, pool.name()))
            return {"changed": False, "changes": [], "gathered": gathered}
        before = {(v["pool"], v["name"]): read(v) for v in want}
        try:
            for vol in want:
                label = f"volume {vol['name']}"
                if state == "deleted":
                    found, pool_name = find(vol)
                    if found is not None:
                        storage.delete(found, pool_name, label)
                    continue
                pool = storage.pool(vol["pool"], vol["pool_path"], label)
                storage.volume(
                    pool,
                    pool_name=vol["pool"],
                    pool_path=vol["pool_path"],
                    name=vol["name"],
                    capacity_mib=vol["capacity_mib"],
                    fmt=vol["format"],
                    image=vol["image"],
                    image_format=vol["image_format"],
                    owner=label,
                )
        except libvirt.libvirtError as exc:
            raise VmError(str(exc), changes) from exc
        except VmError as exc:
            exc.changes = changes
            raise
        if check_mode:
            after = {}
            for vol in want:
                key = (vol["pool"], vol["name"])
                if state == "deleted":
                    after[key] = None
                else:
                    predicted = dict(
                        before[key]
                        or {
                            "name": vol["name"],
                            "pool": vol["pool"],
                            "path": os.path.join(vol["pool_path"], vol["name"]),
                            "format": vol["format"],
                            "image": vol["image"],
                            "allocation_mib": 0,
                        }
                    )
                    predicted["capacity_mib"] = max(
                        vol["capacity_mib"], predicted.get("capacity_mib") or 0
                    )
                    after[key] = predicted
        else:
            after = {(vol["pool"], vol["name"]): read(vol) for vol in want}
        result: dict[str, Any] = {
            "changed": bool(changes),
            "changes": changes,
            "before": [r for r in before.values() if r],
            "after": [r for r in after.values() if r],
        }
        if diff_mode:
            result["diff"] = [
                {
                    "before_header": f"volume {k[0]}/{k[1]}",
                    "after_header": f"volume {k[0]}/{k[1]}",
                    "before": _attribute_text(_stable(before[k])),
                    "after": _attribute_text(_stable(after[k])),
                }
                for k in before
                if _stable(before[k]) != _stable(after[k])
            ]
        return result
    except libvirt.libvirtError as exc:
        raise VmError(str(exc), changes) from exc
    finally:
        conn.close()


def _stable(record: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A volume record without its allocation, which moves with every guest write."""
    if record is None:
        return None
    return {k: v for k, v in record.items() if k != "allocation_mib"}
