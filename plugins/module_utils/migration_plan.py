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

Mapping and conversion (docs/migration.md): ``network_map`` puts an instance's NIC on
another network of its tenant (its MAC kept, its IP kept when it lies in the new subnet,
else a new one), ``storage_map`` its disk in another pool and ``disk_format`` converts the
disk; all three are applied by a cold copy. What a VM looks like on its destination is
recorded as placement ``layout`` (plan.apply_layout), per host, so that create_infra
neither moves nor re-creates it.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import re
from collections.abc import Mapping
from typing import Any

from .libvirt_vm import DEFAULT_POOL, DEFAULT_POOL_PATH, VOLUME_FORMATS
from .plan import (
    CONSOLE_DIR,
    DEFAULT_DISK_FORMAT,
    Host,
    PlanError,
    apply_layout,
    carriers,
    cloud_hosts,
    home_cloud,
    host_plan,
    network_node,
    normalize_placement,
    vm_plans,
)

MODES = ("auto", "live", "live-block", "cold")
# Formats a cold migration converts a disk to (qemu-img); the destination's libvirt must
# know the format too (vm_migrate checks its storage pool capabilities).
DISK_FORMATS = VOLUME_FORMATS
POOL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
MAP_FORMS = (
    "network_map: a mapping of source to destination network, "
    '{"TENANT/NETWORK": "TENANT/NETWORK"} (a bare NETWORK is one of the VM\'s tenant), or '
    'the text "TENANT/NETWORK=TENANT/NETWORK[,...]"'
)
STORAGE_FORMS = (
    "storage_map: a mapping of source pool (or its directory) to destination pool, "
    '{"mcm": "mcm-fast"} or {"mcm": {"pool": "mcm-fast", "path": "/var/lib/mcm/fast"}} (the '
    "pool is created from the path when the destination lacks it), or the text "
    '"mcm=mcm-fast[:/var/lib/mcm/fast][,...]"'
)


# --------------------------------------------------------------------------- maps


