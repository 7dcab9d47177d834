"""Figures the lab tests measure (timings, migration stats), shown in pytest's terminal
summary instead of by a test that only prints: such a test always passed, so it inflated
the pass count, and its output was hidden unless run with -s.

A test file asks for a named dict once, at import, and fills it as its tests run; the
conftest's pytest_terminal_summary hook (this module's, re-exported there) prints every
dict that got something, one line each, under one section. A run that did not run those
tests (unit tests only, -k, --collect-only) leaves them empty and prints nothing.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

SECTION = "lab measurements"

# label -> the dict a test file fills; insertion order is import order, so the lines come
# out in the order the files were collected.
_REPORTS: dict[str, dict[str, Any]] = {}


class Writer(Protocol):
    """The part of pytest's TerminalReporter the summary uses (a fake one in unit tests)."""

    def write_sep(self, sep: str, title: str | None = None, **markup: bool) -> None: ...

    def write_line(self, line: str, **markup: bool) -> None: ...


def collect(label: str) -> dict[str, Any]:
    """The dict reported as `label: <json>` (the same dict each time for one label)."""
    return _REPORTS.setdefault(label, {})


def lines() -> list[str]:
    """The summary lines, one per dict that holds something."""
    return [f"{label}: {json.dumps(data)}" for label, data in _REPORTS.items() if data]


def pytest_terminal_summary(terminalreporter: Writer, exitstatus: int, config: object) -> None:
    del exitstatus, config  # part of the hook's signature, not needed here
    found = lines()
    if not found:
        return
    terminalreporter.write_sep("-", SECTION)
    for line in found:
        terminalreporter.write_line(line)
