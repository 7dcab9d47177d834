"""Unit tests of the lab's planning code (lab/lab.py): no root, no podman."""

from __future__ import annotations

import copy
import ipaddress
from pathlib import Path

import pytest
import yaml

import lab  # registered by tests/conftest.py

ROOT = Path(__file__).resolve().parents[2]

INVENTORY = yaml.safe_load((ROOT / "inventories/lab/hosts.yml").read_text())


def topo():
    return lab.parse_topology(copy.deepcopy(INVENTORY))


def test_inventory_has_two_clouds_three_hosts():
    t = topo()
    assert t.clouds == ["cloud_a", "cloud_b"]
    by_cloud = {c: [h.name for h in t.hosts if h.cloud == c] for c in t.clouds}
    assert len(by_cloud["cloud_a"]) == 2
    assert len(by_cloud["cloud_b"]) == 1
    # every host answers on its cloud's underlay and on the WAN
    for host in t.hosts:
        assert host.underlay_ip in t.underlays[host.cloud].subnet
        assert host.wan_ip in t.wan.subnet


def test_networks_are_private_and_disjoint():
    nets = topo().networks
    assert len({n.name for n in nets}) == len(nets) == 3
    for i, a in enumerate(nets):
        assert a.subnet.is_private
        for b in nets[i + 1 :]:
            assert not a.subnet.overlaps(b.subnet)


def _broken(mutate):
    data = copy.deepcopy(INVENTORY)
    mutate(data)
    with pytest.raises(lab.LabError) as err:
        lab.parse_topology(data)
    return str(err.value)


def _hosts(data, cloud):
    return data["all"]["children"][cloud]["hosts"]


def test_duplicate_address_rejected():
    def mutate(d):
        _hosts(d, "cloud_a")["mcm-a2"]["wan_ip"] = "172.30.0.11"

    assert "172.30.0.11 is already used by mcm-a1" in _broken(mutate)


def test_address_outside_subnet_rejected():
    def mutate(d):
        _hosts(d, "cloud_b")["mcm-b1"]["underlay_ip"] = "172.30.1.50"

    assert "underlay_ip 172.30.1.50 is not a host address of 172.30.2.0/24" in _broken(mutate)


def test_broadcast_address_rejected():
    def mutate(d):
        _hosts(d, "cloud_b")["mcm-b1"]["wan_ip"] = "172.30.0.255"

    assert "wan_ip 172.30.0.255 is not a host address" in _broken(mutate)


def test_public_subnet_rejected():
    def mutate(d):
        d["all"]["vars"]["lab_wan"]["subnet"] = "8.8.8.0/24"
        for cloud in ("cloud_a", "cloud_b"):
            for i, h in enumerate(_hosts(d, cloud).values()):
                h["wan_ip"] = f"8.8.8.{10 + i + (10 if cloud == 'cloud_b' else 0)}"

    assert "8.8.8.0/24 is not a private range" in _broken(mutate)


def test_overlapping_networks_rejected():
    def mutate(d):
        d["all"]["children"]["cloud_b"]["vars"]["lab_underlay"]["subnet"] = "172.30.1.0/24"
        _hosts(d, "cloud_b")["mcm-b1"]["underlay_ip"] = "172.30.1.99"

    assert "networks mcm-cloud-a and mcm-cloud-b overlap" in _broken(mutate)


def test_long_bridge_name_rejected():
    def mutate(d):
        d["all"]["vars"]["lab_wan"]["bridge"] = "a-bridge-name-too-long"

    assert "longer than 15 bytes" in _broken(mutate)


def test_missing_host_address_rejected():
    def mutate(d):
        del _hosts(d, "cloud_a")["mcm-a1"]["underlay_ip"]

    assert "host 'mcm-a1' lacks 'underlay_ip'" in _broken(mutate)


def test_cloud_without_hosts_rejected():
    def mutate(d):
        d["all"]["children"]["cloud_b"]["hosts"] = {}

    assert "cloud group 'cloud_b' has no hosts" in _broken(mutate)


def test_cni_network_has_no_gateway_and_no_nat():
    for net in topo().networks:
        conf = lab.cni_conflist(net)
        assert [p["type"] for p in conf["plugins"]] == ["bridge"]
        bridge = conf["plugins"][0]
        assert bridge["isGateway"] is False
        assert bridge["ipMasq"] is False
        assert bridge["bridge"] == net.bridge
        assert bridge["ipam"]["routes"] == []
        assert "gateway" not in bridge["ipam"]["ranges"][0][0]


