"""Live progress of vm_migrate without libvirt: the progress file the engine writes
(atomic, removed at the end, for live and cold samples), the line the action plugin
prints from it, and the action plugin's background run against fakes (lines printed,
the module's own result returned, a bounded wait)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from fake_libvirt import NO_DOMAIN, LibvirtError

from ansible_collections.multicloud.migration.plugins.action import vm_migrate as action
from ansible_collections.multicloud.migration.plugins.module_utils import libvirt_migrate as lm
from ansible_collections.multicloud.migration.plugins.module_utils import libvirt_vm as lv
from ansible_collections.multicloud.migration.plugins.module_utils import (
    migration_progress as mp,
)

MIB = 1024 * 1024
LIVE = {
    "elapsed_s": 15.2,
    "percent": 42.5,
    "processed_bytes": int(60.1 * MIB),
    "remaining_bytes": 80 * MIB,
    "total_bytes": int(141.3 * MIB),
    "rate_bps": 4 * MIB,
    "memory_iteration": 2,
    "disk_processed_bytes": None,
    "disk_total_bytes": None,
}


FAKE_LIBVIRT = SimpleNamespace(libvirtError=LibvirtError, VIR_ERR_NO_DOMAIN=NO_DOMAIN)


@pytest.fixture
def fake_libvirt(monkeypatch):
    monkeypatch.setattr(lm, "libvirt", FAKE_LIBVIRT)
    monkeypatch.setattr(lv, "libvirt", FAKE_LIBVIRT)
    monkeypatch.setattr(lm, "HAS_LIBVIRT", True)
    return FAKE_LIBVIRT


class Recorder(mp.ProgressFile):
    """A progress file that also keeps every record it wrote (as read back from disk)."""

    def __init__(self, path: str, **context) -> None:
        super().__init__(path, **context)
        self.seen: list[dict] = []

    def write(self, sample) -> bool:
        ok = super().write(sample)
        if ok:
            self.seen.append(json.loads(Path(self.path).read_text()))
        return ok


# --------------------------------------------------------------------------- the file


def test_progress_file_is_replaced_atomically_and_removed(tmp_path):
    path = tmp_path / "progress.json"
    writer = mp.ProgressFile(str(path), name="web1", destination="mcm-b1")
    assert writer.write({**LIVE, "mode": "live"})
    first = json.loads(path.read_text())
    assert first["percent"] == 42.5 and first["mode"] == "live"
    assert first["name"] == "web1" and first["destination"] == "mcm-b1"
    assert abs(first["updated"] - time.time()) < 60
    writer({**LIVE, "percent": 50.0})  # callable, as the engine's progress callback
    assert json.loads(path.read_text())["percent"] == 50.0
    assert os.listdir(tmp_path) == ["progress.json"]  # no temporary file left behind
    assert writer.writes == 2 and writer.error is None
    writer.remove()
    assert not path.exists()
    writer.remove()  # twice is fine
    assert writer.error is None


def test_a_failed_replace_keeps_the_old_sample_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "progress.json"
    writer = mp.ProgressFile(str(path))
    writer.write({"percent": 10.0})

    def refuse(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mp.os, "replace", refuse)
    assert not writer.write({"percent": 20.0})
    assert json.loads(path.read_text())["percent"] == 10.0
    assert os.listdir(tmp_path) == ["progress.json"]
    assert "No space left" in writer.error
    monkeypatch.undo()
    assert not writer.write({"percent": 30.0}), "writing stops after the first error"


def test_an_unwritable_progress_file_does_not_raise(tmp_path):
    writer = mp.ProgressFile(str(tmp_path / "missing-dir" / "progress.json"))
    assert not writer.write(LIVE)
    assert writer.error and "missing-dir" in writer.error


def test_parse_progress():
    assert mp.parse_progress('{"percent": 1.5}') == {"percent": 1.5}
    for text in (None, "", "  \n", '{"percent": 1', "[1, 2]", "null"):
        assert mp.parse_progress(text) is None, text


# --------------------------------------------------------------------------- the engine


def migration(progress) -> lm.Migration:
    opts = lm.MigrateOptions(timeout=5, poll_interval=0.05, max_downtime_ms=30)
    return lm.Migration(object(), object(), "qemu+tls://d/system", "vm1", opts=opts,
                        progress=progress)  # fmt: skip


class SlowDomain:
    """A source domain whose live migration takes ``duration`` seconds."""

    def __init__(self, duration: float) -> None:
        self.duration = duration
        self.started: float | None = None

    def migrateToURI3(self, uri, params, flags):
        self.started = time.monotonic()
        time.sleep(self.duration)
        self.started = None
        return 0

    def jobStats(self, flags=0):
        if self.started is None:
            return {"type": 0}
        done = min(1.0, (time.monotonic() - self.started) / self.duration)
        return {"type": 2, "data_total": 100 * MIB, "data_processed": int(100 * MIB * done),
                "data_remaining": int(100 * MIB * (1 - done)), "memory_bps": 4 * MIB,
                "memory_iteration": 1}  # fmt: skip

    def migrateSetMaxDowntime(self, ms, flags=0):
        pass


def test_live_samples_go_to_the_progress_file_with_the_mode(tmp_path, fake_libvirt):
    writer = Recorder(str(tmp_path / "p.json"), name="vm1", destination="b1")
    job = migration(writer)
    lm._report_mode(job, writer, "live-block", shutdown=False)
    assert writer.seen == [{"name": "vm1", "destination": "b1", "mode": "live-block",
                            "phase": "starting", "updated": writer.seen[0]["updated"]}]  # fmt: skip
    error = job._run_job(SlowDomain(0.5), {}, 0, time.monotonic())
    assert error is None
    samples = writer.seen[1:]
    assert len(samples) >= 3 and all(s["mode"] == "live-block" for s in samples)
    percents = [s["percent"] for s in samples]
    assert percents == sorted(percents) and percents[0] < percents[-1]
    assert samples[-1]["memory_iteration"] == 1 and samples[-1]["rate_bps"] == 4 * MIB
    # the result's samples are the engine's own, without the file's additions
    assert len(job.samples) == len(samples) and "mode" not in job.samples[0]


def test_cold_copy_progress_goes_to_the_progress_file(tmp_path, fake_libvirt):
    writer = Recorder(str(tmp_path / "p.json"), name="vm1", destination="b1")
    job = migration(writer)
    lm._report_mode(job, writer, "cold", shutdown=True)
    assert writer.seen[0]["phase"] == "shutdown"
    assert "shutting the guest down" in mp.format_progress_line("a1", writer.seen[0], waited=4)
    job.opts.poll_interval = 0
    report = job._cold_progress(time.monotonic() - 2, 64 * MIB)
    report(16 * MIB)
    report(64 * MIB)
    cold = writer.seen[1:]
    assert [s["percent"] for s in cold] == [25.0, 100.0]
    assert cold[0]["mode"] == "cold" and cold[0]["memory_iteration"] is None
    assert cold[0]["remaining_bytes"] == 48 * MIB and cold[0]["rate_bps"] > 0


class FakeConn:
    def __init__(self) -> None:
        self.closed = False

    def lookupByName(self, name):
        return SimpleNamespace(state=lambda: (1, 0), name=lambda: name)

    def close(self) -> None:
        self.closed = True


PARAMS = {"name": "vm1", "destination": "b1", "destination_address": "192.0.2.1",
          "encryption": "none", "unsafe": False}  # fmt: skip


@pytest.mark.parametrize("outcome", ["success", "failure"])
def test_run_vm_migrate_removes_the_progress_file_at_the_end(tmp_path, fake_libvirt,
                                                             monkeypatch, outcome):  # fmt: skip
    path = tmp_path / "progress.json"
    seen: list[dict] = []

    def fake_migrate(src, uri, name, mode, *, options, check_mode, progress):
        assert isinstance(progress, mp.ProgressFile)
        progress({**LIVE, "mode": "live"})
        seen.append(json.loads(path.read_text()))
        if outcome == "failure":
            raise lm.MigrationError("VM vm1: migration failed: boom", phase="migrate")
        return {"changed": True, "warnings": []}

    monkeypatch.setattr(lm, "migrate", fake_migrate)
    params = {**PARAMS, "progress_file": str(path)}
    conn = FakeConn()
    if outcome == "failure":
        with pytest.raises(lm.MigrationError, match="boom"):
            lm.run_vm_migrate(params, False, False, connect=lambda uri: conn)
    else:
        result = lm.run_vm_migrate(params, False, False, connect=lambda uri: conn)
        assert result["changed"] and not [w for w in result["warnings"] if "progress" in w]
    assert seen[0]["percent"] == 42.5 and seen[0]["name"] == "vm1"
    assert seen[0]["destination"] == "b1" and seen[0]["source"]
    assert not path.exists() and conn.closed


def test_run_vm_migrate_without_progress_file_and_in_check_mode(fake_libvirt, monkeypatch,
                                                                tmp_path):  # fmt: skip
    calls = []

    def fake_migrate(src, uri, name, mode, *, options, check_mode, progress):
        calls.append(progress)
        return {"changed": True, "warnings": []}

    monkeypatch.setattr(lm, "migrate", fake_migrate)
    lm.run_vm_migrate(PARAMS, False, False, connect=lambda uri: FakeConn())
    lm.run_vm_migrate({**PARAMS, "progress_file": str(tmp_path / "p.json")}, True, False,
                      connect=lambda uri: FakeConn())  # fmt: skip
    assert calls == [None, None]
    assert not (tmp_path / "p.json").exists()


# --------------------------------------------------------------------------- the line


def test_progress_line_of_a_live_sample():
    line = mp.format_progress_line("mcm-a1", {**LIVE, "mode": "live-block", "name": "web1",
                                              "destination": "mcm-b1"})  # fmt: skip
    assert line == ("mcm-a1: web1 -> mcm-b1 (live-block): 42.5%, 60.1/141.3 MiB, 4.0 MiB/s, "
                    "~20 s left, memory iteration 2, 15 s elapsed")  # fmt: skip


def test_progress_line_of_a_cold_sample_names_from_the_task():
    sample = {"elapsed_s": 3.0, "percent": 25.0, "processed_bytes": 16 * MIB,
              "remaining_bytes": 48 * MIB, "total_bytes": 64 * MIB, "rate_bps": 8 * MIB,
              "memory_iteration": None, "mode": "cold"}  # fmt: skip
    line = mp.format_progress_line("mcm-b1", sample, name="web1", destination="mcm-a1")
    assert line == ("mcm-b1: web1 -> mcm-a1 (cold): 25.0%, 16.0/64.0 MiB, 8.0 MiB/s, "
                    "~6 s left, 3 s elapsed")  # fmt: skip


def test_progress_line_without_rate_or_sample():
    stalled = mp.format_progress_line("h", {**LIVE, "rate_bps": 0}, name="v", destination="d")
    assert "0.0 MiB/s" in stalled and "time left unknown" in stalled
    assert mp.remaining_seconds({"remaining_bytes": 10}) is None
    assert mp.remaining_seconds({"remaining_bytes": 10, "rate_bps": 4}) == 2.5
    waiting = mp.format_progress_line("h", None, name="v", destination="d", waited=2.4)
    assert waiting == "h: v -> d: waiting for the migration to start, 2 s"
    starting = mp.format_progress_line("h", {"mode": "live", "phase": "starting"}, name="v")
    assert starting == "h: v -> ? (live): starting"
    # libvirt's first sample, before the transfer is sized: no 0.0/0.0 MiB, no rate
    unsized = {"elapsed_s": 2.0, "percent": 0.0, "processed_bytes": 0, "total_bytes": 0,
               "remaining_bytes": 0, "rate_bps": 0, "memory_iteration": 0,
               "mode": "live"}  # fmt: skip
    assert mp.format_progress_line("a1", unsized, name="v", destination="b1") == (
        "a1: v -> b1 (live): transfer starting, size not known yet, 2 s elapsed"
    )
    sent = mp.format_progress_line("a1", {**unsized, "processed_bytes": 3 * MIB}, name="v")
    assert sent.endswith(": transfer starting, size not known yet, 3.0 MiB sent, 2 s elapsed")


def test_disk_mirror_phase_gets_a_label_and_a_derived_rate():
    disk = {"elapsed_s": 2.0, "percent": 25.0, "processed_bytes": 16 * MIB,
            "remaining_bytes": 48 * MIB, "total_bytes": 64 * MIB, "rate_bps": 0,
            "memory_iteration": 0, "disk_processed_bytes": 16 * MIB,
            "disk_total_bytes": 64 * MIB, "mode": "live-block"}  # fmt: skip
    later = {**disk, "elapsed_s": 6.0, "percent": 50.0, "processed_bytes": 32 * MIB,
             "remaining_bytes": 32 * MIB}  # fmt: skip
    assert mp.format_progress_line("a1", disk, name="v", destination="b1") == (
        "a1: v -> b1 (live-block, disk mirror): 25.0%, 16.0/64.0 MiB, 0.0 MiB/s, "
        "time left unknown, 2 s elapsed"
    )
    derived = mp.with_rate(later)  # 32 MiB in 6 s
    assert derived["rate_bps"] == round(32 * MIB / 6) and derived["rate_derived"]
    assert "5.3 MiB/s, ~6 s left" in mp.format_progress_line("a1", derived)
    # nothing to derive: a rate from libvirt, no record, nothing processed yet
    assert mp.with_rate({**later, "rate_bps": 5})["rate_bps"] == 5
    assert mp.with_rate(None) is None
    assert mp.with_rate({**later, "processed_bytes": 0})["rate_bps"] == 0
    # the memory phase of the same migration: no label, its iteration shown
    memory = {**LIVE, "mode": "live-block", "disk_total_bytes": 64 * MIB}
    assert "(live-block): 42.5%" in mp.format_progress_line("a1", memory)


# --------------------------------------------------------------------------- the action


def test_action_helpers():
    assert action.parse_interval(None) == action.DEFAULT_INTERVAL
    assert action.parse_interval("2") == 2.0 and action.parse_interval(0) == 0.0
    for bad in (-1, "soon", True, float("nan")):
        with pytest.raises(ValueError, match="progress_interval"):
            action.parse_interval(bad)
    assert action.async_limit({}) == 600 + 60 + action.ASYNC_MARGIN
    assert action.async_limit({"timeout": "30", "shutdown_timeout": 5}) == 35 + action.ASYNC_MARGIN
    status = {"changed": True, "mode": "live", "ansible_job_id": "j1", "started": True,
              "finished": True, "results_file": "/x", "stdout": "", "stderr": "",
              "stdout_lines": [], "stderr_lines": []}  # fmt: skip
    assert action.module_result(status) == {"changed": True, "mode": "live"}
    crash = action.module_result({"failed": True, "msg": "Traceback", "stderr": "boom",
                                  "finished": True})  # fmt: skip
    assert crash == {"failed": True, "msg": "Traceback", "module_stderr": "boom"}


def test_one_cat_reads_both_files(tmp_path):
    import subprocess

    progress, job = tmp_path / "p.json", tmp_path / "job's file"
    command = action.read_command(str(progress), str(job))

    def run() -> tuple:
        out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=False)
        return action.split_output(out.stdout)

    assert [mp.parse_progress(text) for text in run()] == [None, None]  # no file yet
    progress.write_text('{"percent": 5.0}')
    job.write_text('{"started": true, "finished": false, "ansible_job_id": "j1"}')
    text, job_text = run()
    assert mp.parse_progress(text) == {"percent": 5.0}
    assert not action.job_finished(mp.parse_progress(job_text))
    job.write_text('{"changed": true, "mode": "live"}')  # the module's result
    assert action.job_finished(mp.parse_progress(run()[1]))
    assert action.job_finished({"started": 1, "finished": 1})
    assert not action.job_finished(None)
    assert action.split_output("no mark") == ("no mark", None)


class FakeHost:
    """The source host of a background vm_migrate: the job's file says running for
    ``running`` reads (the progress file holding ``records`` one after the other), then
    the module's result ``final``; async_status answers as the module would."""

    def __init__(self, running: int, final: dict, records: list[str]) -> None:
        self.running, self.final, self.records = running, final, list(records)
        self.reads = 0
        self.commands: list[str] = []
        self.status_calls: list[str] = []

    def low_level(self, cmd: str, sudoable: bool = True) -> dict:
        self.commands.append(cmd)
        if action.JOB_MARK not in cmd:
            return {"rc": 0, "stdout": "", "stderr": ""}
        self.reads += 1
        running = self.reads <= self.running
        job = {"started": 1, "finished": 0, "ansible_job_id": "j1"} if running else self.final
        record = self.records.pop(0) if self.records else ""
        return {"rc": 0, "stdout": f"{record}\n{action.JOB_MARK}\n{json.dumps(job)}\n"}

    def async_status(self, jid: str, mode: str, async_dir: str, task_vars: dict) -> dict:
        assert (jid, async_dir) == ("j1", "/root/.ansible_async")
        self.status_calls.append(mode)
        if mode == "cleanup":
            return {"ansible_job_id": jid, "erased": f"{async_dir}/{jid}"}
        return {**self.final, "started": True, "finished": True, "ansible_job_id": "j1",
                "results_file": "/root/.ansible_async/j1", "stdout": "", "stderr": ""}  # fmt: skip


