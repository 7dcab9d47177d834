"""libvirt_migrate without libvirt: mode choice, flags per mode, parameters, progress and
completed-stats parsing, the polling loop and the volume stream against fakes."""

from __future__ import annotations

import hashlib
import os
import random
import socket
import threading
import time
from types import SimpleNamespace

import pytest
from fake_libvirt import NO_DOMAIN, NO_STORAGE_POOL, LibvirtError

from ansible_collections.multicloud.migration.plugins.module_utils import libvirt_migrate as lm

SHARED = ["/var/lib/mcm/shared"]


FAKE_LIBVIRT = SimpleNamespace(
    libvirtError=LibvirtError,
    VIR_MIGRATE_LIVE=1,
    VIR_MIGRATE_PEER2PEER=2,
    VIR_MIGRATE_PERSIST_DEST=8,
    VIR_MIGRATE_UNDEFINE_SOURCE=16,
    VIR_MIGRATE_NON_SHARED_DISK=64,
    VIR_MIGRATE_UNSAFE=512,
    VIR_MIGRATE_ABORT_ON_ERROR=4096,
    VIR_MIGRATE_AUTO_CONVERGE=8192,
    VIR_MIGRATE_TLS=65536,
    VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM=1,
    VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM=1,
    VIR_STREAM_RECV_STOP_AT_HOLE=1,
    VIR_ERR_NO_DOMAIN=NO_DOMAIN,
)


@pytest.fixture
def fake_libvirt(monkeypatch):
    monkeypatch.setattr(lm, "libvirt", FAKE_LIBVIRT)
    return FAKE_LIBVIRT


# --------------------------------------------------------------------------- mode choice


@pytest.mark.parametrize(
    ("disks", "active", "mode"),
    [
        (["/var/lib/mcm/shared/a.qcow2"], True, "live"),
        (["/var/lib/mcm/shared/sub/a.qcow2"], True, "live"),
        (["/var/lib/mcm/vms/a.qcow2"], True, "live-block"),
        (["/var/lib/mcm/shared/a.qcow2", "/var/lib/mcm/vms/b.qcow2"], True, "live-block"),
        (["/var/lib/mcm/shared-not/a.qcow2"], True, "live-block"),  # a prefix is no parent
        (["/var/lib/mcm/vms/a.qcow2"], False, "cold"),
        (["/var/lib/mcm/shared/a.qcow2"], False, "cold"),
        ([], True, "live"),
    ],
)
def test_auto_mode(disks, active, mode):
    chosen, reason = lm.choose_mode("auto", disks, active, SHARED)
    assert chosen == mode
    assert reason.startswith("auto: ")


def test_requested_mode_is_kept_and_live_needs_a_running_domain():
    assert lm.choose_mode("cold", ["/x"], True, SHARED) == ("cold", "requested")
    assert lm.choose_mode("live", ["/x"], True, SHARED) == ("live", "requested")
    for mode in ("live", "live-block"):
        with pytest.raises(lm.MigrationError, match="use mode cold"):
            lm.choose_mode(mode, ["/x"], False, SHARED)
    with pytest.raises(lm.MigrationError, match="mode must be one of"):
        lm.choose_mode("warp", [], True, SHARED)


def test_under_paths():
    assert lm.under_paths("/var/lib/mcm/shared/x", ["/var/lib/mcm/shared/"])
    assert not lm.under_paths("/var/lib/mcm/shared", ["/var/lib/mcm/shared"])
    assert not lm.under_paths("/var/lib/mcm/sharedx/y", ["/var/lib/mcm/shared"])
    assert not lm.under_paths(None, SHARED)


# --------------------------------------------------------------------------- flags, params


def test_flags_per_mode():
    live = lm.flag_names("live")
    assert live == [
        "VIR_MIGRATE_LIVE",
        "VIR_MIGRATE_PEER2PEER",
        "VIR_MIGRATE_PERSIST_DEST",
        "VIR_MIGRATE_UNDEFINE_SOURCE",
        "VIR_MIGRATE_ABORT_ON_ERROR",
    ]
    block = lm.flag_names("live-block")
    assert set(block) == {*live, "VIR_MIGRATE_NON_SHARED_DISK"}
    assert "VIR_MIGRATE_UNSAFE" in lm.flag_names("live", unsafe=True)
    assert "VIR_MIGRATE_AUTO_CONVERGE" in lm.flag_names("live-block", auto_converge=True)
    assert "VIR_MIGRATE_UNSAFE" not in block
    with pytest.raises(lm.MigrationError):
        lm.flag_names("cold")


def test_flag_values(fake_libvirt):
    assert lm.migration_flags(lm.flag_names("live", unsafe=True)) == 1 | 2 | 8 | 16 | 4096 | 512
    assert lm.migration_flags(lm.flag_names("live-block")) == 1 | 2 | 8 | 16 | 4096 | 64
    with pytest.raises(lm.MigrationError, match="VIR_MIGRATE_NOPE"):
        lm.migration_flags(["VIR_MIGRATE_NOPE"])


def test_params_and_uris():
    assert lm.migration_params("tcp://172.30.0.21") == {"migrate_uri": "tcp://172.30.0.21"}
    params = lm.migration_params(
        "tcp://172.30.0.21", dest_xml="<domain/>", bandwidth_mib=50, disks=["vda"]
    )
    assert params == {
        "migrate_uri": "tcp://172.30.0.21",
        "destination_xml": "<domain/>",
        "bandwidth": 50,
        "migrate_disks": ["vda"],
    }
    assert lm.default_destination_uri("172.30.0.21", "none") == "qemu+tcp://172.30.0.21/system"
    assert lm.default_destination_uri("fd00::1", "none") == "qemu+tcp://[fd00::1]/system"


