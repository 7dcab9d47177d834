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

# Documentation: host_plans.yml, removal_plans.yml, vm_placement.yml beside this file.


def host_plans(
    spec: Mapping[str, Any],
    clouds: list[str],
    groups: Mapping[str, list[str]],
    hostvars: Mapping[str, Mapping],
    placement: Mapping[str, str] | None = None,
    *,
    tenants: list[str] | None = None,
) -> dict[str, Any]:
    if tenants is not None:
        spec = {**spec, "tenants": [t for t in spec.get("tenants", []) if t["name"] in tenants]}
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
