# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a migration moves, from where to where, and the network plans of each step.

Pure Python on the controller (filters instance_migration and subnet_migration). A
migration converges the hosts through placements (plan.normalize_placement):

- ``before``: the current record (what create_infra would build now);
- ``mid``: the network stretched to the destination hosts, the source hosts still
  carrying it (VMs move while both sides are bridged over VXLAN);
- ``overlap`` (subnet only): the network homed on the destination cloud (DHCP moved,
  gateway on the destination router) while the source router still holds the gateway
  too and a metric-100 transit route lies under it (make-before-break);
- ``final``: what is recorded; the source hosts carry nothing of the network any more
  unless another of its VMs still runs there.
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Mapping
from typing import Any

from .plan import (
    CONSOLE_DIR,
    Host,
    PlanError,
    carriers,
    cloud_hosts,
    home_cloud,
    host_plan,
    network_node,
    normalize_placement,
    vm_plans,
)

MODES = ("auto", "live", "live-block", "cold")


def _merged(base: Mapping[str, dict], **extra: Mapping[str, Any]) -> dict[str, dict]:
    out = copy.deepcopy(normalize_placement(base))
    for key, entries in extra.items():
        for name, value in entries.items():
            if value is None:
                out[key].pop(name, None)
            else:
                out[key][name] = value
    return out


def _plans(
    spec: Mapping, hosts: Mapping[str, Host], placement: Mapping, tenant: str
) -> dict[str, Any]:
    """Every host's plan for ``tenant`` only: a migration converges its own tenant and
    never touches another's networks (which may be mid-migration themselves)."""
    own = {**spec, "tenants": [t for t in spec.get("tenants", []) if t["name"] == tenant]}
    return {name: host_plan(own, hosts, name, placement) for name in sorted(hosts)}


def _running(existing: Mapping[str, list[Mapping]], domain: str) -> list[str]:
    return sorted(
        host
        for host, doms in existing.items()
        for d in doms
        if d.get("name") == domain and d.get("state") == "running"
    )


def _names(existing: Mapping[str, list[Mapping]]) -> dict[str, list[str]]:
    return {host: [d["name"] for d in doms] for host, doms in existing.items()}


def _address(hosts: Mapping[str, Host], src: str, dst: str) -> str:
    """The destination's address the source migrates to: underlay inside a cloud."""
    a, b = hosts[src], hosts[dst]
    return b.underlay_ip if a.cloud == b.cloud else b.wan_ip


def _placed_host(plans: Mapping[str, Mapping], domain: str) -> str:
    for host, plan in plans.items():
        if any(v["name"] == domain for v in plan["vms"]):
            return host
    raise PlanError(f"domain {domain} was not placed on any host")


def _check_request(spec: Mapping, hosts: Mapping[str, Host], to: str, mode: str) -> None:
    clouds = sorted({h.cloud for h in hosts.values()})
    if to not in clouds:
        raise PlanError(f"to={to!r} is not a cloud of the inventory ({', '.join(clouds)})")
    if mode not in MODES:
        raise PlanError(f"mode={mode!r} is not one of {', '.join(MODES)}")


def _move(
    hosts: Mapping[str, Host], where: tuple[str, Mapping, Mapping], src: str, dst: str, mode: str
) -> dict[str, Any]:
    tenant, net, vm = where
    storage = vm.get("storage") or "local"
    if mode == "live" and storage != "shared":
        raise PlanError(
            f"mode=live moves memory only and needs the disk on shared storage: VM "
            f"{tenant}/{vm['name']} has storage {storage}; use mode live-block (copies the "
            "disk while the VM runs), cold or auto, or declare 'storage: shared' for the VM "
            "(docs/migration.md)"
        )
    move = {
        "tenant": tenant,
        "network": net["name"],
        "vm": vm["name"],
        "key": f"{tenant}/{vm['name']}",
        "domain": vm["domain_name"],
        "mac": vm["mac"],
        "ip": vm.get("ip"),
        "memory_mib": vm["memory_mib"],
        "disk_mib": vm["disk_mib"],
        "source": src,
        "source_cloud": hosts[src].cloud,
        "destination": dst,
        "destination_cloud": hosts[dst].cloud,
        "destination_address": _address(hosts, src, dst),
        "mode": mode,
        "storage": storage,
        "console_dir": CONSOLE_DIR,
    }
    if storage == "shared":
        # vm_migrate: the disk is under shared_paths, so auto picks live and nothing is
        # copied; the destination gets the shared pool (so its vm module finds the volume).
        move["pool"] = vm["storage_pool"]
        move["pool_path"] = vm["storage_path"]
        move["shared_paths"] = [vm["storage_path"]]
    return move