def test_tls_flag_and_default_uris(fake_libvirt):
    tls = lm.flag_names("live-block", tls=True)
    assert tls[-1] == "VIR_MIGRATE_TLS" and "VIR_MIGRATE_TLS" not in lm.flag_names("live")
    assert lm.migration_flags(lm.flag_names("live", tls=True)) == 1 | 2 | 8 | 16 | 4096 | 65536
    assert lm.DEFAULT_ENCRYPTION == "tls"
    assert lm.default_destination_uri("172.30.0.21") == "qemu+tls://172.30.0.21/system"
    assert lm.default_destination_uri("172.30.0.21", "none") == "qemu+tcp://172.30.0.21/system"
    assert lm.default_destination_uri("fd00::1", "tls") == "qemu+tls://[fd00::1]/system"


@pytest.mark.parametrize(
    ("uri", "encryption", "ok"),
    [
        ("qemu+tls://d/system", "tls", True),
        ("qemu+ssh://root@d/system", "tls", True),
        ("qemu+tcp://d/system", "tls", False),
        ("qemu://d/system", "tls", False),
        ("qemu:///system", "tls", True),  # local: nothing crosses a network
        ("qemu+tcp://d/system", "none", True),
        ("qemu+tls://d/system", "none", True),
    ],
)
def test_uri_must_be_encrypted_with_tls(uri, encryption, ok):
    if ok:
        lm.check_uri_encryption(uri, encryption)
        return
    with pytest.raises(lm.MigrationError, match="encryption=none") as info:
        lm.check_uri_encryption(uri, encryption)
    assert info.value.details["phase"] == "input"


def test_unknown_encryption_is_refused():
    with pytest.raises(lm.MigrationError, match="encryption must be one of tls, none"):
        lm.check_uri_encryption("qemu+tls://d/system", "rot13")


def test_tls_preflight_names_the_missing_files_and_the_playbook(tmp_path):
    present = tmp_path / "cacert.pem"
    present.write_text("pem")
    missing = tmp_path / "clientkey.pem"
    assert lm.missing_tls_files([str(present), str(missing)]) == [str(missing)]
    lm.tls_preflight("src", [str(present)])  # nothing missing: no error
    with pytest.raises(lm.MigrationError) as info:
        lm.tls_preflight("src", [str(present), str(missing)])
    message = str(info.value)
    assert "playbooks/setup_migration_tls.yml" in message and str(missing) in message
    assert "encryption=none" in message and "source src" in message
    assert info.value.details == {"phase": "preflight", "missing_files": [str(missing)]}
    assert set(lm.TLS_CLIENT_FILES) >= {
        "/etc/pki/CA/cacert.pem",
        "/etc/pki/libvirt/clientcert.pem",
        "/etc/pki/qemu/client-key.pem",
    }


def test_probe_of_a_tls_uri_names_the_setup_playbook():
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        with pytest.raises(lm.MigrationError, match=r"setup_migration_tls\.yml") as info:
            lm.probe_tcp(f"qemu+tls://127.0.0.1:{port}/system", timeout=2)
    assert f"127.0.0.1:{port}" in str(info.value) and "listen_tls" in str(info.value)


def test_plan_reports_encryption_and_the_tls_flag(fake_libvirt):
    class Dom:
        def isActive(self):
            return True

        def info(self):
            return [1, 131072, 131072, 1, 0]

    for encryption, flagged in (("tls", True), ("none", False)):
        opts = lm.MigrateOptions(migrate_address="172.30.0.21", encryption=encryption)
        migration = lm.Migration(object(), object(), "qemu+tls://172.30.0.21/system", "vm1",
                                 opts=opts)  # fmt: skip
        plan = migration.plan("live", "requested", Dom(), [])
        assert plan["encryption"] == encryption
        assert ("VIR_MIGRATE_TLS" in plan["flags"]) is flagged
        cold = migration.plan("cold", "requested", Dom(), [])
        assert cold["encryption"] == encryption and "flags" not in cold


def test_probe_ignores_local_uris():
    lm.probe_tcp("qemu:///system")  # no host: nothing to probe


def test_probe_names_the_unreachable_address():
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(lm.MigrationError, match=f"127.0.0.1:{port}") as info:
            lm.probe_tcp(f"qemu+tcp://127.0.0.1:{port}/system", timeout=2)
    assert info.value.details["phase"] == "connect"


# --------------------------------------------------------------------------- progress, stats


def test_progress_sample_math():
    stats = {
        "type": 2,
        "data_total": 200 * 2**20,
        "data_processed": 50 * 2**20,
        "data_remaining": 150 * 2**20,
        "memory_bps": 30_000_000,
        "disk_bps": 10_000_000,
        "memory_iteration": 1,
    }
    sample = lm.progress_sample(stats, 1.234)
    assert sample == {
        "elapsed_s": 1.23,
        "percent": 25.0,
        "processed_bytes": 50 * 2**20,
        "remaining_bytes": 150 * 2**20,
        "total_bytes": 200 * 2**20,
        "rate_bps": 40_000_000,
        "memory_iteration": 1,
        "disk_processed_bytes": None,
        "disk_total_bytes": None,
    }
    assert lm.progress_sample({"type": 0}, 1) is None
    assert lm.progress_sample(None, 1) is None
    partial = lm.progress_sample({"type": 2, "data_total": 10, "data_processed": 4}, 0)
    assert partial["remaining_bytes"] == 6 and partial["percent"] == 40.0
    assert lm.progress_sample({"type": 2}, 0)["percent"] == 0.0
    block = lm.progress_sample({"type": 2, "disk_total": 64, "disk_processed": 16}, 0)
    assert (block["disk_processed_bytes"], block["disk_total_bytes"]) == (16, 64)
    over = lm.progress_sample({"type": 2, "data_total": 10, "data_processed": 12}, 0)
    assert over["percent"] == 100.0