def plugin(args: dict, host: FakeHost) -> tuple:
    task = SimpleNamespace(args=args, async_val=0, check_mode=False, delegate_to=None,
                           action="multicloud.migration.vm_migrate", environment=[])  # fmt: skip
    act = action.ActionModule.__new__(action.ActionModule)
    act._task = task
    act._connection = SimpleNamespace(
        _shell=SimpleNamespace(tmpdir="/root/.ansible/tmp/ansible-tmp-1",
                               join_path=lambda *p: "/".join(p)),
        has_native_async=False,
    )  # fmt: skip
    launched = {}

    def execute_module(module_args, task_vars, wrap_async):
        launched.update(args=dict(module_args), async_val=task.async_val, wrap=wrap_async)
        return {"started": True, "finished": False, "ansible_job_id": "j1", "changed": True,
                "results_file": "/root/.ansible_async/j1"}  # fmt: skip

    act._execute_module = execute_module
    act._low_level_execute_command = host.low_level
    act._async_status = host.async_status
    act.get_shell_option = lambda name, default=None: default
    act._remote_expand_user = lambda path, sudoable=True: path.replace("~", "/root")
    act._remove_tmp_path = lambda path, force=False: host.commands.append(f"remove tmp {path}")
    return act, task, launched


def record(percent: float) -> str:
    return json.dumps({**LIVE, "percent": percent, "mode": "live", "name": "vm1",
                       "destination": "b1"})  # fmt: skip


