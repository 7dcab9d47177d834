#!/usr/bin/env python
"""Bring-up benchmark (issue 8): create_infra.yml against a one-command-per-step baseline.

For N tenant networks (tenant ``bench``, networks n0..n{N-1}, subnets 10.100.x.0/24, no VMs)
on the one-host cloud_b of the lab (mcm-b1), it times:

- ours: ``create_infra.yml`` (first run), the no-op re-run (``--reruns`` times, default 3,
  the median shown; each must report changed=0) and ``delete_infra.yml``;
- the baseline: a generated playbook doing the seed's steps as one
  ``ansible.builtin.command`` task per step per network (tenant ``benchb``: namespaces
  ``qdhcp-benchb.nI`` / ``qrouter-benchb``, interfaces named from VNIs of its own range).

After each side's bring-up the shape on mcm-b1 (namespaces, bridges, VXLAN devices, veths,
addresses, default routes, dnsmasq processes, forwarding) is gathered and both sides must
match the expected counts: a benchmark of a wrong result is worthless.

    .venv/bin/python bench/bringup.py [--sizes 10 50 100] [--baseline-budget 300] [--reruns 3]

Everything created is removed again, on failure too. Results: bench/results/bringup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
HOST = "mcm-b1"
CLOUD = "cloud_b"
OURS_TENANT = "bench"
BASE_TENANT = "benchb"
OURS_VNI = 15_000_000  # explicit VNIs: predictable names, no clash between the two sides
BASE_VNI = 15_100_000
MTU = 1450
MAX_N = 200  # subnets 10.100.x.0/24 and every loop below stay bounded
TARGET_SPEEDUP = 50.0
TARGET_N100_S = 10.0
TARGET_RERUN_S = 3.0
ENV = {
    **os.environ,
    "CONTAINERS_CONF": str(REPO / "lab" / "containers.conf"),
    "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
    "ANSIBLE_NOCOLOR": "1",
    # where the time goes: per-task timings (both sides alike), kept in the JSON result
    "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks",
    "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
}


def _sigterm(_signum: int, _frame: object) -> None:
    raise SystemExit("terminated")


# --------------------------------------------------------------------------- helpers
def run(argv: list[str], *, check: bool = True, stdin: str | None = None) -> tuple[float, str]:
    """Run a command from the repository; return (seconds, stdout+stderr)."""
    start = time.monotonic()
    proc = subprocess.run(
        argv,
        check=False,
        cwd=REPO,
        env=ENV,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    elapsed = time.monotonic() - start
    out = proc.stdout + proc.stderr
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])}... failed ({proc.returncode}):\n{out[-4000:]}")
    return elapsed, out


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP counters per host."""
    result = {}
    for line in output.splitlines():
        m = re.match(r"^(\S+)\s+:\s+(ok=.*)$", line)
        if m:
            result[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return result


def changed(output: str) -> int:
    return sum(c.get("changed", 0) for c in recap(output).values())


def tasks_run(output: str) -> int:
    """Task results reported for the host (ok + changed counts each task once)."""
    return recap(output).get(HOST, {}).get("ok", 0)


def slowest(output: str, top: int = 8) -> list[list]:
    """The slowest tasks of a run, from profile_tasks' closing summary."""
    found = []
    for line in output.splitlines():
        m = re.match(r"^(\S.*?)\s-{3,}\s+(\d+\.\d+)s$", line)
        if m:
            found.append([m.group(1), float(m.group(2))])
    return sorted(found, key=lambda t: -t[1])[:top]


def playbook(*args: str, inventory: Path) -> list[str]:
    return [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), *args]


def net_params(n: int, i: int, vni_base: int) -> dict:
    vni = vni_base + i
    return {
        "name": f"n{i}",
        "vni": vni,
        "subnet": f"10.100.{i}.0/24",
        "gateway": f"10.100.{i}.1",
        "server": f"10.100.{i}.254",
        "range": (f"10.100.{i}.128", f"10.100.{i}.253"),
        "bridge": f"brq-{vni}",
        "vxlan": f"vxlan-{vni}",
        "dhb": f"dhb-{vni}",
        "dhn": f"dhn-{vni}",
        "qrb": f"qrb-{vni}",
        "qr": f"qr-{vni}",
    }


