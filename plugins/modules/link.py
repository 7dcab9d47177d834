#!/usr/bin/python
# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Links (bridge, VXLAN, veth, existing devices) in any namespace, as a resource module."""

from __future__ import annotations

DOCUMENTATION = r"""
module: link
short_description: Manage bridges, VXLAN devices, veth pairs and link state over netlink
version_added: 0.1.0
description:
  - Creates, updates and removes Linux links in the root namespace or inside named
    namespaces, over netlink (pyroute2) - bridges, VXLAN devices (unicast, head-end
    replication; see M(multicloud.migration.fdb)), veth pairs whose peer is created directly
    inside its target namespace, and the state/MTU of existing devices such as C(lo).
  - A resource module. It reads what exists, compares every managed attribute with
    O(config) (VXLAN VNI, port, learning, local address and TTL; MTU; master; admin state;
    owner tag), returns the list of changes and applies them only outside check mode.
  - An attribute the kernel cannot change in place (a VXLAN device's VNI or UDP port, the
    kind of a link, a veth's peer name or namespace) makes the link be deleted and created
    again; the change says so (C(action=recreate)). A recreated bridge gets its ports
    back and a recreated VXLAN device its static FDB entries.
  - Links created by this module carry their O(config[].owner) tag as interface alias
    (C(ifalias), as in C(ip link set dev X alias mcm:acme/web)). Links whose alias starts
    with C(mcm:) are ours; no other link is ever removed.
author: multicloud.migration contributors (@multicloud)
requirements:
  - pyroute2 (0.7.2 or later) on the managed host
options:
  config:
    description: The links.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Interface name (at most 15 bytes).
        type: str
        required: true
      kind:
        description:
          - V(bridge), V(vxlan) and V(veth) links are created when missing.
          - V(device) is an existing link (such as C(lo)) whose O(config[].state) and
            O(config[].mtu) only are managed; it is never created or removed.
        type: str
        required: true
        choices: [bridge, vxlan, veth, device]
      namespace:
        description: Namespace of the link; omit for the root namespace.
        type: str
      mtu:
        description: MTU; omit to leave it to the kernel.
        type: int
      mac:
        description:
          - Ethernet address (kinds veth and vxlan); omit to leave it to the kernel.
          - A fixed address lets a gateway move between hosts without its neighbours
            having to learn a new MAC.
        type: str
      master:
        description:
          - The bridge this link is a port of, in the same namespace.
          - With O(state=replaced) or O(state=overridden), an omitted master means no master.
        type: str
      state:
        description:
          - Administrative state. New links are brought up unless V(down) is given.
          - Omit to leave an existing link as it is (O(state=merged)); with
            O(state=replaced)/O(state=overridden) an omitted value means V(up).
        type: str
        choices: [up, down]
      owner:
        description:
          - Owner tag, stored as the interface alias; must start with C(mcm:), for example
            C(mcm:acme/web). Required for every kind but V(device).
        type: str
      vxlan:
        description: VXLAN attributes, required for O(config[].kind=vxlan).
        type: dict
        suboptions:
          id:
            description: The VNI (1 to 16777215). Changing it recreates the device.
            type: int
            required: true
          port:
            description: UDP destination port. Changing it recreates the device.
            type: int
            default: 4789
          learning:
            description:
              - Learn remote MAC addresses from received packets.
              - Switching it off on an existing device also deletes the remote entries the
                device learned (the kernel keeps them, and they would never follow a MAC that
                moves to another peer); frames to those MACs then go to every peer of the
                head-end replication list.
            type: bool
            default: true
          local:
            description: Source address of the tunnel; omit to let the kernel choose.
            type: str
          ttl:
            description: TTL of tunnel packets, 0 to use the default; omit to leave it.
            type: int
      peer:
        description: The other end of a veth pair, required for O(config[].kind=veth).
        type: dict
        suboptions:
          name:
            description: Interface name of the peer.
            type: str
            required: true
          namespace:
            description:
              - Namespace of the peer; omit for the root namespace. The peer is created
                directly inside it, never moved afterwards.
            type: str
          mtu:
            description: MTU of the peer; defaults to O(config[].mtu).
            type: int
          mac:
            description: Ethernet address of the peer; omit to leave it to the kernel.
            type: str
          state:
            description: Administrative state of the peer (new peers are brought up).
            type: str
            choices: [up, down]
          owner:
            description: Owner tag of the peer; defaults to O(config[].owner).
            type: str
  state:
    description:
      - V(merged) creates and updates the listed links, leaving other links alone.
      - V(replaced) is V(merged) that also resets attributes of listed links that are not
        given (no master, up, VXLAN TTL 0, no local address).
      - V(overridden) is V(replaced) that also removes every link of ours (within
        O(scope)) that is not listed.
      - V(deleted) removes the listed links (a veth with its peer) or, with an empty
        O(config) and a O(scope), every link of ours within that scope. V(device) items are
        ignored.
      - V(gathered) only reads, and returns the links of ours (all with O(all)).
    type: str
    choices: [merged, replaced, overridden, deleted, gathered]
    default: merged
  scope:
    description:
      - Owner tag prefix narrowing which links of ours O(state=overridden) and
        O(state=deleted) may remove (and O(state=gathered) returns), such as C(mcm:acme/).
    type: list
    elements: str
  scope_namespaces:
    description:
      - Accepted for symmetry with the other modules; links are scoped by O(scope).
        Each entry must start with C(qdhcp-) or C(qrouter-).
    type: list
    elements: str
    default: []
  all:
    description: With O(state=gathered), return every link, not only ours.
    type: bool
    default: false
extends_documentation_fragment:
  - multicloud.migration._attributes
notes:
  - Links are read in the root namespace, in the namespaces named in O(config), and with
    O(state=overridden), O(state=gathered) or a scoped O(state=deleted) in every C(qdhcp-*)
    and C(qrouter-*) namespace (every namespace with O(all)).
  - One netlink socket per namespace serves the whole call, so hundreds of links take
    well under a second.
  - The namespaces must exist (M(multicloud.migration.netns)); in check mode a missing
    namespace or master is a warning, since an earlier task would have created it.
seealso:
  - module: multicloud.migration.netns
  - module: multicloud.migration.fdb
  - module: multicloud.migration.address
"""