def _pairs(value: str, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in re.split(r"[,\n]", value):
        part = raw.strip()
        if not part:
            continue
        if "=" not in part:
            raise PlanError(f"{what}: {part!r} is not SOURCE=DESTINATION")
        src, dst = (x.strip() for x in part.split("=", 1))
        out[src] = dst
    return out


def parse_network_map(value: Any) -> dict[str, str]:
    """network_map as given (a mapping, or the text of an AWX survey); {} when empty."""
    if not value:
        return {}
    if isinstance(value, str):
        value = _pairs(value, "network_map")
    if not isinstance(value, Mapping):
        raise PlanError(f"{MAP_FORMS}; got {type(value).__name__}")
    out = {}
    for src, dst in value.items():
        if not (isinstance(src, str) and isinstance(dst, str) and src.strip() and dst.strip()):
            raise PlanError(f"{MAP_FORMS}; got {src!r}: {dst!r}")
        out[src.strip()] = dst.strip()
    return out


def parse_storage_map(value: Any) -> dict[str, dict[str, str | None]]:
    """storage_map as given -> {source pool or directory: {pool, path}}; {} when empty."""
    if not value:
        return {}
    if isinstance(value, str):
        parsed: dict[str, dict[str, str | None]] = {}
        for src, dst in _pairs(value, "storage_map").items():
            pool, colon, path = dst.partition(":")
            parsed[src] = {"pool": pool, "path": path if colon else None}
        value = parsed
    if not isinstance(value, Mapping):
        raise PlanError(f"{STORAGE_FORMS}; got {type(value).__name__}")
    out: dict[str, dict[str, str | None]] = {}
    for given, wanted in value.items():
        dst = {"pool": wanted} if isinstance(wanted, str) else wanted
        if not isinstance(given, str) or not given.strip() or not isinstance(dst, Mapping):
            raise PlanError(f"{STORAGE_FORMS}; got {given!r}: {wanted!r}")
        unknown = sorted(set(dst) - {"pool", "path"})
        if unknown:
            raise PlanError(f"storage_map: {given}: unknown key(s) {', '.join(unknown)} "
                            "(pool, path)")  # fmt: skip
        src = given.strip()
        key = os.path.normpath(src) if src.startswith("/") else src
        if not src.startswith("/") and not POOL_NAME.match(src):
            raise PlanError(f"storage_map: {src!r} is neither a pool name nor an absolute path")
        pool, path = str(dst.get("pool") or "").strip(), dst.get("path")
        if not POOL_NAME.match(pool):
            raise PlanError(
                f"storage_map: {src}: destination pool {pool!r} is not a pool name (letters, "
                "digits, '_', '.', '+', '-', at most 64)"
            )
        if path is not None and (not isinstance(path, str) or not path.startswith("/")):
            raise PlanError(f"storage_map: {src}: path {path!r} is not an absolute directory")
        out[key] = {"pool": pool, "path": os.path.normpath(path) if path else None}
    return out


def parse_disk_format(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if value not in DISK_FORMATS:
        raise PlanError(f"disk_format={value!r} is not one of {', '.join(DISK_FORMATS)}")
    return str(value)


def _net_key(name: str, tenant: str) -> tuple[str, str]:
    t, _sep, n = name.rpartition("/")
    return (t or tenant), n


def _tenant_networks(spec: Mapping, tenant: str) -> dict[str, dict]:
    for t in spec.get("tenants", []):
        if t["name"] == tenant:
            return {n["name"]: n for n in t["networks"] if n.get("state", "present") == "present"}
    return {}


def resolve_network_map(spec: Mapping, tenant: str, given: Mapping[str, str]) -> dict[str, dict]:
    """{source network name: destination network} of ``tenant``; entries of other tenants
    are left out, unknown networks and maps across tenants are refused."""
    nets = _tenant_networks(spec, tenant)
    out = {}
    for src, dst in given.items():
        (st, sn), (dt, dn) = _net_key(src, tenant), _net_key(dst, tenant)
        if st != dt:
            raise PlanError(
                f"network_map: {st}/{sn} -> {dt}/{dn} crosses tenants: a VM's MAC, domain "
                "name and ownership belong to its tenant; map networks of one tenant"
            )
        if st != tenant:
            continue
        for name in (sn, dn):
            if name not in nets:
                raise PlanError(
                    f"network_map: {tenant}/{name} is not a present network of tenant "
                    f"{tenant} (its networks: {', '.join(sorted(nets)) or 'none'})"
                )
        out[sn] = nets[dn]
    return out


def _current_disk(vm: Mapping[str, Any]) -> dict[str, Any]:
    """Pool, its directory (None when unknown) and format of a VM's disk now."""
    if vm.get("disk_pool"):
        pool, path = vm["disk_pool"], vm.get("disk_pool_path")
    elif vm.get("storage") == "shared":
        pool, path = vm["storage_pool"], vm["storage_path"]
    else:
        pool, path = DEFAULT_POOL, DEFAULT_POOL_PATH
    return {"pool": pool, "pool_path": path,
            "disk_format": vm.get("disk_format") or DEFAULT_DISK_FORMAT}  # fmt: skip


def _address_problem(net: Mapping[str, Any], address: ipaddress.IPv4Address,
                     taken: Mapping[str, str]) -> str | None:  # fmt: skip
    subnet = ipaddress.ip_network(net["subnet"])
    if address not in subnet:
        return f"is outside subnet {subnet}"
    if address in (subnet.network_address, subnet.broadcast_address):
        return f"is the network or broadcast address of {subnet}"
    if net.get("gateway") and address == ipaddress.ip_address(net["gateway"]):
        return "is the network's gateway"
    dhcp = net.get("dhcp") or {}
    if dhcp.get("server") and address == ipaddress.ip_address(dhcp["server"]):
        return "is the network's DHCP server address"
    if dhcp.get("range"):
        first, last = (ipaddress.ip_address(a) for a in dhcp["range"])
        if first <= address <= last:
            return f"is inside the DHCP range {first}-{last} (reservations stay outside it)"
    if str(address) in taken:
        return f"is the address of vm {taken[str(address)]}"
    return None


def choose_ip(
    net: Mapping[str, Any], vm: Mapping[str, Any], requested: str | None = None
) -> str | None:
    """The VM's address on network ``net`` (docs/migration.md): ``requested`` when given and
    free; none when the VM has none (a dynamic lease); its own when free in the subnet;
    else the lowest free address outside the gateway, the DHCP server and the DHCP range."""
    taken = {
        v["ip"]: v["name"]
        for v in net["vms"]
        if v.get("state", "present") == "present" and v.get("ip") and v["name"] != vm["name"]
    }
    where = f"network {net['tenant']}/{net['name']} ({net['subnet']})"
    if requested:
        try:
            address = ipaddress.IPv4Address(requested)
        except ValueError:
            raise PlanError(f"new_ip={requested!r} is not an IPv4 address") from None
        problem = _address_problem(net, address, taken)
        if problem:
            raise PlanError(f"new_ip={requested} cannot be used on {where}: it {problem}")
        return str(address)
    if not vm.get("ip"):
        return None
    own = ipaddress.IPv4Address(vm["ip"])
    if _address_problem(net, own, taken) is None:
        return str(own)
    for address in ipaddress.ip_network(net["subnet"]).hosts():
        if _address_problem(net, address, taken) is None:
            return str(address)
    raise PlanError(f"{where} has no free address for VM {vm['name']}: give one as -e new_ip=")


def relayout(
    tenant_spec: Mapping[str, Any],
    net: Mapping[str, Any],
    vm: Mapping[str, Any],
    *,
    network_map: Mapping[str, dict],
    storage_map: Mapping[str, Mapping[str, str | None]],
    disk_format: str | None,
    new_ip: str | None = None,
) -> dict[str, Any]:
    """What a move changes of a VM (``vm`` in ``net`` as the hosts carry it now:
    plan.apply_layout): its network and address, pool, disk format.

    Returns {changes: [text], args: vm_migrate arguments, network: destination network,
    ip: its address there, layout: the placement layout on the destination (fields
    differing from the spec; {} for none)}.
    """
    key = f"{net['tenant']}/{vm['name']}"
    target = network_map.get(net["name"], net)
    changes: list[str] = []
    args: dict[str, Any] = {}
    ip = vm.get("ip")
    if target["name"] != net["name"]:
        if not (target.get("dhcp") or {}).get("enabled"):
            raise PlanError(
                f"network_map: {net['tenant']}/{target['name']} has no DHCP: a VM moved to "
                "another network takes its address there by DHCP; enable dhcp on it"
            )
        # back to the network the spec gives it: its address there, when free
        own = {**vm, "ip": vm.get("spec_ip")} if target["name"] == vm.get("mapped_from") else vm
        ip = choose_ip(target, own, new_ip)
        changes.append(
            f"network {net['tenant']}/{net['name']} -> {target['tenant']}/{target['name']} "
            f"(ip {vm.get('ip') or 'dynamic'} -> {ip or 'dynamic'})"
        )
        args.update(destination_bridge=target["bridge"], destination_network=target["name"])
    elif new_ip:
        raise PlanError(f"new_ip is for a VM network_map moves to another network; {key} stays "
                        f"on {net['tenant']}/{net['name']}")  # fmt: skip
    now = _current_disk(vm)
    dest = dict(now)
    mapped = storage_map.get(now["pool"])
    if mapped is None and now["pool_path"]:
        mapped = storage_map.get(os.path.normpath(now["pool_path"]))
    shared = vm.get("storage") == "shared" and not vm.get("disk_pool")
    if mapped is not None and mapped["pool"] != now["pool"]:
        if shared:
            raise PlanError(
                f"storage_map: VM {key} keeps its disk on shared storage (pool {now['pool']}), "
                "which a migration does not copy; storage_map moves local disks"
            )
        dest.update(pool=mapped["pool"], pool_path=mapped["path"])
        made = f" (created at {mapped['path']} if missing)" if mapped["path"] else ""
        changes.append(f"pool {now['pool']} -> {mapped['pool']}{made}")
        args["destination_pool"] = mapped["pool"]
        if mapped["path"]:
            args["destination_pool_path"] = mapped["path"]
    elif now["pool"] != DEFAULT_POOL and not shared and now["pool_path"]:
        # the disk stays in its (mapped earlier) pool: the destination gets that pool too
        args.update(pool=now["pool"], pool_path=now["pool_path"])
    if disk_format and disk_format != now["disk_format"]:
        if shared:
            raise PlanError(
                f"disk_format: VM {key} keeps its disk on shared storage, which a migration "
                "does not copy; disk_format converts local disks"
            )
        dest["disk_format"] = disk_format
        changes.append(f"disk {now['disk_format']} -> {disk_format}")
        args["disk_format"] = disk_format
    spec_net = vm.get("mapped_from") or net["name"]
    layout: dict[str, Any] = {}
    if target["name"] != spec_net:
        layout.update(network=target["name"], ip=ip)
    if dest["pool"] != DEFAULT_POOL and not shared:
        layout.update(pool=dest["pool"], pool_path=dest["pool_path"])
    if dest["disk_format"] != DEFAULT_DISK_FORMAT:
        layout["disk_format"] = dest["disk_format"]
    layout = {k: v for k, v in layout.items() if v is not None}
    return {"changes": changes, "args": args, "network": target, "ip": ip, "layout": layout}


def _layout_part(entries: Mapping[str, Any], other: Mapping[str, dict]) -> dict[str, Any]:
    """``{"layout": entries}`` for a record, left out when neither ``entries`` nor the
    placement it replaces (``other``) has a layout for these VMs (a plain migration)."""
    if any(entries.values()) or any(other["layout"].get(k) for k in entries):
        return {"layout": dict(entries)}
    return {}


def _mode_for(mode: str, changed: bool, key: str) -> str:
    """Mapping and conversion are applied by a cold copy: auto becomes cold for them."""
    if not changed:
        return mode
    if mode in ("live", "live-block"):
        raise PlanError(
            f"VM {key}: network_map, storage_map and disk_format are applied by a cold "
            f"migration only, not mode={mode}: a running guest keeps its address and a live "
            "copy writes the disk to the same path and format. Use mode cold (or auto, which "
            "picks cold for them)"
        )
    return "cold"


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
    hosts: Mapping[str, Host], where: tuple[str, Mapping, Mapping], src: str, dst: str, mode: str,
    *, laid: Mapping[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
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
    move["source_network"], move["source_ip"] = net["name"], vm.get("ip")
    if laid is not None:
        move.update(laid["args"])
        move["network"], move["ip"] = laid["network"]["name"], laid["ip"]
        if laid["changes"]:
            move["mapping"] = laid["changes"]
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
    network_map: Any = None,
    storage_map: Any = None,
    disk_format: Any = None,
    new_ip: str | None = None,
) -> dict[str, Any]:
    """The plan of moving one VM to cloud ``to`` (a host of it: ``host`` or least loaded),
    its NIC mapped to another network, its disk to another pool or format on request."""
    _check_request(spec, hosts, to, mode)
    given_networks = parse_network_map(network_map)
    given_storage = parse_storage_map(storage_map)
    fmt = parse_disk_format(disk_format)
    before = normalize_placement(placement)
    carried_spec = apply_layout(spec, before)  # the spec as the hosts carry it now
    found = [
        (t, n, v)
        for t in carried_spec.get("tenants", [])
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
    key, net_key = f"{t['name']}/{instance}", f"{t['name']}/{net['name']}"
    mapped = resolve_network_map(carried_spec, t["name"], given_networks)
    laid = relayout(t, net, vm, network_map=mapped, storage_map=given_storage,
                    disk_format=fmt, new_ip=new_ip)  # fmt: skip
    if src == dst and laid["changes"]:
        raise PlanError(
            f"VM {key} already runs on {dst}: network_map, storage_map and disk_format are "
            "applied by a migration to another host (-e host=H, or another cloud)"
        )
    moved_mode = _mode_for(mode, bool(laid["args"].keys() - {"pool", "pool_path"}), key)
    move = _move(hosts, (t["name"], net, vm), src, dst, moved_mode, laid=laid)
    if moved_mode != mode:
        move["mode_reason"] = "network_map/storage_map/disk_format: applied by a cold copy"
    entry = dict(before["layout"].get(key) or {})
    landed = {dst: laid["layout"]} if laid["layout"] else None
    final = _merged(before, vms={key: dst}, layout={key: landed})
    carried = [h.name for h in carriers(before, hosts, t["name"], net)]
    mid = _merged(final, stretch={net_key: sorted({src, *carried})})
    target_net = apply_layout(spec, final)
    facts_net = laid["network"] if src != dst else net
    facts_net = next(n for tt in target_net["tenants"] if tt["name"] == t["name"]
                     for n in tt["networks"] if n["name"] == facts_net["name"])  # fmt: skip
    return {
        "kind": "instance",
        "object": key,
        "tenant": t["name"],
        "network": _network_facts(hosts, final, t["name"], facts_net),
        "moves": [] if src == dst else [move],
        "source": src,
        "destination": dst,
        "source_cloud": hosts[src].cloud,
        "destination_cloud": to,
        "mode": moved_mode if src != dst else mode,
        "noop": src == dst,
        "mapping": laid["changes"],
        "placement": {"before": before, "mid": mid, "final": final},
        "record": {"vms": {key: dst}, **_layout_part({key: final["layout"].get(key)}, before)},
        # written when the ledger row opens: the destination's layout holds from the moment
        # the VM may run there, whatever ends the migration
        "start_record": {"layout": {key: {**entry, dst: laid["layout"]}}} if laid["layout"] else {},
        "revert_record": {
            "vms": {key: before["vms"].get(key)},
            **_layout_part({key: before["layout"].get(key)}, final),
        },
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
    network_map: Any = None,
    storage_map: Any = None,
    disk_format: Any = None,
) -> dict[str, Any]:
    """The plan of moving a network (CIDR or TENANT/NETWORK) with all its VMs to ``to``,
    their disks to another pool or format on request."""
    _check_request(spec, hosts, to, mode)
    if parse_network_map(network_map):
        raise PlanError(
            "network_map is refused for migrate_subnet.yml: a subnet migration moves the "
            "network itself, its DHCP, gateway and every VM's address, to the destination "
            "cloud; to put VMs on another network, move them one by one with "
            "migrate_instance.yml -e network_map=... (docs/migration.md)"
        )
    given_storage = parse_storage_map(storage_map)
    fmt = parse_disk_format(disk_format)
    before = normalize_placement(placement)
    spec = apply_layout(spec, before)  # the spec as the hosts carry it now
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
    # a VM with a layout (a migration mapped or converted it) stays pinned to its host,
    # where the layout holds; the others follow the network
    laid_out = {k for k in vm_keys if before["layout"].get(k)}
    unpinned = _merged(before, networks={net_key: to}, vms=dict.fromkeys(vm_keys),
                       layout=dict.fromkeys(vm_keys))  # fmt: skip
    noop = old_home == to and all(
        hosts[h].cloud == to for v in present for h in _running(existing, v["domain_name"])
    )
    chosen = vm_plans(spec, hosts, _names(existing), placement=unpinned)
    moves = []
    missing = []
    pins: dict[str, str | None] = dict.fromkeys(vm_keys)
    layouts: dict[str, dict | None] = dict.fromkeys(vm_keys)
    starts: dict[str, dict] = {}
    for v in present:
        vkey = f"{tname}/{v['name']}"
        running = _running(existing, v["domain_name"])
        if not running:
            missing.append(v["name"])
            continue
        dst = _placed_host(chosen, v["domain_name"])
        if hosts[running[0]].cloud == to and vkey in laid_out:
            dst = running[0]  # already in the destination cloud, in its own layout: stays
        laid = relayout(t, net, v, network_map={}, storage_map=given_storage, disk_format=fmt)
        if laid["layout"]:
            pins[vkey], layouts[vkey] = dst, {dst: laid["layout"]}
            starts[vkey] = {**(before["layout"].get(vkey) or {}), dst: laid["layout"]}
        if running[0] != dst:
            moved_mode = _mode_for(mode, bool(laid["args"].keys() - {"pool", "pool_path"}), vkey)
            moves.append(_move(hosts, (tname, net, v), running[0], dst, moved_mode, laid=laid))
        elif laid["changes"]:
            raise PlanError(
                f"VM {vkey} already runs on {dst}: storage_map and disk_format are applied by "
                "a migration to another host (migrate_instance.yml -e host=H)"
            )
    final = _merged(before, networks={net_key: to}, vms=pins, layout=layouts)
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
        "mode": "cold" if moves and all(m["mode"] == "cold" for m in moves) else mode,
        "noop": noop,
        "mapping": [f"{m['key']}: {c}" for m in moves for c in m.get("mapping", [])],
        "placement": {"before": before, "mid": mid, "overlap": overlap, "final": final},
        "record": {"networks": {net_key: to}, "vms": pins, **_layout_part(layouts, before)},
        "start_record": {"layout": starts} if starts else {},
        "revert_record": {
            "networks": {net_key: before["networks"].get(net_key)},
            "vms": {k: before["vms"].get(k) for k in vm_keys},
            **_layout_part({k: before["layout"].get(k) for k in vm_keys}, final),
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
            # a revert brings the source copy back: on its network, with its address
            "network": m.get("source_network", m["network"]),
            "ip": m.get("source_ip", m.get("ip")),
            "source_state": on_src[0].get("state") if on_src else "absent",
            "destination_state": on_dst[0].get("state") if on_dst else "absent",
        })  # fmt: skip
    tenant = row.get("tenant") or ""
    if row.get("kind") == "subnet":
        net_name = str(row.get("object", "")).split("/", 1)[-1]
    else:
        first = cold[0] if cold else (moved[0] if moved else {})
        net_name = first.get("source_network", first.get("network", ""))
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
