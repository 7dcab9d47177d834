"""The netlink engine's pure part: want vs hand-made have -> changes (no root, no netlink)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

NETLINK_PY = Path(__file__).resolve().parents[2] / "plugins" / "module_utils" / "netlink.py"


def _load_netlink():
    # By path, not through conftest: the unit and integration conftest modules share a name.
    if "netlink" in sys.modules:
        return sys.modules["netlink"]
    spec = importlib.util.spec_from_file_location("netlink", NETLINK_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules["netlink"] = module
    spec.loader.exec_module(module)
    return module


nl = _load_netlink()

OWNER = "mcm:acme/web"
ROOT = None
NS = "qdhcp-acme.web"


def link(name, kind, namespace=ROOT, **attrs):
    record = {
        "name": name,
        "namespace": namespace,
        "kind": kind,
        "mtu": 1500,
        "master": None,
        "state": "up",
        "owner": OWNER,
        "vxlan": None,
        "peer": None,
    }
    record.update(attrs)
    return record


def vxlan_attrs(vni=1001, port=4789, learning=True, local=None, ttl=0):
    return {"id": vni, "port": port, "learning": learning, "local": local, "ttl": ttl}


def have_of(*records):
    return {(r["namespace"], r["name"]): r for r in records}


def segment_have(**vxlan):
    """A network as the link module creates it: bridge, vxlan port, veth leg into qdhcp-."""
    return have_of(
        link("brq-1001", "bridge"),
        link("vxlan-1001", "vxlan", master="brq-1001", vxlan=vxlan_attrs(**vxlan)),
        link("dhb-1001", "veth", master="brq-1001", peer={"name": "dhn-1001", "namespace": NS}),
        link("dhn-1001", "veth", NS, peer={"name": "dhb-1001", "namespace": ROOT}),
    )


def segment_config(**vxlan):
    return [
        {"name": "brq-1001", "kind": "bridge", "owner": OWNER},
        {
            "name": "vxlan-1001",
            "kind": "vxlan",
            "owner": OWNER,
            "master": "brq-1001",
            "vxlan": {"id": 1001, **vxlan},
        },
        {
            "name": "dhb-1001",
            "kind": "veth",
            "owner": OWNER,
            "master": "brq-1001",
            "peer": {"name": "dhn-1001", "namespace": NS},
        },
    ]


def links_diff(config, have, state="merged", scope=None):
    return nl.diff_links(nl.normalize_links(config), have, state, scope=scope)


def summary(changes):
    return [(c["action"], c["name"]) for c in changes]


# --------------------------------------------------------------------------- links


def test_matching_links_give_no_change():
    for state in ("merged", "replaced", "overridden"):
        assert links_diff(segment_config(), segment_have(), state) == []


def test_missing_links_are_created_bridge_first_with_details():
    changes = links_diff(list(reversed(segment_config())), {})
    assert summary(changes) == [
        ("create", "brq-1001"),
        ("create", "vxlan-1001"),
        ("create", "dhb-1001"),
    ]  # the peer dhn-1001 comes with its veth, it is no change of its own
    vx = changes[1]["details"]
    assert vx["vxlan.id"] == 1001 and vx["vxlan.port"] == 4789 and vx["vxlan.learning"] is True
    assert changes[2]["details"]["peer"] == f"dhn-1001@{NS}"
    assert nl.describe(changes[0]) == (
        "create link brq-1001 in root: kind=bridge, owner=mcm:acme/web, state=up"
    )


def test_vxlan_id_change_is_a_recreate():
    config = segment_config()
    config[1]["vxlan"]["id"] = 1002
    changes = links_diff(config, segment_have())
    assert summary(changes) == [("recreate", "vxlan-1001")]
    assert changes[0]["details"]["vxlan.id"] == {"from": 1001, "to": 1002}
    assert "recreate link vxlan-1001 in root: vxlan.id 1001 -> 1002" in nl.describe(changes[0])


def test_vxlan_port_change_is_a_recreate():
    changes = links_diff(segment_config(port=8472), segment_have())
    assert summary(changes) == [("recreate", "vxlan-1001")]
    assert changes[0]["details"]["vxlan.port"] == {"from": 4789, "to": 8472}


def test_changed_tunnel_options_are_updates_not_ignored():
    changes = links_diff(segment_config(learning=False, ttl=8, local="172.30.1.11"), segment_have())
    assert summary(changes) == [("update", "vxlan-1001")]
    assert changes[0]["details"] == {
        "vxlan.local": {"from": None, "to": "172.30.1.11"},
        "vxlan.learning": {"from": True, "to": False},
        "vxlan.ttl": {"from": 0, "to": 8},
    }


def test_replaced_resets_unlisted_vxlan_attributes():
    have = segment_have(ttl=8, local="172.30.1.11")
    assert links_diff(segment_config(), have, "merged") == []
    changes = links_diff(segment_config(), have, "replaced")
    assert summary(changes) == [("recreate", "vxlan-1001")]  # a local address cannot be unset
    have = segment_have(ttl=8)
    changes = links_diff(segment_config(), have, "replaced")
    assert changes[0]["details"] == {"vxlan.ttl": {"from": 8, "to": 0}}


def test_mtu_change_is_an_update():
    config = segment_config()
    config[0]["mtu"] = 1450
    changes = links_diff(config, segment_have())
    assert summary(changes) == [("update", "brq-1001")]
    assert changes[0]["details"] == {"mtu": {"from": 1500, "to": 1450}}
    assert nl.describe(changes[0]) == "update link brq-1001 in root: mtu 1500 -> 1450"


def test_master_change_and_reset():
    have = segment_have()
    have[(ROOT, "brq-1002")] = link("brq-1002", "bridge")
    config = segment_config()
    config[1]["master"] = "brq-1002"
    changes = links_diff(config, have)
    assert changes[0]["details"] == {"master": {"from": "brq-1001", "to": "brq-1002"}}
    # merged leaves an unlisted master alone, replaced removes it
    config[1]["master"] = None
    assert links_diff(config, have, "merged") == []
    changes = links_diff(config, have, "replaced")
    assert changes[0]["details"] == {"master": {"from": "brq-1001", "to": None}}


def test_master_that_does_not_exist_is_reported():
    config = segment_config()
    config[1]["master"] = "brq-9"
    want = nl.normalize_links(config)
    problems = nl.check_link_references(want, segment_have())
    assert problems == ["link vxlan-1001: master brq-9 does not exist in namespace root"]
    # a master created in the same call is fine
    assert nl.check_link_references(nl.normalize_links(segment_config()), {}) == []


def test_owner_tag_and_state_are_compared():
    have = segment_have()
    have[(ROOT, "brq-1001")]["owner"] = "mcm:acme/old"
    have[(ROOT, "brq-1001")]["state"] = "down"
    changes = links_diff(segment_config(), have)
    assert changes[0]["details"] == {"owner": {"from": "mcm:acme/old", "to": OWNER}}
    # merged does not touch an unlisted state; replaced brings the link up
    changes = links_diff(segment_config(), have, "replaced")
    assert changes[0]["details"]["state"] == {"from": "down", "to": "up"}


def test_kind_change_and_veth_peer_change_are_recreates():
    have = segment_have()
    have[(ROOT, "brq-1001")]["kind"] = "dummy"
    assert summary(links_diff(segment_config(), have)) == [("recreate", "brq-1001")]
    config = segment_config()
    config[2]["peer"]["namespace"] = "qdhcp-acme.other"
    changes = links_diff(config, segment_have())
    assert summary(changes) == [("recreate", "dhb-1001")]
    assert changes[0]["details"]["peer"] == {
        "from": f"dhn-1001@{NS}",
        "to": "dhn-1001@qdhcp-acme.other",
    }


def test_veth_peer_attributes_are_compared_on_the_peer():
    config = segment_config()
    config[2]["peer"].update(mtu=1450, state="down")
    changes = links_diff(config, segment_have())
    assert summary(changes) == [("update", "dhn-1001")]
    assert changes[0]["namespace"] == NS
    assert changes[0]["details"] == {
        "mtu": {"from": 1500, "to": 1450},
        "state": {"from": "up", "to": "down"},
    }


def test_device_kind_only_state_and_mtu():
    have = have_of(link("lo", None, NS, owner=None, state="down", mtu=65536))
    config = [{"name": "lo", "kind": "device", "namespace": NS, "state": "up"}]
    changes = links_diff(config, have, "replaced")
    assert summary(changes) == [("update", "lo")]
    assert changes[0]["details"] == {"state": {"from": "down", "to": "up"}}
    with pytest.raises(nl.NetlinkStateError, match="device does not exist in namespace root"):
        links_diff([{"name": "eth9", "kind": "device"}], {})


def test_overridden_removes_ours_only_and_a_veth_once():
    have = segment_have()
    have[(ROOT, "eth0")] = link("eth0", None, owner=None)
    have[(ROOT, "br-foreign")] = link("br-foreign", "bridge", owner="somebody else")
    have[(ROOT, "brq-2002")] = link("brq-2002", "bridge", owner="mcm:other/db")
    have[(ROOT, "dhb-2002")] = link(
        "dhb-2002", "veth", owner="mcm:other/db", peer={"name": "dhn-2002", "namespace": "q2"}
    )
    have[("q2", "dhn-2002")] = link(
        "dhn-2002", "veth", "q2", owner="mcm:other/db", peer={"name": "dhb-2002", "namespace": None}
    )
    changes = links_diff(segment_config(), have, "overridden")
    assert summary(changes) == [("delete", "brq-2002"), ("delete", "dhb-2002")]


def test_overridden_with_scope_keeps_other_tenants():
    have = segment_have()
    have[(ROOT, "brq-2002")] = link("brq-2002", "bridge", owner="mcm:other/db")
    have[(ROOT, "brq-1003")] = link("brq-1003", "bridge", owner="mcm:acme/db")
    changes = links_diff(segment_config(), have, "overridden", scope="mcm:acme/")
    assert summary(changes) == [("delete", "brq-1003")]


def test_deleted_listed_and_scoped():
    have = segment_have()
    have[(ROOT, "brq-2002")] = link("brq-2002", "bridge", owner="mcm:other/db")
    changes = links_diff(segment_config()[2:], have, "deleted")
    assert summary(changes) == [("delete", "dhb-1001")]  # the peer goes with it
    changes = links_diff([], have, "deleted", scope="mcm:acme/")
    assert summary(changes) == [
        ("delete", "brq-1001"),
        ("delete", "dhb-1001"),
        ("delete", "vxlan-1001"),
    ]
    assert links_diff([], have, "deleted") == []  # no config, no scope: nothing
    have[(ROOT, "eth0")] = link("eth0", None, owner=None)
    with pytest.raises(nl.NetlinkStateError, match="eth0 in namespace root: not ours"):
        links_diff([{"name": "eth0", "kind": "bridge", "owner": OWNER}], have, "deleted")


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"name": "x" * 16, "kind": "bridge", "owner": OWNER}, "not a valid interface name"),
        ({"name": "br0", "kind": "bridge"}, "needs an owner tag"),
        ({"name": "br0", "kind": "bridge", "owner": "acme"}, "must start with 'mcm:'"),
        ({"name": "vx0", "kind": "vxlan", "owner": OWNER}, "VNI in 1..16777215"),
        ({"name": "v0", "kind": "veth", "owner": OWNER}, "an interface name is required"),
        ({"name": "lo", "kind": "device", "owner": OWNER}, "gets no owner tag"),
    ],
)
def test_invalid_link_config_names_the_path(item, message):
    with pytest.raises(nl.NetlinkStateError, match=message) as info:
        nl.normalize_links([item])
    assert str(info.value).startswith("config[0]")


def test_simulated_after_reflects_changes():
    config = segment_config()
    config[1]["vxlan"]["id"] = 1002
    config[0]["mtu"] = 1450
    want = nl.normalize_links(config)
    have = segment_have()
    changes = nl.diff_links(want, have, "merged")
    after = nl.simulate_links(have, changes, want)
    assert after[(ROOT, "vxlan-1001")]["vxlan"]["id"] == 1002
    assert after[(ROOT, "brq-1001")]["mtu"] == 1450
    assert after[(NS, "dhn-1001")]["peer"] == {"name": "dhb-1001", "namespace": None}


# --------------------------------------------------------------------------- namespaces


def test_netns_create_update_and_scope():
    have = {
        "qdhcp-acme.web": {"name": "qdhcp-acme.web", "forwarding": False},
        "qdhcp-other-db": {"name": "qdhcp-other-db", "forwarding": False},
        "qrouter-acme": {"name": "qrouter-acme", "forwarding": False},
        "cni-1234": {"name": "cni-1234", "forwarding": True},
    }
    want = nl.normalize_netns(
        [{"name": "qrouter-acme", "forwarding": True}, {"name": "qdhcp-acme.db"}]
    )
    changes = nl.diff_netns(want, have, "merged")
    assert summary(changes) == [("update", "qrouter-acme"), ("create", "qdhcp-acme.db")]
    assert nl.describe(changes[0]) == "update netns qrouter-acme: forwarding false -> true"
    changes = nl.diff_netns(want, have, "overridden")
    assert summary(changes)[-2:] == [("delete", "qdhcp-acme.web"), ("delete", "qdhcp-other-db")]
    changes = nl.diff_netns(
        want, have, "overridden", scope_namespaces=["qdhcp-acme.", "qrouter-acme"]
    )
    assert ("delete", "qdhcp-other-db") not in summary(changes)
    assert ("delete", "cni-1234") not in summary(changes)
    changes = nl.diff_netns([], have, "deleted", scope_namespaces=["qdhcp-acme."])
    assert summary(changes) == [("delete", "qdhcp-acme.web")]
    with pytest.raises(nl.NetlinkStateError, match="namespace cni-1234: not ours"):
        nl.diff_netns(nl.normalize_netns([{"name": "cni-1234"}]), have, "deleted")
    assert nl.diff_netns(nl.normalize_netns([{"name": "qrouter-acme"}]), have, "merged") == []


# --------------------------------------------------------------------------- addresses


def test_addresses_merged_replaced_overridden_deleted():
    links = segment_have()
    links[(NS, "lo")] = link("lo", None, NS, owner=None)
    links[(ROOT, "eth0")] = link("eth0", None, owner=None)
    have = {
        (NS, "dhn-1001"): ["10.10.1.3/24", "10.10.9.3/24"],
        (NS, "lo"): ["127.0.0.1/8"],
        (ROOT, "eth0"): ["172.30.1.11/24"],
        (ROOT, "brq-1001"): ["192.0.2.1/24"],
    }
    want = nl.normalize_addresses(
        [{"namespace": NS, "interface": "dhn-1001", "addresses": ["10.10.1.2/24", "10.10.1.3/24"]}]
    )
    assert summary(nl.diff_addresses(want, have, links, "merged")) == [("create", "10.10.1.2/24")]
    changes = nl.diff_addresses(want, have, links, "replaced")
    assert summary(changes) == [("delete", "10.10.9.3/24"), ("create", "10.10.1.2/24")]
    assert nl.describe(changes[1]) == f"create address 10.10.1.2/24 on dhn-1001 in {NS}"
    changes = nl.diff_addresses(want, have, links, "overridden")
    # brq-1001 is ours (tagged); lo and eth0 never are
    assert summary(changes) == [
        ("delete", "10.10.9.3/24"),
        ("delete", "192.0.2.1/24"),
        ("create", "10.10.1.2/24"),
    ]
    scoped = nl.diff_addresses(want, have, links, "overridden", scope="mcm:other/")
    assert ("delete", "192.0.2.1/24") not in summary(scoped)
    changes = nl.diff_addresses([], have, links, "deleted", scope="mcm:acme/")
    assert sorted(summary(changes)) == [
        ("delete", "10.10.1.3/24"),
        ("delete", "10.10.9.3/24"),
        ("delete", "192.0.2.1/24"),
    ]
    with pytest.raises(nl.NetlinkStateError, match="is not an IPv4"):
        nl.normalize_addresses([{"interface": "x", "addresses": ["10.0.0.300/24"]}])


# --------------------------------------------------------------------------- routes


def test_routes_default_update_and_ownership():
    links = segment_have()
    links[(ROOT, "eth0")] = link("eth0", None, owner=None)
    have = {
        (NS, "10.10.1.0/24", 0): {"dst": "10.10.1.0/24", "gateway": None, "dev": "dhn-1001",
                                  "metric": 0, "proto": nl.RTPROT_KERNEL},
        (NS, "10.20.0.0/16", 0): {"dst": "10.20.0.0/16", "gateway": "10.10.1.254",
                                  "dev": "dhn-1001", "metric": 0, "proto": nl.RTPROT_STATIC},
        (ROOT, "172.30.9.0/24", 0): {"dst": "172.30.9.0/24", "gateway": "172.30.1.1",
                                     "dev": "eth0", "metric": 0, "proto": 3},
    }  # fmt: skip
    want = nl.normalize_routes(
        [{"namespace": NS, "routes": [{"dst": "default", "gateway": "10.10.1.1"}]}]
    )
    changes = nl.diff_routes(want, have, links, "merged")
    assert summary(changes) == [("create", "default")]
    assert nl.describe(changes[0]) == f"create route default in {NS}: metric=0, gateway=10.10.1.1"
    # replaced: the static route goes, the kernel's connected route stays
    changes = nl.diff_routes(want, have, links, "replaced")
    assert summary(changes) == [("delete", "10.20.0.0/16"), ("create", "default")]
    # overridden never removes the root namespace's own routes
    changes = nl.diff_routes([], have, links, "overridden")
    assert summary(changes) == [("delete", "10.20.0.0/16")]
    # a changed gateway is an in-place update
    want = nl.normalize_routes(
        [{"namespace": NS, "routes": [{"dst": "10.20.0.0/16", "gateway": "10.10.1.253"}]}]
    )
    changes = nl.diff_routes(want, have, links, "merged")
    assert summary(changes) == [("update", "10.20.0.0/16")]
    assert changes[0]["details"]["gateway"] == {"from": "10.10.1.254", "to": "10.10.1.253"}
    with pytest.raises(nl.NetlinkStateError, match="not ours"):
        nl.diff_routes(
            nl.normalize_routes([{"routes": [{"dst": "172.30.9.0/24", "dev": "eth0"}]}]),
            have, links, "deleted",
        )  # fmt: skip
    with pytest.raises(nl.NetlinkStateError, match="host bits"):
        nl.normalize_routes([{"routes": [{"dst": "10.0.0.1/24", "dev": "x"}]}])


# --------------------------------------------------------------------------- fdb


def test_fdb_set_difference_and_ownership():
    links = segment_have()
    links[(ROOT, "vxlan-9")] = link("vxlan-9", "vxlan", owner=None, vxlan=vxlan_attrs(9))
    links[(ROOT, "vxlan-2002")] = link("vxlan-2002", "vxlan", owner="mcm:other/db")
    zero = nl.ZERO_MAC
    have = {
        (ROOT, "vxlan-1001"): {(zero, "172.30.1.12"), (zero, "172.30.1.99")},
        (ROOT, "vxlan-9"): {(zero, "172.30.1.50")},
        (ROOT, "vxlan-2002"): {(zero, "172.30.2.11")},
    }
    want = nl.normalize_fdb(
        [{"device": "vxlan-1001", "entries": [{"dst": "172.30.1.12"}, {"dst": "172.30.2.11"}]}]
    )
    changes = nl.diff_fdb(want, have, links, "merged")
    assert summary(changes) == [("create", f"{zero} dst 172.30.2.11")]
    assert nl.describe(changes[0]) == f"create fdb {zero} dst 172.30.2.11 on vxlan-1001 in root"
    changes = nl.diff_fdb(want, have, links, "replaced")
    assert summary(changes) == [
        ("delete", f"{zero} dst 172.30.1.99"),
        ("create", f"{zero} dst 172.30.2.11"),
    ]
    changes = nl.diff_fdb(want, have, links, "overridden")
    assert ("delete", f"{zero} dst 172.30.2.11") in summary(changes)  # vxlan-2002 is ours
    assert ("delete", f"{zero} dst 172.30.1.50") not in summary(changes)  # vxlan-9 is not
    changes = nl.diff_fdb(want, have, links, "overridden", scope="mcm:acme/")
    assert all(c["details"]["device"] == "vxlan-1001" for c in changes)
    changes = nl.diff_fdb(
        nl.normalize_fdb([{"device": "vxlan-1001", "entries": [{"dst": "172.30.1.12"}]}]),
        have, links, "deleted",
    )  # fmt: skip
    assert summary(changes) == [("delete", f"{zero} dst 172.30.1.12")]
    with pytest.raises(nl.NetlinkStateError, match="not ours"):
        nl.diff_fdb(nl.normalize_fdb([{"device": "vxlan-9"}]), have, links, "deleted")
    assert nl.normalize_fdb(
        [{"device": "v", "entries": [{"dst": "1.2.3.4", "mac": "AA-BB-CC-00-11-22"}]}]
    )[0]["entries"] == [("aa:bb:cc:00:11:22", "1.2.3.4")]


def test_render_is_one_line_per_object():
    text = nl.render("link", [nl._public_link(r) for r in segment_have().values()])
    assert text.count("\n") == 4
    assert "link root/vxlan-1001 kind=vxlan mtu=1500 master=brq-1001" in text
    assert nl.render("fdb", []) == ""


def test_scope_must_be_ours():
    with pytest.raises(nl.NetlinkStateError, match="must start with 'mcm:'"):
        nl._check_scope("acme/", None)
    with pytest.raises(nl.NetlinkStateError, match="must start with one of"):
        nl._check_scope(None, ["cni-"])


def test_scope_entries_cannot_reach_another_tenant():
    assert nl.namespace_matches("qdhcp-acme.web", "qdhcp-acme.")
    assert not nl.namespace_matches("qdhcp-acme2.web", "qdhcp-acme.")
    assert nl.namespace_matches("qrouter-acme", "qrouter-acme")
    assert not nl.namespace_matches("qrouter-acme2", "qrouter-acme")  # exact without separator
    assert nl.is_ours("mcm:acme/web", ["mcm:globex/", "mcm:acme/"])
    assert not nl.is_ours("mcm:acme2/web", ["mcm:acme/"])
    assert not nl.is_ours("other", None)
    with pytest.raises(nl.NetlinkStateError, match="must start with 'mcm:'"):
        nl._check_scope(["mcm:acme/", "acme/"], None)


class _Neigh(dict):
    """A stand-in for pyroute2's ndmsg: item access and get_attr."""

    def __init__(self, ifindex, flags, state, mac, dst=None):
        super().__init__(ifindex=ifindex, flags=flags, state=state)
        self.attrs = {"NDA_LLADDR": mac, "NDA_DST": dst}

    def get_attr(self, name):
        return self.attrs.get(name)


