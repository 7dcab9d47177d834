# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The migration record on the controller: the ledger and the placement (docs/migration.md).

A state directory holds
- ``migrations/<id>.json``: one ledger row per migration (like ``nova migration-list``):
  id, kind (instance|subnet), object, tenant, source, destination, mode, status, started,
  ended, bytes, downtime_ms, error, and per-VM details;
- ``placement.yml``: where migrated networks and VMs live now (``networks``:
  ``tenant/network`` -> cloud, ``vms``: ``tenant/vm`` -> host) and how a mapped or
  converted VM looks there (``layout``: ``tenant/vm`` -> {host: {network, ip, pool,
  pool_path, disk_format}}), read by create_infra so that a later run does not move
  anything back.
Writes are atomic (temporary file + rename) under an exclusive lock on ``.lock``.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from .controller_task import TaskFailure

STATUSES = (
    "running",  # started, not finished
    "aborting",  # abort_migration.yml asked the running job to stop
    "completed",  # live / live-block done, source cleaned
    "finished",  # cold done, source kept shut off until confirm or revert
    "confirmed",  # cold: source removed
    "reverted",  # cold: back on the source
    "aborted",  # stopped on request, VM running on the source
    "failed",  # see error; VM running on the source unless after_cutover
)
OPEN_STATUSES = ("running", "aborting", "finished")
TERMINAL = ("completed", "confirmed", "reverted", "aborted", "failed")
PLACEMENT_KEYS = ("networks", "vms", "layout")
# Keys whose values are mappings (host -> a VM's layout there), not names.
STRUCTURED_KEYS = ("layout",)


class LedgerError(Exception):
    """A request the state directory cannot satisfy (unknown id, bad field)."""


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")  # noqa: UP017


