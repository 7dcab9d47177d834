#!/usr/bin/env python
"""Subnet migration of 4 VMs (issue 8): migrate_subnet.yml against 4 migrate_instance.yml.

Tenant ``bnsub``: network app 10.120.2.0/24 on cloud_a with s1..s4 (128 MiB, 64 MiB local
disk, 10.120.2.11-14), s1 and s2 on mcm-a1, s3 and s4 on mcm-a2 (a placement record
written before create_infra.yml, as test_subnet_migration_loss_lab.py does). Each side
starts from a fresh ``create_infra.yml`` of that spec (own state directory, not timed):

- ours: ``migrate_subnet.yml -e subnet=10.120.2.0/24 -e to=cloud_b`` (mode auto: live-block,
  default parallelism), which also moves DHCP (with its leases) and the gateway;
- baseline: the same VMs moved one by one, ``migrate_instance.yml -e instance=sN
  -e to=cloud_b`` four times; its figure is the sum of the four runs.

Same end state (checked after each side): the four domains run on mcm-b1 with their MACs,
nothing of them is left on cloud_a, and each answers a ping from the network's DHCP
namespace (on mcm-b1 after ours; still on mcm-a1 after the singles, which do not move the
network - the one difference, and the point of a subnet migration). The ledger's
per-VM figures (libvirt time, downtime) are kept.

    .venv/bin/python bench/subnet_migration.py [--runs 1]

Everything is removed again, on failure too (delete_infra.yml -e tenant=bnsub, the
temporary state). Result: bench/results/subnet_migration.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from benchlib import (
    RESULTS,
    BenchError,
    checked_playbook,
    delete_tenant,
    domains_on,
    load,
    machine,
    retried_playbook,
    sh,
    spread,
    summary,
    with_retries,
    write_result,
)

TENANT, NETWORK, SUBNET = "bnsub", "app", "10.120.2.0/24"
VMS = {"s1": ("10.120.2.11", "mcm-a1"), "s2": ("10.120.2.12", "mcm-a1"),
       "s3": ("10.120.2.13", "mcm-a2"), "s4": ("10.120.2.14", "mcm-a2")}  # fmt: skip
HOSTS = ("mcm-a1", "mcm-a2", "mcm-b1")
DHCP_NS = f"qdhcp-{TENANT}.{NETWORK}"
SPEC = {
    "tenants": [{
        "name": TENANT,
        "networks": [{
            "name": NETWORK, "cloud": "cloud_a", "subnet": SUBNET,
            "vms": [{"name": vm, "vcpus": 1, "memory": "128MiB", "disk": "64MiB", "ip": ip}
                    for vm, (ip, _host) in VMS.items()],
        }],
    }]
}  # fmt: skip


def _sigterm(_signum: int, _frame: object) -> None:
    raise SystemExit("terminated")


def macs(host: str) -> dict[str, str]:
    out = {}
    for vm in VMS:
        lines = sh(host, f"virsh domiflist {TENANT}-{vm} 2>/dev/null | tail -n +3", check=False)
        fields = lines.split()
        if fields:
            out[vm] = fields[-1]
    return out


def answers(host: str, ip: str, attempts: int = 10) -> bool:
    for _attempt in range(attempts):  # bounded: the segment's FDB may still settle
        out = sh(host, f"ip netns exec {DHCP_NS} ping -n -c 2 -i 0.3 -W 1 {ip} >/dev/null "
                       "&& echo yes || echo no", check=False)  # fmt: skip
        if out.strip() == "yes":
            return True
        time.sleep(1)
    return False


class Side:
    """One side of a run: a fresh tenant in its own state directory."""

    def __init__(self, tmp: Path, name: str) -> None:
        self.state = tmp / f"state-{name}"
        spec = tmp / "spec.yml"
        spec.write_text(yaml.safe_dump(SPEC, sort_keys=False))
        self.extra = [
            "-e",
            f"spec_file={spec}",
            "-e",
            "mcm_state_host=localhost",
            "-e",
            f"mcm_state_dir={self.state}",
        ]

    def create(self) -> dict[str, str]:
        # The hosts through a placement record (as a migration leaves it), not the spec's
        # `host`, which would pin the VMs to cloud_a.
        shutil.rmtree(self.state, ignore_errors=True)
        self.state.mkdir(parents=True)
        pins = {f"{TENANT}/{vm}": host for vm, (_ip, host) in VMS.items()}
        (self.state / "placement.yml").write_text(yaml.safe_dump({"networks": {}, "vms": pins}))
        retried_playbook("playbooks/create_infra.yml", *self.extra, hosts=HOSTS, timeout=900)
        where = domains_on(HOSTS, f"{TENANT}-")
        for vm, (_ip, host) in VMS.items():
            if where[host].get(f"{TENANT}-{vm}") != "running":
                raise BenchError(f"{vm} does not run on {host} after create_infra: {where}")
        found = {}
        for host in ("mcm-a1", "mcm-a2"):
            found.update(macs(host))
        return found

    def ledger(self) -> list[dict[str, Any]]:
        rows = sorted((self.state / "migrations").glob("*.json"), key=lambda p: int(p.stem))
        return [json.loads(p.read_text()) for p in rows]

    def end_state(self, before: dict[str, str]) -> dict[str, Any]:
        where = domains_on(HOSTS, f"{TENANT}-")
        dhcp_host = next((h for h in HOSTS if DHCP_NS in sh(h, "ip netns list")), None)
        state = {
            "all_running_on_mcm-b1": all(where["mcm-b1"].get(f"{TENANT}-{vm}") == "running"
                                         for vm in VMS),
            "none_left_on_cloud_a": not where["mcm-a1"] and not where["mcm-a2"],
            "same_macs": macs("mcm-b1") == before,
            "dhcp_namespace_on": dhcp_host,
            "all_answer": bool(dhcp_host) and all(answers(dhcp_host, ip)
                                                  for ip, _h in VMS.values()),
        }  # fmt: skip
        bad = {k: v for k, v in state.items() if v is False or v is None}
        if bad:
            raise BenchError(f"end state differs: {bad} ({where})")
        return state


def per_vm(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the ledger says of each VM moved (mode, libvirt time, downtime, bytes)."""
    out = []
    for row in rows:
        for res in row.get("results") or []:
            out.append({k: res.get(k) for k in ("vm", "name", "mode", "status", "downtime_ms",
                                                "elapsed_ms", "wall_ms", "bytes")})  # fmt: skip
    return out


