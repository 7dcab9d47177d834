# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter: the cloud hosts' facts (infra_facts) merged into a tenant spec (gather_infra.yml)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ansible.errors import AnsibleFilterError

from ansible_collections.multicloud.migration.plugins.module_utils.gather import (
    GatherError,
    build_spec,
    render,
)
from ansible_collections.multicloud.migration.plugins.module_utils.plan import (
    PlanError,
    hosts_from_inventory,
)

# Documentation: infra_spec.yml beside this file.


def infra_spec(
    facts: Mapping[str, Mapping[str, Any]],
    clouds: list[str],
    groups: Mapping[str, list[str]],
    hostvars: Mapping[str, Mapping],
    *,
    tenants: list[str] | None = None,
    placement: Mapping[str, Any] | None = None,
    source: str = "",
) -> dict[str, Any]:
    """build_spec's result and ``text``, the spec file (YAML with a comment header)."""
    try:
        hosts = hosts_from_inventory(clouds, groups, hostvars)
        boot = {name: hostvars[name].get("mcm_vm_boot") for name in hosts}
        result = build_spec(facts, hosts, tenants=tenants, boot=boot, placement=placement)
    except (GatherError, PlanError) as exc:
        raise AnsibleFilterError(str(exc)) from exc
    result["text"] = render(result, source)
    return result


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"infra_spec": infra_spec}
