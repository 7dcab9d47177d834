# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""From what exists on the cloud hosts back to a northbound spec (gather_infra.yml).

``collect`` runs on a host (the infra_facts module): namespaces, links, addresses,
dnsmasq instances and libvirt domains, everything, ours or not. ``build_spec`` runs on the
controller (the ``infra_spec`` filter): it merges the hosts' facts into a spec and proves,
per tenant, that ``create_infra.yml`` given that spec would change nothing, by planning the
spec with the same code create_infra uses (spec.normalize, plan.host_plan, plan.vm_plans)
and comparing the plan with the facts. The rules (docs/gather.md):

- a tenant is what carries its owner tag ``mcm:<tenant>/<network>`` (links), its
  namespaces (``qdhcp-<tenant>.<network>``, ``qrouter-<tenant>``), its dnsmasq instances,
  and its domains (our metadata);
- a tenant is written only when everything it owns is expressible and planning it gives
  back exactly what the hosts have; otherwise it is left out (the spec is authoritative
  for the tenants it names: a half-gathered tenant would be cut down on re-apply) and
  reported with the reasons;
- a domain without our metadata whose first NIC is on a written tenant's bridge is
  written as an ``adopted`` VM of that network (its MAC, domain name, sizes and host as
  they are; create_infra never touches it); any other such domain is reported.

Pure Python on the controller; ``collect`` imports the host-side engines only when run.
"""

from __future__ import annotations

import ipaddress
import os
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

from . import plan as planmod
from . import spec as specmod
from .naming import domain_name as derived_domain_name
from .naming import firewall_table, router_leg_names

OWNER_RE = re.compile(r"^mcm:([a-z0-9-]+)/([a-z0-9-]+|~transit)$")
DHCP_NS_RE = re.compile(r"^qdhcp-([a-z0-9-]+)\.([a-z0-9-]+)$")
ROUTER_NS_RE = re.compile(r"^qrouter-([a-z0-9-]+)$")
FACT_KEYS = ("netns", "links", "addresses", "dnsmasq", "vms")
MAX_DETAILS = 6  # differences listed per tenant and host before "..."


class GatherError(Exception):
    """The facts cannot be merged (wrong shape, a host outside the clouds)."""


# --------------------------------------------------------------------------- host side


def collect(check_mode: bool = False, attempts: int = 3, pause: float = 2.0) -> dict[str, Any]:
    """Everything on this host that a spec could describe, ours or not (read-only).

    A namespace removed while it is read, or libvirtd restarting, fails one reading: it is
    read again (``attempts`` times in all, ``pause`` seconds apart) before the error counts.
    """
    from .dnsmasq import SystemProcesses, converge
    from .libvirt_vm import VmError, run_vm_info
    from .netlink import NetlinkStateError, netlink_errors, run

    for attempt in range(1, attempts + 1):
        try:
            gathered = {
                kind: run(kind, {"state": "gathered", "all": True}, check_mode, False)["gathered"]
                for kind in ("netns", "link", "address")
            }
            dhcp = converge("gathered", [], SystemProcesses())
            vms = run_vm_info({})["vms"]
        except (*netlink_errors(), NetlinkStateError, VmError):
            if attempt == attempts:
                raise
            time.sleep(pause)
            continue
        return {
            "netns": gathered["netns"],
            "links": gathered["link"],
            "addresses": gathered["address"],
            "dnsmasq": dhcp.gathered,
            "vms": vms,
            "nft_tables": _nft_tables([n["name"] for n in gathered["netns"]]),
        }
    raise AssertionError("unreachable")


def _nft_tables(namespaces: Iterable[str]) -> list[dict[str, str]]:
    """The nftables tables (``{namespace, family, name}``) of the router namespaces.

    Security groups and floating addresses are not gathered into the spec yet: a tenant
    whose router has its table is left out rather than written without them (re-applied,
    that spec would delete the rules). nft -j through ip netns exec, as the firewall
    engine reads them (docs/security.md).
    """
    import shutil
    import subprocess

    from .firewall import NftCommand

    nft = shutil.which("nft")
    if nft is None:
        return []

    def run(argv: list[str], stdin: str | None = None) -> tuple[int, str, str]:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False,
                              timeout=30)  # fmt: skip
        return done.returncode, done.stdout, done.stderr

    reader = NftCommand(run, nft)
    out = []
    for namespace in sorted(n for n in namespaces if n.startswith("qrouter-")):
        for entry in reader.ruleset(namespace):
            table = entry.get("table")
            if table:
                out.append({"namespace": namespace, "family": table.get("family", ""),
                            "name": table.get("name", "")})  # fmt: skip
    return out


# --------------------------------------------------------------------------- helpers


def _owner(link: Mapping[str, Any]) -> tuple[str, str] | None:
    match = OWNER_RE.match(link.get("owner") or "")
    return (match.group(1), match.group(2)) if match else None


def _size(mib: int) -> str:
    return f"{mib}MiB"


def vm_name_for(domain: str, tenant: str) -> str | None:
    """A spec VM name (DNS label) for a foreign domain: ``<tenant>-`` dropped, the rest
    lowercased with anything else than letters, digits and hyphens turned into hyphens."""
    base = domain.removeprefix(f"{tenant}-").lower()
    label = re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]", "-", base)).strip("-")[:63].strip("-")
    return label or None


def _main_disk(record: Mapping[str, Any]) -> Mapping[str, Any] | None:
    disks = [d for d in record.get("disks") or [] if d.get("device") == "disk"]
    return next((d for d in disks if d.get("target") == "vda"), disks[0] if disks else None)


def _nic0(record: Mapping[str, Any]) -> Mapping[str, Any]:
    nics = record.get("interfaces") or []
    return nics[0] if nics else {}


class _Tenant:
    """What one tenant owns, over every gathered host."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.networks: dict[str, dict[str, Any]] = {}
        self.hosts: set[str] = set()
        self.domains: list[tuple[str, dict[str, Any]]] = []  # ours: (host, record)
        self.reasons: list[str] = []
        self.transit = False  # its routers span clouds (a transit segment exists)

    def network(self, name: str) -> dict[str, Any]:
        return self.networks.setdefault(
            name, {"bridges": set(), "dhcp": [], "hosts": set(), "vnis": set()}
        )


