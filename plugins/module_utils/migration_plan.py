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


def _plans(spec: Mapping, hosts: Mapping[str, Host], placement: Mapping) -> dict[str, Any]:
    return {name: host_plan(spec, hosts, name, placement) for name in sorted(hosts)}


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
    return {
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
    }


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
            "before": _plans(spec, hosts, before),
            "mid": _plans(spec, hosts, mid),
            "final": _plans(spec, hosts, final),
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
            "before": _plans(spec, hosts, before),
            "mid": _plans(spec, hosts, mid),
            "overlap": _plans(spec, hosts, overlap),
            "final": _plans(spec, hosts, final),
        },
    }
