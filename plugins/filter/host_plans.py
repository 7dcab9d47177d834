# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter: the desired state of every cloud host for a normalised spec."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ansible.errors import AnsibleFilterError

from ansible_collections.multicloud.migration.plugins.module_utils.plan import (
    PlanError,
    host_plan,
    hosts_from_inventory,
    removal_plan,
    vm_plans,
)

DOCUMENTATION = r"""
name: host_plans
short_description: What every cloud host must carry for a normalised tenant spec
version_added: 0.1.0
description:
  - Takes the normalised spec returned by M(multicloud.migration.tenant_spec) and returns,
    for every host of the cloud groups, its desired namespaces, links, addresses, routes,
    FDB entries and dnsmasq instances, in the shapes the collection's resource modules take
    as O(multicloud.migration.link#module:config) and so on.
  - Hosts need the variables C(underlay_ip) (used by peers in the same cloud) and
    C(wan_ip) (used by peers in other clouds); C(mcm_network_node=true) picks the host
    of a cloud that runs DHCP and the tenant routers (default the first by name).
options:
  _input:
    description: The normalised spec.
    type: dict
    required: true
  clouds:
    description: Names of the inventory groups that are clouds.
    type: list
    elements: str
    required: true
  groups:
    description: The C(groups) variable.
    type: dict
    required: true
  hostvars:
    description: The C(hostvars) variable.
    type: dict
    required: true
  placement:
    description: C(tenant/network) to cloud, for networks that were migrated.
    type: dict
    default: {}
author: multicloud.migration contributors (@multicloud)
"""

EXAMPLES = r"""
- name: Plan every host
  ansible.builtin.set_fact:
    mcm_plans: "{{ tenant_spec.spec | multicloud.migration.host_plans(clouds=mcm_clouds, groups=groups, hostvars=hostvars) }}"
"""

RETURN = r"""
_value:
  description: Host name to its plan (host, cloud, tenants, scopes, netns, links, addresses, routes, fdb, dnsmasq).
  type: dict
"""


def host_plans(
    spec: Mapping[str, Any],
    clouds: list[str],
    groups: Mapping[str, list[str]],
    hostvars: Mapping[str, Mapping],
    placement: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    try:
        hosts = hosts_from_inventory(clouds, groups, hostvars)
        return {name: host_plan(spec, hosts, name, placement) for name in sorted(hosts)}
    except PlanError as exc:
        raise AnsibleFilterError(str(exc)) from exc


def vm_placement(
    spec: Mapping[str, Any],
    clouds: list[str],
    groups: Mapping[str, list[str]],
    hostvars: Mapping[str, Mapping],
    *,
    existing: Mapping[str, list[str]] | None = None,
    placement: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Each cloud host's VMs (config of multicloud.migration.vm), placed on the spec's clouds.

    ``existing`` maps hosts to the domain names of ours they run now (VMs stay there);
    each host's ``mcm_vm_boot`` (kernel, initrd, cmdline) selects direct kernel boot.
    """
    try:
        hosts = hosts_from_inventory(clouds, groups, hostvars)
        boot = {name: hostvars[name].get("mcm_vm_boot") for name in hosts}
        return vm_plans(spec, hosts, existing or {}, boot=boot, placement=placement)
    except PlanError as exc:
        raise AnsibleFilterError(str(exc)) from exc


def removal_plans(tenants: list[str], hosts: list[str]) -> dict[str, Any]:
    """Plans that carry nothing of ``tenants`` on each of ``hosts`` (delete_infra.yml)."""
    return {host: removal_plan(host, tenants) for host in hosts}


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "host_plans": host_plans,
            "removal_plans": removal_plans,
            "vm_placement": vm_placement,
        }
