# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""From the normalised spec to what each host must carry (the southbound plan).

``host_plan`` turns a normalised spec (spec.normalize) and the inventory's placement
facts into the desired state of one host, in the shapes the collection's resource
modules take as ``config``: namespaces, links, addresses, routes, FDB entries and dnsmasq
instances. Pure Python: it decides, the modules converge.

The network model (docs/network.md):
- every host of a network's cloud carries the network's bridge and VXLAN device, with one
  head-end replication FDB entry per other such host (underlay address inside a cloud,
  WAN address across clouds);
- the cloud's network node (the first of its hosts, or the one with
  ``mcm_network_node: true``) also carries the network's DHCP namespace (a veth leg created
  inside it, the DHCP server address, dnsmasq) and the tenant's router namespace with a
  leg on every routed segment of the tenant in that cloud holding the gateway(s);
- nothing tenant-owned is addressed in the root namespace;
- a router namespace also gets the tenant's nftables table (``firewall``): the security
  groups of the networks whose gateway it holds and the floating addresses of their VMs
  (docs/security.md); a router without any gets the table removed.
Objects carry the owner tag ``mcm:<tenant>/<network>`` (``mcm:<tenant>/router`` for the
router namespace) so that a scoped ``overridden`` removes exactly what left the spec.
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .naming import firewall_table

# Where the VMs' serial console sockets and logs live on every host (vm_plans).
CONSOLE_DIR = "/var/lib/mcm/console"

VXLAN_PORT = 4789
VXLAN_OVERHEAD = 50
UNDERLAY_MTU = 1500
TENANT_MTU = UNDERLAY_MTU - VXLAN_OVERHEAD  # 1450: full 1500-byte frames would be dropped
OWNER_PREFIX = "mcm:"
DHCP_LEASE_TIME = "1h"


class PlanError(Exception):
    """The inventory cannot carry the spec (missing host facts, empty cloud)."""


@dataclass(frozen=True)
class Host:
    name: str
    cloud: str
    underlay_ip: str
    wan_ip: str
    network_node: bool = False


def owner(tenant: str, what: str) -> str:
    return f"{OWNER_PREFIX}{tenant}/{what}"


def tenant_scope(tenant: str) -> str:
    """Owner-tag prefix of everything a tenant owns (the trailing slash keeps `a` from `a-b`)."""
    return f"{OWNER_PREFIX}{tenant}/"


def dhcp_scope(tenant: str) -> str:
    """Prefix of a tenant's DHCP namespaces and dnsmasq instances (``qdhcp-<tenant>.``)."""
    return f"qdhcp-{tenant}."


def namespace_scopes(tenants: Iterable[str]) -> list[str]:
    """scope_namespaces entries covering exactly these tenants' namespaces."""
    return [entry for t in tenants for entry in (dhcp_scope(t), f"qrouter-{t}")]


def removal_plan(host: str, tenants: Iterable[str]) -> dict[str, Any]:
    """A plan that carries nothing of ``tenants``: applied, it removes all they own."""
    names = sorted(set(tenants))
    return {
        "host": host,
        "tenants": names,
        "scopes": [tenant_scope(t) for t in names],
        "namespace_scopes": namespace_scopes(names),
        "dhcp_scopes": [dhcp_scope(t) for t in names],
        "netns": [],
        "links": [],
        "addresses": [],
        "routes": [],
        "fdb": [],
        "dnsmasq": [],
        "dhcp_clients": [],
        "firewall": [],
    }


