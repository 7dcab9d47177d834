#!/usr/bin/python
# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Everything on a cloud host that a tenant spec could describe, ours or not (read-only)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: infra_facts
short_description: Read a host's namespaces, links, addresses, dnsmasq instances and libvirt domains
version_added: 0.1.0
description:
  - Reads, on the managed host, every network namespace (with its IPv4 forwarding flag),
    every link of the root namespace and of every namespace (bridges, VXLAN devices with
    their VNI, veth legs, owner tags), every IPv4 address, every dnsmasq instance under
    C(/var/lib/mcm/dhcp) (settings, reservations, leases, whether it runs) and every
    libvirt domain of C(qemu:///system) (sizes, NICs, disks with their virtual size,
    metadata) - those this collection created and those it did not.
  - The same readers as the C(gathered) state of M(multicloud.migration.netns),
    M(multicloud.migration.link), M(multicloud.migration.address),
    M(multicloud.migration.dnsmasq) and M(multicloud.migration.vm_info), in one call.
  - C(playbooks/gather_infra.yml) merges the facts of the cloud hosts into a spec with the
    C(multicloud.migration.infra_spec) filter (C(docs/gather.md)).
  - Changes nothing.
author: multicloud.migration contributors (@multicloud)
requirements:
  - pyroute2 (0.7.2 or later) and libvirt-python on the managed host
  - root on the managed host (to enter the namespaces)
options: {}
extends_documentation_fragment:
  - multicloud.migration._attributes.INFO_MODULE
seealso:
  - module: multicloud.migration.vm_info
  - module: multicloud.migration.link
  - module: multicloud.migration.dnsmasq
"""

EXAMPLES = r"""
- name: Read what the host carries
  multicloud.migration.infra_facts:
  register: infra

- name: Print the bridges and the domains
  ansible.builtin.debug:
    msg:
      bridges: "{{ infra.links | selectattr('kind', 'equalto', 'bridge') | map(attribute='name') | list }}"
      domains: "{{ infra.vms | map(attribute='name') | list }}"
"""

RETURN = r"""
netns:
  description: Every network namespace, sorted by name.
  returned: success
  type: list
  elements: dict
  sample: [{name: qdhcp-acme.web, forwarding: false}, {name: qrouter-acme, forwarding: true}]
links:
  description:
    - Every link of the root namespace and of every namespace, as the C(gathered) state
      of M(multicloud.migration.link) returns them (C(name), C(namespace), C(kind),
      C(mtu), C(mac), C(master), C(state), C(owner), C(vxlan), C(peer)).
  returned: success
  type: list
  elements: dict
  sample:
    - {name: brq-16593158, namespace: null, kind: bridge, mtu: 1450, master: null,
       state: up, owner: "mcm:acme/web"}
addresses:
  description: IPv4 addresses per namespace and interface (C(namespace), C(interface), C(addresses)).
  returned: success
  type: list
  elements: dict
  sample: [{namespace: qdhcp-acme.web, interface: dhn-16593158, addresses: [10.10.1.254/24]}]
dnsmasq:
  description:
    - Every dnsmasq instance directory, as the C(gathered) state of
      M(multicloud.migration.dnsmasq) returns them (C(name), C(directory), C(config) with
      the settings and reservations or null when not ours, C(running), C(pid), C(leases)).
  returned: success
  type: list
  elements: dict
vms:
  description: Every libvirt domain, as M(multicloud.migration.vm_info) returns them.
  returned: success
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.multicloud.migration.plugins.module_utils.dnsmasq import DnsmasqError
from ansible_collections.multicloud.migration.plugins.module_utils.gather import collect
from ansible_collections.multicloud.migration.plugins.module_utils.libvirt_vm import (
    HAS_LIBVIRT,
    LIBVIRT_IMPORT_ERROR,
    VmError,
)
from ansible_collections.multicloud.migration.plugins.module_utils.netlink import (
    HAS_PYROUTE2,
    PYROUTE2_IMPORT_ERROR,
    NetlinkStateError,
    netlink_errors,
)


def main() -> None:
    module = AnsibleModule(argument_spec={}, supports_check_mode=True)
    if not HAS_PYROUTE2:
        module.fail_json(msg=missing_required_lib("pyroute2"), exception=PYROUTE2_IMPORT_ERROR)
    if not HAS_LIBVIRT:
        module.fail_json(msg=missing_required_lib("libvirt-python"), exception=LIBVIRT_IMPORT_ERROR)
    try:
        facts = collect(module.check_mode)
    except (*netlink_errors(), NetlinkStateError, DnsmasqError, VmError) as exc:
        module.fail_json(msg=f"cannot read the host: {exc}")
    module.exit_json(changed=False, **facts)


if __name__ == "__main__":
    main()
