"""Shared test set-up: lab/lab.py importable as `lab` (a script, not a package), and the
collection importable as `ansible_collections.multicloud.migration` from the checkout
(collections/ansible_collections/multicloud/migration is a symlink to the root)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "collections") not in sys.path:
    sys.path.insert(0, str(ROOT / "collections"))


def _load_lab() -> None:
    if "lab" in sys.modules:
        return
    spec = importlib.util.spec_from_file_location("lab", ROOT / "lab" / "lab.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["lab"] = module
    spec.loader.exec_module(module)


_load_lab()


def pytest_addoption(parser: Any) -> None:
    parser.addoption(
        "--matrix", action="store_true", default=False,
        help="also run the fault and soak matrix (marker matrix; `make faults`)",
    )  # fmt: skip


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    """Without --matrix, the tests marked matrix are deselected: `make test` runs the
    representative cases of each fault, `make faults` the whole matrix (docs/lab.md)."""
    if config.getoption("--matrix"):
        return
    matrix = [item for item in items if item.get_closest_marker("matrix")]
    if matrix:
        config.hook.pytest_deselected(items=matrix)
        items[:] = [item for item in items if not item.get_closest_marker("matrix")]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Each area's test time against its line of the budget (tests/budget.py)."""
    import budget  # tests/ is on sys.path while pytest imports this conftest

    budget.terminal_summary(terminalreporter)