def _network_facts(
    hosts: Mapping[str, Host], placement: Mapping, tenant: str, net: Mapping
) -> dict[str, Any]:
    home = home_cloud(placement, tenant, net)
    return {
        "tenant": tenant,
        "name": net["name"],
        "key": f"{tenant}/{net['name']}",
        "subnet": net["subnet"],
        "home": home,
        "network_node": network_node(hosts, home).name,
        "dhcp_namespace": net["dhcp"]["namespace"],
        "dhcp_enabled": net["dhcp"]["enabled"],
    }


def instance_migration(
    spec: Mapping[str, Any],
    hosts: Mapping[str, Host],
    placement: Mapping[str, Any] | None,
    existing: Mapping[str, list[Mapping]],
    *,
    instance: str,
    to: str,
    tenant: str | None = None,
    host: str | None = None,
    mode: str = "auto",
) -> dict[str, Any]:
    """The plan of moving one VM to cloud ``to`` (a host of it: ``host`` or least loaded)."""
    _check_request(spec, hosts, to, mode)
    before = normalize_placement(placement)
    found = [
        (t, n, v)
        for t in spec.get("tenants", [])
        if t.get("state", "present") == "present" and tenant in (None, t["name"])
        for n in t["networks"]
        if n.get("state", "present") == "present"
        for v in n["vms"]
        if v.get("state", "present") == "present" and v["name"] == instance
    ]
    if not found:
        where = f" of tenant {tenant}" if tenant else ""
        raise PlanError(f"no present VM {instance!r}{where} in the spec")
    if len(found) > 1:
        names = ", ".join(t["name"] for t, _n, _v in found)
        raise PlanError(f"VM {instance!r} exists in tenants {names}: add -e tenant=T")
    t, net, vm = found[0]
    if vm.get("adopted"):
        raise PlanError(
            f"VM {t['name']}/{instance} is adopted (domain {vm['domain_name']}, not created by "
            "this collection): it is not migrated (docs/gather.md)"
        )
    running = _running(existing, vm["domain_name"])
    if not running:
        raise PlanError(
            f"VM {t['name']}/{instance} (domain {vm['domain_name']}) is not running on any "
            "cloud host: run create_infra.yml first"
        )
    src = running[0]
    if host is not None:
        if host not in hosts or hosts[host].cloud != to:
            members = ", ".join(h.name for h in cloud_hosts(hosts, to))
            raise PlanError(f"host={host!r} is not a host of cloud {to} ({members})")
        dst = host
    else:
        towards = _merged(before, vms={f"{t['name']}/{instance}": to})
        chosen = vm_plans(spec, hosts, _names(existing), placement=towards)
        dst = _placed_host(chosen, vm["domain_name"])
    move = _move(hosts, (t["name"], net, vm), src, dst, mode)
    key, net_key = move["key"], f"{t['name']}/{net['name']}"
    final = _merged(before, vms={key: dst})
    carried = [h.name for h in carriers(before, hosts, t["name"], net)]
    mid = _merged(final, stretch={net_key: sorted({src, *carried})})
    return {
        "kind": "instance",
        "object": key,
        "tenant": t["name"],
        "network": _network_facts(hosts, before, t["name"], net),
        "moves": [] if src == dst else [move],
        "source": src,
        "destination": dst,
        "source_cloud": hosts[src].cloud,
        "destination_cloud": to,
        "mode": mode,
        "noop": src == dst,
        "placement": {"before": before, "mid": mid, "final": final},
        "record": {"vms": {key: dst}},
        "revert_record": {"vms": {key: before["vms"].get(key)}},
        "plans": {
            "before": _plans(spec, hosts, before, t["name"]),
            "mid": _plans(spec, hosts, mid, t["name"]),
            "final": _plans(spec, hosts, final, t["name"]),
        },
    }


