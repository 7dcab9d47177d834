"""Shared state on the lab's state host (docs/state.md), used the way operators do: from
two separate copies of the project (two controllers, or two AWX jobs), each with nothing
on its own disk.

Tenant mss: net 10.37.1.0/24 on cloud_a with c1 (10.37.1.10, moved cold from clone A and
confirmed from clone B), x1 (10.37.1.11, a slow live move from A that B is refused to
race and then aborts) and k1 (10.37.1.12, the kill -9 cases), all on mcm-a1. The module
fixture makes the two copies and the tenant, and removes the tenant and the test's state
directory on the state host afterwards, also after a failure.

Over 60 s (issue 19's budget): every case is a real migration playbook run (30-40 s each
on this lab) or a wait for a dead run's heartbeat to go stale; the module shares one
tenant and its guests between them.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import BIN, ROOT, console, lab_env
from migration_lab import (
    LAB_PKI_DIR,
    PLAYBOOK_TIMEOUT,
    STATE_HOST,
    changed,
    messages,
    read_state,
    tenant_env,
    where,
)

pytestmark = pytest.mark.lab

TENANT = "mss"
SPEC = {
    "tenants": [
        {
            "name": TENANT,
            "networks": [
                {
                    "name": "net",
                    "cloud": "cloud_a",
                    "subnet": "10.37.1.0/24",
                    "vms": [
                        {"name": name, "vcpus": 1, "memory": "128MiB", "disk": "64MiB",
                         "ip": ip, "host": "mcm-a1"}
                        for name, ip in (("c1", "10.37.1.10"), ("x1", "10.37.1.11"),
                                         ("k1", "10.37.1.12"))
                    ],
                },
            ],
        }
    ]
}  # fmt: skip
DHCP_NS = "qdhcp-mss.net"
# A dead run's row may be taken over once its heartbeat is this old (-e mcm_owner_timeout;
# 30 s by default): short here so that the tests do not wait long.
OWNER_TIMEOUT = 8


def copy_checkout(dest: Path) -> Path:
    """A copy of the files git tracks or would track (what a fresh clone of this tree holds:
    no state/, no .venv), as a second controller would have it."""
    dest.mkdir(parents=True)
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, check=True).stdout  # fmt: skip
    pack = subprocess.run(
        ["tar", "--null", "--ignore-failed-read", "-T", "-", "-cf", "-"],
        cwd=ROOT, input=files, capture_output=True, check=True,
    ).stdout  # fmt: skip
    subprocess.run(["tar", "-xf", "-", "-C", str(dest)], input=pack, check=True)
    assert not (dest / "state").exists() and (dest / "ansible.cfg").exists()
    return dest


class Clone:
    """One copy of the project, running its own playbooks (its own ansible.cfg, its own
    collection path) with the test's spec and state directory."""

    def __init__(self, path: Path, extra: list[str]) -> None:
        self.path = path
        self.extra = extra

    def env(self) -> dict[str, str]:
        env = lab_env()
        env["ANSIBLE_CONFIG"] = str(self.path / "ansible.cfg")
        env["ANSIBLE_STDOUT_CALLBACK"] = "ansible.posix.json"
        env["ANSIBLE_LOAD_CALLBACK_PLUGINS"] = "1"
        return env

    def argv(self, name: str, *args: str) -> list[str]:
        return [str(BIN / "ansible-playbook"), f"playbooks/{name}", *self.extra, *args]

    def run(self, name: str, *args: str) -> tuple[int, dict]:
        proc = subprocess.run(self.argv(name, *args), cwd=self.path, env=self.env(),
                              capture_output=True, text=True, timeout=PLAYBOOK_TIMEOUT,
                              check=False)  # fmt: skip
        try:
            return proc.returncode, json.loads(proc.stdout)
        except json.JSONDecodeError:
            pytest.fail(f"{name} printed no JSON (rc {proc.returncode}):\n{proc.stdout[-3000:]}"
                        f"\n{proc.stderr[-3000:]}")  # fmt: skip

    def start(self, name: str, *args: str) -> subprocess.Popen:
        """The playbook in the background (its output is not read)."""
        return subprocess.Popen(self.argv(name, *args), cwd=self.path, env=self.env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


@pytest.fixture(scope="module")
def env(hosts, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mss")
    try:
        with tenant_env(tmp, SPEC, TENANT, hosts) as env:
            extra = [*env["extra"], "-e", f"mcm_owner_timeout={OWNER_TIMEOUT}"]
            env["a"] = Clone(copy_checkout(tmp / "clone-a"), extra)
            env["b"] = Clone(copy_checkout(tmp / "clone-b"), extra)
            yield env
    finally:
        for name in ("mcm-a1", "mcm-a2", "mcm-b1"):
            left = hosts[name].run("ls /var/lib/mcm/vms").stdout
            assert "mss-" not in left, f"{name} keeps {left}"


def rows(env: dict[str, Any]) -> list[dict]:
    return read_state(env["state"])["rows"]


def state_host_run(hosts: dict, command: str, *args: str) -> Any:
    return hosts[STATE_HOST].run(command, *args)


def lock_is_free(hosts: dict, env: dict[str, Any]) -> bool:
    return state_host_run(hosts, "flock -n %s/.lock true", env["state"]).rc == 0


def heartbeat_age(hosts: dict, env: dict[str, Any], row_id: int) -> float:
    out = state_host_run(
        hosts, "echo $(( $(date +%%s) - $(stat -c %%Y %s/migrations/%s.beat) ))",
        env["state"], str(row_id),
    ).stdout  # fmt: skip
    return float(out.strip() or 0)


def wait_until_owner_gone(hosts: dict, env: dict[str, Any], row_id: int) -> None:
    """A killed run stops beating: its row's heartbeat ages past the owner timeout."""
    deadline = time.monotonic() + 60
    while heartbeat_age(hosts, env, row_id) <= OWNER_TIMEOUT:
        assert time.monotonic() < deadline, f"row {row_id}: the heartbeat never stopped"
        time.sleep(1)


def hosts_unchanged(data: dict) -> bool:
    return all(s.get("changed", 0) == 0 for h, s in data["stats"].items() if h != "localhost")


def test_cold_migration_from_one_copy_is_listed_and_confirmed_from_the_other(env, hosts):
    a, b = env["a"], env["b"]
    rc, data = a.run("migrate_instance.yml", "-e", "instance=c1", "-e", "to=cloud_b",
                     "-e", "mode=cold", "-e", "shutdown_timeout=5")  # fmt: skip
    assert rc == 0, messages(data)[-3000:]
    [row] = [r for r in rows(env) if r["object"] == f"{TENANT}/c1"]
    assert row["status"] == "finished"
    assert row["owner"]["controller"] and row["owner"]["token"]

    rc, data = b.run("migrations.yml")
    assert rc == 0, messages(data)[-3000:]
    listed = rf'"{row["id"]} +instance +{TENANT}/c1 +mcm-a1 +mcm-b1 +cold +finished '
    assert re.search(listed, messages(data)), messages(data)[-3000:]
    rc, data = b.run("create_infra.yml")
    assert rc != 0 and "confirm_migration.yml or revert_migration.yml -e id=ID" in messages(data)

    rc, data = b.run("confirm_migration.yml", "-e", f"id={row['id']}")
    assert rc == 0, messages(data)[-3000:]
    assert where(hosts, "mss-c1") == {"mcm-b1": "running"}
    assert [r["status"] for r in rows(env) if r["id"] == row["id"]] == ["confirmed"]
    rc, data = b.run("create_infra.yml")
    assert rc == 0 and changed(data) == 0, messages(data)[-3000:]
    rc, data = a.run("create_infra.yml")
    assert rc == 0 and changed(data) == 0, messages(data)[-3000:]


def test_a_second_migration_of_the_tenant_is_refused_and_a_run_is_aborted_from_the_other(
    env, hosts
):
    """A slow live move of x1 from copy A; from copy B a move of k1 is refused naming A's
    row and changes nothing on any host; then B aborts A's move while its job runs. About
    60 s: the guest's memory is filled first and the move is throttled (2 MiB/s) so that
    the refusal and the abort find it running; then A's failure path and B's abort end."""
    a, b = env["a"], env["b"]
    # 40 MiB of random data in the guest's memory at 2 MiB/s cannot finish before the abort
    [out] = console("mcm-a1", "mss-x1", "head -c 41943040 /dev/urandom > /dev/shm/fill; echo ok",
                    timeout=240)  # fmt: skip
    assert out["rc"] == 0, out
    before = len(rows(env))
    proc = a.start("migrate_instance.yml", "-e", "instance=x1", "-e", "to=cloud_b",
                   "-e", "mode=live-block", "-e", "bandwidth_mib=2",
                   "-e", "timeout=400")  # fmt: skip
    try:
        row = None
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            now = rows(env)
            if len(now) > before and hosts["mcm-a1"].run(
                "virsh domjobinfo mss-x1 | grep -q Unbounded"
            ).rc == 0:  # fmt: skip
                row = now[-1]
                break
            time.sleep(1)
        assert row is not None, f"the migration job never ran: {proc.poll()}"
        assert row["status"] == "running" and row["object"] == f"{TENANT}/x1"

        rc, data = b.run("migrate_instance.yml", "-e", "instance=k1", "-e", "to=cloud_b")
        assert rc != 0, "a second migration of the tenant must be refused"
        assert f"migration {row['id']} (instance {TENANT}/x1" in messages(data)
        assert "is running, run by" in messages(data)
        assert hosts_unchanged(data), data["stats"]
        assert where(hosts, "mss-k1") == {"mcm-a1": "running"}
        assert len(rows(env)) == before + 1, "the refused migration opened no row"

        rc, data = b.run("abort_migration.yml", "-e", f"id={row['id']}")
        assert rc == 0, messages(data)[-3000:]
        assert f"aborted the migration job of {TENANT}/x1" in messages(data)
        assert proc.wait(timeout=300) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert [r["status"] for r in rows(env) if r["id"] == row["id"]] == ["aborted"]
    assert where(hosts, "mss-x1") == {"mcm-a1": "running"}
    assert hosts["mcm-a1"].run("ip netns exec %s ping -c 3 -i 0.3 -W 1 10.37.1.11", DHCP_NS).rc == 0


@pytest.mark.parametrize("point", ["locked", "written"])
def test_the_state_writer_killed_at_a_kill_point_leaves_a_row_the_re_run_takes_over(
    env, hosts, point
):
    """kill -9 of the module process on the state host at the kill point (while it holds
    the lock / after writing the temporary file, before the rename) as it closes the row:
    the ledger stays readable with the row running, the lock is free, and the same
    playbook run again takes the row over and closes it (docs/state.md, Kill points)."""
    a = env["a"]
    to = "cloud_b" if where(hosts, "mss-k1").keys() <= {"mcm-a1", "mcm-a2"} else "cloud_a"
    assert state_host_run(hosts, "sh -c 'echo %s update > %s/.kill-at'", point,
                          env["state"]).rc == 0  # fmt: skip
    argv = ("migrate_instance.yml", "-e", "instance=k1", "-e", f"to={to}", "-e", "mode=live-block")
    rc, data = a.run(*argv)
    assert rc != 0, "the writer was killed as it closed the row"
    assert state_host_run(hosts, "test -e %s/.kill-at", env["state"]).rc != 0, "it fired"
    row = rows(env)[-1]  # readable
    assert row["status"] == "running" and row["object"] == f"{TENANT}/k1", row
    assert lock_is_free(hosts, env)
    leftovers = state_host_run(hosts, "ls -A %s/migrations", env["state"]).stdout.split()
    assert any(n.startswith(".tmp-") for n in leftovers) == (point == "written"), leftovers

    wait_until_owner_gone(hosts, env, row["id"])
    rc, data = a.run(*argv)
    assert rc == 0, messages(data)[-3000:]
    assert "takes it over" in messages(data)
    closed = next(r for r in rows(env) if r["id"] == row["id"])
    assert closed["status"] == "completed" and len(closed["takeovers"]) == 1, closed
    assert len(rows(env)) == row["id"], "no second row"
    here = where(hosts, "mss-k1")
    assert list(here.values()) == ["running"], here
    cloud = {"mcm-a1": "cloud_a", "mcm-a2": "cloud_a", "mcm-b1": "cloud_b"}
    assert cloud[next(iter(here))] == to
    assert not any(n.startswith(".tmp-") for n in state_host_run(
        hosts, "ls -A %s/migrations", env["state"]).stdout.split())  # fmt: skip
    rc, data = a.run("create_infra.yml")
    assert rc == 0 and changed(data) == 0, messages(data)[-3000:]


def test_ansible_playbook_killed_leaves_a_row_the_re_run_takes_over(env, hosts):
    """kill -9 of ansible-playbook on the controller right after it opened its row (its
    plays go on to the TLS check and the network): its heartbeat stops, the row stays
    running and readable, the lock is free, and the same command run again (from the other
    copy of the project) takes the row over and finishes the move."""
    a, b = env["a"], env["b"]
    to = "cloud_b" if where(hosts, "mss-k1").keys() <= {"mcm-a1", "mcm-a2"} else "cloud_a"
    argv = ("migrate_instance.yml", "-e", "instance=k1", "-e", f"to={to}", "-e", "mode=live-block")
    before = len(rows(env))
    proc = a.start(*argv)
    try:
        deadline = time.monotonic() + 120
        while len(rows(env)) == before:
            assert proc.poll() is None and time.monotonic() < deadline, "no row was opened"
            time.sleep(0.2)
        proc.kill()  # SIGKILL
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    row = rows(env)[-1]
    assert row["status"] == "running" and row["owner"]["pid"] == proc.pid, row
    assert lock_is_free(hosts, env)
    wait_until_owner_gone(hosts, env, row["id"])

    rc, data = b.run(*argv)
    assert rc == 0, messages(data)[-3000:]
    assert "takes it over" in messages(data)
    closed = next(r for r in rows(env) if r["id"] == row["id"])
    assert closed["status"] == "completed", closed
    assert closed["takeovers"][0]["from"]["pid"] == proc.pid
    assert len(rows(env)) == before + 1
    here = where(hosts, "mss-k1")
    cloud = {"mcm-a1": "cloud_a", "mcm-a2": "cloud_a", "mcm-b1": "cloud_b"}
    assert list(here.values()) == ["running"] and cloud[next(iter(here))] == to, here
    rc, data = b.run("create_infra.yml")
    assert rc == 0 and changed(data) == 0, messages(data)[-3000:]


# Every playbook that reads or writes the state, as an operator would start it.
NEEDS_STATE = [
    ("create_infra.yml",),
    ("migrate_instance.yml", "-e", "instance=k1", "-e", "to=cloud_b"),
    ("migrate_subnet.yml", "-e", "subnet=10.37.1.0/24", "-e", "to=cloud_b"),
    ("migrations.yml",),
    ("abort_migration.yml", "-e", "id=1"),
    ("confirm_migration.yml", "-e", "id=1"),
    ("revert_migration.yml", "-e", "id=1"),
    ("setup_migration_tls.yml",),
    ("gather_infra.yml", "-e", "gather_out=/tmp/mcm-gather-unreachable.yml"),
]


@pytest.mark.parametrize("argv", NEEDS_STATE, ids=[a[0].removesuffix(".yml") for a in NEEDS_STATE])
def test_with_the_state_host_unreachable_every_playbook_refuses_before_any_change(env, argv):
    rc, data = env["a"].run(*argv, "-e", "mcm_state_host=mcm-gone")
    assert rc != 0
    assert not Path("/tmp/mcm-gather-unreachable.yml").exists()
    text = messages(data)
    assert "the state host mcm-gone" in text and "Nothing was changed" in text, text[-3000:]
    assert all(s.get("changed", 0) == 0 for s in data["stats"].values()), data["stats"]


CA_SERIAL = (
    "from cryptography import x509; import sys; "
    "print(x509.load_pem_x509_certificate(open(sys.argv[1], 'rb').read()).serial_number)"
)
HOST_KEY = "/etc/pki/libvirt/private/serverkey.pem"


def ca_serial(hosts: dict) -> str:
    out = state_host_run(hosts, "python3 -c %s %s/ca-cert.pem", CA_SERIAL, LAB_PKI_DIR)
    assert out.rc == 0, out.stderr
    return out.stdout.strip()


def libvirtd_pids(hosts: dict) -> dict[str, str]:
    return {name: host.run("pidof libvirtd").stdout.strip() for name, host in hosts.items()}


def test_a_fresh_copy_migrates_with_the_same_ca_and_no_host_key_leaves_its_host(
    env, hosts, tmp_path
):
    """A third copy of the project, as a new AWX job has it (no state, no CA on its disk):
    its migration uses the CA on the state host (same serial), reissues nothing and
    restarts no libvirtd (same PIDs). Each host's private key exists on that host only:
    on no other host, in no copy of the project, and the state host keeps the CA's key
    alone in its PKI directory."""
    fresh = Clone(copy_checkout(tmp_path / "fresh"), env["a"].extra)
    serial, pids = ca_serial(hosts), libvirtd_pids(hosts)
    assert all(pids.values()), pids
    to = "cloud_b" if where(hosts, "mss-k1").keys() <= {"mcm-a1", "mcm-a2"} else "cloud_a"
    rc, data = fresh.run("migrate_instance.yml", "-e", "instance=k1", "-e", f"to={to}",
                         "-e", "mode=live-block")  # fmt: skip
    assert rc == 0, messages(data)[-3000:]
    assert ca_serial(hosts) == serial, "a fresh copy minted a new CA"
    assert libvirtd_pids(hosts) == pids, "a valid host's libvirtd was restarted"
    assert not (fresh.path / "state").exists()

    pki = state_host_run(hosts, "ls -A %s", LAB_PKI_DIR).stdout.split()
    assert [n for n in pki if "key" in n] == ["ca-key.pem"], pki
    assert state_host_run(hosts, "stat -c %%a %s/ca-key.pem", LAB_PKI_DIR).stdout.strip() == "600"
    bodies = {}
    for name, host in hosts.items():
        pem = host.file(HOST_KEY).content_string.splitlines()
        assert "PRIVATE KEY" in pem[0], f"{name}: {pem[:1]}"
        bodies[name] = pem[1]  # the first line of the key's base64 body
    assert len(set(bodies.values())) == len(bodies), "two hosts share a key"
    for name, body in bodies.items():
        for other, host in hosts.items():
            if other != name:
                found = host.run("grep -rlF -- %s /etc /var/lib/mcm /root /tmp", body).stdout
                assert not found.strip(), f"{name}'s key found on {other}: {found}"
        for where_ in (ROOT, env["a"].path, env["b"].path, fresh.path):
            found = subprocess.run(["grep", "-rlF", "--exclude-dir=.venv", "--exclude-dir=.git",
                                    "--", body, str(where_)], capture_output=True, text=True,
                                   check=False).stdout  # fmt: skip
            assert not found.strip(), f"{name}'s key found on the controller: {found}"