def hosts_from_inventory(
    clouds: Iterable[str], groups: Mapping[str, list[str]], hostvars: Mapping[str, Mapping]
) -> dict[str, Host]:
    """The placement facts of every cloud host, read from the inventory."""
    hosts: dict[str, Host] = {}
    problems = []
    for cloud in clouds:
        members = groups.get(cloud) or []
        if not members:
            problems.append(f"cloud group {cloud!r} has no hosts")
        for name in members:
            hvars = hostvars.get(name, {})
            if name in hosts:
                problems.append(f"host {name} is in clouds {hosts[name].cloud} and {cloud}")
                continue
            missing = [k for k in ("underlay_ip", "wan_ip") if not hvars.get(k)]
            if missing:
                problems.append(f"host {name} ({cloud}) lacks {' and '.join(missing)}")
                continue
            bad = [k for k in ("underlay_ip", "wan_ip") if not _is_ipv4(hvars[k])]
            if bad:
                problems.extend(
                    f"host {name}: {k} {hvars[k]!r} is not an IPv4 address" for k in bad
                )
                continue
            hosts[name] = Host(
                name=name,
                cloud=cloud,
                underlay_ip=str(hvars["underlay_ip"]),
                wan_ip=str(hvars["wan_ip"]),
                network_node=bool(hvars.get("mcm_network_node", False)),
            )
    if problems:
        raise PlanError("inventory: " + "; ".join(problems))
    return hosts


def _is_ipv4(value: object) -> bool:
    try:
        ipaddress.IPv4Address(str(value))
    except ValueError:
        return False
    return True


def cloud_hosts(hosts: Mapping[str, Host], cloud: str) -> list[Host]:
    return sorted((h for h in hosts.values() if h.cloud == cloud), key=lambda h: h.name)


def network_node(hosts: Mapping[str, Host], cloud: str) -> Host:
    members = cloud_hosts(hosts, cloud)
    if not members:
        raise PlanError(f"cloud {cloud!r} has no hosts in the inventory")
    chosen = [h for h in members if h.network_node]
    if len(chosen) > 1:
        names = ", ".join(h.name for h in chosen)
        raise PlanError(f"cloud {cloud!r} has several hosts with mcm_network_node: {names}")
    return chosen[0] if chosen else members[0]


def peer_address(me: Host, peer: Host) -> str:
    """Underlay inside a cloud, WAN across clouds."""
    return peer.underlay_ip if peer.cloud == me.cloud else peer.wan_ip


PLACEMENT_KEYS = ("networks", "vms", "stretch", "gateways", "layout")
# What a migration with network_map / storage_map / disk_format changed of a VM on a host
# (placement ``layout``, docs/migration.md "Mapping and conversion").
LAYOUT_KEYS = ("network", "ip", "pool", "pool_path", "disk_format")
DEFAULT_DISK_FORMAT = "qcow2"
TRANSIT_NET = ipaddress.IPv4Network("169.254.0.0/24")  # inside each tenant router only
TRANSIT_METRIC = 100  # below a connected route: a gateway that moves away hands over
TRANSIT_OWNER = "~transit"  # not a DNS label: no network can be called that


def normalize_placement(placement: Mapping[str, Any] | None) -> dict[str, dict]:
    """The placement record (docs/migration.md), every key present.

    - ``networks``: ``tenant/network`` -> cloud that carries the network's DHCP and gateway
      now (a migrated subnet), overriding the spec's ``cloud``;
    - ``vms``: ``tenant/vm`` -> host (or cloud) the VM runs on (a migrated instance),
      overriding the network's cloud and the spec's ``host``;
    - ``stretch``: ``tenant/network`` -> extra hosts carrying the network's segment
      (during a migration; not recorded);
    - ``gateways``: ``tenant/network`` -> extra clouds whose router also holds the gateway
      (make-before-break while a subnet's gateway moves; not recorded);
    - ``layout``: ``tenant/vm`` -> {host: {network, ip, pool, pool_path, disk_format}}: how
      a VM a migration mapped or converted looks on a host (``apply_layout``); an entry
      applies while ``vms`` pins the VM to that host.
    """
    placement = placement or {}
    unknown = sorted(set(placement) - set(PLACEMENT_KEYS))
    if unknown:
        raise PlanError(
            f"placement: unknown key(s) {', '.join(unknown)} (known: {', '.join(PLACEMENT_KEYS)})"
        )
    out: dict[str, dict] = {}
    for key in PLACEMENT_KEYS:
        value = placement.get(key) or {}
        if not isinstance(value, Mapping):
            raise PlanError(f"placement.{key}: a mapping of tenant/name to a value is required")
        out[key] = dict(value)
    # a null entry is no entry (a record about to remove it)
    out["layout"] = {k: v for k, v in out["layout"].items() if v is not None}
    for name, entry in out["layout"].items():
        if not isinstance(entry, Mapping) or not all(
            isinstance(v, Mapping) and not set(v) - set(LAYOUT_KEYS) for v in entry.values()
        ):
            raise PlanError(
                f"placement.layout: {name}: a mapping of host to {{{', '.join(LAYOUT_KEYS)}}} "
                "is required"
            )
    return out


