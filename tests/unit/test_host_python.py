"""What runs on the managed hosts runs on Python 3.9, and every module says so.

`make lint` runs vermin (3.9 target) and .ci/runtime_unions.py on plugins/modules and
plugins/module_utils; these tests pin what the second one finds and what it leaves alone,
and that the floor reaches every module's documentation through the doc fragment.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HOST_CODE = (ROOT / "plugins/modules", ROOT / "plugins/module_utils")
FLOOR = "Python 3.9 or later on the managed host"


def _runtime_unions():
    spec = importlib.util.spec_from_file_location("runtime_unions", ROOT / ".ci/runtime_unions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


runtime_unions = _runtime_unions()

SAMPLE = """\
from __future__ import annotations

import os
import typing
from collections.abc import Iterable

Alias = int | None
Generic = list[str] | None
Qualified = typing.Optional | Iterable
FLAGS = os.R_OK | os.W_OK
BITS = 1 | 2


def f(x: int | None = None, *, y: str | bytes = "") -> str | None:
    merged = {1} | {2}
    try:
        if isinstance(x, int | str) or issubclass(type(x), Exception | Warning):
            return None
    except KeyError | ValueError:
        pass
    return str(merged)
"""


def test_finds_runtime_unions_and_leaves_annotations_and_flags_alone(tmp_path):
    path = tmp_path / "sample.py"
    path.write_text(SAMPLE)
    found = runtime_unions.check_file(path)
    assert [entry[0] for entry in found] == [7, 8, 9, 17, 17, 19]
    assert "isinstance()" in found[3][1] and "issubclass()" in found[4][1]
    assert "except" in found[5][1]


def test_bar_in_annotations_needs_the_future_import(tmp_path):
    path = tmp_path / "sample.py"
    path.write_text(SAMPLE.replace("from __future__ import annotations\n", ""))
    found = runtime_unions.check_file(path)
    assert (13, "`|` in an annotation without `from __future__ import annotations`") in found


def test_host_code_has_no_runtime_unions(capsys):
    assert runtime_unions.main([str(p) for p in HOST_CODE]) == 0, capsys.readouterr().out


def test_every_module_declares_the_python_floor():
    modules = sorted(p.stem for p in HOST_CODE[0].glob("*.py") if p.stem != "__init__")
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
    names = [f"multicloud.migration.{m}" for m in modules]
    proc = subprocess.run(
        [BIN / "ansible-doc", "-t", "module", "-j", *names],
        capture_output=True, text=True, check=False, cwd=ROOT, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    docs = json.loads(proc.stdout)
    assert len(docs) == len(modules)
    lacking = [name for name, entry in docs.items() if FLOOR not in entry["doc"]["requirements"]]
    assert lacking == []