# --------------------------------------------------------------------------- merging


def _index(facts: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, _Tenant], list[dict]]:
    """Tenants found on the hosts, and the foreign dnsmasq instances (not ours)."""
    tenants: dict[str, _Tenant] = {}
    foreign_dhcp: list[dict[str, Any]] = []

    def tenant(name: str) -> _Tenant:
        return tenants.setdefault(name, _Tenant(name))

    for host in sorted(facts):
        fact = facts[host]
        vni_of_bridge = {
            link["master"]: (link.get("vxlan") or {}).get("id")
            for link in fact["links"]
            if link.get("kind") == "vxlan" and link.get("master") and not link.get("namespace")
        }
        for link in fact["links"]:
            owner = _owner(link)
            if owner is None:
                continue
            t = tenant(owner[0])
            t.hosts.add(host)
            t.transit = t.transit or owner[1] == "~transit"
            if owner[1] == "~transit" or link.get("namespace"):
                continue
            bridge = link["name"] if link.get("kind") == "bridge" else link.get("master")
            net = t.network(owner[1])
            net["hosts"].add(host)
            if bridge:
                net["bridges"].add((host, bridge))
                if vni_of_bridge.get(bridge) is not None:
                    net["vnis"].add(vni_of_bridge[bridge])
        for ns in fact["netns"]:
            match = DHCP_NS_RE.match(ns["name"]) or ROUTER_NS_RE.match(ns["name"])
            if match:
                tenant(match.group(1)).hosts.add(host)
        for instance in fact["dnsmasq"]:
            match = DHCP_NS_RE.match(instance["name"])
            if instance.get("config") is None or not match:
                foreign_dhcp.append({"host": host, "name": instance["name"]})
                continue
            t = tenant(match.group(1))
            t.hosts.add(host)
            t.network(match.group(2))["dhcp"].append((host, instance))
        for record in fact["vms"]:
            meta = record.get("metadata") or {}
            if meta.get("tenant"):
                t = tenant(meta["tenant"])
                t.hosts.add(host)
                t.domains.append((host, record))
    return tenants, foreign_dhcp


