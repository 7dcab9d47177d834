"""Helpers shared by the migration benchmarks (bench/migration_downtime.py, cold_copy.py,
subnet_migration.py): commands on the lab hosts, playbooks with the JSON callback, the
machine's load, a ping every 10 ms from a namespace and its parser, result files.

Nothing here creates lab objects by itself; each benchmark names its own (tenants and
files starting with ``bn``) and removes them.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import re
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
RESULTS = REPO / "bench" / "results"
T = TypeVar("T")
ENV = {
    **os.environ,
    "CONTAINERS_CONF": str(REPO / "lab" / "containers.conf"),
    "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
    "ANSIBLE_NOCOLOR": "1",
    "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
}
JSON_ENV = {**ENV, "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
            "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1"}  # fmt: skip
# The lab's hosts and their WAN addresses (inventories/lab/hosts.yml).
WAN = {"mcm-a1": "172.30.0.11", "mcm-a2": "172.30.0.12", "mcm-b1": "172.30.0.21"}
PING_RE = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from [\d.]+: icmp_seq=(\d+) ")
SUMMARY_RE = re.compile(r"(\d+) packets transmitted, (\d+) received")


class BenchError(RuntimeError):
    """A step of a benchmark failed (the message says which, with the tail of its output)."""


def run(argv: Sequence[str], *, timeout: float = 600, check: bool = True,
        stdin: str | None = None, env: dict[str, str] | None = None,
        ) -> tuple[float, subprocess.CompletedProcess]:  # fmt: skip
    """A command from the repository: (seconds, the finished process)."""
    start = time.monotonic()
    proc = subprocess.run(list(argv), cwd=REPO, env=env or ENV, input=stdin,
                          capture_output=True, text=True, timeout=timeout,
                          check=False)  # fmt: skip
    secs = time.monotonic() - start
    if check and proc.returncode != 0:
        raise BenchError(f"{' '.join(argv[:4])}... failed ({proc.returncode}):\n"
                         f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")  # fmt: skip
    return secs, proc


def sh(host: str, script: str, *, timeout: float = 120, check: bool = True) -> str:
    """A shell script on a lab host; its stdout."""
    _secs, proc = run(["podman", "exec", host, "sh", "-c", script], timeout=timeout,
                      check=check)  # fmt: skip
    return proc.stdout


def py(host: str, script: str, *args: object, timeout: float = 120, check: bool = True) -> str:
    """A Python script on a lab host (stdin); its stdout."""
    _secs, proc = run(["podman", "exec", "-i", host, "python3", "-", *map(str, args)],
                      stdin=script, timeout=timeout, check=check)  # fmt: skip
    return proc.stdout


def playbook(path: str | Path, *args: str, timeout: float = 1800,
             ) -> tuple[float, int, dict[str, Any]]:  # fmt: skip
    """ansible-playbook with the JSON callback: (seconds, return code, its JSON)."""
    secs, proc = run([str(VENV_BIN / "ansible-playbook"), str(path), *args], timeout=timeout,
                     check=False, env=JSON_ENV)  # fmt: skip
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise BenchError(f"{path} printed no JSON (rc {proc.returncode}):\n"
                         f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}") from exc  # fmt: skip
    return secs, proc.returncode, data


def guest_boot() -> dict[str, str]:
    """How the lab's VMs boot the guest image: the lab inventory's mcm_vm_boot."""
    inventory = yaml.safe_load((REPO / "inventories" / "lab" / "hosts.yml").read_text())
    return {str(k): str(v) for k, v in inventory["all"]["vars"]["mcm_vm_boot"].items()}


def write_play(path: Path, hosts: str, name: str, tasks: list[dict[str, Any]]) -> Path:
    """A playbook of one play (no fact gathering) written to ``path``."""
    play = [{"name": name, "hosts": hosts, "gather_facts": False, "tasks": tasks}]
    path.write_text(yaml.safe_dump(play, sort_keys=False))
    return path


def failures(data: dict[str, Any]) -> list[str]:
    """'task host: message' of every failed task (and loop item) of a JSON-callback run."""
    out = []
    for play in data.get("plays", []):
        for task in play.get("tasks", []):
            for host, res in task.get("hosts", {}).items():
                for r in (res, *res.get("results", [])):
                    if r.get("failed") and not r.get("ignore_errors"):
                        out.append(f"{task['task']['name']} {host}: {r.get('msg')}")
    return out


def checked_playbook(path: str | Path, *args: str, timeout: float = 1800,
                     ) -> tuple[float, dict[str, Any]]:  # fmt: skip
    secs, rc, data = playbook(path, *args, timeout=timeout)
    if rc != 0:
        raise BenchError(f"{path} failed (rc {rc}): {failures(data)[:5]}")
    return secs, data


def task_results(data: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """Results of the task called ``name`` (loop items flattened), every host."""
    out = []
    for play in data.get("plays", []):
        for task in play.get("tasks", []):
            if task["task"]["name"] == name:
                for res in task["hosts"].values():
                    out += res.get("results") or [res]
    return out


def load() -> dict[str, Any]:
    """The machine's load now (uptime's load averages), recorded next to every figure."""
    one, five, fifteen = os.getloadavg()
    return {"load1": round(one, 2), "load5": round(five, 2), "load15": round(fifteen, 2),
            "cpus": os.cpu_count(), "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = "unknown"
    return {"cpus": os.cpu_count(), "cpu": model, "platform": platform.platform(),
            "python": platform.python_version()}  # fmt: skip


def summary(values: Iterable[float | int | None]) -> dict[str, float] | None:
    got = [float(v) for v in values if v is not None]
    if not got:
        return None
    return {"n": len(got), "median": statistics.median(got), "mean": statistics.fmean(got),
            "min": min(got), "max": max(got)}  # fmt: skip


def spread(s: dict[str, float] | None, fmt: str = "{:.0f}") -> str:
    if not s:
        return "-"
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}-{fmt.format(s['max'])})"


def write_result(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    print(f"written {shown}", flush=True)


# --------------------------------------------------------------------------- tenants
def bridge_of(host: str, tenant: str, network: str, kind: str = "bridge") -> str:
    """A tenant network's bridge (or VXLAN device) on a host, found by its owner tag."""
    for line in sh(host, f"ip -o -d link show type {kind}").splitlines():
        if f"mcm:{tenant}/{network}" in line:
            return line.split(":")[1].strip().split("@")[0]
    raise BenchError(f"no {kind} of {tenant}/{network} on {host}")