def test_learned_fdb_entries_are_told_from_ours():
    """What switching learning off forgets: learned remotes only, never the flood list."""
    reachable, stale = 0x02, 0x04
    msgs = [
        _Neigh(7, nl.NTF_SELF, reachable, "52:54:00:AA:00:01", "172.30.1.12"),  # learned
        _Neigh(7, nl.NTF_SELF, stale, "52:54:00:aa:00:02", "172.30.0.21"),  # learned, stale
        _Neigh(7, nl.NTF_SELF, nl.NUD_PERMANENT, "00:00:00:00:00:00", "172.30.0.21"),  # ours
        _Neigh(7, nl.NTF_SELF, nl.NUD_NOARP, "52:54:00:aa:00:03", "172.30.0.21"),  # static
        _Neigh(7, 0, reachable, "52:54:00:aa:00:04"),  # the bridge's entry (master)
        _Neigh(8, nl.NTF_SELF, reachable, "52:54:00:aa:00:05", "172.30.1.12"),  # other device
    ]
    assert nl.learned_fdb(msgs, 7) == [
        ("52:54:00:aa:00:01", "172.30.1.12"),
        ("52:54:00:aa:00:02", "172.30.0.21"),
    ]


def test_entries_learned_behind_a_removed_remote_are_orphaned():
    """A remote that left the flood list: what was learned behind it goes, unless a static
    entry still points at it; other remotes and other devices keep theirs."""
    reachable = 0x02
    msgs = [
        _Neigh(7, nl.NTF_SELF, nl.NUD_PERMANENT, "00:00:00:00:00:00", "10.251.0.3"),  # new
        _Neigh(7, nl.NTF_SELF, reachable, "52:54:00:aa:00:01", "172.30.0.21"),  # old address
        _Neigh(7, nl.NTF_SELF, reachable, "52:54:00:aa:00:02", "172.30.1.12"),  # still listed
        _Neigh(7, nl.NTF_SELF, nl.NUD_PERMANENT, "00:00:00:00:00:00", "172.30.1.12"),
        _Neigh(7, nl.NTF_SELF, reachable, "52:54:00:aa:00:03", "172.30.0.22"),  # removed, but
        _Neigh(7, nl.NTF_SELF, nl.NUD_NOARP, "52:54:00:aa:00:09", "172.30.0.22"),  # static
        _Neigh(8, nl.NTF_SELF, reachable, "52:54:00:aa:00:04", "172.30.0.21"),  # other device
    ]
    removed = ["172.30.0.21", "172.30.1.12", "172.30.0.22"]
    assert nl.orphaned_fdb(iter(msgs), 7, removed) == [("52:54:00:aa:00:01", "172.30.0.21")]
    assert nl.orphaned_fdb(msgs, 7, []) == []


