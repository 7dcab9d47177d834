"""libvirt_migrate after a failure, without libvirt: the destination is cleaned over a new
connection when the first one broke (its libvirtd was restarted), not called at all while
it does not answer (link cut), and bounded in time; the free-space check of the preflight."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
from fake_libvirt import NO_DOMAIN, NO_STORAGE_VOL, LibvirtError

from ansible_collections.multicloud.migration.plugins.module_utils import libvirt_migrate as lm
from ansible_collections.multicloud.migration.plugins.module_utils import libvirt_vm as lv

PATH = "/var/lib/mcm/vms/vm1.qcow2"
MIB = 1024 * 1024


@pytest.fixture
def fake(monkeypatch):
    space = SimpleNamespace(libvirtError=LibvirtError, VIR_ERR_NO_DOMAIN=NO_DOMAIN,
                            VIR_ERR_NO_STORAGE_VOL=NO_STORAGE_VOL, opened=[])  # fmt: skip
    monkeypatch.setattr(lm, "libvirt", space)
    monkeypatch.setattr(lv, "libvirt", space)
    return space


class Vol:
    def __init__(self, conn: Conn, path: str) -> None:
        self.conn, self._path = conn, path

    def path(self) -> str:
        self.conn.call()
        return self._path

    def delete(self, flags: int = 0) -> None:
        self.conn.call()
        self.conn.volumes.discard(self._path)


class Pool:
    def __init__(self, conn: Conn, size: int = 0, free: int = 0) -> None:
        self.conn, self.size, self.free = conn, size, free

    def XMLDesc(self, flags: int = 0) -> str:
        return "<pool><target><path>/var/lib/mcm/vms</path></target></pool>"

    def isActive(self) -> bool:
        return True

    def refresh(self, flags: int = 0) -> None:
        self.conn.call()

    def name(self) -> str:
        return "mcm"

    def info(self) -> list[int]:
        return [2, self.size, self.size - self.free, self.free]


class Conn:
    """A destination: ``dead`` fails every call, ``hang`` blocks it."""

    def __init__(self, volumes: set[str], dead: bool = False, hang: bool = False) -> None:
        self.volumes, self.dead, self.hang, self.calls = volumes, dead, hang, 0
        self.released = threading.Event()

    def call(self) -> None:
        self.calls += 1
        if self.hang:
            self.released.wait(30)
        if self.dead:
            raise LibvirtError("End of file while reading data: Input/output error")

    def isAlive(self) -> int:
        return 0 if self.dead else 1

    def lookupByName(self, name: str) -> None:
        self.call()
        raise LibvirtError("no domain", NO_DOMAIN)

    def listAllStoragePools(self, flags: int = 0) -> list[Pool]:
        self.call()
        return [Pool(self)]

    def storageVolLookupByPath(self, path: str) -> Vol:
        self.call()
        if path not in self.volumes:
            raise LibvirtError("no volume", NO_STORAGE_VOL)
        return Vol(self, path)

    def close(self) -> None:
        self.call()


def migration(dst: Conn) -> lm.Migration:
    job = lm.Migration(object(), dst, "qemu+tls://192.0.2.1/system", "vm1",
                       opts=lm.MigrateOptions())  # fmt: skip
    job.created_volumes = [Vol(dst, PATH)]
    job.created_paths = [PATH]
    return job


def test_cleanup_over_the_first_connection(fake, monkeypatch):
    monkeypatch.setattr(lm, "probe_tcp", lambda uri, timeout=10: None)
    dst = Conn({PATH})
    job = migration(dst)
    job.clean_destination_bounded()
    assert dst.volumes == set() and job.left_paths() == []
    assert job.cleanup == [f"deleted volume {PATH} on the destination"]


def test_a_broken_connection_is_replaced_once_the_destination_answers(fake, monkeypatch):
    """libvirtd killed and restarted: the first connection fails, a new one cleans."""
    answers = iter([False, False, True, True, True])

    def probe(uri: str, timeout: float = 10) -> None:
        if not next(answers):
            raise lm.MigrationError("cannot reach the destination's libvirtd", phase="connect")

    volumes = {PATH}
    fresh = Conn(volumes)
    fake.open = lambda uri: fake.opened.append(uri) or fresh
    monkeypatch.setattr(lm, "probe_tcp", probe)
    monkeypatch.setattr(lm.time, "sleep", lambda s: None)
    job = migration(Conn(volumes, dead=True))
    job.clean_destination_bounded()
    assert fake.opened == ["qemu+tls://192.0.2.1/system"]
    assert volumes == set() and job.left_paths() == []
    assert any("deleted volume" in c for c in job.cleanup)


def test_an_unreachable_destination_is_not_called_and_reported(fake, monkeypatch):
    """Link cut: every probe fails; the connection is never used (it would hang)."""

    def probe(uri: str, timeout: float = 10) -> None:
        raise lm.MigrationError("cannot reach: timed out", phase="connect")

    monkeypatch.setattr(lm, "probe_tcp", probe)
    monkeypatch.setattr(lm, "CLEANUP_WAIT", 0.2)
    dst = Conn({PATH}, hang=True)
    job = migration(dst)
    started = time.monotonic()
    job.clean_destination_bounded()
    assert time.monotonic() - started < 5
    assert dst.calls == 0 and job.left_paths() == [PATH]
    assert any("could not clean the destination" in w and PATH in w for w in job.warnings)


def failing_probe(error: OSError, calls: list[str]):
    """probe_tcp failing as it does for a socket that raised ``error`` (its cause)."""

    def probe(uri: str, timeout: float = 10) -> None:
        calls.append(uri)
        try:
            raise error
        except OSError as exc:
            raise lm.MigrationError(f"cannot reach: {exc}", phase="connect") from exc

    return probe


def test_a_silent_destination_is_given_up_after_a_few_probes(fake, monkeypatch):
    """Probes that time out (no refusal: a cut link) end the wait long before CLEANUP_WAIT;
    refusals (libvirtd restarting) do not."""
    probes: list[str] = []
    monkeypatch.setattr(lm, "probe_tcp", failing_probe(TimeoutError("timed out"), probes))
    monkeypatch.setattr(lm.time, "sleep", lambda s: None)
    dst = Conn({PATH}, hang=True)
    job = migration(dst)
    job.clean_destination_bounded()
    assert len(probes) == lm.UNREACHABLE_PROBES and dst.calls == 0
    assert any(f"{lm.UNREACHABLE_PROBES} probes in a row: unreachable" in w and PATH in w
               for w in job.warnings)  # fmt: skip

    refused: list[str] = []
    monkeypatch.setattr(lm, "probe_tcp", failing_probe(ConnectionRefusedError("refused"), refused))
    job = migration(Conn({PATH}, hang=True))
    job.clean_destination_bounded()
    assert len(refused) > lm.UNREACHABLE_PROBES, "a refusal is waited for until CLEANUP_WAIT"


def test_a_hanging_cleanup_is_abandoned(fake, monkeypatch):
    monkeypatch.setattr(lm, "probe_tcp", lambda uri, timeout=10: None)
    monkeypatch.setattr(lm, "CLEANUP_WAIT", 0.3)
    monkeypatch.setattr(lm, "_bounded", _short(lm._bounded))
    dst = Conn({PATH}, hang=True)
    job = migration(dst)
    started = time.monotonic()
    job.clean_destination_bounded()
    dst.released.set()
    assert time.monotonic() - started < 10
    assert job.left_paths() == [PATH]
    assert any("did not answer" in w for w in job.warnings)


def _short(bounded):
    def wrapper(fn, seconds, name):
        return bounded(fn, min(seconds, 0.3), name)

    return wrapper


def test_bounded_reports_the_exception_and_gives_up_on_a_hang():
    def fails() -> None:
        raise ValueError("boom")

    finished, error = lm._bounded(fails, 5, "t")
    assert finished and isinstance(error, ValueError)
    release = threading.Event()
    finished, error = lm._bounded(lambda: release.wait(10), 0.1, "t")
    release.set()
    assert not finished and error is None


def test_preflight_space_check(fake):
    job = migration(Conn(set()))
    pool = Pool(job.dst, size=100 * MIB, free=8 * MIB)
    with pytest.raises(lm.MigrationError) as caught:
        job.check_space({"mcm": [pool, 40 * MIB, "/var/lib/mcm/vms"]})
    err = caught.value
    assert err.details["phase"] == "preflight"
    assert err.details["needed_bytes"] == 40 * MIB and err.details["available_bytes"] == 8 * MIB
    assert "not enough space" in str(err) and "8.0 MiB free" in str(err)
    assert "40.0 MiB" in str(err) and "/var/lib/mcm/vms" in str(err)
    job.check_space({"mcm": [pool, 8 * MIB, "/var/lib/mcm/vms"]})  # exactly fits


class KeepaliveConn:
    def __init__(self, calls: list) -> None:
        self.calls = calls

    def setKeepAlive(self, interval: int, count: int) -> int:
        self.calls.append(("keepalive", interval, count))
        return 0


def test_the_destination_connection_has_client_keepalive(fake, monkeypatch):
    """A cut link must close the connection after a few silent keepalives: without it every
    call on it, and the remote close when its last object is freed (at the module's exit),
    wait for TCP to give up (~15 min; the module hung there on the lab)."""
    calls: list = []
    fake.virEventRegisterDefaultImpl = lambda: calls.append("register") or 0
    fake.virEventRunDefaultImpl = lambda: time.sleep(0.05) or 0
    fake.open = lambda uri: calls.append(("open", uri)) or KeepaliveConn(calls)
    monkeypatch.setattr(lm, "_EVENT_LOOP", {})
    monkeypatch.setattr(lm, "probe_tcp", lambda uri, timeout=10: None)
    conn = lm.open_destination("qemu+tls://192.0.2.1/system")
    assert isinstance(conn, KeepaliveConn)
    keepalive = ("keepalive", lm.KEEPALIVE_INTERVAL, lm.KEEPALIVE_COUNT)
    assert calls == ["register", ("open", "qemu+tls://192.0.2.1/system"), keepalive]
    assert lm.KEEPALIVE_INTERVAL * (lm.KEEPALIVE_COUNT + 1) < lm.CLEANUP_WAIT
    lm.open_peer("qemu+tls://192.0.2.1/system")  # the event loop is registered only once
    assert calls.count("register") == 1 and calls.count(keepalive) == 2
    assert lm._EVENT_LOOP["thread"].daemon


def test_no_keepalive_without_an_event_loop(fake, monkeypatch):
    calls: list = []
    fake.open = lambda uri: KeepaliveConn(calls)
    monkeypatch.setattr(lm, "_EVENT_LOOP", {})
    assert lm.open_peer("qemu+tls://192.0.2.1/system") is not None
    assert calls == []