def test_completed_stats_parsing():
    stats = {
        "type": 3,
        "operation": 3,
        "time_elapsed": 1130,
        "downtime": 64,
        "downtime_net": 60,
        "setup_time": 12,
        "data_total": 80_000_000,
        "data_processed": 70_000_000,
        "disk_total": 67_108_864,
        "disk_processed": 3_000_000,
        "memory_total": 134_217_728,
        "memory_processed": 60_000_000,
        "memory_iteration": 3,
    }
    assert lm.parse_completed_stats(stats) == {
        "downtime_ms": 64,
        "downtime_net_ms": 60,
        "elapsed_ms": 1130,
        "setup_ms": 12,
        "bytes": 70_000_000,
        "data_total": 80_000_000,
        "disk_bytes": 3_000_000,
        "disk_total": 67_108_864,
        "memory_bytes": 60_000_000,
        "memory_total": 134_217_728,
        "memory_iterations": 3,
    }
    empty = lm.parse_completed_stats({})
    assert empty["downtime_ms"] is None and empty["bytes"] is None
    assert lm.parse_completed_stats({"data_total": 5})["bytes"] == 5


def test_estimate():
    assert lm.estimate_seconds(100 * 2**20, None) == 1.0  # 100 MiB/s assumed
    assert lm.estimate_seconds(100 * 2**20, 50) == 2.0


def test_hash_zeros_equals_hashing_real_zeros():
    for length in (0, 1, lm.CHUNK, lm.CHUNK + 7, 3 * lm.CHUNK - 1):
        digest = hashlib.sha256()
        lm.hash_zeros(digest, length)
        assert digest.hexdigest() == hashlib.sha256(bytes(length)).hexdigest()


def block_digest(content: bytes) -> str:
    """The reference: sha256 over the sha256 of each 1 MiB block of the content."""
    outer = hashlib.sha256()
    for start in range(0, len(content), lm.BLOCK):
        outer.update(hashlib.sha256(content[start : start + lm.BLOCK]).digest())
    return outer.hexdigest()


@pytest.mark.parametrize("seed", range(6))
def test_block_digest_depends_on_the_content_only(seed):
    """Data and holes in any split (unaligned, across blocks, long holes) give the digest
    of the content; a hole is never hashed byte by byte beyond the block it starts in."""
    rng = random.Random(seed)
    parts: list[tuple[str, int | bytes]] = []
    for _part in range(rng.randint(1, 12)):
        if rng.random() < 0.5:
            parts.append(("data", rng.randbytes(rng.choice([1, 7, 4096, lm.BLOCK, lm.BLOCK + 3]))))
        else:
            parts.append(("hole", rng.choice([1, 9, lm.BLOCK - 1, lm.BLOCK, 3 * lm.BLOCK + 5])))
    digest = lm.BlockDigest()
    content = b""
    for kind, value in parts:
        if kind == "data":
            digest.update(value)
            content += value
        else:
            digest.zeros(value)
            content += bytes(value)
    assert digest.hexdigest() == block_digest(content)
    assert digest.hexdigest() == digest.hexdigest()  # reading it does not change it


def test_block_digest_of_a_long_hole_hashes_no_zeros(monkeypatch):
    zeros = []
    monkeypatch.setattr(lm, "hash_zeros", lambda d, n: zeros.append(n) or d.update(bytes(n)))
    digest = lm.BlockDigest()
    digest.update(b"x")
    digest.zeros(64 * lm.BLOCK)  # 64 MiB of hole after one byte of data
    assert zeros == [lm.BLOCK - 1, 1]  # the rest of the first block, the last byte
    assert digest.hexdigest() == block_digest(b"x" + bytes(64 * lm.BLOCK))


# --------------------------------------------------------------------------- the job loop


class FakeDomain:
    """A source domain whose migration takes ``duration`` seconds (or fails)."""

    def __init__(self, duration: float, fail: str | None = None) -> None:
        self.duration, self.fail = duration, fail
        self.started: float | None = None
        self.aborted = False
        self.downtimes: list[int] = []

    def migrateToURI3(self, uri, params, flags):
        self.started = time.monotonic()
        self.call = (uri, params, flags)
        for _attempt in range(1000):
            if self.aborted:
                raise LibvirtError("operation aborted: migration out job: canceled by client")
            if time.monotonic() - self.started >= self.duration:
                break
            time.sleep(0.01)
        if self.fail:
            raise LibvirtError(self.fail)
        self.started = None
        return 0

    def jobStats(self, flags=0):
        if self.started is None:
            return {"type": 0}
        done = min(1.0, (time.monotonic() - self.started) / self.duration)
        return {"type": 2, "data_total": 1000, "data_processed": int(1000 * done)}

    def migrateSetMaxDowntime(self, ms, flags=0):
        self.downtimes.append(ms)

    def abortJob(self):
        self.aborted = True


def job(timeout: float = 5.0, progress=None) -> lm.Migration:
    opts = lm.MigrateOptions(timeout=timeout, poll_interval=0.05, max_downtime_ms=30)
    return lm.Migration(object(), object(), "qemu+tcp://d/system", "vm1", opts=opts,
                        progress=progress)  # fmt: skip


def test_job_polls_progress_and_sets_downtime(fake_libvirt):
    seen = []
    migration = job(progress=seen.append)
    dom = FakeDomain(0.4)
    error = migration._run_job(dom, {"migrate_uri": "tcp://d"}, 3, time.monotonic())
    assert error is None
    assert dom.call == ("qemu+tcp://d/system", {"migrate_uri": "tcp://d"}, 3)
    assert len(migration.samples) >= 3 and seen == migration.samples
    percents = [s["percent"] for s in migration.samples]
    assert percents == sorted(percents) and 0 <= percents[0] < percents[-1] <= 100
    assert dom.downtimes == [30]  # once, when the job shows up


def test_job_failure_is_returned_not_raised(fake_libvirt):
    error = job()._run_job(FakeDomain(0.1, fail="unable to connect"), {}, 0, time.monotonic())
    assert isinstance(error, lm.MigrationError)
    assert "unable to connect" in str(error) and error.details["phase"] == "migrate"


def test_job_past_the_timeout_is_aborted(fake_libvirt):
    dom = FakeDomain(30)
    started = time.monotonic()
    error = job(timeout=0.3)._run_job(dom, {}, 0, started)
    assert dom.aborted and time.monotonic() - started < 5
    assert "timeout of 0.3 s" in str(error) and "aborted" in str(error)