def _router_gateways(
    facts: Mapping[str, Mapping[str, Any]], tenant: str, vni: int
) -> list[tuple[str, str]]:
    """(host, gateway/prefix) held by the tenant router's leg on segment ``vni``."""
    leg = router_leg_names(vni)[1]
    found = []
    for host in sorted(facts):
        for item in facts[host]["addresses"]:
            if item.get("namespace") == f"qrouter-{tenant}" and item.get("interface") == leg:
                found.extend((host, cidr) for cidr in item.get("addresses") or [])
    return found


def _network_spec(
    t: _Tenant,
    name: str,
    net: Mapping[str, Any],
    *,
    facts: Mapping[str, Mapping[str, Any]],
    hosts: Mapping[str, planmod.Host],
    shared_vnis: set[int],
) -> dict[str, Any] | None:
    """The spec of one network, or None (with t.reasons) when it cannot be expressed."""
    where = f"network {name}"
    if len(net["vnis"]) != 1:
        found = ", ".join(str(v) for v in sorted(net["vnis"])) or "none"
        t.reasons.append(f"{where}: one VXLAN VNI expected on its bridges, found {found}")
        return None
    [vni] = net["vnis"]
    if len(net["dhcp"]) > 1:
        where_dhcp = ", ".join(h for h, _instance in net["dhcp"])
        t.reasons.append(f"{where}: DHCP runs on several hosts ({where_dhcp}): a move in flight?")
        return None
    out: dict[str, Any] = {"name": name}
    gateways = _router_gateways(facts, t.name, vni)
    subnet: ipaddress.IPv4Network | None = None
    home: str | None = None
    dhcp: dict[str, Any] | None = None
    if net["dhcp"]:
        home, instance = net["dhcp"][0]
        config = instance["config"]
        subnet = ipaddress.IPv4Network(config["subnet"])
        gateway = config.get("gateway")
        dhcp = {"range": config.get("range"), "domain": config.get("domain")}
        if not instance.get("running"):
            t.reasons.append(f"{where}: dnsmasq {instance['name']} on {home} is not running")
    elif gateways:
        gw_host, cidr = gateways[0]
        iface = ipaddress.IPv4Interface(cidr)
        subnet, gateway = iface.network, str(iface.ip)
        home = gw_host
    else:
        t.reasons.append(
            f"{where} (VNI {vni}) has neither DHCP nor a gateway (mode system?): its subnet "
            "is recorded nowhere on the hosts"
        )
        return None
    if home not in hosts:
        t.reasons.append(f"{where}: its DHCP/router host {home} is in no cloud group")
        return None
    out["cloud"] = hosts[home].cloud
    out["subnet"] = str(subnet)
    if gateway is not None and gateway != str(subnet.network_address + 1):
        out["gateway"] = gateway
    if vni in shared_vnis:
        out["mode"] = "managed-novlan"
    elif dhcp is not None and dhcp["range"] is None:
        out["mode"] = "static"
    out["vni"] = vni
    if dhcp is None:
        out["dhcp"] = {"enabled": False}
    else:
        out["dhcp"] = {k: v for k, v in dhcp.items() if v is not None}
    out["vms"] = []
    out["_reservations"] = {
        h["mac"]: h["ip"] for h in (net["dhcp"][0][1]["config"].get("hosts") if dhcp else [])
    }
    out["_bridges"] = {bridge for _host, bridge in net["bridges"]}
    return out


