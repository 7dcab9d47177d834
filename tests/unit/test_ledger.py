"""The migration ledger and the placement record (module_utils/ledger.py)."""

from __future__ import annotations

import fcntl
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ledger = importlib.import_module(
    "ansible_collections.multicloud.migration.plugins.module_utils.ledger"
)


@pytest.fixture
def state(tmp_path):
    return ledger.StateDir(str(tmp_path / "state"))


def test_rows_get_increasing_ids_and_start_running(state):
    first, _taken = state.start({"kind": "instance", "object": "acme/web1", "tenant": "acme"})
    second, _taken = state.start({"kind": "subnet", "object": "globex/web", "tenant": "globex"})
    assert (first["id"], second["id"]) == (1, 2)
    assert first["status"] == "running" and first["started"] and first["ended"] is None
    assert [r["id"] for r in state.rows()] == [1, 2]
    assert state.row(2)["object"] == "globex/web"


def test_check_mode_writes_nothing(state):
    row, _taken = state.start({"kind": "instance"}, check_mode=True)
    assert row["id"] is None and state.rows() == []


def test_a_finished_cold_migration_has_ended_and_closes_later(state):
    row, _taken = state.start({"kind": "instance", "mode": "cold"})
    changed, _before, after = state.update(row["id"], {"status": "finished"})
    assert changed and after["ended"] and "closed" not in after
    _changed, _before, closed = state.update(row["id"], {"status": "reverted"})
    assert closed["ended"] == after["ended"] and closed["closed"]
    changed, _before, _after = state.update(row["id"], {"status": "reverted"})
    assert not changed, "the same update again changes nothing"


def test_terminal_status_sets_ended_running_does_not(state):
    row, _taken = state.start({"kind": "instance"})
    assert state.update(row["id"], {"status": "aborting"})[2]["ended"] is None
    assert state.update(row["id"], {"status": "aborted"})[2]["ended"]


def test_errors_name_what_is_wrong(state):
    state.start({"kind": "instance"})
    with pytest.raises(ledger.LedgerError, match=r"no migration with id 9 .*latest ids: 1"):
        state.row(9)
    with pytest.raises(ledger.LedgerError, match="'done' is not one of"):
        state.update(1, {"status": "done"})
    with pytest.raises(ledger.LedgerError, match="id is assigned by the ledger"):
        state.update(1, {"id": 3})


def test_placement_merges_and_null_removes(state):
    moved = {"vms": {"acme/web1": "mcm-b1"}, "networks": {"acme/web": "cloud_b"}}
    changed, before, after = state.merge_placement(moved)
    assert changed and before == {"networks": {}, "vms": {}, "layout": {}}
    assert state.placement() == after == {"networks": {"acme/web": "cloud_b"},
                                          "vms": {"acme/web1": "mcm-b1"}, "layout": {}}  # fmt: skip
    assert not state.merge_placement({"vms": {"acme/web1": "mcm-b1"}})[0]
    state.merge_placement({"vms": {"acme/web1": None}, "networks": {"acme/web": None}})
    assert state.placement() == {"networks": {}, "vms": {}, "layout": {}}
    with pytest.raises(ledger.LedgerError, match="unknown key"):
        state.merge_placement({"stretch": {}})
    with pytest.raises(ledger.LedgerError, match="not tenant/name"):
        state.merge_placement({"vms": {"web1": "mcm-b1"}})


def test_layout_entries_are_host_to_fields_and_replace_the_whole_entry(state):
    """A mapped VM's layout: host -> its fields there; empty fields and hosts are left out,
    a value replaces the VM's entry, an empty or null one removes it."""
    laid = {"mcm-a1": {"pool": "mcm-fast", "disk_format": "raw", "ip": None},
            "mcm-b1": {"network": "web2", "ip": "10.61.2.2"}, "mcm-a2": {}}  # fmt: skip
    state.merge_placement({"layout": {"acme/web1": laid}})
    assert state.placement()["layout"] == {"acme/web1": {
        "mcm-a1": {"pool": "mcm-fast", "disk_format": "raw"},
        "mcm-b1": {"network": "web2", "ip": "10.61.2.2"}}}  # fmt: skip
    state.merge_placement({"layout": {"acme/web1": {"mcm-b1": {"disk_format": "vmdk"}}}})
    assert state.placement()["layout"] == {"acme/web1": {"mcm-b1": {"disk_format": "vmdk"}}}
    assert not state.merge_placement(
        {"layout": {"acme/web1": {"mcm-b1": {"disk_format": "vmdk"}}}}
    )[0]
    state.merge_placement({"layout": {"acme/web1": {"mcm-b1": {}}}})
    assert state.placement()["layout"] == {}
    state.merge_placement({"layout": {"acme/web1": {"mcm-b1": {"disk_format": "raw"}}}})
    state.merge_placement({"layout": {"acme/web1": None}})
    assert state.placement()["layout"] == {}
    with pytest.raises(ledger.LedgerError, match="mapping of host to fields"):
        state.merge_placement({"layout": {"acme/web1": "mcm-b1"}})


