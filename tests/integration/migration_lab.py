"""What the migration lab tests share: a tenant of their own built from a spec and removed
again, the playbooks run with that spec and a state directory of their own on the lab's
state host, the ledger and placement the playbooks write there, and where a domain is."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from conftest import ansible_json, migration_tls, run

PLAYBOOK_TIMEOUT = 900
# The lab's state host (inventories/lab/hosts.yml, group mcm_state) and where the tests
# keep their state directories on it (one per test or module, removed afterwards).
STATE_HOST = "mcm-a1"
TEST_STATE_ROOT = "/var/lib/mcm/test-state"
# ... but every test uses the lab's one migration CA (mcm_pki_dir's default with the
# default state directory): a CA per test would reissue every host's certificate.
LAB_PKI_DIR = "/var/lib/mcm/state/pki"

_READ_STATE = r"""
import glob, json, os, sys
root = sys.argv[1]
rows = []
for path in glob.glob(os.path.join(root, "migrations", "*.json")):
    if os.path.basename(path)[:-5].isdigit():
        with open(path) as handle:
            rows.append(json.load(handle))
placement = {}
if os.path.exists(os.path.join(root, "placement.json")):
    with open(os.path.join(root, "placement.json")) as handle:
        placement = json.load(handle)
print(json.dumps({"rows": sorted(rows, key=lambda r: r["id"]), "placement": placement}))
"""


def state_dir(tmp: Path) -> str:
    """A state directory of the test's own on the state host (named after its tmp dir)."""
    return f"{TEST_STATE_ROOT}/{tmp.name}"


def state_args(state: str) -> list[str]:
    """The -e arguments that give a playbook the test's state directory."""
    return ["-e", f"mcm_state_dir={state}", "-e", f"mcm_pki_dir={LAB_PKI_DIR}"]


def read_state(state: str) -> dict[str, Any]:
    """{rows, placement} of a state directory on the state host."""
    proc = run(["podman", "exec", STATE_HOST, "python3", "-c", _READ_STATE, state], timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def write_placement(state: str, data: dict[str, Any]) -> None:
    """Put a placement record into a state directory on the state host."""
    proc = run(["podman", "exec", "-i", STATE_HOST, "sh", "-c",
                'mkdir -p "$1" && cat > "$1/placement.json"', "sh", state],
               input_text=json.dumps(data), timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]


def remove_state(state: str) -> None:
    assert state.startswith(TEST_STATE_ROOT + "/"), state
    run(["podman", "exec", STATE_HOST, "rm", "-rf", state], timeout=60)


@contextlib.contextmanager
def tenant_env(
    tmp: Path, spec: dict[str, Any], tenant: str, hosts: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    """create_infra.yml with ``spec`` (state kept in a directory of the test's own on the
    state host); delete_infra.yml of ``tenant`` afterwards, also when the test failed.
    Yields {extra, state}: the -e arguments every playbook of the test gets, and the state
    directory (a path on the state host: read it with ledger() and placement()).

    The lab ``hosts`` get the TLS material migrations and their --check plans need first,
    when they do not have it yet (a freshly built lab has none): each test file can run
    alone."""
    migration_tls(hosts)
    spec_file = tmp / "spec.yml"
    spec_file.write_text(yaml.safe_dump(spec))
    state = state_dir(tmp)
    extra = ["-e", f"spec_file={spec_file}", *state_args(state)]
    try:
        made = run(["ansible-playbook", "playbooks/create_infra.yml", *extra],
                   timeout=PLAYBOOK_TIMEOUT)  # fmt: skip
        assert made.returncode == 0, made.stdout[-3000:]
        yield {"extra": extra, "state": state}
    finally:
        gone = run(["ansible-playbook", "playbooks/delete_infra.yml", "-e", f"tenant={tenant}"],
                   timeout=PLAYBOOK_TIMEOUT)  # fmt: skip
        remove_state(state)
        assert gone.returncode == 0, gone.stdout[-3000:]


def playbook(env: dict[str, Any], name: str, *args: str) -> tuple[int, dict]:
    """Run playbooks/NAME with the test's spec and state; (return code, json callback data)."""
    proc, data = ansible_json(["ansible-playbook", f"playbooks/{name}", *env["extra"], *args],
                              timeout=PLAYBOOK_TIMEOUT)  # fmt: skip
    return proc.returncode, data


def ledger(env: dict[str, Any]) -> list[dict]:
    """The ledger rows, oldest first."""
    return read_state(env["state"])["rows"]


def placement(env: dict[str, Any]) -> dict:
    return read_state(env["state"])["placement"]


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
