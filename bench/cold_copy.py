#!/usr/bin/env python
"""Cold migration copy (issue 8): vm_migrate mode=cold against scp and cp --sparse=always.

The disk: a raw 4 GiB volume ``/var/lib/mcm/vms/bncold-c1.img`` in the ``mcm`` pool of
mcm-a1 holding 200 MiB of random data (20 extents of 10 MiB spread over the 4 GiB, the
rest holes), attached to the shut-off domain ``bncold-c1`` (defined by the collection's
vm module). It moves from mcm-a1 (cloud_a) to mcm-b1 (cloud_b) over the lab's WAN:

- ours: one ``multicloud.migration.vm_migrate`` task, mode cold, its defaults (TLS): the
  volume is streamed sparse-aware with a checksum on both sides (sha256-1mib-blocks: the
  sha256 of each 1 MiB block's sha256; the destination's copy is read back and hashed),
  then the domain is defined on mcm-b1; figures: the module's wall time
  (``stats.wall_ms``: copy, checksums and define) and its copy time;
- scp: ``scp`` of the same file from mcm-a1 to an sshd the benchmark starts on mcm-b1
  (port 2222, its own host key and authorized key, stopped afterwards), timed on mcm-a1;
  also shown with a sha256 (Python's hashlib, like the module) of both ends afterwards
  (what our checksum does);
- bound: ``cp --sparse=always`` of the same file on mcm-a1 into the lab's shared directory
  (which mcm-b1 sees): what moving the data costs on this machine without a network.

Same end state: the sha256 of every copy equals the source's, and the checksum ours
reports equals the sha256-1mib-blocks of the source computed here. The apparent size and
the allocation of each copy are recorded.

Set-up (not timed): setup_migration_tls.yml (with the default TLS encryption), the volume
through the collection's vm_volume module (which makes the pool ``mcm`` on a fresh lab).

    .venv/bin/python bench/cold_copy.py [--runs 3]

Everything is removed again, on failure too (the domains and volumes ``bncold-*``, the
sshd, keys and copies). Result: bench/results/cold_copy.json.
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

from benchlib import (
    RESULTS,
    WAN,
    BenchError,
    checked_playbook,
    guest_boot,
    libvirt_cleanup,
    load,
    machine,
    playbook,
    py,
    sh,
    spread,
    summary,
    task_results,
    with_retries,
    write_play,
    write_result,
)

SRC, DST = "mcm-a1", "mcm-b1"
DOMAIN = "bncold-c1"
DISK = f"/var/lib/mcm/vms/{DOMAIN}.img"
BRIDGE = "bncold-br"
WORK = "/var/lib/mcm/bn-cold"  # on mcm-b1: sshd's files and the scp copy
SHARED = "/var/lib/mcm/shared/bn-cold"  # cp's copy (the lab's shared directory)
KEY = "/tmp/bn-cold-key"  # on mcm-a1
SSH_PORT = 2222
SIZE_GIB, EXTENTS, EXTENT_MIB = 4, 20, 10
TARGET_VS_SCP, TARGET_VS_BOUND = 5.0, 2.0
# A command timed inside a host (no podman exec in the figure).
TIMED = r"""
import json, subprocess, sys, time
t = time.monotonic()
p = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=900)
print(json.dumps({"rc": p.returncode, "s": round(time.monotonic() - t, 3),
                  "out": (p.stdout + p.stderr)[-2000:]}))
"""
# sha256 of a file read in full (holes as zeros), timed, with its size and allocation; and
# the module's checksum of it (sha256-1mib-blocks: sha256 of each 1 MiB block's sha256).
FACTS = r"""
import hashlib, json, os, sys, time
path = sys.argv[1]
t = time.monotonic()
digest, blocks = hashlib.sha256(), hashlib.sha256()
with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
        blocks.update(hashlib.sha256(block).digest())
st = os.stat(path)
print(json.dumps({"sha256": digest.hexdigest(), "sha256_s": round(time.monotonic() - t, 3),
                  "blocks": blocks.hexdigest(),
                  "size": st.st_size, "allocated": st.st_blocks * 512}))