class StateDir:
    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.rows_dir = os.path.join(self.path, "migrations")
        self.placement_file = os.path.join(self.path, "placement.yml")

    # -- plumbing -----------------------------------------------------------------------
    @contextmanager
    def locked(self, write: bool) -> Iterator[None]:
        if write:
            os.makedirs(self.rows_dir, exist_ok=True)
        elif not os.path.isdir(self.path):
            yield
            return
        with open(os.path.join(self.path, ".lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX if write else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @staticmethod
    def _write(path: str, text: str) -> None:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    # -- ledger -------------------------------------------------------------------------
    def _row_path(self, row_id: int) -> str:
        return os.path.join(self.rows_dir, f"{int(row_id)}.json")

    def rows(self) -> list[dict[str, Any]]:
        if not os.path.isdir(self.rows_dir):
            return []
        out = []
        for name in os.listdir(self.rows_dir):
            if name.endswith(".json") and name[:-5].isdigit():
                with open(os.path.join(self.rows_dir, name)) as handle:
                    out.append(json.load(handle))
        return sorted(out, key=lambda r: r["id"])

    def row(self, row_id: int) -> dict[str, Any]:
        path = self._row_path(row_id)
        if not os.path.exists(path):
            known = ", ".join(str(r["id"]) for r in self.rows()[-10:]) or "none"
            raise LedgerError(
                f"no migration with id {row_id} in {self.rows_dir} (latest ids: {known}; "
                "playbooks/migrations.yml lists them)"
            )
        with open(path) as handle:
            return json.load(handle)

    def start(self, fields: Mapping[str, Any], check_mode: bool = False) -> dict[str, Any]:
        _check_fields(fields)
        row = {
            "id": None,
            "kind": None,
            "object": None,
            "tenant": None,
            "source": None,
            "destination": None,
            "mode": None,
            "status": "running",
            "started": now(),
            "ended": None,
            "bytes": None,
            "downtime_ms": None,
            "error": None,
            "vms": [],
            **dict(fields),
        }
        if check_mode:
            return row
        with self.locked(write=True):
            ids = [r["id"] for r in self.rows()]
            row["id"] = max(ids, default=0) + 1
            self._write(self._row_path(row["id"]), json.dumps(row, indent=1, sort_keys=True))
        return row

    def update(
        self, row_id: int, fields: Mapping[str, Any], check_mode: bool = False
    ) -> tuple[bool, dict[str, Any], dict[str, Any]]:
        """(changed, before, after) of merging ``fields`` into a row."""
        _check_fields(fields)
        with self.locked(write=not check_mode):
            before = self.row(row_id)
            after = {**before, **dict(fields)}
            # a cold migration ends when it is finished; confirm or revert closes it later
            if after["status"] in (*TERMINAL, "finished") and not after.get("ended"):
                after["ended"] = now()
            if after["status"] in ("confirmed", "reverted") and not after.get("closed"):
                after["closed"] = now()
            changed = after != before
            if changed and not check_mode:
                self._write(self._row_path(row_id), json.dumps(after, indent=1, sort_keys=True))
        return changed, before, after

    # -- placement ----------------------------------------------------------------------
    def placement(self) -> dict[str, dict[str, Any]]:
        import yaml  # PyYAML comes with ansible-core; only the controller runs this

        data: dict[str, Any] = {}
        if os.path.exists(self.placement_file):
            with open(self.placement_file) as handle:
                data = yaml.safe_load(handle) or {}
        return {key: dict(data.get(key) or {}) for key in PLACEMENT_KEYS}

    def merge_placement(
        self, changes: Mapping[str, Mapping[str, Any]], check_mode: bool = False
    ) -> tuple[bool, dict, dict]:
        """(changed, before, after): entries set, or removed where the value is None."""
        import yaml

        unknown = sorted(set(changes) - set(PLACEMENT_KEYS))
        if unknown:
            raise LedgerError(
                f"placement: unknown key(s) {', '.join(unknown)} "
                f"(known: {', '.join(PLACEMENT_KEYS)})"
            )
        with self.locked(write=not check_mode):
            before = self.placement()
            after = {key: dict(value) for key, value in before.items()}
            for key, entries in changes.items():
                for name, value in (entries or {}).items():
                    if "/" not in str(name):
                        raise LedgerError(f"placement.{key}: {name!r} is not tenant/name")
                    structured = _structured(key, name, value) if key in STRUCTURED_KEYS else None
                    if value is None or structured == {}:
                        after[key].pop(name, None)
                    elif structured is not None:
                        after[key][name] = structured
                    else:
                        after[key][name] = str(value)
            changed = after != before
            if changed and not check_mode:
                header = (
                    "# Written by multicloud.migration's migration playbooks: where migrated\n"
                    "# networks (tenant/network: cloud) and VMs (tenant/vm: host) live now,\n"
                    "# and the network, pool and disk format a mapped VM has there (layout).\n"
                    "# create_infra.yml reads it; edit only to undo a record by hand.\n"
                )
                self._write(
                    self.placement_file,
                    header + yaml.safe_dump(after, default_flow_style=False, sort_keys=True),
                )
        return changed, before, after


def _structured(key: str, name: str, value: Any) -> dict[str, dict[str, str]]:
    """A ``layout`` value: host -> {field: text}, empty fields and hosts left out."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(v, Mapping) for v in value.values()):
        raise LedgerError(f"placement.{key}: {name}: a mapping of host to fields is required")
    return {
        str(host): {str(k): str(v) for k, v in fields.items() if v not in (None, "")}
        for host, fields in value.items()
        if fields
    }


def _check_fields(fields: Mapping[str, Any]) -> None:
    if "id" in fields:
        raise LedgerError("fields: the id is assigned by the ledger, it cannot be set")
    status = fields.get("status")
    if status is not None and status not in STATUSES:
        raise LedgerError(f"fields.status: {status!r} is not one of {', '.join(STATUSES)}")


def open_rows(rows: list[Mapping[str, Any]], tenant: str | None = None) -> list[Mapping]:
    """Rows of migrations still in flight or awaiting confirmation."""
    return [
        r
        for r in rows
        if r.get("status") in OPEN_STATUSES and (tenant is None or r.get("tenant") == tenant)
    ]


def mode_text(row: Mapping[str, Any]) -> str:
    """The row's mode; for auto, also the modes it chose (``auto:live-block``)."""
    asked = str(row.get("mode"))
    used = sorted({str(r["mode"]) for r in row.get("results") or [] if r.get("mode")})
    return f"{asked}:{'+'.join(used)}" if asked == "auto" and used else asked


def table(rows: list[Mapping[str, Any]]) -> list[str]:
    """The ledger as text lines (playbooks/migrations.yml)."""
    head = ("ID", "KIND", "OBJECT", "SOURCE", "DESTINATION", "MODE", "STATUS", "STARTED",
            "SECONDS", "MIB", "DOWNTIME_MS")  # fmt: skip
    lines = [head]
    for r in rows:
        seconds = ""
        if r.get("started") and r.get("ended"):
            t0 = datetime.datetime.fromisoformat(r["started"])
            t1 = datetime.datetime.fromisoformat(r["ended"])
            seconds = f"{(t1 - t0).total_seconds():.1f}"
        mib = "" if r.get("bytes") is None else f"{r['bytes'] / 1048576:.1f}"
        down = "" if r.get("downtime_ms") is None else str(r["downtime_ms"])
        lines.append((str(r["id"]), str(r.get("kind")), str(r.get("object")),
                      str(r.get("source")), str(r.get("destination")), mode_text(r),
                      str(r.get("status")), str(r.get("started", ""))[:19], seconds, mib,
                      down))  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return ["  ".join(c.ljust(widths[i]) for i, c in enumerate(line)).rstrip() for line in lines]


# The migration_record task (the module and its action plugin run this).
TASK_ARGUMENT_SPEC: dict[str, dict[str, Any]] = {
    "state_dir": {"type": "path", "required": True},
    "action": {"type": "str", "choices": ["gather", "start", "update"], "default": "gather"},
    "id": {"type": "int"},
    "fields": {"type": "dict", "default": {}},
    "placement": {"type": "dict", "default": {}},
}
TASK_OPTIONS: dict[str, list] = {"required_if": [("action", "update", ("id",))]}


def record_task(params: Mapping[str, Any], check_mode: bool, diff_mode: bool) -> dict[str, Any]:
    """Read, start or update a ledger row and merge placement entries: the task's result
    (changed, rows, table, placement, row; diff in diff mode), or TaskFailure."""
    store = StateDir(params["state_dir"])
    changed = False
    result: dict[str, Any] = {}
    diff: dict[str, dict] = {"before": {}, "after": {}}
    try:
        if params["action"] == "start":
            result["row"] = store.start(params["fields"], check_mode=check_mode)
            changed = True
            diff["after"]["row"] = result["row"]
        elif params["action"] == "update":
            was, before, after = store.update(params["id"], params["fields"], check_mode=check_mode)
            changed = changed or was
            result["row"] = after
            diff["before"]["row"], diff["after"]["row"] = before, after
        elif params["id"] is not None:
            result["row"] = store.row(params["id"])
        placement = None
        if params["placement"]:
            was, before, placement = store.merge_placement(
                params["placement"], check_mode=check_mode
            )
            changed = changed or was
            diff["before"]["placement"], diff["after"]["placement"] = before, placement
        rows = store.rows()
        # in check mode the merged placement was not written: report it as it would be
        if not (check_mode and params["placement"]):
            placement = store.placement()
    except (LedgerError, OSError, ValueError) as exc:
        raise TaskFailure(f"migration record in {store.path}: {exc}") from exc
    result.update(changed=changed, rows=rows, table=table(rows), placement=placement)
    if diff_mode:
        result["diff"] = diff
    return result
