#!/usr/bin/python
# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validate and normalise a tenant spec on the controller."""

from __future__ import annotations

DOCUMENTATION = r"""
module: tenant_spec
short_description: Validate and normalise the tenants' northbound spec
version_added: 0.1.0
description:
  - Reads the northbound spec (tenants, networks, VMs; see C(docs/spec.md)), checks every
    rule and returns the normalised spec that the roles consume (gateways, VNIs, DHCP
    ranges, sizes in MiB, MACs and every derived name).
  - On any problem it fails and lists every problem on its own line, each naming the path
    of the offending value, such as C(tenants[0].networks[1].subnet). Nothing is changed
    anywhere. Run it on the controller before any host is touched.
  - YAML syntax errors name the line and column.
author: multicloud.migration contributors (@multicloud)
options:
  path:
    description:
      - Path of the spec file on the host the module runs on (normally the controller).
      - Exactly one of O(path) and O(content) is required.
    type: path
  content:
    description: The spec as YAML text, or as already parsed data.
    type: raw
  clouds:
    description:
      - Names of the inventory groups that are clouds. A network whose C(cloud) is not
        one of them is a problem.
      - Omit to skip that check.
    type: list
    elements: str
extends_documentation_fragment:
  - multicloud.migration._attributes.INFO_MODULE
  - multicloud.migration._attributes.CONTROLLER_ACTION
notes:
  - Runs anywhere Python runs; it reads the file and touches nothing.
"""

EXAMPLES = r"""
- name: Validate the spec against the inventory's clouds
  multicloud.migration.tenant_spec:
    path: "{{ spec_file }}"
    clouds: [cloud_a, cloud_b]
  delegate_to: localhost
  run_once: true
  register: tenant_spec

- name: Show the VNI allocated to each network
  ansible.builtin.debug:
    msg: "{{ tenant_spec.spec.tenants | map(attribute='networks') | flatten | items2dict(key_name='name', value_name='vni') }}"
"""

RETURN = r"""
spec:
  description: The normalised spec (see C(docs/spec.md), section "The normalised spec").
  returned: success
  type: dict
  sample:
    tenants:
      - name: acme
        state: present
        router_namespace: qrouter-acme
        networks:
          - {name: web, cloud: cloud_a, subnet: 10.10.1.0/24, gateway: 10.10.1.1, vni: 16593158}
problems:
  description:
    - Every problem, as C(PATH) followed by the message; empty when the spec is valid.
    - On failure the problems are in C(msg), one per line.
  returned: success
  type: list
  elements: str
  sample: ["tenants[0].networks[1].subnet: 10.10.1.5/24 has host bits set (did you mean 10.10.1.0/24?)"]
summary:
  description: Counts of present tenants, networks and VMs.
  returned: success
  type: dict
  sample: {tenants: 2, networks: 3, vms: 4}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.multicloud.migration.plugins.module_utils.controller_task import (
    TaskFailure,
)
from ansible_collections.multicloud.migration.plugins.module_utils.spec import (
    TASK_ARGUMENT_SPEC,
    TASK_OPTIONS,
    spec_task,
)


def main() -> None:
    # The action plugin of the same name runs spec_task in the controller's process when
    # the task runs on the controller (connection local); this is the path for any other.
    module = AnsibleModule(argument_spec=TASK_ARGUMENT_SPEC, supports_check_mode=True,
                           **TASK_OPTIONS)  # fmt: skip
    try:
        module.exit_json(**spec_task(module.params))
    except TaskFailure as exc:
        module.fail_json(msg=str(exc))


if __name__ == "__main__":
    main()