# --------------------------------------------------------------------------- inputs
def write_inventory(tmp: Path) -> Path:
    """A copy of the lab inventory restricted to cloud_b (one host: mcm-b1)."""
    src = REPO / "inventories" / "lab"
    dst = tmp / "inventory"
    shutil.copytree(src, dst)
    data = yaml.safe_load((dst / "hosts.yml").read_text())
    root = data["all"]
    root["vars"]["mcm_clouds"] = [CLOUD]
    root["children"]["clouds"]["children"] = {CLOUD: None}
    root["children"].pop("cloud_a", None)
    (dst / "hosts.yml").write_text(yaml.safe_dump(data, sort_keys=False))
    return dst / "hosts.yml"


def write_spec(tmp: Path, n: int) -> Path:
    nets = []
    for i in range(n):
        p = net_params(n, i, OURS_VNI)
        nets.append({"name": p["name"], "cloud": CLOUD, "subnet": p["subnet"], "vni": p["vni"]})
    path = tmp / f"spec-{n}.yml"
    path.write_text(yaml.safe_dump({"tenants": [{"name": OURS_TENANT, "networks": nets}]}))
    return path


def baseline_steps(n: int) -> list[tuple[str, str]]:
    """(task name, command) per step per network: the seed's way, one `ip` call each."""
    rns = f"qrouter-{BASE_TENANT}"
    steps = [
        ("state dir", "mkdir -p /run/benchb"),
        ("router ns", f"ip netns add {rns}"),
        ("router lo up", f"ip -n {rns} link set lo up"),
        ("router forwarding", f"ip netns exec {rns} sysctl -w net.ipv4.ip_forward=1"),
    ]
    for i in range(n):
        p = net_params(n, i, BASE_VNI)
        ns = f"qdhcp-{BASE_TENANT}.{p['name']}"
        br, vx = p["bridge"], p["vxlan"]
        s = [
            ("bridge", f"ip link add {br} mtu {MTU} type bridge"),
            ("vxlan", f"ip link add {vx} mtu {MTU} type vxlan id {p['vni']} dstport 4789"),
            ("vxlan master", f"ip link set {vx} master {br}"),
            ("dhcp ns", f"ip netns add {ns}"),
            ("dhcp lo up", f"ip -n {ns} link set lo up"),
            (
                "dhcp veth",
                f"ip link add {p['dhb']} mtu {MTU} type veth peer name {p['dhn']}"
                f" netns {ns} mtu {MTU}",
            ),
            ("dhcp leg master", f"ip link set {p['dhb']} master {br}"),
            ("dhcp address", f"ip -n {ns} addr add {p['server']}/24 dev {p['dhn']}"),
            ("dhcp leg up (ns)", f"ip -n {ns} link set {p['dhn']} up"),
            ("dhcp default route", f"ip -n {ns} route add default via {p['gateway']}"),
            (
                "router veth",
                f"ip link add {p['qrb']} mtu {MTU} type veth peer name {p['qr']}"
                f" netns {rns} mtu {MTU}",
            ),
            ("router leg master", f"ip link set {p['qrb']} master {br}"),
            ("gateway address", f"ip -n {rns} addr add {p['gateway']}/24 dev {p['qr']}"),
            ("router leg up (ns)", f"ip -n {rns} link set {p['qr']} up"),
            ("bridge up", f"ip link set {br} up"),
            ("vxlan up", f"ip link set {vx} up"),
            ("dhcp leg up", f"ip link set {p['dhb']} up"),
            ("router leg up", f"ip link set {p['qrb']} up"),
            (
                "dnsmasq",
                f"ip netns exec {ns} dnsmasq --conf-file=/dev/null --no-resolv --no-hosts"
                f" --port=0 --bind-interfaces --interface={p['dhn']} --except-interface=lo"
                f" --dhcp-authoritative --no-ping"
                f" --dhcp-range={p['range'][0]},{p['range'][1]},255.255.255.0,1h"
                f" --dhcp-option=option:router,{p['gateway']} --dhcp-option=option:mtu,{MTU}"
                f" --domain={p['name']}.{BASE_TENANT}"
                f" --dhcp-leasefile=/run/benchb/{p['name']}.leases"
                f" --pid-file=/run/benchb/{p['name']}.pid",
            ),
        ]
        steps += [(f"{p['name']}: {name}", cmd) for name, cmd in s]
    return steps