def subnet_migration(
    spec: Mapping[str, Any],
    hosts: Mapping[str, Host],
    placement: Mapping[str, Any] | None,
    existing: Mapping[str, list[Mapping]],
    *,
    subnet: str,
    to: str,
    tenant: str | None = None,
    mode: str = "auto",
) -> dict[str, Any]:
    """The plan of moving a network (CIDR or TENANT/NETWORK) with all its VMs to ``to``."""
    _check_request(spec, hosts, to, mode)
    before = normalize_placement(placement)
    found = []
    by_name = "/" in subnet and not subnet.replace("/", "").replace(".", "").isdigit()
    if "/" not in subnet and not subnet.replace(".", "").isdigit():
        # a bare network name (AWX's survey asks tenant and network apart)
        if not tenant:
            raise PlanError(
                f"subnet={subnet!r}: give the tenant too (-e tenant=T) or TENANT/NETWORK"
            )
        subnet, by_name = f"{tenant}/{subnet}", True
    if not by_name:
        try:
            cidr = str(ipaddress.ip_network(subnet, strict=False))
        except ValueError:
            raise PlanError(f"subnet={subnet!r} is neither a CIDR nor TENANT/NETWORK") from None
    for t in spec.get("tenants", []):
        if t.get("state", "present") != "present" or tenant not in (None, t["name"]):
            continue
        for n in t["networks"]:
            if n.get("state", "present") != "present":
                continue
            if (by_name and subnet == f"{t['name']}/{n['name']}") or (
                not by_name and n["subnet"] == cidr
            ):
                found.append((t, n))
    if not found:
        raise PlanError(f"no present network {subnet}" + (f" of tenant {tenant}" if tenant else ""))
    if len(found) > 1:
        # the same CIDR in several tenants: only one of them may not be on `to` yet; when
        # all are there already (a re-run), the first one is planned (nothing moves)
        away = [(t, n) for t, n in found if home_cloud(before, t["name"], n) != to]
        found = away if len(away) == 1 else found[:1] if not away else found
    if len(found) > 1:
        names = ", ".join(f"{t['name']}/{n['name']}" for t, n in found)
        raise PlanError(f"subnet {subnet} is used by {names}: name one as TENANT/NETWORK")
    t, net = found[0]
    if net["mode"] == "managed-novlan":
        raise PlanError(
            f"network {t['name']}/{net['name']} is managed-novlan: its segment is shared with "
            "the tenant's other networks of the cloud and cannot move alone"
        )
    tname, net_key = t["name"], f"{t['name']}/{net['name']}"
    old_home = home_cloud(before, tname, net)
    present = [v for v in net["vms"] if v.get("state", "present") == "present"]
    adopted = [v["name"] for v in present if v.get("adopted")]
    if adopted:
        raise PlanError(
            f"network {net_key} has adopted VM(s) {', '.join(adopted)} (domains not created by "
            "this collection, which it does not migrate): move or remove them first "
            "(docs/gather.md)"
        )
    vm_keys = [f"{tname}/{v['name']}" for v in present]
    final = _merged(before, networks={net_key: to}, vms=dict.fromkeys(vm_keys))
    noop = old_home == to and all(
        hosts[h].cloud == to for v in present for h in _running(existing, v["domain_name"])
    )
    chosen = vm_plans(spec, hosts, _names(existing), placement=final)
    moves = []
    missing = []
    for v in present:
        running = _running(existing, v["domain_name"])
        if not running:
            missing.append(v["name"])
            continue
        dst = _placed_host(chosen, v["domain_name"])
        if running[0] != dst:
            moves.append(_move(hosts, (tname, net, v), running[0], dst, mode))
    if missing:
        raise PlanError(
            f"VM(s) {', '.join(missing)} of {net_key} are not running on any cloud host: run "
            "create_infra.yml first"
        )
    carried = [h.name for h in carriers(before, hosts, tname, net)]
    to_hosts = [h.name for h in cloud_hosts(hosts, to)]
    mid = _merged(before, stretch={net_key: sorted(set(to_hosts) | set(carried))})
    overlap = _merged(final, stretch={net_key: carried},
                      gateways={net_key: [old_home]} if old_home != to else {})  # fmt: skip
    return {
        "kind": "subnet",
        "object": net_key,
        "tenant": tname,
        "network": _network_facts(hosts, before, tname, net),
        "new_network_node": network_node(hosts, to).name,
        "moves": moves,
        "source": old_home,
        "destination": to,
        "source_cloud": old_home,
        "destination_cloud": to,
        "mode": mode,
        "noop": noop,
        "placement": {"before": before, "mid": mid, "overlap": overlap, "final": final},
        "record": {"networks": {net_key: to}, "vms": dict.fromkeys(vm_keys)},
        "revert_record": {
            "networks": {net_key: before["networks"].get(net_key)},
            "vms": {k: before["vms"].get(k) for k in vm_keys},
        },
        "plans": {
            "before": _plans(spec, hosts, before, tname),
            "mid": _plans(spec, hosts, mid, tname),
            "overlap": _plans(spec, hosts, overlap, tname),
            "final": _plans(spec, hosts, final, tname),
        },
    }


