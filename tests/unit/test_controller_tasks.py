"""tenant_spec and migration_record on the controller: validate_spec.yml end to end, and
the action plugins (the task in ansible-playbook's process) against the modules run as
modules (AnsiballZ-free: the module file with its arguments in a JSON file), which is
what a task on any other connection gets. Controller only: no lab."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
EXAMPLE = ROOT / "docs" / "examples" / "tenants.yml"
BAD_SPEC = """\
tenants:
  - name: acme
    networks:
      - name: web
        cloud: cloud_a
        subnet: 10.1.1.1/24
        vms:
          - {name: w1, vcpus: 0, memory: 1, disk: 1}
      - name: web
        cloud: cloud_z
        subnet: 10.1.2.0/24
        colour: red
"""
BAD_LINES = [
    "tenants[0].networks[0].subnet: '10.1.1.1/24' has host bits set",
    "tenants[0].networks[0].vms[0].vcpus: must be an integer from 1 to 64",
    "tenants[0].networks[1].cloud: unknown cloud group 'cloud_z'",
    "tenants[0].networks[1].colour: unknown key 'colour'",
    "tenants[0].networks[1].name: duplicate network name 'web'",
]


def env() -> dict[str, str]:
    out = dict(os.environ)
    out.update(ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               PATH=f"{BIN}{os.pathsep}{out.get('PATH', '')}")  # fmt: skip
    return out


def playbook(path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "ansible-playbook"), str(path), *extra],
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def in_process(tmp_path: Path, module: str, args: dict, *flags: str) -> dict:
    """The task on localhost (connection local: the action plugin runs it in process)."""
    book = tmp_path / "task.yml"
    out = tmp_path / "result.json"
    book.write_text(yaml.safe_dump([{
        "hosts": "localhost", "connection": "local", "gather_facts": False,
        "tasks": [
            {"name": "the task", f"multicloud.migration.{module}": args, "register": "r",
             "ignore_errors": True},
            {"name": "keep it", "ansible.builtin.copy": {
                "content": "{{ r | to_json }}", "dest": str(out)}, "check_mode": False},
        ],
    }]))  # fmt: skip
    proc = playbook(book, *flags)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def as_module(tmp_path: Path, module: str, args: dict, check: bool = False,
              diff: bool = False) -> dict:  # fmt: skip
    """The module itself, as any host other than the controller runs it."""
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {
        **args, "_ansible_check_mode": check, "_ansible_diff": diff}}))  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(ROOT / "plugins" / "modules" / f"{module}.py"), str(args_file)],
        env={**env(), "PYTHONPATH": str(ROOT / "collections")},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return json.loads(proc.stdout)


def both(tmp_path: Path, module: str, args: dict) -> tuple[dict, dict]:
    """The task's result in process and as a module."""
    return in_process(tmp_path, module, args), as_module(tmp_path, module, args)


def one_task(tmp_path: Path, name: str, task: dict) -> Path:
    """A playbook of one task on localhost."""
    book = tmp_path / f"{name}.yml"
    play = {"hosts": "localhost", "connection": "local", "gather_facts": False, "tasks": [task]}
    book.write_text(yaml.safe_dump([play]))
    return book


class TestValidateSpecPlaybook:
    def test_the_example_spec_is_valid(self):
        proc = playbook(ROOT / "playbooks" / "validate_spec.yml", "-e", f"spec_file={EXAMPLE}")
        assert proc.returncode == 0, proc.stdout[-3000:]
        assert "tenants.yml is valid: " in proc.stdout

    def test_every_problem_on_its_own_line_and_a_non_zero_exit(self, tmp_path):
        bad = tmp_path / "bad.yml"
        bad.write_text(BAD_SPEC)
        proc = playbook(ROOT / "playbooks" / "validate_spec.yml", "-e", f"spec_file={bad}")
        assert proc.returncode != 0
        text = proc.stdout + proc.stderr
        assert f"the spec {bad} has 5 problems; nothing was changed" in text
        lines = text.splitlines()
        for expected in BAD_LINES:
            assert any(line.strip().startswith(expected) for line in lines), expected

    def test_a_yaml_syntax_error_names_its_line(self, tmp_path):
        bad = tmp_path / "broken.yml"
        bad.write_text("tenants:\n  - name: acme\n    networks: [\n")
        proc = playbook(ROOT / "playbooks" / "validate_spec.yml", "-e", f"spec_file={bad}")
        assert proc.returncode != 0
        assert "line 4" in proc.stdout + proc.stderr or "line 3" in proc.stdout + proc.stderr


CLOUDS = ["cloud_a", "cloud_b"]


