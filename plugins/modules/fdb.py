#!/usr/bin/python
# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Static FDB entries (head-end replication) of VXLAN devices, as a resource module."""

from __future__ import annotations

DOCUMENTATION = r"""
module: fdb
short_description: Manage the static FDB entries of VXLAN devices (head-end replication)
version_added: 0.1.0
description:
  - Adds and removes static forwarding entries of VXLAN devices, as
    C(bridge fdb append 00:00:00:00:00:00 dev vxlan-1001 dst 172.30.1.12) does. The
    all-zero MAC entries form the flood list - broadcast, unknown unicast and multicast
    frames are copied to every listed peer (unicast VXLAN, no multicast underlay).
  - Entries are appended, so several peers of one MAC coexist.
  - A resource module. It reads what exists, compares it with O(config), returns the list
    of changes and applies them only outside check mode.
  - Entries of our kind are static (permanent, C(self)) entries with a destination.
    Learned entries are left alone, except that removing the last static entry towards a
    remote also removes what the device learned behind that remote - frames to those MACs
    would otherwise keep going, unicast, to a peer no longer listed (or to its old
    address) until the entries age out. Entries are only removed from VXLAN devices of
    ours (alias starting with C(mcm:), see M(multicloud.migration.link)).
author: multicloud.migration contributors (@multicloud)
requirements:
  - pyroute2 (0.7.2 or later) on the managed host
options:
  config:
    description: VXLAN devices and their entries.
    type: list
    elements: dict
    default: []
    suboptions:
      device:
        description: Name of the VXLAN device, which must exist.
        type: str
        required: true
      namespace:
        description: Namespace of the device; omit for the root namespace.
        type: str
      entries:
        description:
          - The entries. With O(state=deleted), omit or leave empty to remove every entry
            of our kind from the device.
        type: list
        elements: dict
        suboptions:
          dst:
            description: Underlay IPv4 address of the remote VTEP.
            type: str
            required: true
          mac:
            description: MAC address; the default all-zero MAC is the flood entry.
            type: str
            default: "00:00:00:00:00:00"
  state:
    description:
      - V(merged) adds the listed entries, leaving others alone.
      - V(replaced) makes each listed device have exactly the listed entries of our kind.
      - V(overridden) is V(replaced) that also empties every other VXLAN device of ours
        (within O(scope)).
      - V(deleted) removes the listed entries or, with an empty O(config) and a O(scope),
        every entry of our kind on devices of ours within it.
      - V(gathered) only reads, and returns the entries of devices of ours (all with O(all)).
    type: str
    choices: [merged, replaced, overridden, deleted, gathered]
    default: merged
  scope:
    description: Owner tag prefix (C(mcm:acme/)) narrowing the devices of ours.
    type: list
    elements: str
  scope_namespaces:
    description:
      - Accepted for symmetry with the other modules; devices are scoped by O(scope).
        Each entry must start with C(qdhcp-) or C(qrouter-).
    type: list
    elements: str
    default: []
  all:
    description: With O(state=gathered), return the entries of every VXLAN device.
    type: bool
    default: false
extends_documentation_fragment:
  - multicloud.migration._attributes
seealso:
  - module: multicloud.migration.link
"""

EXAMPLES = r"""
- name: Flood list of network ex-acme/web to the two other hosts that carry it
  multicloud.migration.fdb:
    config:
      - device: vxlan-3901
        entries:
          - dst: 172.30.1.11  # mcm-a1, same cloud: its underlay address
          - dst: 172.30.0.21  # mcm-b1, another cloud: its WAN address
    state: replaced

- name: One more peer, the rest left as it is
  multicloud.migration.fdb:
    config:
      - device: vxlan-3901
        entries:
          - dst: 172.30.0.22

- name: Flood lists of the VXLAN devices of tenant ex-acme
  multicloud.migration.fdb:
    state: gathered
    scope: "mcm:ex-acme/"
  register: ex_acme_fdb
"""

RETURN = r"""
changes:
  description:
    - What was changed (or would be, in check mode), removals first. Each item has
      C(action) (create, delete), C(object) (fdb), C(name) (C(MAC dst ADDRESS)),
      C(namespace) and C(details) (device, mac, dst).
  returned: always
  type: list
  elements: dict
  sample:
    - {action: create, object: fdb, name: "00:00:00:00:00:00 dst 172.30.1.12", namespace: null,
       details: {device: vxlan-1001, mac: "00:00:00:00:00:00", dst: 172.30.1.12}}
before:
  description: Entries of devices of ours and of the listed ones, each C({namespace, device, entries}).
  returned: always
  type: list
  elements: dict
after:
  description: The same after the call (predicted in check mode).
  returned: always
  type: list
  elements: dict
gathered:
  description: With O(state=gathered), the entries found.
  returned: when O(state=gathered)
  type: list
  elements: dict
"""


from ansible_collections.multicloud.migration.plugins.module_utils.netlink import (
    module_main,
)

ENTRY_SPEC = {
    "dst": {"type": "str", "required": True},
    "mac": {"type": "str", "default": "00:00:00:00:00:00"},
}

ITEM_SPEC = {
    "device": {"type": "str", "required": True},
    "namespace": {"type": "str"},
    "entries": {"type": "list", "elements": "dict", "options": ENTRY_SPEC},
}


def main() -> None:
    module_main("fdb", ITEM_SPEC)


if __name__ == "__main__":
    main()