def write_baseline(tmp: Path, n: int) -> tuple[Path, int]:
    tasks = [
        {"name": name, "ansible.builtin.command": cmd, "changed_when": True}
        for name, cmd in baseline_steps(n)
    ]
    play = [
        {
            "name": f"Baseline bring-up of {n} networks",
            "hosts": HOST,
            "gather_facts": False,
            "tasks": tasks,
        }
    ]
    path = tmp / f"baseline-{n}.yml"
    path.write_text(yaml.safe_dump(play, sort_keys=False, width=1000))
    return path, len(tasks)


# --------------------------------------------------------------------------- on the host
GATHER = r"""
import json, os, subprocess, sys
tenant, vni_base, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def ipj(*a):
    out = subprocess.run(["ip", "-j", *a], capture_output=True, text=True).stdout
    return json.loads(out or "[]")
names = {"bridge": set(), "vxlan": set(), "veth": set()}
for i in range(n):
    v = vni_base + i
    names["bridge"].add(f"brq-{v}"); names["vxlan"].add(f"vxlan-{v}")
    names["veth"].update({f"dhb-{v}", f"qrb-{v}"})
ours = set().union(*names.values())
r = {"netns": 0, "bridges": 0, "vxlans": 0, "root_veths": 0, "ns_veths": 0,
     "ns_addresses": 0, "default_routes": 0, "dnsmasq": 0, "router_forwarding": 0,
     "down": 0, "unenslaved": 0}
rns = f"qrouter-{tenant}"
spaces = [x["name"] for x in ipj("netns", "list")]
spaces = [s for s in spaces if s == rns or s.startswith(f"qdhcp-{tenant}.")]
r["netns"] = len(spaces)
for l in ipj("-d", "link", "show"):
    if l["ifname"] not in ours:
        continue
    kind = l.get("linkinfo", {}).get("info_kind")
    r["bridges"] += kind == "bridge"
    r["vxlans"] += kind == "vxlan"
    r["root_veths"] += kind == "veth"
    r["down"] += "UP" not in l.get("flags", [])
    if kind in ("vxlan", "veth") and not str(l.get("master", "")).startswith("brq-"):
        r["unenslaved"] += 1
for s in spaces:
    for l in ipj("-n", s, "-d", "link", "show"):
        if l.get("linkinfo", {}).get("info_kind") == "veth":
            r["ns_veths"] += 1
            r["down"] += "UP" not in l.get("flags", [])
    for a in ipj("-n", s, "addr", "show"):
        r["ns_addresses"] += sum(1 for x in a.get("addr_info", [])
                                 if x.get("family") == "inet" and x.get("scope") == "global")
    routes = ipj("-n", s, "route", "show")
    r["default_routes"] += sum(1 for x in routes if x.get("dst") == "default")
    pids = subprocess.run(["ip", "netns", "pids", s], capture_output=True, text=True).stdout.split()
    for pid in pids:
        try:
            comm = open(f"/proc/{pid}/comm").read().strip()
        except OSError:
            continue
        r["dnsmasq"] += comm == "dnsmasq"
    if s == rns:
        fwd = subprocess.run(["ip", "netns", "exec", s, "sysctl", "-n", "net.ipv4.ip_forward"],
                             capture_output=True, text=True).stdout.strip()
        r["router_forwarding"] = int(fwd == "1")
print(json.dumps(r))
"""

BASE_CLEANUP = r"""
import glob, os, signal, subprocess, sys, time
n, vni_base, tenant = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
for pidfile in glob.glob("/run/benchb/*.pid"):
    try:
        os.kill(int(open(pidfile).read().strip()), signal.SIGTERM)
    except (OSError, ValueError):
        pass
spaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
for line in spaces:
    name = line.split(" ")[0]
    if name == f"qrouter-{tenant}" or name.startswith(f"qdhcp-{tenant}."):
        subprocess.run(["ip", "netns", "pids", name], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
for i in range(n):
    v = vni_base + i
    for dev in (f"dhb-{v}", f"qrb-{v}", f"vxlan-{v}", f"brq-{v}"):
        subprocess.run(["ip", "link", "del", dev], capture_output=True)
subprocess.run(["rm", "-rf", "/run/benchb"])
"""


