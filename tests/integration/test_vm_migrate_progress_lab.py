"""Progress lines of vm_migrate on the lab (issue 5): a throttled live-block migration
mcm-a1 -> mcm-b1 of a guest whose memory holds 30 MiB of random data prints progress
lines with a growing percent on the playbook's standard output, its result is the
module's own (the same keys as a foreground run, no async bookkeeping), and failures -
an unknown destination, a timeout after some progress lines - are the module's own.

Everything is named prg-* (domain prg-v1, bridge prg-br on mcm-a1 and mcm-b1, console
files /var/lib/mcm/console/prg-*, the progress file /tmp/prg-progress.json), one guest
runs at a time, and the teardown removes all of it on both hosts, also after a failure.
The migrations use encryption=none so that the test needs (and touches) no TLS set-up.
"""

from __future__ import annotations

import json
import re
import time

import pytest
import yaml

from conftest import (
    BIN,
    CONSOLE_DIR,
    call,
    console,
    lab_bridge,
    lab_guest,
    libvirt_cleanup,
    libvirt_probe,
    run,
)

pytestmark = pytest.mark.lab

SRC, DST = "mcm-a1", "mcm-b1"
ADDRESS = {"mcm-a1": "172.30.0.11", "mcm-b1": "172.30.0.21"}
PREFIX, BRIDGE, VM = "prg-", "prg-br", "prg-v1"
PROGRESS_FILE = "/tmp/prg-progress.json"
RUNNING = 1
FILL_MIB = 30  # /dev/shm of the 128 MiB guest holds a little less than 40
LINE = re.compile(
    r"^(?P<host>\S+): (?P<vm>\S+) -> (?P<dest>\S+) \((?P<mode>[\w-]+)(?P<mirror>, disk mirror)?\): "
    r"(?P<percent>[\d.]+)%, (?P<done>[\d.]+)/(?P<total>[\d.]+) MiB, (?P<rate>[\d.]+) MiB/s, "
    r"(?:~(?P<left>\d+) s left|time left unknown)(?:, memory iteration (?P<iteration>\d+))?, "
    r"(?P<elapsed>\d+) s elapsed$"
)
# What a foreground run's result has besides the module's keys, and what async would add.
NOISE = {"_ansible_no_log", "action", "failed", "invocation", "warnings", "deprecations",
         "exception", "diff"}  # fmt: skip
ASYNC_KEYS = {"ansible_job_id", "started", "finished", "results_file", "erased", "stdout",
              "stderr", "stdout_lines", "stderr_lines"}  # fmt: skip
MEASURED: dict[str, object] = {}


def clean(node) -> None:
    """Remove every prg-* domain, volume and file; retried for a while when libvirtd is
    away (the lab is shared: another test may restart it)."""
    node.run("sh -c %s", f"rm -f {CONSOLE_DIR}/{PREFIX}* {PROGRESS_FILE} /tmp/.prg-progress.json.*")
    for attempt in range(10):  # bounded: about 30 s
        try:
            libvirt_cleanup(node, PREFIX)
            return
        except AssertionError:
            if attempt == 9:
                raise
            time.sleep(3)


@pytest.fixture(scope="module")
def nodes(hosts):
    pair = {SRC: hosts[SRC], DST: hosts[DST]}
    try:
        for node in pair.values():
            clean(node)
            lab_bridge(node, BRIDGE)
            node.run("mkdir -p %s", CONSOLE_DIR)
        yield pair
    finally:
        for node in pair.values():
            clean(node)
            node.run("ip link del %s", BRIDGE)
    for node in pair.values():
        left = libvirt_probe(node, PREFIX)
        assert not left["domains"] and not left["volumes"], left


@pytest.fixture(scope="module")
def guest(nodes, tmp_path_factory):
    """prg-v1 running on mcm-a1, FILL_MIB of random data in its memory (zero pages would
    move as flags: an idle guest migrates within a second even when throttled)."""
    tmp = tmp_path_factory.mktemp("prg_guest")
    call(tmp, SRC, "vm", {"config": [lab_guest(VM, "prg", BRIDGE, CONSOLE_DIR)]})
    [fill] = console(SRC, VM, f"dd if=/dev/urandom of=/dev/shm/fill bs=1M count={FILL_MIB} 2>&1")
    assert fill["rc"] == 0, fill
    return VM


def args(dst: str = DST, **extra) -> dict:
    return {"name": VM, "destination": dst, "destination_address": ADDRESS[dst],
            "encryption": "none", **extra}  # fmt: skip


def migrate_with_lines(tmp_path, src: str, params: dict) -> tuple[str, dict, float]:
    """vm_migrate as a playbook with the default stdout callback: (its stdout, the task's
    registered result, wall seconds); a failure of the task is kept (ignore_errors)."""
    out = tmp_path / "result.json"
    play = [
        {"hosts": src, "gather_facts": False, "tasks": [
            {"name": "prg migrate", "multicloud.migration.vm_migrate": params,
             "register": "moved", "ignore_errors": True}]},
        {"hosts": "localhost", "connection": "local", "gather_facts": False,
         "vars": {"ansible_python_interpreter": "{{ ansible_playbook_python }}"},
         "tasks": [{"name": "prg save", "ansible.builtin.copy": {
             "content": f"{{{{ hostvars['{src}'].moved | to_json }}}}", "dest": str(out)}}]},
    ]  # fmt: skip
    path = tmp_path / f"prg-{time.monotonic_ns()}.yml"
    path.write_text(yaml.safe_dump(play, sort_keys=False))
    started = time.monotonic()
    proc = run([str(BIN / "ansible-playbook"), str(path)], timeout=400)
    wall = time.monotonic() - started
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text()), wall


