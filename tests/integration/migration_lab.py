"""What the migration lab tests share: a tenant of their own built from a spec and removed
again, the playbooks run with that spec and state directory, the ledger and placement the
playbooks write, and where a domain is."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from conftest import ansible_json, migration_tls, run

PLAYBOOK_TIMEOUT = 900


@contextlib.contextmanager
def tenant_env(
    tmp: Path, spec: dict[str, Any], tenant: str, hosts: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    """create_infra.yml with ``spec`` (state kept under ``tmp``); delete_infra.yml of
    ``tenant`` afterwards, also when the test failed. Yields {extra, state}: the -e
    arguments every playbook of the test gets, and the state directory.

    The lab ``hosts`` get the TLS material migrations and their --check plans need first,
    when they do not have it yet (a freshly built lab has none): each test file can run
    alone."""
    migration_tls(hosts)
    spec_file = tmp / "spec.yml"
    spec_file.write_text(yaml.safe_dump(spec))
    extra = ["-e", f"spec_file={spec_file}", "-e", f"mcm_state_dir={tmp / 'state'}"]
    try:
        made = run(["ansible-playbook", "playbooks/create_infra.yml", *extra],
                   timeout=PLAYBOOK_TIMEOUT)  # fmt: skip
        assert made.returncode == 0, made.stdout[-3000:]
        yield {"extra": extra, "state": tmp / "state"}
    finally:
        gone = run(["ansible-playbook", "playbooks/delete_infra.yml", "-e", f"tenant={tenant}"],
                   timeout=PLAYBOOK_TIMEOUT)  # fmt: skip
        assert gone.returncode == 0, gone.stdout[-3000:]


def playbook(env: dict[str, Any], name: str, *args: str) -> tuple[int, dict]:
    """Run playbooks/NAME with the test's spec and state; (return code, json callback data)."""
    proc, data = ansible_json(["ansible-playbook", f"playbooks/{name}", *env["extra"], *args],
                              timeout=PLAYBOOK_TIMEOUT)  # fmt: skip
    return proc.returncode, data


def ledger(env: dict[str, Any]) -> list[dict]:
    """The ledger rows, oldest first."""
    rows = sorted((env["state"] / "migrations").glob("*.json"), key=lambda p: int(p.stem))
    return [json.loads(p.read_text()) for p in rows]


def placement(env: dict[str, Any]) -> dict:
    path = env["state"] / "placement.yml"
    return yaml.safe_load(path.read_text()) if path.exists() else {}


def where(hosts: dict[str, Any], domain: str) -> dict[str, str]:
    """{host: state} of every lab host that has ``domain``."""
    out = {}
    for name, host in hosts.items():
        state = host.run("virsh domstate %s", domain)
        if state.rc == 0:
            out[name] = state.stdout.strip()
    return out


def changed(data: dict) -> int:
    """Changed tasks of a playbook run, all hosts together."""
    return sum(s.get("changed", 0) for s in data["stats"].values())


def messages(data: dict) -> str:
    """A playbook run's json output as text, to search for an operator's message."""
    return json.dumps(data)
