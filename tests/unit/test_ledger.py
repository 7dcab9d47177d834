"""The migration ledger and the placement record (module_utils/ledger.py)."""

from __future__ import annotations

import importlib

import pytest

ledger = importlib.import_module(
    "ansible_collections.multicloud.migration.plugins.module_utils.ledger"
)


@pytest.fixture
def state(tmp_path):
    return ledger.StateDir(str(tmp_path / "state"))


def test_rows_get_increasing_ids_and_start_running(state):
    first = state.start({"kind": "instance", "object": "acme/web1", "tenant": "acme"})
    second = state.start({"kind": "subnet", "object": "acme/web", "tenant": "acme"})
    assert (first["id"], second["id"]) == (1, 2)
    assert first["status"] == "running" and first["started"] and first["ended"] is None
    assert [r["id"] for r in state.rows()] == [1, 2]
    assert state.row(2)["object"] == "acme/web"


def test_check_mode_writes_nothing(state):
    row = state.start({"kind": "instance"}, check_mode=True)
    assert row["id"] is None and state.rows() == []


def test_a_finished_cold_migration_has_ended_and_closes_later(state):
    row = state.start({"kind": "instance", "mode": "cold"})
    changed, _before, after = state.update(row["id"], {"status": "finished"})
    assert changed and after["ended"] and "closed" not in after
    _changed, _before, closed = state.update(row["id"], {"status": "reverted"})
    assert closed["ended"] == after["ended"] and closed["closed"]
    changed, _before, _after = state.update(row["id"], {"status": "reverted"})
    assert not changed, "the same update again changes nothing"


def test_terminal_status_sets_ended_running_does_not(state):
    row = state.start({"kind": "instance"})
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
    for tenant, status in (("acme", "running"), ("acme", "completed"), ("globex", "finished")):
        row = state.start({"tenant": tenant})
        state.update(row["id"], {"status": status})
    rows = state.rows()
    assert [r["id"] for r in ledger.open_rows(rows)] == [1, 3]
    assert [r["id"] for r in ledger.open_rows(rows, tenant="acme")] == [1]


def test_table_lines_up_the_columns(state):
    row = state.start({"kind": "instance", "object": "acme/web1", "mode": "live-block"})
    state.update(row["id"], {"status": "completed", "bytes": 3 * 1048576, "downtime_ms": 42})
    head, line = ledger.table(state.rows())
    assert head.split() == ["ID", "KIND", "OBJECT", "SOURCE", "DESTINATION", "MODE", "STATUS",
                            "STARTED", "SECONDS", "MIB", "DOWNTIME_MS"]  # fmt: skip
    assert line.split()[:3] == ["1", "instance", "acme/web1"]
    assert line.split()[-2:] == ["3.0", "42"]
    assert head.index("STATUS") == line.index("completed")


def test_table_names_the_modes_auto_chose(state):
    row = state.start({"kind": "subnet", "object": "acme/web", "mode": "auto"})
    assert ledger.table(state.rows())[1].split()[5] == "auto"
    results = [{"key": "acme/web1", "mode": "live-block"}, {"key": "acme/web2", "mode": "live"}]
    state.update(row["id"], {"status": "completed", "results": results})
    assert ledger.table(state.rows())[1].split()[5] == "auto:live+live-block"
