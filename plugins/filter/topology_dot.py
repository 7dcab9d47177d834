# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter: the topology of a normalised spec as Graphviz DOT text.

Pure Python and deterministic: the same input always gives the same text (every
collection is sorted, nothing depends on dict order or on the clock), so the picture
rendered from it can be committed and diffed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ansible.errors import AnsibleFilterError

# Documentation: topology_dot.yml beside this file.

FONT = "Helvetica"
CLOUD_COLOURS = ("#e8f0fe", "#e6f4ea", "#fef7e0", "#fce8e6", "#f3e8fd", "#e4f7fb")
TENANT_COLOURS = ("#1a73e8", "#188038", "#e37400", "#d93025", "#9334e6", "#129eaf")


def _quote(text: Any) -> str:
    """A DOT double-quoted string (escaped; newlines become centred line breaks)."""
    value = str(text).replace("\\", "\\\\").replace('"', '\\"')
    return '"' + value.replace("\n", "\\n") + '"'


def _attrs(**attrs: Any) -> str:
    items = [f"{key}={_quote(value)}" for key, value in sorted(attrs.items()) if value is not None]
    return f" [{', '.join(items)}]" if items else ""


def _is_present(item: Mapping[str, Any]) -> bool:
    return item.get("state", "present") == "present"


def _carriers(plans: Mapping[str, Any]) -> dict[str, dict[str, list[str]]]:
    """bridge name -> host -> roles of the host for that network ("dhcp", "router")."""
    carriers: dict[str, dict[str, list[str]]] = {}
    for host in sorted(plans):
        plan = plans[host] or {}
        links = [link for link in plan.get("links", []) if isinstance(link, Mapping)]
        bridges = {link["name"] for link in links if link.get("kind") == "bridge"}
        # the veth legs enslaved to a bridge in the root namespace: dhcp / router legs
        legs = {
            link["name"]: link.get("master")
            for link in links
            if link.get("kind") == "veth" and not link.get("namespace")
        }
        for bridge in bridges:
            carriers.setdefault(bridge, {})[host] = []
        for leg, master in legs.items():
            if master in bridges:
                carriers[master][host].append(leg)
    return carriers


