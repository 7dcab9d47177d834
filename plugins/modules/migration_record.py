#!/usr/bin/python
# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The migration ledger and the placement record, on the controller."""

from __future__ import annotations

DOCUMENTATION = r"""
module: migration_record
short_description: Read and write the migration ledger and the placement record
version_added: 0.1.0
description:
  - Keeps the record of migrations in a state directory on the controller
    (C(docs/migration.md), "Where placement lives"). The ledger has one row per migration
    (id, kind, object, tenant, source, destination, mode, status, started, ended, bytes,
    downtime_ms, error, per-VM details), like C(nova migration-list). The placement record
    says where migrated networks (C(tenant/network) to cloud) and VMs (C(tenant/vm) to
    host) live now, and for a VM a migration mapped or converted (C(layout), C(tenant/vm) to
    host to its C(network), C(ip), C(pool), C(pool_path) and C(disk_format) there);
    C(create_infra.yml) reads it so that it never moves them back.
  - O(action=start) adds a row (status C(running)) and returns it with its new id;
    O(action=update) merges O(fields) into row O(id) (a terminal status, or C(finished), sets C(ended); C(confirmed) and C(reverted) also set C(closed));
    O(action=gather) only reads. O(placement) entries are merged with any action, a null
    value removes an entry.
  - Writes are atomic and serialised by a lock file, so concurrent playbooks are safe.
author: multicloud.migration contributors (@multicloud)
options:
  state_dir:
    description:
      - The state directory. The playbooks pass C(mcm_state_dir), by default
        C(state/) at the root of the checkout.
    type: path
    required: true
  action:
    description: What to do with the ledger.
    type: str
    choices: [gather, start, update]
    default: gather
  id:
    description:
      - Ledger row to update (O(action=update)) or to return alone (O(action=gather)).
    type: int
  fields:
    description:
      - Row fields to set. C(status) is one of running, aborting, completed, finished,
        confirmed, reverted, aborted, failed. C(id) cannot be set.
    type: dict
    default: {}
  placement:
    description:
      - Placement entries to merge, as C(networks), C(vms) and C(layout) mappings; a null
        value removes the entry. A C(layout) value replaces the VM's whole entry (host to
        fields); empty fields are left out, and an entry left empty is removed.
    type: dict
    default: {}
extends_documentation_fragment:
  - multicloud.migration._attributes
  - multicloud.migration._attributes.CONTROLLER_ACTION
notes:
  - O(action=start) always adds a row (not idempotent by design); updates and placement merges are.
  - "Runs on the controller (C(delegate_to: localhost))."
"""

EXAMPLES = r"""
- name: Open a ledger row
  multicloud.migration.migration_record:
    state_dir: "{{ mcm_state_dir }}"
    action: start
    fields: {kind: instance, object: acme/web1, tenant: acme, source: mcm-a1,
             destination: mcm-b1, mode: live-block}
  register: row

- name: Close it and record where the VM lives now
  multicloud.migration.migration_record:
    state_dir: "{{ mcm_state_dir }}"
    action: update
    id: "{{ row.row.id }}"
    fields: {status: completed, bytes: 1048576, downtime_ms: 42}
    placement:
      vms: {acme/web1: mcm-b1}

- name: Read the ledger and the placement
  multicloud.migration.migration_record:
    state_dir: "{{ mcm_state_dir }}"
  register: record
"""

RETURN = r"""
row:
  description: The row started, updated, or asked for with O(id).
  returned: when O(action=start), O(action=update) or O(id) is given
  type: dict
  sample: {id: 3, kind: instance, object: acme/web1, status: completed, downtime_ms: 42}
rows:
  description: Every ledger row, oldest first.
  returned: always
  type: list
  elements: dict
table:
  description: The ledger as aligned text lines (a header and one line per row).
  returned: always
  type: list
  elements: str
placement:
  description: The placement record after the merge (C(networks), C(vms), C(layout)).
  returned: always
  type: dict
  sample: {networks: {acme/web: cloud_b}, vms: {acme/db1: mcm-b1},
           layout: {acme/db1: {mcm-b1: {pool: mcm-fast, disk_format: raw}}}}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.multicloud.migration.plugins.module_utils.controller_task import (
    TaskFailure,
)
from ansible_collections.multicloud.migration.plugins.module_utils.ledger import (
    TASK_ARGUMENT_SPEC,
    TASK_OPTIONS,
    record_task,
)


def main() -> None:
    # The action plugin of the same name runs record_task in the controller's process when
    # the task runs on the controller (connection local); this is the path for any other.
    module = AnsibleModule(argument_spec=TASK_ARGUMENT_SPEC, supports_check_mode=True,
                           **TASK_OPTIONS)  # fmt: skip
    try:
        module.exit_json(**record_task(module.params, module.check_mode, module._diff))
    except TaskFailure as exc:
        module.fail_json(msg=str(exc))


if __name__ == "__main__":
    main()
