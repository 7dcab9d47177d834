"""The lab itself: hosts, libvirt, networks, isolation, shared storage, a booting guest."""

from __future__ import annotations

import ipaddress
import json
import re
import uuid
from shutil import which

import lab
from conftest import ansible_json, run


def test_ansible_reaches_every_host(topology):
    proc, data = ansible_json(["ansible", "-m", "ansible.builtin.ping", "all"])
    assert proc.returncode == 0, proc.stderr
    results = data["plays"][0]["tasks"][0]["hosts"]
    assert sorted(results) == sorted(topology.host_names)
    assert {h: r["ping"] for h, r in results.items()} == dict.fromkeys(results, "pong")


def test_groups_are_the_clouds(topology):
    proc = run(["ansible-inventory", "--list"])
    assert proc.returncode == 0, proc.stderr
    inv = json.loads(proc.stdout)
    assert inv["cloud_a"]["hosts"] == ["mcm-a1", "mcm-a2"]
    assert inv["cloud_b"]["hosts"] == ["mcm-b1"]
    assert sorted(inv["clouds"]["children"]) == ["cloud_a", "cloud_b"]


def test_libvirt_answers_in_every_host_with_its_own_uuid(topology, hosts):
    uuids = {}
    for name, host in hosts.items():
        out = host.check_output("virsh -c qemu:///system version --daemon")
        assert re.search(r"Running against daemon: \d+\.\d+", out), out
        # QEMU from bookworm-backports: before 9.0 a TCG guest's live migration could lose
        # the guest's memory writes (lab/node/backports.txt)
        qemu = re.search(r"Running hypervisor: QEMU (\d+)\.(\d+)", out)
        assert qemu and (int(qemu[1]), int(qemu[2])) >= (9, 0), out
        caps = host.check_output("virsh -c qemu:///system capabilities")
        uuids[name] = re.search(r"<uuid>([0-9a-f-]+)</uuid>", caps).group(1)
        assert uuids[name] == lab.host_uuid(name)
        # TCG only: no /dev/kvm in the node, so libvirt offers no 'kvm' domain type
        assert "<domain type='qemu'/>" in caps
        assert "<domain type='kvm'/>" not in caps
        assert not host.file("/dev/kvm").exists
    assert len(set(uuids.values())) == len(uuids)
    for value in uuids.values():
        uuid.UUID(value)


def test_pid1_reaps_children(hosts):
    for host in hosts.values():
        assert host.file("/proc/1/comm").content_string.strip() == "tini"
        assert host.process.filter(comm="libvirtd")
        assert host.process.filter(comm="virtlogd")


def test_addresses_and_no_route_off_the_machine(topology, hosts):
    for name, host in hosts.items():
        me = topology.host(name)
        addrs = host.check_output("ip -4 -o addr show")
        assert f"{me.underlay_ip}/" in addrs and f"{me.wan_ip}/" in addrs
        routes = host.check_output("ip -4 route show")
        assert "default" not in routes, f"{name} has a default route: {routes}"
        # libvirt's NATed default network must not exist
        assert "default" not in host.check_output("virsh -c qemu:///system net-list --all --name")
    # On the machine itself the lab's bridges carry no address (no gateway), and no NAT rule
    # mentions the lab's ranges.
    for net in topology.networks:
        out = run(["ip", "-4", "-o", "addr", "show", "dev", net.bridge])
        assert out.returncode == 0, f"bridge {net.bridge} missing: {out.stderr}"
        assert out.stdout.strip() == ""
    rules = "".join(
        run(cmd).stdout for cmd in (["nft", "list", "ruleset"], ["iptables-save"]) if which(cmd[0])
    )
    assert which("iptables-save"), "iptables (podman's firewall backend) is not installed"
    for net in topology.networks:
        prefix = str(net.subnet.network_address).rsplit(".", 1)[0]
        assert not re.search(rf"(masquerade|MASQUERADE|snat|SNAT).*{re.escape(prefix)}", rules)
        assert not re.search(rf"{re.escape(prefix)}.*(masquerade|MASQUERADE|snat|SNAT)", rules)


def test_underlay_inside_a_cloud_and_wan_across(topology, hosts):
    a2, b1 = topology.host("mcm-a2"), topology.host("mcm-b1")
    ping = "ping -c 2 -W 2 -i 0.2 {}"
    assert hosts["mcm-a1"].run(ping.format(a2.underlay_ip)).rc == 0
    assert hosts["mcm-a1"].run(ping.format(b1.wan_ip)).rc == 0
    assert hosts["mcm-b1"].run(ping.format("mcm-a2")).rc == 0  # peers resolve by name
    # cloud_b's underlay is not reachable from cloud_a: only the WAN joins the clouds
    res = hosts["mcm-a1"].run(ping.format(b1.underlay_ip))
    assert res.rc != 0
    assert "unreachable" in (res.stdout + res.stderr).lower()


def test_wan_is_shaped_with_htb(topology, hosts):
    for host in hosts.values():
        out = host.check_output(f"tc class show dev {topology.wan.interface}")
        assert "htb" in out
        rate = topology.wan.rate.replace("bit", "")
        assert re.search(rf"rate {re.escape(rate)}", out, re.IGNORECASE), out


def test_shared_directory_is_shared(topology, hosts):
    path = f"{topology.shared_dir}/lab-test-{uuid.uuid4().hex[:8]}"
    try:
        hosts["mcm-a1"].check_output(f"echo shared-ok > {path}")
        for host in hosts.values():
            assert host.file(path).content_string.strip() == "shared-ok"
    finally:
        hosts["mcm-a1"].run(f"rm -f {path}")


def test_lab_check_boots_a_guest_that_takes_a_lease(topology, hosts):
    proc, data = ansible_json(["ansible-playbook", "playbooks/lab_check.yml"], timeout=900)
    stats = data["stats"]
    assert proc.returncode == 0, json.dumps(data, indent=1)[-4000:]
    assert all(s["failures"] == 0 and s["unreachable"] == 0 for s in stats.values())
    assert all(s["changed"] == 0 for s in stats.values())
    host = topology.host_names[0]
    guest_task = next(
        t
        for p in data["plays"]
        for t in p["tasks"]
        if t["task"]["name"] == "Read the check's result"
    )
    guest = guest_task["hosts"][host]["ansible_facts"]["lab_check_guest"]
    assert ipaddress.IPv4Address(guest["lease_ip"]) in ipaddress.IPv4Network("10.255.0.0/24")
    assert guest["guest_mtu"] == "1450"
    assert guest["pings_answered"] >= 1
    assert guest["marker_ok"] is True
    assert guest["cleaned"] is True
    # nothing of the throwaway segment is left on the host
    node = hosts[host]
    assert "mcm-smoke" not in node.check_output("virsh -c qemu:///system list --all --name")
    assert "mcm-smoke" not in node.check_output("virsh -c qemu:///system pool-list --all --name")
    assert "mcm-smoke-dhcp" not in node.check_output("ip netns list")
    assert node.run("ip link show mcmsmk-br").rc != 0
    # no process of the check is left (other tenants' dnsmasq and VMs may run)
    procs = node.check_output("ps -eo args")
    assert "/var/lib/mcm/smoke/" not in procs
    assert "guest=mcm-smoke" not in procs
