"""The collection builds, installs, and resolves from a plain checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_galaxy_metadata():
    meta = yaml.safe_load((ROOT / "galaxy.yml").read_text())
    assert (meta["namespace"], meta["name"], meta["version"]) == (
        "multicloud",
        "migration",
        "0.1.0",
    )
    assert meta["license"] == ["GPL-3.0-or-later"]
    runtime = yaml.safe_load((ROOT / "meta/runtime.yml").read_text())
    assert runtime["requires_ansible"] == ">=2.17.0"
    assert "GNU GENERAL PUBLIC LICENSE" in (ROOT / "LICENSE").read_text()[:200]


def test_checkout_resolves_as_the_collection():
    link = ROOT / "collections/ansible_collections/multicloud/migration"
    assert link.is_symlink()
    assert link.resolve() == ROOT


# What the tarball holds: what a user installs. Everything else of the checkout (the lab,
# the benchmarks and their results, the tests, the Makefile, the dev requirements, tool
# settings, the AWX objects that AWX reads from a checkout of the repository, the
# execution-environment recipe that builds from build/) stays out through galaxy.yml's
# build_ignore.
SHIPPED_TOP_LEVEL = {
    "MANIFEST.json",  # written by the build (from galaxy.yml)
    "FILES.json",
    "README.md",
    "LICENSE",
    "plugins",
    "roles",
    "playbooks",
    "meta",
    "docs",
    "changelogs",
    "requirements.txt",  # meta/execution-environment.yml points ansible-builder at these two
    "bindep.txt",
    "inventories",  # inventories/example/ only
}
NOT_SHIPPED = ("lab", "bench", "tests", ".ci", "collections", "extensions", "awx", "build")
NOT_SHIPPED_FILES = ("Makefile", "requirements-dev.txt", "ansible.cfg", "pyproject.toml",
                     "execution-environment.yml", "importer_result.json", "galaxy.yml")  # fmt: skip


@pytest.fixture(scope="module")
def tarball(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    build = subprocess.run(
        [BIN / "ansible-galaxy", "collection", "build", "--output-path", out, ROOT],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    path = out / "multicloud-migration-0.1.0.tar.gz"
    assert path.exists()
    return path


def test_tarball_holds_only_what_users_install(tarball):
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
    assert sorted({n.split("/", 1)[0] for n in names} - SHIPPED_TOP_LEVEL) == []
    inventories = [n.split("/")[1] for n in names if n.startswith("inventories/")]
    assert set(inventories) <= {"example"}  # not inventories/lab, inventories/lab-ssh
    for top in NOT_SHIPPED:
        assert not [n for n in names if n == top or n.startswith(top + "/")], top
    assert [n for n in names if n in NOT_SHIPPED_FILES] == []
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert {"plugins/modules/vm_migrate.py", "roles/tenant_infra/tasks/main.yml",
            "playbooks/create_infra.yml", "meta/execution-environment.yml",
            "docs/examples/tenants.yml", "changelogs/changelog.yaml"} <= set(names)  # fmt: skip


def test_build_and_install(tarball, tmp_path):
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
    assert "galaxy.yml" not in names  # the build writes MANIFEST.json instead
    assert {"MANIFEST.json", "FILES.json", "meta/runtime.yml", "README.md"} <= set(names)
    # nothing of the local state or the self-referencing symlink is shipped
    for prefix in (".venv", ".cache", ".lab", "collections", ".git", ".ansible", "build"):
        assert not [n for n in names if n == prefix or n.startswith(prefix + "/")], prefix
    dest = tmp_path / "installed"
    # Outside the checkout, where the collection is not already resolvable.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env["ANSIBLE_COLLECTIONS_PATH"] = str(dest)
    install = subprocess.run(
        [BIN / "ansible-galaxy", "collection", "install", "--offline", "-p", dest, tarball],
        capture_output=True, text=True, check=False, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    assert (dest / "ansible_collections/multicloud/migration/MANIFEST.json").exists()
    listing = subprocess.run(
        [BIN / "ansible-galaxy", "collection", "list", "-p", dest, "multicloud.migration"],
        capture_output=True, text=True, check=False, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert "multicloud.migration 0.1.0" in listing.stdout


def test_test_files_have_unique_basenames():
    """make test runs tests/unit and tests/integration in one pytest process, where every
    test file is imported under its bare name (rootdir-relative, no packages): two files
    of the same name abort the whole collection (CI once failed exactly so)."""
    tests = Path(__file__).resolve().parents[1]
    names: dict[str, list[str]] = {}
    for path in sorted(tests.rglob("test_*.py")):
        names.setdefault(path.name, []).append(str(path.relative_to(tests)))
    assert {name: paths for name, paths in names.items() if len(paths) > 1} == {}


def test_unit_tests_do_not_import_from_conftest():
    """`from conftest import ...` resolves to whichever conftest was imported first when
    unit and integration tests run together; unit tests import what they need directly."""
    unit = Path(__file__).resolve().parent
    offenders = [
        path.name
        for path in unit.glob("test_*.py")
        if any(line.startswith("from conftest import") for line in path.read_text().splitlines())
    ]
    assert offenders == []
