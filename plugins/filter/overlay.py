# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters of the node overlay (module_utils/overlay.py): the mesh of a node, OVS tunnel ports."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ansible.errors import AnsibleFilterError

from ansible_collections.multicloud.migration.plugins.module_utils import overlay

# Documentation: overlay_mesh.yml and ovs_tunnel_ports.yml beside this file.


def overlay_mesh(hosts: list[str], hostvars: Mapping[str, Any], groups: Mapping[str, Any],
                 clouds: list[str], me: str, *, private_var: str = "overlay_private_ip",
                 public_var: str = "overlay_public_ip", encryption: str = "none",
                 tinc_subnet: str = overlay.TINC_SUBNET) -> dict[str, Any]:  # fmt: skip
    try:
        nodes = overlay.nodes_from_inventory(list(hosts), hostvars, groups, list(clouds),
                                             private_var=private_var, public_var=public_var)  # fmt: skip
        return overlay.mesh(nodes, me, encryption=str(encryption), tinc_subnet=str(tinc_subnet))
    except overlay.OverlayError as exc:
        raise AnsibleFilterError(str(exc)) from exc


def ovs_tunnel_ports(tunnels: list[Mapping[str, Any]], dst_port: int = 4789, key: int = 5000,
                     protected: bool = True) -> list[dict[str, Any]]:  # fmt: skip
    try:
        return overlay.tunnel_ports(list(tunnels), int(dst_port), int(key), protected)
    except overlay.OverlayError as exc:
        raise AnsibleFilterError(str(exc)) from exc


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"overlay_mesh": overlay_mesh, "ovs_tunnel_ports": ovs_tunnel_ports}
