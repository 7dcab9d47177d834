"""The molecule scenario extensions/molecule/tenant_infra on the lab (issue 3).

`molecule test -s tenant_infra`, run from the checkout (molecule finds the collection's
scenarios under extensions/molecule): cleanup, syntax, converge (create_infra.yml with
tenants `mla` and `mlb` on the same 10.0.0.0/24, one per cloud), idempotence (a second
converge must report no change), verify (testinfra), cleanup (delete_infra.yml; molecule
also runs it when a step fails, so the lab is left clean).
"""

from __future__ import annotations

import re
import subprocess

import pytest

from conftest import BIN, ROOT, lab_env

pytestmark = pytest.mark.lab

SCENARIO = "tenant_infra"
TIMEOUT = 600  # about 50 s on an idle 2-core lab
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_molecule_scenario_passes_with_idempotence(topology) -> None:
    env = lab_env()
    env["NO_COLOR"] = "1"
    env["ANSIBLE_NOCOLOR"] = "1"
    try:
        proc = subprocess.run(
            [str(BIN / "molecule"), "test", "-s", SCENARIO],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raw = exc.stdout or b""
        out = ANSI.sub("", raw.decode(errors="replace") if isinstance(raw, bytes) else raw)
        pytest.fail(f"molecule test -s {SCENARIO} took over {TIMEOUT} s:\n{out[-6000:]}")
    out = ANSI.sub("", proc.stdout + proc.stderr)
    tail = out[-6000:]
    assert proc.returncode == 0, f"molecule test -s {SCENARIO}: rc {proc.returncode}\n{tail}"
    # molecule's step lines: "[tenant_infra > idempotence] Executed: Successful" without
    # colour, "tenant_infra ➜ idempotence: Executed: Successful" with it
    step = rf"\[?{SCENARIO} (?:>|➜) {{}}\]?:? "
    assert re.search(step.format("idempotence") + "Executed: Successful", out), tail
    assert re.search(step.format("verify") + "Verifier completed successfully", out), tail
    assert re.search(r"=+ \d+ passed", out), tail
