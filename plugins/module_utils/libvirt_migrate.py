# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Moving one libvirt domain to another host: the migration primitive (private to the collection).

Three modes (DESIGN.md §5):

- ``live``: shared storage, memory pre-copy only (VIR_MIGRATE_LIVE | PERSIST_DEST |
  UNDEFINE_SOURCE, plus UNSAFE for a shared directory libvirt does not recognise).
- ``live-block``: local disks mirrored over NBD while memory is pre-copied
  (NON_SHARED_DISK); the destination volume is pre-created first (same path, same size)
  through the destination's storage pool API.
- ``cold``: the domain is shut off, each volume is streamed with virStorageVolDownload /
  virStorageVolUpload (sparse-aware), hashed on the way and verified on the destination;
  then the domain is defined (same XML, UUID and MAC) and started there. The source stays
  defined and shut off, for a later confirm or revert. A cold migration may also change
  the layout (``relayout``): the disks go to another pool (``destination_pool``) and/or
  are converted (``disk_format``: qemu-img on the source, argv lists), the NIC goes to
  another bridge (``destination_bridge``); a conversion is verified by the checksum of the
  guest-visible content on both sides (the destination's raw view made by its libvirt).

Live modes run migrateToURI3 (peer to peer) in a worker thread while the caller's thread
polls jobStats every second for progress, and aborts the job past the timeout. A failure
before cutover leaves the source running untouched (libvirt's behaviour for live modes,
verified afterwards; restarted by us for cold) and removes what this call created on the
destination.

The pure part (mode choice, flags, parameters, progress and stats parsing) works without
libvirt and is unit-tested; libvirt is imported lazily like in libvirt_vm.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import queue
import shutil
import socket
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit
from xml.sax.saxutils import escape, quoteattr

from .libvirt_vm import (
    DEFAULT_POOL,
    DEFAULT_POOL_PATH,
    VOLUME_FORMATS,
    XMLNS,
    XMLNS_PREFIX,
    Storage,
    VmError,
    domain_state,
    lookup_domain,
    lookup_pool,
    parse_domain,
    refresh_pool,
)
from .migration_progress import ProgressFile
from .sockdiag import cut as cut_connections

try:
    import libvirt

    HAS_LIBVIRT = True
    LIBVIRT_IMPORT_ERROR: str | None = None
except ImportError as _exc:  # the pure helpers work without it
    libvirt = None
    HAS_LIBVIRT = False
    LIBVIRT_IMPORT_ERROR = str(_exc)

__all__ = [
    "DEFAULT_CONVERT_DIR",
    "DEFAULT_ENCRYPTION",
    "DEFAULT_MAX_DOWNTIME_MS",
    "DEFAULT_SHARED_PATHS",
    "DEFAULT_TIMEOUT",
    "DISK_FORMATS",
    "ENCRYPTION_CHOICES",
    "MODES",
    "MODE_CHOICES",
    "MigrateOptions",
    "MigrationError",
    "abort",
    "choose_mode",
    "flag_names",
    "migrate",
    "migration_params",
    "missing_tls_files",
    "parse_completed_stats",
    "progress_sample",
    "run_vm_migrate",
]

MODES = ("live", "live-block", "cold")
MODE_CHOICES = (*MODES, "auto")
DEFAULT_SHARED_PATHS = ("/var/lib/mcm/shared",)
DEFAULT_MAX_DOWNTIME_MS = 30
# Seconds the destination domain is watched after a live migration for a guest reset or
# crash (a guest kernel that met inconsistent memory panics within a second or two) when
# the source's QEMU is known to corrupt the guest's memory (tcg_live_risk). Otherwise
# (guest_watch_s not given) only the events during the job are reported: no wait.
RISK_GUEST_WATCH_S = 3.0
DEFAULT_GUEST_WATCH_S: float | None = None
DEFAULT_TIMEOUT = 600
DEFAULT_SHUTDOWN_TIMEOUT = 60
# Disk formats a cold migration converts to (qemu-img on the source); the destination's
# libvirt must list the format among its dir pools' volume formats.
DISK_FORMATS = VOLUME_FORMATS
# Where the source writes its temporary images while it converts (deleted afterwards).
DEFAULT_CONVERT_DIR = "/var/lib/mcm/convert"
QEMU_IMG = "qemu-img"
# Encryption between hosts: "tls" = qemu+tls:// for the libvirt connection (which also
# carries a cold copy) and VIR_MIGRATE_TLS for the live stream (qemu's native TLS, NBD
# included); "none" = qemu+tcp:// and a plaintext stream.
ENCRYPTION_CHOICES = ("tls", "none")
DEFAULT_ENCRYPTION = "tls"
TLS_SETUP_PLAYBOOK = "playbooks/setup_migration_tls.yml"
# What the source needs as a TLS client: libvirt's (the module's and libvirtd's peer
# connection) and qemu's (the migration stream). The destination's counterparts are
# proved by its TLS port answering and by libvirt's own checks in the prepare step.
TLS_CLIENT_FILES = (
    "/etc/pki/CA/cacert.pem",
    "/etc/pki/libvirt/clientcert.pem",
    "/etc/pki/libvirt/private/clientkey.pem",
    "/etc/pki/qemu/ca-cert.pem",
    "/etc/pki/qemu/client-cert.pem",
    "/etc/pki/qemu/client-key.pem",
)
ENCRYPTED_TRANSPORTS = ("tls", "ssh", "libssh", "libssh2")
ASSUMED_BANDWIDTH_MIB = 100  # estimate only: about a 1 Gbit/s link
MIB = 1024 * 1024
CHUNK = 1024 * 1024
ZEROS = bytes(CHUNK)
ABORT_GRACE = 60  # seconds a job may take to stop after abortJob
ABORT_REPEAT = 2.0  # seconds between abortJob calls while a timed-out job still runs
# abortJob calls after which the paused incoming domain on the destination is destroyed:
# libvirt 9.0 can ignore abortJob during the NBD disk-mirror phase (seen in CI), and a
# migration whose destination side is gone fails at once, the source VM running on.
ABORTS_BEFORE_KILL = 3
# abortJob calls after which the source qemu's TCP connections to the destination are
# destroyed (sockdiag): a stream waiting in qemu for a peer that stopped answering ends only
# when TCP gives up (net.ipv4.tcp_retries2, ~15 min) or never (a read with nothing left to
# send), and abortJob waits for it. When the destination stopped answering (keepalive)
# there is nothing to destroy there, so the cut comes at ABORTS_BEFORE_KILL.
ABORTS_BEFORE_CUT = 6
QEMU_PID_DIR = "/run/libvirt/qemu"  # libvirt's system driver: NAME.pid of each running domain
# QEMU before 9.0 under TCG (domain type "qemu", no KVM) can lose guest memory writes in a
# live migration's memory copy: the dirty bitmap sync's fast path cleared the migration
# bits without re-arming the TCG TLB's write tracking, so stores through TLB entries made
# before the sync were never sent (fixed upstream by commit 03bfc2188f06, "physmem: Fix
# migration dirty bitmap coherency with TCG memory access", in 9.0.0; not in Debian 12's
# 7.2). KVM tracks dirty pages in the kernel and is not affected.
TCG_DIRTY_TRACKING_FIXED = (9, 0, 0)
# After a failure the destination is cleaned over a connection that answers: the first one
# may be dead (its libvirtd was killed: a new one is opened once libvirtd is back) or hang
# (the link is cut: every call waits for TCP to give up, about 15 min). So the cleanup is
# bounded: CLEANUP_WAIT s in all, each reachability probe PROBE_TIMEOUT s; what it could
# not remove is reported (left_on_destination).
CLEANUP_WAIT = 45
PROBE_TIMEOUT = 5
# ... but a destination whose port times out this many probes in a row is unreachable (a
# cut link or a host down: no refusal comes back), not restarting its libvirtd: the module
# stops waiting and reports what it left, which the playbooks then delete over their own
# connection to the destination host (docs/migration.md, Faults).
UNREACHABLE_PROBES = 2
CLOSE_TIMEOUT = 10  # seconds closing the destination connection may take (it hangs on a cut link)
# Client keepalive on the destination connection: a peer silent for about
# KEEPALIVE_INTERVAL * (KEEPALIVE_COUNT + 1) s (link cut) closes the connection, so that every
# call on it, and its last close, fail instead of waiting for TCP to give up (~15 min). Without
# it the module hung at exit after a link cut: freeing the last domain or volume object of the
# connection sends the remote close, which never got an answer.
KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 3
LIBVIRT_PORTS = {"tcp": 16509, "tls": 16514, "ssh": 22, "libssh": 22, "libssh2": 22}
JOB_NONE = 0  # VIR_DOMAIN_JOB_NONE
JOB_STATS_COMPLETED = 1  # VIR_DOMAIN_JOB_STATS_COMPLETED
# VIR_DOMAIN_JOB_OPERATION_*
JOB_OPERATIONS = {
    0: "unknown", 1: "start", 2: "save", 3: "restore", 4: "migration in",
    5: "migration out", 6: "snapshot", 7: "snapshot revert", 8: "dump", 9: "backup",
    10: "snapshot delete",
}  # fmt: skip

# Flags of each mode; UNSAFE and AUTO_CONVERGE are added on request.
MODE_FLAGS = {
    "live": ("VIR_MIGRATE_LIVE", "VIR_MIGRATE_PEER2PEER", "VIR_MIGRATE_PERSIST_DEST",
             "VIR_MIGRATE_UNDEFINE_SOURCE", "VIR_MIGRATE_ABORT_ON_ERROR"),
    "live-block": ("VIR_MIGRATE_LIVE", "VIR_MIGRATE_PEER2PEER", "VIR_MIGRATE_PERSIST_DEST",
                   "VIR_MIGRATE_UNDEFINE_SOURCE", "VIR_MIGRATE_ABORT_ON_ERROR",
                   "VIR_MIGRATE_NON_SHARED_DISK"),
}  # fmt: skip


class MigrationError(Exception):
    """A migration failed; ``details`` says where, what was cleaned up and the source's state."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details: dict[str, Any] = details


@dataclass
class MigrateOptions:
    """Everything a migration can be tuned with (see the vm_migrate module's options)."""

    migrate_address: str | None = None
    encryption: str = DEFAULT_ENCRYPTION
    unsafe: bool = False
    max_downtime_ms: int = DEFAULT_MAX_DOWNTIME_MS
    bandwidth_mib: int | None = None
    auto_converge: bool = False
    timeout: float = DEFAULT_TIMEOUT
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    shared_paths: Sequence[str] = DEFAULT_SHARED_PATHS
    pool: str = DEFAULT_POOL
    pool_path: str = DEFAULT_POOL_PATH
    dest_xml: str | None = None
    poll_interval: float = 1.0
    guest_watch_s: float | None = DEFAULT_GUEST_WATCH_S  # None: RISK_GUEST_WATCH_S or 0
    # cold only (relayout): the disks' pool and format, the NIC's bridge on the destination
    destination_pool: str | None = None
    destination_pool_path: str | None = None
    disk_format: str | None = None
    destination_bridge: str | None = None
    destination_network: str | None = None
    convert_dir: str = DEFAULT_CONVERT_DIR

    def relayout(self) -> list[str]:
        """The options given that change the VM's layout (and need a cold copy)."""
        return [name for name in ("destination_pool", "disk_format", "destination_bridge")
                if getattr(self, name)]  # fmt: skip


# --------------------------------------------------------------------------- pure part


def under_paths(path: str | None, paths: Iterable[str]) -> bool:
    """True when ``path`` lies inside one of the directories ``paths``."""
    if not path:
        return False
    path = os.path.normpath(path)
    for given in paths:
        base = os.path.normpath(given)
        if path != base and os.path.commonpath([path, base]) == base:
            return True
    return False


def choose_mode(
    requested: str, disk_paths: Sequence[str], active: bool, shared_paths: Iterable[str],
    relayout: Sequence[str] = (),
) -> tuple[str, str]:  # fmt: skip
    """(mode, reason): ``auto`` picks live for shared disks, live-block if running, else cold;
    cold when the layout changes (``relayout``: the options that change it)."""
    shared = list(shared_paths)
    if requested not in MODE_CHOICES:
        raise MigrationError(f"mode must be one of {', '.join(MODE_CHOICES)}", phase="input")
    if relayout:
        if requested in ("live", "live-block"):
            raise MigrationError(
                f"{', '.join(relayout)}: applied by a cold migration only, not mode "
                f"{requested} (a running guest keeps its address, and a live copy writes "
                "each disk to the same path in the same format): use mode cold or auto",
                phase="input",
            )
        asked = "requested" if requested == "cold" else "auto"
        return "cold", f"{asked}: {', '.join(relayout)} (applied by a cold copy)"
    if requested != "auto":
        if requested in ("live", "live-block") and not active:
            raise MigrationError(
                f"mode {requested} needs a running domain; the domain is shut off: use mode "
                "cold (or auto)",
                phase="input",
            )
        return requested, "requested"
    if not active:
        return "cold", "auto: the domain is shut off"
    if disk_paths and all(under_paths(p, shared) for p in disk_paths):
        return "live", f"auto: every disk is under the shared paths {shared}"
    if not disk_paths:
        return "live", "auto: the domain has no disk to copy"
    return "live-block", "auto: the domain runs with local disks"


def flag_names(
    mode: str, *, unsafe: bool = False, auto_converge: bool = False, tls: bool = False
) -> list[str]:
    """Names of the VIR_MIGRATE_* flags of a live mode (VIR_MIGRATE_TLS with ``tls``)."""
    if mode not in MODE_FLAGS:
        raise MigrationError(f"mode {mode} is not a libvirt migration", phase="input")
    names = list(MODE_FLAGS[mode])
    if unsafe:
        names.append("VIR_MIGRATE_UNSAFE")
    if auto_converge:
        names.append("VIR_MIGRATE_AUTO_CONVERGE")
    if tls:
        names.append("VIR_MIGRATE_TLS")
    return names


def migration_flags(names: Iterable[str]) -> int:
    value = 0
    for name in names:
        flag = getattr(libvirt, name, None)
        if flag is None:
            raise MigrationError(f"this libvirt-python has no {name}", phase="input")
        value |= flag
    return value


def host_for_uri(address: str) -> str:
    """An address as it goes into a URI (IPv6 in brackets)."""
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


def default_destination_uri(address: str, encryption: str = DEFAULT_ENCRYPTION) -> str:
    transport = "tls" if encryption == "tls" else "tcp"
    return f"qemu+{transport}://{host_for_uri(address)}/system"


def check_uri_encryption(uri: str, encryption: str) -> None:
    """With encryption=tls, a destination_uri must encrypt the libvirt connection too."""
    if encryption not in ENCRYPTION_CHOICES:
        raise MigrationError(
            f"encryption must be one of {', '.join(ENCRYPTION_CHOICES)}", phase="input"
        )
    parts = urlsplit(uri)
    transport = parts.scheme.partition("+")[2]
    if encryption == "tls" and parts.hostname and transport not in ENCRYPTED_TRANSPORTS:
        raise MigrationError(
            f"encryption=tls but destination_uri {uri} is not encrypted: use "
            "qemu+tls://HOST/system (or qemu+ssh://), or leave destination_uri out; "
            "encryption=none accepts a plaintext qemu+tcp:// connection",
            phase="input",
        )


def missing_tls_files(paths: Iterable[str] = TLS_CLIENT_FILES) -> list[str]:
    """The certificate and key files of ``paths`` that are missing or unreadable here."""
    return [p for p in paths if not (os.path.isfile(p) and os.access(p, os.R_OK))]


def tls_preflight(source: str, paths: Iterable[str] = TLS_CLIENT_FILES) -> None:
    """Refuse a TLS migration from a source without its certificates, saying what to run."""
    missing = missing_tls_files(paths)
    if missing:
        raise MigrationError(
            f"encryption=tls but the source {source} lacks its TLS certificates "
            f"({', '.join(missing)}): run {TLS_SETUP_PLAYBOOK} (it makes the CA and the "
            "certificates of every cloud host and enables libvirt TLS), or pass "
            "encryption=none for a plaintext migration",
            phase="preflight",
            missing_files=missing,
        )


def hypervisor_version(conn: Any) -> tuple[int, int, int] | None:
    """The hypervisor's (QEMU's) version behind a libvirt connection, None if unknown."""
    try:
        value = conn.getVersion()
    except _lverr():
        return None
    return value // 1_000_000, value // 1000 % 1000, value % 1000


def tcg_live_risk(domain_type: str | None, version: tuple[int, int, int] | None) -> str | None:
    """Why a live migration of a domain of this type can corrupt its guest on this source,
    or None.

    Only a TCG guest (domain type ``qemu``) on a QEMU before 9.0 is at risk (see
    TCG_DIRTY_TRACKING_FIXED); an unknown version is not reported.
    """
    if domain_type != "qemu" or version is None:
        return None
    if version >= TCG_DIRTY_TRACKING_FIXED:
        return None
    found = ".".join(str(part) for part in version)
    return (
        f"the source runs the guest under TCG (domain type qemu, no KVM) with QEMU {found}: "
        "before QEMU 9.0 a live migration of a TCG guest can lose memory the guest writes "
        "during the copy (QEMU commit 03bfc2188f06), and the guest may then crash on its "
        "destination; upgrade QEMU on the source to 9.0 or later, run the guest under "
        "KVM, or migrate it with mode=cold"
    )


def guest_watch_seconds(domain_type: str | None, version: tuple[int, int, int] | None) -> float:
    """How long to watch the guest after its live migration when guest_watch_s is not
    given: RISK_GUEST_WATCH_S where a reset is a known risk (tcg_live_risk), else 0."""
    return RISK_GUEST_WATCH_S if tcg_live_risk(domain_type, version) else 0.0


def migration_params(
    migrate_uri: str,
    *,
    dest_xml: str | None = None,
    bandwidth_mib: int | None = None,
    disks: Sequence[str] | None = None,
) -> dict[str, Any]:
    """typed parameters of migrateToURI3 (keys are the VIR_MIGRATE_PARAM_* strings)."""
    params: dict[str, Any] = {"migrate_uri": migrate_uri}
    if dest_xml:
        params["destination_xml"] = dest_xml
    if bandwidth_mib:
        params["bandwidth"] = int(bandwidth_mib)
    if disks:
        params["migrate_disks"] = list(disks)
    return params


def _num(stats: Mapping[str, Any], key: str) -> int | None:
    value = stats.get(key)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def progress_sample(stats: Mapping[str, Any] | None, elapsed: float) -> dict[str, Any] | None:
    """One progress point from a running job's jobStats; None when no job runs."""
    if not stats or stats.get("type", JOB_NONE) == JOB_NONE:
        return None
    total = _num(stats, "data_total") or 0
    processed = _num(stats, "data_processed") or 0
    remaining = _num(stats, "data_remaining")
    if remaining is None:
        remaining = max(total - processed, 0)
    percent = round(min(100.0, 100.0 * processed / total), 1) if total else 0.0
    rate = (_num(stats, "memory_bps") or 0) + (_num(stats, "disk_bps") or 0)
    return {
        "elapsed_s": round(elapsed, 2),
        "percent": percent,
        "processed_bytes": processed,
        "remaining_bytes": remaining,
        "total_bytes": total,
        "rate_bps": rate,
        "memory_iteration": _num(stats, "memory_iteration"),
        "disk_processed_bytes": _num(stats, "disk_processed"),
        "disk_total_bytes": _num(stats, "disk_total"),
    }


def parse_completed_stats(stats: Mapping[str, Any] | None) -> dict[str, Any]:
    """What the result reports of a completed job (jobStats with STATS_COMPLETED)."""
    stats = stats or {}
    data_total = _num(stats, "data_total")
    data_processed = _num(stats, "data_processed")
    disk_total = _num(stats, "disk_total")
    disk_processed = _num(stats, "disk_processed")
    memory_total = _num(stats, "memory_total")
    memory_processed = _num(stats, "memory_processed")
    return {
        "downtime_ms": _num(stats, "downtime"),
        "downtime_net_ms": _num(stats, "downtime_net"),
        "elapsed_ms": _num(stats, "time_elapsed"),
        "setup_ms": _num(stats, "setup_time"),
        "bytes": data_processed if data_processed is not None else data_total,
        "data_total": data_total,
        "disk_bytes": disk_processed if disk_processed is not None else disk_total,
        "disk_total": disk_total,
        "memory_bytes": memory_processed if memory_processed is not None else memory_total,
        "memory_total": memory_total,
        "memory_iterations": _num(stats, "memory_iteration"),
    }


def estimate_seconds(nbytes: int, bandwidth_mib: float | None) -> float:
    rate = (bandwidth_mib or ASSUMED_BANDWIDTH_MIB) * MIB
    return round(nbytes / rate, 2)


def hash_zeros(digest: Any, length: int) -> None:
    """Feed ``length`` zero bytes (a hole) into a hash, a MiB at a time."""
    full, rest = divmod(length, CHUNK)
    for _attempt in range(full):
        digest.update(ZEROS)
    if rest:
        digest.update(ZEROS[:rest])


# The checksum of a cold copy: sha256 over the sha256 of each 1 MiB block of the volume's
# content, holes read as zeros (the last block may be shorter). As strong as a plain
# sha256 of the content, but a hole costs one 32-byte update per MiB instead of hashing its
# zeros: a 4 GiB disk holding 200 MiB of data hashes 200 MiB, not 4 GiB, on each side.
CHECKSUM_ALGORITHM = "sha256-1mib-blocks"
BLOCK = MIB
ZERO_BLOCK_DIGEST = hashlib.sha256(bytes(BLOCK)).digest()


class BlockDigest:
    """CHECKSUM_ALGORITHM, fed with data (``update``) and holes (``zeros``) in any split:
    the result depends on the content only."""

    def __init__(self) -> None:
        self._outer = hashlib.sha256()
        self._block = hashlib.sha256()
        self._filled = 0

    def _close_block(self) -> None:
        self._outer.update(self._block.digest())
        self._block = hashlib.sha256()
        self._filled = 0

    def update(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            take = min(BLOCK - self._filled, len(view))
            self._block.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == BLOCK:
                self._close_block()

    def zeros(self, length: int) -> None:
        if self._filled:  # the rest of a block data started
            take = min(BLOCK - self._filled, length)
            hash_zeros(self._block, take)
            self._filled += take
            length -= take
            if self._filled == BLOCK:
                self._close_block()
        full, rest = divmod(length, BLOCK)
        for _block in range(full):
            self._outer.update(ZERO_BLOCK_DIGEST)
        if rest:  # only reached with no block open (a longer hole closed it above)
            hash_zeros(self._block, rest)
            self._filled = rest

    def hexdigest(self) -> str:
        outer = self._outer.copy()
        if self._filled:
            outer.update(self._block.digest())
        return outer.hexdigest()


def converted_name(path: str, fmt: str) -> str:
    """The file name of a disk converted to ``fmt``: its extension, when it is a known disk
    format, becomes the new format (acme-web1.qcow2 -> acme-web1.raw)."""
    base = os.path.basename(path)
    stem, ext = os.path.splitext(base)
    return f"{stem if ext[1:] in DISK_FORMATS else base}.{fmt}"


def relayout_xml(
    xml: str,
    disks: Mapping[str, tuple[str, str]],
    bridge: str | None = None,
    network: str | None = None,
) -> str:
    """A domain XML with its layout changed: each disk whose source file is a key of
    ``disks`` gets (new path, new format) and loses its backing chain (a converted image is
    standalone); the first NIC of type bridge gets ``bridge``; our metadata gets ``network``."""
    ET.register_namespace(XMLNS_PREFIX, XMLNS)
    root = ET.fromstring(xml)
    for disk in root.findall("./devices/disk"):
        source = disk.find("source")
        if source is None or source.get("file") not in disks:
            continue
        path, fmt = disks[source.get("file")]
        source.set("file", path)
        driver = disk.find("driver")
        if driver is None:
            driver = ET.SubElement(disk, "driver", {"name": "qemu"})
        if driver.get("type") != fmt:
            driver.set("type", fmt)
            for backing in disk.findall("backingStore"):
                disk.remove(backing)
    if bridge:
        nic = next((n for n in root.findall("./devices/interface") if n.get("type") == "bridge"),
                   None)  # fmt: skip
        if nic is None:
            raise MigrationError("the domain has no NIC on a bridge to move", phase="input")
        source = nic.find("source")
        if source is None:
            source = ET.SubElement(nic, "source")
        source.set("bridge", bridge)
        # libvirt names the tap itself on the destination
        for target in nic.findall("target"):
            nic.remove(target)
    if network:
        ours = root.find(f"./metadata/{{{XMLNS}}}vm")
        if ours is not None:
            ours.set("network", network)
    return ET.tostring(root, encoding="unicode")


def file_segments(path: str, chunk: int = CHUNK) -> Iterable[bytes | int]:
    """A local file as pieces: data (bytes, at most ``chunk``) and holes (their length, an
    int), found with SEEK_DATA/SEEK_HOLE (a file system without them reads as data)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: only a hole from here on
                    raise
                data = size
            if data > pos:
                yield data - pos
                pos = data
                continue
            end = min(os.lseek(fd, pos, os.SEEK_HOLE), size)
            os.lseek(fd, pos, os.SEEK_SET)
            while pos < end:
                block = os.read(fd, min(chunk, end - pos))
                if not block:
                    raise MigrationError(f"{path} ended at {pos} of {size} bytes", phase="copy")
                pos += len(block)
                yield block
    finally:
        os.close(fd)


def qemu_img_formats(binary: str = QEMU_IMG) -> list[str]:
    """The image formats this host's qemu-img supports ([] when it is missing)."""
    path = shutil.which(binary)
    if path is None:
        return []
    proc = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=30,
                          check=False)  # fmt: skip
    return parse_qemu_img_formats(proc.stdout)


def parse_qemu_img_formats(text: str) -> list[str]:
    """The formats of ``qemu-img --help``: one line ``Supported formats: a b`` up to QEMU 8,
    an indented block after ``Supported image formats:`` (and a blank line) since 9."""
    lines = iter(text.splitlines())
    for line in lines:
        if line.startswith(("Supported formats:", "Supported image formats:")):
            formats = line.split(":", 1)[1].split()
            break
    else:
        return []
    for line in lines:
        if not line.strip():
            if formats:
                break
            continue
        if not line[:1].isspace():
            break
        formats.extend(line.split())
    return formats


def qemu_img_convert_argv(src: str, src_fmt: str, dst: str, dst_fmt: str) -> list[str]:
    """qemu-img convert of ``src`` (read through its backing chain) into a new ``dst``."""
    return [QEMU_IMG, "convert", "-q", "-f", src_fmt, "-O", dst_fmt, src, dst]


def pool_formats(capabilities_xml: str) -> list[str]:
    """The volume formats of a host's dir pools (virConnectGetStoragePoolCapabilities)."""
    root = ET.fromstring(capabilities_xml)
    pool = root.find("./pool[@type='dir']")
    if pool is None:
        return []
    return [v.text or "" for v in pool.findall("./volOptions/enum[@name='targetFormatType']/value")]


def _volume_xml(name: str, capacity: int, fmt: str) -> str:
    return (
        f"<volume><name>{escape(name)}</name>"
        f"<capacity unit='bytes'>{capacity}</capacity>"
        "<allocation unit='bytes'>0</allocation>"
        f"<target><format type={quoteattr(fmt)}/>"
        "<permissions><mode>0600</mode></permissions></target></volume>"
    )


def _allocated(path: str) -> int:
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0


def _chain(xml: str, target: str) -> list[str]:
    """Files of a disk's backing chain below the top image (live XML)."""
    root = ET.fromstring(xml)
    for disk in root.findall("./devices/disk"):
        tgt = disk.find("target")
        if tgt is None or tgt.get("dev") != target:
            continue
        files, node = [], disk.find("backingStore")
        for _attempt in range(64):  # bounded: backing chains are short
            if node is None:
                break
            source = node.find("source")
            if source is not None and source.get("file"):
                files.append(source.get("file"))
            node = node.find("backingStore")
        return files
    return []


# --------------------------------------------------------------------------- libvirt


def _flag(name: str, default: int = 0) -> int:
    return getattr(libvirt, name, default)


def _lverr() -> type[Exception]:
    return libvirt.libvirtError


def probe_tcp(uri: str, timeout: float = 10) -> None:
    """Fail fast, with the address, when a remote libvirt URI's port does not answer."""
    parts = urlsplit(uri)
    transport = parts.scheme.partition("+")[2]
    if not parts.hostname or transport not in LIBVIRT_PORTS:
        return
    port = parts.port or LIBVIRT_PORTS[transport]
    if transport == "tls":
        listen = (
            f"libvirtd listens for TLS there (listen_tls = 1: run {TLS_SETUP_PLAYBOOK} "
            "on both clouds)"
        )
    else:
        listen = "libvirtd listens there (listen_tcp / virtproxyd-tcp.socket for qemu+tcp)"
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            pass
    except OSError as exc:
        raise MigrationError(
            f"cannot reach the destination's libvirtd at {parts.hostname}:{port} ({exc}): "
            f"check destination_address, that {listen} and that no firewall drops it",
            phase="connect",
        ) from exc


def _bounded(fn: Callable[[], Any], seconds: float, name: str) -> tuple[bool, Exception | None]:
    """Run ``fn`` in a daemon thread for at most ``seconds``: (finished, its exception).

    For libvirt calls to a peer that may not answer: such a call cannot be interrupted,
    the daemon thread is left behind and the module still reports.
    """
    box: dict[str, Exception] = {}

    def work() -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - handed to the caller, which reports it
            box["error"] = exc

    worker = threading.Thread(target=work, name=name, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        return False, None
    return True, box.get("error")


_EVENT_LOOP: dict[str, threading.Thread] = {}


def event_loop() -> bool:
    """libvirt's default event loop, run by a daemon thread (started once): the client side
    of keepalive needs it. Registered before the connections that use it are opened."""
    if "thread" in _EVENT_LOOP:
        return True
    register = getattr(libvirt, "virEventRegisterDefaultImpl", None)
    run_once = getattr(libvirt, "virEventRunDefaultImpl", None)
    if register is None or run_once is None:
        return False
    if register() < 0:
        return False

    def run() -> None:
        while True:
            if run_once() < 0:
                time.sleep(0.1)

    thread = threading.Thread(target=run, name="libvirt-event-loop", daemon=True)
    thread.start()
    _EVENT_LOOP["thread"] = thread
    return True


class GuestResetWatch:
    """Reboot and crash events of one domain, seen on a connection (the destination).

    Registered before a live migration starts and read after it ended: a guest that
    resets (its kernel panicked: ``panic=`` reboots it) or crashes on the destination
    right after the cutover lost its state even though libvirt reports success. QEMU
    before 9.0 does this to TCG guests (TCG_DIRTY_TRACKING_FIXED, docs/migration.md). Needs the
    event loop (``event_loop``); without it ``active`` is False and nothing is watched."""

    def __init__(self, conn: Any, name: str) -> None:
        self.name = name
        self.conn = conn
        self.events: list[tuple[float, str]] = []
        self.ids: list[int] = []
        self.active = "thread" in _EVENT_LOOP
        if not self.active:
            return
        try:
            self.ids.append(
                conn.domainEventRegisterAny(
                    None, _flag("VIR_DOMAIN_EVENT_ID_REBOOT", 1), self._reboot, None
                )
            )
            self.ids.append(
                conn.domainEventRegisterAny(
                    None, _flag("VIR_DOMAIN_EVENT_ID_LIFECYCLE", 0), self._lifecycle, None
                )
            )
        except _lverr():
            self.close()
            self.active = False

    def _reboot(self, _conn: Any, dom: Any, _opaque: Any) -> None:
        if dom.name() == self.name:
            self.events.append((time.monotonic(), "reset"))

    def _lifecycle(self, _conn: Any, dom: Any, event: int, _detail: int, _opaque: Any) -> None:
        if dom.name() == self.name and event == _flag("VIR_DOMAIN_EVENT_CRASHED", 8):
            self.events.append((time.monotonic(), "crashed"))

    def wait(self, seconds: float, since: float) -> list[dict[str, Any]]:
        """Waits until ``seconds`` after ``since`` (monotonic) or the first event; the
        events as ``{event, after_s}`` (seconds after ``since``, negative: before)."""
        deadline = since + seconds
        while self.active and not self.events and time.monotonic() < deadline:
            time.sleep(0.1)
        return [{"event": kind, "after_s": round(at - since, 2)} for at, kind in self.events]

    def close(self) -> None:
        for callback_id in self.ids:
            try:
                self.conn.domainEventDeregisterAny(callback_id)
            except _lverr():
                pass  # the connection is gone: so are its callbacks
        self.ids = []


def open_peer(uri: str) -> Any:
    """A connection to the destination's libvirtd with client keepalive (when possible)."""
    looping = event_loop()
    conn = libvirt.open(uri)
    keepalive = getattr(conn, "setKeepAlive", None)
    if looping and keepalive is not None:
        try:
            keepalive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
        except _lverr():
            pass  # an old peer without keepalive: the bounded calls still protect us
    return conn


def open_destination(uri: str) -> Any:
    probe_tcp(uri)
    try:
        return open_peer(uri)
    except _lverr() as exc:
        raise MigrationError(
            f"cannot connect to the destination {uri}: {exc}", phase="connect"
        ) from exc


def active_job(dom: Any) -> dict[str, Any] | None:
    """The running job's stats, or None when the domain has no job."""
    try:
        stats = dom.jobStats(0)
    except _lverr():
        return None
    return stats if stats.get("type", JOB_NONE) != JOB_NONE else None


def checksum_record(
    disk: Mapping[str, Any],
    dest: str,
    fmt: str,
    content: str,
    sent: Mapping[str, Any],
    *,
    destination: str,
    total_bytes: int,
    started: float,
    source: str | None = None,
) -> dict[str, Any]:
    """One entry of a cold migration's ``checksum`` list: a disk sent (``sent``, from
    stream_volume) to ``dest`` in format ``fmt``, the checksum of its ``content`` (V(file):
    the image file; V(guest): the raw bytes the guest sees) on both sides. ``source``
    defaults to the checksum of what was sent."""
    source = sent["checksum"] if source is None else source
    return {
        "path": disk["path"],
        "destination_path": dest,
        "source_format": disk["format"],
        "destination_format": fmt,
        "content": content,
        "algorithm": CHECKSUM_ALGORITHM,
        "source": source,
        "destination": destination,
        "match": source == destination,
        "bytes": total_bytes,
        "data_bytes": sent["data_bytes"],
        "hole_bytes": sent["hole_bytes"],
        "sparse": sent["sparse"],
        "seconds": round(time.monotonic() - started, 2),
    }


class JobSampler:
    """jobStats of a domain's running job, read every ``interval`` s by a daemon thread;
    ``take`` returns the newest reading not yet taken without waiting for libvirt."""

    def __init__(self, dom: Any, interval: float, name: str) -> None:
        self._dom = dom
        self._interval = interval
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._latest: dict[str, Any] | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def take(self) -> dict[str, Any] | None:
        with self._lock:
            stats, self._latest = self._latest, None
        return stats

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                stats = active_job(self._dom)
            except Exception:  # noqa: BLE001 - a reading lost; the job loop decides
                stats = None
            if stats is not None:
                with self._lock:
                    self._latest = stats
            self._stop.wait(self._interval)


def abort(conn: Any, domain_name: str) -> bool:
    """Abort the running job (a migration) of a domain; False when there was none."""
    dom = lookup_domain(conn, domain_name)
    if dom is None or active_job(dom) is None:
        return False
    dom.abortJob()
    return True


def _pool_for_dir(
    conn: Any,
    directory: str,
    opts: MigrateOptions,
    *,
    changes: list[dict[str, Any]],
    label: str,
    check_mode: bool = False,
) -> Any | None:
    """The destination's active dir pool whose target is ``directory`` (the mcm pool is created)."""
    directory = os.path.normpath(directory)
    for pool in conn.listAllStoragePools(0):
        target = ET.fromstring(pool.XMLDesc(0)).findtext("./target/path")
        if target and os.path.normpath(target) == directory:
            if not pool.isActive():
                if check_mode:
                    return None
                pool.create(0)
            return pool
    if directory == os.path.normpath(opts.pool_path):
        return Storage(conn, check_mode, changes).pool(opts.pool, opts.pool_path, label)
    raise MigrationError(
        f"{label}: the destination has no storage pool for {directory}: define a dir pool "
        "there whose target is that directory (or keep the disk in the pool "
        f"{opts.pool} at {opts.pool_path})",
        phase="preflight",
    )


class Migration:
    """One domain, one migration: preflight, the move, and the rollback of a failure."""

    def __init__(
        self,
        src_conn: Any,
        dst_conn: Any,
        dst_uri: str,
        name: str,
        *,
        opts: MigrateOptions,
        progress: Callable[[dict[str, Any]], None] | None = None,
        check_mode: bool = False,
    ) -> None:
        self.check_mode = check_mode
        self.src, self.dst, self.dst_uri, self.name = src_conn, dst_conn, dst_uri, name
        self.opts = opts
        self.progress_cb = progress
        self.samples: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.cleanup: list[str] = []
        self.changes: list[dict[str, Any]] = []
        self.created_volumes: list[Any] = []
        self.created_paths: list[str] = []  # the same volumes by path (for a new connection)
        self.cleaned_paths: list[str] = []
        self.defined_domain: Any | None = None
        self.label = f"VM {name}"
        self.dom: Any | None = None
        self.downtime_applied: int | None = None
        # cold relayout: per source disk path, where and in which format it lands
        self.targets: dict[str, dict[str, Any]] = {}
        self.created_pool: Any | None = None
        self._dst_pool: tuple[Any | None, str] | None = None

    # ------------------------------------------------------------------ facts
    def disks(self, dom: Any, xml: str) -> list[dict[str, Any]]:
        """The domain's file disks with size, allocation and whether they are shared."""
        disks = []
        for disk in parse_domain(xml)["disks"]:
            if disk["device"] != "disk" or not disk["path"] or not disk["target"]:
                continue
            capacity = allocation = physical = None
            try:
                capacity, allocation, physical = dom.blockInfo(disk["target"], 0)
            except _lverr() as exc:
                self.warnings.append(f"{self.label}: no size of {disk['path']}: {exc}")
            chain = _chain(xml, disk["target"])
            chain_bytes = _allocated(disk["path"]) + sum(_allocated(p) for p in chain)
            disks.append(
                {
                    "target": disk["target"],
                    "path": disk["path"],
                    "format": disk["format"] or "raw",
                    "capacity_bytes": capacity,
                    "allocation_bytes": allocation,
                    "physical_bytes": physical,
                    "chain": chain,
                    "chain_allocated_bytes": min(chain_bytes, capacity or chain_bytes),
                    "shared": under_paths(disk["path"], self.opts.shared_paths),
                }
            )
        return disks

    def plan(self, mode: str, reason: str, dom: Any, disks: list[dict[str, Any]]) -> dict:
        memory = dom.info()[2] * 1024 if dom.isActive() else 0
        copied = [d for d in disks if not d["shared"]] if mode != "live" else []
        if mode == "cold":
            # a conversion reads the whole backing chain and sends the new image
            converting = self.opts.disk_format
            disk_bytes = sum(d["chain_allocated_bytes"] or 0
                             if converting and d["format"] != converting
                             else _allocated(d["path"]) for d in copied)  # fmt: skip
            memory = 0
        else:
            disk_bytes = sum(d["chain_allocated_bytes"] or 0 for d in copied)
        total = memory + disk_bytes
        plan = {
            "mode": mode,
            "mode_reason": reason,
            "source": socket.gethostname(),
            "destination_uri": self.dst_uri,
            "migrate_uri": self.migrate_uri,
            "disks": disks,
            "copied_disks": [d["path"] for d in copied],
            "disk_bytes": disk_bytes,
            "memory_bytes": memory,
            "bytes_to_copy": total,
            "bandwidth_mib": self.opts.bandwidth_mib or ASSUMED_BANDWIDTH_MIB,
            "bandwidth_assumed": not self.opts.bandwidth_mib,
            "estimated_seconds": estimate_seconds(total, self.opts.bandwidth_mib),
            "encryption": self.opts.encryption,
        }
        if mode in MODE_FLAGS:
            plan["flags"] = self.flag_names(mode)
            plan["max_downtime_ms"] = self.opts.max_downtime_ms
        return plan

    def flag_names(self, mode: str) -> list[str]:
        return flag_names(
            mode,
            unsafe=self.opts.unsafe,
            auto_converge=self.opts.auto_converge,
            tls=self.opts.encryption == "tls",
        )

    @property
    def migrate_uri(self) -> str:
        address = self.opts.migrate_address or urlsplit(self.dst_uri).hostname or ""
        return f"tcp://{host_for_uri(address)}"

    def warn_tcg_risk(self, mode: str, active: bool, xml: str) -> None:
        """Warn before a live move of a running TCG guest from a QEMU that can lose its
        writes (tcg_live_risk); also in check mode."""
        if mode not in MODE_FLAGS or not active:
            return
        risk = tcg_live_risk(parse_domain(xml)["domain_type"], hypervisor_version(self.src))
        if risk is not None:
            self.warnings.append(f"{self.label}: {risk}")

    def preflight(self, mode: str, disks: list[dict[str, Any]]) -> None:
        """Nothing of ours may be in the way on the destination; refuse before changing anything."""
        if lookup_domain(self.dst, self.name) is not None:
            raise MigrationError(
                f"{self.label}: a domain with this name already exists on the destination "
                f"({self.dst_uri}): remove it there first, or migrate under another name",
                phase="preflight",
            )
        uuid = self.dom.UUIDString()
        try:
            other = self.dst.lookupByUUIDString(uuid)
        except _lverr():
            other = None
        if other is not None:
            raise MigrationError(
                f"{self.label}: the destination already has a domain with UUID {uuid} "
                f"({other.name()}): remove it there first",
                phase="preflight",
            )
        self.shared_pool(disks)
        if mode == "live":
            return
        if mode == "cold":
            self.check_relayout(disks)
        needs: dict[str, list[Any]] = {}  # pool name: [pool, bytes needed, directory]
        for disk in disks:
            if disk["shared"]:
                continue
            target = self.target(disk, mode)
            pool, dest = target["pool"], target["destination_path"]
            existing = None
            if pool is not None:
                refresh_pool(pool)
                try:
                    existing = self.dst.storageVolLookupByPath(dest)
                except _lverr():
                    existing = None
            if existing is not None:
                raise MigrationError(
                    f"{self.label}: the destination already has a volume at {dest} "
                    "(left by an earlier migration?): delete it there "
                    "(multicloud.migration.vm_volume state=deleted) and retry",
                    phase="preflight",
                )
            if pool is not None:
                if target["convert"]:
                    # the converted image holds the whole backing chain; a non-raw one is
                    # read back through a raw view next to it for the guest checksum
                    need = (disk["chain_allocated_bytes"] or 0) * (
                        1 if target["destination_format"] == "raw" else 2
                    )
                elif mode == "cold":
                    need = _allocated(disk["path"])
                else:
                    need = disk["chain_allocated_bytes"] or 0
                entry = needs.setdefault(pool.name(), [pool, 0, os.path.dirname(dest)])
                entry[1] += need
            if mode == "cold" and not target["convert"]:
                try:
                    self.src.storageVolLookupByPath(disk["path"])
                except _lverr() as exc:
                    raise MigrationError(
                        f"{self.label}: disk {disk['path']} is not a volume of a storage pool "
                        "on the source; cold migration streams volumes through the storage "
                        "API: define a dir pool for its directory",
                        phase="preflight",
                    ) from exc
        self.check_space(needs)

    # ------------------------------------------------------------------ relayout (cold)
    def destination_pool(self) -> tuple[Any | None, str]:
        """(pool, directory) of ``destination_pool`` on the destination: started when
        inactive, created at ``destination_pool_path`` when missing (None in check mode)."""
        if self._dst_pool is not None:
            return self._dst_pool
        name, path = self.opts.destination_pool or "", self.opts.destination_pool_path
        host = urlsplit(self.dst_uri).hostname or self.dst_uri
        pool = lookup_pool(self.dst, name)
        if pool is None:
            if not path:
                raise MigrationError(
                    f"{self.label}: the destination {host} has no storage pool {name}: "
                    "define it there (a dir pool), or give its directory to create it from "
                    f"(storage_map {{SOURCE: {{pool: {name}, path: /DIR}}}}; module option "
                    "destination_pool_path)",
                    phase="preflight",
                )
            try:
                pool = Storage(self.dst, self.check_mode, self.changes).pool(name, path, self.label)
            except VmError as exc:
                raise MigrationError(str(exc), phase="preflight") from exc
            self.created_pool = pool
            self._dst_pool = (pool, os.path.normpath(path))
            return self._dst_pool
        root = ET.fromstring(pool.XMLDesc(0))
        directory = os.path.normpath(root.findtext("./target/path") or "")
        if root.get("type") not in ("dir", "fs", "netfs"):
            raise MigrationError(
                f"{self.label}: storage pool {name} on {host} is of type {root.get('type')}: "
                "a disk is copied into a directory pool (dir, fs or netfs)",
                phase="preflight",
            )
        if path and os.path.normpath(path) != directory:
            raise MigrationError(
                f"{self.label}: storage pool {name} on {host} is at {directory}, not at "
                f"{path}: leave the path out, or choose another pool name",
                phase="preflight",
            )
        if not pool.isActive():
            self.changes.append({"action": "start", "object": "pool", "name": name,
                                 "vm": self.name, "details": {"host": "destination"}})  # fmt: skip
            if not self.check_mode:
                pool.create(0)
        self._dst_pool = (pool, directory)
        return self._dst_pool

    def target(self, disk: Mapping[str, Any], mode: str) -> dict[str, Any]:
        """Where a (local) disk lands on the destination, in which format and pool."""
        if disk["path"] in self.targets:
            return self.targets[disk["path"]]
        cold = mode == "cold"
        fmt = self.opts.disk_format if cold and self.opts.disk_format else disk["format"]
        convert = fmt != disk["format"]
        if cold and self.opts.destination_pool:
            pool, directory = self.destination_pool()
        else:
            directory = os.path.dirname(disk["path"])
            pool = _pool_for_dir(self.dst, directory, self.opts, changes=self.changes,
                                 label=self.label, check_mode=self.check_mode)  # fmt: skip
        name = converted_name(disk["path"], fmt) if convert else os.path.basename(disk["path"])
        target = {
            "path": disk["path"],
            "format": disk["format"],
            "destination_path": os.path.join(directory, name),
            "destination_format": fmt,
            "destination_pool": pool.name() if pool is not None else self.opts.destination_pool,
            "convert": convert,
            "pool": pool,
        }
        self.targets[disk["path"]] = target
        return target

    def relayout_plan(self) -> dict[str, Any]:
        """What a cold relayout changes (the plan's ``relayout``)."""
        xml = parse_domain(self.dom.XMLDesc(_flag("VIR_DOMAIN_XML_INACTIVE")))
        nic = next((n for n in xml["interfaces"] if n["type"] == "bridge"), {})
        return {
            "disks": [{k: v for k, v in t.items() if k != "pool"} for t in self.targets.values()],
            "bridge": {"from": nic.get("bridge"), "to": self.opts.destination_bridge}
            if self.opts.destination_bridge else None,
            "network": self.opts.destination_network,
        }  # fmt: skip

    def check_relayout(self, disks: list[dict[str, Any]]) -> None:
        """A conversion needs qemu-img with both formats here and the format in the
        destination's libvirt; a new bridge must exist there (the playbooks build it first)."""
        fmt = self.opts.disk_format
        converted = [d for d in disks if not d["shared"] and fmt and d["format"] != fmt]
        if fmt and converted:
            host = urlsplit(self.dst_uri).hostname or self.dst_uri
            try:
                known = pool_formats(self.dst.getStoragePoolCapabilities(0))
            except _lverr() as exc:
                raise MigrationError(f"{self.label}: cannot read the storage capabilities of "
                                     f"{host}: {exc}", phase="preflight") from exc  # fmt: skip
            if fmt not in known:
                usable = [f for f in DISK_FORMATS if f in known]
                raise MigrationError(
                    f"{self.label}: the destination {host} cannot run a disk in format {fmt}: "
                    f"its libvirt does not know it (its volume formats include "
                    f"{', '.join(usable)}); choose disk_format {' or '.join(usable)}",
                    phase="preflight",
                )
            here = qemu_img_formats()
            if not here:
                raise MigrationError(
                    f"{self.label}: converting to {fmt} needs qemu-img on the source "
                    f"{socket.gethostname()} (Debian package qemu-utils)",
                    phase="preflight",
                )
            wanted = {fmt, "raw", *(d["format"] for d in converted)}
            missing = sorted(wanted - set(here))
            if missing:
                raise MigrationError(f"{self.label}: qemu-img on the source does not support "
                                     f"{', '.join(missing)}", phase="preflight")  # fmt: skip
            self.check_convert_room(converted)
        bridge = self.opts.destination_bridge
        if bridge:
            try:
                self.dst.interfaceLookupByName(bridge)
            except _lverr() as exc:
                if exc.get_error_code() != _flag("VIR_ERR_NO_INTERFACE", 57):
                    self.warnings.append(f"{self.label}: bridge {bridge} not checked on the "
                                         f"destination ({exc})")  # fmt: skip
                elif self.check_mode:
                    self.warnings.append(
                        f"{self.label}: the destination has no bridge {bridge} yet (the "
                        "migration playbooks build the network there before the copy)"
                    )
                else:
                    raise MigrationError(
                        f"{self.label}: the destination has no bridge {bridge} for the NIC: "
                        "build the network there first (the migration playbooks stretch it)",
                        phase="preflight",
                    ) from exc

    def check_convert_room(self, converted: list[dict[str, Any]]) -> None:
        """The source's convert_dir has room for the temporary images (a lower bound: the
        allocation of each disk's backing chain, twice when a raw view is needed too)."""
        directory = self.opts.convert_dir
        probe = directory
        while not os.path.isdir(probe) and probe not in ("", "/"):
            probe = os.path.dirname(probe)
        stat = os.statvfs(probe or "/")
        available = stat.f_bavail * stat.f_frsize
        need = sum((d["chain_allocated_bytes"] or 0)
                   * (1 if self.opts.disk_format == "raw" or d["format"] == "raw" else 2)
                   for d in converted)  # fmt: skip
        if need > available:
            raise MigrationError(
                f"{self.label}: not enough space on the source for the conversion: "
                f"{directory} has {available / MIB:.1f} MiB free, the temporary images take "
                f"{need / MIB:.1f} MiB: free space there or set convert_dir",
                phase="preflight",
            )

    def check_space(self, needs: Mapping[str, Sequence[Any]]) -> None:
        """Each destination pool has room for what is copied into it (the disks' allocation
        on the source: a lower bound; a copy that still runs out of space fails and is
        rolled back like any other failure)."""
        for name, (pool, need, directory) in sorted(needs.items()):
            available = int(pool.info()[3])
            if need > available:
                raise MigrationError(
                    f"{self.label}: not enough space on the destination: its pool {name} "
                    f"({directory}) has {available / MIB:.1f} MiB free, the disks to copy "
                    f"there take {need / MIB:.1f} MiB on the source: free space there or "
                    "choose another host",
                    phase="preflight",
                    needed_bytes=need,
                    available_bytes=available,
                )

    def shared_pool(self, disks: list[dict[str, Any]]) -> None:
        """A shared disk stays where it is; when its directory is ``pool_path`` the destination
        gets that pool (created if missing, refreshed), so its vm module finds the volume."""
        wanted = os.path.normpath(self.opts.pool_path)
        if not any(os.path.normpath(os.path.dirname(d["path"])) == wanted
                   for d in disks if d["shared"]):  # fmt: skip
            return
        try:
            pool = _pool_for_dir(self.dst, wanted, self.opts, changes=self.changes,
                                 label=self.label, check_mode=self.check_mode)  # fmt: skip
        except VmError as exc:
            raise MigrationError(str(exc), phase="preflight") from exc
        if pool is not None:
            refresh_pool(pool)

    # ------------------------------------------------------------------ destination objects
    def create_volume(
        self, disk: Mapping[str, Any], fmt: str, capacity: int, path: str | None = None
    ) -> Any:
        """A volume on the destination at ``path`` (default: the disk's own path)."""
        path = path or disk["path"]
        pool = _pool_for_dir(
            self.dst, os.path.dirname(path), self.opts, changes=self.changes, label=self.label,
        )  # fmt: skip
        name = os.path.basename(path)
        try:
            vol = pool.createXML(_volume_xml(name, capacity, fmt), 0)
        except _lverr() as exc:
            raise MigrationError(
                f"{self.label}: cannot create the volume {path} on the destination: {exc}",
                phase="prepare",
            ) from exc
        self.created_volumes.append(vol)
        self.created_paths.append(path)
        self.changes.append(
            {"action": "create", "object": "volume", "name": name, "vm": self.name,
             "details": {"path": vol.path(), "capacity_bytes": capacity, "format": fmt,
                         "host": "destination"}}
        )  # fmt: skip
        if os.path.normpath(vol.path()) != os.path.normpath(path):
            raise MigrationError(
                f"{self.label}: the destination created {vol.path()}, not {path}",
                phase="prepare",
            )
        return vol

    def clean_destination(self, conn: Any | None = None) -> None:
        """Remove what this call created on the destination (domain, volumes).

        ``conn``: another connection to the destination, when the first one broke (its
        libvirtd restarted); the volumes are then found again by path. Raises libvirtError
        when the connection does not work.
        """
        fresh = conn is not None and conn is not self.dst
        conn = self.dst if conn is None else conn
        dom = lookup_domain(conn, self.name)
        if dom is not None:
            try:
                if dom.isActive():
                    dom.destroy()
                    self.cleanup.append(f"destroyed domain {self.name} on the destination")
                if dom.isPersistent():
                    dom.undefineFlags(0)
                    self.cleanup.append(f"undefined domain {self.name} on the destination")
            except _lverr() as exc:
                self.warnings.append(f"{self.label}: cleanup could not remove the domain: {exc}")
        volumes = self.created_volumes if not fresh else self._volumes_again(conn)
        for vol in volumes:
            try:
                path = vol.path()
                vol.delete(0)
                self.cleanup.append(f"deleted volume {path} on the destination")
                self.cleaned_paths.append(path)
            except _lverr() as exc:
                self.warnings.append(f"{self.label}: cleanup could not delete a volume: {exc}")
        if self.created_pool is not None and not fresh:
            self._remove_created_pool()
        if not conn.isAlive():
            raise libvirt.libvirtError("the connection to the destination broke during cleanup")
        self.created_volumes = []

    def _remove_created_pool(self) -> None:
        """The pool this call created from destination_pool_path, when it is still empty."""
        pool, self.created_pool = self.created_pool, None
        try:
            refresh_pool(pool)
            if pool.listAllVolumes(0):
                self.warnings.append(f"{self.label}: kept the new pool {pool.name()} on the "
                                     "destination: it holds volumes")  # fmt: skip
                return
            name = pool.name()
            pool.destroy()
            try:
                pool.delete(0)  # its directory, empty
            except _lverr():
                pass  # a directory that is not empty or not ours stays
            pool.undefine()
            self.cleanup.append(f"removed the storage pool {name} it created on the destination")
        except _lverr() as exc:
            self.warnings.append(f"{self.label}: cleanup could not remove the new pool: {exc}")

    def _volumes_again(self, conn: Any) -> list[Any]:
        """The volumes this call created, looked up by path on a new connection."""
        found = []
        for path in self.left_paths():
            pool = _pool_for_dir(conn, os.path.dirname(path), self.opts, changes=[],
                                 label=self.label, check_mode=True)  # fmt: skip
            if pool is not None:
                refresh_pool(pool)
            try:
                found.append(conn.storageVolLookupByPath(path))
            except _lverr() as exc:
                if exc.get_error_code() != _flag("VIR_ERR_NO_STORAGE_VOL", 50):
                    raise
                self.cleaned_paths.append(path)  # already gone
        return found

    def left_paths(self) -> list[str]:
        """Volumes this call created on the destination and has not removed."""
        return [p for p in self.created_paths if p not in self.cleaned_paths]

    def clean_destination_bounded(self) -> None:
        """clean_destination after a failure, bounded in time (CLEANUP_WAIT).

        The first connection is tried first; when it broke (the destination's libvirtd was
        killed), a new one once the destination's port answers again (a service manager
        restarts libvirtd). A destination that does not answer (link cut) is not called
        at all: a call on a connection whose peer is silent blocks until TCP gives up;
        after UNREACHABLE_PROBES probes timed out in a row it is given up at once. What is
        left is reported in ``left_on_destination``.
        """
        deadline = time.monotonic() + CLEANUP_WAIT
        conn: Any | None = self.dst
        why = ""
        timeouts = 0
        for _attempt in range(int(CLEANUP_WAIT / 2) + 2):
            try:
                probe_tcp(self.dst_uri, timeout=PROBE_TIMEOUT)
            except MigrationError as exc:
                why = str(exc)
                # socket.timeout is not TimeoutError before Python 3.10
                silent = isinstance(exc.__cause__, (socket.timeout, TimeoutError))
                timeouts = timeouts + 1 if silent else 0
                if timeouts >= UNREACHABLE_PROBES:
                    why += f" ({timeouts} probes in a row: unreachable)"
                    break
            else:
                timeouts = 0
                finished, error = _bounded(
                    lambda c=conn: self._clean_with(c), max(deadline - time.monotonic(), 5),
                    f"clean-{self.name}",
                )  # fmt: skip
                if finished and error is None:
                    return
                if not finished:
                    why = f"the destination did not answer within {CLEANUP_WAIT} s"
                    break
                why, conn = str(error), None  # next time over a new connection
            if time.monotonic() + 2 > deadline:
                break
            time.sleep(2)
        left = self.left_paths()
        self.warnings.append(
            f"{self.label}: could not clean the destination ({why}); left there: "
            f"{', '.join(left) or 'no volume'}, and the domain if its libvirtd still has it"
        )

    def _clean_with(self, conn: Any | None) -> None:
        if conn is None:
            conn = open_peer(self.dst_uri)
            try:
                self.clean_destination(conn)
            finally:
                conn.close()
        else:
            self.clean_destination(conn)

    def source_state(self) -> str:
        dom = lookup_domain(self.src, self.name)
        return "absent" if dom is None else domain_state(dom)

    # ------------------------------------------------------------------ live modes
    def run_live(self, mode: str, disks: list[dict[str, Any]]) -> dict[str, Any]:
        dom = self.dom
        copied = [d for d in disks if not d["shared"]] if mode == "live-block" else []
        names = self.flag_names(mode)
        flags = migration_flags(names)
        params = migration_params(
            self.migrate_uri,
            dest_xml=self.opts.dest_xml,
            bandwidth_mib=self.opts.bandwidth_mib,
            disks=[d["target"] for d in copied] if copied else None,
        )
        seconds = self.opts.guest_watch_s
        if seconds is None:  # before the job and the watch: these calls may fail
            seconds = guest_watch_seconds(parse_domain(dom.XMLDesc(0))["domain_type"],
                                          hypervisor_version(self.src))  # fmt: skip
        started = time.monotonic()
        watch = GuestResetWatch(self.dst, self.name) if self.opts.guest_watch_s != 0 else None
        try:
            for disk in copied:
                self.create_volume(disk, disk["format"], int(disk["capacity_bytes"] or 0))
            self._set_downtime(dom, quiet=False, read_back=True)
            error = self._run_job(dom, params, flags, started)
        except MigrationError as exc:
            if watch is not None:
                watch.close()
            self._fail_live(exc, started)
            raise
        if error is not None:
            if watch is not None:
                watch.close()
            self._fail_live(error, started)
            raise error
        wall_ms = round((time.monotonic() - started) * 1000)
        guest_resets = self._guest_resets(watch, seconds)
        dst_dom = lookup_domain(self.dst, self.name)
        stats: dict[str, Any] = {}
        for candidate in (dst_dom, lookup_domain(self.src, self.name)):
            if candidate is None:
                continue
            try:
                stats = candidate.jobStats(JOB_STATS_COMPLETED)
            except _lverr():
                continue
            if stats.get("downtime") is not None or stats.get("time_elapsed") is not None:
                break
        parsed = parse_completed_stats(stats)
        parsed["wall_ms"] = wall_ms
        parsed["max_downtime_ms"] = self.downtime_applied
        if copied and not parsed["disk_total"]:
            # The destination's completed job knows nothing of the NBD mirror: take the
            # disk figures from the last sample of the source's job (a lower bound).
            last = next((s for s in reversed(self.samples) if s.get("disk_total_bytes")), None)
            if last is not None:
                parsed["disk_bytes"] = last["disk_processed_bytes"]
                parsed["disk_total"] = last["disk_total_bytes"]
                parsed["disk_stats_from"] = "progress"
        return {
            "changed": True,
            "flags": names,
            "stats": parsed,
            "guest_resets": guest_resets,
            "destination_state": domain_state(dst_dom) if dst_dom is not None else "absent",
            "source_state": self.source_state(),
            "source_disks_left": [d["path"] for d in copied],
        }

    def _guest_resets(self, watch: GuestResetWatch | None, seconds: float) -> list[dict[str, Any]]:
        """The guest's resets and crashes on the destination during the job and the
        ``seconds`` after it (guest_watch_s, or guest_watch_seconds), each also as a
        warning."""
        if watch is None:
            return []
        try:
            events = watch.wait(seconds, time.monotonic())
        finally:
            watch.close()
        if not watch.active:
            self.warnings.append(f"{self.label}: no libvirt event loop: the guest was not "
                                 "watched for a reset after the migration")  # fmt: skip
        for event in events:
            when = (f"{event['after_s']:.1f} s after the migration ended" if event["after_s"] >= 0
                    else "during the migration")  # fmt: skip
            self.warnings.append(
                f"{self.label}: the guest {'was reset' if event['event'] == 'reset' else 'crashed'}"
                f" on the destination {when}: it lost its running state (a guest kernel panic? "
                "see its console log); QEMU before 9.0 does this to TCG guests "
                "(docs/migration.md)"
            )
        return events

    def _kill_incoming(self) -> None:
        """Destroy the incoming (paused, not yet started) domain on the destination, so
        that a migration abortJob could not stop ends now; bounded, as the peer may hang."""

        def kill() -> None:
            incoming = lookup_domain(self.dst, self.name)
            if incoming is not None and incoming.isActive():
                incoming.destroy()

        done, error = _bounded(kill, PROBE_TIMEOUT, f"kill-incoming-{self.name}")
        if done and error is None:
            self.warnings.append(
                f"{self.label}: abortJob did not stop the job; the incoming domain on the "
                "destination was destroyed instead"
            )
        else:
            self.warnings.append(
                f"{self.label}: could not destroy the incoming domain on the destination "
                f"({error or 'no answer'}); still sending abortJob"
            )

    def _peer_lost(self) -> bool:
        """Whether the destination connection was closed: its keepalive got no answer for
        about KEEPALIVE_INTERVAL * (KEEPALIVE_COUNT + 1) s (link cut, host down). A local
        check, no call to the peer."""
        alive = getattr(self.dst, "isAlive", None)
        if alive is None:
            return False
        try:
            return not alive()
        except _lverr():
            return True

    def _cut_streams(self) -> None:
        """Destroy the source qemu's TCP connections to the destination (the migration and
        NBD streams), so that a job waiting in them for a silent peer fails now."""
        try:
            with open(f"{QEMU_PID_DIR}/{self.name}.pid", encoding="ascii") as handle:
                pid = int(handle.read().strip())
            peers = {info[4][0] for info in socket.getaddrinfo(
                self.opts.migrate_address, None, type=socket.SOCK_STREAM)}  # fmt: skip
            done = cut_connections(pid, peers)
        except (OSError, ValueError) as exc:
            self.warnings.append(f"{self.label}: the job did not stop and its streams to the "
                                 f"destination could not be cut: {exc}")  # fmt: skip
            return
        self.warnings.append(
            f"{self.label}: the job did not stop after abortJob: cut the source qemu's "
            f"connections to {self.opts.migrate_address} "
            f"({', '.join(done) if done else 'none were open'})"
        )

    def _set_downtime(self, dom: Any, quiet: bool, read_back: bool = False) -> bool:
        """migrateSetMaxDowntime; read back only before the job (during a migration
        virDomainMigrateGetMaxDowntime blocks until the job ends, libvirt 9.0)."""
        try:
            dom.migrateSetMaxDowntime(int(self.opts.max_downtime_ms), 0)
            if read_back:
                self.downtime_applied = int(dom.migrateGetMaxDowntime(0))
            return True
        except _lverr() as exc:
            if not quiet:
                self.warnings.append(f"{self.label}: max downtime not set: {exc}")
            return False

    def _run_job(
        self, dom: Any, params: dict[str, Any], flags: int, started: float
    ) -> MigrationError | None:
        """migrateToURI3 in a worker, jobStats polled meanwhile; the error, or None.

        The worker is a daemon thread: a libvirt call that never returns cannot keep the
        module from reporting. Past the deadline abortJob is sent, and sent again every
        ABORT_REPEAT seconds until the job ends.
        """
        interval = max(self.opts.poll_interval, 0.01)
        deadline = started + self.opts.timeout
        # Bounded in time, not in polls: no libvirt call is made in this loop's thread
        # (jobStats can wait ~30 s for the domain's job lock while another call holds it,
        # abortJob may not answer), so it reports by timeout + ABORT_GRACE whatever happens.
        hard_deadline = deadline + ABORT_GRACE
        downtime_thread: threading.Thread | None = None
        timed_out = peer_lost = cut = False
        aborts, attempts, abort_next = 0, 0, deadline
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["result"] = dom.migrateToURI3(self.dst_uri, params, flags)
            except _lverr() as exc:
                box["error"] = exc

        worker = threading.Thread(target=work, name=f"migrate-{self.name}", daemon=True)
        sampler = JobSampler(dom, interval, f"jobstats-{self.name}")
        worker.start()
        sampler.start()
        try:
            while time.monotonic() < hard_deadline:
                worker.join(interval)
                if not worker.is_alive():
                    break
                stats = sampler.take()
                if stats is not None:
                    if downtime_thread is None:
                        # Set again once the job runs, in a daemon thread: during a
                        # live-block job (its NBD phase) migrateSetMaxDowntime blocks until
                        # the job ends (libvirt 9.0, seen on the lab). Quiet: the set before
                        # the job already reported a failure (max_downtime_ms).
                        downtime_thread = threading.Thread(
                            target=self._set_downtime, args=(dom,), kwargs={"quiet": True},
                            name=f"downtime-{self.name}", daemon=True,
                        )  # fmt: skip
                        downtime_thread.start()
                    sample = progress_sample(stats, time.monotonic() - started)
                    if sample is not None:
                        self.samples.append(sample)
                        if self.progress_cb is not None:
                            self.progress_cb(sample)
                now = time.monotonic()
                if not peer_lost and self._peer_lost():
                    # The destination stopped answering: the job cannot finish; abort now
                    # rather than at the timeout (the stream may wait for TCP, or forever).
                    peer_lost = True
                    if now < deadline:
                        deadline = abort_next = now
                        hard_deadline = now + ABORT_GRACE
                if now >= deadline and now >= abort_next:
                    # Sent again every ABORT_REPEAT s while the job lives: libvirt 9.0
                    # accepts an abort during the NBD disk-mirror phase and then starts the
                    # memory phase anyway (seen on the lab), so one accepted abortJob is not
                    # enough. Each call is bounded: a stalled one is left behind.
                    timed_out = True
                    abort_next = now + ABORT_REPEAT
                    attempts += 1
                    done, error = _bounded(dom.abortJob, PROBE_TIMEOUT, f"abort-{self.name}")
                    if done and error is None:
                        aborts += 1
                    elif not aborts and attempts == 1:
                        self.warnings.append(f"{self.label}: abortJob failed (retrying): "
                                             f"{error or 'no answer'}")  # fmt: skip
                    if attempts == ABORTS_BEFORE_KILL and not peer_lost:
                        self._kill_incoming()
                    if not cut and attempts >= (ABORTS_BEFORE_KILL if peer_lost
                                                else ABORTS_BEFORE_CUT):  # fmt: skip
                        cut = True  # once (the peer may be found lost after the timeout)
                        self._cut_streams()
        finally:
            sampler.stop()
        if worker.is_alive():
            return MigrationError(
                f"{self.label}: the migration job did not end within "
                f"{hard_deadline - started:.0f} s, even after abortJob"
                + (" (the destination had stopped answering)" if peer_lost else ""),
                phase="migrate",
            )
        if "error" in box:
            exc = box["error"]
            if peer_lost:
                return MigrationError(
                    f"{self.label}: migration failed: the destination stopped answering "
                    f"(no keepalive answer for {KEEPALIVE_INTERVAL * (KEEPALIVE_COUNT + 1)} s: "
                    f"link cut or host down) and the job was aborted ({exc})",
                    phase="migrate",
                )
            if timed_out:
                return MigrationError(
                    f"{self.label}: the migration exceeded the timeout of "
                    f"{self.opts.timeout} s and was aborted ({exc}); raise timeout or "
                    "bandwidth_mib",
                    phase="migrate",
                )
            return MigrationError(f"{self.label}: migration failed: {exc}", phase="migrate")
        if "result" not in box:
            return MigrationError(
                f"{self.label}: the migration call ended without a result (see stderr)",
                phase="migrate",
            )
        return None

    def _fail_live(self, exc: MigrationError, started: float) -> None:
        """After a failed live migration: verify the source, clean the destination if safe."""
        dom = lookup_domain(self.src, self.name)
        state = "absent" if dom is None else domain_state(dom)
        if state == "paused":
            try:
                dom.resume()
                self.warnings.append(f"{self.label}: the source was left paused; resumed it")
                state = domain_state(dom)
            except _lverr() as err:
                self.warnings.append(f"{self.label}: cannot resume the source: {err}")
        if state == "running":
            self.clean_destination_bounded()
            cutover = False
        else:
            # The source no longer runs: the VM may run on the destination; touch nothing.
            cutover = True
            self.warnings.append(
                f"{self.label}: the source is {state} after the failure: left the "
                "destination as it is, check where the VM runs"
            )
        exc.details.update(
            source_state=state,
            after_cutover=cutover,
            cleanup=self.cleanup,
            left_on_destination=self.left_paths() if not cutover else [],
            progress=self.samples,
            elapsed_ms=round((time.monotonic() - started) * 1000),
        )

    # ------------------------------------------------------------------ cold
    def run_cold(self, disks: list[dict[str, Any]]) -> dict[str, Any]:
        dom = self.dom
        was_running = bool(dom.isActive())
        xml = dom.XMLDesc(_flag("VIR_DOMAIN_XML_INACTIVE"))
        started = time.monotonic()
        phase = "shutdown"
        graceful = None
        checksums: list[dict[str, Any]] = []
        try:
            if was_running:
                graceful = self._shutdown(dom)
            stopped = time.monotonic()
            phase = "copy"
            moved: dict[str, tuple[str, str]] = {}
            for disk in disks:
                if disk["shared"]:
                    continue
                target = self.target(disk, "cold")
                if target["convert"]:
                    phase = "convert"
                    checksums.append(self._convert_disk(disk, target))
                else:
                    checksums.append(self._copy_disk(disk, target["destination_path"]))
                moved[disk["path"]] = (target["destination_path"], target["destination_format"])
            phase = "define"
            if self.opts.relayout():
                xml = relayout_xml(xml, moved, bridge=self.opts.destination_bridge,
                                   network=self.opts.destination_network)  # fmt: skip
            dst_dom = self.dst.defineXML(xml)
            self.defined_domain = dst_dom
            self.changes.append(
                {"action": "define", "object": "domain", "name": self.name, "vm": self.name,
                 "details": {"host": "destination"}}
            )  # fmt: skip
            if was_running:
                phase = "start"
                dst_dom.create()
        except (MigrationError, OSError, subprocess.SubprocessError, _lverr()) as exc:
            self.clean_destination_bounded()
            state = self._restart_source(was_running)
            details = {"source_state": state, "after_cutover": False, "cleanup": self.cleanup,
                       "left_on_destination": self.left_paths(),
                       "progress": self.samples, "checksum": checksums}  # fmt: skip
            if isinstance(exc, MigrationError):
                exc.details.setdefault("phase", phase)
                exc.details.update(details)
                raise
            message = f"{self.label}: cold migration failed ({phase}): {exc}"
            raise MigrationError(message, phase=phase, **details) from exc
        ended = time.monotonic()
        if dom.autostart():
            try:
                dom.setAutostart(0)
                self.warnings.append(
                    f"{self.label}: autostart turned off on the source (kept shut off there)"
                )
            except _lverr() as exc:
                self.warnings.append(f"{self.label}: autostart still on at the source: {exc}")
        data = sum(c["data_bytes"] for c in checksums)
        logical = sum(c["bytes"] for c in checksums)
        stats = {
            "downtime_ms": round((ended - started) * 1000) if was_running else None,
            "elapsed_ms": round((ended - started) * 1000),
            "shutdown_ms": round((stopped - started) * 1000),
            "copy_ms": round((ended - stopped) * 1000),
            "bytes": data,
            "disk_bytes": logical,
            "disk_hole_bytes": sum(c["hole_bytes"] for c in checksums),
            "memory_bytes": 0,
            "graceful_shutdown": graceful,
            "wall_ms": round((ended - started) * 1000),
        }
        return {
            "changed": True,
            "stats": stats,
            "checksum": checksums,
            "destination_state": domain_state(self.defined_domain),
            "source_state": self.source_state(),
        }

    def _shutdown(self, dom: Any) -> bool:
        """ACPI shutdown, bounded wait, then destroy; True if the guest went down by itself."""
        timeout = self.opts.shutdown_timeout
        if timeout > 0:
            try:
                dom.shutdown()
            except _lverr() as exc:
                self.warnings.append(f"{self.label}: graceful shutdown refused ({exc})")
            deadline = time.monotonic() + timeout
            for _attempt in range(int(timeout / 0.25) + 2):
                if not dom.isActive() or time.monotonic() > deadline:
                    break
                time.sleep(0.25)
            if not dom.isActive():
                return True
        if dom.isActive():
            dom.destroy()
        return False

    def _restart_source(self, was_running: bool) -> str:
        dom = lookup_domain(self.src, self.name)
        if dom is None:
            return "absent"
        if was_running and not dom.isActive():
            console = parse_domain(dom.XMLDesc(0))["console"] or {}
            sock = console.get("socket")
            if sock and os.path.exists(sock):
                os.unlink(sock)  # a stale socket would fail the bind, as in the vm module
            try:
                dom.create()
                self.cleanup.append(f"restarted {self.name} on the source")
            except _lverr() as exc:
                self.warnings.append(f"{self.label}: cannot restart the source: {exc}")
        return domain_state(dom)

    def _copy_disk(self, disk: Mapping[str, Any], dest: str | None = None) -> dict[str, Any]:
        """The volume streamed as it is to ``dest`` (default: the same path), its file
        checksum compared on both sides."""
        dest = dest or disk["path"]
        src_vol = self.src.storageVolLookupByPath(disk["path"])
        # An empty raw file: the upload writes the image file as it is (qcow2 header and
        # all); the pool re-probes its format afterwards.
        dst_vol = self.create_volume(disk, "raw", 0, path=dest)
        try:
            total = os.path.getsize(disk["path"])
        except OSError:
            total = int(src_vol.info()[1])
        started = time.monotonic()
        # the destination's copy is read back (and hashed) while the rest is still sent
        sent, check = copy_and_read_back(
            self.src, src_vol, self.dst, dst_vol, total=total,
            deadline=started + self.opts.timeout, progress=self._cold_progress(started, total),
        )  # fmt: skip
        dst_vol = self._uploaded(dst_vol, dest)
        result = checksum_record(
            disk, dest, disk["format"], "file", sent,
            destination=check["checksum"], total_bytes=sent["bytes"], started=started,
        )  # fmt: skip
        if not result["match"]:
            raise MigrationError(
                f"{self.label}: checksum of {disk['path']} differs on the destination "
                f"({check['checksum']} != {sent['checksum']}): the copy is not trusted",
                phase="verify",
                checksum=[result],
            )
        return result

    def _uploaded(self, dst_vol: Any, dest: str) -> Any:
        """The destination volume after an upload, its pool refreshed (the format re-probed)."""
        refresh_pool(dst_vol.storagePoolLookupByVolume())
        dst_vol = self.dst.storageVolLookupByPath(dest)
        self.created_volumes = [v for v in self.created_volumes if v.path() != dest]
        self.created_volumes.append(dst_vol)
        return dst_vol

    def _convert_disk(self, disk: Mapping[str, Any], target: Mapping[str, Any]) -> dict[str, Any]:
        """A disk converted on the way (cold): qemu-img on the source writes the image in
        the new format (reading through the backing chain), it is streamed to the
        destination, and the checksum of the guest-visible content (the raw bytes the guest
        sees) is computed on both sides: here from the raw image (converted, or the disk
        itself when raw), there from a raw view the destination's libvirt makes of the
        copy (storageVolCreateXMLFrom, which runs its qemu-img), unless the copy is raw."""
        src_fmt, fmt = disk["format"], target["destination_format"]
        dest = target["destination_path"]
        started = time.monotonic()
        deadline = started + self.opts.timeout
        dst_vol, sent, guest_src = self._send_converted(disk, target, started)
        dst_vol = self._uploaded(dst_vol, dest)
        capacity = int(disk["capacity_bytes"] or dst_vol.info()[1])
        guest_dst = self._guest_view_checksum(dst_vol, fmt, capacity, deadline)
        source = guest_src["checksum"] if guest_src else sent["checksum"]
        result = checksum_record(
            disk, dest, fmt, "guest", sent, source=source,
            destination=guest_dst["checksum"], total_bytes=guest_dst["bytes"], started=started,
        )  # fmt: skip
        if not result["match"]:
            raise MigrationError(
                f"{self.label}: the guest-visible content of {disk['path']} ({src_fmt}) and of "
                f"its {fmt} copy {dest} on the destination differ ({guest_dst['checksum']} != "
                f"{source}): the conversion is not trusted",
                phase="verify",
                checksum=[result],
            )
        return result

    def _send_converted(
        self, disk: Mapping[str, Any], target: Mapping[str, Any], started: float
    ) -> tuple[Any, dict[str, Any], dict[str, Any] | None]:
        """(destination volume, what was sent, the source's guest-visible checksum or None
        when the sent image is raw, and so is that content); the temporary images in
        convert_dir are removed whatever happens."""
        src_fmt, fmt = disk["format"], target["destination_format"]
        deadline = started + self.opts.timeout
        os.makedirs(self.opts.convert_dir, mode=0o700, exist_ok=True)
        stem = os.path.join(self.opts.convert_dir, f"{self.name}.{os.getpid()}")
        payload = f"{stem}.{fmt}"
        temporary = [payload]
        try:
            self._qemu_img(qemu_img_convert_argv(disk["path"], src_fmt, payload, fmt), deadline)
            guest_src = None
            if fmt != "raw" and src_fmt == "raw":
                guest_src = hash_file(disk["path"], deadline)
            elif fmt != "raw":
                view = f"{stem}.guest.raw"
                temporary.append(view)
                self._qemu_img(qemu_img_convert_argv(disk["path"], src_fmt, view, "raw"), deadline)
                guest_src = hash_file(view, deadline)
            dst_vol = self.create_volume(disk, "raw", 0, path=target["destination_path"])
            total = os.path.getsize(payload)
            sent = send_file(payload, self.dst, dst_vol, deadline=deadline,
                             progress=self._cold_progress(started, total))  # fmt: skip
            return dst_vol, sent, guest_src
        finally:
            for path in temporary:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass  # not made: qemu-img failed before writing it

    def _qemu_img(self, argv: list[str], deadline: float) -> None:
        left = max(deadline - time.monotonic(), 1)
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=left,
                                  check=False)  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            raise MigrationError(f"{self.label}: {' '.join(argv[:2])} exceeded the timeout",
                                 phase="convert") from exc  # fmt: skip
        if proc.returncode != 0:
            raise MigrationError(
                f"{self.label}: {' '.join(argv)} failed ({proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[-500:]}",
                phase="convert",
            )

    def _guest_view_checksum(
        self, dst_vol: Any, fmt: str, capacity: int, deadline: float
    ) -> dict[str, Any]:
        """The checksum of what the guest sees of a destination volume."""
        if fmt == "raw":
            return stream_volume(self.dst, dst_vol, None, None, total=capacity, deadline=deadline)
        pool = dst_vol.storagePoolLookupByVolume()
        name = f"{dst_vol.name()}.mcm-guest-view.raw"
        try:
            view = pool.createXMLFrom(_volume_xml(name, capacity, "raw"), dst_vol, 0)
        except _lverr() as exc:
            raise MigrationError(
                f"{self.label}: the destination could not read back its {fmt} copy "
                f"{dst_vol.path()} as raw (storageVolCreateXMLFrom): {exc}",
                phase="verify",
            ) from exc
        path = view.path()
        self.created_volumes.append(view)
        self.created_paths.append(path)
        try:
            return stream_volume(self.dst, view, None, None, total=capacity, deadline=deadline)
        finally:
            view.delete(0)
            self.created_volumes = [v for v in self.created_volumes if v is not view]
            self.cleaned_paths.append(path)

    def _cold_progress(self, started: float, total: int) -> Callable[[int], None]:
        last = [0.0]

        def report(done: int) -> None:
            now = time.monotonic()
            if now - last[0] < self.opts.poll_interval and done < total:
                return
            last[0] = now
            elapsed = now - started
            sample = {
                "elapsed_s": round(elapsed, 2),
                "percent": round(min(100.0, 100.0 * done / total), 1) if total else 100.0,
                "processed_bytes": done,
                "remaining_bytes": max(total - done, 0),
                "total_bytes": total,
                "rate_bps": round(done / elapsed) if elapsed > 0 else 0,
                "memory_iteration": None,
            }
            self.samples.append(sample)
            if self.progress_cb is not None:
                self.progress_cb(sample)

        return report


class _Tally:
    """What one side of a copy saw: the checksum of the content and its data and hole bytes."""

    def __init__(self) -> None:
        self.digest = BlockDigest()
        self.data_bytes = 0
        self.hole_bytes = 0

    @property
    def total(self) -> int:
        return self.data_bytes + self.hole_bytes

    def data(self, piece: bytes) -> None:
        self.digest.update(piece)
        self.data_bytes += len(piece)

    def hole(self, length: int) -> None:
        self.digest.zeros(length)
        self.hole_bytes += length

    def result(self, sparse: bool) -> dict[str, Any]:
        return {
            "checksum": self.digest.hexdigest(),
            "bytes": self.total,
            "data_bytes": self.data_bytes,
            "hole_bytes": self.hole_bytes,
            "sparse": sparse,
        }


def _sparse_flags(upload: bool) -> tuple[int, int, int, bool]:
    """(download flag, upload flag, recv flag, sparse) for this libvirt."""
    sparse_down = _flag("VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM")
    sparse_up = _flag("VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM")
    stop_at_hole = _flag("VIR_STREAM_RECV_STOP_AT_HOLE")
    sparse = bool(sparse_down and stop_at_hole and (not upload or sparse_up))
    return sparse_down, sparse_up, stop_at_hole, sparse


def _stream_range(
    src_conn: Any,
    src_vol: Any,
    dst_conn: Any | None,
    dst_vol: Any | None,
    *,
    offset: int,
    length: int,
    expected: int,
    tally: _Tally,
    deadline: float,
    progress: Callable[[int], None] | None = None,
    setup: threading.Lock | None = None,
) -> bool:
    """Download ``length`` bytes of a volume from ``offset`` (length 0: to its end; sparse
    when libvirt can) into ``tally``, uploading them to the same range of ``dst_vol`` when
    given. Bounded by the deadline and by an iteration count derived from ``expected`` (the
    bytes the range should hold). Returns whether the stream was sparse.

    ``setup``, when given, is held while the streams are set up: libvirt refuses to set up
    an upload while another stream of the same volume is being set up (``volume ... is
    still in use``); once set up, the streams of a volume run side by side."""
    sparse_down, sparse_up, stop_at_hole, sparse = _sparse_flags(dst_vol is not None)
    down = src_conn.newStream(0)
    up = dst_conn.newStream(0) if dst_vol is not None else None
    before = tally.total
    try:
        with setup if setup is not None else contextlib.nullcontext():
            src_vol.download(down, offset, length, sparse_down if sparse else 0)
            if up is not None:
                dst_vol.upload(up, offset, length, sparse_up if sparse else 0)
        limit = 2 * ((max(expected, 0) + 64 * MIB) // 4096 + 2)
        for _attempt in range(limit):
            if time.monotonic() > deadline:
                raise MigrationError("volume copy exceeded the timeout", phase="copy")
            got = down.recvFlags(CHUNK, stop_at_hole) if sparse else down.recv(CHUNK)
            if isinstance(got, int):
                if got != -3:
                    raise MigrationError(f"unexpected stream status {got}", phase="copy")
                hole = down.recvHole(0)
                if up is not None:
                    up.sendHole(hole, 0)
                tally.hole(hole)
            elif not got:
                break
            else:
                if up is not None:
                    _send_all(up, got)
                tally.data(got)
            if progress is not None:
                progress(tally.total - before)
        else:
            raise MigrationError(
                f"volume stream did not end after {limit} reads (expected {expected} bytes)",
                phase="copy",
            )
        down.finish()
        if up is not None:
            up.finish()
    except (MigrationError, _lverr()):
        _abort_streams(down, up)
        raise
    return sparse


def stream_volume(
    src_conn: Any,
    src_vol: Any,
    dst_conn: Any | None,
    dst_vol: Any | None,
    *,
    total: int,
    deadline: float,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Download a volume (sparse when libvirt can), upload it when ``dst_vol`` is given.

    The checksum (CHECKSUM_ALGORITHM, ``checksum`` in the result) covers the volume's byte
    content with holes read as zeros. Bounded by the deadline and by an iteration count
    derived from ``total``.
    """
    tally = _Tally()
    sparse = _stream_range(
        src_conn, src_vol, dst_conn, dst_vol, offset=0, length=0, expected=total,
        tally=tally, deadline=deadline, progress=progress,
    )  # fmt: skip
    return tally.result(sparse)


# the unit of a copy whose destination is read back alongside (copy_and_read_back)
SEGMENT = 256 * MIB


def copy_and_read_back(
    src_conn: Any,
    src_vol: Any,
    dst_conn: Any,
    dst_vol: Any,
    *,
    total: int,
    deadline: float,
    progress: Callable[[int], None] | None = None,
    segment: int = SEGMENT,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Copy a volume to the destination and read the destination's copy back, hashed.

    Returns what ``stream_volume`` returns for the copy (the checksum of what was sent) and
    for the destination's copy read back. The volume moves in segments of ``segment``
    bytes (the last one to the volume's end); a second thread reads each segment back from
    the destination while the next one is sent, so both directions of the link work at
    once (a read-back after the whole copy doubles its time over a WAN). Without sparse
    streams, or for a volume of one segment, it is the copy, then the read-back.
    """
    if total <= segment or not _sparse_flags(True)[3]:
        sent = stream_volume(src_conn, src_vol, dst_conn, dst_vol, total=total,
                             deadline=deadline, progress=progress)  # fmt: skip
        check = stream_volume(dst_conn, dst_vol, None, None, total=total, deadline=deadline)
        return sent, check
    segments = [(o, min(segment, total - o)) for o in range(0, total, segment)]
    sent, check = _Tally(), _Tally()
    work: queue.Queue[tuple[int, int, int] | None] = queue.Queue()
    stop = threading.Event()
    setup = threading.Lock()  # the two threads' stream set-ups on the destination volume
    failures: list[BaseException] = []

    def read_back() -> None:
        for _segment in range(len(segments) + 1):
            try:
                item = work.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:  # the deadline passed: the caller sees the bytes missing
                return
            if item is None or stop.is_set():
                return
            offset, length, expected = item
            try:
                _stream_range(dst_conn, dst_vol, None, None, offset=offset, length=length,
                              expected=expected, tally=check, deadline=deadline,
                              setup=setup)  # fmt: skip
            except (MigrationError, _lverr()) as exc:
                failures.append(exc)
                return

    reader = threading.Thread(target=read_back, name="mcm-read-back", daemon=True)
    reader.start()
    copied = False
    try:
        for number, (offset, expected) in enumerate(segments):
            length = 0 if number == len(segments) - 1 else expected  # the last: to the end
            _stream_range(
                src_conn, src_vol, dst_conn, dst_vol, offset=offset, length=length,
                expected=expected, tally=sent, deadline=deadline, setup=setup,
                progress=None if progress is None else lambda n, o=offset: progress(o + n),
            )  # fmt: skip
            work.put((offset, length, expected))
            if failures:
                break
        copied = True
    finally:
        if not copied:  # the copy's error goes up; the reader stops after its segment
            stop.set()
            work.put(None)
            reader.join(timeout=5)
    work.put(None)
    reader.join(timeout=max(deadline - time.monotonic(), 0) + 5)
    if failures:
        raise failures[0]
    if reader.is_alive() or check.total < sent.total:
        raise MigrationError(
            "reading the destination's copy back did not finish within the timeout",
            phase="verify",
        )
    return sent.result(True), check.result(True)


def hash_file(path: str, deadline: float) -> dict[str, Any]:
    """CHECKSUM_ALGORITHM of a local file's content (holes read as zeros, not read)."""
    tally = _Tally()
    for piece in file_segments(path):
        if time.monotonic() > deadline:
            raise MigrationError(f"hashing {path} exceeded the timeout", phase="convert")
        if isinstance(piece, int):
            tally.hole(piece)
        else:
            tally.data(piece)
    return tally.result(True)


def send_file(
    path: str,
    dst_conn: Any,
    dst_vol: Any,
    *,
    deadline: float,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Upload a local file to a destination volume (its holes as holes when libvirt can),
    hashed on the way (CHECKSUM_ALGORITHM, as ``hash_file``)."""
    sparse_up = _flag("VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM")
    up = dst_conn.newStream(0)
    tally = _Tally()
    try:
        dst_vol.upload(up, 0, 0, sparse_up)
        for piece in file_segments(path):
            if time.monotonic() > deadline:
                raise MigrationError("volume copy exceeded the timeout", phase="copy")
            if isinstance(piece, int):
                if sparse_up:
                    up.sendHole(piece, 0)
                else:
                    full, rest = divmod(piece, CHUNK)
                    for _block in range(full):
                        _send_all(up, ZEROS)
                    if rest:
                        _send_all(up, ZEROS[:rest])
                tally.hole(piece)
            else:
                _send_all(up, piece)
                tally.data(piece)
            if progress is not None:
                progress(tally.total)
        up.finish()
    except (MigrationError, OSError, _lverr()):
        _abort_streams(up)
        raise
    return tally.result(bool(sparse_up))


def _abort_streams(*streams: Any) -> None:
    """Abort the given libvirt streams (None skipped) after a failed copy."""
    for stream in streams:
        if stream is None:
            continue
        try:
            stream.abort()
        except _lverr():
            pass  # already finished or broken: nothing more to release


def _send_all(stream: Any, data: bytes) -> None:
    view = memoryview(data)
    for _attempt in range(len(data) + 1):
        if not view:
            return
        sent = stream.send(bytes(view))
        if sent < 0:
            raise MigrationError(f"stream send returned {sent}", phase="copy")
        view = view[sent:]
    raise MigrationError("stream send made no progress", phase="copy")


# --------------------------------------------------------------------------- entry points


def migrate(
    src_conn: Any,
    dst_uri: str,
    domain_name: str,
    mode: str,
    *,
    dst_conn: Any | None = None,
    options: MigrateOptions | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    check_mode: bool = False,
) -> dict[str, Any]:
    """Migrate ``domain_name`` from ``src_conn`` to ``dst_uri`` in ``mode`` (or auto).

    Returns the result dict (changed, mode, mode_reason, plan, stats, progress, checksum,
    source_state, destination_state, warnings, changes); raises MigrationError with
    ``details`` (phase, source_state, cleanup, progress) on failure.
    """
    opts = options or MigrateOptions()
    own = dst_conn is None
    if own:
        dst_conn = open_destination(dst_uri)
    try:
        return _migrate(
            src_conn, dst_conn, dst_uri, domain_name,
            mode=mode, opts=opts, progress=progress, check_mode=check_mode,
        )  # fmt: skip
    finally:
        if own:
            _bounded(dst_conn.close, CLOSE_TIMEOUT, "close-destination")


def plan_from_source(
    src_conn: Any, dst_uri: str, name: str, mode: str, opts: MigrateOptions
) -> dict[str, Any]:
    """The check-mode plan when the destination cannot be reached yet (no TLS material on
    this host): mode, bytes and time from the source; the destination is not checked."""
    job = Migration(src_conn, None, dst_uri, name, opts=opts, progress=None, check_mode=True)
    dom = lookup_domain(src_conn, name)
    if dom is None:
        raise MigrationError(f"VM {name}: no domain of that name on the source",
                             phase="preflight")  # fmt: skip
    xml = dom.XMLDesc(0)
    disks = job.disks(dom, xml)
    active = bool(dom.isActive())
    chosen, reason = choose_mode(mode, [d["path"] for d in disks], active, opts.shared_paths,
                                 opts.relayout())  # fmt: skip
    job.warn_tcg_risk(chosen, active, xml)
    return {
        "changed": True,
        "mode": chosen,
        "mode_reason": reason,
        "plan": job.plan(chosen, reason, dom, disks),
        "stats": {},
        "progress": [],
        "checksum": None,
        "source_state": domain_state(dom),
        "destination_state": "unknown",
        "warnings": [
            *job.warnings,
            f"VM {name}: this host has no TLS certificates yet (setup_migration_tls.yml makes "
            "them; in check mode it changed nothing), so the destination was not checked",
        ],
        "changes": [],
    }


def _migrate(
    src_conn: Any,
    dst_conn: Any,
    dst_uri: str,
    name: str,
    *,
    mode: str,
    opts: MigrateOptions,
    progress: Callable[[dict[str, Any]], None] | None,
    check_mode: bool,
) -> dict[str, Any]:
    job = Migration(
        src_conn, dst_conn, dst_uri, name, opts=opts, progress=progress, check_mode=check_mode
    )
    try:
        return _migrate_job(job, mode, progress)
    except MigrationError as exc:
        # what the job did before it failed (aborts, cut streams, cleanup) is reported too
        exc.details["warnings"] = job.warnings + exc.details.get("warnings", [])
        raise


def _migrate_job(
    job: Migration, mode: str, progress: Callable[[dict[str, Any]], None] | None
) -> dict[str, Any]:
    src_conn, dst_conn, name, opts, check_mode = (job.src, job.dst, job.name, job.opts,
                                                  job.check_mode)  # fmt: skip
    dom = lookup_domain(src_conn, name)
    dst_dom = lookup_domain(dst_conn, name)
    if dom is None:
        if dst_dom is not None:
            return _already(
                job, dst_dom, "the domain is not on the source, it is on the destination"
            )
        raise MigrationError(
            f"VM {name}: no domain of that name on the source nor on the destination",
            phase="preflight",
        )
    if (
        dst_dom is not None
        and dst_dom.UUIDString() == dom.UUIDString()
        and not dom.isActive()
        and dst_dom.isActive()
    ):
        return _already(job, dst_dom, "runs on the destination, the source copy is shut off")
    job.dom = dom
    running = active_job(dom)
    if running is not None:
        sample = progress_sample(running, 0) or {}
        raise MigrationError(
            f"VM {name}: the domain has an active job ("
            f"{JOB_OPERATIONS.get(running.get('operation', 0), 'unknown')}, "
            f"{sample.get('percent', 0)}% done), probably a migration already running: "
            "wait for it, or abort it (virDomainAbortJob) before migrating again",
            phase="preflight",
        )
    xml = dom.XMLDesc(0)
    disks = job.disks(dom, xml)
    active = bool(dom.isActive())
    chosen, reason = choose_mode(mode, [d["path"] for d in disks], active, opts.shared_paths,
                                 opts.relayout())  # fmt: skip
    plan = job.plan(chosen, reason, dom, disks)
    job.preflight(chosen, disks)
    job.warn_tcg_risk(chosen, active, xml)
    if chosen == "cold" and opts.relayout():
        plan["relayout"] = job.relayout_plan()
    result: dict[str, Any] = {
        "changed": True,
        "mode": chosen,
        "mode_reason": reason,
        "plan": plan,
        "stats": {},
        "progress": [],
        "checksum": None,
        "source_state": domain_state(dom),
        "destination_state": "absent",
    }
    if check_mode:
        result["warnings"] = job.warnings
        result["changes"] = job.changes
        return result
    if progress is not None:
        _report_mode(job, progress, chosen, shutdown=chosen == "cold" and bool(dom.isActive()))
    if chosen == "cold":
        outcome = job.run_cold(disks)
    else:
        outcome = job.run_live(chosen, disks)
    result.update(outcome)
    result["progress"] = job.samples
    result["warnings"] = job.warnings
    result["changes"] = job.changes
    return result


def _report_mode(
    job: Migration, progress: Callable[[dict[str, Any]], None], mode: str, *, shutdown: bool
) -> None:
    """The callback gets every sample with the chosen ``mode`` (``job.samples`` stay as they
    are); a progress file also says what happens before the first sample."""
    if isinstance(progress, ProgressFile):
        progress.write({"mode": mode, "phase": "shutdown" if shutdown else "starting"})

    def with_mode(sample: dict[str, Any]) -> None:
        progress({"mode": mode, **sample})

    job.progress_cb = with_mode


def _already(job: Migration, dst_dom: Any, why: str) -> dict[str, Any]:
    return {
        "changed": False,
        "mode": None,
        "mode_reason": f"nothing to do: {why}",
        "plan": None,
        "stats": {},
        "progress": [],
        "checksum": None,
        "source_state": job.source_state(),
        "destination_state": domain_state(dst_dom),
        "warnings": [],
        "changes": [],
    }


def resolve_address(name: str) -> str:
    """The address of a host name (IPv4 first), as this host resolves it."""
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise MigrationError(
            f"cannot resolve the destination {name} ({exc}): give destination_address",
            phase="input",
        ) from exc
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    return infos[0][4][0]


def run_vm_migrate(
    params: Mapping[str, Any],
    check_mode: bool,
    diff_mode: bool,
    connect: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """The vm_migrate module: options in, result out (MigrationError on failure)."""
    if not HAS_LIBVIRT:
        raise MigrationError(f"libvirt-python is required: {LIBVIRT_IMPORT_ERROR}", phase="input")
    name, destination = params["name"], params["destination"]
    address = params.get("destination_address") or resolve_address(destination)
    encryption = params.get("encryption") or DEFAULT_ENCRYPTION
    dst_uri = params.get("destination_uri") or default_destination_uri(address, encryption)
    check_uri_encryption(dst_uri, encryption)
    warnings: list[str] = []
    if encryption == "none":
        warnings.append(
            f"VM {name}: encryption=none - the migration stream (memory and disks) and the "
            f"libvirt connection to {destination} cross the network in plaintext"
        )
    shared_paths = list(params.get("shared_paths") or DEFAULT_SHARED_PATHS)
    watch_s = None if params.get("guest_watch_s") is None else float(params["guest_watch_s"])
    opts = MigrateOptions(
        migrate_address=address,
        encryption=encryption,
        max_downtime_ms=params.get("max_downtime_ms") or DEFAULT_MAX_DOWNTIME_MS,
        bandwidth_mib=params.get("bandwidth_mib"),
        auto_converge=bool(params.get("auto_converge")),
        timeout=params.get("timeout") or DEFAULT_TIMEOUT,
        shutdown_timeout=params.get("shutdown_timeout", DEFAULT_SHUTDOWN_TIMEOUT),
        shared_paths=shared_paths,
        pool=params.get("pool") or DEFAULT_POOL,
        pool_path=params.get("pool_path") or DEFAULT_POOL_PATH,
        guest_watch_s=watch_s,
        destination_pool=params.get("destination_pool") or None,
        destination_pool_path=params.get("destination_pool_path") or None,
        disk_format=params.get("disk_format") or None,
        destination_bridge=params.get("destination_bridge") or None,
        destination_network=params.get("destination_network") or None,
        convert_dir=params.get("convert_dir") or DEFAULT_CONVERT_DIR,
    )
    if opts.disk_format and opts.disk_format not in DISK_FORMATS:
        raise MigrationError(f"disk_format must be one of {', '.join(DISK_FORMATS)}",
                             phase="input")  # fmt: skip
    if opts.destination_pool_path and not opts.destination_pool:
        raise MigrationError("destination_pool_path needs destination_pool (the pool's name)",
                             phase="input")  # fmt: skip
    if opts.destination_network and not opts.destination_bridge:
        raise MigrationError("destination_network needs destination_bridge (the network's "
                             "bridge on the destination)", phase="input")  # fmt: skip
    opener = connect or libvirt.open
    try:
        src_conn = opener("qemu:///system")
    except _lverr() as exc:
        raise MigrationError(f"cannot connect to qemu:///system: {exc}", phase="connect") from exc
    # The latest sample in a JSON file, for whoever watches (the vm_migrate action plugin);
    # removed when the module ends, whatever the outcome.
    reporter = None
    if params.get("progress_file") and not check_mode:
        reporter = ProgressFile(
            params["progress_file"], name=name, destination=destination,
            source=socket.gethostname(),
        )  # fmt: skip
    try:
        dom = lookup_domain(src_conn, name)
        unsafe = params.get("unsafe")
        if unsafe is None and dom is not None:
            paths = [d["path"] for d in parse_domain(dom.XMLDesc(0))["disks"]
                     if d["device"] == "disk" and d["path"]]  # fmt: skip
            # Only a shared directory libvirt does not recognise needs UNSAFE.
            unsafe = bool(paths) and any(under_paths(p, shared_paths) for p in paths)
        opts.unsafe = bool(unsafe)
        wanted_mode = params.get("mode") or "auto"
        try:
            if encryption == "tls" and check_mode and missing_tls_files(TLS_CLIENT_FILES):
                # check mode of a first migration: setup_migration_tls.yml, run in check
                # mode too, made nothing yet; plan from the source alone
                result = plan_from_source(src_conn, dst_uri, name, wanted_mode, opts)
            else:
                if encryption == "tls":
                    tls_preflight(socket.gethostname())
                result = migrate(src_conn, dst_uri, name, wanted_mode, options=opts,
                                 check_mode=check_mode, progress=reporter)  # fmt: skip
        except MigrationError as exc:
            exc.details["warnings"] = warnings + exc.details.get("warnings", [])
            exc.details.setdefault("destination", destination)
            exc.details.setdefault("destination_uri", dst_uri)
            exc.details.setdefault("encryption", encryption)
            if "source_state" not in exc.details:
                found = lookup_domain(src_conn, name)
                exc.details["source_state"] = domain_state(found) if found else "absent"
            raise
        except _lverr() as exc:
            raise MigrationError(f"VM {name}: {exc}", phase="unknown") from exc
    finally:
        src_conn.close()
        if reporter is not None:
            reporter.remove()
    if reporter is not None and reporter.error:
        warnings.append(f"VM {name}: {reporter.error}")
    result["source"] = socket.gethostname()
    result["destination"] = destination
    result["destination_address"] = address
    result["destination_uri"] = dst_uri
    result["encryption"] = encryption
    result["warnings"] = warnings + result.get("warnings", [])
    result["unsafe"] = opts.unsafe
    if result.get("plan"):
        result["plan"]["destination"] = destination
    if diff_mode and result["changed"]:
        result["diff"] = {
            "before_header": f"domain {name}",
            "after_header": f"domain {name}",
            "before": f"host: {result['source']}\nstate: running on the source\n",
            "after": f"host: {destination}\nstate: {result['destination_state']}\n"
            f"source: {result['source_state']}\n",
        }
    return result