"""
# The domains and volumes bncold-* on a host: removed.
CLEANUP = libvirt_cleanup("bncold-")


def _sigterm(_signum: int, _frame: object) -> None:
    raise SystemExit("terminated")


def timed(host: str, *argv: str) -> float:
    out = json.loads(py(host, TIMED, *argv, timeout=1000).strip().splitlines()[-1])
    if out["rc"] != 0:
        raise BenchError(f"{host}: {' '.join(argv[:3])}... failed: {out['out']}")
    return out["s"]


def file_facts(host: str, path: str) -> dict[str, Any]:
    """sha256 (hashlib, as the module hashes; and how long it took), apparent size and
    allocated bytes of a file."""
    out = json.loads(py(host, FACTS, path, timeout=900).strip().splitlines()[-1])
    return out


def cleanup() -> None:
    for host in (SRC, DST):
        py(host, CLEANUP, check=False)
        sh(host, f"ip link del {BRIDGE}; rm -f {DISK}; true", check=False)
    sh(DST, f"test -s {WORK}/sshd.pid && kill $(cat {WORK}/sshd.pid); rm -rf {WORK}; true",
       check=False)  # fmt: skip
    sh(SRC, f"rm -rf {KEY} {KEY}.pub {SHARED}; true", check=False)


def run_play(name: str, tasks: list[dict[str, Any]]) -> None:
    with tempfile.TemporaryDirectory(prefix="bn-cold-") as tmp:
        checked_playbook(write_play(Path(tmp) / "play.yml", SRC, name, tasks), timeout=300)


def make_disk() -> None:
    """The sparse raw disk with its data extents, and a shut-off domain using it."""
    # the volume through the collection's module: it also makes the pool "mcm" on a lab
    # where no create_infra.yml has run yet
    volume = {"name": Path(DISK).name, "pool": "mcm", "pool_path": str(Path(DISK).parent),
              "capacity_mib": SIZE_GIB * 1024, "format": "raw"}  # fmt: skip
    task = {"name": "bn volume", "multicloud.migration.vm_volume": {"config": [volume]}}
    run_play("bn cold volume", [task])
    step = SIZE_GIB * 1024 // EXTENTS
    writes = " && ".join(
        f"dd if=/dev/urandom of={DISK} bs=1M count={EXTENT_MIB} seek={i * step} "
        "conv=notrunc status=none"
        for i in range(EXTENTS)
    )
    sh(SRC, f"{writes} && virsh -q pool-refresh mcm", timeout=300)
    for host in (SRC, DST):
        sh(host, f"ip link add {BRIDGE} type bridge && ip link set {BRIDGE} up")
    vm = {"name": DOMAIN, "state": "shutoff", "memory_mib": 128, "vcpus": 1, "bridge": BRIDGE,
          "disk": DISK, "disk_format": "raw",
          "boot": guest_boot(),
          "metadata": {"tenant": "bncold", "network": "net", "vm": "c1"}}  # fmt: skip
    run_play("bn cold guest", [{"name": "bn define", "multicloud.migration.vm": {"config": [vm]}}])


def start_sshd() -> None:
    """An sshd of the benchmark's own on mcm-b1 (WAN address, port 2222), key auth only."""
    config = "\n".join([
        f"ListenAddress {WAN[DST]}", f"Port {SSH_PORT}", f"HostKey {WORK}/hostkey",
        f"PidFile {WORK}/sshd.pid", f"AuthorizedKeysFile {WORK}/authorized_keys",
        "PermitRootLogin prohibit-password", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
        "Subsystem sftp internal-sftp", "",
    ])  # fmt: skip
    sh(SRC, f"rm -f {KEY} {KEY}.pub && ssh-keygen -q -t ed25519 -N '' -f {KEY}")
    pub = sh(SRC, f"cat {KEY}.pub").strip()
    sh(DST, f"test -x /usr/sbin/sshd || {{ echo 'no sshd: install openssh-server "
            f"(lab/node/packages.txt)'; exit 1; }}; mkdir -p -m 700 {WORK} /run/sshd && "
            f"ssh-keygen -q -t ed25519 -N '' -f {WORK}/hostkey && "
            f"echo '{pub}' > {WORK}/authorized_keys && "
            f"printf '%s' '{config}' > {WORK}/sshd_config && "
            f"/usr/sbin/sshd -f {WORK}/sshd_config")  # fmt: skip
    for _attempt in range(20):
        if sh(DST, f"test -s {WORK}/sshd.pid && echo up", check=False).strip() == "up":
            return
        time.sleep(0.25)
    raise BenchError("the benchmark's sshd on mcm-b1 did not start")


