#!/usr/bin/python
# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt domains of tenant VMs (disk, NIC on the network's bridge, state), as a resource module."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vm
short_description: Manage tenant VMs as libvirt domains (definition, disk volume, power state)
version_added: 0.1.0
description:
  - Defines, updates, starts, stops and removes libvirt domains through libvirt-python,
    one per VM of O(config), on C(qemu:///system) of the managed host.
  - Each VM gets one virtio disk, one virtio NIC on a Linux bridge (the network's bridge)
    with a fixed MAC, a serial console, no graphics and no balloon. The domain type is
    C(kvm) where the host offers it and C(/dev/kvm) is usable, else C(qemu) (TCG).
  - When O(config[].disk) is not given, the module owns the VM's disk itself, the volume
    C(<name>.<disk_format>) (C(<name>.qcow2) by default; a migration may have converted it to
    another format, M(multicloud.migration.vm_migrate) O(multicloud.migration.vm_migrate#module:disk_format))
    in the dir storage pool O(config[].pool) (created, built, started and
    autostarted when missing), optionally a copy-on-write overlay of O(config[].image). An
    existing volume is grown when smaller and never shrunk. M(multicloud.migration.vm_volume)
    manages volumes on their own.
  - A resource module. It compares every managed attribute of an existing domain (memory,
    vCPUs, MAC, bridge, MTU, disk, boot, console, metadata, autostart, power state) with
    O(config), returns the list of changes and applies them only outside check mode.
    Memory and vCPU changes go through the API on the persistent definition (vCPUs also
    live, up to the maximum); any other change redefines the persistent definition with
    the same UUID and MAC. Nothing is redefined when nothing differs.
  - A running domain that still runs with an older definition is listed in
    RV(restart_needed); the module never restarts a VM by itself.
  - Ownership is written into the domain as C(<metadata><mcm:vm tenant= network= vm=/>)
    (namespace C(https://multicloud.migration/xmlns/vm/1)). O(state=overridden) and a
    scoped O(state=deleted) only ever remove domains that carry it.
  - Before creating anything the module checks the host, and refuses with a message naming
    the VM when the host has less memory than the VM (in total to define it, free to start
    it), when the image or a boot file is missing, or when the pool has no room for the
    volume. When a VM fails while being created, the domain and the volume this call created
    for it are removed again.
author: multicloud.migration contributors (@multicloud)
requirements:
  - libvirt-python (Debian package C(python3-libvirt)) on the managed host
  - libvirtd with the QEMU driver, reachable as root on C(qemu:///system)
options:
  config:
    description:
      - The VMs. For O(state=deleted) and O(state=gathered) only their names matter.
      - Each listed VM is described completely - an option that is not given takes its
        default, also for an existing domain (V(merged) leaves the other VMs alone, it does
        not merge attributes). Pass the same VM dict every time, as the examples do.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: libvirt domain name (M(multicloud.migration.tenant_spec) derives C(<tenant>-<vm>)).
        type: str
        required: true
      state:
        description:
          - V(running) defines the domain when needed and starts it when it is not running.
          - V(shutoff) defines it when needed and stops it when it runs - an ACPI shutdown,
            at most O(config[].shutdown_timeout) seconds of waiting, then a hard stop.
          - V(absent) stops and undefines the domain (with its managed save image, NVRAM and
            snapshot metadata) and deletes its volume C(<name>.qcow2). A VM that is already
            absent is no change.
        type: str
        choices: [running, shutoff, absent]
        default: running
      memory_mib:
        description: Memory in MiB (a running guest keeps its memory until restarted).
        type: int
        default: 128
      vcpus:
        description: Number of vCPUs.
        type: int
        default: 1
      max_vcpus:
        description: Maximum vCPUs, to allow adding vCPUs to a running guest; defaults to O(config[].vcpus).
        type: int
      mac:
        description:
          - MAC address of the NIC. Defaults to the one derived from O(config[].metadata.tenant)
            and O(config[].metadata.vm) (C(52:54:00) + 3 bytes of sha256), so it is stable
            across runs, redefinitions and migrations.
        type: str
      bridge:
        description: Linux bridge the NIC is plugged into; required unless O(config[].state=absent). It must exist to start the VM.
        type: str
      mtu:
        description: MTU of the NIC (the tap device and, with virtio, what the guest is told).
        type: int
        default: 1450
      disk:
        description:
          - Path of an existing disk image to use. When given, the module does not create,
            grow or delete it - also with O(config[].state=absent), which then undefines the
            domain and leaves the disk (for example one on shared storage that another host's
            copy of the VM uses).
          - When not given, the module manages the volume C(<name>.<disk_format>) in O(config[].pool).
        type: str
      disk_format:
        description:
          - Format of O(config[].disk), or of the module's own volume C(<name>.<disk_format>)
            (one of V(qcow2), V(raw), V(vmdk), V(vhdx); a new volume with an O(config[].image)
            must be V(qcow2)).
        type: str
        default: qcow2
      disk_mib:
        description: Capacity of the managed volume in MiB (grown when larger, never shrunk).
        type: int
        default: 1024
      image:
        description:
          - Backing image of a new managed volume (copy-on-write overlay); blank when not given.
            It must exist and stay in place while the volume exists.
        type: path
      image_format:
        description: Format of O(config[].image).
        type: str
        default: qcow2
      pool:
        description:
          - Storage pool of the managed volume.
          - A pool on shared storage (the same directory on several hosts, such as the spec's
            C(shared_storage) pool C(mcm-shared)) works - the pool is refreshed before the
            volume is looked up, so a volume another host created is found, and removing
            the VM deletes the volume once, on the host that runs it.
        type: str
        default: mcm
      pool_path:
        description: Directory of the pool, when the module has to create it.
        type: path
        default: /var/lib/mcm/vms
      boot:
        description: Direct kernel boot; when not given the VM boots from its disk.
        type: dict
        suboptions:
          kernel:
            description: Path of the kernel on the host.
            type: path
            required: true
          initrd:
            description: Path of the initrd on the host.
            type: path
          cmdline:
            description: Kernel command line, for example C(console=ttyS0 panic=-1).
            type: str
      console_log:
        description:
          - Log file of the serial console (appended to). The console is then also a unix
            socket C(<dir of the log>/<name>.console) that a client can drive. Without it
            the console is a pty.
        type: path
      metadata:
        description: Ownership written into the domain.
        type: dict
        suboptions:
          tenant:
            description: Tenant name; O(scope) matches it.
            type: str
          network:
            description: Network of the VM's NIC.
            type: str
          vm:
            description: VM name within the tenant.
            type: str
      autostart:
        description: Start the domain when libvirtd starts.
        type: bool
        default: false
      shutdown_timeout:
        description: Seconds to wait for a graceful shutdown before a hard stop (0 for a hard stop at once).
        type: int
        default: 60
  state:
    description:
      - V(merged) converges the listed VMs to their O(config[].state), leaving other domains alone.
      - V(overridden) is V(merged) that also removes (as V(absent)) every domain of ours
        (carrying our metadata, within O(scope)) that is not listed.
      - V(deleted) removes the listed VMs or, with an empty O(config) and a O(scope), every
        VM of ours within the scope.
      - V(gathered) only reads and returns the listed VMs (every VM of ours in O(scope) when
        O(config) is empty), as M(multicloud.migration.vm_info) does.
    type: str
    choices: [merged, overridden, deleted, gathered]
    default: merged
  scope:
    description:
      - Tenant names read from the domains' metadata; narrows which domains of ours
        O(state=overridden) and O(state=deleted) may remove and O(state=gathered) returns.
        A tenant matches exactly, never as a prefix of another tenant.
    type: list
    elements: str
extends_documentation_fragment:
  - multicloud.migration._attributes
notes:
  - The domain uses C(machine=pc) on x86, virtio disk (C(vda)) and NIC, ACPI and APIC, and
    C(memballoon model=none) - so memory changes of a running guest need a restart.
  - The console socket path must fit in 107 bytes.
  - VMs are handled one after another in the order of O(config); the first failure stops
    the call (after the rollback of that VM) and is reported with the changes made so far.
seealso:
  - module: multicloud.migration.vm_info
  - module: multicloud.migration.vm_volume
  - module: multicloud.migration.link
"""

EXAMPLES = r"""
- name: VM web1 of tenant ex-acme on network web (bridge brq-3901), lab guest by direct kernel boot
  multicloud.migration.vm:
    config:
      - name: ex-acme-web1
        memory_mib: 128
        vcpus: 1
        bridge: brq-3901
        disk_mib: 64
        image: /var/lib/mcm/images/disk.qcow2
        boot:
          kernel: /var/lib/mcm/images/vmlinuz
          initrd: /var/lib/mcm/images/initrd.img
          cmdline: console=ttyS0 panic=-1 mcm.hostname=web1
        console_log: /var/lib/mcm/console/ex-acme-web1.log
        metadata: {tenant: ex-acme, network: web, vm: web1}

# ex_acme_web1 holds the VM dict of the first task: a VM is always passed whole.
- name: More memory (applied to the definition; restart_needed lists running VMs)
  multicloud.migration.vm:
    config:
      - "{{ ex_acme_web1 | combine({'memory_mib': 256}) }}"
  register: grown

# ex_acme_vms: the VM dicts of every VM of tenant ex-acme meant to be on this host
- name: Tenant ex-acme has exactly these VMs on this host
  multicloud.migration.vm:
    state: overridden
    scope: [ex-acme]
    config: "{{ ex_acme_vms }}"

- name: Stop a VM (ACPI shutdown, a hard stop after 10 s)
  multicloud.migration.vm:
    config:
      - "{{ ex_acme_web1 | combine({'state': 'shutoff', 'shutdown_timeout': 10}) }}"

- name: The VMs of tenant ex-acme, as vm_info returns them
  multicloud.migration.vm:
    state: gathered
    scope: [ex-acme]
  register: ex_acme_vms_now

- name: Remove a VM and its volume (no change when it is already gone)
  multicloud.migration.vm:
    state: deleted
    config:
      - name: ex-acme-web1
"""

RETURN = r"""
changes:
  description:
    - What was changed (or would be, in check mode), in order. Each item has C(action),
      C(object) (domain, volume or pool), C(name), C(vm) (which VM it was for) and C(details).
    - Domain actions are V(define) (details C(xml)), V(update) (memory/vCPUs through the API),
      V(redefine) (any other attribute), V(start), V(stop) (details C(graceful), C(seconds)),
      V(destroy) and V(undefine); an update or redefine maps each attribute to C(from) and C(to).
    - Volume and pool actions are V(create), V(update) (capacity), V(start) and V(delete).
  returned: always
  type: list
  elements: dict
  sample:
    - {action: update, object: domain, name: acme-web1, vm: acme-web1,
       details: {memory_mib: {from: 128, to: 256}}}
before:
  description:
    - The persistent definition of each affected VM before the call, with C(name), C(state),
      C(autostart), C(domain_type), C(memory_mib), C(vcpus), C(max_vcpus), C(mac), C(bridge),
      C(mtu), C(disk), C(disk_format), C(boot), C(console) and C(metadata). Absent VMs are left out.
  returned: when O(state) is not gathered
  type: list
  elements: dict
after:
  description: The same after the call (predicted in check mode).
  returned: when O(state) is not gathered
  type: list
  elements: dict
restart_needed:
  description: VMs that run with an older definition, each with the attributes that wait for a restart.
  returned: when O(state) is not gathered
  type: dict
  sample: {acme-web1: [memory_mib]}
timings:
  description: Seconds taken per VM by C(volume_create), C(define) and C(start).
  returned: when O(state) is not gathered
  type: dict
  sample: {acme-web1: {volume_create: 0.05, define: 0.02, start: 0.4}}
gathered:
  description: With O(state=gathered), the VMs as M(multicloud.migration.vm_info) returns them.
  returned: when O(state=gathered)
  type: list
  elements: dict
diff:
  description: Attribute-level before/after text per changed VM, in diff mode.
  returned: when diff mode is on and something changed
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.multicloud.migration.plugins.module_utils.libvirt_vm import (
    HAS_LIBVIRT,
    LIBVIRT_IMPORT_ERROR,
    STATES,
    VM_STATES,
    VmError,
    run_vm,
)

BOOT_SPEC = {
    "kernel": {"type": "path", "required": True},
    "initrd": {"type": "path"},
    "cmdline": {"type": "str"},
}

METADATA_SPEC = {
    "tenant": {"type": "str"},
    "network": {"type": "str"},
    "vm": {"type": "str"},
}

ITEM_SPEC = {
    "name": {"type": "str", "required": True},
    "state": {"type": "str", "choices": list(VM_STATES), "default": "running"},
    "memory_mib": {"type": "int", "default": 128},
    "vcpus": {"type": "int", "default": 1},
    "max_vcpus": {"type": "int"},
    "mac": {"type": "str"},
    "bridge": {"type": "str"},
    "mtu": {"type": "int", "default": 1450},
    "disk": {"type": "str"},
    "disk_format": {"type": "str", "default": "qcow2"},
    "disk_mib": {"type": "int", "default": 1024},
    "image": {"type": "path"},
    "image_format": {"type": "str", "default": "qcow2"},
    "pool": {"type": "str", "default": "mcm"},
    "pool_path": {"type": "path", "default": "/var/lib/mcm/vms"},
    "boot": {"type": "dict", "options": BOOT_SPEC},
    "console_log": {"type": "path"},
    "metadata": {"type": "dict", "options": METADATA_SPEC},
    "autostart": {"type": "bool", "default": False},
    "shutdown_timeout": {"type": "int", "default": 60},
}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "config": {"type": "list", "elements": "dict", "default": [], "options": ITEM_SPEC},
            "state": {"type": "str", "choices": list(STATES), "default": "merged"},
            "scope": {"type": "list", "elements": "str"},
        },
        supports_check_mode=True,
    )
    if not HAS_LIBVIRT:
        module.fail_json(msg=missing_required_lib("libvirt-python"), exception=LIBVIRT_IMPORT_ERROR)
    try:
        result = run_vm(module.params, module.check_mode, module._diff)
    except VmError as exc:
        module.fail_json(msg=str(exc), changes=exc.changes)
    for warning in result.pop("warnings", []):
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