# --- one session for the steps of a module call (host_network) ---------------------------


class _LinkMsg(dict):
    """A stand-in for pyroute2's ifinfmsg: a plain link (no linkinfo)."""

    def __init__(self, index, name):
        super().__init__(index=index, flags=1)  # IFF_UP
        self.attrs = {"IFLA_IFNAME": name, "IFLA_MTU": 1500}

    def get_attr(self, name):
        return self.attrs.get(name)


class _DumpCounter(nl.Session):
    """A session without sockets or namespace fds whose link dump counts its calls."""

    def __init__(self, msgs):  # pylint: disable=super-init-not-called
        self.msgs, self.dumps = msgs, 0
        self._links = {}

    def dump(self, namespace, what, family=0):
        assert (namespace, what, family) == (ROOT, "link", 0)
        self.dumps += 1
        return list(self.msgs)


def test_links_are_dumped_once_until_a_change_forgets_them():
    ipr = session = _DumpCounter([_LinkMsg(1, "lo"), _LinkMsg(2, "br-a")])
    first = session.link_records(ROOT)
    first[1]["master"] = "someone"  # read_links fills in masters: callers get copies
    second = session.link_records(ROOT)
    assert ipr.dumps == 1 and second[1]["master"] is None
    assert [r["name"] for r in second] == ["lo", "br-a"]
    session.forget()
    ipr.msgs.append(_LinkMsg(3, "vx-a"))
    assert [r["name"] for r in session.link_records(ROOT)] == ["lo", "br-a", "vx-a"]
    assert ipr.dumps == 2


