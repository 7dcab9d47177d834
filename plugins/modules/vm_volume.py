#!/usr/bin/python
# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Disk volumes of VMs in libvirt dir storage pools, as a resource module."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vm_volume
short_description: Manage VM disk volumes (qcow2, optional copy-on-write image) in libvirt storage pools
version_added: 0.1.0
description:
  - Creates, grows, removes and lists volumes through the libvirt storage pool API
    (libvirt-python), never with C(qemu-img) directly.
  - A missing dir pool is defined at O(config[].pool_path), built, started and autostarted;
    an inactive one is started.
  - A new volume is blank, or a copy-on-write overlay (backing store) of O(config[].image).
    An existing volume is grown to O(config[].capacity_mib) when smaller (through qemu when
    a running domain uses it) and never shrunk - asking for less fails with a clear message.
  - Refuses to create or grow a volume when the pool has less room than the volume's full
    capacity (or the growth), and when the image is missing or larger than the volume.
  - M(multicloud.migration.vm) creates the volume C(<name>.qcow2) of a VM by itself with
    the same code; this module is for volumes on their own (staging a disk before a
    migration, inspecting or cleaning up a pool).
author: multicloud.migration contributors (@multicloud)
requirements:
  - libvirt-python (Debian package C(python3-libvirt)) on the managed host
options:
  config:
    description: The volumes. For O(state=deleted) only O(config[].name) and O(config[].pool) matter.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Volume name, the file name in the pool (for example C(acme-web1.qcow2)).
        type: str
        required: true
      pool:
        description: Storage pool.
        type: str
        default: mcm
      pool_path:
        description: Directory of the pool, when the module has to create it.
        type: path
        default: /var/lib/mcm/vms
      capacity_mib:
        description: Capacity in MiB; required with O(state=merged).
        type: int
      format:
        description: Volume format.
        type: str
        default: qcow2
      image:
        description: Backing image of a new volume (copy-on-write); ignored for an existing one.
        type: path
      image_format:
        description: Format of O(config[].image).
        type: str
        default: qcow2
      path:
        description:
          - With O(state=deleted), the volume is found by this path, in whichever pool holds
            its directory, instead of by O(config[].name) in O(config[].pool) (a disk a
            migration copied into another pool). Its file name must be O(config[].name).
        type: path
  state:
    description:
      - V(merged) creates missing volumes and grows smaller ones.
      - V(deleted) deletes the listed volumes; a missing volume is no change.
      - V(gathered) changes nothing and returns the listed volumes, or every volume of every
        active pool when O(config) is empty.
    type: str
    choices: [merged, deleted, gathered]
    default: merged
extends_documentation_fragment:
  - multicloud.migration._attributes
seealso:
  - module: multicloud.migration.vm
"""

EXAMPLES = r"""
- name: Disks of two VMs, overlays of the lab guest image
  multicloud.migration.vm_volume:
    config:
      - {name: ex-acme-web1.qcow2, capacity_mib: 64, image: /var/lib/mcm/images/disk.qcow2}
      - {name: ex-acme-web2.qcow2, capacity_mib: 64, image: /var/lib/mcm/images/disk.qcow2}

- name: Grow a disk
  multicloud.migration.vm_volume:
    config:
      - {name: ex-acme-web1.qcow2, capacity_mib: 256}

- name: Every volume of every active pool
  multicloud.migration.vm_volume:
    state: gathered
  register: volumes

- name: Remove a volume
  multicloud.migration.vm_volume:
    state: deleted
    config:
      - name: ex-acme-web2.qcow2
"""

RETURN = r"""
changes:
  description:
    - What was changed (or would be, in check mode). Each item has C(action) (create,
      update, start, delete), C(object) (volume or pool), C(name), C(vm) (the volume label)
      and C(details).
  returned: always
  type: list
  elements: dict
  sample:
    - {action: update, object: volume, name: acme-web1.qcow2, vm: volume acme-web1.qcow2,
       details: {capacity_mib: {from: 64, to: 2048}}}
before:
  description:
    - The listed volumes that existed before, each with C(name), C(pool), C(path),
      C(capacity_mib), C(allocation_mib), C(format) and C(image) (the backing file).
  returned: when O(state) is not gathered
  type: list
  elements: dict
after:
  description: The same after the call (predicted in check mode).
  returned: when O(state) is not gathered
  type: list
  elements: dict
gathered:
  description: With O(state=gathered), the volumes found, as in RV(before).
  returned: when O(state=gathered)
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.multicloud.migration.plugins.module_utils.libvirt_vm import (
    HAS_LIBVIRT,
    LIBVIRT_IMPORT_ERROR,
    VOLUME_STATES,
    VmError,
    run_vm_volume,
)

ITEM_SPEC = {
    "name": {"type": "str", "required": True},
    "pool": {"type": "str", "default": "mcm"},
    "pool_path": {"type": "path", "default": "/var/lib/mcm/vms"},
    "capacity_mib": {"type": "int"},
    "format": {"type": "str", "default": "qcow2"},
    "image": {"type": "path"},
    "image_format": {"type": "str", "default": "qcow2"},
    "path": {"type": "path"},
}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "config": {"type": "list", "elements": "dict", "default": [], "options": ITEM_SPEC},
            "state": {"type": "str", "choices": list(VOLUME_STATES), "default": "merged"},
        },
        supports_check_mode=True,
    )
    if not HAS_LIBVIRT:
        module.fail_json(msg=missing_required_lib("libvirt-python"), exception=LIBVIRT_IMPORT_ERROR)
    try:
        result = run_vm_volume(module.params, module.check_mode, module._diff)
    except VmError as exc:
        module.fail_json(msg=str(exc), changes=exc.changes)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
