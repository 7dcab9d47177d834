#!/usr/bin/env python
"""Cost of encrypted migrations (issue 5): vm_migrate with encryption=tls against none.

Two lab guests (128 MiB, TCG) on mcm-a1: ``mgbench-s`` with its disk in the shared
directory (mode live) and ``mgbench-l`` with a local 64 MiB overlay (mode live-block). Each
round migrates each of them mcm-a1 -> mcm-b1 -> mcm-a1, first with TLS, then without
(live-block's disk left on the source is deleted before the way back, as a confirm would).
From every result: libvirt's downtime and elapsed time, the bytes sent, the module's wall
time. Needs the lab and playbooks/setup_migration_tls.yml (run first here).

    .venv/bin/python bench/migration_encryption.py [--rounds 3]

Everything is removed again, on failure too. Results: bench/results/migration_encryption.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from benchlib import guest_boot, libvirt_cleanup

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
SRC, DST = "mcm-a1", "mcm-b1"
ADDRESS = {SRC: "172.30.0.11", DST: "172.30.0.21"}
BRIDGE = "mgbench-br"
IMAGES = "/var/lib/mcm/images"
CONSOLE = "/var/lib/mcm/console"
SHARED_DISK = "/var/lib/mcm/shared/mgbench-s.qcow2"
VMS = {"live": "mgbench-s", "live-block": "mgbench-l"}
ENV = {
    **os.environ,
    "CONTAINERS_CONF": str(REPO / "lab" / "containers.conf"),
    "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
    "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
    "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
    "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
}
CLEANUP = libvirt_cleanup("mgbench-")


def on_host(host: str, script: str) -> None:
    subprocess.run(["podman", "exec", host, "sh", "-c", script], env=ENV, check=True,
                   capture_output=True, timeout=120)  # fmt: skip


def cleanup() -> None:
    for host in (SRC, DST):
        subprocess.run(["podman", "exec", host, "python3", "-c", CLEANUP], env=ENV,
                       check=False, capture_output=True, timeout=120)  # fmt: skip
        on_host(host, f"rm -f {CONSOLE}/mgbench-* {SHARED_DISK}; ip link del {BRIDGE} || true")


def guest(name: str, **overrides: object) -> dict:
    vm = {
        "name": name, "memory_mib": 128, "vcpus": 1, "bridge": BRIDGE, "disk_mib": 64,
        "image": f"{IMAGES}/disk.qcow2",
        "boot": guest_boot(),
        "console_log": f"{CONSOLE}/{name}.log",
        "metadata": {"tenant": "mgbench", "network": "net", "vm": name},
    }  # fmt: skip
    vm.update(overrides)
    return vm


def migrate_task(mode: str, src: str, dst: str, encryption: str, label: str) -> dict:
    return {
        "name": label,
        "multicloud.migration.vm_migrate": {
            "name": VMS[mode], "destination": dst, "destination_address": ADDRESS[dst],
            "mode": mode, "encryption": encryption,
        },
        "delegate_to": src,
    }  # fmt: skip


def confirm_task(host: str) -> dict:
    return {
        "name": f"confirm: delete the disk left on {host}",
        "multicloud.migration.vm_volume": {
            "state": "deleted", "config": [{"name": f"{VMS['live-block']}.qcow2"}]},
        "delegate_to": host,
    }  # fmt: skip


def plays(rounds: int) -> tuple[list[dict], list[tuple[str, str, str]]]:
    tasks: list[dict] = [
        {"name": "guests", "multicloud.migration.vm": {"config": [
            guest(VMS["live"], disk=SHARED_DISK, image=None), guest(VMS["live-block"])]}},
        {"name": "let the guests finish booting", "ansible.builtin.wait_for": {"timeout": 30},
         "delegate_to": "localhost"},
    ]  # fmt: skip
    labels = []
    for r in range(rounds):
        for encryption in ("tls", "none"):
            for mode in ("live", "live-block"):
                for src, dst in ((SRC, DST), (DST, SRC)):
                    label = f"{mode} {encryption} {src}->{dst} #{r}"
                    tasks.append(migrate_task(mode, src, dst, encryption, label))
                    labels.append((label, mode, encryption))
                    if mode == "live-block":
                        tasks.append(confirm_task(src))
    return [{"hosts": SRC, "gather_facts": False, "tasks": tasks}], labels


def spread(row: dict, field: str) -> str:
    r = row[field]
    return f"{r['median']:.0f} ({r['min']:.0f}-{r['max']:.0f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tls = subprocess.run([str(VENV_BIN / "ansible-playbook"), "playbooks/setup_migration_tls.yml"],
                         cwd=REPO, env={**ENV, "ANSIBLE_STDOUT_CALLBACK": "default"},
                         capture_output=True, text=True, check=False, timeout=600)  # fmt: skip
    if tls.returncode:
        print(tls.stdout[-3000:], file=sys.stderr)
        return 1
    cleanup()
    try:
        for host in (SRC, DST):
            on_host(host, f"ip link add {BRIDGE} type bridge && ip link set {BRIDGE} up && "
                          f"mkdir -p {CONSOLE}")  # fmt: skip
        on_host(SRC, f"qemu-img create -q -f qcow2 -F qcow2 -b {IMAGES}/disk.qcow2 "
                     f"{SHARED_DISK} 64M")  # fmt: skip
        play, labels = plays(args.rounds)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "bench.yml"
            path.write_text(yaml.safe_dump(play, sort_keys=False))
            started = time.monotonic()
            proc = subprocess.run([str(VENV_BIN / "ansible-playbook"), str(path)], cwd=REPO,
                                  env=ENV, capture_output=True, text=True, check=False,
                                  timeout=1800)  # fmt: skip
        try:
            data = json.loads(proc.stdout)
        except json.JSONDecodeError:
            print(proc.stdout[-2000:], proc.stderr[-3000:], file=sys.stderr)
            return 1
        results = {t["task"]["name"]: next(iter(t["hosts"].values()))
                   for t in data["plays"][0]["tasks"]}  # fmt: skip
        failed = {k: v.get("msg") for k, v in results.items() if v.get("failed")}
        if proc.returncode or failed:
            print(json.dumps(failed, indent=1) or proc.stderr[-3000:], file=sys.stderr)
            return 1
    finally:
        cleanup()
    runs: dict[str, list[dict]] = {}
    for label, mode, encryption in labels:
        res = results[label]
        assert res["encryption"] == encryption and res["mode"] == mode, res
        stats = res["stats"]
        runs.setdefault(f"{mode} {encryption}", []).append({
            "downtime_ms": stats["downtime_ms"], "elapsed_ms": stats["elapsed_ms"],
            "wall_ms": stats["wall_ms"], "bytes": stats["bytes"],
        })  # fmt: skip
    summary = {}
    print(f"{'mode':<18}{'runs':>5}{'downtime ms':>22}{'libvirt elapsed ms':>24}"
          f"{'module wall ms':>22}{'MB sent':>9}")  # fmt: skip
    for key, items in runs.items():
        row = {}
        for field in ("downtime_ms", "elapsed_ms", "wall_ms", "bytes"):
            values = [i[field] for i in items if i[field] is not None]
            row[field] = {"median": statistics.median(values), "min": min(values),
                          "max": max(values)}  # fmt: skip
        summary[key] = row
        print(f"{key:<18}{len(items):>5}{spread(row, 'downtime_ms'):>22}"
              f"{spread(row, 'elapsed_ms'):>24}{spread(row, 'wall_ms'):>22}"
              f"{row['bytes']['median'] / 1e6:>9.1f}")  # fmt: skip
    out = REPO / "bench" / "results" / "migration_encryption.json"
    out.write_text(json.dumps({"rounds": args.rounds, "wall_s": round(time.monotonic() - started),
                               "summary": summary, "runs": runs}, indent=1) + "\n")  # fmt: skip
    print(f"results: {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