def ours(tmp: Path, encryption: str) -> dict[str, Any]:
    args = {"name": DOMAIN, "destination": DST, "destination_address": WAN[DST],
            "mode": "cold", "encryption": encryption}  # fmt: skip
    task = {"name": "bn migrate", "multicloud.migration.vm_migrate": args}
    path = write_play(tmp / "ours.yml", SRC, "bn cold", [task])
    secs, rc, data = playbook(path, timeout=900)
    [res] = task_results(data, "bn migrate")
    if rc != 0 or res.get("failed"):
        raise BenchError(f"vm_migrate cold failed: {res.get('msg')}")
    stats, [check] = res["stats"], res["checksum"]
    if not check["match"]:
        raise BenchError(f"ours: checksum mismatch {check}")
    return {"s": stats["wall_ms"] / 1000, "copy_s": stats["copy_ms"] / 1000,
            "playbook_s": round(secs, 2), "data_bytes": stats["bytes"],
            "hole_bytes": stats["disk_hole_bytes"], "sparse": check["sparse"],
            "reported_sha256": check["source"], "destination_state": res["destination_state"],
            "encryption": res["encryption"]}  # fmt: skip


def reset_ours() -> None:
    """The destination's copy removed, so that the next run starts over (the source's
    shut-off domain and volume stay, as after a cold migration awaiting confirm)."""
    py(DST, CLEANUP)