@pytest.fixture
def clock(monkeypatch):
    """time.sleep advances time.monotonic of the action plugin (no real waiting)."""
    now = [1000.0]
    monkeypatch.setattr(action.time, "sleep", lambda s: now.__setitem__(0, now[0] + s))
    monkeypatch.setattr(action.time, "monotonic", lambda: now[0])
    return now


@pytest.fixture
def shown(monkeypatch):
    lines: list[tuple] = []

    def show(message: str, stderr: bool = False, **_kw) -> None:
        lines.append((message, stderr))

    monkeypatch.setattr(action.display, "display", show)
    monkeypatch.setattr(action.ActionModule, "_json_stdout", staticmethod(lambda: False))
    return lines


def test_action_prints_lines_and_returns_the_module_result(clock, shown):
    final = {"changed": True, "mode": "live", "stats": {"downtime_ms": 50}, "progress": []}
    # read every 0.5 s at first: no file yet, then 10% ... 40%, the module's result at 3 s
    records = ["", record(10), record(20), record(30), record(40)]
    host = FakeHost(5, final, records)
    act, task, launched = plugin({"name": "vm1", "destination": "b1", "timeout": 30}, host)
    result = act._with_progress(dict(task.args), 2.0, {"inventory_hostname": "a1"})
    assert result == {**final, "_ansible_parsed": True}  # decoded as a module's output
    assert launched["wrap"] and launched["async_val"] == 30 + 60 + action.ASYNC_MARGIN
    assert launched["args"]["progress_file"].endswith("/" + action.PROGRESS_NAME)
    assert task.async_val == 0, "the task executor must not poll again"
    # the first line as soon as there is a record (1 s), then every progress_interval
    assert [message for message, _stderr in shown] == [
        mp.format_progress_line("a1", json.loads(record(10))),
        mp.format_progress_line("a1", json.loads(record(40))),
    ]
    assert not shown[0][1], "to stdout with a human stdout callback"
    # the job's file held the module's result: no async_status run, one rm of that file
    assert host.reads == 6 and host.status_calls == []
    # the module removed its progress file; async_wrapper removes the tmpdir
    assert [c for c in host.commands if c.startswith("rm ")] == ["rm -f /root/.ansible_async/j1"]


