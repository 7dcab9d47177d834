"""The heartbeat of a migration run's ledger row (plugins/plugin_utils/heartbeat.py)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

heartbeat = importlib.import_module(
    "ansible_collections.multicloud.migration.plugins.plugin_utils.heartbeat"
)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_it_beats_while_the_owner_lives_and_stops_when_it_is_gone():
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    beats: list[float] = []
    ticks = iter(range(1000))

    def sleep(_interval: float) -> None:
        if next(ticks) == 3:
            owner.kill()
            owner.wait()

    why = heartbeat.keep_beating(lambda: beats.append(time.time()) or True, owner.pid, 5, sleep)
    assert why == "owner gone" and len(beats) == 3


def test_it_stops_once_the_row_is_no_longer_its_own_and_retries_a_failed_beat():
    answers = iter([RuntimeError("state host away"), True, False])

    def beat() -> bool:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    why = heartbeat.keep_beating(beat, os.getpid(), 5, lambda _s: None)
    assert why == "no longer the owner"


def test_a_dead_owner_is_not_alive():
    assert heartbeat.alive(os.getpid()) and not heartbeat.alive(dead_pid())


def test_spawn_detaches_and_does_not_hold_the_callers_output(tmp_path):
    """A caller that reads our output to its end (subprocess.run with capture_output, as
    the tests and AWX do) is not held by the detached process."""
    marker = tmp_path / "ran"
    script = f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parents[2] / "collections")!r})
from ansible_collections.multicloud.migration.plugins.plugin_utils import heartbeat
def run():
    time.sleep(3)
    open({str(marker)!r}, "w").write("done")
heartbeat.spawn(run)
print("spawned")
"""
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=30, check=False)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout == "spawned\n", proc.stderr
    assert time.monotonic() - started < 2.5, "the caller waited for the detached process"
    deadline = time.monotonic() + 10
    while not marker.exists():
        assert time.monotonic() < deadline, "the detached process never ran"
        time.sleep(0.1)


def test_the_remote_beat_touches_only_its_own_file_and_tells_a_failure_from_an_answer(tmp_path):
    """Exit 0: beat; NOT_OWNER_RC: the file names another run or is gone (stop); anything
    else (ssh's 255 for an unreachable state host) is no answer: BeatFailed, retried."""
    beat_file = tmp_path / "7.beat"
    beat_file.write_text("mine")
    os.utime(beat_file, (1, 1))

    def run(token: str) -> int:
        command = heartbeat.beat_command(str(beat_file), token)
        return subprocess.run(["sh", "-c", command], check=False).returncode

    assert run("mine") == 0 and beat_file.stat().st_mtime > 1
    os.utime(beat_file, (1, 1))
    assert run("theirs") == heartbeat.NOT_OWNER_RC and beat_file.stat().st_mtime == 1
    beat_file.unlink()
    assert run("mine") == heartbeat.NOT_OWNER_RC and not beat_file.exists()
    assert heartbeat.still_owner(0) is True and heartbeat.still_owner(3) is False
    for rc in (1, 255):
        with pytest.raises(heartbeat.BeatFailed):
            heartbeat.still_owner(rc)