def on_host(script: str, *args: object) -> str:
    argv = ["podman", "exec", "-i", HOST, "python3", "-", *map(str, args)]
    _secs, out = run(argv, stdin=script)
    return out


def gather(tenant: str, vni_base: int, n: int) -> dict[str, int]:
    return json.loads(on_host(GATHER, tenant, vni_base, n).strip().splitlines()[-1])


def expected(n: int) -> dict[str, int]:
    return {
        "netns": n + 1,
        "bridges": n,
        "vxlans": n,
        "root_veths": 2 * n,
        "ns_veths": 2 * n,
        "ns_addresses": 2 * n,
        "default_routes": n,
        "dnsmasq": n,
        "router_forwarding": 1,
        "down": 0,
        "unenslaved": 0,
    }


def empty() -> dict[str, int]:
    return {k: 0 for k in expected(0)}


def cleanup_baseline(n: int = MAX_N) -> None:
    on_host(BASE_CLEANUP, n, BASE_VNI, BASE_TENANT)


# --------------------------------------------------------------------------- the bench
def bench_ours(tmp: Path, inv: Path, n: int, rerun_count: int = 3) -> dict:
    spec = write_spec(tmp, n)
    create = playbook(
        "playbooks/create_infra.yml",
        "-e",
        f"spec_file={spec}",
        "-e",
        "wait_for_leases=false",
        inventory=inv,
    )
    first, out1 = run(create)
    shape = gather(OURS_TENANT, OURS_VNI, n)
    # the re-run is the smallest figure, so the most sensitive to noise: its median
    reruns, rerun_changed, out2 = [], 0, ""
    for _attempt in range(rerun_count):
        took, out2 = run(create)
        reruns.append(took)
        rerun_changed = max(rerun_changed, changed(out2))
    delete, _output = run(
        playbook("playbooks/delete_infra.yml", "-e", f"tenant={OURS_TENANT}", inventory=inv)
    )
    after = gather(OURS_TENANT, OURS_VNI, n)
    return {
        "first_s": first,
        "rerun_s": statistics.median(reruns),
        "rerun_runs_s": reruns,
        "delete_s": delete,
        "first_changed": changed(out1),
        "rerun_changed": rerun_changed,
        "load": os.getloadavg(),
        "tasks": tasks_run(out1),
        "shape": shape,
        "slowest_first": slowest(out1),
        "slowest_rerun": slowest(out2),
        "after_delete": after,
    }


def bench_baseline(tmp: Path, inv: Path, n: int) -> dict:
    book, ntasks = write_baseline(tmp, n)
    try:
        secs, _output = run(playbook(str(book), inventory=inv))
        shape = gather(BASE_TENANT, BASE_VNI, n)
    finally:
        cleanup_baseline(n)
    after = gather(BASE_TENANT, BASE_VNI, n)
    return {"s": secs, "tasks": ntasks, "shape": shape, "after_cleanup": after}