def test_action_failure_is_the_module_failure(clock, shown):
    final = {"failed": True, "changed": False, "msg": "VM vm1: migration failed: boom",
             "phase": "migrate", "source_state": "running", "progress": []}  # fmt: skip
    host = FakeHost(0, final, [])
    act, task, _launched = plugin(
        {"name": "vm1", "destination": "b1", "progress_file": "/tmp/p.json"}, host
    )
    result = act._with_progress(dict(task.args), 3.0, {"inventory_hostname": "a1"})
    # decoded as a module's output: a failure also carries its error summary (exception)
    decoded = {k: v for k, v in result.items() if k not in ("exception", "_ansible_parsed")}
    assert decoded == final and not shown
    assert host.status_calls == [] and "rm -f /root/.ansible_async/j1 /tmp/p.json" in host.commands


def test_the_job_files_output_is_decoded_as_a_modules_output(clock, shown):
    """A warning as the module wrote it (ansible-core 2.19's legacy profile tags it) comes
    back as the task executor gets it from any module, not as the tagged dict."""
    from ansible.module_utils._internal import _messages
    from ansible.module_utils.common.json import Direction, get_module_encoder

    encoder = get_module_encoder("legacy", Direction.MODULE_TO_CONTROLLER)
    warning = _messages.WarningSummary(event=_messages.Event(msg="VM vm1: careful"))
    final = json.loads(json.dumps({"changed": True, "warnings": [warning]}, cls=encoder))
    assert final["warnings"][0]["__ansible_type"] == "WarningSummary"  # what the file holds
    host = FakeHost(0, final, [])
    act, task, _launched = plugin({"name": "vm1", "destination": "b1"}, host)
    result = act._with_progress(dict(task.args), 3.0, {"inventory_hostname": "a1"})
    assert host.status_calls == []
    [got] = result["warnings"]
    assert isinstance(got, _messages.WarningSummary) and got.event.msg == "VM vm1: careful"