def test_stalled_libvirt_calls_cannot_stretch_the_job_loop(fake_libvirt, monkeypatch):
    """jobStats that waits for a lock and an abortJob that never answers (a hung peer): the
    loop still reports by timeout + ABORT_GRACE, with the job left behind as an error."""
    monkeypatch.setattr(lm, "ABORT_GRACE", 0.6)
    monkeypatch.setattr(lm, "PROBE_TIMEOUT", 0.1)
    monkeypatch.setattr(lm, "ABORT_REPEAT", 0.1)
    release = threading.Event()

    class Stalled(FakeDomain):
        def jobStats(self, flags=0):
            release.wait(30)
            return super().jobStats(flags)

        def abortJob(self):
            release.wait(30)

    migration = job(timeout=0.3)
    monkeypatch.setattr(migration, "_kill_incoming", lambda: migration.warnings.append("kill"))
    started = time.monotonic()
    try:
        error = migration._run_job(Stalled(30), {}, 0, started)
        took = time.monotonic() - started
    finally:
        release.set()
    assert 0.9 <= took < 2.5, took
    assert "did not end within" in str(error)
    assert migration.samples == []  # no reading ever came back
    assert "kill" in migration.warnings  # after ABORTS_BEFORE_KILL unanswered aborts
    assert any("abortJob failed (retrying): no answer" in w for w in migration.warnings)


class DeafDomain(FakeDomain):
    """A job stuck in a stream to a silent peer: abortJob is accepted and changes nothing
    (libvirt 9.0 during the disk mirror); it fails once its streams are cut."""

    def __init__(self) -> None:
        super().__init__(60)
        self.cut = threading.Event()
        self.aborts = 0

    def migrateToURI3(self, uri, params, flags):
        self.started = time.monotonic()
        if self.cut.wait(30):
            raise LibvirtError("operation failed: migration of disk vda failed: "
                               "Software caused connection abort")  # fmt: skip
        return 0

    def abortJob(self):
        self.aborts += 1


class Peer:
    """The destination connection: closed by keepalive ``lost_after`` s after creation."""

    def __init__(self, lost_after: float) -> None:
        self.lost_at = time.monotonic() + lost_after

    def isAlive(self) -> int:
        return int(time.monotonic() < self.lost_at)


def deaf_job(monkeypatch, timeout: float, dst) -> tuple[lm.Migration, DeafDomain, list]:
    monkeypatch.setattr(lm, "ABORT_REPEAT", 0.05)
    opts = lm.MigrateOptions(timeout=timeout, poll_interval=0.02, max_downtime_ms=30)
    migration = lm.Migration(object(), dst, "qemu+tcp://d/system", "vm1", opts=opts)
    dom = DeafDomain()
    calls: list[str] = []
    monkeypatch.setattr(migration, "_kill_incoming", lambda: calls.append("kill"))

    def cut() -> None:
        calls.append("cut")
        dom.cut.set()

    monkeypatch.setattr(migration, "_cut_streams", cut)
    return migration, dom, calls


def test_a_silent_destination_ends_the_job_long_before_the_timeout(fake_libvirt, monkeypatch):
    """Keepalive closed the destination connection: abortJob at once, and with nothing
    to destroy on the destination, the streams cut after ABORTS_BEFORE_KILL aborts."""
    migration, dom, calls = deaf_job(monkeypatch, 60, Peer(0.3))
    started = time.monotonic()
    error = migration._run_job(dom, {}, 0, started)
    assert 0.3 <= time.monotonic() - started < 5
    assert calls == ["cut"] and dom.aborts == lm.ABORTS_BEFORE_KILL
    assert "migration failed: the destination stopped answering" in str(error)
    assert "link cut or host down" in str(error) and "connection abort" in str(error)


def test_a_job_past_its_timeout_that_ignores_abort_has_its_streams_cut(fake_libvirt,
                                                                       monkeypatch):  # fmt: skip
    migration, dom, calls = deaf_job(monkeypatch, 0.3, Peer(60))
    error = migration._run_job(dom, {}, 0, time.monotonic())
    assert calls == ["kill", "cut"] and dom.aborts == lm.ABORTS_BEFORE_CUT
    assert "timeout of 0.3 s" in str(error) and "stopped answering" not in str(error)


def test_cut_streams_destroys_the_qemu_process_connections(monkeypatch, tmp_path):
    """The real cut: the 'qemu' is this process (its pid file in a stand-in directory),
    its connection to the destination address is destroyed, the warning names it."""
    monkeypatch.setattr(lm, "QEMU_PID_DIR", str(tmp_path))
    (tmp_path / "vm1.pid").write_text(f"{os.getpid()}\n")
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname(), timeout=5)
    peer, _address = server.accept()
    try:
        migration = lm.Migration(object(), object(), "qemu+tcp://d/system", "vm1",
                                 opts=lm.MigrateOptions(migrate_address="127.0.0.1"))  # fmt: skip
        migration._cut_streams()
        [warning] = migration.warnings
        assert f"127.0.0.1:{client.getsockname()[1]} -> 127.0.0.1" in warning or (
            f"-> 127.0.0.1:{client.getsockname()[1]}" in warning
        ), warning
        with pytest.raises((ConnectionAbortedError, ConnectionResetError)):
            client.recv(1)
        (tmp_path / "vm1.pid").unlink()
        migration._cut_streams()
        assert "could not be cut" in migration.warnings[1]
    finally:
        for sock in (server, client, peer):
            sock.close()


def test_a_failed_migration_reports_what_the_job_did(fake_libvirt, monkeypatch):
    """The job's warnings (aborts, cut streams, cleanup) go with the MigrationError, so
    that the module's failure shows them (fail_json warnings)."""

    def failing(job, mode, progress):
        job.warnings.append("VM vm1: the job did not stop after abortJob: cut ...")
        raise lm.MigrationError("VM vm1: migration failed: boom", phase="migrate")

    monkeypatch.setattr(lm, "_migrate_job", failing)
    with pytest.raises(lm.MigrationError) as caught:
        lm._migrate(object(), object(), "qemu+tcp://d/system", "vm1", mode="live",
                    opts=lm.MigrateOptions(), progress=None, check_mode=False)  # fmt: skip
    assert caught.value.details["warnings"] == [
        "VM vm1: the job did not stop after abortJob: cut ..."
    ]


