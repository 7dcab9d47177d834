"""The node overlay's pure parts: the mesh (module_utils/overlay.py) and the OVS diff
(module_utils/ovsdb.py), without Open vSwitch."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.multicloud.migration.plugins.filter.overlay import overlay_mesh
from ansible_collections.multicloud.migration.plugins.module_utils import overlay, ovsdb

HOSTVARS = {
    "mcm-a1": {"overlay_id": 1, "underlay_ip": "172.30.1.11", "wan_ip": "172.30.0.11"},
    "mcm-a2": {"overlay_id": 2, "underlay_ip": "172.30.1.12", "wan_ip": "172.30.0.12"},
    "mcm-b1": {"overlay_id": 3, "underlay_ip": "172.30.2.11", "wan_ip": "172.30.0.21"},
}
GROUPS = {"cloud_a": ["mcm-a1", "mcm-a2"], "cloud_b": ["mcm-b1"]}
CLOUDS = ["cloud_a", "cloud_b"]


def nodes(hostvars=None):
    hostvars = HOSTVARS if hostvars is None else hostvars
    return overlay.nodes_from_inventory(list(hostvars), hostvars, GROUPS, CLOUDS)


def test_private_addresses_inside_a_cloud_public_across():
    mesh = overlay.mesh(nodes(), "mcm-a1")
    assert [(p["name"], p["host"], p["remote_ip"], p["local_ip"]) for p in mesh["peers"]] == [
        ("vxo-2", "mcm-a2", "172.30.1.12", "172.30.1.11"),
        ("vxo-3", "mcm-b1", "172.30.0.21", "172.30.0.11"),
    ]
    assert [p["remote_ip"] for p in overlay.mesh(nodes(), "mcm-b1")["peers"]] == [
        "172.30.0.11", "172.30.0.12"]  # fmt: skip


def test_a_moved_node_changes_only_what_points_at_it():
    moved = {**HOSTVARS, "mcm-a2": {**HOSTVARS["mcm-a2"], "overlay_private_ip": "172.30.1.99"}}
    for me in ("mcm-a1", "mcm-b1"):
        old, new = overlay.mesh(nodes(), me)["peers"], overlay.mesh(nodes(moved), me)["peers"]
        differ = [(o["host"], n["remote_ip"]) for o, n in zip(old, new, strict=True) if o != n]
        assert differ == ([("mcm-a2", "172.30.1.99")] if me == "mcm-a1" else [])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"overlay_id": 1}, "also the one of mcm-a1"),
        ({"overlay_id": None}, "overlay_id is not set"),
        ({"overlay_id": 70000}, "not within"),
        ({"underlay_ip": "nope"}, "not an IPv4 address"),
    ],
)
def test_bad_node_data_is_named(change, message):
    bad = {**HOSTVARS, "mcm-a2": {**HOSTVARS["mcm-a2"], **change}}
    with pytest.raises(overlay.OverlayError, match=message):
        nodes(bad)


def test_tunnel_ports_carry_every_option_and_split_horizon():
    (port,) = overlay.tunnel_ports([{"name": "vxo-2", "remote_ip": "172.30.1.12",
                                     "options": {"tos": "inherit"}}], 4790, 5000)  # fmt: skip
    options = {"remote_ip": "172.30.1.12", "key": "5000", "dst_port": "4790", "tos": "inherit"}
    assert port == {"name": "vxo-2", "type": "vxlan", "protected": True, "options": options}


def _want(**port_changes):
    options = {"remote_ip": "10.0.0.2", "key": 5000, "dst_port": 4790}
    port = {"name": "vxo-2", "type": "vxlan", "protected": True, "options": options,
            **port_changes}  # fmt: skip
    return ovsdb.want_bridges({"bridges": [{"name": "xenbr0", "datapath_type": "netdev",
                                            "mtu": 1450, "ports": [port],
                                            "purge_ports": True}]})  # fmt: skip


HAVE = {"xenbr0": {"datapath_type": "netdev", "fail_mode": None, "mtu": 1450, "owner": "mcm:ovs",
                   "ports": {"vxo-2": {"type": "vxlan", "protected": True, "tag": None, "mtu": None,
                                       "owner": "mcm:ovs", "options": {
                                           "remote_ip": "10.0.0.2", "key": "5000",
                                           "dst_port": "4790"}}}}}  # fmt: skip


def test_ovs_nothing_to_do_when_equal():
    assert ovsdb.diff_bridges(_want(), HAVE) == []


def test_ovs_a_drifted_or_extra_tunnel_option_is_corrected():
    drifted = {"xenbr0": {**HAVE["xenbr0"], "ports": {"vxo-2": {
        **HAVE["xenbr0"]["ports"]["vxo-2"],
        "options": {"remote_ip": "10.0.0.2", "key": "77", "dst_port": "4790",
                    "tos": "1"}}}}}  # fmt: skip
    (change,) = ovsdb.diff_bridges(_want(), drifted)
    assert (change["action"], change["object"], change["name"]) == ("update", "port", "vxo-2")
    assert change["details"]["options"][1] == {"remote_ip": "10.0.0.2", "key": "5000",
                                               "dst_port": "4790"}  # fmt: skip


def test_ovs_protected_flag_datapath_and_purge():
    have = {"xenbr0": {**HAVE["xenbr0"], "datapath_type": "system", "ports": {
        "vxo-2": {**HAVE["xenbr0"]["ports"]["vxo-2"], "protected": False},
        "vxo-9": {**HAVE["xenbr0"]["ports"]["vxo-2"]},
        "eth9": {**HAVE["xenbr0"]["ports"]["vxo-2"], "owner": None}}}}  # fmt: skip
    changes = ovsdb.diff_bridges(_want(), have)
    assert [(c["action"], c["object"], c["name"]) for c in changes] == [
        ("delete", "port", "vxo-9"),  # ours and no longer listed; eth9 is not ours
        ("update", "bridge", "xenbr0"),
        ("update", "port", "vxo-2"),
    ]
    after = ovsdb.predict(have, changes, _want())
    assert ovsdb.diff_bridges(_want(), after) == []


def test_ovs_a_new_bridge_and_a_port_listed_twice():
    changes = ovsdb.diff_bridges(_want(), {})
    assert [(c["action"], c["object"]) for c in changes] == [
        ("create", "bridge"),
        ("create", "port"),
    ]
    with pytest.raises(ovsdb.OvsdbError, match="listed twice"):
        ovsdb.want_bridges({"bridges": [{"name": "a", "ports": [{"name": "p"}]},
                                        {"name": "b", "ports": [{"name": "p"}]}]})  # fmt: skip


# --- tinc: the tunnels between clouds inside an encrypted network ------------------------


def test_tinc_moves_only_the_tunnels_between_clouds_to_tinc_addresses():
    a1 = overlay.mesh(nodes(), "mcm-a1", encryption="tinc")
    assert [(p["host"], p["encrypted"], p["remote_ip"], p["local_ip"]) for p in a1["peers"]] == [
        ("mcm-a2", False, "172.30.1.12", "172.30.1.11"),  # same cloud: plain, private
        ("mcm-b1", True, "10.251.0.3", "10.251.0.1"),
    ]
    assert a1["flood"] == [{"dst": "172.30.1.12"}, {"dst": "10.251.0.3"}]
    b1 = overlay.mesh(nodes(), "mcm-b1", encryption="tinc")
    assert b1["flood"] == [{"dst": "10.251.0.1"}, {"dst": "10.251.0.2"}]
    assert all(p["encrypted"] for p in b1["peers"])
    plain = overlay.mesh(nodes(), "mcm-b1")
    assert plain["tinc"] is None and not any(p["encrypted"] for p in plain["peers"])
    assert plain["flood"] == [{"dst": "172.30.0.11"}, {"dst": "172.30.0.12"}]


def test_tinc_node_connects_to_the_other_clouds_at_their_public_address():
    a1 = overlay.mesh(nodes(), "mcm-a1", encryption="tinc", tinc_subnet="10.99.8.0/24")["tinc"]
    assert a1 == {
        "name": "mcm_a1", "ip": "10.99.8.1", "address": "10.99.8.1/24",
        "connect_to": ["mcm_b1"],
        "hosts": [
            {"host": "mcm-a1", "name": "mcm_a1", "address": "172.30.0.11",
             "subnet": "10.99.8.1/32"},
            {"host": "mcm-b1", "name": "mcm_b1", "address": "172.30.0.21",
             "subnet": "10.99.8.3/32"},
        ],
    }  # fmt: skip
    b1 = overlay.mesh(nodes(), "mcm-b1", encryption="tinc")["tinc"]
    assert b1["connect_to"] == ["mcm_a1", "mcm_a2"]
    assert [h["name"] for h in b1["hosts"]] == ["mcm_a1", "mcm_a2", "mcm_b1"]


def test_tinc_a_moved_public_address_changes_only_the_host_files_of_the_other_cloud():
    moved = {**HOSTVARS, "mcm-a2": {**HOSTVARS["mcm-a2"], "overlay_public_ip": "172.30.0.99"}}
    for me in ("mcm-a1", "mcm-b1"):
        old = overlay.mesh(nodes(), me, encryption="tinc")
        new = overlay.mesh(nodes(moved), me, encryption="tinc")
        assert new["peers"] == old["peers"]  # the tunnels go to tinc addresses, unchanged
        changed = [n for o, n in zip(old["tinc"]["hosts"], new["tinc"]["hosts"], strict=True)
                   if o != n]  # fmt: skip
        assert changed == ([] if me == "mcm-a1" else [
            {"host": "mcm-a2", "name": "mcm_a2", "address": "172.30.0.99",
             "subnet": "10.251.0.2/32"}])  # fmt: skip


def test_tinc_names_keep_letters_digits_and_underscores():
    assert overlay.tinc_name("node-1.cloud_b") == "node_1_cloud_b"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"encryption": "ipsec"}, "overlay_encryption 'ipsec' is not one of none, tinc"),
        ({"encryption": "tinc", "tinc_subnet": "10.251.0.1/24"}, "not an IPv4 network"),
        ({"encryption": "tinc", "tinc_subnet": "nope"}, "not an IPv4 network"),
        ({"encryption": "tinc", "tinc_subnet": "10.251.0.0/31"}, r"mcm-a1: overlay_id 1 has no"),
        ({"encryption": "tinc", "tinc_subnet": "10.251.0.0/30"}, r"mcm-b1: .* \(ids 1-2 fit"),
    ],
)
def test_tinc_bad_settings_are_named(kwargs, message):
    with pytest.raises(overlay.OverlayError, match=message):
        overlay.mesh(nodes(), "mcm-a1", **kwargs)


def test_tinc_an_id_beyond_the_subnet_and_names_that_collide_are_refused():
    far = {**HOSTVARS, "mcm-b1": {**HOSTVARS["mcm-b1"], "overlay_id": 255}}
    with pytest.raises(overlay.OverlayError, match="mcm-b1: overlay_id 255 has no address"):
        overlay.mesh(nodes(far), "mcm-a1", encryption="tinc")
    wider = overlay.mesh(nodes(far), "mcm-a1", encryption="tinc", tinc_subnet="10.251.0.0/23")
    assert wider["tinc"]["hosts"][1]["subnet"] == "10.251.0.255/32"
    twins = {**HOSTVARS, "mcm_a1": {"overlay_id": 9, "underlay_ip": "172.30.1.19"}}
    groups = {**GROUPS, "cloud_a": [*GROUPS["cloud_a"], "mcm_a1"]}
    with pytest.raises(overlay.OverlayError, match="tinc node name mcm_a1 is also the one of"):
        overlay.mesh(overlay.nodes_from_inventory(list(twins), twins, groups, CLOUDS), "mcm-b1",
                     encryption="tinc")  # fmt: skip
    # without tinc, the names do not matter
    overlay.mesh(overlay.nodes_from_inventory(list(twins), twins, groups, CLOUDS), "mcm-b1")


def test_tinc_tunnels_as_ovs_ports_leave_from_the_tinc_address():
    peers = overlay.mesh(nodes(), "mcm-a2", encryption="tinc")["peers"]
    ports = overlay.tunnel_ports(peers, 4790, 5000)
    assert [(p["name"], p["options"]["remote_ip"], p["options"]["local_ip"]) for p in ports] == [
        ("vxo-1", "172.30.1.11", "172.30.1.12"), ("vxo-3", "10.251.0.3", "10.251.0.2")]  # fmt: skip


def test_filter_passes_encryption_and_names_errors():
    hosts = list(HOSTVARS)
    mesh = overlay_mesh(hosts, HOSTVARS, GROUPS, CLOUDS, "mcm-b1", encryption="tinc",
                        tinc_subnet="10.251.0.0/24")  # fmt: skip
    assert mesh["tinc"]["connect_to"] == ["mcm_a1", "mcm_a2"]
    with pytest.raises(AnsibleFilterError, match="overlay_tinc_subnet"):
        overlay_mesh(hosts, HOSTVARS, GROUPS, CLOUDS, "mcm-b1", encryption="tinc",
                     tinc_subnet="10.251.0.0/33")  # fmt: skip
