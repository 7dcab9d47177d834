"""vm, vm_info and vm_volume on the lab (mcm-a2): a lab guest VM on a throwaway bridge through
its whole life - create, idempotence, memory change in check mode and for real, shutoff and
running, boot to `MCM-GUEST ready`, refused creations that leave nothing behind, removal
twice - plus volumes on their own and a scoped overridden.

Everything is named so that nothing else on the lab is touched: domains and volumes
vmtest-*, tenants vmtest/vmtest2, bridge vmtest-br, console files under
/var/lib/mcm/vmtest-console. At most one guest runs at a time; the teardown destroys and
undefines every vmtest-* domain and deletes every vmtest-* volume, also after a failure.
"""

from __future__ import annotations

import time

import pytest
import report

from conftest import IMAGES, lab_bridge, lab_guest, libvirt_cleanup, libvirt_probe
from conftest import call as lab_call

pytestmark = pytest.mark.lab

HOST = "mcm-a2"
BRIDGE = "vmtest-br"
CONSOLE_DIR = "/var/lib/mcm/vmtest-console"
NAME = "vmtest-t1"
READY = "MCM-GUEST ready"
BOOT_TIMEOUT = 120

POOL = "/var/lib/mcm/vms"  # the mcm pool: volumes are reported by path
PREFIX = "vmtest-"


def probe(host) -> dict:
    return libvirt_probe(host, PREFIX)


def guest(name: str = NAME, **overrides) -> dict:
    return lab_guest(name, "vmtest", BRIDGE, CONSOLE_DIR, **overrides)


def call(tmp_path, module: str, args: dict, *flags: str, expect_failure: bool = False) -> dict:
    """One task of multicloud.migration.<module> on HOST; its result."""
    return lab_call(tmp_path, HOST, module, args, *flags, expect_failure=expect_failure)


def memory_kib(xml: str) -> int:
    import xml.etree.ElementTree as ET

    elem = ET.fromstring(xml).find("memory")
    assert elem.get("unit") == "KiB"
    return int(elem.text)


def uuid_of(xml: str) -> str:
    import xml.etree.ElementTree as ET

    return ET.fromstring(xml).findtext("uuid")


def ready_count(host) -> int:
    log = host.file(f"{CONSOLE_DIR}/{NAME}.log")
    return log.content_string.count(READY) if log.exists else 0


