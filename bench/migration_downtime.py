#!/usr/bin/env python
"""Live migration downtime (issue 8): vm_migrate against plain ``virsh migrate --live``.

The idle 128 MiB lab guest (TCG) of tenant ``bnlive`` (network 10.120.1.0/24 on cloud_a, VM
v1 = 10.120.1.10 with ``storage: shared``, pinned to mcm-a1) moves between mcm-a1 (cloud_a)
and mcm-b1 (cloud_b), there and back, with and without encryption:

- ours: one ``multicloud.migration.vm_migrate`` task per migration (mode live, the
  module's defaults: ``max_downtime_ms`` etc.), run by ansible-playbook on the source;
- baseline: ``virsh migrate --live --persistent --undefinesource --unsafe [--tls]
  DOMAIN qemu+{tcp,tls}://DST/system --migrateuri tcp://DST`` on the source, libvirt's
  default settings.

Set-up (not timed): setup_migration_tls.yml (which also bounds the unsent data of the hosts'
TCP sockets, net.ipv4.tcp_notsent_lowat; recorded), create_infra.yml, then migrate_instance.yml
moves v1 to cloud_b (mode live; its own figures are kept), which stretches the network
to mcm-b1. A ping client (namespace ``bnlive-ping`` on mcm-a1, a veth on the network's
bridge, 10.120.1.50) pings v1 every 10 ms during each migration (bounded by -c and -w).

Per migration: libvirt's downtime (completed job stats on the destination, the same call
for both sides), the pings lost and the longest gap between two replies, libvirt's
migration time and the wall time (ours: inside the module; virsh: the command's). Both
sides must reach the same end state: the domain running and persistent on the
destination, gone from the source, answering pings afterwards.

    .venv/bin/python bench/migration_downtime.py [--runs 10]

Variants interleave (ours-tls, virsh-tls, ours-none, virsh-none, rotated each round); each
round moves the VM there and back per variant, so --runs should be even. Everything is
removed again, on failure too (delete_infra.yml, the ping namespace, temporary files).
Result: bench/results/migration_downtime.json.

--trace restarts the guest with qemu's trace points and splits each pause into phases (the
source's save, what is still in flight until the destination has loaded it, libvirt's
resume), printed per variant.
"""

from __future__ import annotations

import argparse
import json
import math
import re
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
    WAN,
    BenchError,
    PingClient,
    bridge_of,
    checked_playbook,
    delete_tenant,
    domains_on,
    load,
    machine,
    playbook,
    py,
    retried_playbook,
    sh,
    spread,
    summary,
    task_results,
    with_retries,
    write_play,
    write_result,
)

TENANT, NETWORK, VM, IP = "bnlive", "net", "v1", "10.120.1.10"
DOMAIN = f"{TENANT}-{VM}"
HOSTS = ("mcm-a1", "mcm-b1")
ALL_HOSTS = ("mcm-a1", "mcm-a2", "mcm-b1")
CLIENT = ("mcm-a1", f"{TENANT}-ping", ("bnl-p0", "bnl-p1"), "10.120.1.50/24")
SHARED_DISK = f"/var/lib/mcm/shared/vms/{DOMAIN}.qcow2"
VARIANTS = ("ours-tls", "virsh-tls", "ours-none", "virsh-none")
TARGET_DOWNTIME_MS = 30
SPEC = {
    "tenants": [{
        "name": TENANT,
        "networks": [{
            "name": NETWORK, "cloud": "cloud_a", "subnet": "10.120.1.0/24",
            "vms": [{"name": VM, "vcpus": 1, "memory": "128MiB", "disk": "64MiB", "ip": IP,
                     "host": "mcm-a1", "storage": "shared"}],
        }],
    }]
}  # fmt: skip
# virsh's side: the migration timed inside the source, then the destination's completed job.
VIRSH = r"""
import json, subprocess, sys, time
argv = sys.argv[1:]
t = time.monotonic()
p = subprocess.run(argv, capture_output=True, text=True, timeout=300)
print(json.dumps({"rc": p.returncode, "wall_ms": round((time.monotonic() - t) * 1000),
                  "err": (p.stderr or p.stdout)[-2000:]}))
"""
COMPLETED = r"""
import json, sys, libvirt
conn = libvirt.open("qemu:///system")
dom = conn.lookupByName(sys.argv[1])
stats = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
print(json.dumps({"stats": stats, "persistent": bool(dom.isPersistent()),
                  "active": bool(dom.isActive())}))
"""

