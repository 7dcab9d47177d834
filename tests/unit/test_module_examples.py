"""Every module's EXAMPLES: a YAML list of tasks that call the module by its FQCN with
options it has (tests/integration/test_module_examples_lab.py runs them on the lab)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ansible.parsing.plugin_docs import read_docstring
from ansible.playbook.task import Task

MODULE_DIR = Path(__file__).resolve().parents[2] / "plugins" / "modules"
MODULES = sorted(p.stem for p in MODULE_DIR.glob("*.py") if not p.stem.startswith("_"))
KEYWORDS = set(Task.fattributes)  # name, register, delegate_to, check_mode, ...


def docs(module: str) -> dict:
    return read_docstring(str(MODULE_DIR / f"{module}.py"))


def action(task: dict) -> str:
    [name] = [k for k in task if k not in KEYWORDS] or [""]
    return name


def test_modules_are_found():
    assert {"vm", "vm_migrate", "tenant_spec", "link"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_examples_are_tasks_calling_the_module_by_fqcn(module):
    fqcn = f"multicloud.migration.{module}"
    text = docs(module)["plainexamples"]
    assert text and text.strip(), f"{module}: no EXAMPLES"
    tasks = yaml.safe_load(text)
    assert isinstance(tasks, list) and tasks, f"{module}: EXAMPLES is not a list of tasks"
    options = set(docs(module)["doc"].get("options") or {})
    used = 0
    for task in tasks:
        assert isinstance(task, dict) and task.get("name"), f"{module}: a task without a name"
        name = action(task)
        assert name.count(".") >= 2, f"{module}: {task['name']!r} calls {name!r}, not an FQCN"
        if name.startswith("multicloud.migration."):
            assert name == fqcn or name.removeprefix("multicloud.migration.") in MODULES, name
        if name != fqcn:
            continue  # a helper task (ansible.builtin.debug, another module of ours)
        used += 1
        args = task[name] or {}
        assert isinstance(args, dict), f"{module}: {task['name']!r}: arguments as a string"
        assert set(args) <= options, f"{module}: {task['name']!r}: unknown {set(args) - options}"
    assert used, f"{module}: no example calls {fqcn}"
    # the first task shows the module itself
    assert action(tasks[0]) == fqcn, f"{module}: the first example calls {action(tasks[0])}"