def check(label: str, got: dict, want: dict) -> None:
    if got != want:
        diff = {k: (got.get(k), want[k]) for k in want if got.get(k) != want[k]}
        raise AssertionError(f"{label}: shape differs (got, expected): {diff}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 100])
    ap.add_argument(
        "--baseline-budget",
        type=float,
        default=300.0,
        help="skip a baseline size whose estimated time exceeds this (s)",
    )
    ap.add_argument("--reruns", type=int, default=3, help="no-op re-runs per N (median shown)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "bringup.json"))
    args = ap.parse_args()
    if not 1 <= args.reruns <= 20:
        ap.error("--reruns must be within 1..20")
    if any(not 1 <= n <= MAX_N for n in args.sizes):
        ap.error(f"sizes must be within 1..{MAX_N}")
    signal.signal(signal.SIGTERM, _sigterm)
    rows: list[dict] = []
    tmp = Path(tempfile.mkdtemp(prefix="mcm-bench-"))
    inv = write_inventory(tmp)
    base_per_task: float | None = None
    try:
        for n in sorted(args.sizes):
            print(f"N={n}: ours ...", flush=True)
            ours = bench_ours(tmp, inv, n, args.reruns)
            check(f"ours N={n}", ours["shape"], expected(n))
            check(f"ours N={n} after delete", ours["after_delete"], empty())
            if ours["rerun_changed"] != 0:
                raise AssertionError(f"ours N={n}: re-run changed={ours['rerun_changed']}")
            row = {"n": n, "ours": ours, "baseline": None}
            ntasks = len(baseline_steps(n))
            estimate = None if base_per_task is None else base_per_task * ntasks
            if estimate is not None and estimate > args.baseline_budget:
                print(
                    f"N={n}: baseline skipped (estimated {estimate:.0f} s for {ntasks} tasks"
                    f" > budget {args.baseline_budget:.0f} s)",
                    flush=True,
                )
                row["baseline_skipped"] = {"estimated_s": estimate, "tasks": ntasks}
            else:
                print(f"N={n}: baseline ({ntasks} tasks) ...", flush=True)
                base = bench_baseline(tmp, inv, n)
                check(f"baseline N={n}", base["shape"], expected(n))
                check(f"baseline N={n} after cleanup", base["after_cleanup"], empty())
                base_per_task = base["s"] / base["tasks"]
                row["baseline"] = base
            rows.append(row)
            print_table(rows)
    finally:
        # Whatever happened: nothing of ours or the baseline stays on the host.
        run(
            playbook("playbooks/delete_infra.yml", "-e", f"tenant={OURS_TENANT}", inventory=inv),
            check=False,
        )
        cleanup_baseline(max(args.sizes))
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "host": HOST,
        "targets": {
            "speedup_min": TARGET_SPEEDUP,
            "n100_first_s_max": TARGET_N100_S,
            "rerun_s_max": TARGET_RERUN_S,
        },
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    return 0


def print_table(rows: list[dict]) -> None:
    head = (
        f"{'N':>4} {'ours 1st (s)':>12} {'re-run (s)':>10} {'delete (s)':>10} "
        f"{'baseline (s)':>12} {'speed-up':>11} {'ours ms/net':>11} {'base ms/net':>11}"
    )
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        o, b, n = r["ours"], r["baseline"], r["n"]
        base_s = f"{b['s']:.1f}" if b else f"~{r['baseline_skipped']['estimated_s']:.0f} est"
        base_ms = f"{1000 * b['s'] / n:.0f}" if b else "-"
        speed = (
            f"{b['s'] / o['first_s']:.1f}x"
            if b
            else f"~{r['baseline_skipped']['estimated_s'] / o['first_s']:.0f}x est"
        )
        print(
            f"{n:>4} {o['first_s']:>12.1f} {o['rerun_s']:>10.1f} {o['delete_s']:>10.1f} "
            f"{base_s:>12} {speed:>11} {1000 * o['first_s'] / n:>11.0f} {base_ms:>11}"
        )
    print(
        f"targets: speed-up >= {TARGET_SPEEDUP:.0f}x, ours N=100 < {TARGET_N100_S:.0f} s, "
        f"re-run < {TARGET_RERUN_S:.0f} s (printed, not asserted)"
    )
    if len(rows) > 1:
        a, z = rows[0], rows[-1]
        slope = (z["ours"]["first_s"] - a["ours"]["first_s"]) / (z["n"] - a["n"])
        print(
            f"growth, ours: {1000 * slope:.0f} ms per extra network "
            f"(N={a['n']}..{z['n']}), fixed part ~{a['ours']['first_s'] - slope * a['n']:.1f} s"
        )
        based = [r for r in rows if r["baseline"]]
        if len(based) > 1:
            a, z = based[0], based[-1]
            slope = (z["baseline"]["s"] - a["baseline"]["s"]) / (z["n"] - a["n"])
            print(
                f"growth, baseline: {1000 * slope:.0f} ms per extra network (N={a['n']}..{z['n']})"
            )
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