def _drop_foreign_host(
    vm: dict[str, Any], net: Mapping[str, Any], hosts: Mapping[str, planmod.Host]
) -> None:
    """``host`` pins a VM to a host of its network's cloud; a VM running elsewhere (moved
    without a placement record) cannot be pinned there: the plan check then reports it."""
    if vm["host"] not in hosts or hosts[vm["host"]].cloud != net["cloud"]:
        del vm["host"]


def _our_vm(
    t: _Tenant,
    host: str,
    record: Mapping[str, Any],
    net: dict[str, Any],
    hosts: Mapping[str, planmod.Host],
) -> dict[str, Any] | None:
    meta = record["metadata"]
    where = f"domain {record['name']} on {host}"
    disk = _main_disk(record)
    if disk is None or not disk.get("capacity_mib"):
        t.reasons.append(f"{where}: no disk of known size (the spec needs one)")
        return None
    nic = _nic0(record)
    vm: dict[str, Any] = {
        "name": meta.get("vm"),
        "vcpus": record["vcpus"],
        "memory": _size(record["memory_mib"]),
        "disk": _size(disk["capacity_mib"]),
    }
    ip = net["_reservations"].get(nic.get("mac"))
    if ip:
        vm["ip"] = ip
    if disk.get("backing"):
        vm["image"] = disk["backing"]
    vm["host"] = host
    _drop_foreign_host(vm, net, hosts)
    if disk.get("path") and os.path.dirname(disk["path"]) == specmod.DEFAULT_SHARED_PATH:
        vm["storage"] = "shared"
    return vm


def _adopted_vm(
    t: _Tenant, host: str, record: Mapping[str, Any], net: dict[str, Any], taken: set[str]
) -> tuple[dict[str, Any] | None, str | None]:
    """(adopted VM, None) or (None, why not)."""
    name = vm_name_for(record["name"], t.name)
    if name is None:
        return None, "no usable VM name can be made of its domain name"
    if name in taken:
        return None, f"its VM name {name!r} is already taken in tenant {t.name}"
    disk = _main_disk(record)
    if disk is None or not disk.get("capacity_mib"):
        return None, "no disk of known size (the spec needs a disk size)"
    if not 1 <= (record.get("vcpus") or 0) <= specmod.VCPUS_MAX:
        return None, f"{record.get('vcpus')} vCPUs (the spec allows 1..{specmod.VCPUS_MAX})"
    if (record.get("memory_mib") or 0) < specmod.MEMORY_MIN_MIB:
        return None, f"{record.get('memory_mib')} MiB of memory (the spec needs 16 at least)"
    mac = _nic0(record).get("mac")
    vm: dict[str, Any] = {"name": name, "adopted": True}
    if record["name"] != derived_domain_name(t.name, name):
        vm["domain_name"] = record["name"]
    vm["mac"] = mac
    vm.update(
        vcpus=record["vcpus"],
        memory=_size(record["memory_mib"]),
        disk=_size(disk["capacity_mib"]),
    )
    ip = net["_reservations"].get(mac)
    if ip:
        vm["ip"] = ip
    vm["host"] = host
    return vm, None


# --------------------------------------------------------------------------- checking


def _link_tuples(links: Iterable[Mapping[str, Any]]) -> set[tuple]:
    out = set()
    for link in links:
        vxlan = link.get("vxlan") or {}
        out.add(
            (
                link.get("namespace"),
                link["name"],
                link.get("kind"),
                link.get("master"),
                link.get("owner"),
                link.get("mtu"),
                link.get("state"),
                vxlan.get("id"),
                vxlan.get("learning") if vxlan else None,
            )
        )
    return out