# --trace: QEMU's own trace points (its "log" backend: PID@EPOCH:EVENT ARGS, in the domain's
# log through libvirt) on both hosts' qemu, to split the downtime into its phases. The lab
# hosts share one clock (containers of one kernel), so the two sides' timestamps compare.
TRACE_EVENTS = ("vm_state_notify", "vmstate_downtime_checkpoint")
QEMU_LOG = f"/var/log/libvirt/qemu/{DOMAIN}.log"
TRACE_LINE = re.compile(r"^\d+@(\d+\.\d+):(\w+) ?(.*)$")
# the domain's definition with the trace points (libvirt's qemu:commandline), then a restart
TRACE_ON = r"""
import sys, libvirt, xml.etree.ElementTree as ET
NS = "http://libvirt.org/schemas/domain/qemu/1.0"
ET.register_namespace("qemu", NS)
conn = libvirt.open("qemu:///system")
dom = conn.lookupByName(sys.argv[1])
root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
line = root.find(f"{{{NS}}}commandline")
if line is None:
    line = ET.SubElement(root, f"{{{NS}}}commandline")
for event in sys.argv[2:]:
    for value in ("-trace", f"enable={event}"):
        ET.SubElement(line, f"{{{NS}}}arg", value=value)
conn.defineXML(ET.tostring(root, encoding="unicode"))
dom.destroy()
dom.create()
"""


def trace_events(text: str) -> list[tuple[float, str, str]]:
    """(epoch seconds, event, arguments) of each trace line of a qemu log."""
    found = []
    for line in text.splitlines():
        m = TRACE_LINE.match(line)
        if m:
            found.append((float(m.group(1)), m.group(2), m.group(3)))
    return found


