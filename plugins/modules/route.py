#!/usr/bin/python
# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""IPv4 routes of the main table in any namespace, as a resource module."""

from __future__ import annotations

DOCUMENTATION = r"""
module: route
short_description: Manage IPv4 routes inside network namespaces over netlink
version_added: 0.1.0
description:
  - Adds, changes and removes IPv4 unicast routes of the main routing table in the root
    namespace or inside named namespaces, such as the default route of a C(qdhcp-*)
    namespace towards the tenant router.
  - A resource module. It reads what exists, compares it with O(config), returns the list
    of changes and applies them only outside check mode. A route is identified by its
    destination and metric; a changed gateway or device is replaced in place.
  - Routes of ours are those, other than the kernel's connected routes (C(proto kernel)),
    inside namespaces of ours (C(qdhcp-*), C(qrouter-*)) or through a link of ours (alias
    starting with C(mcm:)). No other route is ever removed.
author: multicloud.migration contributors (@multicloud)
requirements:
  - pyroute2 (0.7.2 or later) on the managed host
options:
  config:
    description: Namespaces and their routes.
    type: list
    elements: dict
    default: []
    suboptions:
      namespace:
        description: The namespace; omit for the root namespace.
        type: str
      routes:
        description:
          - The routes. With O(state=deleted), omit or leave empty to remove every route
            of ours in the namespace.
        type: list
        elements: dict
        suboptions:
          dst:
            description: Destination network in CIDR form, or V(default).
            type: str
            required: true
          gateway:
            description: Next hop. At least one of O(config[].routes[].gateway) and O(config[].routes[].dev) is required.
            type: str
          dev:
            description: Output interface.
            type: str
          metric:
            description: Route metric (priority).
            type: int
            default: 0
  state:
    description:
      - V(merged) adds or updates the listed routes, leaving others alone.
      - V(replaced) makes each listed namespace have exactly the listed routes of ours.
      - V(overridden) is V(replaced) that also removes the routes of ours in every other
        namespace read (within O(scope)/O(scope_namespaces)).
      - V(deleted) removes the listed routes or, with an empty O(config) and a scope, every
        route of ours within it.
      - V(gathered) only reads, and returns the routes of ours (all with O(all)).
    type: str
    choices: [merged, replaced, overridden, deleted, gathered]
    default: merged
  scope:
    description: Owner tag prefix (C(mcm:acme/)) narrowing routes through links of ours.
    type: list
    elements: str
  scope_namespaces:
    description:
      - Namespace name prefixes (C(qdhcp-acme.), C(qrouter-acme)) narrowing routes inside
        namespaces of ours. Each must start with C(qdhcp-) or C(qrouter-).
    type: list
    elements: str
    default: []
  all:
    description: With O(state=gathered), return every route, not only ours.
    type: bool
    default: false
extends_documentation_fragment:
  - multicloud.migration._attributes
notes:
  - Routes are added with C(proto static). Other tables and IPv6 are not managed.
seealso:
  - module: multicloud.migration.address
"""

EXAMPLES = r"""
- name: The DHCP namespace of ex-acme/web reaches other subnets through the tenant router
  multicloud.migration.route:
    config:
      - namespace: qdhcp-ex-acme.web
        routes:
          - dst: default
            gateway: 10.10.1.1

- name: Only these routes in ex-acme's router namespace
  multicloud.migration.route:
    config:
      - namespace: qrouter-ex-acme
        routes:
          - {dst: 10.20.0.0/16, gateway: 10.10.1.254, metric: 100}
    state: replaced

- name: Remove every route of ours in the namespaces of tenant ex-acme
  multicloud.migration.route:
    state: deleted
    scope_namespaces: [qdhcp-ex-acme., qrouter-ex-acme]
"""

RETURN = r"""
changes:
  description:
    - What was changed (or would be, in check mode), removals first. Each item has
      C(action) (create, update, delete), C(object) (route), C(name) (the destination),
      C(namespace) and C(details) (metric, gateway, dev).
  returned: always
  type: list
  elements: dict
  sample:
    - {action: create, object: route, name: default, namespace: qdhcp-acme.web,
       details: {metric: 0, gateway: 10.10.1.1}}
before:
  description: Routes of ours and the listed ones, each C({namespace, routes}).
  returned: always
  type: list
  elements: dict
after:
  description: The same after the call (predicted in check mode).
  returned: always
  type: list
  elements: dict
gathered:
  description: With O(state=gathered), the routes found.
  returned: when O(state=gathered)
  type: list
  elements: dict
"""


from ansible_collections.multicloud.migration.plugins.module_utils.netlink import (
    module_main,
)

ROUTE_SPEC = {
    "dst": {"type": "str", "required": True},
    "gateway": {"type": "str"},
    "dev": {"type": "str"},
    "metric": {"type": "int", "default": 0},
}

ITEM_SPEC = {
    "namespace": {"type": "str"},
    "routes": {"type": "list", "elements": "dict", "options": ROUTE_SPEC},
}


def main() -> None:
    module_main("route", ITEM_SPEC)


if __name__ == "__main__":
    main()
