# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Derived names: the one place where the name of every derived object is decided.

Everything a playbook creates on a host (bridges, VXLAN devices, veth legs,
namespaces, libvirt domains, MAC addresses) is named here, from the spec's
tenant/network/vm names and the network's VNI. Nothing else in the collection
builds such a name by hand.

Linux interface names are limited to 15 bytes (IFNAMSIZ - 1). Every interface
name below is built from a short prefix and the decimal VNI (at most 8 digits,
since a VNI is at most 16777215), so it always fits: ``_ifname`` asserts it.

Pure Python, stdlib only: importable on the controller, on hosts and in unit tests.
"""

from __future__ import annotations

import hashlib

VNI_MIN = 1
VNI_MAX = 16777215  # 24 bits
IFNAME_MAX = 15  # bytes, without the trailing NUL
# A managed-novlan segment can carry several networks, each with its own DHCP leg
# on the segment's bridge; the leg index is appended to the leg name.
DHCP_LEG_INDEX_MAX = 99

BRIDGE_PREFIX = "brq-"
VXLAN_PREFIX = "vxlan-"
DHCP_LEG_BRIDGE_PREFIX = "dhb-"  # root namespace side, enslaved to the bridge
DHCP_LEG_NS_PREFIX = "dhn-"  # inside qdhcp-*, carries the DHCP server address
ROUTER_LEG_BRIDGE_PREFIX = "qrb-"  # root namespace side, enslaved to the bridge
ROUTER_LEG_NS_PREFIX = "qr-"  # inside qrouter-*, carries the gateway address(es)
DHCP_NS_PREFIX = "qdhcp-"
ROUTER_NS_PREFIX = "qrouter-"
FIREWALL_TABLE_PREFIX = "mcm-"  # nftables table (family inet) inside qrouter-<tenant>
SECURITY_GROUP_CHAIN_PREFIX = "sg-"  # one chain per network with a security group
# QEMU/libvirt's prefix; 0x52 has the locally administered bit set and the
# multicast bit clear, so every derived MAC is a locally administered unicast one.
MAC_PREFIX = "52:54:00"
ROUTER_MAC_PREFIX = "02:6d:63"  # locally administered unicast, "mcm"


def _check_vni(vni: int) -> int:
    if isinstance(vni, bool) or not isinstance(vni, int):
        raise TypeError(f"VNI must be an int, got {type(vni).__name__}")
    if not VNI_MIN <= vni <= VNI_MAX:
        raise ValueError(f"VNI {vni} is outside {VNI_MIN}..{VNI_MAX}")
    return vni


def _ifname(name: str) -> str:
    if len(name.encode()) > IFNAME_MAX:
        raise ValueError(f"interface name {name!r} is longer than {IFNAME_MAX} bytes")
    return name


def bridge_name(vni: int) -> str:
    """Linux bridge of the L2 segment with this VNI, in the root namespace (brq-<vni>)."""
    return _ifname(f"{BRIDGE_PREFIX}{_check_vni(vni)}")


def vxlan_name(vni: int) -> str:
    """VXLAN device for this VNI, enslaved to the segment's bridge (vxlan-<vni>)."""
    return _ifname(f"{VXLAN_PREFIX}{_check_vni(vni)}")


def _indexed(prefix: str, vni: int, index: int) -> str:
    if isinstance(index, bool) or not isinstance(index, int):
        raise TypeError(f"leg index must be an int, got {type(index).__name__}")
    if not 0 <= index <= DHCP_LEG_INDEX_MAX:
        raise ValueError(f"leg index {index} is outside 0..{DHCP_LEG_INDEX_MAX}")
    suffix = f"-{index}" if index else ""
    return _ifname(f"{prefix}{_check_vni(vni)}{suffix}")


def dhcp_leg_names(vni: int, index: int = 0) -> tuple[str, str]:
    """Veth pair of a network's DHCP namespace: (bridge side, namespace side).

    ``index`` is 0 for a network that has its segment to itself; networks that share a
    managed-novlan segment get 0, 1, 2... (see spec.normalize for how it is assigned).
    """
    return _indexed(DHCP_LEG_BRIDGE_PREFIX, vni, index), _indexed(DHCP_LEG_NS_PREFIX, vni, index)


def router_leg_names(vni: int) -> tuple[str, str]:
    """Veth pair between a segment's bridge and the tenant router: (bridge side, router side).

    One leg per segment: on a shared managed-novlan segment the router leg carries the
    gateway address of every subnet of the segment.
    """
    vni = _check_vni(vni)
    return (
        _ifname(f"{ROUTER_LEG_BRIDGE_PREFIX}{vni}"),
        _ifname(f"{ROUTER_LEG_NS_PREFIX}{vni}"),
    )


def dhcp_namespace(tenant: str, network: str) -> str:
    """Network namespace running dnsmasq for one network (qdhcp-<tenant>.<network>).

    Namespace names are not limited to 15 bytes. The dot cannot occur in a tenant name
    (a DNS label), so ``qdhcp-<tenant>.`` prefixes exactly one tenant's DHCP namespaces
    (a module scope such as ``qdhcp-acme.`` never reaches tenant ``acme-x``).
    """
    return f"{DHCP_NS_PREFIX}{tenant}.{network}"


def router_namespace(tenant: str) -> str:
    """The tenant's router namespace, holding the gateways of all its subnets."""
    return f"{ROUTER_NS_PREFIX}{tenant}"


def vm_mac(tenant: str, vm: str) -> str:
    """Deterministic MAC of a VM's NIC: 52:54:00 + the first 3 bytes of sha256("tenant/vm").

    Stable across re-runs, re-definitions and migrations, independent of the network the
    VM is on. Only 24 bits: spec.validate reports two VMs of one tenant that get the
    same MAC.
    """
    digest = hashlib.sha256(f"{tenant}/{vm}".encode()).digest()
    return MAC_PREFIX + "".join(f":{byte:02x}" for byte in digest[:3])


def router_mac(tenant: str, vni: int) -> str:
    """Deterministic MAC of a tenant router's leg on a segment: 02:6d:63 + sha256 bytes.

    The gateway keeps its MAC when it moves to another cloud's router (subnet migration),
    so the VMs' neighbour entries stay valid and nothing has to re-learn it.
    """
    digest = hashlib.sha256(f"router/{tenant}/{_check_vni(vni)}".encode()).digest()
    return ROUTER_MAC_PREFIX + "".join(f":{byte:02x}" for byte in digest[:3])


def domain_name(tenant: str, vm: str) -> str:
    """libvirt domain name of a VM (<tenant>-<vm>); spec.validate reports clashes."""
    return f"{tenant}-{vm}"


def default_dns_domain(tenant: str, network: str) -> str:
    """Default DNS domain served by a network's dnsmasq (<network>.<tenant>)."""
    return f"{network}.{tenant}"


def firewall_table(tenant: str) -> str:
    """The tenant's nftables table (family inet) in its router namespace."""
    return f"{FIREWALL_TABLE_PREFIX}{tenant}"


def security_group_chain(network: str) -> str:
    """The chain of a network's ingress rules in the tenant's table."""
    return f"{SECURITY_GROUP_CHAIN_PREFIX}{network}"
