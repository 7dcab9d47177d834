# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The migration record on the state host: the ledger and the placement (docs/state.md).

A state directory (on the state host the inventory names, or on the controller when the
operator asks for it) holds
- ``migrations/<id>.json``: one ledger row per migration (like ``nova migration-list``):
  id, kind (instance|subnet), object, tenant, source, destination, mode, status, started,
  ended, bytes, downtime_ms, error, per-VM details, and the run that owns it (``owner``);
- ``migrations/<id>.beat``: the owner's heartbeat: its mtime is the last beat (the state
  host's own clock, so controllers' clocks never matter), its content the owner's token;
- ``placement.json``: where migrated networks and VMs live now (``networks``:
  ``tenant/network`` -> cloud, ``vms``: ``tenant/vm`` -> host) and how a mapped or
  converted VM looks there (``layout``: ``tenant/vm`` -> {host: {network, ip, pool,
  pool_path, disk_format}}), read by create_infra so that a later run does not move
  anything back. A ``placement.yml`` of an older release is read when there is no
  ``placement.json`` yet.
Writes are atomic (temporary file + rename) under an exclusive lock (flock) on ``.lock``:
a writer killed at any point leaves the last complete file and a free lock (the kernel
drops a dead process's flock).

One migration per tenant at a time: ``start`` checks for an open row of the tenant and
opens the new one under the same lock. An open row whose owner's heartbeat is older than
``owner_timeout`` belongs to a dead run: a re-run of the same migration (kind, object and
destination cloud) takes it over; anything else is refused, naming the row.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import signal
import tempfile
import time
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
# Rows a run owns while it works on them (a heartbeat says it is alive).
OWNED_STATUSES = ("running", "aborting")
PLACEMENT_KEYS = ("networks", "vms", "layout")
# Seconds without a heartbeat after which a row's owner counts as gone.
OWNER_TIMEOUT_S = 30
# The file that names a kill point (tests only, docs/state.md): "POINT ACTION" - the
# process writing the state kills itself with SIGKILL there, once.
KILL_POINT_FILE = ".kill-at"
KILL_POINTS = ("locked", "written")
# Fields a read adds to an owned row (record_task): never stored.
READ_ONLY_FIELDS = ("owner_state", "heartbeat_age_s")
# Keys whose values are mappings (host -> a VM's layout there), not names.
STRUCTURED_KEYS = ("layout",)


class LedgerError(Exception):
    """A request the state directory cannot satisfy (unknown id, bad field)."""


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")  # noqa: UP017


class StateDir:
    def __init__(self, path: str, action: str = "") -> None:
        self.path = os.path.abspath(path)
        self.rows_dir = os.path.join(self.path, "migrations")
        self.placement_file = os.path.join(self.path, "placement.json")
        self.legacy_placement_file = os.path.join(self.path, "placement.yml")
        # what the caller is doing (start, update, ...): kill points name it
        self.action = action

    # -- plumbing -----------------------------------------------------------------------
    @contextmanager
    def locked(self, write: bool) -> Iterator[None]:
        if write:
            os.makedirs(self.rows_dir, mode=0o700, exist_ok=True)
        elif not os.path.isdir(self.path):
            yield
            return
        with open(os.path.join(self.path, ".lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX if write else fcntl.LOCK_SH)
            try:
                if write:
                    self._kill_point("locked")
                    self._remove_leftovers()
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _remove_leftovers(self) -> None:
        """Temporary files of a writer killed before its rename (only writers holding the
        exclusive lock make them, and the caller holds it now)."""
        for folder in (self.path, self.rows_dir):
            for name in os.listdir(folder):
                if name.startswith(".tmp-"):
                    os.unlink(os.path.join(folder, name))

    def _kill_point(self, point: str) -> None:
        """Tests kill the writer at a named point (KILL_POINT_FILE holds "POINT ACTION")."""
        marker = os.path.join(self.path, KILL_POINT_FILE)
        try:
            with open(marker) as handle:
                wanted = handle.read().split()
        except FileNotFoundError:
            return
        if wanted == [point, self.action]:
            os.unlink(marker)  # once: the re-run must get through
            os.kill(os.getpid(), signal.SIGKILL)

    def _write(self, path: str, text: str) -> None:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            self._kill_point("written")
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

    def _beat_path(self, row_id: int) -> str:
        return os.path.join(self.rows_dir, f"{int(row_id)}.beat")

    def heartbeat_age(self, row_id: int) -> float | None:
        """Seconds since the owner of a row last beat (None: it never did)."""
        try:
            return max(0.0, time.time() - os.stat(self._beat_path(row_id)).st_mtime)
        except FileNotFoundError:
            return None

    def beat(self, row_id: int, token: str) -> bool:
        """The owner's heartbeat: touch the beat file while it still names ``token``
        (False: the row was taken over, or is no longer owned)."""
        path = self._beat_path(row_id)
        try:
            with open(path) as handle:
                if handle.read().strip() != token:
                    return False
        except FileNotFoundError:
            return False
        os.utime(path)
        return True

    def owner_gone(self, row: Mapping[str, Any], owner_timeout: float) -> tuple[bool, float | None]:
        """(gone, heartbeat age): a run that owns this row has not beaten for longer than
        ``owner_timeout`` (a row with no heartbeat at all counts from its start)."""
        age = self.heartbeat_age(row["id"])
        if age is None:
            try:
                started = datetime.datetime.fromisoformat(str(row.get("started")))
                age = max(0.0, (datetime.datetime.now(started.tzinfo) - started).total_seconds())
            except ValueError:
                return True, None
        return age > owner_timeout, age

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

    def start(
        self,
        fields: Mapping[str, Any],
        check_mode: bool = False,
        owner: Mapping[str, Any] | None = None,
        owner_timeout: float = OWNER_TIMEOUT_S,
        noop: bool = False,
    ) -> tuple[dict[str, Any] | None, bool]:
        """(row, taken over): open a row for a migration of ``fields["tenant"]``, or take
        over the open row of the same migration whose owner is gone; refuse (LedgerError)
        while any other migration of the tenant is open. The check and the write are one
        locked step, so two controllers can never both open a row for one tenant.
        ``noop``: the migration has nothing to move; no row is opened (None) unless there
        is one to take over."""
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
        if owner:
            row["owner"] = dict(owner)
        with self.locked(write=not check_mode):
            taken = self._open_row_of_tenant(row, owner_timeout)
            if taken is not None:
                age = taken.pop("_heartbeat_age_s", None)
                taken["takeovers"] = [*taken.get("takeovers", []),
                                      {"at": row["started"], "from": taken.get("owner"),
                                       "heartbeat_age_s": age}]  # fmt: skip
                if owner:
                    taken["owner"] = dict(owner)
                if not check_mode:
                    self._write(self._row_path(taken["id"]), _dump(taken))
                    self._own(taken)
                return taken, True
            if noop:
                return None, False
            if check_mode:
                return row, False
            ids = [r["id"] for r in self.rows()]
            row["id"] = max(ids, default=0) + 1
            self._write(self._row_path(row["id"]), _dump(row))
            self._own(row)
        return row, False

    def _own(self, row: Mapping[str, Any]) -> None:
        token = (row.get("owner") or {}).get("token")
        if token:
            self._write(self._beat_path(row["id"]), str(token))

    def _open_row_of_tenant(
        self, row: Mapping[str, Any], owner_timeout: float
    ) -> dict[str, Any] | None:
        """The open row of the tenant that ``row`` may take over, or None when there is
        none; LedgerError when one blocks it."""
        for other in open_rows(self.rows(), tenant=row.get("tenant")):
            what = f"migration {other['id']} ({other.get('kind')} {other.get('object')}"
            what += f" to {other.get('destination')}) of tenant {other.get('tenant')}"
            if other["status"] not in OWNED_STATUSES:
                raise LedgerError(
                    f"{what} is {other['status']}: confirm or revert it first "
                    f"(confirm_migration.yml / revert_migration.yml -e id={other['id']})"
                )
            gone, age = self.owner_gone(other, owner_timeout)
            by = _owner_text(other.get("owner"))
            beat = "never" if age is None else f"{age:.0f} s ago"
            if not gone:
                raise LedgerError(
                    f"{what} is {other['status']}, run by {by} (last heartbeat {beat}): wait "
                    f"for it, or abort it (abort_migration.yml -e id={other['id']})"
                )
            same = all(other.get(k) == row.get(k) for k in ("kind", "object"))
            same = same and other.get("destination_cloud") == row.get("destination_cloud")
            if not same:
                raise LedgerError(
                    f"{what} is {other['status']}, but its run ({by}) is gone (last heartbeat "
                    f"{beat}): re-run that migration (the same playbook, object and "
                    "destination) to take it over and finish it, then start this one"
                )
            return {**other, "_heartbeat_age_s": None if age is None else round(age, 1)}
        return None

    def update(
        self,
        row_id: int,
        fields: Mapping[str, Any],
        check_mode: bool = False,
        owner_token: str | None = None,
    ) -> tuple[bool, dict[str, Any], dict[str, Any]]:
        """(changed, before, after) of merging ``fields`` into a row; with ``owner_token``,
        only while the row is still owned by that run (not taken over by another)."""
        _check_fields(fields)
        with self.locked(write=not check_mode):
            before = self.row(row_id)
            owner = before.get("owner") or {}
            if owner_token and owner.get("token") not in (None, owner_token):
                raise LedgerError(
                    f"migration {row_id} was taken over by {_owner_text(owner)}: this run "
                    "no longer owns it and stops here"
                )
            after = {**before, **dict(fields)}
            # a cold migration ends when it is finished; confirm or revert closes it later
            if after["status"] in (*TERMINAL, "finished") and not after.get("ended"):
                after["ended"] = now()
            if after["status"] in ("confirmed", "reverted") and not after.get("closed"):
                after["closed"] = now()
            changed = after != before
            if changed and not check_mode:
                self._write(self._row_path(row_id), _dump(after))
                if after["status"] not in OWNED_STATUSES:
                    _unlink(self._beat_path(row_id))  # nobody owns a closed row
        return changed, before, after

    # -- placement ----------------------------------------------------------------------
    def placement(self) -> dict[str, dict[str, Any]]:
        data: dict[str, Any] = {}
        if os.path.exists(self.placement_file):
            with open(self.placement_file) as handle:
                data = json.load(handle)
        elif os.path.exists(self.legacy_placement_file):
            import yaml  # only an older release's file is YAML (PyYAML comes with Ansible)

            with open(self.legacy_placement_file) as handle:
                data = yaml.safe_load(handle) or {}
        return {key: dict(data.get(key) or {}) for key in PLACEMENT_KEYS}

    def merge_placement(
        self, changes: Mapping[str, Mapping[str, Any]], check_mode: bool = False
    ) -> tuple[bool, dict, dict]:
        """(changed, before, after): entries set, or removed where the value is None."""
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
                self._write_placement(after)
        return changed, before, after

    def _write_placement(self, placement: Mapping[str, Any]) -> None:
        self._write(self.placement_file, _dump(placement))
        _unlink(self.legacy_placement_file)  # read once, now superseded

    # -- moving a state directory here (playbooks/move_state.yml) ------------------------
    def import_state(
        self, rows: list[Mapping[str, Any]], placement: Mapping[str, Any], check_mode: bool
    ) -> tuple[list[int], bool]:
        """(ids added, placement changed): another state directory's rows and placement.
        A row whose id exists here with other content is refused; the same row again is
        nothing to do; the placement is merged only into an empty one."""
        with self.locked(write=not check_mode):
            here = {r["id"]: r for r in self.rows()}
            added = []
            for read in rows:
                # what gather adds to a row as it reads it is not part of the row
                row = {k: v for k, v in read.items() if k not in READ_ONLY_FIELDS}
                row_id = int(row["id"])
                if row_id in here:
                    if here[row_id] != dict(row):
                        raise LedgerError(
                            f"row {row_id} exists in {self.rows_dir} with other content: "
                            "this state directory already has its own ledger, move nothing "
                            "into it by hand"
                        )
                    continue
                added.append(row_id)
                if not check_mode:
                    self._write(self._row_path(row_id), _dump(dict(row)))
            mine = self.placement()
            theirs = {key: dict(placement.get(key) or {}) for key in PLACEMENT_KEYS}
            placed = any(theirs.values()) and mine != theirs
            if placed and any(mine.values()):
                raise LedgerError(
                    f"{self.placement_file} already records placements that differ from "
                    "the ones to move: nothing was moved"
                )
            if placed and not check_mode:
                self._write_placement(theirs)
        return added, placed


def _dump(data: Mapping[str, Any]) -> str:
    return json.dumps(data, indent=1, sort_keys=True)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _owner_text(owner: Mapping[str, Any] | None) -> str:
    if not owner:
        return "an unknown run"
    job = f" job {owner['job']}" if owner.get("job") else ""
    return (
        f"{owner.get('user', '?')}@{owner.get('controller', '?')} pid {owner.get('pid', '?')}{job}"
    )


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
    "action": {
        "type": "str",
        "choices": ["gather", "start", "update", "beat", "import"],
        "default": "gather",
    },
    "id": {"type": "int"},
    "fields": {"type": "dict", "default": {}},
    "placement": {"type": "dict", "default": {}},
    "owner": {"type": "dict"},
    "owner_token": {"type": "str", "no_log": False},
    "owner_timeout": {"type": "int", "default": OWNER_TIMEOUT_S},
    "noop": {"type": "bool", "default": False},
    "rows": {"type": "list", "elements": "dict", "default": []},
}
TASK_OPTIONS: dict[str, list] = {
    "required_if": [
        ("action", "update", ("id",)),
        ("action", "beat", ("id", "owner_token")),
    ]
}


def record_task(params: Mapping[str, Any], check_mode: bool, diff_mode: bool) -> dict[str, Any]:
    """Read, start or update a ledger row, beat for its owner, import another state
    directory, and merge placement entries: the task's result (changed, rows, table,
    placement, row, taken_over; diff in diff mode), or TaskFailure."""
    store = StateDir(params["state_dir"], action=params["action"])
    changed = False
    result: dict[str, Any] = {}
    diff: dict[str, dict] = {"before": {}, "after": {}}
    try:
        if params["action"] == "beat":
            alive = store.beat(params["id"], params["owner_token"])
            return {"changed": False, "owner": alive}
        if params["action"] == "start":
            row, taken = store.start(params["fields"], check_mode=check_mode,
                                     owner=params["owner"], noop=params["noop"],
                                     owner_timeout=params["owner_timeout"])  # fmt: skip
            changed = row is not None
            result.update(row=row, taken_over=taken)
            diff["after"]["row"] = row
        elif params["action"] == "update":
            was, before, after = store.update(params["id"], params["fields"],
                                              check_mode=check_mode,
                                              owner_token=params["owner_token"])  # fmt: skip
            changed = changed or was
            result["row"] = after
            diff["before"]["row"], diff["after"]["row"] = before, after
        elif params["action"] == "import":
            added, placed = store.import_state(params["rows"], params["placement"], check_mode)
            changed = bool(added) or placed
            result["imported"] = added
        elif params["id"] is not None:
            result["row"] = store.row(params["id"])
        placement = None
        if params["placement"] and params["action"] != "import":
            was, before, placement = store.merge_placement(
                params["placement"], check_mode=check_mode
            )
            changed = changed or was
            diff["before"]["placement"], diff["after"]["placement"] = before, placement
        rows = [_with_owner_state(store, r, params["owner_timeout"]) for r in store.rows()]
        # in check mode the merged placement was not written: report it as it would be
        if not (check_mode and params["placement"]):
            placement = store.placement()
    except (LedgerError, OSError, ValueError) as exc:
        raise TaskFailure(f"migration record in {store.path}: {exc}") from exc
    if result.get("row") and result["row"].get("id") is not None:
        result["row"] = _with_owner_state(store, result["row"], params["owner_timeout"])
    result.update(changed=changed, rows=rows, table=table(rows), placement=placement)
    if diff_mode:
        result["diff"] = diff
    return result


def _with_owner_state(store: StateDir, row: Mapping[str, Any], owner_timeout: float) -> dict:
    """The row as read, and for a row a run works on: is that run still there
    (``owner_state``: alive or gone, from its heartbeat on the state host)."""
    out = dict(row)
    if row.get("status") in OWNED_STATUSES:
        gone, age = store.owner_gone(row, owner_timeout)
        out["owner_state"] = "gone" if gone else "alive"
        out["heartbeat_age_s"] = None if age is None else round(age, 1)
    return out