def vm_layout(placement: Mapping[str, dict], tenant: str, vm: Mapping[str, Any]) -> dict | None:
    """The layout entry of a VM on the host the placement pins it to (None: the spec's)."""
    key = f"{tenant}/{vm['name']}"
    host = placement["vms"].get(key)
    entry = placement["layout"].get(key) or {}
    here = entry.get(host) if host else None
    return dict(here) if here else None


def apply_layout(spec: Mapping[str, Any], placement: Mapping | None) -> Mapping[str, Any]:
    """The spec as the hosts carry it: VMs a migration mapped to another network
    (placement ``layout``) are in that network with their new ``ip``, and VMs whose disk a
    migration moved or converted carry ``disk_pool``, ``disk_pool_path`` and ``disk_format``.

    The input is not changed. A VM the spec itself has put into its layout's network keeps
    the spec's ``ip`` (the operator wrote the spec follow-up). A layout network absent from
    the spec, or an ``ip`` another VM of that network has, is a PlanError.
    """
    placement = normalize_placement(placement)
    if not placement["layout"]:
        return spec
    out = copy.copy(spec)
    out["tenants"] = []
    for tenant in spec.get("tenants", []):
        tname = tenant["name"]
        entries = [k for k in placement["layout"] if k.startswith(f"{tname}/")]
        if not entries or tenant.get("state", "present") != "present":
            out["tenants"].append(tenant)
            continue
        nets = [{**n, "vms": list(n["vms"])} for n in tenant["networks"]]
        by_name = {n["name"]: n for n in nets if n.get("state", "present") == "present"}
        arrivals: list[tuple[dict, dict, str]] = []
        for net in nets:
            for index, vm in enumerate(net["vms"]):
                if vm.get("state", "present") != "present":
                    continue
                here = vm_layout(placement, tname, vm)
                if not here:
                    continue
                laid = dict(vm)
                for key, field in (("pool", "disk_pool"), ("pool_path", "disk_pool_path"),
                                   ("disk_format", "disk_format")):  # fmt: skip
                    if here.get(key):
                        laid[field] = here[key]
                target = here.get("network") or net["name"]
                if target == net["name"]:
                    net["vms"][index] = laid
                    continue
                if target not in by_name:
                    raise PlanError(
                        f"placement.layout: VM {tname}/{vm['name']} runs on network "
                        f"{tname}/{target} (a migration with network_map put it there), which "
                        "is not a present network of the spec: add it back, or move the VM "
                        "first (migrate_instance.yml -e network_map=...)"
                    )
                laid["ip"] = here.get("ip")
                laid["mapped_from"], laid["spec_ip"] = net["name"], vm.get("ip")
                laid["network"] = target
                domain = by_name[target]["dhcp"].get("domain")
                laid["fqdn"] = f"{vm['name']}.{domain}" if domain else None
                net["vms"][index] = None
                arrivals.append((by_name[target], laid, net["name"]))
        for net in nets:
            net["vms"] = [v for v in net["vms"] if v is not None]
        for net, laid, origin in arrivals:
            taken = {v.get("ip"): v["name"] for v in net["vms"]
                     if v.get("state", "present") == "present" and v.get("ip")}  # fmt: skip
            if laid.get("ip") and laid["ip"] in taken:
                raise PlanError(
                    f"placement.layout: VM {tname}/{laid['name']}, moved from network {origin} "
                    f"to {net['name']} with ip {laid['ip']}, collides with vm "
                    f"{taken[laid['ip']]} of the spec: give one of them another address"
                )
            net["vms"].append(laid)
        out["tenants"].append({**tenant, "networks": nets})
    return out