def wait_ready(host, seen: int, timeout: float = BOOT_TIMEOUT) -> float:
    """Seconds until the console log holds more than ``seen`` ready markers."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if ready_count(host) > seen:
            return time.monotonic() - started
        time.sleep(0.5)
    tail = host.run("tail -c 1500 %s", f"{CONSOLE_DIR}/{NAME}.log").stdout
    pytest.fail(f"no {READY!r} within {timeout} s; console:\n{tail}")


@pytest.fixture(scope="module")
def host(hosts):
    node = hosts[HOST]
    libvirt_cleanup(node, PREFIX)
    lab_bridge(node, BRIDGE)
    node.run("rm -rf %s", CONSOLE_DIR)
    yield node
    libvirt_cleanup(node, PREFIX)
    node.run("ip link del %s", BRIDGE)
    node.run("rm -rf %s", CONSOLE_DIR)
    left = probe(node)
    assert not left["domains"] and not left["volumes"], left


# Shown in the terminal summary (report.py), not asserted on.
TIMINGS: dict[str, float] = report.collect("vm timings")


def test_create_running(host, tmp_path):
    seen = ready_count(host)
    started = time.monotonic()
    result = call(tmp_path, "vm", {"config": [guest()]}, "--diff")
    TIMINGS["module_call"] = round(time.monotonic() - started, 2)
    assert result["changed"]
    actions = [(c["object"], c["action"]) for c in result["changes"]]
    assert ("volume", "create") in actions
    assert ("domain", "define") in actions and ("domain", "start") in actions
    TIMINGS.update({f"{k}_s": v for k, v in result["timings"][NAME].items()})
    state = probe(host)
    assert state["domains"][NAME]["active"]
    assert f"{POOL}/{NAME}.qcow2" in state["volumes"]
    after = result["after"][0]
    assert after["domain_type"] == "qemu" and after["state"] == "running"
    assert after["metadata"] == {"tenant": "vmtest", "network": "net", "vm": "t1"}
    TIMINGS["boot_to_ready_s"] = round(wait_ready(host, seen), 1)


def test_second_run_changes_nothing_and_keeps_the_mac(host, tmp_path):
    before = probe(host)["domains"][NAME]["xml"]
    result = call(tmp_path, "vm", {"config": [guest()]})
    assert not result["changed"], result["changes"]
    assert result["changes"] == [] and result["restart_needed"] == {}
    assert result["before"] == result["after"]
    assert result["after"][0]["mac"] == result["before"][0]["mac"]
    assert probe(host)["domains"][NAME]["xml"] == before


def test_memory_change_in_check_mode_changes_nothing(host, tmp_path):
    before = probe(host)["domains"][NAME]["xml"]
    result = call(tmp_path, "vm", {"config": [guest(memory_mib=160)]}, "--check", "--diff")
    assert result["changed"]
    [change] = result["changes"]
    assert change["action"] == "update"
    assert change["details"] == {"memory_mib": {"from": 128, "to": 160}}
    assert result["after"][0]["memory_mib"] == 160
    assert probe(host)["domains"][NAME]["xml"] == before


def test_memory_change_applied_with_diff(host, tmp_path):
    result = call(tmp_path, "vm", {"config": [guest(memory_mib=160)]}, "--diff")
    assert result["changed"]
    assert result["changes"][0]["details"] == {"memory_mib": {"from": 128, "to": 160}}
    [diff] = result["diff"]
    assert "memory_mib: 128" in diff["before"] and "memory_mib: 160" in diff["after"]
    # no balloon: the running guest keeps 128 MiB until restarted, and says so
    assert result["restart_needed"] == {NAME: ["memory_mib"]}
    state = probe(host)["domains"][NAME]
    assert memory_kib(state["xml"]) == 160 * 1024
    assert naming_mac() in state["xml"]
    again = call(tmp_path, "vm", {"config": [guest(memory_mib=160)]})
    assert not again["changed"]


def naming_mac() -> str:
    from ansible_collections.multicloud.migration.plugins.module_utils.naming import vm_mac

    return vm_mac("vmtest", "t1")


def test_shutoff_then_running_boots_the_guest(host, tmp_path):
    started = time.monotonic()
    result = call(tmp_path, "vm", {"config": [guest(memory_mib=160, state="shutoff")]})
    TIMINGS["shutoff_call_s"] = round(time.monotonic() - started, 2)
    assert result["changed"]
    [stop] = result["changes"]
    assert stop["action"] == "stop" and stop["details"]["seconds"] <= 5 + 2
    assert not probe(host)["domains"][NAME]["active"]
    again = call(tmp_path, "vm", {"config": [guest(memory_mib=160, state="shutoff")]})
    assert not again["changed"]

    seen = ready_count(host)
    result = call(tmp_path, "vm", {"config": [guest(memory_mib=160)]})
    assert [c["action"] for c in result["changes"]] == ["start"]
    assert result["restart_needed"] == {}  # the restart applied the memory
    TIMINGS["start_s"] = result["timings"][NAME]["start"]
    TIMINGS["restart_boot_to_ready_s"] = round(wait_ready(host, seen), 1)
    assert probe(host)["domains"][NAME]["active"]


def test_vm_info_lists_the_domain(host, tmp_path):
    leases = f"{CONSOLE_DIR}/leases"
    host.run("sh -c %s", f"echo '{int(time.time()) + 600} {naming_mac()} 10.250.0.7 t1 *'"
                         f" > {leases}")  # fmt: skip
    result = call(tmp_path, "vm_info", {"scope": ["vmtest"], "lease_files": [leases]}, "--check")
    assert not result["changed"]
    [vm] = result["vms"]
    assert vm["name"] == NAME and vm["state"] == "running" and vm["active"]
    assert vm["metadata"] == {"tenant": "vmtest", "network": "net", "vm": "t1"}
    assert (vm["memory_mib"], vm["vcpus"], vm["domain_type"]) == (160, 1, "qemu")
    [nic] = vm["interfaces"]
    assert (nic["mac"], nic["bridge"], nic["mtu"]) == (naming_mac(), BRIDGE, 1450)
    assert nic["target"]  # the tap device of the running guest
    assert vm["ip"] == "10.250.0.7" and nic["leases"][0]["hostname"] == "t1"
    [disk] = vm["disks"]
    assert disk["path"].endswith(f"/{NAME}.qcow2") and disk["capacity_mib"] == 64
    assert disk["backing"] == f"{IMAGES}/disk.qcow2"
    named = call(tmp_path, "vm_info", {"name": [NAME, "vmtest-none"]})
    assert [v["name"] for v in named["vms"]] == [NAME] and named["missing"] == ["vmtest-none"]
    other = call(tmp_path, "vm_info", {"scope": ["vmtest-other"]})
    assert other["vms"] == []
    gathered = call(tmp_path, "vm", {"state": "gathered", "scope": ["vmtest"]})
    assert not gathered["changed"] and [v["name"] for v in gathered["gathered"]] == [NAME]


@pytest.mark.parametrize(
    ("overrides", "cause"),
    [
        ({"image": f"{IMAGES}/missing.qcow2"}, "image .*missing"),
        ({"memory_mib": 16 * 1024 * 1024}, "MiB of memory"),
        ({"bridge": "vmtest-nobr"}, "vmtest-nobr"),  # fails at start, after define
    ],
    ids=["image-missing", "memory-too-large", "bridge-missing"],
)
def test_refused_creation_leaves_nothing(host, tmp_path, overrides, cause):
    import re

    name = "vmtest-bad"
    result = call(tmp_path, "vm", {"config": [guest(name, **overrides)]}, expect_failure=True)
    assert f"VM {name}" in result["msg"]
    assert re.search(cause, result["msg"]), result["msg"]
    state = probe(host)
    assert name not in state["domains"]
    assert f"{POOL}/{name}.qcow2" not in state["volumes"]


def test_absent_removes_domain_and_volume_then_is_no_change(host, tmp_path):
    result = call(tmp_path, "vm", {"config": [{"name": NAME, "state": "absent"}]}, "--diff")
    assert result["changed"]
    actions = [(c["object"], c["action"]) for c in result["changes"]]
    assert actions == [("domain", "destroy"), ("domain", "undefine"), ("volume", "delete")]
    assert result["after"] == []
    state = probe(host)
    assert NAME not in state["domains"] and f"{POOL}/{NAME}.qcow2" not in state["volumes"]
    again = call(tmp_path, "vm", {"config": [{"name": NAME, "state": "absent"}]})
    assert not again["changed"] and again["changes"] == []
    deleted = call(tmp_path, "vm", {"state": "deleted", "config": [{"name": NAME}]})
    assert not deleted["changed"]


def test_overridden_removes_only_unlisted_vms_of_the_scope(host, tmp_path):
    # shut off VMs only: no guest boots here
    def vm(name: str, tenant: str) -> dict:
        return guest(name, state="shutoff", image=None, disk_mib=16, console_log=None,
                     metadata={"tenant": tenant, "network": "net", "vm": name})  # fmt: skip

    vms = [vm("vmtest-o1", "vmtest2"), vm("vmtest-o2", "vmtest2"), vm("vmtest-o3", "vmtest3")]
    assert call(tmp_path, "vm", {"config": vms})["changed"]
    result = call(tmp_path, "vm", {"state": "overridden", "scope": ["vmtest2"], "config": vms[:1]})
    removed = {c["name"] for c in result["changes"] if c["action"] == "undefine"}
    assert removed == {"vmtest-o2"}
    state = probe(host)
    assert {"vmtest-o1", "vmtest-o3"} <= set(state["domains"]) and "vmtest-o2" not in state[
        "domains"
    ]
    assert f"{POOL}/vmtest-o2.qcow2" not in state["volumes"]
    again = call(tmp_path, "vm", {"state": "overridden", "scope": ["vmtest2"], "config": vms[:1]})
    assert not again["changed"]
    # a bridge/MTU change redefines the persistent config: same UUID, same MAC
    uuid = uuid_of(probe(host)["domains"]["vmtest-o1"]["xml"])
    moved = dict(vms[0], bridge="vmtest-br2", mtu=1400)
    result = call(tmp_path, "vm", {"config": [moved]}, "--diff")
    [change] = result["changes"]
    assert change["action"] == "redefine"
    assert change["details"] == {"bridge": {"from": BRIDGE, "to": "vmtest-br2"},
                                 "mtu": {"from": 1450, "to": 1400}}  # fmt: skip
    xml = probe(host)["domains"]["vmtest-o1"]["xml"]
    assert uuid_of(xml) == uuid and "vmtest-br2" in xml
    assert result["after"][0]["mac"] == result["before"][0]["mac"]
    assert not call(tmp_path, "vm", {"config": [moved]})["changed"]
    gone = call(tmp_path, "vm", {"state": "deleted", "scope": ["vmtest2", "vmtest3"]})
    assert {c["name"] for c in gone["changes"] if c["action"] == "undefine"} == {
        "vmtest-o1",
        "vmtest-o3",
    }


def test_vm_volume_module(host, tmp_path):
    vols = [
        {"name": "vmtest-v1.qcow2", "capacity_mib": 16},
        {"name": "vmtest-v2.qcow2", "capacity_mib": 64, "image": f"{IMAGES}/disk.qcow2"},
    ]
    first = call(tmp_path, "vm_volume", {"config": vols})
    assert [c["action"] for c in first["changes"] if c["object"] == "volume"] == ["create"] * 2
    assert first["after"][1]["image"] == f"{IMAGES}/disk.qcow2"
    assert not call(tmp_path, "vm_volume", {"config": vols})["changed"]
    grow = [{"name": "vmtest-v1.qcow2", "capacity_mib": 32}]
    checked = call(tmp_path, "vm_volume", {"config": grow}, "--check")
    assert checked["changed"] and checked["after"][0]["capacity_mib"] == 32
    grown = call(tmp_path, "vm_volume", {"config": grow})
    assert grown["changes"][0]["details"] == {"capacity_mib": {"from": 16, "to": 32}}
    assert grown["after"][0]["capacity_mib"] == 32
    shrink = call(tmp_path, "vm_volume", {"config": [{"name": "vmtest-v1.qcow2",
                                                      "capacity_mib": 8}]},
                  expect_failure=True)  # fmt: skip
    assert "never shrunk" in shrink["msg"]
    too_small = call(tmp_path, "vm_volume", {"config": [{"name": "vmtest-v3.qcow2",
                                                         "capacity_mib": 8,
                                                         "image": f"{IMAGES}/disk.qcow2"}]},
                     expect_failure=True)  # fmt: skip
    assert "smaller than its image" in too_small["msg"]
    gathered = call(tmp_path, "vm_volume", {"state": "gathered", "config": vols})
    assert [v["name"] for v in gathered["gathered"]] == ["vmtest-v1.qcow2", "vmtest-v2.qcow2"]
    names = [{"name": v["name"]} for v in vols]
    assert call(tmp_path, "vm_volume", {"state": "deleted", "config": names})["changed"]
    assert not call(tmp_path, "vm_volume", {"state": "deleted", "config": names})["changed"]
    assert not [v for v in probe(host)["volumes"] if v.startswith(f"{POOL}/vmtest-v")]
