"""Faults in the middle of a live-block migration through migrate_instance.yml, on the lab
(issue 5): the destination's libvirtd killed, the inter-cloud link cut, the destination's
disk full. After each: the playbook fails and says why, the VM still runs on its source
with its disk, MAC and IP, the destination has no domain and no volume of it, the ledger
row is failed with the error; with the fault removed, the same migration succeeds.

Tenant mft: net 10.38.1.0/24 on cloud_a with k1 (10.38.1.10, mcm-a1), c1 (10.38.1.11,
mcm-a2), d1 (10.38.1.12, mcm-a1), m1 (10.38.1.13, mcm-a2) and v1 (10.38.1.14, mcm-a1),
one VM per fault (the link is cut twice: during the disk mirror, with m1, and during the
memory copy, with c1; v1 fails the verification after its cutover), each moved to
cloud_b (mcm-b1).
To make a migration last long enough to be hit, the guest's memory holds 40 MiB of random
data and the migration runs at 2 MiB/s; the fault is injected once libvirt's job runs on
the source (virsh domjobinfo). Every fault is removed by its fixture, also after a
failure: libvirtd started again, the nftables table mft_fault deleted, the tmpfs over the
destination's pool directory unmounted. The module fixture removes the tenant with
delete_infra.yml and then any mft-* domain or volume left on a host.

Other tenants share the lab: the libvirtd of mcm-b1 is down for about 5 s, the link cut
drops only TCP between the source's and mcm-b1's WAN addresses (VXLAN of other tenants
goes on), and the tmpfs is over mcm-b1's pool directory for the duration of two playbook
runs at most.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from collections.abc import Iterator

import pytest

from conftest import BIN, ROOT, console, lab_env, libvirt_cleanup, libvirt_probe
from migration_lab import ledger, placement, tenant_env, where

pytestmark = pytest.mark.lab

TENANT = "mft"
SPEC = {
    "tenants": [
        {
            "name": TENANT,
            "networks": [
                {
                    "name": "net",
                    "cloud": "cloud_a",
                    "subnet": "10.38.1.0/24",
                    "vms": [
                        {"name": "k1", "vcpus": 1, "memory": "128MiB", "disk": "64MiB",
                         "ip": "10.38.1.10", "host": "mcm-a1"},
                        {"name": "c1", "vcpus": 1, "memory": "128MiB", "disk": "64MiB",
                         "ip": "10.38.1.11", "host": "mcm-a2"},
                        {"name": "d1", "vcpus": 1, "memory": "128MiB", "disk": "64MiB",
                         "ip": "10.38.1.12", "host": "mcm-a1"},
                        {"name": "m1", "vcpus": 1, "memory": "128MiB", "disk": "64MiB",
                         "ip": "10.38.1.13", "host": "mcm-a2"},
                        {"name": "v1", "vcpus": 1, "memory": "128MiB", "disk": "64MiB",
                         "ip": "10.38.1.14", "host": "mcm-a1"},
                    ],
                },
            ],
        }
    ]
}  # fmt: skip
DST = "mcm-b1"
DHCP_NS = "qdhcp-mft.net"
POOL_DIR = "/var/lib/mcm/vms"
FILL_MIB = 40  # random data in the guest's memory
BANDWIDTH_MIB = 2
# a migration slow enough to be hit by a fault, given 300 s to run
THROTTLED = ("-e", f"bandwidth_mib={BANDWIDTH_MIB}", "-e", "timeout=300")
# the link-cut tests: tcp_retries2 left as the kernel has it (the fixture kernel_tcp_retries)
KERNEL_TCP_RETRIES = ("-e", '{"migration_tls_tcp_retries2": null}')
NFT_TABLE = "mft_fault"
TMPFS = "mft-full"  # the source name of the tmpfs mounted over the destination's pool
MEASURED: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="module")
def env(hosts, topology, tmp_path_factory):
    try:
        with tenant_env(tmp_path_factory.mktemp(TENANT), SPEC, TENANT, hosts) as env:
            yield {**env, "topology": topology}
    finally:
        for name in ("mcm-a1", "mcm-a2", "mcm-b1"):
            libvirt_cleanup(hosts[name], f"{TENANT}-")


# --------------------------------------------------------------------------- helpers


def mac_on(host, domain: str) -> str:
    return host.run("virsh domiflist %s", domain).stdout.split()[-1]


def answers(hosts, ip: str) -> bool:
    """The IP answers a ping from the tenant's DHCP namespace (wherever the VM runs)."""
    for host in hosts.values():
        if DHCP_NS in host.run("ip netns list").stdout:
            return host.run("ip netns exec %s ping -c 3 -i 0.3 -W 1 %s", DHCP_NS, ip).rc == 0
    raise AssertionError(f"no host has the namespace {DHCP_NS}")