def home_cloud(placement: Mapping[str, dict], tenant: str, net: Mapping[str, Any]) -> str:
    """The cloud holding a network's DHCP and gateway: the placement's, else the spec's."""
    return placement["networks"].get(f"{tenant}/{net['name']}", net["cloud"])


def vm_target(
    placement: Mapping[str, dict], hosts: Mapping[str, Host], tenant: str, vm: Mapping[str, Any]
) -> tuple[str | None, str | None]:
    """(host, cloud) a VM is placed on by the placement record, each None when free."""
    where = placement["vms"].get(f"{tenant}/{vm['name']}")
    if where is None:
        return None, None
    if where in hosts:
        return where, hosts[where].cloud
    if any(h.cloud == where for h in hosts.values()):
        return None, where
    raise PlanError(
        f"placement.vms: {tenant}/{vm['name']} is placed on {where!r}, which is neither a "
        "host nor a cloud of the inventory"
    )


def carriers(
    placement: Mapping[str, dict], hosts: Mapping[str, Host], tenant: str, net: Mapping[str, Any]
) -> list[Host]:
    """Every host that carries a network's segment: the hosts of its home cloud, the hosts
    its VMs were moved to, and the hosts a migration stretches it to."""
    members = {h.name: h for h in cloud_hosts(hosts, home_cloud(placement, tenant, net))}
    for vm in net["vms"]:
        if vm.get("state", "present") != "present":
            continue
        host, cloud = vm_target(placement, hosts, tenant, vm)
        if host is not None:
            members[host] = hosts[host]
        elif cloud is not None:
            members.update((h.name, h) for h in cloud_hosts(hosts, cloud))
    for name in placement["stretch"].get(f"{tenant}/{net['name']}", []):
        if name not in hosts:
            raise PlanError(f"placement.stretch: {tenant}/{net['name']}: no host {name!r}")
        members[name] = hosts[name]
    return [members[n] for n in sorted(members)]


def gateway_clouds(placement: Mapping[str, dict], tenant: str, net: Mapping[str, Any]) -> list[str]:
    """Clouds whose router holds a routed network's gateway: its home (and, while the
    gateway moves, the cloud it leaves)."""
    home = home_cloud(placement, tenant, net)
    extra = placement["gateways"].get(f"{tenant}/{net['name']}", [])
    return [home, *sorted(set(extra) - {home})]


def vxlan_learning(placement: Mapping[str, dict], tenant: str, net: Mapping[str, Any]) -> bool:
    """Whether a network's VXLAN devices learn remote MACs: not while a migration stretches
    it (placement ``stretch``).

    Without learning, a frame to a MAC behind the VXLAN goes to every carrier (head-end
    replication), so it reaches a moving VM wherever it runs from the moment its
    destination announces it. With learning, the kernel moves a learned entry to the new
    peer in place but keeps the route it cached for the old one: when the old peer was
    reached over the underlay and the new one over the WAN, the frames go out of the
    underlay interface to an address nobody answers there, lost until the host's routing
    changes for some other reason (seconds to minutes; docs/migration.md).
    """
    return f"{tenant}/{net['name']}" not in placement["stretch"]


def transit_address(hosts: Mapping[str, Host], cloud: str) -> str:
    """A cloud's router address on its tenants' transit segments (by cloud name order)."""
    clouds = sorted({h.cloud for h in hosts.values()})
    return str(TRANSIT_NET.network_address + clouds.index(cloud) + 1)


def _present_networks(spec: Mapping[str, Any]) -> Iterable[tuple[dict, dict]]:
    for tenant in spec.get("tenants", []):
        if tenant.get("state", "present") != "present":
            continue
        for net in tenant.get("networks", []):
            if net.get("state", "present") == "present":
                yield tenant, net


