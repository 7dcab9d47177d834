#!/usr/bin/python
# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The migration ledger and the placement record, on the state host."""

from __future__ import annotations

DOCUMENTATION = r"""
module: migration_record
short_description: Read and write the migration ledger and the placement record
version_added: 0.1.0
description:
  - Keeps the record of migrations in a state directory on the state host the inventory
    names (C(docs/state.md)); the playbooks delegate this task there. The ledger has one row per migration
    (id, kind, object, tenant, source, destination, mode, status, started, ended, bytes,
    downtime_ms, error, per-VM details), like C(nova migration-list). The placement record
    says where migrated networks (C(tenant/network) to cloud) and VMs (C(tenant/vm) to
    host) live now, and for a VM a migration mapped or converted (C(layout), C(tenant/vm) to
    host to its C(network), C(ip), C(pool), C(pool_path) and C(disk_format) there);
    C(create_infra.yml) reads it so that it never moves them back.
  - O(action=start) opens a row (status C(running)) for a migration of C(fields.tenant) and
    returns it with its new id, in one locked step with the check that no other migration
    of the tenant is open; it fails naming the open row otherwise. An open row of the same
    migration (C(kind), C(object), C(destination_cloud)) whose owner's heartbeat is older
    than O(owner_timeout) is taken over instead (RV(taken_over)). With O(noop), no row is
    opened unless one is taken over. The action plugin records the run that owns the row
    (controller, user, ansible-playbook's pid, AWX job, a token) and leaves a process
    beating for it while ansible-playbook lives (C(docs/state.md), "Owners and
    heartbeats").
  - O(action=update) merges O(fields) into row O(id) (a terminal status, or C(finished), sets C(ended); C(confirmed) and C(reverted) also set C(closed));
    with O(owner_token), only while that run still owns the row.
  - O(action=beat) is the owner's heartbeat; O(action=import) adds another state
    directory's O(rows) and O(placement) (C(playbooks/move_state.yml)).
  - O(action=gather) only reads. O(placement) entries are merged with any action but
    O(action=import), a null value removes an entry.
  - Writes are atomic and serialised by a lock file, so concurrent playbooks and
    controllers are safe.
author: multicloud.migration contributors (@multicloud)
options:
  state_dir:
    description:
      - The state directory on the host the task runs on. The playbooks pass
        C(mcm_state_dir), by default C(/var/lib/mcm/state) on the state host.
    type: path
    required: true
  action:
    description: What to do with the ledger.
    type: str
    choices: [gather, start, update, beat, import]
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
      - With O(action=import), the whole placement record to import.
    type: dict
    default: {}
  owner:
    description:
      - The run that owns the row O(action=start) opens or takes over. The action plugin
        sets it (controller, user, pid, job, token); a value given is replaced.
    type: dict
  owner_token:
    description:
      - O(action=beat), O(action=update) - the token of the run that owns the row
        (RV(owner_token) of its start).
    type: str
  owner_timeout:
    description:
      - Seconds without a heartbeat after which the run owning an open row counts as gone
        (its row may be taken over by the same migration; RV(rows) report C(owner_state)).
    type: int
    default: 30
  noop:
    description:
      - O(action=start) - the migration has nothing to move; it opens no row, but takes over
        an open row of the same migration whose run is gone.
    type: bool
    default: false
  rows:
    description: O(action=import) - the rows of another state directory.
    type: list
    elements: dict
    default: []
extends_documentation_fragment:
  - multicloud.migration._attributes
  - multicloud.migration._attributes.CONTROLLER_ACTION
notes:
  - O(action=start) always adds a row or takes one over (not idempotent by design);
    updates, imports and placement merges are.
  - "The playbooks delegate it to the state host (C(delegate_to: \"{{ mcm_state_host }}\"));
    on a local connection it runs in the controller's process."
"""

EXAMPLES = r"""
- name: Open a ledger row (refused while another migration of acme is open)
  multicloud.migration.migration_record:
    state_dir: "{{ mcm_state_dir }}"
    action: start
    fields: {kind: instance, object: acme/web1, tenant: acme, source: mcm-a1,
             destination: mcm-b1, destination_cloud: cloud_b, mode: live-block}
  register: row

- name: Close it and record where the VM lives now
  multicloud.migration.migration_record:
    state_dir: "{{ mcm_state_dir }}"
    action: update
    id: "{{ row.row.id }}"
    owner_token: "{{ row.owner_token }}"
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
  description:
    - The row started, taken over, updated, or asked for with O(id); null when a no-op
      start opened none. A row a run owns also has C(owner_state) (alive or gone) and
      C(heartbeat_age_s).
  returned: when O(action=start), O(action=update) or O(id) is given
  type: dict
  sample: {id: 3, kind: instance, object: acme/web1, status: completed, downtime_ms: 42}
taken_over:
  description: O(action=start) took over the open row of a run that is gone.
  returned: when O(action=start)
  type: bool
owner_token:
  description: The token of the run that owns the row now (pass it to later updates).
  returned: when O(action=start) opened or took over a row
  type: str
owner:
  description: O(action=beat) - the run still owns the row (false once it was closed or taken over).
  returned: when O(action=beat)
  type: bool
imported:
  description: O(action=import) - the ids of the rows added.
  returned: when O(action=import)
  type: list
  elements: int
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
