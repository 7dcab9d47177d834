"""Derived names: formats, the 15-byte interface name limit, determinism."""

from __future__ import annotations

import re

import naming
import pytest

VNIS = [1, 9, 10, 99, 4095, 4096, 65535, 999_999, 1_000_000, 9_999_999, 10_000_000, 16_777_215]


@pytest.mark.parametrize("vni", VNIS)
def test_interface_names_fit_15_bytes(vni):
    names = [
        naming.bridge_name(vni),
        naming.vxlan_name(vni),
        *naming.router_leg_names(vni),
    ]
    for index in range(naming.DHCP_LEG_INDEX_MAX + 1):
        names.extend(naming.dhcp_leg_names(vni, index))
    for name in names:
        assert len(name.encode()) <= 15, name
        assert re.fullmatch(r"[a-z0-9-]+", name), name


def test_longest_names_exactly():
    vni = naming.VNI_MAX
    assert naming.bridge_name(vni) == "brq-16777215"
    assert naming.vxlan_name(vni) == "vxlan-16777215"
    assert naming.router_leg_names(vni) == ("qrb-16777215", "qr-16777215")
    assert naming.dhcp_leg_names(vni) == ("dhb-16777215", "dhn-16777215")
    assert naming.dhcp_leg_names(vni, 99) == ("dhb-16777215-99", "dhn-16777215-99")
    assert len(naming.dhcp_leg_names(vni, 99)[0]) == 15


def test_names_for_a_small_vni():
    assert naming.bridge_name(42) == "brq-42"
    assert naming.vxlan_name(42) == "vxlan-42"
    assert naming.dhcp_leg_names(42) == ("dhb-42", "dhn-42")
    assert naming.dhcp_leg_names(42, 3) == ("dhb-42-3", "dhn-42-3")
    assert naming.router_leg_names(42) == ("qrb-42", "qr-42")


def test_names_of_different_vnis_differ():
    pairs = {(naming.bridge_name(v), naming.vxlan_name(v)) for v in VNIS}
    assert len(pairs) == len(VNIS)
    bridge_side = {naming.dhcp_leg_names(v, i)[0] for v in (1, 11, 111) for i in range(12)}
    assert len(bridge_side) == 36  # "dhb-1-11" vs "dhb-11-1": the hyphen keeps them apart


@pytest.mark.parametrize("vni", [0, -1, 16_777_216, 2**32])
def test_vni_out_of_range_is_refused(vni):
    with pytest.raises(ValueError, match="outside"):
        naming.bridge_name(vni)


@pytest.mark.parametrize("vni", [True, "100", 1.0, None])
def test_vni_of_wrong_type_is_refused(vni):
    with pytest.raises(TypeError):
        naming.vxlan_name(vni)


@pytest.mark.parametrize("index", [-1, 100])
def test_leg_index_out_of_range_is_refused(index):
    with pytest.raises(ValueError, match="leg index"):
        naming.dhcp_leg_names(100, index)


def test_namespaces():
    assert naming.dhcp_namespace("acme", "web") == "qdhcp-acme.web"
    assert naming.router_namespace("acme") == "qrouter-acme"
    # The dot cannot occur in a tenant name: no two (tenant, network) pairs share a name.
    assert naming.dhcp_namespace("a-b", "c") != naming.dhcp_namespace("a", "b-c")


def test_domain_names():
    assert naming.domain_name("acme", "web1") == "acme-web1"
    assert naming.default_dns_domain("acme", "web") == "web.acme"


def test_vm_mac_is_pinned():
    # Pinned: a change here would give every existing VM a new MAC.
    assert naming.vm_mac("acme", "web1") == "52:54:00:88:97:61"
    assert naming.vm_mac("acme", "web2") == "52:54:00:50:c5:1d"
    assert naming.vm_mac("globex", "app1") == "52:54:00:5d:1d:d5"


def test_vm_mac_is_deterministic_and_well_formed():
    macs = {naming.vm_mac("acme", f"vm{i}") for i in range(200)}
    assert len(macs) == 200
    for mac in macs:
        assert re.fullmatch(r"52:54:00(:[0-9a-f]{2}){3}", mac)
        first = int(mac[:2], 16)
        assert first & 0b10, "locally administered"
        assert not first & 0b01, "unicast"
    assert naming.vm_mac("acme", "web1") == naming.vm_mac("acme", "web1")
    assert naming.vm_mac("acme", "web1") != naming.vm_mac("globex", "web1")


def test_vm_mac_collisions_exist():
    # 24 bits: collisions happen (spec.validate reports them); this pair is used there.
    assert naming.vm_mac("acme", "vm1075") == naming.vm_mac("acme", "vm1846")