def host_plan(
    spec: Mapping[str, Any], hosts: Mapping[str, Host], host: str, placement: Mapping | None = None
) -> dict[str, Any]:
    """The desired state of ``host`` for the present networks of a normalised spec.

    ``placement`` maps ``tenant/network`` to the cloud that carries it now, overriding the
    spec's ``cloud`` (a migrated network stays where it was moved to).
    """
    if host not in hosts:
        raise PlanError(f"host {host!r} is not in any cloud group of the inventory")
    me = hosts[host]
    placement = normalize_placement(placement)
    spec = apply_layout(spec, placement)
    netns: dict[str, dict] = {}
    links: dict[tuple[str | None, str], dict] = {}
    addresses: dict[tuple[str | None, str], list[str]] = {}
    routes: dict[str, list[dict]] = {}
    fdb: dict[str, set[str]] = {}
    dnsmasq: list[dict] = []
    clients: set[str] = set()  # MACs of the VMs whose leases this host's dnsmasq hands out

    def link(item: dict) -> None:
        key = (item.get("namespace"), item["name"])
        if key not in links:
            links[key] = item

    def attach_namespace(
        ns: str, forwarding: bool, legs: tuple[str, str], bridge: str, tag: str
    ) -> None:
        """A namespace with lo up and a veth leg on ``bridge`` (the inner end created in it)."""
        root_leg, inner_leg = legs
        netns[ns] = {"name": ns, "forwarding": forwarding}
        link({"name": "lo", "kind": "device", "namespace": ns, "state": "up"})
        leg = {"mtu": TENANT_MTU, "state": "up", "owner": tag}
        link({"name": root_leg, "kind": "veth", "master": bridge, **leg,
              "peer": {"name": inner_leg, "namespace": ns, **leg}})  # fmt: skip

    # The spec is authoritative for every tenant it names, present or absent: what such a
    # tenant owns on this host and the plan leaves out is removed (scoped overridden).
    tenants = {t["name"] for t in spec.get("tenants", [])}
    # tenant -> clouds whose router it needs, and (cloud, subnet) of its routed networks
    router_clouds: dict[str, set[str]] = {}
    routed_homes: dict[str, list[tuple[str, str]]] = {}
    # router namespace -> security groups / floating addresses it applies (docs/security.md)
    guarded: dict[str, list[dict]] = {}
    floating: dict[str, list[dict]] = {}
    for tenant, net in _present_networks(spec):
        if not (net["routed"] and net["gateway"]):
            continue
        tname = tenant["name"]
        clouds = router_clouds.setdefault(tname, set())
        clouds.update(h.cloud for h in carriers(placement, hosts, tname, net))
        clouds.update(gateway_clouds(placement, tname, net))
        home = home_cloud(placement, tname, net)
        routed_homes.setdefault(tname, []).append((home, net["subnet"]))
        # a floating address is routed, like its VM's subnet, to the router that holds
        # the network's gateway: that router DNATs it
        routed_homes[tname].extend((home, f"{fip}/32") for fip in _floating_ips(net))
    for tenant, net in _present_networks(spec):
        tname, nname = tenant["name"], net["name"]
        cloud = home_cloud(placement, tname, net)
        members = carriers(placement, hosts, tname, net)
        if me not in members:
            continue
        tag = owner(tname, nname)
        bridge, vxlan = net["bridge"], net["vxlan"]
        link({"name": bridge, "kind": "bridge", "mtu": TENANT_MTU, "state": "up", "owner": tag})
        link(
            {
                "name": vxlan,
                "kind": "vxlan",
                "mtu": TENANT_MTU,
                "master": bridge,
                "state": "up",
                "owner": tag,
                "vxlan": {
                    "id": net["vni"],
                    "port": VXLAN_PORT,
                    "learning": vxlan_learning(placement, tname, net),
                },
            }
        )
        peers = fdb.setdefault(vxlan, set())
        peers.update(peer_address(me, p) for p in members if p != me)

        prefix = net["prefixlen"]
        if (
            net["routed"]
            and net["gateway"]
            and any(network_node(hosts, c) == me for c in gateway_clouds(placement, tname, net))
        ):
            rns = net["router_namespace"]
            root_leg, r_leg = net["router_legs"]
            attach_namespace(rns, True, (root_leg, r_leg), bridge, tag)
            links[(None, root_leg)]["peer"]["mac"] = net["gateway_mac"]  # the gateway's MAC
            # a shared managed-novlan segment: one router leg carries every gateway
            addresses.setdefault((rns, r_leg), []).append(f"{net['gateway']}/{prefix}")
            # the router that holds the gateway is the one traffic into the network passes
            group = net.get("security_group")
            if group:
                guarded.setdefault(rns, []).append(
                    {"name": nname, "subnet": net["subnet"], "default": group["default"],
                     "ingress": [dict(rule) for rule in group["ingress"]]}
                )  # fmt: skip
            floating.setdefault(rns, []).extend(
                {"address": fip, "fixed": ip, "subnet": net["subnet"]}
                for fip, ip in _floating_ips(net).items()
            )
        if network_node(hosts, cloud) != me:
            continue
        if net["dhcp"]["enabled"]:
            ns = net["dhcp"]["namespace"]
            root_leg, ns_leg = net["dhcp"]["legs"]
            attach_namespace(ns, False, (root_leg, ns_leg), bridge, tag)
            addresses[(ns, ns_leg)] = [f"{net['dhcp']['server']}/{prefix}"]
            if net["gateway"] and net["routed"]:
                routes[ns] = [{"dst": "default", "gateway": net["gateway"]}]
            # An adopted VM (a domain the collection did not create) may not use DHCP at
            # all: its reservation is served, nobody waits for its lease.
            clients.update(
                vm["mac"]
                for vm in net["vms"]
                if vm.get("state", "present") == "present" and not vm.get("adopted")
            )
            dnsmasq.append(
                {
                    "name": ns,
                    "namespace": ns,
                    "interface": ns_leg,
                    "server": net["dhcp"]["server"],
                    "subnet": net["subnet"],
                    "range": net["dhcp"]["range"],
                    "lease_time": DHCP_LEASE_TIME,
                    "gateway": net["gateway"] if net["routed"] else None,
                    "mtu": TENANT_MTU,
                    "domain": net["dhcp"]["domain"],
                    "hosts": sorted(
                        (
                            {"mac": vm["mac"], "ip": vm["ip"], "name": vm["name"]}
                            for vm in net["vms"]
                            if vm.get("state", "present") == "present" and vm.get("ip")
                        ),
                        key=lambda h: h["ip"],
                    ),
                }
            )

    # Transit: a tenant whose routers sit in several clouds links them with one segment
    # of its own; each router reaches the subnets homed elsewhere through it.
    for tenant in spec.get("tenants", []):
        tname = tenant["name"]
        clouds = sorted(router_clouds.get(tname, ()))
        if len(clouds) < 2 or me.cloud not in clouds or network_node(hosts, me.cloud) != me:
            continue
        transit = tenant["transit"]
        tag = owner(tname, TRANSIT_OWNER)
        bridge, vxlan = transit["bridge"], transit["vxlan"]
        link({"name": bridge, "kind": "bridge", "mtu": TENANT_MTU, "state": "up", "owner": tag})
        link({"name": vxlan, "kind": "vxlan", "mtu": TENANT_MTU, "master": bridge, "state": "up",
              "owner": tag, "vxlan": {"id": transit["vni"], "port": VXLAN_PORT,
                                      "learning": True}})  # fmt: skip
        fdb.setdefault(vxlan, set()).update(
            peer_address(me, network_node(hosts, c)) for c in clouds if c != me.cloud
        )
        rns = tenant["router_namespace"]
        root_leg, r_leg = transit["legs"]
        attach_namespace(rns, True, (root_leg, r_leg), bridge, tag)
        addresses[(rns, r_leg)] = [f"{transit_address(hosts, me.cloud)}/{TRANSIT_NET.prefixlen}"]
        routes[rns] = [
            {"dst": subnet, "gateway": transit_address(hosts, home), "metric": TRANSIT_METRIC}
            for home, subnet in sorted(routed_homes.get(tname, []), key=lambda r: r[1])
            if home != me.cloud
        ]
        if not routes[rns]:
            del routes[rns]

    firewall = []
    for tenant in spec.get("tenants", []):
        rns = tenant.get("router_namespace")
        if rns not in netns:
            continue
        nets = sorted(guarded.get(rns, []), key=lambda n: n["name"])
        fips = sorted(floating.get(rns, []), key=lambda f: _ip_key(f["address"]))
        item: dict[str, Any] = {
            "namespace": rns,
            "table": tenant.get("firewall_table") or firewall_table(tenant["name"]),
            "state": "present" if nets or fips else "absent",
        }
        if nets or fips:
            item.update(networks=nets, floating=fips)
        firewall.append(item)

    return {
        "host": host,
        "cloud": me.cloud,
        "tenants": sorted(tenants),
        "scopes": [tenant_scope(t) for t in sorted(tenants)],
        "namespace_scopes": namespace_scopes(sorted(tenants)),
        "dhcp_scopes": [dhcp_scope(t) for t in sorted(tenants)],
        "netns": [netns[k] for k in sorted(netns)],
        "links": _ordered_links(links),
        "addresses": [
            {"namespace": ns, "interface": ifname, "addresses": sorted(set(addrs))}
            for (ns, ifname), addrs in sorted(addresses.items(), key=_ns_key)
        ],
        "routes": [{"namespace": ns, "routes": r} for ns, r in sorted(routes.items())],
        "fdb": [
            {"device": dev, "entries": [{"dst": dst} for dst in sorted(peers, key=_ip_key)]}
            for dev, peers in sorted(fdb.items())
        ],
        "dnsmasq": sorted(dnsmasq, key=lambda d: d["name"]),
        "dhcp_clients": sorted(clients),
        "firewall": firewall,
    }