def wait_libvirt(hosts: Iterable[str], seconds: float = 60) -> None:
    """Bounded wait until libvirtd answers on every host (another test may restart it)."""
    deadline = time.monotonic() + seconds
    for host in hosts:
        for _attempt in range(int(seconds) + 1):
            if sh(host, "virsh -q version >/dev/null 2>&1 && echo ok", check=False).strip():
                break
            if time.monotonic() > deadline:
                raise BenchError(f"libvirtd on {host} does not answer")
            time.sleep(1)


def retried_playbook(path: str | Path, *args: str, hosts: Iterable[str], timeout: float = 1800,
                     ) -> tuple[float, dict[str, Any]]:  # fmt: skip
    """checked_playbook, once more after a failure (a libvirtd restarted by another test
    of the shared lab), after waiting for libvirtd on ``hosts``."""
    hosts = list(hosts)
    wait_libvirt(hosts)
    try:
        return checked_playbook(path, *args, timeout=timeout)
    except BenchError as exc:
        print(f"retrying once: {exc}"[:400], flush=True)
        time.sleep(5)
        wait_libvirt(hosts)
        return checked_playbook(path, *args, timeout=timeout)


def with_retries(fn: Callable[[], T], what: str, hosts: Iterable[str], *, tries: int = 3,
                 errors: list[str] | None = None) -> T:  # fmt: skip
    """fn(), again after a BenchError (up to ``tries`` times in all), each time after waiting
    for libvirtd on ``hosts``: other tests of the shared lab restart libvirtd. The errors
    met go to ``errors`` (kept in the result: a retried figure is recognisable)."""
    hosts = list(hosts)
    for attempt in range(1, tries + 1):
        wait_libvirt(hosts)
        try:
            return fn()
        except BenchError as exc:
            if errors is not None:
                errors.append(f"{what}: {exc}"[:600])
            if attempt == tries:
                raise
            print(f"{what}: retrying after: {exc}"[:300], flush=True)
            time.sleep(5)
    raise BenchError(f"{what}: no attempt made")


def delete_tenant(tenant: str) -> None:
    """delete_infra.yml for one tenant (bounded; reports but does not raise)."""
    _secs, rc, data = playbook("playbooks/delete_infra.yml", "-e", f"tenant={tenant}",
                               timeout=900)  # fmt: skip
    if rc != 0:
        print(f"cleanup: delete_infra.yml -e tenant={tenant} failed: {failures(data)[:3]}",
              flush=True)  # fmt: skip


_LIBVIRT_CLEANUP = r"""
import libvirt
conn = libvirt.open("qemu:///system")
for dom in conn.listAllDomains(0):
    if dom.name().startswith(@PREFIX@):
        if dom.isActive():
            dom.destroy()
        if dom.isPersistent():
            dom.undefine()
for pool in conn.listAllStoragePools(0):
    if pool.isActive():
        pool.refresh(0)
        for vol in pool.listAllVolumes(0):
            if vol.name().startswith(@PREFIX@):
                vol.delete(0)
"""


def libvirt_cleanup(prefix: str) -> str:
    """Python run on a lab host: removes every domain and volume named ``prefix``*."""
    return _LIBVIRT_CLEANUP.replace("@PREFIX@", json.dumps(prefix))


def domains_on(hosts: Iterable[str], prefix: str) -> dict[str, dict[str, str]]:
    """{host: {domain: state}} of the domains whose name starts with ``prefix``."""
    out: dict[str, dict[str, str]] = {}
    for host in hosts:
        text = sh(host, "virsh list --all | tail -n +3")
        found = {}
        for line in text.splitlines():
            fields = line.split(None, 2)
            if len(fields) == 3 and fields[1].startswith(prefix):
                found[fields[1]] = fields[2].strip()
        out[host] = found
    return out


