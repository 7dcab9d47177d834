"""Cold migration through the playbooks with confirm and revert, and the abort of a running
live migration, on the lab (ledger and placement record in a temporary state directory).

Tenant mcd: net 10.36.1.0/24 on cloud_a with c1 (10.36.1.10), moved cold, and x1
(10.36.1.11), whose live migration gets aborted, both on mcm-a1. The module fixture
creates the tenant with create_infra.yml and removes it with delete_infra.yml, also
after a failure.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from conftest import BIN, ROOT, console, lab_env
from migration_lab import changed, ledger, messages, placement, playbook, tenant_env, where

pytestmark = pytest.mark.lab

TENANT = "mcd"
SPEC = {
    "tenants": [
        {
            "name": TENANT,
            "networks": [
                {
                    "name": "net",
                    "cloud": "cloud_a",
                    "subnet": "10.36.1.0/24",
                    "vms": [
                        {"name": "c1", "vcpus": 1, "memory": "128MiB", "disk": "64MiB",
                         "ip": "10.36.1.10", "host": "mcm-a1"},
                        {"name": "x1", "vcpus": 1, "memory": "128MiB", "disk": "64MiB",
                         "ip": "10.36.1.11", "host": "mcm-a1"},
                    ],
                },
            ],
        }
    ]
}  # fmt: skip
COLD, COLD_IP = "mcd-c1", "10.36.1.10"
ABORT = "mcd-x1"
DHCP_NS = "qdhcp-mcd.net"


@pytest.fixture(scope="module")
def env(hosts, tmp_path_factory):
    try:
        with tenant_env(tmp_path_factory.mktemp("mcd"), SPEC, TENANT, hosts) as env:
            yield env
    finally:
        for name in ("mcm-a1", "mcm-a2", "mcm-b1"):
            left = hosts[name].run("ls /var/lib/mcm/vms").stdout
            assert "mcd-" not in left, f"{name} keeps {left}"


def volumes(hosts, domain: str) -> list[str]:
    return [
        n for n, h in hosts.items() if h.run("test -e /var/lib/mcm/vms/%s.qcow2", domain).rc == 0
    ]


def answers(hosts, ip: str) -> bool:
    return hosts["mcm-a1"].run("ip netns exec %s ping -c 3 -i 0.3 -W 1 %s", DHCP_NS, ip).rc == 0


def read_marker(host: str) -> str:
    [out] = console(host, COLD, "cat /mnt/disk/marker")
    return out["out"]


def test_cold_then_revert_then_cold_then_confirm(env, hosts):
    """The whole cold cycle on one VM: cold, refusals while the row is open, revert --check,
    revert (twice), cold again, confirm (twice), create_infra. Over 60 s (about 100 s):
    fourteen playbook runs, two cold moves and a revert, each booting the guest again."""
    [out] = console("mcm-a1", COLD, f"echo {COLD}-marker > /mnt/disk/marker && sync")
    assert out["rc"] == 0, out
    mac = hosts["mcm-a1"].run("virsh domiflist %s", COLD).stdout.split()[-1]

    # cold: shut off on a1, copied with a checksum, started on b1; the row awaits a decision
    rc, data = playbook(env, "migrate_instance.yml", "-e", "instance=c1", "-e", "to=cloud_b",
                        "-e", "mode=cold", "-e", "shutdown_timeout=5")  # fmt: skip
    assert rc == 0, messages(data)[-3000:]
    assert where(hosts, COLD) == {"mcm-a1": "shut off", "mcm-b1": "running"}
    [row] = ledger(env)
    assert row["status"] == "finished" and row["mode"] == "cold", row
    [result] = row["results"]
    assert result["mode"] == "cold" and result["status"] == "moved"
    [disk] = result["checksum"]
    assert disk["source"] == disk["destination"] and disk["algorithm"] == "sha256-1mib-blocks", disk
    assert row["bytes"] > 0 and row["started"] and row["ended"]
    assert hosts["mcm-b1"].run("virsh domiflist %s", COLD).stdout.split()[-1] == mac
    assert answers(hosts, COLD_IP)
    assert read_marker("mcm-b1") == f"{COLD}-marker"
    assert placement(env)["vms"] == {f"{TENANT}/c1": "mcm-b1"}

    # create_infra and another migration of the tenant are refused until it is closed
    rc, data = playbook(env, "create_infra.yml")
    assert rc != 0 and "revert_migration.yml" in messages(data)
    rc, data = playbook(env, "migrate_instance.yml", "-e", "instance=x1", "-e", "to=cloud_b")
    assert rc != 0 and "confirm_migration.yml" in messages(data)

    # --check shows the revert and changes nothing
    rc, data = playbook(env, "revert_migration.yml", "-e", f"id={row['id']}", "--check")
    assert rc == 0 and "start the source copy on mcm-a1" in messages(data)
    assert where(hosts, COLD) == {"mcm-a1": "shut off", "mcm-b1": "running"}

    # revert: b1's copy gone, a1's copy running again with its IP, placement as before
    rc, data = playbook(env, "revert_migration.yml", "-e", f"id={row['id']}")
    assert rc == 0, messages(data)[-3000:]
    assert where(hosts, COLD) == {"mcm-a1": "running"}
    assert volumes(hosts, COLD) == ["mcm-a1"]
    assert ledger(env)[0]["status"] == "reverted"
    assert f"{TENANT}/c1" not in (placement(env).get("vms") or {})
    assert answers(hosts, COLD_IP)
    assert read_marker("mcm-a1") == f"{COLD}-marker"
    rc, data = playbook(env, "revert_migration.yml", "-e", f"id={row['id']}")
    assert rc == 0 and changed(data) == 0, "a second revert changes nothing"
    rc, data = playbook(env, "confirm_migration.yml", "-e", f"id={row['id']}")
    assert rc != 0 and "is reverted" in messages(data)

    # cold again, then confirm: a1's shut-off copy and its disk are deleted
    rc, data = playbook(env, "migrate_instance.yml", "-e", "instance=c1", "-e", "to=cloud_b",
                        "-e", "mode=cold", "-e", "shutdown_timeout=5")  # fmt: skip
    assert rc == 0, messages(data)[-3000:]
    second = ledger(env)[-1]
    assert second["status"] == "finished"
    rc, data = playbook(env, "confirm_migration.yml", "-e", f"id={second['id']}")
    assert rc == 0, messages(data)[-3000:]
    assert where(hosts, COLD) == {"mcm-b1": "running"}
    assert volumes(hosts, COLD) == ["mcm-b1"]
    assert ledger(env)[-1]["status"] == "confirmed"
    assert answers(hosts, COLD_IP)
    assert read_marker("mcm-b1") == f"{COLD}-marker"
    rc, data = playbook(env, "confirm_migration.yml", "-e", f"id={second['id']}")
    assert rc == 0 and changed(data) == 0, "a second confirm changes nothing"
    rc, data = playbook(env, "create_infra.yml")
    assert rc == 0 and changed(data) == 0, messages(data)[-3000:]
    assert where(hosts, COLD) == {"mcm-b1": "running"}


def test_abort_of_a_running_live_migration(env, hosts):
    # 40 MiB of random data in the guest's memory at 2 MiB/s cannot finish before the abort
    [out] = console("mcm-a1", ABORT, "head -c 41943040 /dev/urandom > /dev/shm/fill; echo ok",
                    timeout=240)  # fmt: skip
    assert out["rc"] == 0, out
    before = len(ledger(env))
    argv = [str(BIN / "ansible-playbook"), "playbooks/migrate_instance.yml", *env["extra"],
            "-e", "instance=x1", "-e", "to=cloud_b", "-e", "mode=live-block",
            "-e", "bandwidth_mib=2", "-e", "timeout=400"]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=ROOT, env=lab_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        row = None
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            rows = ledger(env)
            if len(rows) > before and hosts["mcm-a1"].run(
                "virsh domjobinfo %s | grep -q Unbounded", ABORT
            ).rc == 0:  # fmt: skip
                row = rows[-1]
                break
            time.sleep(2)
        assert row is not None, f"the migration job never ran: {proc.poll()}"
        rc, data = playbook(env, "abort_migration.yml", "-e", f"id={row['id']}")
        assert rc == 0, messages(data)[-3000:]
        assert "aborted the migration job of mcd/x1" in messages(data)
        out, _err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode != 0, out[-3000:]
    assert ledger(env)[-1]["status"] == "aborted", ledger(env)[-1]
    assert where(hosts, ABORT) == {"mcm-a1": "running"}
    assert "mcm-b1" not in volumes(hosts, ABORT)
    assert hosts["mcm-a1"].run("ip netns exec %s ping -c 3 -i 0.3 -W 1 10.36.1.11", DHCP_NS).rc == 0
    rc, data = playbook(env, "abort_migration.yml", "-e", f"id={row['id']}")
    assert rc != 0 and "is aborted, not running" in messages(data)
