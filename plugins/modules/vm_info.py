#!/usr/bin/python
# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read-only view of the libvirt domains of a host, with our metadata and DHCP leases."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vm_info
short_description: List libvirt domains with their NICs, disks, ownership metadata and DHCP leases
version_added: 0.1.0
description:
  - Reads the domains of C(qemu:///system) on the managed host through libvirt-python and
    returns, for each, its state, memory, vCPUs, NICs (MAC, bridge, MTU), disks, console,
    and the ownership metadata that M(multicloud.migration.vm) writes (tenant, network, vm).
  - Matches each NIC's MAC against dnsmasq lease files - those of O(lease_files), or every
    C(/var/lib/mcm/dhcp/*/leases) (written by M(multicloud.migration.dnsmasq)) - and
    returns the leases found, so the address of a VM is known without entering it.
  - Changes nothing.
author: multicloud.migration contributors (@multicloud)
requirements:
  - libvirt-python (Debian package C(python3-libvirt)) on the managed host
options:
  name:
    description: Only these domains (all domains when not given).
    type: list
    elements: str
  scope:
    description: Only domains of ours whose metadata tenant is one of these (exact match).
    type: list
    elements: str
  lease_files:
    description:
      - dnsmasq lease files to read (lines C(expiry mac ip hostname client-id)).
      - Defaults to every C(/var/lib/mcm/dhcp/*/leases). Missing files are skipped.
    type: list
    elements: path
extends_documentation_fragment:
  - multicloud.migration._attributes.INFO_MODULE
seealso:
  - module: multicloud.migration.vm
  - module: multicloud.migration.dnsmasq
"""

EXAMPLES = r"""
- name: Every domain on the host
  multicloud.migration.vm_info:
  register: vms

- name: The VMs of tenant ex-acme with their addresses
  multicloud.migration.vm_info:
    scope: [ex-acme]
  register: ex_acme

- name: Print name and address
  ansible.builtin.debug:
    msg: "{{ ex_acme.vms | map(attribute='name') | zip(ex_acme.vms | map(attribute='ip')) }}"

- name: One VM, leases from a given file
  multicloud.migration.vm_info:
    name: [ex-acme-web1]
    lease_files: [/var/lib/mcm/dhcp/qdhcp-ex-acme.web/leases]
"""

RETURN = r"""
vms:
  description: The domains, sorted by name (the live definition of a running domain).
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Domain name.
      type: str
    uuid:
      description: Domain UUID.
      type: str
    state:
      description: C(running), C(shutoff), C(paused), C(crashed), ...
      type: str
    active:
      description: Whether it runs (or is paused).
      type: bool
    persistent:
      description: Whether it has a persistent definition.
      type: bool
    autostart:
      description: Whether libvirtd starts it.
      type: bool
    domain_type:
      description: C(kvm) or C(qemu).
      type: str
    memory_mib:
      description: Maximum memory in MiB.
      type: int
    current_memory_mib:
      description: Current memory in MiB.
      type: int
    vcpus:
      description: Current vCPUs.
      type: int
    max_vcpus:
      description: Maximum vCPUs.
      type: int
    boot:
      description: Direct kernel boot (C(kernel), C(initrd), C(cmdline)), or null.
      type: dict
    console:
      description: Serial console on a unix socket (C(socket), C(log)), or null.
      type: dict
    metadata:
      description: Our ownership metadata (C(tenant), C(network), C(vm)), or null for foreign domains.
      type: dict
    interfaces:
      description: NICs with C(type), C(mac), C(bridge), C(mtu), C(model), C(target) (tap device when running) and C(leases).
      type: list
      elements: dict
    disks:
      description: Disks with C(device), C(target), C(bus), C(path), C(format), C(backing) and C(capacity_mib).
      type: list
      elements: dict
    leases:
      description: DHCP leases of all its NICs (C(expiry), C(mac), C(ip), C(hostname), C(client_id), C(file)).
      type: list
      elements: dict
    ip:
      description: Address of the first lease, or null.
      type: str
  sample:
    - name: acme-web1
      state: running
      memory_mib: 128
      vcpus: 1
      metadata: {tenant: acme, network: web, vm: web1}
      interfaces: [{mac: "52:54:00:3b:1f:9a", bridge: brq-1001, mtu: 1450, model: virtio,
                    target: vnet0, type: bridge, leases: []}]
      ip: 10.10.1.101
missing:
  description: Names of O(name) that are not defined on the host.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.multicloud.migration.plugins.module_utils.libvirt_vm import (
    HAS_LIBVIRT,
    LIBVIRT_IMPORT_ERROR,
    VmError,
    run_vm_info,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "list", "elements": "str"},
            "scope": {"type": "list", "elements": "str"},
            "lease_files": {"type": "list", "elements": "path"},
        },
        supports_check_mode=True,
    )
    if not HAS_LIBVIRT:
        module.fail_json(msg=missing_required_lib("libvirt-python"), exception=LIBVIRT_IMPORT_ERROR)
    try:
        result = run_vm_info(module.params)
    except VmError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
