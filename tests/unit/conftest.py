"""Make the collection's module_utils importable by plain name in unit tests.

The unit tests run from the repository root (`.venv/bin/pytest tests/unit`) without
installing the collection. Pure-Python module_utils files are loaded by file path under
their plain names (``import spec``, ``import naming``); a module_utils file that imports a
sibling relatively falls back to the plain name (see spec.py), so load dependencies first.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

MODULE_UTILS = Path(__file__).resolve().parents[2] / "plugins" / "module_utils"


def load_module_utils(name: str) -> ModuleType:
    """Import plugins/module_utils/<name>.py as the top-level module ``name`` (once)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, MODULE_UTILS / f"{name}.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {name} from {MODULE_UTILS}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


# Order matters: spec imports naming.
for _name in ("naming", "spec"):
    load_module_utils(_name)