def _planned_links(host_plan: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for link in host_plan["links"]:
        if link["kind"] == "device":
            continue
        out.append(link)
        if link.get("peer"):
            out.append({**link["peer"], "kind": "veth", "master": None})
    return out


def _link_text(item: tuple) -> str:
    ns, name, kind, master, _owner, mtu, state, vni, _learning = item
    where = f" in {ns}" if ns else ""
    extra = f" on {master}" if master else ""
    return f"{kind} {name}{where}{extra} (mtu {mtu}, {state}{f', vni {vni}' if vni else ''})"


def _differences(
    tenant: str,
    host: str,
    host_plan: Mapping[str, Any],
    fact: Mapping[str, Any],
) -> list[str]:
    """What create_infra would change on ``host`` for ``tenant`` (networks only)."""
    from .dnsmasq import DnsmasqError, normalize_instance

    scope = planmod.tenant_scope(tenant)
    namespaces = planmod.namespace_scopes([tenant])

    def our_ns(name: str | None) -> bool:
        return bool(name) and any(
            name == entry or (entry.endswith(".") and name.startswith(entry))
            for entry in namespaces
        )

    out: list[str] = []
    want_ns = {n["name"]: bool(n.get("forwarding")) for n in host_plan["netns"]}
    have_ns = {n["name"]: bool(n.get("forwarding")) for n in fact["netns"] if our_ns(n["name"])}
    if want_ns != have_ns:
        out.append(
            f"namespaces: planned {sorted(want_ns.items())}, found {sorted(have_ns.items())}"
        )
    want = _link_tuples(_planned_links(host_plan))
    have = _link_tuples(
        link for link in fact["links"] if (link.get("owner") or "").startswith(scope)
    )
    out.extend(f"would create or change {_link_text(i)}" for i in sorted(want - have, key=str))
    out.extend(f"would remove or change {_link_text(i)}" for i in sorted(have - want, key=str))
    want_addr = {
        (a["namespace"], a["interface"]): sorted(a["addresses"]) for a in host_plan["addresses"]
    }
    have_addr = {
        (a["namespace"], a["interface"]): sorted(a.get("addresses") or [])
        for a in fact["addresses"]
        if our_ns(a.get("namespace")) and a.get("interface") != "lo"
    }
    for key in sorted(set(want_addr) | set(have_addr), key=str):
        if want_addr.get(key, []) != have_addr.get(key, []):
            out.append(
                f"addresses of {key[1]} in {key[0]}: planned {want_addr.get(key, [])}, "
                f"found {have_addr.get(key, [])}"
            )
    want_nft = {
        (f["namespace"], f["table"])
        for f in host_plan.get("firewall", [])
        if f["state"] == "present"
    }
    ours = firewall_table(tenant)
    for table in fact.get("nft_tables", []):
        if table["name"] == ours and (table["namespace"], ours) not in want_nft:
            out.append(
                f"nftables table {table['family']} {ours} in {table['namespace']}: would be "
                "removed (security groups and floating addresses are not gathered yet)"
            )
    want_dhcp = {d["name"]: d for d in host_plan["dnsmasq"]}
    have_dhcp = {
        d["name"]: d
        for d in fact["dnsmasq"]
        if d["name"].startswith(planmod.dhcp_scope(tenant)) and d.get("config")
    }
    for name in sorted(set(want_dhcp) | set(have_dhcp)):
        if name not in have_dhcp:
            out.append(f"dnsmasq {name}: would be created")
            continue
        if name not in want_dhcp:
            out.append(f"dnsmasq {name}: would be removed")
            continue
        try:
            planned = normalize_instance(want_dhcp[name])
            found = normalize_instance({"name": name, **have_dhcp[name]["config"]})
        except DnsmasqError as exc:
            out.append(f"dnsmasq {name}: {exc}")
            continue
        keys = [k for k in planned if planned[k] != found.get(k)]
        if keys:
            out.append(
                f"dnsmasq {name}: "
                + ", ".join(f"{k} {found.get(k)!r} -> {planned[k]!r}" for k in keys)
            )
    return out


def _vm_differences(
    planned: Mapping[str, Any], record: Mapping[str, Any] | None, host: str
) -> list[str]:
    """What the vm module would change on a domain of ours (its compared attributes)."""
    from .libvirt_vm import VmError, managed_view, normalize_vm

    name = planned["name"]
    if record is None:
        return [f"domain {name} would be created on {host}"]
    try:
        want = normalize_vm(planned)
    except VmError as exc:
        return [str(exc)]
    if want["managed_volume"]:
        want["disk"] = os.path.join(want["pool_path"], f"{name}.qcow2")
    view = managed_view(want)
    nic = _nic0(record)
    disk = _main_disk(record) or {}
    have = {
        "memory_mib": record.get("memory_mib"),
        "vcpus": record.get("vcpus"),
        "max_vcpus": record.get("max_vcpus"),
        "mac": nic.get("mac"),
        "bridge": nic.get("bridge"),
        "mtu": nic.get("mtu"),
        "disk": disk.get("path"),
        "disk_format": disk.get("format"),
        "boot": record.get("boot"),
        "console": record.get("console"),
        "metadata": record.get("metadata"),
    }
    out = [
        f"domain {name} on {host}: {key} {have.get(key)!r} -> {value!r}"
        for key, value in view.items()
        if have.get(key) != value
    ]
    if record.get("state") != "running":
        out.append(f"domain {name} on {host} is {record.get('state')}: it would be started")
    return out


# --------------------------------------------------------------------------- the spec


def build_spec(
    facts: Mapping[str, Mapping[str, Any]],
    hosts: Mapping[str, planmod.Host],
    *,
    tenants: Iterable[str] | None = None,
    boot: Mapping[str, Mapping | None] | None = None,
    placement: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Merge the hosts' facts (host -> collect()) into a spec.

    ``hosts``: every cloud host of the inventory (plan.hosts_from_inventory); ``tenants``
    narrows the result to these tenants; ``boot`` and ``placement`` are what create_infra
    plans with (each host's mcm_vm_boot, the placement record).

    Returns ``spec`` (the northbound spec, plain data), ``tenants`` (names written),
    ``adopted`` (domains written as adopted VMs), ``skipped`` (``{object, reason}`` of
    everything left out) and ``problems`` (spec.validate of the result: empty).
    """
    for host, fact in facts.items():
        missing = [k for k in FACT_KEYS if k not in fact]
        if missing:
            raise GatherError(f"facts of {host} lack {', '.join(missing)}")
        if host not in hosts:
            raise GatherError(f"host {host} is in no cloud group of the inventory")
    wanted = set(tenants) if tenants else None
    unread = sorted(set(hosts) - set(facts))
    found, foreign_dhcp = _index(facts)
    skipped: list[dict[str, str]] = []
    adopted: list[dict[str, Any]] = []
    written: list[dict[str, Any]] = []
    claimed: set[tuple[str, str]] = set()  # (host, domain) written or reported
    if wanted:
        for name in sorted(wanted - set(found)):
            skipped.append({"object": f"tenant {name}", "reason": "nothing of it on the hosts"})

    for tname in sorted(found):
        if wanted is not None and tname not in wanted:
            continue
        t = found[tname]
        adopted_here: list[dict[str, Any]] = []
        result = _tenant_spec(
            t, facts, hosts=hosts, boot=boot or {}, placement=placement,
            adopted=adopted_here, skipped=skipped, claimed=claimed,
        )  # fmt: skip
        for host, record in t.domains:
            claimed.add((host, record["name"]))
        if result is None:
            if unread and not any("were not gathered" in r for r in t.reasons):
                t.reasons.append(f"host(s) {', '.join(unread)} were not gathered (-l?)")
            skipped.append({"object": f"tenant {tname}", "reason": "; ".join(t.reasons)})
            skipped.extend(
                {"object": f"domain {a['domain']} on {a['host']}",
                 "reason": f"on {tname}/{a['network']}, a tenant left out"}
                for a in adopted_here
            )  # fmt: skip
            continue
        adopted.extend(adopted_here)
        tenant_spec = result
        for net in tenant_spec["networks"]:
            net.pop("_reservations", None)
            net.pop("_bridges", None)
            net["vms"].sort(key=lambda v: v["name"])
            if not net["vms"]:
                del net["vms"]
        written.append(tenant_spec)

    if wanted is None:
        for host in sorted(facts):
            for record in facts[host]["vms"]:
                if (host, record["name"]) in claimed or record.get("metadata"):
                    continue
                bridge = _nic0(record).get("bridge")
                skipped.append(
                    {
                        "object": f"domain {record['name']} on {host}",
                        "reason": f"not on a written tenant network (bridge {bridge or 'none'})",
                    }
                )
        for item in foreign_dhcp:
            skipped.append(
                {
                    "object": f"dnsmasq {item['name']} on {item['host']}",
                    "reason": "not an instance of this collection (no settings line)",
                }
            )
    spec = {"tenants": written}
    problems = [str(p) for p in specmod.validate(spec, sorted({h.cloud for h in hosts.values()}))]
    return {
        "spec": spec,
        "tenants": [t["name"] for t in written],
        "adopted": adopted,
        "skipped": skipped,
        "problems": problems,
    }


def _tenant_spec(
    t: _Tenant,
    facts: Mapping[str, Mapping[str, Any]],
    *,
    hosts: Mapping[str, planmod.Host],
    boot: Mapping[str, Mapping | None],
    placement: Mapping[str, Any] | None,
    adopted: list[dict[str, Any]],
    skipped: list[dict[str, str]],
    claimed: set[tuple[str, str]],
) -> dict[str, Any] | None:
    """The tenant's spec, or None with t.reasons filled.

    Foreign domains on its bridges are adopted (``adopted``) or reported (``skipped``).
    """
    vni_users: dict[int, int] = {}
    for net in t.networks.values():
        for vni in net["vnis"]:
            vni_users[vni] = vni_users.get(vni, 0) + 1
    shared = {vni for vni, count in vni_users.items() if count > 1}
    networks = []
    for name in sorted(t.networks):
        net = _network_spec(t, name, t.networks[name], facts=facts, hosts=hosts, shared_vnis=shared)
        if net is not None:
            networks.append(net)
    if t.reasons:
        return None
    by_name = {n["name"]: n for n in networks}
    clouds = {n["cloud"] for n in networks}
    if t.transit:  # its routers are linked across clouds: all of them matter
        clouds = {h.cloud for h in hosts.values()}
    missing = sorted(h.name for h in hosts.values() if h.cloud in clouds and h.name not in facts)
    if missing:
        t.reasons.append(f"host(s) {', '.join(missing)} of its clouds were not gathered")
        return None
    seen: dict[str, str] = {}
    for host, record in sorted(t.domains, key=lambda item: (item[1]["name"], item[0])):
        meta = record["metadata"]
        where = f"domain {record['name']} on {host}"
        if record["name"] in seen:
            t.reasons.append(f"{where}: also defined on {seen[record['name']]}")
            continue
        seen[record["name"]] = host
        net = by_name.get(meta.get("network") or "")
        if net is None:
            t.reasons.append(f"{where}: its network {meta.get('network')!r} was not found")
            continue
        vm = _our_vm(t, host, record, net, hosts)
        if vm is not None:
            net["vms"].append(vm)
    if t.reasons:
        return None
    _adopt(t, facts, networks, adopted=adopted, skipped=skipped, claimed=claimed)
    tenant_spec = {"name": t.name, "networks": networks}
    # Prove it: plan the tenant as create_infra would and compare with the hosts.
    clean = {"tenants": [{**tenant_spec, "networks": [
        {k: v for k, v in n.items() if not k.startswith("_")} for n in networks
    ]}]}  # fmt: skip
    try:
        normal = specmod.normalize(clean, sorted({h.cloud for h in hosts.values()}))
        differences = []
        for host in sorted(facts):
            host_plan = planmod.host_plan(normal, hosts, host, placement)
            differences.extend(
                f"{host}: {d}" for d in _differences(t.name, host, host_plan, facts[host])
            )
        existing = {
            h: [r["name"] for r in facts[h]["vms"] if (r.get("metadata") or {}).get("tenant")
                == t.name] for h in facts
        }  # fmt: skip
        vm_plans = planmod.vm_plans(normal, hosts, existing, boot=boot, placement=placement)
    except (specmod.SpecError, planmod.PlanError) as exc:
        t.reasons.append(f"its gathered spec cannot be planned: {exc}")
        return None
    for host, host_vms in sorted(vm_plans.items()):
        records = {r["name"]: r for r in facts.get(host, {}).get("vms", [])}
        for planned in host_vms["vms"]:
            differences.extend(_vm_differences(planned, records.get(planned["name"]), host))
    if differences:
        shown = differences[:MAX_DETAILS]
        more = len(differences) - len(shown)
        t.reasons.append(
            "re-applying it would change: "
            + "; ".join(shown)
            + (f"; and {more} more" if more else "")
        )
        return None
    return tenant_spec


def _adopt(
    t: _Tenant,
    facts: Mapping[str, Mapping[str, Any]],
    networks: list[dict[str, Any]],
    *,
    adopted: list[dict[str, Any]],
    skipped: list[dict[str, str]],
    claimed: set[tuple[str, str]],
) -> None:
    """Foreign domains whose first NIC is on one of the tenant's bridges become adopted VMs."""
    bridges = {bridge: n for n in networks for bridge in n["_bridges"]}
    taken = {vm["name"] for net in networks for vm in net["vms"]}
    for host in sorted(facts):
        for record in sorted(facts[host]["vms"], key=lambda r: r["name"]):
            if record.get("metadata"):
                continue
            net = bridges.get(_nic0(record).get("bridge"))
            if net is None:
                continue
            claimed.add((host, record["name"]))
            vm, why = _adopted_vm(t, host, record, net, taken)
            if vm is None:
                skipped.append(
                    {
                        "object": f"domain {record['name']} on {host}",
                        "reason": f"on {t.name}/{net['name']}: {why}",
                    }
                )
                continue
            taken.add(vm["name"])
            net["vms"].append(vm)
            adopted.append(
                {"domain": record["name"], "host": host, "tenant": t.name, "network": net["name"],
                 "vm": vm["name"],
                 "disks": [d["path"] for d in record.get("disks") or [] if d.get("path")]}
            )  # fmt: skip


# --------------------------------------------------------------------------- the file


def _plain(value: Any) -> Any:
    """Builtin types only (Ansible hands over str/int subclasses PyYAML cannot represent)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


def render(result: Mapping[str, Any], source: str = "") -> str:
    """The spec file: a comment saying what was adopted and left out, then the YAML."""
    import yaml

    lines = [
        "# Written by multicloud.migration gather_infra.yml"
        + (f" from {source}" if source else "")
        + ".",
        "# Re-applied with create_infra.yml it changes nothing (docs/gather.md).",
    ]
    if result["adopted"]:
        lines.append("# Adopted (existing domains create_infra records and never touches):")
        lines.extend(
            f"#   {a['domain']} on {a['host']} -> {a['tenant']}/{a['network']} vm {a['vm']}"
            + (f", disk {', '.join(a['disks'])}" if a["disks"] else "")
            for a in result["adopted"]
        )
    if result["skipped"]:
        lines.append("# Left out (not expressible in the spec):")
        lines.extend(f"#   {s['object']}: {s['reason']}" for s in result["skipped"])
    body = yaml.safe_dump(
        _plain(result["spec"]),
        sort_keys=False,
        default_flow_style=None,
        width=200,
        allow_unicode=True,
    )
    return "\n".join(lines) + "\n" + body
