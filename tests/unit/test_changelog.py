"""The 0.1.0 changelog builds from changelogs/fragments.

A release consumes the fragments (keep_fragments is false in changelogs/config.yaml), so it
is built in a copy of the collection, never in the checkout; `make lint` runs
`antsibull-changelog lint` on the checkout itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# What antsibull-changelog reads: the version, the fragments, and the plugins it announces.
PARTS = ("galaxy.yml", "changelogs", "plugins", "roles", "meta")


def antsibull_changelog(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    return subprocess.run(
        [BIN / "antsibull-changelog", *args],
        capture_output=True, text=True, check=False, cwd=cwd, env=env, timeout=300,
    )  # fmt: skip


def test_changelog_lint():
    proc = antsibull_changelog(ROOT, "lint")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_release_0_1_0_builds_in_a_copy(tmp_path):
    fragments_before = sorted(p.name for p in (ROOT / "changelogs/fragments").iterdir())
    copy = tmp_path / "ansible_collections/multicloud/migration"
    for part in PARTS:
        source = ROOT / part
        if source.is_dir():
            shutil.copytree(source, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            copy.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / part)
    version = yaml.safe_load((ROOT / "galaxy.yml").read_text())["version"]
    assert version == "0.1.0"

    proc = antsibull_changelog(
        copy, "release", "--version", version, "--date", "2026-01-01",
        "--ansible-doc-bin", str(BIN / "ansible-doc"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr

    changes = yaml.safe_load((copy / "changelogs/changelog.yaml").read_text())
    release = changes["releases"][version]
    assert release["release_date"] == "2026-01-01"
    assert set(release["fragments"]) == {f for f in fragments_before if f.endswith(".yml")}
    assert release["changes"]["release_summary"].startswith("First release")
    new_modules = {m["name"] for m in release["modules"]}
    assert {"netns", "link", "address", "route", "fdb", "dnsmasq", "tenant_spec"} <= new_modules
    new_filters = {p["name"] for p in release["plugins"]["filter"]}
    assert {"host_plans", "removal_plans"} <= new_filters

    rst = (copy / "CHANGELOG.rst").read_text()
    assert "v0.1.0" in rst and "Major Changes" in rst and "New Modules" in rst
    assert "multicloud.migration.netns" in rst

    # the copy's fragments were consumed; the checkout's are untouched
    assert not [p for p in (copy / "changelogs/fragments").iterdir() if p.suffix == ".yml"]
    assert sorted(p.name for p in (ROOT / "changelogs/fragments").iterdir()) == fragments_before