def test_abort(fake_libvirt):
    class Conn:
        def __init__(self, dom):
            self.dom = dom

        def lookupByName(self, name):
            return self.dom

    busy = FakeDomain(10)
    busy.started = time.monotonic()
    assert lm.abort(Conn(busy), "vm1") and busy.aborted
    idle = FakeDomain(10)
    assert not lm.abort(Conn(idle), "vm1") and not idle.aborted


# --------------------------------------------------------------------------- streams


class FakeStream:
    def __init__(self, pieces=None):
        self.pieces = list(pieces or [])
        self.received: list = []
        self.finished = self.aborted = False

    # download side: bytes, or ("hole", n)
    def recvFlags(self, nbytes, flags):
        if not self.pieces:
            return b""
        piece = self.pieces[0]
        if isinstance(piece, tuple):
            return -3
        self.pieces.pop(0)
        return piece

    def recv(self, nbytes):
        return self.recvFlags(nbytes, 0)

    def recvHole(self, flags=0):
        return self.pieces.pop(0)[1]

    # upload side
    def send(self, data):
        half = max(1, len(data) // 2)  # partial sends are retried
        self.received.append(data[:half])
        return half

    def sendHole(self, length, flags=0):
        self.received.append(("hole", length))
        return 0

    def finish(self):
        self.finished = True

    def abort(self):
        self.aborted = True


class FakeConn:
    def __init__(self, stream):
        self.stream = stream

    def newStream(self, flags):
        return self.stream


class FakeVol:
    def __init__(self):
        self.calls = []

    def download(self, stream, offset, length, flags):
        self.calls.append(("download", flags))

    def upload(self, stream, offset, length, flags):
        self.calls.append(("upload", flags))


def test_stream_volume_sparse_copy_and_hash(fake_libvirt):
    down = FakeStream([b"abc", ("hole", 5000), b"xyz"])
    up = FakeStream()
    src_vol, dst_vol = FakeVol(), FakeVol()
    done = []
    result = lm.stream_volume(
        FakeConn(down), src_vol, FakeConn(up), dst_vol, total=5006,
        deadline=time.monotonic() + 10, progress=done.append,
    )  # fmt: skip
    content = b"abc" + bytes(5000) + b"xyz"
    assert result == {
        "checksum": block_digest(content),
        "bytes": 5006,
        "data_bytes": 6,
        "hole_bytes": 5000,
        "sparse": True,
    }
    sent = b"".join(p for p in up.received if isinstance(p, bytes))
    assert sent == b"abcxyz" and ("hole", 5000) in up.received
    assert down.finished and up.finished
    assert src_vol.calls == [("download", 1)] and dst_vol.calls == [("upload", 1)]
    assert done[-1] == 5006


def test_stream_volume_aborts_both_streams_on_error(fake_libvirt):
    class Broken(FakeStream):
        def send(self, data):
            raise LibvirtError("connection reset")

    down, up = FakeStream([b"abc"]), Broken()
    with pytest.raises(LibvirtError):
        lm.stream_volume(FakeConn(down), FakeVol(), FakeConn(up), FakeVol(), total=3,
                         deadline=time.monotonic() + 10)  # fmt: skip
    assert down.aborted and up.aborted


def test_stream_volume_is_bounded(fake_libvirt):
    endless = FakeStream([b"x"] * 100_000)
    with pytest.raises(lm.MigrationError, match="did not end"):
        lm.stream_volume(FakeConn(endless), FakeVol(), None, None, total=0,
                         deadline=time.monotonic() + 30)  # fmt: skip


# --------------------------------------------------------------------------- copy with read-back


class RangeStream:
    """A stream of one range of a RangeVol: downloads yield its data and holes, uploads
    write into it."""

    def __init__(self, conn):
        self.conn = conn
        self.pieces: list = []
        self.vol = None
        self.pos = 0
        self.finished = self.aborted = False

    def recvFlags(self, nbytes, flags):
        if not self.pieces:
            return b""
        if isinstance(self.pieces[0], int):
            return -3
        return self.pieces.pop(0)

    def recvHole(self, flags=0):
        return self.pieces.pop(0)

    def send(self, data):
        self.conn.before_send(self)
        self.vol.write(self.pos, data)
        self.pos += len(data)
        return len(data)

    def sendHole(self, length, flags=0):
        self.vol.write(self.pos, bytes(length))
        self.pos += length
        return 0

    def finish(self):
        self.finished = True
        self.conn.finished(self)

    def abort(self):
        self.aborted = True


class RangeConn:
    def __init__(self):
        self.streams: list[RangeStream] = []
        self.log: list[tuple] = []

    def newStream(self, flags):
        self.streams.append(RangeStream(self))
        return self.streams[-1]

    def before_send(self, stream):
        """A hook: tests make an upload fail or wait."""

    def finished(self, stream):
        self.log.append(("finished", stream.vol.name, stream.kind, stream.offset))


class RangeVol:
    """A volume held in memory; zero runs of a block or more are holes in downloads."""

    def __init__(self, name, content=b""):
        self.name = name
        self.data = bytearray(content)
        self.calls: list[tuple] = []

    def write(self, pos, data):
        if len(self.data) < pos + len(data):
            self.data.extend(bytes(pos + len(data) - len(self.data)))
        self.data[pos : pos + len(data)] = data

    def download(self, stream, offset, length, flags):
        end = len(self.data) if length == 0 else offset + length
        self.calls.append(("download", offset, length))
        stream.vol, stream.kind, stream.offset = self, "download", offset
        stream.conn.log.append(("download", self.name, offset))
        chunk = 4096
        for start in range(offset, end, chunk):
            piece = bytes(self.data[start : min(start + chunk, end)])
            if piece.count(0) < len(piece):
                stream.pieces.append(piece)
            elif stream.pieces and isinstance(stream.pieces[-1], int):
                stream.pieces[-1] += len(piece)  # a longer hole
            else:
                stream.pieces.append(len(piece))

    def upload(self, stream, offset, length, flags):
        self.calls.append(("upload", offset, length))
        stream.vol, stream.kind, stream.offset, stream.pos = self, "upload", offset, offset


def _disk(seed: int, size: int) -> bytes:
    rnd = random.Random(seed)
    content = bytearray(size)
    for _extent in range(6):
        at = rnd.randrange(0, size - 5000)
        content[at : at + 5000] = rnd.randbytes(5000)
    return bytes(content)


@pytest.mark.parametrize("seed", range(4))
def test_copy_and_read_back_moves_segments_and_reads_each_back(fake_libvirt, seed):
    size = 10 * 8192 + 123  # 11 segments of 8 KiB, the last a short one
    content = _disk(seed, size)
    src, dst = RangeVol("src", content), RangeVol("dst")
    src_conn, dst_conn = RangeConn(), RangeConn()
    done = []
    sent, check = lm.copy_and_read_back(
        src_conn, src, dst_conn, dst, total=size, deadline=time.monotonic() + 30,
        progress=done.append, segment=8192,
    )  # fmt: skip
    assert bytes(dst.data) == content
    assert sent["checksum"] == check["checksum"] == block_digest(content)
    assert sent["bytes"] == check["bytes"] == size
    assert sent["data_bytes"] + sent["hole_bytes"] == size and sent["sparse"] is True
    # each segment uploaded at its offset (the last to the volume's end), and read back
    uploads = [c for c in dst.calls if c[0] == "upload"]
    assert uploads == [("upload", o, 8192) for o in range(0, 10 * 8192, 8192)] + [
        ("upload", 10 * 8192, 0)
    ]
    assert sorted(c[1] for c in dst.calls if c[0] == "download") == [c[1] for c in uploads]
    assert done == sorted(done) and done[-1] == size
    assert all(s.finished and not s.aborted for s in src_conn.streams + dst_conn.streams)


def test_copy_and_read_back_reads_back_while_the_copy_goes_on(fake_libvirt):
    """The second segment's upload waits until the first one is being read back: without
    the overlap the reader would never start and the upload gives up (no hang)."""
    content = _disk(7, 4 * 8192)
    src, dst = RangeVol("src", content), RangeVol("dst")
    dst_conn = RangeConn()
    reading = threading.Event()
    overlapped = []

    def before_send(stream):
        if stream.offset == 8192 and not overlapped:
            overlapped.append(reading.wait(timeout=5))

    original = dst.download

    def download(stream, offset, length, flags):
        reading.set()
        original(stream, offset, length, flags)

    dst_conn.before_send = before_send
    dst.download = download
    sent, check = lm.copy_and_read_back(
        RangeConn(), src, dst_conn, dst, total=len(content), deadline=time.monotonic() + 30,
        segment=8192,
    )  # fmt: skip
    assert overlapped == [True]
    assert sent["checksum"] == check["checksum"] == block_digest(content)


def test_copy_and_read_back_never_sets_up_two_streams_of_the_volume_at_once(fake_libvirt):
    """libvirt refuses an upload while another stream of the volume is being set up
    ("volume ... is still in use"): the read-back's set-up and the next upload's take
    turns. Here an upload after the first waits (0.3 s at most) for a read-back's set-up to
    begin, and that set-up lasts until an upload looked: without the turns the upload
    meets it and fails."""
    content = _disk(9, 3 * 8192)
    src, dst = RangeVol("src", content), RangeVol("dst")
    setting_up = threading.Event()
    checked = threading.Event()
    original_download, original_upload = dst.download, dst.upload

    def download(stream, offset, length, flags):
        setting_up.set()
        checked.wait(timeout=0.3)  # until an upload looked
        original_download(stream, offset, length, flags)
        setting_up.clear()

    def upload(stream, offset, length, flags):
        busy = offset > 0 and setting_up.wait(timeout=0.3)
        checked.set()
        if busy:
            raise LibvirtError(f"volume '{dst.name}' is still in use.")
        original_upload(stream, offset, length, flags)

    dst.download, dst.upload = download, upload
    sent, check = lm.copy_and_read_back(
        RangeConn(), src, RangeConn(), dst, total=len(content), deadline=time.monotonic() + 30,
        segment=8192,
    )  # fmt: skip
    assert sent["checksum"] == check["checksum"] == block_digest(content)


def test_copy_and_read_back_reports_a_changed_destination(fake_libvirt):
    content = _disk(3, 3 * 8192)
    src, dst = RangeVol("src", content), RangeVol("dst")
    dst_conn = RangeConn()

    def corrupt(stream):
        if stream.offset == 8192:
            stream.vol = RangeVol("elsewhere")  # the second segment lands somewhere else

    dst_conn.before_send = corrupt
    sent, check = lm.copy_and_read_back(
        RangeConn(), src, dst_conn, dst, total=len(content), deadline=time.monotonic() + 30,
        segment=8192,
    )  # fmt: skip
    assert sent["checksum"] == block_digest(content)
    assert check["checksum"] != sent["checksum"]  # the caller refuses the copy


def test_copy_and_read_back_stops_on_a_failed_upload(fake_libvirt):
    content = _disk(5, 4 * 8192)
    src, dst = RangeVol("src", content), RangeVol("dst")
    dst_conn = RangeConn()

    def full(stream):
        if stream.offset == 2 * 8192:
            raise LibvirtError("No space left on device")

    dst_conn.before_send = full
    with pytest.raises(LibvirtError, match="No space"):
        lm.copy_and_read_back(RangeConn(), src, dst_conn, dst, total=len(content),
                              deadline=time.monotonic() + 30, segment=8192)  # fmt: skip
    failed = [s for s in dst_conn.streams if s.kind == "upload" and s.offset == 2 * 8192]
    assert failed and failed[0].aborted
    assert not [c for c in dst.calls if c[0] == "upload" and c[1] > 2 * 8192]
    assert not [t for t in threading.enumerate() if t.name == "mcm-read-back"]


def test_copy_and_read_back_raises_a_failed_read_back(fake_libvirt):
    content = _disk(6, 4 * 8192)
    src, dst = RangeVol("src", content), RangeVol("dst")
    original = dst.download

    def download(stream, offset, length, flags):
        if offset == 8192:
            raise LibvirtError("connection reset by peer")
        original(stream, offset, length, flags)

    dst.download = download
    with pytest.raises(LibvirtError, match="connection reset"):
        lm.copy_and_read_back(RangeConn(), src, RangeConn(), dst, total=len(content),
                              deadline=time.monotonic() + 30, segment=8192)  # fmt: skip


def test_copy_and_read_back_of_one_segment_is_copy_then_read_back(fake_libvirt):
    content = _disk(8, 8192)
    src, dst = RangeVol("src", content), RangeVol("dst")
    sent, check = lm.copy_and_read_back(RangeConn(), src, RangeConn(), dst, total=len(content),
                                        deadline=time.monotonic() + 30, segment=8192)  # fmt: skip
    assert dst.calls == [("upload", 0, 0), ("download", 0, 0)]
    assert sent["checksum"] == check["checksum"] == block_digest(content)


# --------------------------------------------------------------------------- shared storage


class _PoolConn:
    """A destination without pools: lookups fail as libvirt's do."""

    def __init__(self) -> None:
        self.defined: list[str] = []

    def listAllStoragePools(self, flags):
        return []

    def storagePoolLookupByName(self, name):
        raise LibvirtError(code=NO_STORAGE_POOL)


@pytest.mark.parametrize(
    ("pool_path", "created"),
    [("/var/lib/mcm/shared/vms", True), ("/var/lib/mcm/vms", False)],
)
def test_a_shared_disk_gets_its_pool_on_the_destination(monkeypatch, fake_libvirt, pool_path,
                                                        created):  # fmt: skip
    from ansible_collections.multicloud.migration.plugins.module_utils import libvirt_vm

    monkeypatch.setattr(libvirt_vm, "libvirt", SimpleNamespace(
        libvirtError=LibvirtError, VIR_ERR_NO_STORAGE_POOL=NO_STORAGE_POOL))  # fmt: skip
    opts = lm.MigrateOptions(shared_paths=["/var/lib/mcm/shared"], pool="mcm-shared",
                             pool_path=pool_path)  # fmt: skip
    migration = lm.Migration(object(), _PoolConn(), "qemu+tls://d/system", "t-v", opts=opts,
                             check_mode=True)  # fmt: skip
    disks = [{"path": "/var/lib/mcm/shared/vms/t-v.qcow2", "shared": True}]
    migration.shared_pool(disks)
    expected = [("create", "pool", "mcm-shared")] if created else []
    assert [(c["action"], c["object"], c["name"]) for c in migration.changes] == expected


# --------------------------------------------------------------------------- guest reset watch


class _EventConn:
    """Records domainEventRegisterAny callbacks; ``fire`` calls them like libvirt's loop."""

    def __init__(self) -> None:
        self.callbacks: dict[int, tuple[int, object]] = {}
        self.deregistered: list[int] = []

    def domainEventRegisterAny(self, _dom, event_id, callback, _opaque):
        self.callbacks[len(self.callbacks) + 1] = (event_id, callback)
        return len(self.callbacks)

    def domainEventDeregisterAny(self, callback_id):
        self.deregistered.append(callback_id)

    def fire(self, event_id: int, name: str, *args) -> None:
        dom = SimpleNamespace(name=lambda: name)
        for kind, callback in self.callbacks.values():
            if kind == event_id:
                callback(self, dom, *args, None)


def test_guest_reset_watch_sees_the_domains_reset_and_crash_not_others(fake_libvirt, monkeypatch):
    monkeypatch.setattr(lm, "_EVENT_LOOP", {"thread": object()})
    conn = _EventConn()
    watch = lm.GuestResetWatch(conn, "t-vm")
    assert watch.active and sorted(kind for kind, _cb in conn.callbacks.values()) == [0, 1]
    conn.fire(1, "t-other")  # another domain's reset
    conn.fire(0, "t-vm", 5, 0)  # t-vm's lifecycle event: resumed, not crashed
    started = time.monotonic()
    assert watch.wait(0.3, started) == [] and time.monotonic() - started >= 0.3
    conn.fire(1, "t-vm")
    conn.fire(0, "t-vm", 8, 0)  # VIR_DOMAIN_EVENT_CRASHED
    events = watch.wait(5, started)
    assert [e["event"] for e in events] == ["reset", "crashed"]
    assert all(0 <= e["after_s"] < 5 for e in events)
    watch.close()
    assert conn.deregistered == [1, 2] and watch.ids == []


def test_guest_reset_watch_without_an_event_loop_watches_nothing(fake_libvirt, monkeypatch):
    monkeypatch.setattr(lm, "_EVENT_LOOP", {})
    conn = _EventConn()
    watch = lm.GuestResetWatch(conn, "t-vm")
    assert not watch.active and conn.callbacks == {}
    assert watch.wait(10, time.monotonic()) == []  # returns at once


def test_guest_resets_become_the_ledger_rows_error():
    from ansible_collections.multicloud.migration.plugins.filter.migration import (
        migration_guest_resets,
        migration_result,
    )

    moved = {"item": {"key": "t/a"}, "guest_resets": []}
    reset = {"item": {"key": "t/b"}, "guest_resets": [{"event": "reset", "after_s": 0.8}]}
    assert migration_guest_resets([moved]) is None
    assert migration_guest_resets([moved, reset]) == (
        "t/b: the guest was reset on the destination (0.8 s after its migration ended): "
        "it lost its running state"
    )
    assert migration_result(reset)["guest_resets"] == [{"event": "reset", "after_s": 0.8}]


def test_source_disks_left_names_host_and_path():
    from ansible_collections.multicloud.migration.plugins.filter.migration import (
        source_disks_left,
    )

    result = {"item": {"source": "mcm-a1"}, "source_disks_left": ["/v/t-a.qcow2", "/v/t-b.raw"]}
    assert source_disks_left(result) == ["mcm-a1:/v/t-a.qcow2", "mcm-a1:/v/t-b.raw"]
    assert source_disks_left({"item": {"source": "mcm-a1"}}) == []


# --------------------------------------------------------------------------- TCG + QEMU < 9.0


class _VersionConn:
    def __init__(self, version: object) -> None:
        self.version = version

    def getVersion(self) -> object:
        if isinstance(self.version, Exception):
            raise self.version
        return self.version


def test_hypervisor_version(fake_libvirt):
    assert lm.hypervisor_version(_VersionConn(7_002_022)) == (7, 2, 22)
    assert lm.hypervisor_version(_VersionConn(10_000_002)) == (10, 0, 2)
    assert lm.hypervisor_version(_VersionConn(LibvirtError("no driver"))) is None


TCG_XML = "<domain type='qemu'><name>vm1</name><devices/></domain>"


@pytest.mark.parametrize(
    ("domain_type", "version", "at_risk"),
    [
        ("qemu", (7, 2, 22), True),
        ("qemu", (8, 2, 9), True),
        ("qemu", (9, 0, 0), False),  # the first release with the fix
        ("qemu", (10, 0, 2), False),
        ("qemu", None, False),  # unknown: not reported
        ("kvm", (7, 2, 22), False),  # KVM tracks in the kernel
    ],
)
def test_tcg_live_risk(domain_type, version, at_risk):
    risk = lm.tcg_live_risk(domain_type, version)
    assert (risk is not None) == at_risk
    if at_risk:
        assert f"QEMU {'.'.join(map(str, version))}" in risk
        assert "mode=cold" in risk and "03bfc2188f06" in risk


class _TcgDomain:
    """A running disk-less TCG domain with no job (auto mode chooses live for it)."""

    def __init__(self, domain_type: str) -> None:
        self.xml = TCG_XML.replace("'qemu'", f"'{domain_type}'")

    def UUIDString(self) -> str:
        return "6d0f5e0e-3c1c-4a55-9d0e-000000000001"

    def isActive(self) -> int:
        return 1

    def XMLDesc(self, _flags: int) -> str:
        return self.xml

    def jobStats(self, _flags: int) -> dict:
        return {"type": 0}

    def info(self) -> list[int]:
        return [1, 131072, 131072, 1, 0]

    def state(self) -> list[int]:
        return [1, 1]  # running


class _TcgConn(_VersionConn):
    def __init__(self, version: object, domain: _TcgDomain | None) -> None:
        super().__init__(version)
        self.domain = domain

    def lookupByName(self, _name: str) -> _TcgDomain:
        if self.domain is None:
            raise LibvirtError("no domain", NO_DOMAIN)
        return self.domain

    def lookupByUUIDString(self, _uuid: str) -> _TcgDomain:
        raise LibvirtError("no domain", NO_DOMAIN)


def assert_tcg_warning(result: dict, warned: bool) -> None:
    """The plan's TCG warning is there exactly when expected, naming the VM and QEMU 7.2.22."""
    tcg = [w for w in result["warnings"] if "TCG" in w]
    assert bool(tcg) == warned, result["warnings"]
    if warned:
        assert tcg[0].startswith("VM vm1: the source runs the guest under TCG")
        assert "QEMU 7.2.22" in tcg[0]


@pytest.mark.parametrize(("domain_type", "version", "warned"),
                         [("qemu", 7_002_022, True), ("qemu", 10_000_002, False),
                          ("kvm", 7_002_022, False)])  # fmt: skip
def test_live_plan_warns_of_tcg_on_old_qemu(fake_libvirt, monkeypatch, domain_type, version,
                                            warned):  # fmt: skip
    from ansible_collections.multicloud.migration.plugins.module_utils import libvirt_vm

    monkeypatch.setattr(libvirt_vm, "libvirt", fake_libvirt)
    src = _TcgConn(version, _TcgDomain(domain_type))
    dst = _TcgConn(10_000_002, None)
    result = lm.migrate(src, "qemu+tcp://192.0.2.1/system", "vm1", "auto", dst_conn=dst,
                        options=lm.MigrateOptions(encryption="none"), check_mode=True)  # fmt: skip
    assert result["mode"] == "live"
    assert_tcg_warning(result, warned)


@pytest.mark.parametrize(("domain_type", "version", "warned"),
                         [("qemu", 7_002_022, True), ("kvm", 7_002_022, False)])  # fmt: skip
def test_plan_without_tls_material_warns_of_tcg_too(fake_libvirt, monkeypatch, domain_type,
                                                    version, warned):  # fmt: skip
    """The check-mode plan from the source alone (no TLS files yet) warns as migrate does."""
    from ansible_collections.multicloud.migration.plugins.module_utils import libvirt_vm

    monkeypatch.setattr(libvirt_vm, "libvirt", fake_libvirt)
    src = _TcgConn(version, _TcgDomain(domain_type))
    result = lm.plan_from_source(src, "qemu+tls://192.0.2.1/system", "vm1", "auto",
                                 lm.MigrateOptions())  # fmt: skip
    assert result["mode"] == "live"
    assert_tcg_warning(result, warned)
    assert "no TLS certificates yet" in result["warnings"][-1]


@pytest.mark.parametrize(("domain_type", "version", "seconds"),
                         [("qemu", (7, 2, 22), lm.RISK_GUEST_WATCH_S), ("qemu", (10, 0, 2), 0.0),
                          ("kvm", (7, 2, 22), 0.0), ("qemu", None, 0.0)])  # fmt: skip
def test_the_guest_is_watched_after_its_move_only_where_a_reset_is_a_known_risk(
        domain_type, version, seconds):  # fmt: skip
    assert lm.guest_watch_seconds(domain_type, version) == seconds
    assert lm.MigrateOptions().guest_watch_s is None  # not given: guest_watch_seconds decides