def test_action_asks_async_status_when_async_wrapper_reports_the_end(clock, shown):
    """A job file with async_wrapper's own keys (started, finished: the module was killed
    or crashed): async_status reads it, as the task executor would."""
    final = {"started": 1, "finished": 1, "failed": True, "msg": "Timeout exceeded",
             "child_pid": 42}  # fmt: skip
    host = FakeHost(0, final, [])
    act, task, _launched = plugin({"name": "vm1", "destination": "b1"}, host)
    result = act._with_progress(dict(task.args), 3.0, {"inventory_hostname": "a1"})
    assert result["failed"] and host.status_calls == ["status"]


def test_action_wait_is_bounded(clock, shown):
    host = FakeHost(10**6, {}, [])
    act, task, _launched = plugin({"name": "vm1", "destination": "b1", "timeout": 10,
                                   "shutdown_timeout": 0}, host)  # fmt: skip
    result = act._with_progress(dict(task.args), 5.0, {"inventory_hostname": "a1"})
    limit = 10 + action.ASYNC_MARGIN
    assert result["failed"] and f"no result after {limit + action.POLL_GRACE} s" in result["msg"]
    assert "async_status jid=j1" in result["msg"] and not host.status_calls
    assert host.reads <= limit + action.POLL_GRACE + action.FAST_READS / action.FIRST_TICK + 3
    assert clock[0] - 1000.0 <= limit + action.POLL_GRACE + 2
    # no progress file ever: "waiting" lines every progress_interval
    assert (limit + action.POLL_GRACE) / 5 - 2 <= len(shown) <= (limit + action.POLL_GRACE) / 5 + 2
    assert shown[0][0] == "a1: vm1 -> b1: waiting for the migration to start, 5 s"


def test_action_asks_async_status_when_the_job_file_is_gone(clock, shown):
    host = FakeHost(0, {}, [])
    host.low_level = lambda cmd, sudoable=True: {"rc": 1, "stdout": "", "stderr": "gone"}
    act, task, _launched = plugin({"name": "vm1", "destination": "b1"}, host)
    act._low_level_execute_command = host.low_level
    missing = {"failed": True, "msg": "could not find job", "started": True, "finished": True}
    act._async_status = lambda jid, mode, async_dir, task_vars: dict(missing)
    result = act._with_progress(dict(task.args), 3.0, {"inventory_hostname": "a1"})
    assert result == {"failed": True, "msg": "could not find job"}
    assert clock[0] - 1000.0 <= action.MAX_UNREAD + 1