def topology_dot(
    spec: Mapping[str, Any],
    plans: Mapping[str, Any] | None = None,
    live: Mapping[str, str] | None = None,
) -> str:
    if not isinstance(spec, Mapping) or not isinstance(spec.get("tenants", []), list):
        raise AnsibleFilterError(
            "topology_dot: the input must be a normalised spec (a dict with tenants)"
        )
    if plans is not None and not isinstance(plans, Mapping):
        raise AnsibleFilterError("topology_dot: plans must be a dict of host name to plan")
    if live is not None and not isinstance(live, Mapping):
        raise AnsibleFilterError("topology_dot: live must be a dict of domain name to host")
    plans = plans or {}
    live = live or {}
    tenants = sorted(spec.get("tenants", []), key=lambda t: t["name"])

    # clouds: those of the plans' hosts and those the spec's networks name
    hosts_by_cloud: dict[str, list[str]] = {}
    for host in sorted(plans):
        cloud = (plans[host] or {}).get("cloud") or "(no cloud)"
        hosts_by_cloud.setdefault(cloud, []).append(host)
    for tenant in tenants:
        for net in tenant.get("networks", []):
            hosts_by_cloud.setdefault(net["cloud"], [])
    for host in sorted(set(live.values()) - set(plans)):
        hosts_by_cloud.setdefault("(unknown cloud)", []).append(host)
    carriers = _carriers(plans)

    lines = [
        "digraph topology {",
        "  graph"
        + _attrs(compound="true", fontname=FONT, rankdir="LR", nodesep="0.3", ranksep="1.2"),
        "  node" + _attrs(fontname=FONT, fontsize="11"),
        "  edge" + _attrs(fontname=FONT, fontsize="9"),
    ]
    for index, cloud in enumerate(sorted(hosts_by_cloud)):
        lines.append(f"  subgraph {_quote('cluster_cloud_' + cloud)} {{")
        lines.append(
            "    graph" + _attrs(label=f"cloud {cloud}", style="filled,rounded",
                                 fillcolor=CLOUD_COLOURS[index % len(CLOUD_COLOURS)], color="#5f6368")
        )  # fmt: skip
        hosts = sorted(hosts_by_cloud[cloud])
        if not hosts:
            # no host known (no plans): the cloud itself stands for its hosts
            lines.append(
                f"    {_quote('cloud:' + cloud)}"
                + _attrs(label=f"{cloud}\n(hosts not planned)", shape="box3d", style="dashed")
            )
        for host in hosts:
            lines.append(
                f"    {_quote('host:' + host)}"
                + _attrs(label=host, shape="box3d", style="filled", fillcolor="white")
            )
        lines.append("  }")

    edges: list[str] = []
    for index, tenant in enumerate(tenants):
        colour = TENANT_COLOURS[index % len(TENANT_COLOURS)]
        tname = tenant["name"]
        absent_tenant = not _is_present(tenant)
        lines.append(f"  subgraph {_quote('cluster_tenant_' + tname)} {{")
        lines.append(
            "    graph" + _attrs(label=f"tenant {tname}" + (" (absent)" if absent_tenant else ""),
                                 color=colour, fontcolor=colour, style="dashed" if absent_tenant else "rounded")
        )  # fmt: skip
        for net in sorted(tenant.get("networks", []), key=lambda n: n["name"]):
            net_id = f"net:{tname}/{net['name']}"
            present = not absent_tenant and _is_present(net)
            label = f"{net['name']}\n{net['subnet']}\nVNI {net['vni']}"
            if net.get("gateway"):
                label += f"\ngw {net['gateway']}"
            if not present:
                label += "\n(absent)"
            lines.append(
                f"    {_quote(net_id)}"
                + _attrs(label=label, shape="ellipse", color=colour,
                         style="dashed" if not present else "filled", fillcolor="white" if present else None)
            )  # fmt: skip
            if present:
                carried = carriers.get(net["bridge"], {})
                legs = {**dict.fromkeys(net.get("router_legs") or [], "router"),
                        **dict.fromkeys((net.get("dhcp") or {}).get("legs") or [], "dhcp")}  # fmt: skip
                for host in sorted(carried):
                    roles = sorted({legs[leg] for leg in carried[host] if leg in legs})
                    edges.append(
                        f"  {_quote(net_id)} -> {_quote('host:' + host)}"
                        + _attrs(dir="none", color=colour, label=" + ".join(roles) or None)
                    )
                if not carried and not plans:
                    edges.append(
                        f"  {_quote(net_id)} -> {_quote('cloud:' + net['cloud'])}"
                        + _attrs(dir="none", color=colour, style="dashed")
                    )
            for vm in sorted(net.get("vms", []), key=lambda v: v["name"]):
                vm_id = f"vm:{vm['domain_name']}"
                vm_present = present and _is_present(vm)
                vm_label = f"{vm['name']}\n{vm.get('ip') or 'dhcp'}\n{vm['vcpus']} vCPU, {vm['memory_mib']} MiB"
                if not vm_present:
                    vm_label += "\n(absent)"
                lines.append(
                    f"    {_quote(vm_id)}"
                    + _attrs(label=vm_label, shape="component", color=colour,
                             style="dashed" if not vm_present else None)
                )  # fmt: skip
                edges.append(
                    f"  {_quote(vm_id)} -> {_quote(net_id)}" + _attrs(dir="none", color=colour)
                )
                if vm["domain_name"] in live:
                    edges.append(
                        f"  {_quote(vm_id)} -> {_quote('host:' + str(live[vm['domain_name']]))}"
                        + _attrs(color=colour, style="bold", label="runs on")
                    )
        lines.append("  }")
    lines.extend(edges)
    lines.append("}")
    return "\n".join(lines) + "\n"


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"topology_dot": topology_dot}