EXAMPLES = r"""
- name: The L2 segment of network ex-acme/web (VNI 3901) with its DHCP leg
  multicloud.migration.link:
    config:
      - name: brq-3901
        kind: bridge
        mtu: 1450
        owner: mcm:ex-acme/web
      - name: vxlan-3901
        kind: vxlan
        master: brq-3901
        mtu: 1450
        owner: mcm:ex-acme/web
        vxlan: {id: 3901, port: 4789, learning: true, local: "{{ underlay_ip }}"}
      - name: dhb-3901
        kind: veth
        master: brq-3901
        mtu: 1450
        owner: mcm:ex-acme/web
        peer: {name: dhn-3901, namespace: qdhcp-ex-acme.web}
      - name: lo
        kind: device
        namespace: qdhcp-ex-acme.web
        state: up

# ex_acme_links: link items as in the first task (here the segment without its DHCP leg)
- name: Tenant ex-acme has exactly these links, whatever else it had is removed
  multicloud.migration.link:
    config: "{{ ex_acme_links }}"
    state: overridden
    scope: "mcm:ex-acme/"

- name: Links of ours
  multicloud.migration.link:
    state: gathered
  register: links

- name: Remove every link of tenant ex-acme
  multicloud.migration.link:
    state: deleted
    scope: "mcm:ex-acme/"
"""

RETURN = r"""
changes:
  description:
    - What was changed (or would be, in check mode), in order. Each item has C(action)
      (create, update, recreate, delete), C(object) (link), C(name), C(namespace) (null
      for root) and C(details); an update maps each attribute to its C(from) and C(to) values.
  returned: always
  type: list
  elements: dict
  sample:
    - {action: recreate, object: link, name: vxlan-1001, namespace: null,
       details: {vxlan.id: {from: 1001, to: 1002}, reason: cannot be changed in place}}
    - {action: update, object: link, name: brq-1001, namespace: null,
       details: {mtu: {from: 1500, to: 1450}}}
before:
  description:
    - Links of ours (within O(scope)) and the listed links before the call, each with
      C(name), C(namespace), C(kind), C(mtu), C(master), C(state), C(owner) and, where
      relevant, C(vxlan) and C(peer).
  returned: always
  type: list
  elements: dict
after:
  description: The same after the call (predicted in check mode).
  returned: always
  type: list
  elements: dict
gathered:
  description: With O(state=gathered), the links found.
  returned: when O(state=gathered)
  type: list
  elements: dict
"""


from ansible_collections.multicloud.migration.plugins.module_utils.netlink import (
    module_main,
)

VXLAN_SPEC = {
    "id": {"type": "int", "required": True},
    "port": {"type": "int", "default": 4789},
    "learning": {"type": "bool", "default": True},
    "local": {"type": "str"},
    "ttl": {"type": "int"},
}

PEER_SPEC = {
    "name": {"type": "str", "required": True},
    "namespace": {"type": "str"},
    "mtu": {"type": "int"},
    "mac": {"type": "str"},
    "state": {"type": "str", "choices": ["up", "down"]},
    "owner": {"type": "str"},
}

ITEM_SPEC = {
    "name": {"type": "str", "required": True},
    "kind": {"type": "str", "required": True, "choices": ["bridge", "vxlan", "veth", "device"]},
    "namespace": {"type": "str"},
    "mtu": {"type": "int"},
    "mac": {"type": "str"},
    "master": {"type": "str"},
    "state": {"type": "str", "choices": ["up", "down"]},
    "owner": {"type": "str"},
    "vxlan": {"type": "dict", "options": VXLAN_SPEC},
    "peer": {"type": "dict", "options": PEER_SPEC},
}


def main() -> None:
    module_main("link", ITEM_SPEC)


if __name__ == "__main__":
    main()
