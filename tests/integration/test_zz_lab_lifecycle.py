"""Runs last: `lab down` leaves nothing behind, and `lab up` brings it back quickly."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lab
from conftest import ROOT, run


def lab_cmd(command: str) -> None:
    proc = run(["python", str(ROOT / "lab" / "lab.py"), command], timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_down_leaves_nothing_and_up_restores(topology):
    lab_cmd("down")
    try:
        ps = run(["podman", "ps", "--all", "--format", "{{.Names}}"]).stdout.split()
        assert not set(ps) & set(topology.host_names)
        nets = run(["podman", "network", "ls", "--format", "{{.Name}}"]).stdout.split()
        assert not {n.name for n in topology.networks} & set(nets)
        assert not list(Path("/etc/cni/net.d").glob("mcm-*"))
        links = json.loads(run(["ip", "-j", "link", "show"]).stdout)
        bridges = {n.bridge for n in topology.networks}
        assert not [ln["ifname"] for ln in links if ln["ifname"] in bridges]
        assert not [ln["ifname"] for ln in links if ln["ifname"].startswith(("mcm", "veth"))]
        netns = run(["ip", "netns", "list"]).stdout
        assert "mcm" not in netns
        procs = run(["ps", "-eo", "args"]).stdout
        for name in topology.host_names:
            assert f" -n {name} " not in procs, f"a conmon of {name} is still running"
        assert "guest=mcm-" not in procs, "a lab guest's qemu is still running"
        assert not (ROOT / ".lab").exists()
    finally:
        started = time.monotonic()
        lab_cmd("up")
    # with images cached the lab comes back well inside a minute
    assert time.monotonic() - started < 60
    for name in topology.host_names:
        assert lab.container_state(name)["State"]["Running"]