def test_every_apply_forgets_the_link_dumps():
    forgotten = []

    class Forgetful:
        def forget(self):
            forgotten.append(True)

    for apply in (nl.apply_netns, nl.apply_addresses, nl.apply_routes, nl.apply_fdb):
        args = (Forgetful(), []) if apply is nl.apply_netns else (Forgetful(), [], {})
        apply(*args)
    nl.apply_links(Forgetful(), [], [], {})
    assert len(forgotten) == 5


class _Sessions:
    """nl.Session and nl.run replaced: which session each step got, which were closed."""

    def __init__(self, monkeypatch, changed=(), failing=()):
        self.made, self.closed, self.used = [], [], []
        sessions = self

        class FakeSession:
            def __init__(self):
                sessions.made.append(self)

            def close(self):
                sessions.closed.append(self)

        def fake_run(resource, params, check_mode, diff_mode, shared=None):
            sessions.used.append((resource, shared))
            if resource in failing:
                raise nl.NetlinkStateError(f"{resource} failed")
            return {"changed": resource in changed}

        monkeypatch.setattr(nl, "Session", FakeSession)
        monkeypatch.setattr(nl, "run", fake_run)


def test_shared_runs_keep_one_session_while_nothing_changes(monkeypatch):
    fake = _Sessions(monkeypatch)
    with nl.SharedRuns() as runs:
        for resource in ("netns", "link", "address", "route", "fdb"):
            assert runs(resource, {}, False, False) == {"changed": False}
    assert len(fake.made) == 1 and fake.closed == fake.made
    assert {id(used[1]) for used in fake.used} == {id(fake.made[0])}


def test_shared_runs_start_afresh_after_a_change_or_a_failure(monkeypatch):
    fake = _Sessions(monkeypatch, changed=("netns",), failing=("address",))
    runs = nl.SharedRuns()
    runs("netns", {}, False, False)  # changed: closed at once (removed namespaces go)
    assert fake.closed == fake.made and len(fake.made) == 1
    runs("link", {}, False, False)
    with pytest.raises(nl.NetlinkStateError):
        runs("address", {}, False, False)
    assert len(fake.made) == 2 and fake.closed == fake.made  # the failure closed it
    runs("route", {}, False, False)
    runs.close()
    runs.close()  # twice is harmless
    assert len(fake.made) == 3 and fake.closed == fake.made
    made = fake.made
    assert [used[1] for used in fake.used] == [made[0], made[1], made[1], made[2]]
