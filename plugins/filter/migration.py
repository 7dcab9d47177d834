# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters: the plan of an instance or subnet migration (module_utils/migration_plan.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ansible.errors import AnsibleFilterError

from ansible_collections.multicloud.migration.plugins.module_utils import migration_plan
from ansible_collections.multicloud.migration.plugins.module_utils.plan import (
    PlanError,
    hosts_from_inventory,
)

# Documentation: instance_migration.yml and subnet_migration.yml beside this file.


def _call(
    func: Callable[..., dict], spec: Mapping, inventory: tuple[list, Mapping, Mapping],
    state: tuple[Mapping | None, Mapping | None], **kwargs: Any,
) -> dict:  # fmt: skip
    clouds, groups, hostvars = inventory
    placement, existing = state
    try:
        hosts = hosts_from_inventory(clouds, groups, hostvars)
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        return func(spec, hosts, placement or {}, existing or {}, **kwargs)
    except PlanError as exc:
        raise AnsibleFilterError(str(exc)) from exc


def instance_migration(
    spec: Mapping[str, Any], clouds: list[str], groups: Mapping, hostvars: Mapping, *,
    placement: Mapping | None = None, existing: Mapping | None = None, vm: str,
    to: str, tenant: str | None = None, host: str | None = None, mode: str = "auto",
    network_map: Any = None, storage_map: Any = None, disk_format: str | None = None,
    new_ip: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    return _call(migration_plan.instance_migration, spec, (clouds, groups, hostvars),
                 (placement, existing), instance=vm, to=to, tenant=tenant or None,
                 host=host or None, mode=mode, network_map=network_map or None,
                 storage_map=storage_map or None, disk_format=disk_format or None,
                 new_ip=new_ip or None)  # fmt: skip


def subnet_migration(
    spec: Mapping[str, Any], clouds: list[str], groups: Mapping, hostvars: Mapping, *,
    placement: Mapping | None = None, existing: Mapping | None = None, subnet: str, to: str,
    tenant: str | None = None, mode: str = "auto", network_map: Any = None,
    storage_map: Any = None, disk_format: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    return _call(migration_plan.subnet_migration, spec, (clouds, groups, hostvars),
                 (placement, existing), subnet=subnet, to=to, tenant=tenant or None,
                 mode=mode, network_map=network_map or None, storage_map=storage_map or None,
                 disk_format=disk_format or None)  # fmt: skip


def migration_reversal(
    spec: Mapping[str, Any], clouds: list[str], groups: Mapping, hostvars: Mapping, *,
    placement: Mapping | None = None, existing: Mapping | None = None, row: Mapping,
) -> dict[str, Any]:  # fmt: skip
    return _call(migration_plan.migration_reversal, spec, (clouds, groups, hostvars),
                 (placement, existing), row=row)  # fmt: skip


def migration_line(move: Mapping[str, Any]) -> str:
    """One planned move as a line of text."""
    ip = move.get("ip") or "dynamic IP"
    return (
        f"  {move['key']} ({move['domain']}, {ip}, {move['mac']}): {move['source']} "
        f"({move['source_cloud']}) -> {move['destination']} ({move['destination_cloud']}) "
        f"via {move['destination_address']}, mode {move['mode']}"
        + (", disk on shared storage (stays)" if move.get("storage") == "shared" else "")
        + "".join(f"; {change}" for change in move.get("mapping") or [])
    )


def migration_result(result: Mapping[str, Any]) -> dict[str, Any]:
    """The ledger's per-VM record of one vm_migrate result (no progress samples)."""
    item = result.get("item") or {}
    stats = result.get("stats") or {}
    return {
        "vm": item.get("key"),
        "source": item.get("source"),
        "destination": item.get("destination"),
        "mode": result.get("mode"),
        "status": "failed" if result.get("failed") else "moved",
        "error": result.get("msg") if result.get("failed") else None,
        "bytes": stats.get("bytes"),
        "downtime_ms": stats.get("downtime_ms"),
        "elapsed_ms": stats.get("elapsed_ms") or stats.get("time_elapsed_ms"),
        "checksum": result.get("checksum"),
        # per copied disk: its format on each side and the checksum of what the guest sees
        # (computed when the copy converted the disk)
        "disks": [
            {
                "path": c.get("path"),
                "destination_path": c.get("destination_path", c.get("path")),
                "source_format": c.get("source_format"),
                "destination_format": c.get("destination_format"),
                "guest_checksum": c.get("destination") if c.get("content") == "guest" else None,
            }
            for c in result.get("checksum") or []
        ],
        "network": item.get("network"),
        "ip": item.get("ip"),
        "mapping": item.get("mapping") or [],
        "encryption": result.get("encryption"),
        "progress_samples": len(result.get("progress") or []),
        "guest_resets": result.get("guest_resets") or [],
    }


def source_disks_left(result: Mapping[str, Any]) -> list[str]:
    """``HOST:PATH`` of each disk a live-block vm_migrate result left on its source."""
    source = (result.get("item") or {}).get("source", "?")
    return [f"{source}:{path}" for path in result.get("source_disks_left") or []]


def migration_guest_resets(results: list[Mapping[str, Any]]) -> str | None:
    """The ledger row's error when a moved guest was reset or crashed on its destination
    (vm_migrate's guest_resets), or None."""
    lines = []
    for result in results:
        for event in result.get("guest_resets") or []:
            key = (result.get("item") or {}).get("key", "?")
            lines.append(f"{key}: the guest was {'reset' if event.get('event') == 'reset' else 'crashed'}"
                         f" on the destination ({event.get('after_s')} s after its migration ended): "
                         "it lost its running state")  # fmt: skip
    return "; ".join(lines) or None


def migration_estimate(results: list[Mapping[str, Any]]) -> list[str]:
    """Check mode: what each planned move copies and how long it should take, as lines."""
    lines = ["check mode: nothing was changed. Estimated migration time:"]
    total = 0.0
    for result in results:
        plan = result.get("plan")
        if not plan:
            continue
        memory, disks = plan.get("memory_bytes") or 0, plan.get("disk_bytes") or 0
        seconds = float(plan.get("estimated_seconds") or 0)
        total += seconds
        assumed = (" (bandwidth assumed: -e bandwidth_mib=N plans with yours)"
                   if plan.get("bandwidth_assumed") else "")  # fmt: skip
        key = (result.get("item") or {}).get("key", "?")
        lines.append(
            f"  {key}: {plan.get('mode', result.get('mode'))}, "
            f"{(memory + disks) / 1048576:.1f} MiB (memory {memory / 1048576:.1f}, disks "
            f"{disks / 1048576:.1f}) in about {seconds:.1f} s at "
            f"{plan.get('bandwidth_mib', '?')} MiB/s{assumed}"
        )
    lines.append(f"  total: about {total:.1f} s one VM after the other")
    return lines


def volume_names(paths: list[str]) -> list[dict[str, str]]:
    """Volume paths as multicloud.migration.vm_volume config items (file name and path: a
    deletion finds the volume in whichever pool holds its directory)."""
    return [{"name": str(p).rsplit("/", 1)[-1], "path": str(p)} for p in paths]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "instance_migration": instance_migration,
            "subnet_migration": subnet_migration,
            "migration_reversal": migration_reversal,
            "migration_line": migration_line,
            "migration_result": migration_result,
            "migration_guest_resets": migration_guest_resets,
            "source_disks_left": source_disks_left,
            "migration_estimate": migration_estimate,
            "volume_names": volume_names,
        }
