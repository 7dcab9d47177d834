#!/usr/bin/python
# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""IPv4 addresses of interfaces in any namespace, as a resource module."""

from __future__ import annotations

DOCUMENTATION = r"""
module: address
short_description: Manage IPv4 addresses of interfaces over netlink
version_added: 0.1.0
description:
  - Adds and removes IPv4 addresses (with their prefix length) of interfaces in the root
    namespace or inside named namespaces, such as the DHCP server address of a C(qdhcp-*)
    namespace or the gateways of a C(qrouter-*) namespace.
  - A resource module. It reads what exists, compares it with O(config), returns the list
    of changes and applies them only outside check mode.
  - Addresses of ours are those on links of ours (interface alias starting with C(mcm:),
    see M(multicloud.migration.link)) and on other interfaces, except C(lo), inside
    namespaces of ours (C(qdhcp-*), C(qrouter-*)).
author: multicloud.migration contributors (@multicloud)
requirements:
  - pyroute2 (0.7.2 or later) on the managed host
options:
  config:
    description: Interfaces and their addresses.
    type: list
    elements: dict
    default: []
    suboptions:
      namespace:
        description: Namespace of the interface; omit for the root namespace.
        type: str
      interface:
        description: Name of the interface, which must exist.
        type: str
        required: true
      addresses:
        description:
          - IPv4 addresses in CIDR form (V(10.10.1.2/24)).
          - With O(state=deleted), omit or leave empty to remove every IPv4 address of the
            interface (only if it is ours).
        type: list
        elements: str
  state:
    description:
      - V(merged) adds the listed addresses, leaving others alone.
      - V(replaced) makes the listed interfaces carry exactly the listed addresses.
      - V(overridden) is V(replaced) that also removes the addresses of every interface of
        ours (within O(scope)/O(scope_namespaces)) that is not listed.
      - V(deleted) removes the listed addresses or, with an empty O(config) and a scope,
        every address of ours within it.
      - V(gathered) only reads, and returns the addresses of ours (all with O(all)).
    type: str
    choices: [merged, replaced, overridden, deleted, gathered]
    default: merged
  scope:
    description:
      - Owner tag prefix (C(mcm:acme/)) narrowing the interfaces of ours that
        O(state=overridden) and O(state=deleted) may touch. Given alone, only tagged
        interfaces are in scope.
    type: list
    elements: str
  scope_namespaces:
    description:
      - Namespace name prefixes (C(qdhcp-acme.), C(qrouter-acme)) whose untagged interfaces
        are in scope. Each must start with C(qdhcp-) or C(qrouter-).
    type: list
    elements: str
    default: []
  all:
    description: With O(state=gathered), return every IPv4 address, not only ours.
    type: bool
    default: false
extends_documentation_fragment:
  - multicloud.migration._attributes
notes:
  - IPv6 addresses are never read, compared or removed.
seealso:
  - module: multicloud.migration.link
  - module: multicloud.migration.route
"""

EXAMPLES = r"""
- name: DHCP server address of ex-acme/web and the tenant router's gateway
  multicloud.migration.address:
    config:
      - namespace: qdhcp-ex-acme.web
        interface: dhn-3901
        addresses: [10.10.1.2/24]
      - namespace: qrouter-ex-acme
        interface: qr-3901
        addresses: [10.10.1.1/24]
    state: replaced

- name: Addresses of the interfaces of tenant ex-acme
  multicloud.migration.address:
    state: gathered
    scope_namespaces: [qdhcp-ex-acme., qrouter-ex-acme]
  register: ex_acme_addresses

- name: Remove the addresses of every interface of tenant ex-acme
  multicloud.migration.address:
    state: deleted
    scope: "mcm:ex-acme/"
    scope_namespaces: [qdhcp-ex-acme., qrouter-ex-acme]
"""

RETURN = r"""
changes:
  description:
    - What was changed (or would be, in check mode), removals first. Each item has
      C(action) (create, delete), C(object) (address), C(name) (the CIDR), C(namespace)
      and C(details.interface).
  returned: always
  type: list
  elements: dict
  sample:
    - {action: create, object: address, name: 10.10.1.2/24, namespace: qdhcp-acme.web,
       details: {interface: dhn-1001}}
before:
  description: Addresses of ours and of the listed interfaces, each C({namespace, interface, addresses}).
  returned: always
  type: list
  elements: dict
after:
  description: The same after the call (predicted in check mode).
  returned: always
  type: list
  elements: dict
gathered:
  description: With O(state=gathered), the addresses found.
  returned: when O(state=gathered)
  type: list
  elements: dict
"""


from ansible_collections.multicloud.migration.plugins.module_utils.netlink import (
    module_main,
)

ITEM_SPEC = {
    "namespace": {"type": "str"},
    "interface": {"type": "str", "required": True},
    "addresses": {"type": "list", "elements": "str"},
}


def main() -> None:
    module_main("address", ITEM_SPEC)


if __name__ == "__main__":
    main()