class TestTenantSpecActionMatchesTheModule:
    def test_valid_spec(self, tmp_path):
        args = {"path": str(EXAMPLE), "clouds": CLOUDS}
        here, there = both(tmp_path, "tenant_spec", args)
        assert not here.get("failed") and not there.get("failed"), (here, there)
        assert here["spec"] == there["spec"] and here["summary"] == there["summary"]
        assert here["changed"] is False and here["summary"]["tenants"] >= 1

    def test_invalid_spec_fails_alike(self, tmp_path):
        args = {"content": BAD_SPEC, "clouds": CLOUDS}
        here, there = both(tmp_path, "tenant_spec", args)
        assert here["failed"] and there["failed"]
        assert here["msg"] == there["msg"]
        assert here["msg"].startswith("the spec <content> has 5 problems")

    def test_unreadable_file_and_bad_arguments(self, tmp_path):
        missing = {"path": str(tmp_path / "nope.yml")}
        here = in_process(tmp_path, "tenant_spec", missing)
        assert here["failed"] and "cannot read the spec file" in here["msg"]
        assert here["msg"] == as_module(tmp_path, "tenant_spec", missing)["msg"]
        both = {"path": str(EXAMPLE), "content": "tenants: []"}
        here = in_process(tmp_path, "tenant_spec", both)
        assert here["failed"] and "mutually exclusive" in here["msg"]
        assert as_module(tmp_path, "tenant_spec", both)["failed"]


class TestMigrationRecordActionMatchesTheModule:
    ROW: ClassVar[dict] = {"kind": "instance", "object": "acme/w1", "tenant": "acme",
                           "source": "cloud_a", "destination": "cloud_b",
                           "mode": "live"}  # fmt: skip
    DONE: ClassVar[dict] = {"action": "update", "fields": {"status": "completed"},
                            "placement": {"vms": {"acme/w1": "mcm-b1"}}}  # fmt: skip

    def test_start_update_gather_and_placement(self, tmp_path):
        here_dir, there_dir = tmp_path / "here", tmp_path / "there"
        results = []
        for state_dir, run in ((here_dir, in_process), (there_dir, None)):

            def call(args, check=False, diff=False, state_dir=state_dir, run=run):
                args = {"state_dir": str(state_dir), **args}
                if run:
                    flags = (["--check"] if check else []) + (["--diff"] if diff else [])
                    return in_process(tmp_path, "migration_record", args, *flags)
                return as_module(tmp_path, "migration_record", args, check, diff)

            started = call({"action": "start", "fields": self.ROW})
            row_id = started["row"]["id"]
            dry = call({**self.DONE, "id": row_id}, check=True, diff=True)
            after_dry = call({})
            done = call({**self.DONE, "id": row_id}, diff=True)
            again = call({**self.DONE, "id": row_id})
            results.append((started, dry, after_dry, done, again))
        for started, dry, after_dry, done, again in results:
            assert started["changed"] and started["row"]["status"] == "running"
            # check mode: reported as it would be, nothing written
            assert dry["changed"] and dry["row"]["status"] == "completed"
            assert dry["placement"]["vms"] == {"acme/w1": "mcm-b1"}
            assert dry["diff"]["before"]["row"]["status"] == "running"
            assert after_dry["rows"][0]["status"] == "running" and not after_dry["placement"]["vms"]
            assert done["changed"] and done["placement"]["vms"] == {"acme/w1": "mcm-b1"}
            assert done["rows"][0]["status"] == "completed" and done["rows"][0]["ended"]
            assert again["changed"] is False
        here, there = results
        h_started, h_done, t_started, t_done = here[0], here[3], there[0], there[3]
        assert h_started["row"]["id"] == t_started["row"]["id"] == 1
        assert h_done["table"][0] == t_done["table"][0]  # the header; rows carry times
        assert len(h_done["table"]) == len(t_done["table"])

    def test_unknown_id_fails_alike(self, tmp_path):
        args = {"state_dir": str(tmp_path), "action": "update", "id": 7, "fields": {}}
        here, there = both(tmp_path, "migration_record", args)
        assert here["failed"] and there["failed"]
        assert here["msg"] == there["msg"] and here["msg"].startswith("migration record in ")

    def test_update_without_id_is_refused(self, tmp_path):
        args = {"state_dir": str(tmp_path), "action": "update"}
        here = in_process(tmp_path, "migration_record", args)
        assert here["failed"] and "id" in here["msg"]


@pytest.mark.parametrize("module", ["tenant_spec", "migration_record"])
def test_the_action_plugin_runs_in_process_on_the_controller(tmp_path, module):
    """No module start-up on a local connection: no command is executed (-vvv shows an
    EXEC line for every module that runs, pipelined or not)."""
    args = {"path": str(EXAMPLE)} if module == "tenant_spec" else {"state_dir": str(tmp_path)}
    proc = playbook(one_task(tmp_path, "one", {f"multicloud.migration.{module}": args}), "-vvv")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "EXEC " not in proc.stdout
    control = one_task(tmp_path, "control", {"ansible.builtin.ping": {}})
    assert "EXEC " in playbook(control, "-vvv").stdout  # the marker is real
