"""The fault and soak matrix beyond `make test`'s representative cases (`make faults`; marker
``matrix``, deselected unless pytest runs with ``--matrix``). docs/lab.md records the last
results with their date.

Same tenant and helpers as test_migration_faults_lab.py (tenant mft on cloud_a, moved to
mcm-b1 at 2 MiB/s, each fault removed by its fixture also after a failure):

- the destination's libvirtd killed during the disk mirror (k1, 12 MiB of random data on
  its disk), where make test kills it as soon as the job runs;
- the link cut as soon as the job runs (m1), where make test cuts it during the disk
  mirror and during the memory copy;
- a soak: c1 moved live-block between the clouds and back ``MCM_SOAK_ROUNDS`` times (3 by
  default), then cold there and back; every move keeps its IP, MAC and disk, the ledger
  row is completed, and nothing is left behind (volumes, domains, namespaces, dnsmasq).
"""

from __future__ import annotations

import json
import os
import time

import pytest
import test_migration_faults_lab as faults
from test_migration_faults_lab import (
    DST,
    KERNEL_TCP_RETRIES,
    NFT_TABLE,
    SPEC_IPS,
    TENANT,
    THROTTLED,
    answers,
    assert_rerun_moves,
    assert_rolled_back,
    background_migration,
    cut_link,
    disk_marker,
    finish,
    mac_on,
    migrate,
    prepare_guest,
    start_libvirtd,
    wait_for_phase,
)

from conftest import console
from migration_lab import ledger, playbook, where

# that module's fixtures, for this module's tests (the tenant is made again for it)
env = faults.env
libvirtd_back = faults.libvirtd_back
link_back = faults.link_back
kernel_tcp_retries = faults.kernel_tcp_retries

pytestmark = [pytest.mark.lab, pytest.mark.matrix]

SOAK_ROUNDS = int(os.environ.get("MCM_SOAK_ROUNDS", "3"))


def test_destination_libvirtd_killed_during_the_disk_mirror(env, hosts, libvirtd_back):
    vm, src = "k1", "mcm-a1"
    domain = f"{TENANT}-{vm}"
    marker = prepare_guest(src, domain, memory_mib=0, disk_mib=12)
    mac = mac_on(hosts[src], domain)
    with background_migration(env, vm, *THROTTLED) as proc:
        wait_for_phase(proc, hosts[src], domain, "disk")
        assert hosts[DST].run("pkill -KILL -x libvirtd").rc == 0
        start_libvirtd(hosts[DST], libvirtd_back)
        rc, data, _err = finish(proc)
    assert_rolled_back(env, hosts, vm, src, rc=rc, data=data, mac=mac, marker=marker,
                       reason="migration failed")  # fmt: skip
    assert_rerun_moves(env, hosts, vm, marker, mac)


@pytest.mark.usefixtures("link_back", "kernel_tcp_retries")
def test_link_cut_as_soon_as_the_job_runs(env, hosts, topology):
    vm, src = "m1", "mcm-a2"
    domain = f"{TENANT}-{vm}"
    marker = prepare_guest(src, domain, memory_mib=0, disk_mib=12)
    mac = mac_on(hosts[src], domain)
    with background_migration(env, vm, *THROTTLED, *KERNEL_TCP_RETRIES) as proc:
        try:
            wait_for_phase(proc, hosts[src], domain, "job")
            cut_link(hosts[DST], str(topology.host(src).wan_ip))
            rc, data, _err = finish(proc)
        finally:  # the link back before the playbook is killed
            hosts[DST].run("nft delete table inet %s", NFT_TABLE)
    assert_rolled_back(env, hosts, vm, src, rc=rc, data=data, mac=mac, marker=marker,
                       reason="the destination stopped answering")  # fmt: skip
    assert_rerun_moves(env, hosts, vm, marker, mac)


def leftovers(hosts) -> dict[str, list[str]]:
    """What a host keeps of the tenant besides the VM itself: volumes, namespaces and
    dnsmasq processes per host."""
    out = {}
    for name, host in hosts.items():
        vols = host.run("ls /var/lib/mcm/vms").stdout.split()
        netns = host.run("ip netns list").stdout
        dnsmasq = host.run("pgrep -af dnsmasq").stdout
        out[name] = sorted([v for v in vols if v.startswith(f"{TENANT}-")]
                           + [f"netns {n.split()[0]}" for n in netns.splitlines() if TENANT in n]
                           + [f"dnsmasq {line.split()[0]}" for line in dnsmasq.splitlines()
                              if f"{TENANT}." in line])  # fmt: skip
    return out


def test_soak_back_and_forth(env, hosts):
    """c1 live-block to cloud_b and back SOAK_ROUNDS times, then cold there and back (each
    cold row confirmed); what the hosts keep is the same after as before."""
    vm, home = "c1", "mcm-a2"
    domain = f"{TENANT}-{vm}"
    marker = f"{domain}-soak-{time.time_ns()}"
    [wrote] = console(home, domain, f"echo {marker} > /mnt/disk/marker && sync")
    assert wrote["rc"] == 0, wrote
    mac = mac_on(hosts[home], domain)
    before = leftovers(hosts)
    took: list[float] = []
    moves = [("cloud_b", DST, ()), ("cloud_a", home, ("-e", f"host={home}"))]
    for _round in range(SOAK_ROUNDS):
        for cloud, host, extra in moves:
            started = time.monotonic()
            rc, data = migrate(env, vm, "-e", f"to={cloud}", *extra)
            took.append(time.monotonic() - started)
            assert rc == 0, json.dumps(data)[-3000:]
            assert where(hosts, domain) == {host: "running"}
            assert mac_on(hosts[host], domain) == mac
            assert answers(hosts, SPEC_IPS[vm])
            assert ledger(env)[-1]["status"] == "completed"
    for cloud, host, extra in moves:
        rc, data = migrate(env, vm, "-e", f"to={cloud}", "-e", "mode=cold",
                           "-e", "shutdown_timeout=5", *extra)  # fmt: skip
        assert rc == 0, json.dumps(data)[-3000:]
        row = ledger(env)[-1]
        assert row["status"] == "finished" and row["mode"] == "cold", row
        rc, data = playbook(env, "confirm_migration.yml", "-e", f"id={row['id']}")
        assert rc == 0, json.dumps(data)[-3000:]
        assert where(hosts, domain) == {host: "running"}
        assert answers(hosts, SPEC_IPS[vm])
    assert disk_marker(home, domain) == marker
    assert leftovers(hosts) == before
    print(f"\nsoak: {len(took)} live-block moves, {min(took):.1f}-{max(took):.1f} s each")
