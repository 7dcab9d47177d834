"""The lab measurements summary (tests/integration/report.py) without the lab: the hook's
lines through a recording reporter, its wiring in the integration conftest, and a real
pytest run in a subprocess, where pluggy checks the hook's signature and the real
TerminalReporter prints it."""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

INTEGRATION = Path(__file__).resolve().parents[1] / "integration"


class Recorder:
    """Records what the hook writes, in order, as a TerminalReporter would print it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def write_sep(self, sep: str, title: str | None = None, **markup: bool) -> None:
        self.calls.append(("sep", sep, title or ""))

    def write_line(self, line: str, **markup: bool) -> None:
        self.calls.append(("line", line))


@pytest.fixture
def report() -> ModuleType:
    # A fresh copy per test, under a name of its own: an empty registry each time, and the
    # `report` the integration tests import (same session under `make test`) is untouched.
    spec = importlib.util.spec_from_file_location("_report_under_test", INTEGRATION / "report.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_nothing_recorded_writes_nothing(report):
    report.collect("vm timings")  # registered at import, but its tests did not run
    out = Recorder()
    report.pytest_terminal_summary(out, 0, None)
    assert out.calls == []


def test_recorded_figures_under_one_section(report):
    timings = report.collect("vm timings")
    report.collect("unused")
    measured = report.collect("vm_migrate measured")
    measured["cold"] = {"module_wall_s": 3.5, "holes": 0}
    timings["start_s"] = 1.25
    assert report.collect("vm timings") is timings  # one dict per label
    out = Recorder()
    report.pytest_terminal_summary(out, 1, None)
    # Registration order, not fill order; the empty one left out; the old tests' line format.
    assert out.calls == [
        ("sep", "-", "lab measurements"),
        ("line", 'vm timings: {"start_s": 1.25}'),
        ("line", 'vm_migrate measured: {"cold": {"module_wall_s": 3.5, "holes": 0}}'),
    ]


def test_integration_conftest_exposes_the_hook():
    # pytest only calls the hook if the conftest has it under its own name; read, not
    # imported, as importing the conftest needs testinfra and the lab module.
    tree = ast.parse((INTEGRATION / "conftest.py").read_text())
    imported = {
        (node.module, alias.name, alias.asname)
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert ("report", "pytest_terminal_summary", None) in imported


def run_pytest(tmp_path: Path, fill: bool) -> str:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # rootdir here: no addopts of ours
    (tmp_path / "conftest.py").write_text("from report import pytest_terminal_summary\n")
    (tmp_path / "test_fill.py").write_text(
        "import report\n"
        'FIGURES = report.collect("probe figures")\n'
        "def test_fill():\n"
        f"    if {fill}:\n"
        '        FIGURES["wall_s"] = 2.0\n'
    )
    env = {**os.environ, "PYTHONPATH": str(INTEGRATION)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_real_run_prints_the_section(tmp_path):
    out = run_pytest(tmp_path, fill=True)
    [header] = [line for line in out.splitlines() if "lab measurements" in line]
    assert header.startswith("---") and header.endswith("---"), header
    assert 'probe figures: {"wall_s": 2.0}' in out.splitlines()
    # The figures come with the summary, after the test's own progress line.
    assert out.index("lab measurements") > out.index("test_fill.py .")


def test_real_run_without_figures_prints_no_section(tmp_path):
    out = run_pytest(tmp_path, fill=False)
    assert "1 passed" in out
    assert "lab measurements" not in out and "probe figures" not in out
