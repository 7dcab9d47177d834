#!/usr/bin/python
# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read or abort the running libvirt job (a migration) of a domain."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vm_job
short_description: Read or abort the running job (migration) of a libvirt domain
version_added: 0.1.0
description:
  - Reads the job statistics of a domain's running job (a migration), with percent done, bytes
    processed and remaining, rate), or aborts the job with C(virDomainAbortJob).
  - Used by C(abort_migration.yml). An aborted migration leaves the VM running on its
    source host; C(multicloud.migration.vm_migrate), which ran it, removes what it had
    created on the destination.
author: multicloud.migration contributors (@multicloud)
options:
  name:
    description: Domain name.
    type: str
    required: true
  state:
    description:
      - V(gathered) returns the job, if any. V(aborted) aborts it and waits (bounded by
        O(timeout)) until the domain has no job any more.
    type: str
    choices: [gathered, aborted]
    default: gathered
  timeout:
    description: Seconds to wait for an aborted job to end.
    type: float
    default: 60
  uri:
    description: libvirt connection URI.
    type: str
    default: qemu:///system
  destination_uri:
    description:
      - libvirt URI of the migration's destination (as C(multicloud.migration.vm_migrate)
        uses it, e.g. C(qemu+tls://172.30.0.21/system)). When given and the job still runs
        a few seconds after O(state=aborted) sent C(virDomainAbortJob) (libvirt can ignore
        it while disks are mirrored), the paused incoming domain there is destroyed, which
        ends the migration; the VM keeps running here.
    type: str
extends_documentation_fragment:
  - multicloud.migration._attributes
notes:
  - Diff mode shows nothing, as aborting a job changes no configuration.
requirements:
  - libvirt-python
"""

EXAMPLES = r"""
- name: How far is the migration of acme-web1?
  multicloud.migration.vm_job:
    name: ex-acme-web1
  register: job

- name: Abort it
  multicloud.migration.vm_job:
    name: ex-acme-web1
    state: aborted
"""

RETURN = r"""
job:
  description: The running job's progress before any abort; null when there was none.
  returned: success
  type: dict
  sample: {percent: 42.0, processed_bytes: 56623104, remaining_bytes: 78118912, elapsed_s: 3.1}
exists:
  description: Whether the domain exists on this host.
  returned: success
  type: bool
"""

import time

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    import libvirt

    HAS_LIBVIRT = True
except ImportError:
    HAS_LIBVIRT = False

from ansible_collections.multicloud.migration.plugins.module_utils.libvirt_migrate import (
    ABORTS_BEFORE_KILL,
    active_job,
    progress_sample,
)


def kill_incoming(module: AnsibleModule, name: str, uri: str) -> None:
    """Destroy the paused incoming domain of a migration on its destination."""
    try:
        dst = libvirt.open(uri)
        incoming = dst.lookupByName(name)
        if incoming.isActive():
            incoming.destroy()
    except libvirt.libvirtError as exc:
        module.warn(f"{name}: could not destroy the incoming domain on {uri}: {exc}")


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "state": {"type": "str", "choices": ["gathered", "aborted"], "default": "gathered"},
            "timeout": {"type": "float", "default": 60},
            "uri": {"type": "str", "default": "qemu:///system"},
            "destination_uri": {"type": "str"},
        },
        supports_check_mode=True,
    )
    if not HAS_LIBVIRT:
        module.fail_json(msg=missing_required_lib("libvirt-python"))
    name, state = module.params["name"], module.params["state"]
    try:
        conn = libvirt.open(module.params["uri"])
    except libvirt.libvirtError as exc:
        module.fail_json(msg=f"cannot connect to {module.params['uri']}: {exc}")
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        module.exit_json(changed=False, exists=False, job=None)
    stats = active_job(dom)
    job = None if stats is None else progress_sample(stats, stats.get("time_elapsed", 0) / 1000)
    if state == "gathered" or stats is None:
        module.exit_json(changed=False, exists=True, job=job)
    if module.check_mode:
        module.exit_json(changed=True, exists=True, job=job)
    deadline = time.monotonic() + module.params["timeout"]
    attempts = 0
    while active_job(dom) is not None:
        try:
            dom.abortJob()
        except libvirt.libvirtError as exc:
            if active_job(dom) is not None and time.monotonic() > deadline:
                module.fail_json(msg=f"{name}: abortJob failed: {exc}", job=job)
        attempts += 1
        if attempts == ABORTS_BEFORE_KILL and module.params["destination_uri"]:
            kill_incoming(module, name, module.params["destination_uri"])
        if time.monotonic() > deadline:
            module.fail_json(
                msg=f"{name}: the job still runs {module.params['timeout']} s after abortJob",
                job=job,
            )
        time.sleep(1)
    module.exit_json(changed=True, exists=True, job=job)


if __name__ == "__main__":
    main()