def _floating_ips(net: Mapping[str, Any]) -> dict[str, str]:
    """Floating address -> fixed address of a network's present VMs that have one."""
    return {
        vm["floating_ip"]: vm["ip"]
        for vm in net["vms"]
        if vm.get("state", "present") == "present" and vm.get("floating_ip") and vm.get("ip")
    }


def _ns_key(item: tuple[tuple[str | None, str], Any]) -> tuple[str, str]:
    (namespace, name), _value = item
    return namespace or "", name


def _ip_key(addr: str) -> int:
    return int(ipaddress.IPv4Address(addr))


def _ordered_links(links: Mapping[tuple[str | None, str], dict]) -> list[dict]:
    """Bridges first, so that VXLAN devices and veth legs can be enslaved to them."""
    order = {"bridge": 0, "vxlan": 1, "veth": 2, "device": 3}
    return sorted(
        links.values(),
        key=lambda item: (order[item["kind"]], item.get("namespace") or "", item["name"]),
    )


def tenant_namespaces(spec: Mapping[str, Any], tenant: str) -> list[str]:
    """Every namespace name the spec derives for a tenant, present or absent."""
    names: set[str] = set()
    for t in spec.get("tenants", []):
        if t["name"] != tenant:
            continue
        for net in t.get("networks", []):
            if net["dhcp"].get("namespace"):
                names.add(net["dhcp"]["namespace"])
            if net.get("router_namespace"):
                names.add(net["router_namespace"])
    return sorted(names)