def progress_lines(stdout: str, host: str) -> list[dict]:
    found = []
    for line in stdout.splitlines():
        match = LINE.match(line.strip())
        if match and match["host"] == host and match["vm"] == VM:
            found.append(match.groupdict())
    return found


def test_unknown_destination_fails_with_the_module_message(guest, tmp_path):
    bad = {"name": VM, "destination": "prg-nowhere", "encryption": "none"}
    background = call(tmp_path, SRC, "vm_migrate", {**bad, "progress_interval": 1},
                      expect_failure=True)  # fmt: skip
    foreground = call(tmp_path, SRC, "vm_migrate", {**bad, "progress_interval": 0},
                      expect_failure=True)  # fmt: skip
    assert "cannot resolve the destination prg-nowhere" in background["msg"]
    assert background["msg"] == foreground["msg"] and background["phase"] == "input"
    assert set(background) - {"invocation"} == set(foreground) - {"invocation"}
    assert not ASYNC_KEYS & set(background)


def test_timeout_after_progress_lines_is_the_module_failure(nodes, guest, tmp_path):
    stdout, result, _wall = migrate_with_lines(tmp_path, SRC, args(
        mode="live-block", bandwidth_mib=1, timeout=8, progress_interval=2))  # fmt: skip
    lines = progress_lines(stdout, SRC)
    assert lines, stdout[-3000:]
    assert result["failed"] and "exceeded the timeout of 8 s" in result["msg"], result
    assert result["phase"] == "migrate" and result["source_state"] == "running"
    assert not result["after_cutover"] and result["progress"]
    assert not ASYNC_KEYS & set(result), set(result)
    assert "exceeded the timeout of 8 s" in stdout  # the failure as the callback shows it
    assert libvirt_probe(nodes[SRC], PREFIX)["domains"][VM]["state"] == RUNNING
    assert libvirt_probe(nodes[DST], PREFIX) == {"domains": {}, "volumes": []}


def test_throttled_migration_prints_growing_progress(nodes, guest, tmp_path):
    stdout, moved, wall = migrate_with_lines(tmp_path, SRC, args(
        mode="live-block", bandwidth_mib=4, timeout=300, progress_interval=2,
        progress_file=PROGRESS_FILE))  # fmt: skip
    assert not moved.get("failed"), moved.get("msg")
    lines = progress_lines(stdout, SRC)
    assert len(lines) >= 2, stdout[-3000:]
    percents = [float(line["percent"]) for line in lines]
    assert percents[-1] > percents[0], lines
    # live-block: the disks first (their own percent), then memory and disks together
    memory = [float(line["percent"]) for line in lines if not line["mirror"]]
    assert len(memory) >= 2 and memory == sorted(memory) and memory[-1] > memory[0], lines
    assert all(line["dest"] == DST and line["mode"] == "live-block" for line in lines)
    assert any(line["iteration"] for line in lines), "live modes show the memory iteration"
    assert float(lines[-1]["total"]) > FILL_MIB
    # the module's result, as in the foreground
    assert moved["changed"] and moved["mode"] == "live-block"
    assert moved["source_state"] == "absent" and moved["destination_state"] == "running"
    assert moved["stats"]["bytes"] > FILL_MIB * 2**20 and len(moved["progress"]) >= len(lines)
    assert not ASYNC_KEYS & set(moved), set(moved)
    # the max downtime is set before the job (sampling never waits for it)
    assert moved["stats"]["max_downtime_ms"] == 30
    assert not [w for w in moved.get("warnings", []) if "downtime" in w], moved["warnings"]
    # the progress file the task named is gone, and nothing of the async job is left
    assert not nodes[SRC].file(PROGRESS_FILE).exists
    assert libvirt_probe(nodes[DST], PREFIX)["domains"][VM]["state"] == RUNNING
    MEASURED["throttled"] = {
        "wall_s": round(wall, 1), "lines": len(lines), "percents": percents,
        "rates_mib_s": [float(line["rate"]) for line in lines],
        "mirror_lines": sum(1 for line in lines if line["mirror"]),
        "libvirt_elapsed_ms": moved["stats"].get("elapsed_ms"),
        "bytes": moved["stats"].get("bytes"), "samples": len(moved["progress"]),
        "printed": [line.strip() for line in stdout.splitlines() if LINE.match(line.strip())],
    }  # fmt: skip
    MEASURED["moved_keys"] = sorted(set(moved) - NOISE)
    print("\nvm_migrate progress measured:", json.dumps(MEASURED["throttled"]))


def test_result_has_the_shape_of_a_foreground_run(nodes, guest, tmp_path):
    assert "moved_keys" in MEASURED, "needs the throttled migration first"
    # live-block left the disk file on the source: delete it to migrate back
    call(tmp_path, SRC, "vm_volume", {"state": "deleted", "config": [{"name": f"{VM}.qcow2"}]})
    back = call(tmp_path, DST, "vm_migrate", args(SRC, mode="live-block", progress_interval=0))
    assert back["changed"] and back["destination_state"] == "running"
    assert sorted(set(back) - NOISE) == MEASURED["moved_keys"]
    assert libvirt_probe(nodes[SRC], PREFIX)["domains"][VM]["state"] == RUNNING