def scp() -> dict[str, Any]:
    sh(DST, f"rm -f {WORK}/c1.img")
    secs = timed(SRC, "scp", "-q", "-i", KEY, "-P", str(SSH_PORT), "-o", "BatchMode=yes",
                 "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                 DISK, f"root@{WAN[DST]}:{WORK}/c1.img")  # fmt: skip
    return {"s": secs}


def cp() -> dict[str, Any]:
    sh(SRC, f"rm -rf {SHARED} && mkdir -p {SHARED}")
    return {"s": timed(SRC, "cp", "--sparse=always", DISK, f"{SHARED}/c1.img")}


def one_run(tmp: Path, r: int, encryption: str) -> dict[str, Any]:
    order = ["ours", "scp", "cp"]
    order = order[r % 3 :] + order[: r % 3]
    row: dict[str, Any] = {"round": r, "order": order}
    reset_ours()  # a failed attempt may have left a copy (the module cleans up, to be sure)
    for side in order:
        row[f"{side}_load"] = load()
        if side == "ours":
            row["ours"] = ours(tmp, encryption)
        elif side == "scp":
            row["scp"] = scp()
        else:
            row["cp"] = cp()
    src = file_facts(SRC, DISK)
    copies = {"ours": file_facts(DST, DISK), "scp": file_facts(DST, f"{WORK}/c1.img"),
              "cp": file_facts(SRC, f"{SHARED}/c1.img")}  # fmt: skip
    row["source"] = src
    row["copies"] = copies
    same = {k: v["sha256"] == src["sha256"] for k, v in copies.items()}
    same["ours_reported"] = row["ours"]["reported_sha256"] == src["blocks"]
    row["same_sha256"] = same
    if not all(same.values()):
        raise BenchError(f"round {r}: a copy differs from the source: {same}")
    # what our copy includes: the checksum at both ends; scp + a sha256 of both, in a row
    row["scp"]["with_sha256_s"] = round(
        row["scp"]["s"] + src["sha256_s"] + copies["scp"]["sha256_s"], 3)  # fmt: skip
    reset_ours()
    sh(DST, f"rm -f {WORK}/c1.img")
    sh(SRC, f"rm -rf {SHARED}")
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--encryption",
        choices=("tls", "none"),
        default="tls",
        help="vm_migrate's encryption (default tls, as scp encrypts too)",
    )
    ap.add_argument("--out", default=str(RESULTS / "cold_copy.json"))
    args = ap.parse_args()
    if not 1 <= args.runs <= 20:
        ap.error("--runs must be within 1..20")
    signal.signal(signal.SIGTERM, _sigterm)
    started, load_start = time.monotonic(), load()
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="bn-cold-"))
    cleanup()
    try:
        if args.encryption == "tls":  # the CA and certificates; idempotent, not timed
            checked_playbook("playbooks/setup_migration_tls.yml", timeout=900)
        start_sshd()
        make_disk()
        for r in range(args.runs):
            row = with_retries(lambda r=r: one_run(tmp, r, args.encryption), f"run {r}",
                               (SRC, DST), errors=errors)  # fmt: skip
            rows.append(row)
            print(f"run {r}: ours {row['ours']['s']:.2f} s (copy {row['ours']['copy_s']:.2f} s), "
                  f"scp {row['scp']['s']:.2f} s (+sha256 {row['scp']['with_sha256_s']:.2f} s)"
                  f", cp --sparse=always {row['cp']['s']:.2f} s, load "
                  f"{row['ours_load']['load1']}", flush=True)  # fmt: skip
    finally:
        cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    s = {"ours": summary(r["ours"]["s"] for r in rows),
         "ours_copy": summary(r["ours"]["copy_s"] for r in rows),
         "scp": summary(r["scp"]["s"] for r in rows),
         "scp_with_sha256": summary(r["scp"]["with_sha256_s"] for r in rows),
         "cp_sparse": summary(r["cp"]["s"] for r in rows)}  # fmt: skip
    vs_scp = s["scp"]["median"] / s["ours"]["median"]
    vs_bound = s["ours"]["median"] / s["cp_sparse"]["median"]
    verdict = {"speedup_vs_scp": round(vs_scp, 2), "ratio_to_bound": round(vs_bound, 2),
               "target_vs_scp_met": vs_scp >= TARGET_VS_SCP,
               "target_vs_bound_met": vs_bound <= TARGET_VS_BOUND}  # fmt: skip
    print(f"\n{'side':<34}{'s, median (min-max)':>24}")
    labels = (
        ("ours (vm_migrate cold, sha256)", "ours"),
        ("  of which volume copy", "ours_copy"),
        ("scp", "scp"),
        ("scp + sha256 of both ends", "scp_with_sha256"),
        ("cp --sparse=always (bound)", "cp_sparse"),
    )
    for label, key in labels:
        print(f"{label:<34}{spread(s[key], '{:.2f}'):>24}")
    print(f"ours vs scp: {vs_scp:.1f}x faster (target >= {TARGET_VS_SCP:.0f}x: "
          f"{'met' if verdict['target_vs_scp_met'] else 'NOT met'}); ours vs bound: "
          f"{vs_bound:.1f}x (target <= {TARGET_VS_BOUND:.0f}x: "
          f"{'met' if verdict['target_vs_bound_met'] else 'NOT met'})")  # fmt: skip
    write_result(Path(args.out), {
        "benchmark": "cold migration copy", "machine": machine(), "load_start": load_start,
        "load_end": load(), "wall_s": round(time.monotonic() - started),
        "disk": {"path": DISK, "size_gib": SIZE_GIB, "data_mib": EXTENTS * EXTENT_MIB,
                 "extents": EXTENTS, "format": "raw"},
        "route": f"{SRC} -> {DST} (WAN {WAN[SRC]} -> {WAN[DST]})",
        "encryption": args.encryption, "summary": s, "verdict": verdict,
        "retried_errors": errors, "runs": rows,
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