def vm_plans(
    spec: Mapping[str, Any],
    hosts: Mapping[str, Host],
    existing: Mapping[str, Iterable[str]],
    *,
    boot: Mapping[str, Mapping | None] | None = None,
    placement: Mapping[str, str] | None = None,
    console_dir: str = CONSOLE_DIR,
) -> dict[str, dict[str, Any]]:
    """Place every present VM on a host of its network's cloud; return each host's VMs.

    A VM stays where it runs (``existing``: host -> domain names found there) as long as
    that host is in its network's cloud; a spec ``host`` pins it; any other VM goes to
    the least loaded host of the cloud (ties by name). Adding a VM therefore never moves
    another one. ``boot`` gives each host's direct-kernel-boot settings (the lab's guest
    kernel), or none to boot from the disk.
    """
    placement = normalize_placement(placement)
    spec = apply_layout(spec, placement)
    boot = boot or {}
    where: dict[str, str] = {}
    for host, names in existing.items():
        for name in names:
            where.setdefault(name, host)
    load = {h: 0 for h in hosts}
    for host, names in existing.items():
        if host in load:
            load[host] += len(list(names))
    pending: list[tuple[dict, dict, dict, list[Host]]] = []
    plans: dict[str, dict[str, Any]] = {
        h: {"host": h, "tenants": sorted({t["name"] for t in spec.get("tenants", [])}), "vms": []}
        for h in sorted(hosts)
    }
    problems = []
    chosen: dict[str, str] = {}
    for tenant, net in _present_networks(spec):
        home = home_cloud(placement, tenant["name"], net)
        for vm in net["vms"]:
            # An adopted VM is recorded, never placed or converged (docs/spec.md).
            if vm.get("state", "present") != "present" or vm.get("adopted"):
                continue
            name = vm["domain_name"]
            pinned, placed = vm_target(placement, hosts, tenant["name"], vm)
            cloud = placed or home
            members = cloud_hosts(hosts, cloud)
            names = [m.name for m in members]
            if pinned is not None:  # the placement record (a migration) wins
                chosen[name] = pinned
            elif vm.get("host") and (placed is None or vm["host"] in names):
                # a VM the record moved to another cloud leaves its spec host behind
                if vm["host"] not in names:
                    problems.append(
                        f"vm {tenant['name']}/{vm['name']}: host {vm['host']} is not in cloud "
                        f"{cloud} ({', '.join(names) or 'no hosts'})"
                    )
                    continue
                chosen[name] = vm["host"]
            elif where.get(name) in names:
                chosen[name] = where[name]
            else:
                pending.append((tenant, net, vm, members))
                continue
            if where.get(name) != chosen[name]:
                load[chosen[name]] += 1
            plans[chosen[name]]["vms"].append(
                _vm_config(tenant, net, vm, boot=boot, console_dir=console_dir, host=chosen[name])
            )
    if problems:
        raise PlanError("; ".join(problems))
    for tenant, net, vm, members in pending:
        target = min(members, key=lambda m: (load[m.name], m.name)).name
        load[target] += 1
        plans[target]["vms"].append(
            _vm_config(tenant, net, vm, boot=boot, console_dir=console_dir, host=target)
        )
    for plan in plans.values():
        plan["vms"].sort(key=lambda v: v["name"])
    return plans