def test_open_rows_are_per_tenant(state):
    for tenant, status in (("acme", "completed"), ("acme", "running"), ("globex", "finished")):
        row, _taken = state.start({"tenant": tenant})
        state.update(row["id"], {"status": status})
    rows = state.rows()
    assert [r["id"] for r in ledger.open_rows(rows)] == [2, 3]
    assert [r["id"] for r in ledger.open_rows(rows, tenant="acme")] == [2]


def test_table_lines_up_the_columns(state):
    row, _taken = state.start({"kind": "instance", "object": "acme/web1", "mode": "live-block"})
    state.update(row["id"], {"status": "completed", "bytes": 3 * 1048576, "downtime_ms": 42})
    head, line = ledger.table(state.rows())
    assert head.split() == ["ID", "KIND", "OBJECT", "SOURCE", "DESTINATION", "MODE", "STATUS",
                            "STARTED", "SECONDS", "MIB", "DOWNTIME_MS"]  # fmt: skip
    assert line.split()[:3] == ["1", "instance", "acme/web1"]
    assert line.split()[-2:] == ["3.0", "42"]
    assert head.index("STATUS") == line.index("completed")


def test_table_names_the_modes_auto_chose(state):
    row, _taken = state.start({"kind": "subnet", "object": "acme/web", "mode": "auto"})
    assert ledger.table(state.rows())[1].split()[5] == "auto"
    results = [{"key": "acme/web1", "mode": "live-block"}, {"key": "acme/web2", "mode": "live"}]
    state.update(row["id"], {"status": "completed", "results": results})
    assert ledger.table(state.rows())[1].split()[5] == "auto:live+live-block"


# --- one migration per tenant, owners and heartbeats, kill points ------------------------
WEB1 = {"kind": "instance", "object": "acme/web1", "tenant": "acme", "destination_cloud": "b"}


def owner(token: str) -> dict:
    return {"controller": "ctl", "user": "op", "pid": 7, "token": token}


def age_heartbeat(state, row_id: int, seconds: float) -> None:
    """The owner's last beat ``seconds`` ago (the beat file's mtime)."""
    path = Path(state.rows_dir) / f"{row_id}.beat"
    stamp = time.time() - seconds
    os.utime(path, (stamp, stamp))


def test_a_second_migration_of_the_tenant_is_refused_naming_the_open_row(state):
    row, _taken = state.start(WEB1, owner=owner("a"))
    other = {**WEB1, "object": "acme/web2"}
    with pytest.raises(
        ledger.LedgerError,
        match=r"migration 1 \(instance acme/web1.*running, run by "
        r"op@ctl pid 7 \(last heartbeat 0 s ago\).*abort_migration.yml -e id=1",
    ):
        state.start(other, owner=owner("b"))
    with pytest.raises(ledger.LedgerError, match="migration 1"):
        state.start(WEB1, owner=owner("b"), noop=True)  # a live owner is never taken over
    assert [r["id"] for r in state.rows()] == [row["id"]]
    # another tenant is not blocked
    assert state.start({**WEB1, "tenant": "globex"}, owner=owner("c"))[0]["id"] == 2


def test_a_finished_cold_migration_blocks_until_confirmed(state):
    row, _taken = state.start(WEB1, owner=owner("a"))
    state.update(row["id"], {"status": "finished"})
    assert not (Path(state.rows_dir) / "1.beat").exists(), "a closed row has no owner"
    with pytest.raises(ledger.LedgerError, match="is finished: confirm or revert it first"):
        state.start(WEB1, owner=owner("b"))


def test_a_row_whose_owner_is_gone_is_taken_over_by_the_same_migration_only(state):
    row, _taken = state.start(WEB1, owner=owner("a"))
    age_heartbeat(state, row["id"], 45)
    gone, age = state.owner_gone(state.row(1), owner_timeout=30)
    assert gone and age >= 45
    with pytest.raises(ledger.LedgerError, match=r"is gone .*re-run that migration"):
        state.start({**WEB1, "object": "acme/web2"}, owner=owner("b"))
    with pytest.raises(ledger.LedgerError, match="is gone"):
        state.start({**WEB1, "destination_cloud": "c"}, owner=owner("b"))
    # not yet gone with a longer timeout
    with pytest.raises(ledger.LedgerError, match="run by"):
        state.start(WEB1, owner=owner("b"), owner_timeout=60)
    taken, was_taken = state.start(WEB1, owner=owner("b"), noop=True)
    assert was_taken and taken["id"] == 1 and taken["owner"]["token"] == "b"
    assert taken["takeovers"][0]["from"]["token"] == "a"
    assert taken["takeovers"][0]["heartbeat_age_s"] >= 45
    assert state.row(1)["owner"]["token"] == "b" and len(state.rows()) == 1
    # the old owner's heartbeat and its updates stop: the row is no longer its own
    assert not state.beat(1, "a") and state.beat(1, "b")
    with pytest.raises(ledger.LedgerError, match="taken over by op@ctl"):
        state.update(1, {"status": "failed"}, owner_token="a")
    assert state.update(1, {"status": "completed"}, owner_token="b")[0]


