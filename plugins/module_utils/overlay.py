# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The node overlay's full mesh: which address reaches which peer, tunnel names and ports.

Private to the collection (used by the overlay filters), not a public API. Plain Python.
A node reaches a peer of its own cloud at the peer's private address and a peer of another
cloud at its public address, as the seed's build_network.py did. With tinc encryption, a
peer of another cloud is reached at its address on the tinc network instead: the tunnel
between clouds runs inside tinc, which carries it to the peer's public address encrypted.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

TUNNEL_PREFIX = "vxo-"
MAX_ID = 65535
ENCRYPTIONS = ("none", "tinc")
TINC_SUBNET = "10.251.0.0/24"


class OverlayError(ValueError):
    pass


def _address(value: Any, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(str(value)))
    except ValueError as exc:
        raise OverlayError(f"{what}: {value!r} is not an IPv4 address") from exc


def nodes_from_inventory(hosts: list[str], hostvars: Mapping[str, Any],
                         groups: Mapping[str, list[str]], clouds: list[str], *,
                         private_var: str = "overlay_private_ip",
                         public_var: str = "overlay_public_ip",
                         ) -> list[dict[str, Any]]:  # fmt: skip
    """One record per host, {name, id, private, public, cloud}; checks the data.

    Host variables: ``overlay_id`` (required, unique, 1-65535), ``overlay_private_ip``
    (default ``underlay_ip``), ``overlay_public_ip`` (default ``wan_ip``, else the private
    one), ``overlay_cloud`` (default the host's group among ``clouds``). Other variables
    can hold the addresses (``private_var``, ``public_var``: the lab's OVS endpoints).
    """
    nodes = []
    ids: dict[int, str] = {}
    for name in sorted(hosts):
        hv = hostvars[name]
        if hv.get("overlay_id") in (None, ""):
            raise OverlayError(f"{name}: overlay_id is not set")
        try:
            node_id = int(hv["overlay_id"])
        except (TypeError, ValueError) as exc:
            raise OverlayError(f"{name}: overlay_id {hv['overlay_id']!r} is not a number") from exc
        if not 1 <= node_id <= MAX_ID:
            raise OverlayError(f"{name}: overlay_id {node_id} is not within 1-{MAX_ID}")
        if node_id in ids:
            raise OverlayError(f"{name}: overlay_id {node_id} is also the one of {ids[node_id]}")
        ids[node_id] = name
        private = hv.get(private_var) or hv.get("underlay_ip")
        if not private:
            raise OverlayError(f"{name}: neither {private_var} nor underlay_ip is set")
        public = hv.get(public_var) or hv.get("wan_ip") or private
        cloud = hv.get("overlay_cloud") or next(
            (c for c in clouds if name in groups.get(c, [])), None)  # fmt: skip
        if not cloud:
            raise OverlayError(f"{name}: in none of the clouds {clouds} and no overlay_cloud")
        nodes.append({
            "name": name, "id": node_id, "cloud": cloud,
            "private": _address(private, f"{name}: private address"),
            "public": _address(public, f"{name}: public address"),
        })  # fmt: skip
    return nodes


def tinc_name(host: str) -> str:
    """A host's node name on the tinc network: tinc allows letters, digits and ``_`` only."""
    return re.sub(r"[^A-Za-z0-9_]", "_", host)


def tinc_addresses(nodes: list[dict[str, Any]], subnet: str) -> dict[str, ipaddress.IPv4Interface]:
    """Each node's address on the tinc network: the ``overlay_id``-th host of ``subnet``."""
    try:
        network = ipaddress.IPv4Network(str(subnet))
    except ValueError as exc:
        raise OverlayError(f"overlay_tinc_subnet {subnet!r} is not an IPv4 network: {exc}") from exc
    last = network.num_addresses - 2  # neither the network nor the broadcast address
    addresses = {}
    for node in nodes:
        if not 1 <= node["id"] <= last:
            raise OverlayError(
                f"{node['name']}: overlay_id {node['id']} has no address in overlay_tinc_subnet "
                f"{network} (ids 1-{max(last, 0)} fit; give a larger one)"
            )
        addresses[node["name"]] = ipaddress.IPv4Interface(
            (int(network.network_address) + node["id"], network.prefixlen)
        )
    return addresses


