"""Make the collection importable in unit tests without installing it.

`collections/ansible_collections/multicloud/migration` is a symlink to the repository
root, so putting `collections/` on sys.path makes
`ansible_collections.multicloud.migration.plugins.module_utils.<name>` importable exactly
as Ansible imports it. For brevity the pure module_utils are also registered under their
plain names (``import spec``, ``import naming``, ``import plan``).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

COLLECTIONS = Path(__file__).resolve().parents[2] / "collections"
PACKAGE = "ansible_collections.multicloud.migration.plugins.module_utils"

if str(COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS))


def load_module_utils(name: str) -> ModuleType:
    """Import plugins/module_utils/<name>.py (once) and register it as ``name`` too."""
    module = importlib.import_module(f"{PACKAGE}.{name}")
    sys.modules.setdefault(name, module)
    return module


for _name in ("naming", "spec", "plan"):
    load_module_utils(_name)
