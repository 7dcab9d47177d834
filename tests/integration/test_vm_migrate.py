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
import time

import pytest
import yaml

from conftest import ROOT, ansible_json, run

pytestmark = pytest.mark.lab

SRC, DST = "mcm-a1", "mcm-b1"
ADDRESS = {"mcm-a1": "172.30.0.11", "mcm-b1": "172.30.0.21"}
UNUSED_ADDRESS = "172.30.0.99"
BRIDGE = "mgtest-br"
IMAGES = "/var/lib/mcm/images"
CONSOLE_DIR = "/var/lib/mcm/console"
SHARED = "/var/lib/mcm/shared"
LOCAL_VM, SHARED_VM = "mgtest-v1", "mgtest-v2"
SHARED_DISK = f"{SHARED}/{SHARED_VM}.qcow2"

PROBE = r"""
import json, libvirt
conn = libvirt.open("qemu:///system")
out = {"domains": {}, "volumes": []}
for dom in conn.listAllDomains(0):
    if dom.name().startswith("mgtest-"):
        out["domains"][dom.name()] = {
            "state": dom.state()[0], "active": bool(dom.isActive()),
            "persistent": bool(dom.isPersistent()), "uuid": dom.UUIDString(),
            "xml": dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE),
        }
for pool in conn.listAllStoragePools(0):
    if pool.isActive():
        pool.refresh(0)
        out["volumes"] += [v.path() for v in pool.listAllVolumes(0)
                           if v.name().startswith("mgtest-")]
print(json.dumps(out))
"""

CLEANUP = r"""
import libvirt
conn = libvirt.open("qemu:///system")
for dom in conn.listAllDomains(0):
    if dom.name().startswith("mgtest-"):
        try:
            dom.abortJob()
        except libvirt.libvirtError:
            pass
        if dom.isActive():
            dom.destroy()
        if dom.isPersistent():
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                              | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
for pool in conn.listAllStoragePools(0):
    if pool.isActive():
        pool.refresh(0)
        for vol in pool.listAllVolumes(0):
            if vol.name().startswith("mgtest-"):
                vol.delete(0)
"""


def host_python(host, script: str) -> str:
    result = host.run("python3 -c %s", script)
    assert result.rc == 0, result.stderr
    return result.stdout


def probe(host) -> dict:
    return json.loads(host_python(host, PROBE))


def cleanup(host) -> None:
    host_python(host, CLEANUP)
    host.run("sh -c %s", f"rm -f {CONSOLE_DIR}/mgtest-* {SHARED}/mgtest-*")


def guest(name: str, **overrides) -> dict:
    vm = {
        "name": name,
        "memory_mib": 128,
        "bridge": BRIDGE,
        "disk_mib": 64,
        "image": f"{IMAGES}/disk.qcow2",
        "boot": {
            "kernel": f"{IMAGES}/vmlinuz",
            "initrd": f"{IMAGES}/initrd.img",
            "cmdline": "console=ttyS0 panic=-1",
        },
        "console_log": f"{CONSOLE_DIR}/{name}.log",
        "metadata": {"tenant": "mgtest", "network": "net", "vm": name},
        "shutdown_timeout": 5,
    }
    vm.update(overrides)
    return vm


def call(tmp_path, host: str, module: str, args: dict, *flags: str,
         expect_failure: bool = False) -> dict:  # fmt: skip
    play = [{"hosts": host, "gather_facts": False,
             "tasks": [{"name": module, f"multicloud.migration.{module}": args}]}]  # fmt: skip
    path = tmp_path / f"{module}-{time.monotonic_ns()}.yml"
    path.write_text(yaml.safe_dump(play, sort_keys=False))
    proc, data = ansible_json(["ansible-playbook", str(path), *flags])
    result = data["plays"][0]["tasks"][0]["hosts"][host]
    if expect_failure:
        assert result.get("failed"), result
    else:
        assert proc.returncode == 0 and not result.get("failed"), result.get("msg", result)
    return result


def migrate(tmp_path, name: str, src: str, dst: str, *flags: str, expect_failure=False,
            **args) -> dict:  # fmt: skip
    params = {"name": name, "destination": dst, "destination_address": ADDRESS[dst], **args}
    return call(tmp_path, src, "vm_migrate", params, *flags, expect_failure=expect_failure)


def console(host: str, name: str, *cmds: str, timeout: float = 180) -> list[dict]:
    """Commands on the guest's serial console (lab/guest_console.py run on the host)."""
    script = (ROOT / "lab" / "guest_console.py").read_text()
    proc = run(["podman", "exec", "-i", host, "python3", "-", f"{CONSOLE_DIR}/{name}.console",
                *cmds], timeout=timeout, input_text=script)  # fmt: skip
    assert proc.returncode == 0, f"console of {name} on {host}: {proc.stderr[-2000:]}"
    return json.loads(proc.stdout)


def mac_of(xml: str) -> str:
    import xml.etree.ElementTree as ET

    return ET.fromstring(xml).find("./devices/interface/mac").get("address")


RUNNING, SHUTOFF = 1, 5
DROP_CACHES_CAT = "sync; echo 3 > /proc/sys/vm/drop_caches; cat /mnt/disk/marker"
MEASURED: dict[str, dict] = {}


@pytest.fixture(scope="module")
def nodes(hosts):
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
                   "destination_uri": f"qemu+tcp://{ADDRESS[DST]}/system", "timeout": 60},
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
    # one guest less before the cold migration (TCG is slow)
    host_python(nodes[DST], CLEANUP.replace('startswith("mgtest-")',
                                            f'startswith("{SHARED_VM}")'))  # fmt: skip


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


def test_zz_report():
    print("\nvm_migrate measured:", json.dumps(MEASURED))
