"""VMs from the spec on the lab (issue 4): placement, leases, reachability, isolation,
idempotence, a memory change, deletion.

Tenant `vta`: web 10.20.1.0/24 (w1 10.20.1.10, w2 10.20.1.11) and db 10.20.2.0/24 (d1,
dynamic) on cloud_a; tenant `vtb`: app 10.20.1.0/24 on cloud_a with b1 at 10.20.1.10, the
same address as w1. The module fixture deletes both tenants, even when a test fails.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from ansible_collections.multicloud.migration.plugins.module_utils import spec as specmod
from conftest import ROOT, ansible_json, run

pytestmark = pytest.mark.lab

VM = {"vcpus": 1, "memory": "128MiB", "disk": "64MiB"}
SPEC = {
    "tenants": [
        {
            "name": "vta",
            "networks": [
                {
                    "name": "web",
                    "cloud": "cloud_a",
                    "subnet": "10.20.1.0/24",
                    "vms": [
                        {"name": "w1", "ip": "10.20.1.10", **VM},
                        {"name": "w2", "ip": "10.20.1.11", **VM},
                    ],
                },
                {
                    "name": "db",
                    "cloud": "cloud_a",
                    "subnet": "10.20.2.0/24",
                    "vms": [{"name": "d1", **VM}],
                },
            ],
        },
        {
            "name": "vtb",
            "networks": [
                {
                    "name": "app",
                    "cloud": "cloud_a",
                    "subnet": "10.20.1.0/24",
                    "vms": [{"name": "b1", "ip": "10.20.1.10", **VM}],
                }
            ],
        },
    ]
}
CONSOLE = (ROOT / "lab" / "guest_console.py").read_text()


def normal(data=None):
    return specmod.normalize(data or SPEC, clouds={"cloud_a", "cloud_b"})


def vm_of(data, tenant, name):
    for t in data["tenants"]:
        for n in t["networks"]:
            for v in n["vms"]:
                if t["name"] == tenant and v["name"] == name:
                    return n, v
    raise KeyError(name)


def apply(tmp, data, *args):
    path = Path(tmp) / "spec.yml"
    path.write_text(yaml.safe_dump(data))
    return ansible_json(
        ["ansible-playbook", "playbooks/create_infra.yml", "-e", f"spec_file={path}", *args]
    )


def ok(proc, data):
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]


def changed_hosts(data):
    return {h: s["changed"] for h, s in data["stats"].items() if s["changed"]}


def domains(hosts):
    """Domain name -> (host, state) of the test tenants' domains on every host."""
    found = {}
    for name, h in hosts.items():
        out = h.check_output("virsh -c qemu:///system list --all --name")
        for dom in out.split():
            if dom.startswith(("vta-", "vtb-")):
                state = h.check_output(f"virsh -c qemu:///system domstate {dom}").strip()
                found[dom] = (name, state)
    return found


