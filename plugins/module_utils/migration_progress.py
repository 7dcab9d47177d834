# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Live progress of a running migration (private to the collection).

Two halves of one small protocol (docs/migration.md, "Progress"):

- ``ProgressFile`` runs in the vm_migrate module on the source host: each progress sample
  of the engine (libvirt_migrate) is written as one JSON object to ``progress_file``,
  atomically (a temporary file in the same directory, then ``os.replace``), so that a
  reader never sees half a sample. The file is removed when the module ends.
- ``format_progress_line`` runs in the vm_migrate action plugin on the controller, which
  reads that file every ``progress_interval`` seconds with ``cat`` and prints the line.

Both are pure Python without libvirt, and unit-tested.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping
from typing import Any

__all__ = [
    "PHASES",
    "ProgressFile",
    "format_progress_line",
    "parse_progress",
    "remaining_seconds",
    "with_rate",
]

MIB = 1024 * 1024
# What the file says before the first sample of the data phase.
PHASES = {
    "starting": "starting",
    "shutdown": "shutting the guest down",
}


class ProgressFile:
    """Writes the latest progress sample of one migration to ``path`` (atomic replace).

    Called with each sample (a dict of libvirt_migrate.progress_sample or of the cold
    copy); ``context`` (name, destination, source...) is added to every record, with
    ``updated`` (epoch seconds). A write that fails (a missing directory, a full disk) does
    not fail the migration: the first error is kept in ``error`` and writing stops.
    """

    def __init__(self, path: str, **context: Any) -> None:
        self.path = path
        self.context = dict(context)
        self.error: str | None = None
        self.writes = 0

    def __call__(self, sample: Mapping[str, Any]) -> None:
        self.write(sample)

    def record(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        return {**self.context, **sample, "updated": round(time.time(), 3)}

    def write(self, sample: Mapping[str, Any]) -> bool:
        """Replace the file's content with this sample; False when it could not be written."""
        if self.error is not None:
            return False
        directory = os.path.dirname(self.path) or "."
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(
                prefix=f".{os.path.basename(self.path)}.", suffix=".tmp", dir=directory
            )
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self.record(sample), handle, sort_keys=True)
            os.replace(tmp, self.path)
            tmp = None
        except (OSError, TypeError, ValueError) as exc:
            self.error = f"progress_file {self.path} not written: {exc}"
            return False
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass  # already gone: nothing left behind
        self.writes += 1
        return True

    def remove(self) -> None:
        """Delete the file (at the end of the module); a missing file is fine."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            self.error = self.error or f"progress_file {self.path} not removed: {exc}"


def parse_progress(text: str | None) -> dict[str, Any] | None:
    """The record of a progress file's content; None when empty, partial or not an object."""
    if not text or not text.strip():
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def remaining_seconds(record: Mapping[str, Any]) -> float | None:
    """Estimated seconds left: remaining bytes at the current rate (None without a rate)."""
    rate = _number(record.get("rate_bps"))
    remaining = _number(record.get("remaining_bytes"))
    if not rate or rate <= 0 or remaining is None:
        return None
    return remaining / rate


def with_rate(record: Mapping[str, Any] | None) -> Any:
    """``record``, with the average rate since the job started when it has no rate.

    libvirt reports no rate while live-block mirrors the disks (memory_bps and disk_bps
    are 0 then): the bytes processed so far over the seconds elapsed stand in for it (and
    ``rate_derived`` says so).
    """
    if not record or _number(record.get("rate_bps")):
        return record
    processed = _number(record.get("processed_bytes"))
    elapsed = _number(record.get("elapsed_s"))
    if not processed or not elapsed or processed <= 0 or elapsed <= 0:
        return record
    return {**record, "rate_bps": round(processed / elapsed), "rate_derived": True}


def _mib(value: float | None) -> str:
    return "?" if value is None else f"{value / MIB:.1f}"


def format_progress_line(
    host: str,
    record: Mapping[str, Any] | None,
    *,
    name: str | None = None,
    destination: str | None = None,
    waited: float | None = None,
) -> str:
    """One line about a running migration, e.g.

    ``mcm-a1: web1 -> mcm-b1 (live-block): 42.5%, 60.1/141.3 MiB, 4.0 MiB/s, ~20 s left,
    memory iteration 2, 15 s elapsed``

    ``record`` is the progress file's content (None before there is one); ``name`` and
    ``destination`` are used when the record does not have them; ``waited`` is the time
    the caller has waited so far (shown while there is no sample yet).
    """
    record = record or {}
    vm = record.get("name") or name or "?"
    dest = record.get("destination") or destination or "?"
    mode = record.get("mode")
    iteration = _number(record.get("memory_iteration"))
    if mode and not iteration and _number(record.get("disk_total_bytes")):
        mode = f"{mode}, disk mirror"  # live-block before the memory: percent of the disks
    head = f"{host}: {vm} -> {dest}" + (f" ({mode})" if mode else "")
    percent = _number(record.get("percent"))
    if percent is None:
        phase = PHASES.get(str(record.get("phase")), "waiting for the migration to start")
        return f"{head}: {phase}" + (f", {waited:.0f} s" if waited is not None else "")
    processed = _number(record.get("processed_bytes"))
    total = _number(record.get("total_bytes"))
    if not total or total <= 0:
        # libvirt's first job sample can come before it has sized the transfer (all 0)
        parts = ["transfer starting, size not known yet"]
        if processed and processed > 0:
            parts.append(f"{_mib(processed)} MiB sent")
    else:
        parts = [f"{percent:.1f}%", f"{_mib(processed)}/{_mib(total)} MiB"]
        rate = _number(record.get("rate_bps"))
        parts.append(f"{_mib(rate)} MiB/s")
        left = remaining_seconds(record)
        parts.append(f"~{left:.0f} s left" if left is not None else "time left unknown")
    if iteration:
        parts.append(f"memory iteration {iteration:.0f}")
    elapsed = _number(record.get("elapsed_s"))
    if elapsed is not None:
        parts.append(f"{elapsed:.0f} s elapsed")
    return f"{head}: " + ", ".join(parts)