# --------------------------------------------------------------------------- ping client
class PingClient:
    """A namespace with a veth on a tenant bridge, pinging every 10 ms in the background.

    Every ping is bounded (-c and -w); stop() sends SIGINT (ping prints its summary) and
    waits a bounded time. remove() deletes the namespace, the veth and the files.
    """

    def __init__(self, host: str, ns: str, legs: tuple[str, str], bridge: str, address: str,
                 *, gateway: str | None = None) -> None:  # fmt: skip
        self.host, self.ns, self.legs, self.bridge = host, ns, legs, bridge
        self.address, self.gateway = address, gateway
        self.out, self.pidfile = f"/tmp/{ns}.ping.out", f"/tmp/{ns}.ping.pid"

    def add(self) -> None:
        outer, inner = self.legs
        cmds = [f"ip netns add {self.ns}",
                f"ip link add {outer} type veth peer name {inner} netns {self.ns}",
                f"ip link set {outer} master {self.bridge} mtu 1450 up",
                f"ip -n {self.ns} link set lo up",
                f"ip -n {self.ns} link set {inner} mtu 1450 up",
                f"ip -n {self.ns} addr add {self.address} dev {inner}"]  # fmt: skip
        if self.gateway:
            cmds.append(f"ip -n {self.ns} route add default via {self.gateway}")
        sh(self.host, " && ".join(cmds))

    def answers(self, ip: str, attempts: int = 20) -> bool:
        """Bounded: up to ``attempts`` rounds of 3 pings."""
        for _attempt in range(attempts):
            out = sh(self.host, f"ip netns exec {self.ns} ping -n -c 3 -i 0.2 -W 1 {ip} "
                                ">/dev/null && echo yes || echo no")  # fmt: skip
            if out.strip() == "yes":
                return True
            time.sleep(1)
        return False

    def start(self, ip: str, interval: float = 0.01, count: int = 30000,
              deadline: int = 300) -> None:  # fmt: skip
        script = (f"ping -D -O -n -i {interval} -c {count} -w {deadline} {ip} >{self.out} 2>&1 "
                  f"</dev/null & echo $! >{self.pidfile}")  # fmt: skip
        sh(self.host, f"rm -f {self.out}; ip netns exec {self.ns} sh -c '{script}'")
        if sh(self.host, f"kill -0 $(cat {self.pidfile}) && echo ok", check=False).strip() != "ok":
            raise BenchError(f"the ping from {self.ns} on {self.host} did not start")

    def stop(self) -> dict[str, Any]:
        """SIGINT, a bounded wait for the summary; the parsed output."""
        sh(self.host, f"test -s {self.pidfile} && kill -INT $(cat {self.pidfile})", check=False)
        for _attempt in range(50):
            alive = sh(self.host, f"kill -0 $(cat {self.pidfile}) 2>/dev/null && echo y",
                       check=False).strip()  # fmt: skip
            if alive != "y":
                break
            time.sleep(0.1)
        else:
            sh(self.host, f"kill -KILL $(cat {self.pidfile})", check=False)
        return parse_ping(sh(self.host, f"cat {self.out}", check=False))

    def remove(self) -> None:
        sh(self.host, f"test -s {self.pidfile} && kill -KILL $(cat {self.pidfile}); "
                      f"rm -f {self.out} {self.pidfile}; ip link del {self.legs[0]}; "
                      f"ip netns del {self.ns}; true", check=False)  # fmt: skip


def parse_ping(text: str) -> dict[str, Any]:
    """iputils ping -D -O output: transmitted/received, the pings lost between the first
    and the last reply (and before the first), the longest gap between two replies (ms),
    and the epoch time of the last reply."""
    replies: dict[int, float] = {}
    for line in text.splitlines():
        match = PING_RE.match(line)
        if match:
            replies.setdefault(int(match.group(2)), float(match.group(1)))
    found = SUMMARY_RE.search(text)
    if not replies:
        return {"transmitted": int(found.group(1)) if found else 0, "received": 0,
                "lost": None, "runs": [], "max_gap_ms": None, "last_reply": None}  # fmt: skip
    seqs = sorted(replies)
    runs = []
    gap = 0.0
    for before, after in itertools.pairwise(seqs):
        gap = max(gap, replies[after] - replies[before])
        if after - before > 1:
            runs.append([before + 1, after - 1, round((replies[after] - replies[before]) * 1000)])
    return {
        "transmitted": int(found.group(1)) if found else None,
        "received": int(found.group(2)) if found else len(seqs),
        "first_seq": seqs[0],
        "last_seq": seqs[-1],
        "lost": sum(last - first + 1 for first, last, _ms in runs) + seqs[0] - 1,
        "runs": runs,
        "max_gap_ms": round(gap * 1000, 1),
        "last_reply": replies[seqs[-1]],
    }