def disk_marker(host: str, domain: str) -> str:
    [out] = console(host, domain, "cat /mnt/disk/marker")
    return out["out"]


def prepare_guest(src: str, domain: str, memory_mib: int = FILL_MIB, disk_mib: int = 0) -> str:
    """A marker on the guest's disk, ``memory_mib`` MiB of random data in its memory (and
    ``disk_mib`` MiB on its disk, for a disk mirror that lasts; not both: 128 MiB of guest
    memory hold the initramfs, the tmpfs and the page cache); the marker."""
    marker = f"{domain}-marker-{time.time_ns()}"
    [wrote, *filled] = console(
        src, domain, f"echo {marker} > /mnt/disk/marker && sync",
        f"head -c {memory_mib * 1048576} /dev/urandom > /dev/shm/fill; echo ok",
        # 1 MiB writes: the guest mounts its disk with -o sync (small writes crawl there)
        f"dd if=/dev/urandom of=/mnt/disk/fill bs=1048576 count={disk_mib} && sync", timeout=300,
    )  # fmt: skip
    assert wrote["rc"] == 0 and all(f["rc"] == 0 for f in filled), (wrote, filled)
    return marker


def start_migration(env, vm: str, *args: str) -> subprocess.Popen:
    """migrate_instance.yml in the background (JSON callback on stdout)."""
    environ = lab_env()
    environ["ANSIBLE_STDOUT_CALLBACK"] = "ansible.posix.json"
    environ["ANSIBLE_LOAD_CALLBACK_PLUGINS"] = "1"
    argv = [str(BIN / "ansible-playbook"), "playbooks/migrate_instance.yml", *env["extra"],
            "-e", f"instance={vm}", "-e", f"tenant={TENANT}", "-e", "to=cloud_b",
            "-e", "mode=live-block", *args]  # fmt: skip
    return subprocess.Popen(argv, cwd=ROOT, env=environ, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


@contextlib.contextmanager
def background_migration(env, vm: str, *args: str) -> Iterator[subprocess.Popen]:
    """start_migration's process, killed on the way out if it still runs (a failed test)."""
    proc = start_migration(env, vm, *args)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)