def test_run_args_name_networks_and_peers():
    t = topo()
    a1 = t.host("mcm-a1")
    args = lab.run_args(a1, t, "localhost/mcm-node:x")
    assert args[-1] == "localhost/mcm-node:x"
    assert args[args.index("--name") + 1] == "mcm-a1"
    assert args[args.index("--hostname") + 1] == "mcm-a1"
    assert "--privileged" in args
    nets = [args[i + 1] for i, a in enumerate(args) if a == "--network"]
    assert nets == [
        "mcm-cloud-a:ip=172.30.1.11,interface_name=eth0",
        "mcm-wan:ip=172.30.0.11,interface_name=eth1",
    ]
    peers = sorted(args[i + 1] for i, a in enumerate(args) if a == "--add-host")
    assert peers == ["mcm-a2:172.30.0.12", "mcm-b1:172.30.0.21"]


def test_unknown_host_is_a_clear_error():
    with pytest.raises(lab.LabError, match="no lab host named 'nope'"):
        topo().host("nope")


def test_shaping_uses_htb_at_the_wan_rate():
    t = topo()
    cmds = lab.shaping_commands(t.wan)
    assert cmds[0][:6] == ["tc", "qdisc", "replace", "dev", "eth1", "root"]
    assert "htb" in cmds[0]
    assert cmds[1][-4:] == ["rate", t.wan.rate, "ceil", t.wan.rate]
    unshaped = lab.LabNetwork("n", "br", ipaddress.IPv4Network("10.0.0.0/24"), "eth0", None)
    assert lab.shaping_commands(unshaped) == []


def test_shaping_again_keeps_the_htb_root_and_replaces_the_class():
    t = topo()
    shown = "qdisc htb 1: root refcnt 3 r2q 10 default 0x10 direct_packets_stat 0\n"
    cmds = lab.shaping_commands(t.wan, shown)
    assert [c[1] for c in cmds] == ["class"]
    assert lab.shaping_commands(t.wan, "qdisc noqueue 0: root refcnt 2\n")[0][1] == "qdisc"


def test_host_uuids_are_stable_and_distinct():
    names = topo().host_names
    uuids = {lab.host_uuid(n) for n in names}
    assert len(uuids) == len(names)
    assert lab.host_uuid("mcm-a1") == lab.host_uuid("mcm-a1")


DEB822 = """\
Types: deb
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""

ONELINE = """\
# a comment
deb [arch=amd64 signed-by=/x.gpg] http://other.example/debian bookworm main contrib
deb-src http://src.example/debian bookworm main
deb https://packages.example/apt cloud-sdk-bookworm main
"""


def test_apt_sources_deb822():
    found = lab.parse_apt_sources([DEB822])
    assert found == {
        "bookworm": "http://mirror.example/debian",
        "bookworm-updates": "http://mirror.example/debian",
        "bookworm-security": "http://mirror.example/debian-security",
    }


def test_apt_sources_one_line_and_first_wins():
    assert lab.parse_apt_sources([ONELINE]) == {"bookworm": "http://other.example/debian"}
    both = lab.parse_apt_sources([DEB822, ONELINE])
    assert both["bookworm"] == "http://mirror.example/debian"
    text = lab.sources_list(both)
    assert "deb http://mirror.example/debian-security bookworm-security main\n" in text


def test_inputs_hash_follows_content(tmp_path):
    f = tmp_path / "Containerfile"
    f.write_text("FROM a\n")
    first = lab.inputs_hash([f], "base:1")
    assert first == lab.inputs_hash([f], "base:1")
    assert first != lab.inputs_hash([f], "base:2")
    f.write_text("FROM b\n")
    assert first != lab.inputs_hash([f], "base:1")


def test_node_image_inputs_cover_init_and_packages():
    files = {p.name for p in (ROOT / "lab/node").iterdir() if p.is_file()}
    assert {"Containerfile", "node-init", "packages.txt"} <= files
    init = (ROOT / "lab/node/node-init").read_text()
    # the facts of this machine the node must handle
    assert "rm -f /dev/kvm" in init
    assert "host_uuid" in init
    containerfile = (ROOT / "lab/node/Containerfile").read_text()
    assert "tini" in containerfile
    assert "networks/autostart" in containerfile  # libvirt's NATed default network is removed