def test_an_aborting_row_is_taken_over_as_aborting(state):
    row, _taken = state.start(WEB1, owner=owner("a"))
    state.update(row["id"], {"status": "aborting"})
    age_heartbeat(state, row["id"], 100)
    taken, was_taken = state.start(WEB1, owner=owner("b"))
    assert was_taken and taken["status"] == "aborting"


def test_a_noop_opens_no_row_and_check_mode_writes_nothing(state):
    assert state.start(WEB1, owner=owner("a"), noop=True) == (None, False)
    row, _taken = state.start(WEB1, owner=owner("a"))
    age_heartbeat(state, row["id"], 100)
    before = state.row(1)
    taken, was_taken = state.start(WEB1, owner=owner("b"), check_mode=True)
    assert was_taken and taken["owner"]["token"] == "b"
    assert state.row(1) == before and state.beat(1, "a")


def test_record_task_reports_whether_an_owner_is_alive(state):
    def task(**params):
        base = {"state_dir": state.path, "action": "gather", "id": None, "fields": {},
                "placement": {}, "owner": None, "owner_token": None, "owner_timeout": 30,
                "noop": False, "rows": []}  # fmt: skip
        return ledger.record_task({**base, **params}, check_mode=False, diff_mode=False)

    started = task(action="start", fields=WEB1, owner=owner("a"))
    assert started["changed"] and started["row"]["owner_state"] == "alive"
    assert task(action="beat", id=1, owner_token="a")["owner"] is True
    age_heartbeat(state, 1, 40)
    assert task(id=1)["row"]["owner_state"] == "gone"
    assert task(action="beat", id=1, owner_token="x")["owner"] is False
    with pytest.raises(ledger.TaskFailure, match=r"migration record in .*: migration 1 "):
        task(action="start", fields={**WEB1, "object": "acme/db"}, owner=owner("b"))


def test_placement_is_json_and_an_older_yaml_file_is_read_once(state, tmp_path):
    Path(state.path).mkdir(parents=True)
    Path(state.legacy_placement_file).write_text("# old\nvms: {acme/web1: mcm-b1}\n")
    assert state.placement()["vms"] == {"acme/web1": "mcm-b1"}
    state.merge_placement({"networks": {"acme/web": "cloud_b"}})
    assert not Path(state.legacy_placement_file).exists()
    data = json.loads(Path(state.placement_file).read_text())
    assert data["vms"] == {"acme/web1": "mcm-b1"} and data["networks"] == {"acme/web": "cloud_b"}


def test_import_moves_rows_and_placement_once_and_refuses_conflicts(state, tmp_path):
    old = ledger.StateDir(str(tmp_path / "old"))
    row, _taken = old.start(WEB1)
    old.update(row["id"], {"status": "completed"})
    old.merge_placement({"vms": {"acme/web1": "mcm-b1"}})
    added, placed = state.import_state(old.rows(), old.placement(), check_mode=True)
    assert (added, placed) == ([1], True) and state.rows() == []
    assert state.import_state(old.rows(), old.placement(), check_mode=False) == ([1], True)
    assert state.rows() == old.rows() and state.placement() == old.placement()
    assert state.import_state(old.rows(), old.placement(), check_mode=False) == ([], False)
    other = [{**old.rows()[0], "status": "failed"}]
    with pytest.raises(ledger.LedgerError, match="row 1 exists"):
        state.import_state(other, {}, check_mode=False)
    with pytest.raises(ledger.LedgerError, match="already records placements"):
        state.import_state([], {"vms": {"acme/web1": "mcm-a1"}}, check_mode=False)


KILL_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.multicloud.migration.plugins.module_utils import ledger
store = ledger.StateDir(sys.argv[2], action="update")
store.update(1, {"status": "completed"})
"""


@pytest.mark.parametrize("point", ledger.KILL_POINTS)
def test_a_writer_killed_at_a_kill_point_leaves_a_readable_ledger_and_a_free_lock(state, point):
    state.start(WEB1, owner=owner("a"))
    marker = Path(state.path) / ledger.KILL_POINT_FILE
    marker.write_text(f"{point} update")
    collections = str(Path(__file__).resolve().parents[2] / "collections")
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, collections, state.path],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not marker.exists(), "a kill point fires once"
    assert state.row(1)["status"] == "running", "the last complete row stays"
    leftovers = list(Path(state.rows_dir).glob(".tmp-*"))
    assert bool(leftovers) == (point == "written")
    with open(Path(state.path) / ".lock") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if still held
        fcntl.flock(lock, fcntl.LOCK_UN)
    assert state.update(1, {"status": "completed"})[2]["status"] == "completed"
    assert not list(Path(state.rows_dir).glob(".tmp-*")), "the next writer removes leftovers"
