"""The test-time budget (tests/budget.py) and its table in docs/lab.md."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("mcm_test_budget", ROOT / "tests" / "budget.py")
assert _spec and _spec.loader
budget = importlib.util.module_from_spec(_spec)
sys.modules["mcm_test_budget"] = budget
_spec.loader.exec_module(budget)


def test_every_test_file_counts_against_an_area():
    files = sorted(p.relative_to(ROOT) for p in (ROOT / "tests").rglob("test_*.py"))
    orphans = [str(f) for f in files if budget.area_of(f"{f}::test_x") == "other"]
    assert not orphans, f"add these to an area of tests/budget.py: {orphans}"
    assert budget.area_of("tests/unit/test_spec.py::test_x") == "unit"
    assert budget.area_of("tests/integration/test_vm_migrate.py::test_x[a]") == "migration"


def test_the_summary_sums_every_phase_per_area_and_marks_an_area_over_its_line():
    def report(nodeid: str, duration: float) -> SimpleNamespace:
        return SimpleNamespace(nodeid=nodeid, duration=duration)

    faults = "tests/integration/test_migration_faults_lab.py::test_cut"
    reports = [report(faults, 200.0), report(faults, 100.0),
               report("tests/unit/test_spec.py::test_a", 1.5),
               report("tests/integration/test_new_lab.py::test_b", 7.0)]  # fmt: skip
    spent = budget.spent(reports)
    assert spent == {"faults": 300.0, "unit": 1.5, "other": 7.0}
    text = "\n".join(budget.lines(spent))
    line = {a.name: a.budget_s for a in budget.AREAS}
    assert line["faults"] < 300 and line["unit"] > 2, "the figures below assume it"
    assert re.search(rf"^faults +300 s of +{line['faults']} s  OVER$", text, re.M), text
    assert re.search(rf"^unit +2 s of +{line['unit']} s$", text, re.M), text
    assert "other" in text and "add the file to tests/budget.py" in text
    assert re.search(r"^pytest total +308 s of", text, re.M), text


def test_the_terminal_summary_reads_setup_and_teardown_reports_too():
    written: list[str] = []
    phases = {"": [SimpleNamespace(nodeid="tests/unit/test_a.py::t", duration=2.0)],
              "passed": [SimpleNamespace(nodeid="tests/unit/test_a.py::t", duration=3.0)],
              "warnings": [SimpleNamespace(nodeid="x", duration=99.0)]}  # fmt: skip
    reporter = SimpleNamespace(stats=phases, write_sep=lambda _c, title: written.append(title),
                               write_line=written.append)  # fmt: skip
    budget.terminal_summary(reporter)
    assert written[0] == "test-time budget (docs/lab.md)"
    assert re.match(r"unit +5 s of", written[1]), written
    empty: list[str] = []
    budget.terminal_summary(SimpleNamespace(stats={}, write_sep=empty.append,
                                            write_line=empty.append))  # fmt: skip
    assert empty == []


def test_docs_lab_md_shows_the_budget_as_tests_budget_py_declares_it():
    text = (ROOT / "docs" / "lab.md").read_text()
    table = dict(re.findall(r"^\| ([a-z ]+?) \| (\d+) s \|", text, re.M))
    declared = {a.name: str(a.budget_s) for a in budget.AREAS}
    declared.update({k: str(v) for k, v in budget.OUTSIDE_PYTEST_S.items()})
    assert table == declared