def _tinc_names(nodes: list[dict[str, Any]]) -> dict[str, str]:
    names: dict[str, str] = {}
    owners: dict[str, str] = {}
    for node in nodes:
        name = tinc_name(node["name"])
        if name in owners:
            raise OverlayError(f"{node['name']}: tinc node name {name} is also the one of "
                               f"{owners[name]}")  # fmt: skip
        owners[name] = node["name"]
        names[node["name"]] = name
    return names


def mesh(nodes: list[dict[str, Any]], me: str, *, encryption: str = "none",
         tinc_subnet: str = TINC_SUBNET) -> dict[str, Any]:  # fmt: skip
    """The node ``me`` and its peers, each {name (of the tunnel), host, id, cloud,
    same_cloud, encrypted, remote_ip, local_ip}.

    With ``encryption="tinc"`` a peer of another cloud is reached at its tinc address, and
    ``tinc`` describes this node on the tinc network: {name, ip, address (CIDR),
    connect_to (names of the peers of other clouds), hosts ([{host, name, address (public),
    subnet}] of this node and those peers: the host files it needs)}; otherwise ``tinc``
    is None.
    """
    if encryption not in ENCRYPTIONS:
        raise OverlayError(
            f"overlay_encryption {encryption!r} is not one of {', '.join(ENCRYPTIONS)}"
        )
    by_name = {n["name"]: n for n in nodes}
    if me not in by_name:
        raise OverlayError(f"{me} is not one of the overlay's nodes {sorted(by_name)}")
    node = by_name[me]
    tinc = encryption == "tinc"
    inner = tinc_addresses(nodes, tinc_subnet) if tinc else {}
    names = _tinc_names(nodes) if tinc else {}
    peers = []
    for peer in sorted(nodes, key=lambda n: n["id"]):
        if peer["name"] == me:
            continue
        same = peer["cloud"] == node["cloud"]
        if same:
            remote, local = peer["private"], node["private"]
        elif tinc:
            remote, local = str(inner[peer["name"]].ip), str(inner[me].ip)
        else:
            remote, local = peer["public"], node["public"]
        peers.append({
            "name": f"{TUNNEL_PREFIX}{peer['id']}", "host": peer["name"], "id": peer["id"],
            "cloud": peer["cloud"], "same_cloud": same, "encrypted": tinc and not same,
            "remote_ip": remote, "local_ip": local,
        })  # fmt: skip
    # the flood list of the Linux backend's VXLAN device (multicloud.migration.fdb entries)
    flood = [{"dst": peer["remote_ip"]} for peer in peers]
    tinc_node = None
    if tinc:
        linked = [node] + [by_name[p["host"]] for p in peers if p["encrypted"]]
        tinc_node = {
            "name": names[me], "ip": str(inner[me].ip), "address": str(inner[me]),
            "connect_to": [names[p["host"]] for p in peers if p["encrypted"]],
            "hosts": [{"host": n["name"], "name": names[n["name"]], "address": n["public"],
                       "subnet": f"{inner[n['name']].ip}/32"}
                      for n in sorted(linked, key=lambda n: n["id"])],
        }  # fmt: skip
    return {"node": node, "peers": peers, "flood": flood, "tinc": tinc_node}


def tunnel_ports(tunnels: list[Mapping[str, Any]], dst_port: int, key: int,
                 protected: bool = True) -> list[dict[str, Any]]:  # fmt: skip
    """VXLAN tunnels ({name, remote_ip, key, dst_port, local_ip, options}) as
    ports of multicloud.migration.ovs_bridge; split horizon (protected) by default."""
    ports = []
    for tunnel in tunnels:
        name = tunnel.get("name")
        if not name or not tunnel.get("remote_ip"):
            raise OverlayError(f"tunnel {dict(tunnel)}: name and remote_ip are required")
        options = {
            "remote_ip": _address(tunnel["remote_ip"], f"tunnel {name}: remote_ip"),
            "key": str(tunnel.get("key") or key),
            "dst_port": str(tunnel.get("dst_port") or dst_port),
        }
        if tunnel.get("local_ip"):
            options["local_ip"] = _address(tunnel["local_ip"], f"tunnel {name}: local_ip")
        options.update({str(k): str(v) for k, v in (tunnel.get("options") or {}).items()})
        ports.append({"name": name, "type": "vxlan", "options": options,
                      "protected": protected})  # fmt: skip
    return ports
