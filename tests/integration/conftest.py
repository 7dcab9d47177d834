"""Integration tests run on the lab (`make lab` brings it up; `make test` does it first)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import testinfra

import lab  # registered by tests/conftest.py

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def lab_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(ROOT / "lab" / "containers.conf"))
    env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="session")
def topology() -> lab.Topology:
    topo = lab.load_topology()
    missing = [n for n in topo.host_names if not (lab.container_state(n) or {}).get("State", {})
               .get("Running")]  # fmt: skip
    if missing:
        pytest.fail(f"the lab is not up (hosts {missing} not running): run `make lab` first")
    return topo


@pytest.fixture(scope="session")
def hosts(topology: lab.Topology) -> dict[str, testinfra.host.Host]:
    return {name: testinfra.get_host(f"podman://{name}") for name in topology.host_names}


def run(
    argv: list[str], timeout: float = 600, input_text: str | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, cwd=ROOT, env=lab_env(), capture_output=True, text=True, timeout=timeout,
        check=False, input=input_text,
    )  # fmt: skip


def ansible_json(argv: list[str], timeout: float = 600) -> tuple[subprocess.CompletedProcess, dict]:
    """Run ansible/ansible-playbook with the json callback; return the process and its data."""
    env = lab_env()
    env["ANSIBLE_STDOUT_CALLBACK"] = "ansible.posix.json"
    env["ANSIBLE_LOAD_CALLBACK_PLUGINS"] = "1"
    proc = subprocess.run(
        [str(BIN / argv[0]), *argv[1:]],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"{argv[0]} printed no JSON (rc {proc.returncode}):\n{proc.stdout[-3000:]}"
                    f"\n{proc.stderr[-3000:]}")  # fmt: skip
    return proc, data
