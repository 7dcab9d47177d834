"""vm_migrate on the lab: live-block mcm-a1 -> mcm-b1 with a marker written on the guest's
disk and read back on the destination, live of a VM whose disk is in the shared directory,
cold mcm-b1 -> mcm-a1 with checksums, check mode, and failures that leave the VM running
on the source.

Everything is named so that nothing else on the lab is touched: domains and volumes
mgtest-*, bridge mgtest-br on mcm-a1 and mcm-b1, console files
/var/lib/mcm/console/mgtest-*, the shared disk /var/lib/mcm/shared/mgtest-*. At most two
guests run at a time; the teardown destroys and undefines every mgtest-* domain and
deletes every mgtest-* volume and file on both hosts, also after a failure.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid

import pytest
import report
import yaml

from conftest import (
    IMAGES,
    ROOT,
    call,
    cleanup_script,
    console,
    host_python,
    lab_guest,
    libvirt_probe,
)

pytestmark = pytest.mark.lab

SRC, DST = "mcm-a1", "mcm-b1"
ADDRESS = {"mcm-a1": "172.30.0.11", "mcm-b1": "172.30.0.21"}
UNUSED_ADDRESS = "172.30.0.99"
BRIDGE = "mgtest-br"
CONSOLE_DIR = "/var/lib/mcm/console"
SHARED = "/var/lib/mcm/shared"
LOCAL_VM, SHARED_VM = "mgtest-v1", "mgtest-v2"
SHARED_DISK = f"{SHARED}/{SHARED_VM}.qcow2"
TLS_PLAYBOOK = ROOT / "playbooks" / "setup_migration_tls.yml"

CLEANUP = cleanup_script("mgtest-")


def probe(host) -> dict:
    return libvirt_probe(host, "mgtest-")


def cleanup(host) -> None:
    host_python(host, CLEANUP)
    host.run("sh -c %s", f"rm -f {CONSOLE_DIR}/mgtest-* {SHARED}/mgtest-*")


def guest(name: str, **overrides) -> dict:
    return lab_guest(name, "mgtest", BRIDGE, CONSOLE_DIR, **overrides)


def migrate(tmp_path, name: str, src: str, dst: str, *flags: str, expect_failure=False,
            **args) -> dict:  # fmt: skip
    params = {"name": name, "destination": dst, "destination_address": ADDRESS[dst], **args}
    return call(tmp_path, src, "vm_migrate", params, *flags, expect_failure=expect_failure)


def tls_setup(*flags: str) -> subprocess.CompletedProcess:
    from conftest import BIN, run

    return run([str(BIN / "ansible-playbook"), str(TLS_PLAYBOOK), *flags], timeout=600)


def mac_of(xml: str) -> str:
    import xml.etree.ElementTree as ET

    return ET.fromstring(xml).find("./devices/interface/mac").get("address")


RUNNING, SHUTOFF = 1, 5
DROP_CACHES_CAT = "sync; echo 3 > /proc/sys/vm/drop_caches; cat /mnt/disk/marker"
# Shown in the terminal summary (report.py), not asserted on.
MEASURED: dict[str, dict] = report.collect("vm_migrate measured")


@pytest.fixture(scope="module")
def nodes(hosts):
    # Migrations are encrypted by default: the lab's CA, certificates and libvirt TLS first
    # (idempotent: on a lab that has them, nothing changes and libvirtd is not restarted).
    tls = tls_setup()
    assert tls.returncode == 0, tls.stdout[-3000:] + tls.stderr[-2000:]
    pair = {SRC: hosts[SRC], DST: hosts[DST]}
    for node in pair.values():
        cleanup(node)
        node.run("ip link del %s", BRIDGE)
        assert node.run("ip link add %s type bridge", BRIDGE).rc == 0
        assert node.run("ip link set %s mtu 1450 up", BRIDGE).rc == 0
        node.run("mkdir -p %s", CONSOLE_DIR)
    yield pair
    for node in pair.values():
        cleanup(node)
        node.run("ip link del %s", BRIDGE)
    for node in pair.values():
        left = probe(node)
        assert not left["domains"] and not left["volumes"], left


@pytest.fixture(scope="module")
def local_vm(nodes, tmp_path_factory):
    """mgtest-v1 running on mcm-a1 (disk in the mcm pool), a marker written on its disk."""
    tmp = tmp_path_factory.mktemp("local_vm")
    call(tmp, SRC, "vm", {"config": [guest(LOCAL_VM)]})
    [out] = console(SRC, LOCAL_VM, f"echo {LOCAL_VM}-marker > /mnt/disk/marker && sync")
    assert out["rc"] == 0, out
    return LOCAL_VM


def test_check_mode_plans_and_changes_nothing(nodes, local_vm, tmp_path):
    before = {h: probe(n) for h, n in nodes.items()}
    result = migrate(tmp_path, local_vm, SRC, DST, "--check", "--diff")
    assert result["changed"] and result["mode"] == "live-block"
    assert result["mode_reason"].startswith("auto")
    plan = result["plan"]
    assert plan["source"] == SRC and plan["destination"] == DST
    assert plan["migrate_uri"] == f"tcp://{ADDRESS[DST]}"
    assert plan["copied_disks"] == [f"/var/lib/mcm/vms/{local_vm}.qcow2"]
    assert plan["disk_bytes"] > 0 and plan["memory_bytes"] == 128 * 1024 * 1024
    assert plan["estimated_seconds"] > 0 and plan["bandwidth_assumed"]
    assert "VIR_MIGRATE_NON_SHARED_DISK" in plan["flags"]
    assert "VIR_MIGRATE_UNSAFE" not in plan["flags"] and not result["unsafe"]
    # encrypted by default: libvirt over TLS, qemu's stream with VIR_MIGRATE_TLS
    assert result["encryption"] == "tls" and plan["encryption"] == "tls"
    assert result["destination_uri"] == f"qemu+tls://{ADDRESS[DST]}/system"
    assert "VIR_MIGRATE_TLS" in plan["flags"]
    assert result["stats"] == {} and result["progress"] == []
    assert {h: probe(n) for h, n in nodes.items()} == before


def test_unreachable_destination_fails_cleanly(nodes, local_vm, tmp_path):
    result = call(tmp_path, SRC, "vm_migrate",
                  {"name": local_vm, "destination": DST, "destination_address": UNUSED_ADDRESS},
                  expect_failure=True)  # fmt: skip
    assert UNUSED_ADDRESS in result["msg"] and "destination_address" in result["msg"]
    assert result["phase"] == "connect" and result["source_state"] == "running"
    assert probe(nodes[SRC])["domains"][local_vm]["state"] == RUNNING
    assert probe(nodes[DST]) == {"domains": {}, "volumes": []}


def test_failed_stream_removes_the_precreated_volume(nodes, local_vm, tmp_path):
    # libvirtd of the destination answers, the migration stream goes nowhere
    result = call(tmp_path, SRC, "vm_migrate",
                  {"name": local_vm, "destination": DST, "destination_address": UNUSED_ADDRESS,
                   "destination_uri": f"qemu+tls://{ADDRESS[DST]}/system", "timeout": 60},
                  expect_failure=True)  # fmt: skip
    assert result["phase"] == "migrate", result
    assert result["source_state"] == "running" and not result["after_cutover"]
    assert any("deleted volume" in c for c in result["cleanup"]), result["cleanup"]
    assert probe(nodes[SRC])["domains"][local_vm]["state"] == RUNNING
    assert probe(nodes[DST]) == {"domains": {}, "volumes": []}
    [out] = console(SRC, local_vm, "cat /mnt/disk/marker")
    assert out["out"] == f"{local_vm}-marker"


def test_busy_domain_is_refused_and_a_timeout_aborts(nodes, local_vm, tmp_path):
    """A throttled migration (1 MiB/s) past its 10 s timeout is aborted; meanwhile a second
    migration of the same VM is refused; afterwards the VM still runs on the source."""
    import subprocess

    from conftest import BIN, lab_env

    # An idle guest's memory is mostly zero pages, which QEMU sends as flags: even at 1 MiB/s
    # such a migration can finish inside 10 s. 30 MiB of random data cannot (>= 30 s).
    [fill] = console(SRC, local_vm, "dd if=/dev/urandom of=/dev/shm/fill bs=1M count=30 2>&1")
    assert fill["rc"] == 0, fill
    play = [{"hosts": SRC, "gather_facts": False, "tasks": [{"name": "slow",
             "multicloud.migration.vm_migrate": {
                 "name": local_vm, "destination": DST, "destination_address": ADDRESS[DST],
                 "mode": "live-block", "bandwidth_mib": 1, "timeout": 10}}]}]  # fmt: skip
    path = tmp_path / "slow.yml"
    path.write_text(yaml.safe_dump(play, sort_keys=False))
    env = lab_env()
    env["ANSIBLE_STDOUT_CALLBACK"] = "ansible.posix.json"
    env["ANSIBLE_LOAD_CALLBACK_PLUGINS"] = "1"
    slow = subprocess.Popen([str(BIN / "ansible-playbook"), str(path)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        job = (f"import libvirt; print(libvirt.open('qemu:///system').lookupByName("
               f"{local_vm!r}).jobStats().get('type', 0))")  # fmt: skip
        for _attempt in range(60):  # bounded: the job starts within a few seconds
            if host_python(nodes[SRC], job).strip() != "0":
                break
            time.sleep(0.25)
        else:
            pytest.fail("the throttled migration never started a job")
        busy = migrate(tmp_path, local_vm, SRC, DST, expect_failure=True)
        assert "active job (migration out" in busy["msg"] and busy["phase"] == "preflight"
        out, err = slow.communicate(timeout=150)
    finally:
        if slow.poll() is None:
            slow.kill()
            slow.wait(timeout=30)
    result = json.loads(out)["plays"][0]["tasks"][0]["hosts"][SRC]
    assert result.get("failed") and "timeout of 10" in result["msg"], result.get("msg", err)
    assert result["source_state"] == "running" and not result["after_cutover"]
    assert result["progress"], "a 10 s job is sampled every second"
    assert probe(nodes[SRC])["domains"][local_vm]["state"] == RUNNING
    assert probe(nodes[DST]) == {"domains": {}, "volumes": []}
    [freed] = console(SRC, local_vm, "rm /dev/shm/fill")
    assert freed["rc"] == 0, freed


def test_live_block_moves_the_vm_and_its_disk(nodes, local_vm, tmp_path):
    before = probe(nodes[SRC])["domains"][local_vm]
    started = time.monotonic()
    result = migrate(tmp_path, local_vm, SRC, DST, "--diff", mode="live-block")
    wall = time.monotonic() - started
    assert result["changed"] and result["mode"] == "live-block"
    assert result["source_state"] == "absent" and result["destination_state"] == "running"
    stats = result["stats"]
    assert stats["downtime_ms"] is not None and stats["downtime_ms"] >= 0
    assert stats["bytes"] > 0 and stats["memory_total"] > 0
    assert result["source_disks_left"] == [f"/var/lib/mcm/vms/{local_vm}.qcow2"]
    MEASURED["live-block"] = {**stats, "module_wall_s": round(wall, 2),
                              "progress_samples": len(result["progress"])}  # fmt: skip
    src, dst = probe(nodes[SRC]), probe(nodes[DST])
    assert local_vm not in src["domains"]
    moved = dst["domains"][local_vm]
    assert moved["state"] == RUNNING and moved["persistent"]
    assert moved["uuid"] == before["uuid"] and mac_of(moved["xml"]) == mac_of(before["xml"])
    assert f"/var/lib/mcm/vms/{local_vm}.qcow2" in dst["volumes"]
    # read from the disk, not from the page cache that came along with the memory
    [out] = console(DST, local_vm, DROP_CACHES_CAT)
    assert out["out"] == f"{local_vm}-marker"
    assert not [w for w in result.get("warnings", []) if "downtime" in w], result["warnings"]
    assert stats["max_downtime_ms"] == 30
    again = migrate(tmp_path, local_vm, SRC, DST)
    assert not again["changed"] and again["destination_state"] == "running"


def test_live_with_shared_disk(nodes, tmp_path):
    node = nodes[SRC]
    made = node.run("qemu-img create -q -f qcow2 -F qcow2 -b %s %s 64M",
                    f"{IMAGES}/disk.qcow2", SHARED_DISK)  # fmt: skip
    assert made.rc == 0, made.stderr
    call(tmp_path, SRC, "vm", {"config": [guest(SHARED_VM, disk=SHARED_DISK, image=None)]})
    [out] = console(SRC, SHARED_VM, f"echo {SHARED_VM}-marker > /mnt/disk/marker && sync")
    assert out["rc"] == 0
    plan = migrate(tmp_path, SHARED_VM, SRC, DST, "--check")
    assert plan["mode"] == "live" and plan["unsafe"] and plan["plan"]["disk_bytes"] == 0
    started = time.monotonic()
    result = migrate(tmp_path, SHARED_VM, SRC, DST)
    wall = time.monotonic() - started
    assert result["mode"] == "live" and result["unsafe"]
    assert "VIR_MIGRATE_UNSAFE" in result["flags"]
    assert result["stats"]["downtime_ms"] is not None and result["stats"]["bytes"] > 0
    MEASURED["live"] = {**result["stats"], "module_wall_s": round(wall, 2),
                        "progress_samples": len(result["progress"])}  # fmt: skip
    assert SHARED_VM not in probe(node)["domains"]
    assert probe(nodes[DST])["domains"][SHARED_VM]["state"] == RUNNING
    [out] = console(DST, SHARED_VM, DROP_CACHES_CAT)
    assert out["out"] == f"{SHARED_VM}-marker"
    assert result["encryption"] == "tls" and "VIR_MIGRATE_TLS" in result["flags"]


CAPTURE = "/tmp/mgtest-wan.pcap"
CAPTURE_PID = "/tmp/mgtest-tcpdump.pid"


def captured_migration(tmp_path, name: str, src: str, dst: str, marker: str, **args) -> tuple:
    """Migrate while tcpdump on the destination records what the source sends it over the
    WAN; (result, marker occurrences in the capture, capture bytes)."""
    from conftest import lab_env

    tcpdump = (f"echo $$ > {CAPTURE_PID}; exec timeout 120 tcpdump -i eth1 -s 0 -B 16384 -U "
               f"-c 400000 -w {CAPTURE} 'tcp and src host {ADDRESS[src]}'")  # fmt: skip
    capture = subprocess.Popen(
        ["podman", "exec", dst, "sh", "-c", tcpdump],
        env=lab_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for _attempt in range(20):  # bounded: tcpdump says "listening on" at once
            line = capture.stderr.readline()
            if not line or "listening on" in line:
                break
        assert capture.poll() is None, f"tcpdump on {dst} did not start: {line}"
        result = migrate(tmp_path, name, src, dst, **args)
    finally:
        run_on = ["podman", "exec", dst, "sh", "-c", f"kill -INT $(cat {CAPTURE_PID})"]
        subprocess.run(run_on, env=lab_env(), capture_output=True, check=False, timeout=30)
        capture.wait(timeout=60)
    count = (f"sync; echo $(grep -a -o -F {marker} {CAPTURE} | wc -l) "
             f"$(stat -c %s {CAPTURE}); rm -f {CAPTURE} {CAPTURE_PID}")  # fmt: skip
    seen = subprocess.run(["podman", "exec", dst, "sh", "-c", count], env=lab_env(),
                          capture_output=True, text=True, check=True, timeout=120)  # fmt: skip
    hits, size = (int(v) for v in seen.stdout.split())
    return result, hits, size


def test_migration_stream_is_encrypted_by_default(nodes, tmp_path):
    """4 MB of a marker string in the guest's memory (tmpfs): a capture of the WAN traffic
    of a default (TLS) migration never shows it, one of encryption=none shows it."""
    marker = f"mgtest-plaintext-{uuid.uuid4().hex}"
    [out] = console(DST, SHARED_VM, f"yes {marker} | head -c 4000000 > /dev/shm/marker; "
                                    "wc -c < /dev/shm/marker")  # fmt: skip
    assert out["rc"] == 0 and out["out"].strip() == "4000000", out
    # the VM is on mcm-b1 after test_live_with_shared_disk: back to mcm-a1 encrypted
    tls, tls_hits, tls_bytes = captured_migration(tmp_path, SHARED_VM, DST, SRC, marker)
    assert tls["changed"] and tls["encryption"] == "tls"
    assert "VIR_MIGRATE_TLS" in tls["flags"]
    assert tls_bytes > 4_000_000, "the capture missed the migration stream"
    assert tls_hits == 0, f"marker seen {tls_hits} times in a TLS migration's traffic"
    plain, plain_hits, plain_bytes = captured_migration(
        tmp_path, SHARED_VM, SRC, DST, marker, encryption="none"
    )
    assert plain["encryption"] == "none" and "VIR_MIGRATE_TLS" not in plain["flags"]
    assert plain["destination_uri"] == f"qemu+tcp://{ADDRESS[DST]}/system"
    assert any("plaintext" in w for w in plain.get("warnings", [])), plain.get("warnings")
    assert plain_hits > 1000, (plain_hits, plain_bytes)
    MEASURED["capture"] = {"tls": {"marker_hits": tls_hits, "bytes": tls_bytes},
                           "none": {"marker_hits": plain_hits, "bytes": plain_bytes}}  # fmt: skip
    # one guest less before the cold migration (TCG is slow)
    host_python(nodes[DST], CLEANUP.replace('startswith("mgtest-")',
                                            f'startswith("{SHARED_VM}")'))  # fmt: skip


def test_missing_certificate_fails_in_preflight(nodes, local_vm, tmp_path):
    """Without its qemu client key the source refuses before anything moves, and says
    which playbook makes the certificates; the VM stays where it is."""
    [where] = [h for h, n in nodes.items() if local_vm in probe(n)["domains"]
               and probe(n)["domains"][local_vm]["state"] == RUNNING]  # fmt: skip
    other = DST if where == SRC else SRC
    before = {h: probe(n) for h, n in nodes.items()}
    key = "/etc/pki/qemu/client-key.pem"
    assert nodes[where].run("mv %s %s.mgtest", key, key).rc == 0
    try:
        result = migrate(tmp_path, local_vm, where, other, expect_failure=True)
    finally:
        assert nodes[where].run("mv %s.mgtest %s", key, key).rc == 0
    assert result["phase"] == "preflight" and result["missing_files"] == [key]
    assert "playbooks/setup_migration_tls.yml" in result["msg"] and key in result["msg"]
    assert result["source_state"] == "running" and result["encryption"] == "tls"
    assert {h: probe(n) for h, n in nodes.items()} == before


def test_tls_setup_is_idempotent(nodes, hosts):
    """The fixture ran playbooks/setup_migration_tls.yml: a second run changes nothing
    (no file rewritten, no libvirtd restart) on any cloud host, and each host keeps at most
    16 KiB unsent in a TCP socket (the role's migration_tls_tcp_notsent_lowat)."""
    from conftest import ansible_json

    proc, data = ansible_json(["ansible-playbook", str(TLS_PLAYBOOK)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = data["stats"]
    assert {"mcm-a1", "mcm-a2", "mcm-b1"} <= set(stats)
    assert {h: s["changed"] for h, s in stats.items()} == dict.fromkeys(stats, 0)
    assert not any(s["failures"] or s["unreachable"] for s in stats.values()), stats
    lowat = {h: notsent_lowat(hosts[h]) for h in ("mcm-a1", "mcm-a2", "mcm-b1")}
    assert lowat == dict.fromkeys(lowat, "16384")


def notsent_lowat(host) -> str:
    return host.run("sysctl -n net.ipv4.tcp_notsent_lowat").stdout.strip()


def test_tls_setup_bounds_unsent_tcp_data(nodes, hosts):
    """migration_tls_tcp_notsent_lowat on a host at the kernel's default (no limit): null
    leaves it alone; --check reports the change and makes none; a run sets 16384 (runtime
    and /etc/sysctl.conf)."""
    from conftest import ansible_json

    host, unlimited = hosts["mcm-a2"], "4294967295"

    def setup(*flags: str) -> int:
        proc, data = ansible_json(["ansible-playbook", str(TLS_PLAYBOOK), "--limit", "mcm-a2",
                                   *flags])  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        return data["stats"]["mcm-a2"]["changed"]

    assert host.run("sysctl -w net.ipv4.tcp_notsent_lowat=%s", unlimited).rc == 0
    try:
        assert setup("-e", '{"migration_tls_tcp_notsent_lowat": null}') == 0
        assert notsent_lowat(host) == unlimited
        assert setup("--check") == 1
        assert notsent_lowat(host) == unlimited
        assert setup() == 1
        assert notsent_lowat(host) == "16384"
        conf = host.run("grep -h tcp_notsent_lowat /etc/sysctl.conf").stdout.split()
        assert conf == ["net.ipv4.tcp_notsent_lowat=16384"], conf
    finally:
        host.run("sysctl -w net.ipv4.tcp_notsent_lowat=16384")


def test_cold_back_with_checksums(nodes, local_vm, tmp_path):
    # live-block left the source's disk behind: confirm the migration by deleting it first
    refused = migrate(tmp_path, local_vm, DST, SRC, mode="cold", expect_failure=True)
    assert "already has a volume" in refused["msg"] and refused["source_state"] == "running"
    confirm = {"state": "deleted", "config": [{"name": f"{local_vm}.qcow2"}]}
    call(tmp_path, SRC, "vm_volume", confirm)
    before = probe(nodes[DST])["domains"][local_vm]
    started = time.monotonic()
    result = migrate(tmp_path, local_vm, DST, SRC, "--diff", mode="cold", shutdown_timeout=5)
    wall = time.monotonic() - started
    assert result["mode"] == "cold" and result["changed"]
    [check] = result["checksum"]
    assert check["match"] and check["source"] == check["destination"]
    assert check["path"] == f"/var/lib/mcm/vms/{local_vm}.qcow2" and check["sparse"]
    assert result["source_state"] == "shutoff" and result["destination_state"] == "running"
    MEASURED["cold"] = {**result["stats"], "module_wall_s": round(wall, 2),
                        "holes": check["hole_bytes"]}  # fmt: skip
    kept = probe(nodes[DST])["domains"][local_vm]
    assert kept["state"] == SHUTOFF and kept["persistent"]
    moved = probe(nodes[SRC])["domains"][local_vm]
    assert moved["state"] == RUNNING
    assert moved["uuid"] == before["uuid"] and mac_of(moved["xml"]) == mac_of(before["xml"])
    [out] = console(SRC, local_vm, "cat /mnt/disk/marker")
    assert out["out"] == f"{local_vm}-marker"
    again = migrate(tmp_path, local_vm, DST, SRC, mode="cold")
    assert not again["changed"]