def _spec_network(spec: Mapping[str, Any], tenant: str, name: str) -> Mapping[str, Any]:
    for t in spec.get("tenants", []):
        if t["name"] == tenant:
            for n in t["networks"]:
                if n["name"] == name:
                    return n
    raise PlanError(f"network {tenant}/{name} is no longer in the spec")


def migration_reversal(
    spec: Mapping[str, Any],
    hosts: Mapping[str, Host],
    placement: Mapping[str, Any] | None,
    existing: Mapping[str, list[Mapping]],
    *,
    row: Mapping[str, Any],
) -> dict[str, Any]:
    """What confirm_migration.yml and revert_migration.yml do with a finished cold migration.

    ``row`` is the ledger row. Its VMs moved cold keep a shut-off copy on their source host:
    confirm deletes it, revert deletes the destination's copy, gives the network its
    placement before the migration back (``placement_before``) and starts the source copy.
    VMs the row moved live cannot be reverted here (they have no source copy any more).
    Both are idempotent: a copy already deleted counts as done.
    """
    results = {r.get("vm"): r for r in row.get("results") or []}
    moved = [m for m in row.get("vms") or [] if results.get(m["key"], {}).get("status") == "moved"]
    cold = [m for m in moved if results[m["key"]].get("mode") == "cold"]
    names = _names(existing)
    now = normalize_placement(placement)
    after = _merged(now, **{k: v for k, v in (row.get("placement_before") or {}).items() if v})
    vms = []
    for m in cold:
        on_src = [d for d in existing.get(m["source"], []) if d.get("name") == m["domain"]]
        on_dst = [d for d in existing.get(m["destination"], []) if d.get("name") == m["domain"]]
        vms.append({
            **m,
            "source_state": on_src[0].get("state") if on_src else "absent",
            "destination_state": on_dst[0].get("state") if on_dst else "absent",
        })  # fmt: skip
    tenant = row.get("tenant") or ""
    if row.get("kind") == "subnet":
        net_name = str(row.get("object", "")).split("/", 1)[-1]
    else:
        net_name = cold[0]["network"] if cold else (moved[0]["network"] if moved else "")
    network: dict[str, Any] = {}
    if net_name:
        net = _spec_network(spec, tenant, net_name)
        network = {
            "now": _network_facts(hosts, now, tenant, net),
            "after": _network_facts(hosts, after, tenant, net),
        }
    lines = {
        "confirm": [
            f"  {v['key']} ({v['domain']}): delete the source copy on {v['source']} "
            f"({v['source_state']}); it runs on {v['destination']} ({v['destination_state']})"
            for v in vms
        ],
        "revert": [
            f"  {v['key']} ({v['domain']}): delete the copy on {v['destination']} "
            f"({v['destination_state']}), start the source copy on {v['source']} "
            f"({v['source_state']})"
            for v in vms
        ],
    }
    if network and network["now"]["home"] != network["after"]["home"]:
        lines["revert"].append(
            f"  network {network['now']['key']}: DHCP and gateway {network['now']['home']} "
            f"-> {network['after']['home']} (lease file {network['now']['network_node']} -> "
            f"{network['after']['network_node']})"
        )
    remove: dict[str, dict[str, list[dict[str, str]]]] = {"confirm": {}, "revert": {}}
    for v in vms:
        for action, side in (("confirm", "source"), ("revert", "destination")):
            if v[f"{side}_state"] != "absent":
                gone = {"name": v["domain"], "state": "absent"}
                if v.get("storage") == "shared":  # both copies use the one shared disk: keep it
                    gone["disk"] = f"{v['pool_path']}/{v['domain']}.qcow2"
                remove[action].setdefault(v[side], []).append(gone)
    return {
        "lines": lines,
        "remove": remove,
        "id": row.get("id"),
        "kind": row.get("kind"),
        "object": row.get("object"),
        "tenant": tenant,
        "status": row.get("status"),
        "vms": vms,
        "live_moved": [m["key"] for m in moved if m not in cold],
        "network": network,
        "existing": names,
        "placement": {"now": now, "after": after},
        "plans": {"after": _plans(spec, hosts, after, tenant)},
    }