def _vm_config(
    tenant: Mapping, net: Mapping, vm: Mapping, *, boot: Mapping, console_dir: str, host: str
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "name": vm["domain_name"],
        "state": "running",
        "memory_mib": vm["memory_mib"],
        "vcpus": vm["vcpus"],
        "mac": vm["mac"],
        "bridge": net["bridge"],
        "mtu": TENANT_MTU,
        "disk_mib": vm["disk_mib"],
        "console_log": f"{console_dir}/{vm['domain_name']}.log",
        "metadata": {"tenant": tenant["name"], "network": net["name"], "vm": vm["name"]},
    }
    if vm.get("image"):
        config["image"] = vm["image"]
    if vm.get("storage") == "shared":
        # The disk lives in the shared pool (the same directory on every host): created
        # once, visible wherever the VM runs; a live migration moves its memory only.
        config["pool"] = vm["storage_pool"]
        config["pool_path"] = vm["storage_path"]
    # A migration moved or converted the disk (placement layout, apply_layout).
    if vm.get("disk_pool"):
        config["pool"] = vm["disk_pool"]
        config.pop("pool_path", None)
        if vm.get("disk_pool_path"):
            config["pool_path"] = vm["disk_pool_path"]
    if vm.get("disk_format") and vm["disk_format"] != DEFAULT_DISK_FORMAT:
        config["disk_format"] = vm["disk_format"]
    host_boot = boot.get(host)
    if host_boot:
        config["boot"] = {
            "kernel": host_boot["kernel"],
            "initrd": host_boot["initrd"],
            "cmdline": f"{host_boot.get('cmdline', '')} mcm.hostname={vm['name']}".strip(),
        }
    return config