def breakdown(src: list[tuple[float, str, str]], dst: list[tuple[float, str, str]],
              ) -> dict[str, float | None]:  # fmt: skip
    """The guest's pause split into three consecutive phases (ms), from both qemu's trace
    points:
    - save: from the source's vCPUs stopping until the source has written the last dirty
      pages and every device's state into the stream;
    - in_flight: until the destination has loaded all of it (what still waited in socket
      buffers and queues, and the destination's loading of the rest);
    - resume: until libvirt starts the destination's vCPUs (the source's libvirtd sees the
      end, calls Finish on the destination's libvirtd, which resumes the guest)."""

    def first(events: list[tuple[float, str, str]], name: str, prefix: str) -> float | None:
        return next((t for t, n, a in events if n == name and a.startswith(prefix)), None)

    stop = first(src, "vm_state_notify", "running 0")
    saved = first(src, "vmstate_downtime_checkpoint", "src-non-iterable-saved")
    loaded = first(dst, "vmstate_downtime_checkpoint", "dst-precopy-loadvm-completed")
    running = first(dst, "vm_state_notify", "running 1")

    def ms(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round((b - a) * 1000, 1)

    return {"save_ms": ms(stop, saved), "in_flight_ms": ms(saved, loaded),
            "resume_ms": ms(loaded, running), "stop_to_running_ms": ms(stop, running)}  # fmt: skip


def _sigterm(_signum: int, _frame: object) -> None:
    raise SystemExit("terminated")


def other(host: str) -> str:
    return HOSTS[1] if host == HOSTS[0] else HOSTS[0]


class Bench:
    def __init__(self, tmp: Path, ours_params: dict[str, Any], virsh_p2p: bool,
                 trace: bool = False) -> None:  # fmt: skip
        self.tmp = tmp
        self.state = tmp / "state"
        self.spec = tmp / "spec.yml"
        self.spec.write_text(yaml.safe_dump(SPEC, sort_keys=False))
        self.extra = [
            "-e",
            f"spec_file={self.spec}",
            "-e",
            "mcm_state_host=localhost",
            "-e",
            f"mcm_state_dir={self.state}",
        ]
        self.ours_params = ours_params
        self.virsh_p2p = virsh_p2p
        self.trace = trace
        self.virsh_extra: list[str] = []  # more virsh flags (experiments: --postcopy ...)
        host, ns, legs, address = CLIENT
        self.client = PingClient(host, ns, legs, "", address)
        self.position = "mcm-a1"
        self.errors: list[str] = []
        self.crashes: list[dict[str, Any]] = []
        self.last_variant = ""

    # ------------------------------------------------------------------ set-up
    def setup(self) -> dict[str, Any]:
        print("set-up: setup_migration_tls.yml, create_infra.yml ...", flush=True)
        checked_playbook("playbooks/setup_migration_tls.yml", timeout=900)
        retried_playbook("playbooks/create_infra.yml", *self.extra, hosts=ALL_HOSTS, timeout=900)
        where = domains_on(HOSTS, DOMAIN)
        if where.get("mcm-a1", {}).get(DOMAIN) != "running":
            raise BenchError(f"{DOMAIN} does not run on mcm-a1 after create_infra: {where}")
        print("set-up: migrate_instance.yml -e mode=live to cloud_b ...", flush=True)
        secs, _data = retried_playbook(
            "playbooks/migrate_instance.yml", *self.extra, "-e", f"instance={VM}",
            "-e", "to=cloud_b", "-e", "mode=live", hosts=ALL_HOSTS, timeout=900,
        )  # fmt: skip
        self.position = self.where()
        row = self.ledger()[-1]
        self.client.bridge = bridge_of(self.client.host, TENANT, NETWORK)
        self.client.add()
        if not self.client.answers(IP):
            raise BenchError(f"{DOMAIN} ({IP}) does not answer the ping client after set-up")
        if self.trace:
            print(f"set-up: qemu trace points {', '.join(TRACE_EVENTS)}; restart", flush=True)
            py(self.position, TRACE_ON, DOMAIN, *TRACE_EVENTS)
            if not self.client.answers(IP, attempts=60):
                raise BenchError(f"{DOMAIN} does not answer after its restart with trace points")
        # how much data may wait unsent in a TCP socket (the migration_tls role's setting):
        # what queues in front of the final pass while the guest is paused
        lowat = {h: sh(h, "sysctl -n net.ipv4.tcp_notsent_lowat").strip() for h in HOSTS}
        print(f"set-up: net.ipv4.tcp_notsent_lowat {lowat}", flush=True)
        return {"migrate_instance_s": round(secs, 2), "ledger_downtime_ms": row.get("downtime_ms"),
                "ledger_status": row.get("status"), "tcp_notsent_lowat": lowat}  # fmt: skip

    def where(self) -> str:
        found = [
            h for h, doms in domains_on(HOSTS, DOMAIN).items() if doms.get(DOMAIN) == "running"
        ]
        if len(found) != 1:
            raise BenchError(f"{DOMAIN} runs on {found or 'no host'}")
        return found[0]

    def ledger(self) -> list[dict[str, Any]]:
        rows = sorted((self.state / "migrations").glob("*.json"), key=lambda p: int(p.stem))
        return [json.loads(p.read_text()) for p in rows]

    def teardown(self) -> None:
        self.client.remove()
        delete_tenant(TENANT)
        for host in HOSTS:  # whatever delete_infra could not reach
            sh(host, f"virsh destroy {DOMAIN}; virsh undefine {DOMAIN}; true", check=False)
        sh(HOSTS[0], f"rm -f {SHARED_DISK}", check=False)

    # ------------------------------------------------------------------ one migration
    def ours(self, src: str, dst: str, encryption: str) -> dict[str, Any]:
        args = {"name": DOMAIN, "destination": dst, "destination_address": WAN[dst],
                "mode": "live", "encryption": encryption, **self.ours_params}  # fmt: skip
        task = {"name": "bn migrate", "multicloud.migration.vm_migrate": args}
        path = write_play(self.tmp / "ours.yml", src, "bn live", [task])
        secs, rc, data = playbook(path, timeout=900)
        [res] = task_results(data, "bn migrate")
        if rc != 0 or res.get("failed"):
            raise BenchError(f"vm_migrate {src} -> {dst} failed: {res.get('msg')}")
        stats = res["stats"]
        return {"downtime_ms": stats.get("downtime_ms"),
                "downtime_net_ms": stats.get("downtime_net_ms"),
                "elapsed_ms": stats.get("elapsed_ms"), "wall_ms": stats.get("wall_ms"),
                "playbook_s": round(secs, 2), "bytes": stats.get("bytes"),
                "memory_iterations": stats.get("memory_iterations"),
                "max_downtime_ms": stats.get("max_downtime_ms"),
                "flags": res.get("plan", {}).get("flags")}  # fmt: skip

    def virsh(self, src: str, dst: str, encryption: str) -> dict[str, Any]:
        transport = "tls" if encryption == "tls" else "tcp"
        argv = ["virsh", "migrate", "--live", "--persistent", "--undefinesource", "--unsafe"]
        if self.virsh_p2p:
            argv.append("--p2p")
        if encryption == "tls":
            argv.append("--tls")
        argv += self.virsh_extra
        argv += [DOMAIN, f"qemu+{transport}://{WAN[dst]}/system",
                 "--migrateuri", f"tcp://{WAN[dst]}"]  # fmt: skip
        out = json.loads(py(src, VIRSH, *argv, timeout=400).strip().splitlines()[-1])
        if out["rc"] != 0:
            raise BenchError(f"virsh migrate {src} -> {dst} failed: {out['err']}")
        done = json.loads(py(dst, COMPLETED, DOMAIN).strip().splitlines()[-1])
        stats = done["stats"]
        return {"downtime_ms": stats.get("downtime"), "downtime_net_ms": stats.get("downtime_net"),
                "elapsed_ms": stats.get("time_elapsed"), "wall_ms": out["wall_ms"],
                "bytes": stats.get("data_processed"),
                "memory_iterations": stats.get("memory_iteration"), "argv": argv}  # fmt: skip

    def migrate(self, variant: str) -> dict[str, Any]:
        side, encryption = variant.split("-")
        self.position = self.where()
        src, dst = self.position, other(self.position)
        self.last_variant = f"{variant} {src} -> {dst}"
        before = load()
        logs = {h: self.log_size(h) for h in (src, dst)} if self.trace else {}
        self.client.start(IP)
        time.sleep(0.5)
        try:
            started = time.time()
            got = self.ours(src, dst, encryption) if side == "ours" else self.virsh(
                src, dst, encryption)  # fmt: skip
            ended = time.time()
            time.sleep(1.5)
        finally:
            ping = self.client.stop()
        self.position = dst
        got.update(variant=variant, source=src, destination=dst, load=before,
                   pings_lost=ping["lost"], ping_max_gap_ms=ping["max_gap_ms"],
                   ping_runs=ping["runs"], pings_sent=ping["transmitted"])  # fmt: skip
        got["end_state"] = self.end_state(src, dst, ping, ended)
        got["migration_s"] = round(ended - started, 2)
        if self.trace:
            events = {h: trace_events(sh(h, f"tail -c +{logs[h] + 1} {QEMU_LOG}"))
                      for h in (src, dst)}  # fmt: skip
            got["breakdown"] = breakdown(events[src], events[dst])
        return got

    @staticmethod
    def log_size(host: str) -> int:
        return int(sh(host, f"stat -c %s {QEMU_LOG} 2>/dev/null || echo 0").split()[-1])

    def end_state(self, src: str, dst: str, ping: dict[str, Any], ended: float) -> dict[str, Any]:
        where = domains_on(HOSTS, DOMAIN)
        done = json.loads(py(dst, COMPLETED, DOMAIN, check=False).strip().splitlines()[-1]
                          or "{}")  # fmt: skip
        state = {
            "running_on_destination": where.get(dst, {}).get(DOMAIN) == "running",
            "persistent_on_destination": bool(done.get("persistent")),
            "gone_from_source": DOMAIN not in where.get(src, {}),
            # replies after the migration ended, or (a loaded machine) a bounded retry
            "answers_after": bool(ping["last_reply"] and ping["last_reply"] > ended + 0.2)
            or self.client.answers(IP, attempts=10),
        }
        if not all(state.values()):
            if state["running_on_destination"] and not state["answers_after"]:
                self.recover(dst)
            raise BenchError(f"{src} -> {dst}: end state differs: {state} ({where})")
        return state

    def recover(self, host: str) -> None:
        """The guest stopped answering after a migration (seen on this lab: the guest kernel
        logs 'virtio_net virtio0: output.0:id N is not a head!' then soft lockups): keep its
        console's last lines, restart it where it is, wait (bounded) until it answers."""
        tail = sh(host, f"tail -n 4 /var/lib/mcm/console/{DOMAIN}.log", check=False)
        self.crashes.append({"host": host, "after": self.last_variant, "console": tail[-600:],
                             "load": load()})  # fmt: skip
        print(f"guest {DOMAIN} on {host} stopped answering; console: {tail[-300:]!r}; "
              "restarting it", flush=True)  # fmt: skip
        sh(host, f"virsh destroy {DOMAIN}; rm -f /var/lib/mcm/console/{DOMAIN}.console; "
                 f"virsh start {DOMAIN}", check=False)  # fmt: skip
        if not self.client.answers(IP, attempts=60):
            raise BenchError(f"{DOMAIN} does not answer after a restart on {host}")


def report(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for variant in VARIANTS:
        rows = [r for r in runs if r["variant"] == variant]
        if not rows:
            continue
        out[variant] = {
            field: summary(r.get(field) for r in rows)
            for field in ("downtime_ms", "downtime_net_ms", "pings_lost", "ping_max_gap_ms",
                          "elapsed_ms", "wall_ms", "playbook_s")
        }  # fmt: skip
    head = (f"{'variant':<11}{'runs':>5}{'downtime ms (libvirt)':>24}{'pings lost':>13}"
            f"{'max gap ms':>16}{'libvirt time ms':>18}{'wall ms':>18}")  # fmt: skip
    print("\n" + head + "\n" + "-" * len(head))
    for variant, row in out.items():
        n = int(row["downtime_ms"]["n"]) if row["downtime_ms"] else 0
        print(f"{variant:<11}{n:>5}{spread(row['downtime_ms']):>24}"
              f"{spread(row['pings_lost']):>13}{spread(row['ping_max_gap_ms']):>16}"
              f"{spread(row['elapsed_ms']):>18}{spread(row['wall_ms']):>18}")  # fmt: skip
    phases = ("save_ms", "in_flight_ms", "resume_ms", "stop_to_running_ms")
    traced = {variant: {phase: summary(r["breakdown"].get(phase) for r in runs
                                       if r["variant"] == variant and "breakdown" in r)
                        for phase in phases}
              for variant in out}  # fmt: skip
    traced = {v: b for v, b in traced.items() if any(b.values())}
    if traced:
        head = f"{'variant':<11}" + "".join(f"{p.removesuffix('_ms'):>22}" for p in phases)
        print("\nwhere the pause went (qemu trace points), ms: median (min..max)\n" + head
              + "\n" + "-" * len(head))  # fmt: skip
        for variant, row in traced.items():
            cells = (f"{c['median']:.1f} ({c['min']:.1f}..{c['max']:.1f})" if c else "-"
                     for c in (row[p] for p in phases))  # fmt: skip
            print(f"{variant:<11}" + "".join(f"{c:>22}" for c in cells))
        for variant, row in traced.items():
            out[variant]["breakdown"] = row
    verdict: dict[str, Any] = {}
    for enc in ("tls", "none"):
        ours, base = out.get(f"ours-{enc}"), out.get(f"virsh-{enc}")
        if not ours or not base or not ours["downtime_ms"] or not base["downtime_ms"]:
            continue
        o, b = ours["downtime_ms"], base["downtime_ms"]
        verdict[enc] = {
            "ours_median_ms": o["median"], "virsh_median_ms": b["median"],
            "under_target": o["median"] < TARGET_DOWNTIME_MS,
            "not_above_virsh_median": o["median"] <= b["median"],
            "not_above_virsh_max": o["max"] <= b["max"],
            "ours_pings_lost_median": ours["pings_lost"]["median"] if ours["pings_lost"] else None,
            "virsh_pings_lost_median": base["pings_lost"]["median"] if base["pings_lost"] else None,
        }  # fmt: skip
        met = "met" if o["median"] < TARGET_DOWNTIME_MS else "NOT met"
        print(f"{enc}: ours {o['median']:.0f} ms vs virsh {b['median']:.0f} ms (median); target "
              f"< {TARGET_DOWNTIME_MS} ms: {met}"
              f"; not above virsh: {'yes' if o['median'] <= b['median'] else 'NO'} (median), "
              f"{'yes' if o['max'] <= b['max'] else 'no'} (max)")  # fmt: skip
    return {"summary": out, "verdict": verdict}


def parse_param(text: str) -> tuple[str, Any]:
    key, _sep, value = text.partition("=")
    if not key or not _sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {text!r}")
    return key, yaml.safe_load(value)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    ap.add_argument("--runs", type=int, default=10, help="migrations per variant (even)")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument(
        "--ours-param",
        type=parse_param,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra vm_migrate option for ours (tuning), e.g. max_downtime_ms=10",
    )
    ap.add_argument("--virsh-p2p", action="store_true", help="virsh migrate --p2p")
    ap.add_argument(
        "--trace",
        action="store_true",
        help="split each pause into phases with qemu's trace points (restarts the guest with "
        "them; their logging adds a little to the downtime)",
    )
    ap.add_argument("--out", default=str(RESULTS / "migration_downtime.json"))
    args = ap.parse_args()
    if not 1 <= args.runs <= 100:
        ap.error("--runs must be within 1..100")
    signal.signal(signal.SIGTERM, _sigterm)
    rounds = math.ceil(args.runs / 2)
    tmp = Path(tempfile.mkdtemp(prefix="bn-live-"))
    bench = Bench(tmp, dict(args.ours_param), args.virsh_p2p, trace=args.trace)
    started, load_start = time.monotonic(), load()
    runs: list[dict[str, Any]] = []
    try:
        setup = bench.setup()
        for r in range(rounds):
            order = (
                args.variants[r % len(args.variants) :] + args.variants[: r % len(args.variants)]
            )
            for variant in order:
                for _leg in range(2):
                    row = with_retries(lambda v=variant: bench.migrate(v), variant, ALL_HOSTS,
                                       errors=bench.errors, tries=4)  # fmt: skip
                    row["round"] = r
                    runs.append(row)
                    print(f"round {r} {variant:<10} {row['source']} -> {row['destination']}: "
                          f"downtime {row['downtime_ms']} ms, {row['pings_lost']} pings lost "
                          f"(max gap {row['ping_max_gap_ms']} ms), libvirt {row['elapsed_ms']} ms,"
                          f" wall {row['wall_ms']} ms, load {row['load']['load1']}"
                          + (f"; {row['breakdown']}" if "breakdown" in row else ""),
                          flush=True)  # fmt: skip
    finally:
        bench.teardown()
        shutil.rmtree(tmp, ignore_errors=True)
    rep = report(runs)
    write_result(Path(args.out), {
        "benchmark": "live migration downtime", "machine": machine(),
        "load_start": load_start, "load_end": load(), "wall_s": round(time.monotonic() - started),
        "runs_per_variant": args.runs, "ours_params": dict(args.ours_param),
        "virsh_p2p": args.virsh_p2p, "trace": args.trace, "target_downtime_ms": TARGET_DOWNTIME_MS,
        "setup": setup, "retried_errors": bench.errors,
        "guest_crashes": bench.crashes, **rep, "runs": runs,
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
