"""The execution environment definition and the dependency files it reads.

Nothing here builds an image (no container registry is reachable): ansible-builder
validates execution-environment.yml and writes the build context, and bindep parses
bindep.txt for this machine's platform.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run(*argv: object, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, check=False, cwd=cwd, timeout=300
    )


def test_collection_declares_its_ee_dependencies():
    meta = yaml.safe_load((ROOT / "meta/execution-environment.yml").read_text())
    assert meta["version"] == 1
    assert meta["dependencies"] == {"python": "requirements.txt", "system": "bindep.txt"}
    for name in meta["dependencies"].values():
        assert (ROOT / name).is_file(), name


def test_ee_definition_builds_a_context(tmp_path):
    ee = yaml.safe_load((ROOT / "execution-environment.yml").read_text())
    assert ee["version"] == 3
    version = yaml.safe_load((ROOT / "galaxy.yml").read_text())["version"]
    tarball = f"multicloud-migration-{version}.tar.gz"
    # the collection goes in from the tarball that `ansible-galaxy collection build` names
    assert ee["dependencies"]["galaxy"]["collections"] == [
        {"name": f"collection/{tarball}", "type": "file"}
    ]
    assert ee["additional_build_files"] == [{"src": f"build/{tarball}", "dest": "collection"}]

    work = tmp_path / "ee"
    work.mkdir()
    for name in ("execution-environment.yml", "requirements.txt", "bindep.txt"):
        shutil.copy2(ROOT / name, work / name)
    build = run(
        BIN / "ansible-galaxy", "collection", "build", "--output-path", work / "build", ROOT
    )
    assert build.returncode == 0, build.stderr
    create = run(
        BIN / "ansible-builder", "create", "-f", "execution-environment.yml", "-c", work / "ctx",
        cwd=work,
    )  # fmt: skip
    assert create.returncode == 0, create.stdout + create.stderr
    context = work / "ctx/_build"
    assert (context / "collection" / tarball).is_file()
    assert (context / "bindep.txt").read_text() == (ROOT / "bindep.txt").read_text()
    assert (context / "requirements.txt").read_text() == (ROOT / "requirements.txt").read_text()
    containerfile = (work / "ctx/Containerfile").read_text()
    assert "ansible-galaxy collection install" in containerfile
    assert "introspect" in containerfile


def bindep(*args: str) -> set[str]:
    proc = run(BIN / "bindep", "-f", ROOT / "bindep.txt", "-l", "newline", *args)
    # exit 1 only means "something is missing"; 2 is a parse error
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    return set(proc.stdout.split())


def test_bindep_separates_build_and_runtime_packages():
    if not Path("/usr/bin/dpkg").exists():
        pytest.skip("the package names below are Debian's")
    compile_ = bindep("compile")
    runtime = bindep()
    assert {"libvirt-dev", "pkg-config", "gcc", "python3-dev"} <= compile_
    assert {"libvirt-dev", "pkg-config", "gcc", "python3-dev"}.isdisjoint(runtime)
    assert "libvirt0" in runtime
    # the managed hosts' packages are not the controller's (they are in the comment only)
    assert {"dnsmasq-base", "iproute2", "qemu-system-x86"}.isdisjoint(compile_ | runtime)
    # `make deps` installs what a Debian developer needs to build libvirt-python
    makefile = (ROOT / "Makefile").read_text()
    apt = re.search(r"^APT_PACKAGES := (.*?)(?<!\\)\n", makefile, re.M | re.S)
    assert apt, "APT_PACKAGES not found in the Makefile"
    assert {"libvirt-dev", "pkg-config", "gcc", "python3-dev"} <= set(
        apt.group(1).replace("\\", " ").split()
    )
