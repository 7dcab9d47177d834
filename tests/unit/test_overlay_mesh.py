"""The node overlay's pure parts: the mesh (module_utils/overlay.py) and the OVS diff
(module_utils/ovsdb.py), without Open vSwitch."""

from __future__ import annotations

import pytest

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