def guest(host, domain, *cmds):
    """Run commands in a guest through its serial console, from its lab host."""
    proc = run(
        [
            "podman",
            "exec",
            "-i",
            host,
            "python3",
            "-",
            f"/var/lib/mcm/console/{domain}.console",
            *cmds,
        ],
        timeout=300,
        input_text=CONSOLE,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def received(out):
    match = re.search(r"(\d+) packets received", out)
    return int(match.group(1)) if match else 0


@pytest.fixture(scope="module")
def infra(hosts, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vms")
    try:
        proc, data = apply(tmp, SPEC)
        yield {"tmp": tmp, "first": (proc, data), "hosts": hosts}
    finally:
        for tenant in ("vta", "vtb"):
            ansible_json(
                ["ansible-playbook", "playbooks/delete_infra.yml", "-e", f"tenant={tenant}"]
            )


def test_every_vm_runs_in_its_cloud_with_its_lease(infra):
    proc, data = infra["first"]
    ok(proc, data)
    found = domains(infra["hosts"])
    assert set(found) == {"vta-w1", "vta-w2", "vta-d1", "vtb-b1"}
    assert all(state == "running" for _host, state in found.values()), found
    assert all(host in ("mcm-a1", "mcm-a2") for host, _state in found.values())
    # the two VMs of one network are spread over the two hosts of cloud_a
    assert found["vta-w1"][0] != found["vta-w2"][0]
    leases = infra["hosts"]["mcm-a1"].check_output("cat /var/lib/mcm/dhcp/qdhcp-vta.web/leases")
    n = normal()
    for vm in ("w1", "w2"):
        _net, v = vm_of(n, "vta", vm)
        assert f"{v['mac']} {v['ip']} {vm}" in leases
    _net, d1 = vm_of(n, "vta", "d1")
    assert d1["mac"] in infra["hosts"]["mcm-a1"].check_output(
        "cat /var/lib/mcm/dhcp/qdhcp-vta.db/leases"
    )
    # the MAC is the derived one, on the network's bridge
    web, w1 = vm_of(n, "vta", "w1")
    host = infra["hosts"][found["vta-w1"][0]]
    xml = host.check_output("virsh -c qemu:///system dumpxml vta-w1")
    assert f"<mac address='{w1['mac']}'/>" in xml and f"<source bridge='{web['bridge']}'/>" in xml


def test_vms_answer_from_their_dhcp_namespace(infra):
    a1 = infra["hosts"]["mcm-a1"]
    for ip in ("10.20.1.10", "10.20.1.11"):
        assert a1.run(f"ip netns exec qdhcp-vta.web ping -c 2 -W 2 {ip}").rc == 0
    assert a1.run("ip netns exec qdhcp-vtb.app ping -c 2 -W 2 10.20.1.10").rc == 0


def test_vms_reach_each_other_over_vxlan_and_through_the_router(infra):
    found = domains(infra["hosts"])
    n = normal()
    _net, w1 = vm_of(n, "vta", "w1")
    _net, b1 = vm_of(n, "vtb", "b1")
    leases = infra["hosts"]["mcm-a1"].check_output("cat /var/lib/mcm/dhcp/qdhcp-vta.db/leases")
    d1_ip = leases.split()[2]
    res = guest(
        found["vta-w2"][0],
        "vta-w2",
        "ping -c 3 -W 2 10.20.1.10",
        f"ping -c 3 -W 2 {d1_ip}",
        "cat /proc/net/arp",
        "cat /sys/class/net/eth0/mtu",
    )
    assert received(res[0]["out"]) == 3, res[0]  # w1, on the other host: over VXLAN
    assert received(res[1]["out"]) == 3, res[1]  # d1, another subnet: through qrouter-vta
    # 10.20.1.10 answered with w1's MAC: vtb's b1, with the same address, was not reached
    arp = res[2]["out"]
    assert w1["mac"] in arp and b1["mac"] not in arp
    assert res[3]["out"] == "1450"
    # and from vtb's side nothing of vta answers
    res = guest(
        found["vtb-b1"][0], "vtb-b1", "ping -c 3 -W 1 10.20.1.11", f"ping -c 2 -W 1 {d1_ip}"
    )
    assert received(res[0]["out"]) == 0 and received(res[1]["out"]) == 0


def test_second_run_changes_nothing(infra):
    proc, data = apply(infra["tmp"], SPEC)
    ok(proc, data)
    assert changed_hosts(data) == {}


def test_memory_change_is_applied_and_reported(infra):
    edited = yaml.safe_load(yaml.safe_dump(SPEC))
    edited["tenants"][0]["networks"][0]["vms"][0]["memory"] = "160MiB"
    host_name = domains(infra["hosts"])["vta-w1"][0]
    host = infra["hosts"][host_name]
    proc, data = apply(infra["tmp"], edited, "--check", "--diff")
    ok(proc, data)
    assert changed_hosts(data) == {host_name: 1}
    assert "<memory unit='KiB'>131072</memory>" in host.check_output(
        "virsh -c qemu:///system dumpxml --inactive vta-w1"
    )
    proc, data = apply(infra["tmp"], edited, "--diff")
    ok(proc, data)
    assert changed_hosts(data) == {host_name: 1}
    task = next(
        t
        for p in data["plays"]
        for t in p["tasks"]
        if t["task"]["name"].endswith("remove those that left the spec)")
    )
    result = task["hosts"][host_name]
    assert result["changed"] and "vta-w1" in json.dumps(result["changes"])
    assert "160" in json.dumps(result.get("diff", {}))
    assert "<memory unit='KiB'>163840</memory>" in host.check_output(
        "virsh -c qemu:///system dumpxml --inactive vta-w1"
    )
    proc, data = apply(infra["tmp"], edited)
    ok(proc, data)
    assert changed_hosts(data) == {}
    SPEC["tenants"][0]["networks"][0]["vms"][0]["memory"] = "160MiB"


def test_absent_vm_is_removed_with_its_disk(infra):
    edited = yaml.safe_load(yaml.safe_dump(SPEC))
    edited["tenants"][0]["networks"][1]["vms"][0]["state"] = "absent"
    host_name = domains(infra["hosts"])["vta-d1"][0]
    host = infra["hosts"][host_name]
    assert host.file("/var/lib/mcm/vms/vta-d1.qcow2").exists
    proc, data = apply(infra["tmp"], edited)
    ok(proc, data)
    assert "vta-d1" not in domains(infra["hosts"])
    assert not host.file("/var/lib/mcm/vms/vta-d1.qcow2").exists
    assert {"vta-w1", "vta-w2", "vtb-b1"} <= set(domains(infra["hosts"]))


def test_delete_infra_removes_the_tenants_vms_only(infra):
    proc, data = ansible_json(
        ["ansible-playbook", "playbooks/delete_infra.yml", "-e", "tenant=vta"]
    )
    ok(proc, data)
    left = domains(infra["hosts"])
    assert set(left) == {"vtb-b1"}
    for h in infra["hosts"].values():
        assert not [f for f in h.run("ls /var/lib/mcm/vms").stdout.split() if f.startswith("vta-")]