def finish(proc: subprocess.Popen, timeout: float = 540) -> tuple[int, dict, str]:
    """Wait (bounded) for a playbook started by start_migration: rc, JSON, stderr."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"the playbook did not end within {timeout} s:\n{err[-3000:]}")
    try:
        data = json.loads(out)
    except json.JSONDecodeError:
        pytest.fail(f"no JSON (rc {proc.returncode}):\n{out[-3000:]}\n{err[-3000:]}")
    return proc.returncode, data, err


def migrate(env, vm: str, *args: str) -> tuple[int, dict]:
    rc, data, _err = finish(start_migration(env, vm, *args))
    return rc, data


def wait_for_phase(proc: subprocess.Popen, host, domain: str, phase: str,
                   timeout: float = 300) -> None:  # fmt: skip
    """Until the migration job of ``domain`` on ``host`` is in ``phase``: "job" (it runs),
    "disk" (it runs and has not copied memory yet: the disk mirror) or "memory" (it copies
    memory: its disk mirror is done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _out, err = proc.communicate(timeout=30)
            pytest.fail(f"the playbook ended (rc {proc.returncode}) before the {phase} phase:\n"
                        f"{err[-3000:]}")  # fmt: skip
        info = host.run("virsh domjobinfo %s", domain).stdout
        memory = re.search(r"^Memory processed:\s+([\d.]+)", info, re.M)
        copying = bool(memory and float(memory.group(1)) > 0)
        if "Unbounded" in info and (phase == "job" or copying == (phase == "memory")):
            return
        time.sleep(0.5)
    pytest.fail(f"the migration of {domain} did not reach its {phase} phase within {timeout} s")


def stop_message(data: dict, name: str = "Stop here") -> str:
    """The message of the playbook's final 'Stop here' task (or another task ``name``)."""
    for play in data["plays"]:
        for task in play["tasks"]:
            if task["task"]["name"] == name:
                return task["hosts"]["localhost"]["msg"]
    raise AssertionError(f"the playbook did not reach {name!r}:\n" + json.dumps(data)[-3000:])


def warnings_of(data: dict, err: str, text: str) -> list[str]:
    """The warnings that contain ``text`` (printed: what the module did), from the task
    results and from stderr."""
    found = [warning for play in data["plays"] for task in play["tasks"]
             for result in task["hosts"].values() for warning in result.get("warnings") or ()
             if text in warning]  # fmt: skip
    return found + [line for line in err.splitlines() if "WARNING" in line and text in line]


def assert_rolled_back(env, hosts, vm: str, src: str, *, rc: int, data: dict, mac: str,
                       marker: str, reason: str) -> dict:  # fmt: skip
    """The failed migration left the VM as it was; the ledger says failed. The row."""
    domain = f"{TENANT}-{vm}"
    assert rc != 0
    message = stop_message(data)
    assert f"of {TENANT}/{vm} failed" in message and "run on their source host" in message
    assert reason.lower() in message.lower(), message
    assert where(hosts, domain) == {src: "running"}, message
    assert mac_on(hosts[src], domain) == mac
    found = libvirt_probe(hosts[DST], f"{TENANT}-")
    assert domain not in found["domains"], found["domains"].keys()
    assert not [p for p in found["volumes"] if f"/{domain}." in p], found["volumes"]
    assert hosts[DST].run("test -e %s/%s.qcow2", POOL_DIR, domain).rc != 0
    assert answers(hosts, SPEC_IPS[vm])
    assert disk_marker(src, domain) == marker
    row = ledger(env)[-1]
    assert row["status"] == "failed" and row["object"] == f"{TENANT}/{vm}", row
    assert reason.lower() in row["error"].lower(), row
    [result] = row["results"]
    assert result["status"] == "failed" and result["error"], result
    return row


def assert_rerun_moves(env, hosts, vm: str, marker: str, mac: str) -> float:
    """Without the fault the same migration succeeds; its wall time."""
    domain = f"{TENANT}-{vm}"
    started = time.monotonic()
    rc, data = migrate(env, vm)
    took = time.monotonic() - started
    assert rc == 0, json.dumps(data)[-3000:]
    assert where(hosts, domain) == {DST: "running"}
    assert mac_on(hosts[DST], domain) == mac
    assert answers(hosts, SPEC_IPS[vm])
    assert disk_marker(DST, domain) == marker
    row = ledger(env)[-1]
    assert row["status"] == "completed" and row["object"] == f"{TENANT}/{vm}", row
    return took


SPEC_IPS = {vm["name"]: vm["ip"] for vm in SPEC["tenants"][0]["networks"][0]["vms"]}


# --------------------------------------------------------------------------- faults


def libvirtd_running(host) -> bool:
    return host.run("pgrep -x libvirtd").rc == 0


def start_libvirtd(host, args: str = "libvirtd -d -l") -> None:
    """As the lab's node-init (a service manager would): start it, wait until it answers."""
    if not libvirtd_running(host):
        assert host.run(args).rc == 0
    for _attempt in range(30):
        if host.run("virsh -c qemu:///system version").rc == 0:
            return
        time.sleep(1)
    raise AssertionError("libvirtd does not answer 30 s after its start")


@pytest.fixture
def libvirtd_back(hosts):
    host = hosts[DST]
    args = host.run("sh -c %s", "tr '\\0' ' ' < /proc/$(pgrep -xo libvirtd)/cmdline").stdout
    args = args.strip() or "libvirtd -d -l"
    try:
        yield args
    finally:
        start_libvirtd(host, args)


@pytest.fixture
def link_back(hosts):
    try:
        yield
    finally:
        hosts[DST].run("nft delete table inet %s", NFT_TABLE)


@pytest.fixture
def kernel_tcp_retries(hosts):
    """net.ipv4.tcp_retries2 at the kernel's default (15: a stalled TCP stream fails after
    about 15 minutes) on both ends for the time of the test, the lab's value after: what
    ends the migration is vm_migrate, not TCP giving up."""
    names = ("mcm-a2", DST)
    before = {name: hosts[name].run("sysctl -n net.ipv4.tcp_retries2").stdout.strip()
              for name in names}  # fmt: skip
    try:
        for name in names:
            assert hosts[name].run("sysctl -w net.ipv4.tcp_retries2=15").rc == 0
        yield
    finally:
        for name, value in before.items():
            hosts[name].run("sysctl -w net.ipv4.tcp_retries2=%s", value)


def cut_link(host, peer: str) -> None:
    """Drop TCP between ``peer`` and this host on its WAN leg (eth1), both ways."""
    rules = (
        f"add table inet {NFT_TABLE}\n"
        f"add chain inet {NFT_TABLE} in {{ type filter hook input priority -10; }}\n"
        f"add chain inet {NFT_TABLE} out {{ type filter hook output priority -10; }}\n"
        f'add rule inet {NFT_TABLE} in iifname "eth1" ip saddr {peer} meta l4proto tcp drop\n'
        f'add rule inet {NFT_TABLE} out oifname "eth1" ip daddr {peer} meta l4proto tcp drop\n'
    )
    result = host.run("sh -c %s", f"printf '%s' '{rules}' | nft -f -")
    assert result.rc == 0, result.stderr


def pool_mounted(host) -> bool:
    mounts = host.run("cat /proc/self/mounts").stdout.splitlines()
    return any(line.split()[:2] == [TMPFS, POOL_DIR] for line in mounts)


def unmount_pool(host) -> None:
    for _attempt in range(10):
        if not pool_mounted(host):
            break
        host.run("rm -f %s/%s-filler", POOL_DIR, TENANT)
        if host.run("umount %s", POOL_DIR).rc != 0:
            time.sleep(2)
    if pool_mounted(host):
        host.run("umount -l %s", POOL_DIR)
    host.run("virsh pool-refresh mcm")
    assert not pool_mounted(host)


@pytest.fixture
def pool_back(hosts):
    try:
        yield
    finally:
        unmount_pool(hosts[DST])


def mount_small_pool(host, size: str) -> None:
    host.run("mkdir -p %s", POOL_DIR)
    if pool_mounted(host):
        result = host.run("mount -o remount,size=%s %s", size, POOL_DIR)
    else:
        result = host.run("mount -t tmpfs -o size=%s,mode=0755 %s %s", size, TMPFS, POOL_DIR)
    assert result.rc == 0, result.stderr
    assert host.run("virsh pool-refresh mcm").rc == 0


# --------------------------------------------------------------------------- tests


def test_destination_libvirtd_killed_mid_migration(env, hosts, libvirtd_back):
    vm, src, domain = "k1", "mcm-a1", f"{TENANT}-k1"
    started = time.monotonic()
    marker = prepare_guest(src, domain)
    mac = mac_on(hosts[src], domain)
    with background_migration(env, vm, *THROTTLED) as proc:
        wait_for_phase(proc, hosts[src], domain, "job")
        assert hosts[DST].run("pkill -KILL -x libvirtd").rc == 0
        time.sleep(5)
        start_libvirtd(hosts[DST], libvirtd_back)
        rc, data, _err = finish(proc)
    failed_at = time.monotonic()
    assert_rolled_back(env, hosts, vm, src, rc=rc, data=data, mac=mac, marker=marker,
                       reason="migration failed")  # fmt: skip
    rerun = assert_rerun_moves(env, hosts, vm, marker, mac)
    MEASURED["libvirtd"] = {"fault_run_s": round(failed_at - started, 1),
                            "rerun_s": round(rerun, 1),
                            "total_s": round(time.monotonic() - started, 1)}  # fmt: skip
    print("\nfault test timings (libvirtd):", json.dumps(MEASURED["libvirtd"]))


@pytest.mark.parametrize(("vm", "phase"), [("m1", "disk"), ("c1", "memory")])
@pytest.mark.usefixtures("link_back", "kernel_tcp_retries")
def test_link_cut_mid_migration(env, hosts, vm, phase):
    """The link cut during the disk mirror (12 MiB of random data on the guest's disk, none
    in its memory, at 2 MiB/s: about 6 s of it) or during the memory copy; either stalls
    the stream in qemu (a TCP send, or an NBD read with nothing left to send). TCP would
    give up after ~15 min, or never: vm_migrate sees the destination stop answering
    (keepalive), aborts the job and cuts the source qemu's streams (docs/migration.md,
    Faults). The playbook leaves tcp_retries2 as it is (null). Over 60 s (90-130 s): the
    guest is filled first (random data written under TCG), the throttled job runs until
    the phase, the keepalive takes ~20 s to see the silent peer, then the re-run moves the
    VM."""
    src, domain = "mcm-a2", f"{TENANT}-{vm}"
    started = time.monotonic()
    marker = (prepare_guest(src, domain, memory_mib=0, disk_mib=12) if phase == "disk"
              else prepare_guest(src, domain))  # fmt: skip
    mac = mac_on(hosts[src], domain)
    peer = str(env["topology"].host(src).wan_ip)
    with background_migration(env, vm, *THROTTLED, *KERNEL_TCP_RETRIES) as proc:
        try:
            wait_for_phase(proc, hosts[src], domain, phase)
            cut_link(hosts[DST], peer)
            info = hosts[src].run("virsh domjobinfo %s", domain).stdout
            if phase == "disk":
                memory = re.search(r"^Memory processed:\s+([\d.]+)", info, re.M)
                assert not memory or float(memory.group(1)) == 0, (
                    f"cut after the disk mirror:\n{info}")  # fmt: skip
            rc, data, err = finish(proc)
        finally:  # the link back before the playbook is killed
            hosts[DST].run("nft delete table inet %s", NFT_TABLE)
    failed_at = time.monotonic()
    assert hosts[src].run("sysctl -n net.ipv4.tcp_retries2").stdout.strip() == "15"
    assert_rolled_back(env, hosts, vm, src, rc=rc, data=data, mac=mac, marker=marker,
                       reason="migration failed: the destination stopped answering")  # fmt: skip
    print("\nvm_migrate's warnings:", *warnings_of(data, err, f"VM {domain}"), sep="\n  ")
    rerun = assert_rerun_moves(env, hosts, vm, marker, mac)
    MEASURED[f"link-{phase}"] = {"fault_run_s": round(failed_at - started, 1),
                                 "rerun_s": round(rerun, 1),
                                 "total_s": round(time.monotonic() - started, 1)}  # fmt: skip
    print(f"\nfault test timings (link cut, {phase}):", json.dumps(MEASURED[f"link-{phase}"]))


def test_destination_disk_full(env, hosts, pool_back):
    """Too small from the start: refused by the preflight. Filled while the guest writes
    during the migration: the disk mirror fails. Then, unmounted, the move succeeds. Over
    60 s (about 80 s): three migrations, one throttled while the guest writes 24 MiB."""
    vm, src, domain = "d1", "mcm-a1", f"{TENANT}-d1"
    started = time.monotonic()
    marker = prepare_guest(src, domain)
    mac = mac_on(hosts[src], domain)

    mount_small_pool(hosts[DST], "64k")
    rc, data = migrate(env, vm)
    assert_rolled_back(env, hosts, vm, src, rc=rc, data=data, mac=mac, marker=marker,
                       reason="not enough space on the destination")  # fmt: skip
    refused_at = time.monotonic()

    # room for the disk as it is, not for 24 MiB more that the guest writes meanwhile
    mount_small_pool(hosts[DST], "8m")
    with background_migration(env, vm, *THROTTLED) as proc:
        wait_for_phase(proc, hosts[src], domain, "job")
        [wrote] = console(src, domain, "dd if=/dev/urandom of=/mnt/disk/fill bs=1M count=24 "
                          "2>&1; sync; rm -f /mnt/disk/fill; sync", timeout=240)  # fmt: skip
        assert wrote["rc"] == 0, wrote
        rc, data, _err = finish(proc)
    failed_at = time.monotonic()
    unmount_pool(hosts[DST])
    assert_rolled_back(env, hosts, vm, src, rc=rc, data=data, mac=mac, marker=marker,
                       reason="no space left on device")  # fmt: skip
    rerun = assert_rerun_moves(env, hosts, vm, marker, mac)
    MEASURED["disk"] = {"preflight_run_s": round(refused_at - started, 1),
                        "mid_copy_run_s": round(failed_at - refused_at, 1),
                        "rerun_s": round(rerun, 1),
                        "total_s": round(time.monotonic() - started, 1)}  # fmt: skip
    print("\nfault test timings (disk):", json.dumps(MEASURED["disk"]))


def test_failure_after_the_cutover_is_recorded(env, hosts):
    """A step after the cutover fails (v1's eth0 is down, so it does not answer the
    verification's ping from its DHCP namespace): the VM runs on the destination and the
    placement says so, the ledger row is failed with what failed (not left running, which
    would refuse every later migration of the tenant), and the next migration runs. Over
    60 s: the verification waits its 30 s for the silent guest before it fails, and a
    second migration moves the VM back."""
    vm, src, domain = "v1", "mcm-a1", f"{TENANT}-v1"
    mac = mac_on(hosts[src], domain)
    [down] = console(src, domain, "ip link set eth0 down")
    assert down["rc"] == 0, down
    try:
        rc, data = migrate(env, vm, "-e", "timeout=300")
        assert rc != 0, json.dumps(data)[-3000:]
        message = stop_message(data, "Stop here when a step after the cutover failed")
        assert "run on their destinations (placement recorded)" in message, message
        assert "answers from its DHCP namespace" in message, message
        assert where(hosts, domain) == {DST: "running"}
        assert mac_on(hosts[DST], domain) == mac
        row = ledger(env)[-1]
        assert row["status"] == "failed" and row["object"] == f"{TENANT}/{vm}", row
        assert row["error"].startswith("after the cutover (the VMs run on their destinations)"), row
        assert placement(env)["vms"][f"{TENANT}/{vm}"] == DST
        assert f"{src}:{POOL_DIR}/{domain}.qcow2" in message, message  # kept, and said so
    finally:
        for name in (src, DST):
            if domain in hosts[name].run("virsh list --name").stdout.split():
                console(name, domain, "ip link set eth0 up", "kill -USR1 $(pidof udhcpc)")
    assert answers(hosts, SPEC_IPS[vm])
    # as the message says: the source's disk is deleted once the VM is fine
    assert hosts[src].run("virsh vol-delete %s/%s.qcow2", POOL_DIR, domain).rc == 0
    # the failed row does not refuse the next migration of the tenant: v1 goes back
    rc, data = migrate(env, vm, "-e", "to=cloud_a", "-e", f"host={src}")
    assert rc == 0, json.dumps(data)[-3000:]
    assert where(hosts, domain) == {src: "running"}
    assert ledger(env)[-1]["status"] == "completed"
