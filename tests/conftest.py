"""Shared test set-up: makes lab/lab.py importable as `lab` (it is a script, not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load_lab() -> None:
    if "lab" in sys.modules:
        return
    spec = importlib.util.spec_from_file_location("lab", ROOT / "lab" / "lab.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["lab"] = module
    spec.loader.exec_module(module)


_load_lab()