def run_ours(tmp: Path) -> dict[str, Any]:
    try:
        return _run_ours(tmp)
    except BenchError:
        delete_tenant(TENANT)  # the next attempt starts from scratch
        raise


def run_singles(tmp: Path) -> dict[str, Any]:
    try:
        return _run_singles(tmp)
    except BenchError:
        delete_tenant(TENANT)
        raise


def _run_ours(tmp: Path) -> dict[str, Any]:
    side = Side(tmp, "ours")
    before = side.create()
    load_before = load()
    print("ours: migrate_subnet.yml ...", flush=True)
    secs, _data = checked_playbook("playbooks/migrate_subnet.yml", *side.extra,
                                   "-e", f"subnet={SUBNET}", "-e", "to=cloud_b",
                                   timeout=1800)  # fmt: skip
    end = side.end_state(before)
    rows = side.ledger()
    delete_tenant(TENANT)
    return {"s": round(secs, 2), "load": load_before, "end_state": end,
            "ledger_status": [r.get("status") for r in rows], "vms": per_vm(rows)}  # fmt: skip


def _run_singles(tmp: Path) -> dict[str, Any]:
    side = Side(tmp, "singles")
    before = side.create()
    load_before = load()
    each = {}
    for vm in VMS:
        print(f"baseline: migrate_instance.yml -e instance={vm} ...", flush=True)
        secs, _data = checked_playbook("playbooks/migrate_instance.yml", *side.extra,
                                       "-e", f"instance={vm}", "-e", "to=cloud_b",
                                       timeout=1800)  # fmt: skip
        each[vm] = round(secs, 2)
    end = side.end_state(before)
    rows = side.ledger()
    delete_tenant(TENANT)
    return {"s": round(sum(each.values()), 2), "each_s": each, "load": load_before,
            "end_state": end, "ledger_status": [r.get("status") for r in rows],
            "vms": per_vm(rows)}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "subnet_migration.json"))
    args = ap.parse_args()
    if not 1 <= args.runs <= 5:
        ap.error("--runs must be within 1..5")
    signal.signal(signal.SIGTERM, _sigterm)
    started, load_start = time.monotonic(), load()
    tmp = Path(tempfile.mkdtemp(prefix="bn-sub-"))
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    try:
        checked_playbook("playbooks/setup_migration_tls.yml", timeout=900)
        for r in range(args.runs):
            first, second = (run_ours, run_singles) if r % 2 == 0 else (run_singles, run_ours)
            a = with_retries(lambda f=first: f(tmp), first.__name__, HOSTS, errors=errors)
            b = with_retries(lambda f=second: f(tmp), second.__name__, HOSTS, errors=errors)
            ours, singles = (a, b) if first is run_ours else (b, a)
            rows.append({"round": r, "ours": ours, "singles": singles})
            print(f"run {r}: migrate_subnet.yml {ours['s']:.1f} s (load "
                  f"{ours['load']['load1']}) vs 4 x migrate_instance.yml {singles['s']:.1f} s "
                  f"{singles['each_s']} (load {singles['load']['load1']})", flush=True)  # fmt: skip
    finally:
        delete_tenant(TENANT)
        shutil.rmtree(tmp, ignore_errors=True)
    s = {"ours": summary(r["ours"]["s"] for r in rows),
         "singles_sum": summary(r["singles"]["s"] for r in rows)}  # fmt: skip
    ratio = s["singles_sum"]["median"] / s["ours"]["median"]
    print(f"\nmigrate_subnet.yml (4 VMs): {spread(s['ours'], '{:.1f}')} s; "
          f"sum of 4 migrate_instance.yml: {spread(s['singles_sum'], '{:.1f}')} s; "
          f"subnet is {ratio:.1f}x faster")  # fmt: skip
    write_result(Path(args.out), {
        "benchmark": "subnet migration of 4 VMs", "machine": machine(),
        "load_start": load_start, "load_end": load(), "wall_s": round(time.monotonic() - started),
        "summary": s, "speedup": round(ratio, 2), "retried_errors": errors, "runs": rows,
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
