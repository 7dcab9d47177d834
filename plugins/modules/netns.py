#!/usr/bin/python
# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Network namespaces (/run/netns) and their IPv4 forwarding flag, as a resource module."""

from __future__ import annotations

DOCUMENTATION = r"""
module: netns
short_description: Manage network namespaces and their IPv4 forwarding
version_added: 0.1.0
description:
  - Creates and removes named network namespaces (the ones C(ip netns) lists, under
    C(/run/netns)) and sets the IPv4 forwarding flag inside each
    (C(net.ipv4.ip_forward) of that namespace).
  - A resource module. It reads what exists, compares it with O(config), returns the list
    of changes and applies them only outside check mode. Re-running with the same
    arguments reports no change; an existing namespace is never reported as created.
  - Namespaces of ours are those whose names start with C(qdhcp-) or C(qrouter-) (DHCP and
    router namespaces of tenant networks). Only those are ever removed, by O(state=overridden),
    O(state=deleted) or an item's O(config[].state=absent).
author: multicloud.migration contributors (@multicloud)
requirements:
  - pyroute2 (0.7.2 or later) on the managed host
options:
  config:
    description: The namespaces.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Name of the namespace (a file name under C(/run/netns)).
        type: str
        required: true
      forwarding:
        description:
          - IPv4 forwarding inside the namespace (true for a router namespace).
          - Omit to leave it as it is (O(state=merged)); with O(state=replaced) or
            O(state=overridden) an omitted value means false, the kernel's default.
        type: bool
      state:
        description: V(absent) removes this namespace (only if it is one of ours).
        type: str
        choices: [present, absent]
        default: present
  state:
    description:
      - V(merged) creates the listed namespaces and sets what is given, leaving others alone.
      - V(replaced) is V(merged) that also resets attributes not given (forwarding off).
      - V(overridden) is V(replaced) that also removes every namespace of ours (in
        O(scope_namespaces) when given) that is not listed.
      - V(deleted) removes the listed namespaces or, with an empty O(config) and
        O(scope_namespaces), every namespace of ours within that scope.
      - V(gathered) only reads, and returns the namespaces of ours (all with O(all)).
    type: str
    choices: [merged, replaced, overridden, deleted, gathered]
    default: merged
  scope_namespaces:
    description:
      - Name prefixes narrowing which namespaces of ours O(state=overridden) and
        O(state=deleted) may remove, for example V(qdhcp-acme.) and V(qrouter-acme).
      - Each must start with C(qdhcp-) or C(qrouter-).
    type: list
    elements: str
    default: []
  all:
    description: With O(state=gathered), return every namespace, not only ours.
    type: bool
    default: false
extends_documentation_fragment:
  - multicloud.migration._attributes
notes:
  - A namespace is removed by unmounting its C(/run/netns) entry; processes still running
    inside keep it alive until they exit (stop dnsmasq first).
  - Forwarding is set through C(/proc/sys/net/ipv4/ip_forward) while the module's process
    is inside the namespace (C(setns)); nothing is spawned.
seealso:
  - module: multicloud.migration.link
"""

EXAMPLES = r"""
- name: DHCP and router namespaces of tenant ex-acme
  multicloud.migration.netns:
    config:
      - name: qdhcp-ex-acme.web
      - name: qdhcp-ex-acme.db
      - name: qrouter-ex-acme
        forwarding: true

- name: Exactly these namespaces of ex-acme, remove ex-acme's others
  multicloud.migration.netns:
    config:
      - name: qdhcp-ex-acme.web
      - name: qrouter-ex-acme
        forwarding: true
    state: overridden
    scope_namespaces: [qdhcp-ex-acme., qrouter-ex-acme]

- name: What namespaces are there
  multicloud.migration.netns:
    state: gathered
    all: true
  register: namespaces

- name: Remove every namespace of tenant ex-acme
  multicloud.migration.netns:
    state: deleted
    scope_namespaces: [qdhcp-ex-acme., qrouter-ex-acme]
"""

RETURN = r"""
changes:
  description:
    - What was changed (or would be, in check mode), in order. Each item has C(action)
      (create, update, delete), C(object) (netns), C(name), C(namespace) (null) and
      C(details) (for an update, each attribute with its C(from) and C(to) values).
  returned: always
  type: list
  elements: dict
  sample:
    - {action: create, object: netns, name: qrouter-acme, namespace: null,
       details: {forwarding: true}}
before:
  description: The namespaces of ours and the listed ones before the call, each C({name, forwarding}).
  returned: always
  type: list
  elements: dict
  sample: [{name: qrouter-acme, forwarding: false}]
after:
  description: The same after the call (predicted in check mode).
  returned: always
  type: list
  elements: dict
  sample: [{name: qrouter-acme, forwarding: true}]
gathered:
  description: With O(state=gathered), the namespaces that exist.
  returned: when O(state=gathered)
  type: list
  elements: dict
"""


from ansible_collections.multicloud.migration.plugins.module_utils.netlink import (
    module_main,
)

ITEM_SPEC = {
    "name": {"type": "str", "required": True},
    "forwarding": {"type": "bool"},
    "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
}


def main() -> None:
    module_main("netns", ITEM_SPEC, scoped=False)


if __name__ == "__main__":
    main()
