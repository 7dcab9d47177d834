# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A host's whole network plan in one module call: netns, links, addresses, routes, FDB, dnsmasq,
and the tenant routers' nftables tables (security groups, floating addresses).

No logic of its own about any resource: every step is the engine of the resource module
(``netlink.run`` for netns/link/address/route/fdb, ``dnsmasq.converge``), called with the
arguments the ``tenant_infra`` role gave the six modules, in the same order:

=========  ==========================================  ======================================
resource   state                                       when
=========  ==========================================  ======================================
netns      overridden, ``scope_namespaces``            the plan names tenants
link       overridden, ``scope`` + ``scope_namespaces``  the plan names tenants
address    replaced                                    the plan lists addresses
route      replaced                                    the plan lists routes
fdb        overridden, ``scope``                       the plan names tenants
dnsmasq    overridden, ``scope`` = ``dhcp_scopes``     the plan names tenants
firewall   each table as listed (present or absent)    the plan lists tables
=========  ==========================================  ======================================

The ``firewall`` step is the engine of ``nft_ruleset`` (``firewall.converge``): the plan
lists one table per router namespace it keeps (``state: absent`` when the router applies
nothing), so a security group or floating address that leaves a router is removed there;
a router namespace that goes takes its table with it.

What one call saves is the per-task cost of Ansible (a connection, a Python start and an
AnsiballZ payload per module), about 0.25-0.75 s each on the lab; the netlink work itself
is the same.

Check mode: each engine reads the host as it is, so a step after one that would create a
namespace sees it missing, exactly as the separate modules do (they warn and predict on an
empty namespace). Two refusals of the separate modules would make check mode of a new
network fail, so they are relaxed for what the same plan creates: the link step leaves out
existing-device items (``lo``) of namespaces the netns step would create, and dnsmasq
accepts an instance whose namespace, interface and server address the plan creates.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ansible_collections.multicloud.migration.plugins.module_utils import dnsmasq as dhcp
from ansible_collections.multicloud.migration.plugins.module_utils import firewall as fw
from ansible_collections.multicloud.migration.plugins.module_utils import netlink

__all__ = ["RESOURCES", "HostNetworkError", "PlannedNetworks", "converge_host", "steps"]

RESOURCES = ("netns", "link", "address", "route", "fdb", "dnsmasq", "firewall")
# resource -> key of the plan that is its config
PLAN_KEYS = {
    "netns": "netns",
    "link": "links",
    "address": "addresses",
    "route": "routes",
    "fdb": "fdb",
    "dnsmasq": "dnsmasq",
    "firewall": "firewall",
}
SCOPE_KEYS = ("scopes", "namespace_scopes", "dhcp_scopes")
# waits before re-running the link step after namespaces were removed (see _run_netlink_step)
LINK_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8)
# how often a step whose netlink dump the kernel interrupted is read again
DUMP_RETRIES = 3


class HostNetworkError(Exception):
    """A step failed; ``resource`` names it, ``done`` holds the results of the steps before."""

    def __init__(
        self,
        resource: str | None,
        message: str,
        done: Mapping[str, Any] | None = None,
        changes: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.resource = resource
        self.done = dict(done or {})
        self.changes = changes or []


def steps(plan: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(resource, arguments of its module) for each step the plan needs, in order.

    Pure. A plan without tenants decides nothing that is scoped (an empty scope would mean
    every object of ours of every tenant), so only its addresses and routes are applied.
    """
    tenants = list(plan.get("tenants") or [])
    if tenants:
        empty = [key for key in SCOPE_KEYS if not plan.get(key)]
        if empty:
            raise HostNetworkError(
                None,
                f"plan for tenants {', '.join(tenants)} has an empty {', '.join(empty)}: "
                "removal needs a scope (see the multicloud.migration.host_plans filter)",
            )
    config = {r: list(plan.get(PLAN_KEYS[r]) or []) for r in RESOURCES}
    scopes = list(plan.get("scopes") or [])
    ns_scopes = list(plan.get("namespace_scopes") or [])
    out: list[tuple[str, dict[str, Any]]] = []
    if tenants:
        out.append(
            ("netns", {"config": config["netns"], "state": "overridden",
                       "scope_namespaces": ns_scopes})
        )  # fmt: skip
        out.append(
            ("link", {"config": config["link"], "state": "overridden", "scope": scopes,
                      "scope_namespaces": ns_scopes})
        )  # fmt: skip
    if config["address"]:
        out.append(("address", {"config": config["address"], "state": "replaced"}))
    if config["route"]:
        out.append(("route", {"config": config["route"], "state": "replaced"}))
    if tenants:
        out.append(("fdb", {"config": config["fdb"], "state": "overridden", "scope": scopes}))
        out.append(
            ("dnsmasq", {"config": config["dnsmasq"], "state": "overridden",
                         "scope": list(plan.get("dhcp_scopes") or [])})
        )  # fmt: skip
    if config["firewall"]:
        out.append(("firewall", {"config": config["firewall"]}))
    return out


def _address_only(cidr: str) -> str:
    return str(cidr).split("/", 1)[0]


def planned_networks(plan: Mapping[str, Any]) -> set[tuple[str | None, str, str]]:
    """(namespace, interface, address) that the plan's netlink steps put in place."""
    namespaces = {n.get("name") for n in plan.get("netns") or [] if n.get("state") != "absent"}
    interfaces: set[tuple[str | None, str]] = set()
    for link in plan.get("links") or []:
        interfaces.add((link.get("namespace"), link.get("name")))
        peer = link.get("peer") or {}
        if peer.get("name"):
            interfaces.add((peer.get("namespace"), peer["name"]))
    out = set()
    for item in plan.get("addresses") or []:
        key = (item.get("namespace"), item.get("interface"))
        if key in interfaces and key[0] in namespaces:
            out.update((key[0], key[1], _address_only(a)) for a in item.get("addresses") or [])
    return out


class PlannedNetworks:
    """dnsmasq's process control, where check mode accepts a network the plan creates.

    In check mode the netlink steps before dnsmasq have changed nothing, so a new network's
    namespace, DHCP leg or server address is missing when dnsmasq looks for it. When the
    plan itself creates all three, the instance is checked as if they were there; anything
    else (a typo in the plan, a namespace of another plan) fails as it does without this.
    """

    def __init__(
        self,
        processes: dhcp.Processes,
        planned: Iterable[tuple[str | None, str, str]],
        warnings: list[str],
    ) -> None:
        self._processes = processes
        self._planned = set(planned)
        self._warnings = warnings

    def running_pid(self, directory: str) -> int | None:
        return self._processes.running_pid(directory)

    def check_network(self, instance: Mapping[str, Any]) -> None:
        try:
            self._processes.check_network(instance)
        except dhcp.DnsmasqError as exc:
            key = (instance["namespace"], instance["interface"], instance["server"])
            if key not in self._planned:
                raise
            self._warnings.append(
                f"{exc} (yet): the steps before dnsmasq create it (check mode predicts)"
            )

    def in_namespace(self, pid: int, namespace: str) -> bool:
        return self._processes.in_namespace(pid, namespace)

    def start(self, instance: Mapping[str, Any], directory: str) -> int:
        return self._processes.start(instance, directory)

    def stop(self, pid: int, directory: str) -> None:
        self._processes.stop(pid, directory)

    def reload(self, pid: int, directory: str) -> bool:
        return self._processes.reload(pid, directory)


def new_namespaces(resources: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """Namespaces the netns step creates (or, in check mode, would create)."""
    changes = (resources.get("netns") or {}).get("changes") or []
    return {c["name"] for c in changes if c.get("action") == "create"}


def _without_devices_in(params: Mapping[str, Any], namespaces: set[str]) -> dict[str, Any]:
    """Check mode: leave out existing-device items (``lo``) of namespaces not created yet.

    The link module refuses a V(device) item whose device is missing; in a namespace that
    only the netns step before would create, every such device is missing in check mode.
    A new namespace brings its own C(lo), which the real run then sets up.
    """
    if not namespaces:
        return dict(params)
    config = [
        item for item in params.get("config") or []
        if not (item.get("kind") == "device" and item.get("namespace") in namespaces)
    ]  # fmt: skip
    return {**params, "config": config}


def removed_namespaces(resources: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """Namespaces the netns step removed."""
    changes = (resources.get("netns") or {}).get("changes") or []
    return {c["name"] for c in changes if c.get("action") == "delete"}


def _run_netlink_step(
    run_netlink: Callable[..., dict[str, Any]],
    resource: str,
    args: Mapping[str, Any],
    *,
    check_mode: bool,
    diff_mode: bool,
    attempts: int,
) -> dict[str, Any]:
    """One netlink step; re-run on fresh state when it fails and ``attempts`` allows.

    The kernel destroys a removed namespace asynchronously (once no process holds it) and
    its veth legs with it, peers in the root namespace included. The link step right
    after the netns step can read such a peer and find it gone when deleting it (ENODEV).
    Six separate module calls hid this behind a second of overhead between them; here the
    link step is run again, reading what is left, after a short wait (at most ~1.5 s).
    """
    done: list[dict[str, Any]] = []
    interrupted = 0
    attempt = 0
    while True:
        try:
            out = dict(run_netlink(resource, args, check_mode, diff_mode))
        except netlink.dump_interrupted():
            # The kernel interrupts a dump when the table changes meanwhile (other
            # processes at work on the host); the step is read again from scratch.
            interrupted += 1
            if interrupted > DUMP_RETRIES:
                raise
            continue
        except netlink.NetlinkStateError as exc:
            if attempt + 1 >= attempts:
                exc.changes = done + list(exc.changes)
                raise
            done.extend(exc.changes)
            time.sleep(LINK_RETRY_DELAYS[attempt])
            attempt += 1
            continue
        if done:
            out["changes"] = done + list(out.get("changes") or [])
            out["changed"] = True
        return out


def _dnsmasq_step(
    params: Mapping[str, Any],
    processes: dhcp.Processes,
    *,
    check_mode: bool,
    diff_mode: bool,
    converge_dhcp: Callable[..., dhcp.Result],
) -> tuple[dict[str, Any], list[dict[str, str]], list[str]]:
    result = converge_dhcp(
        params["state"],
        params["config"],
        processes,
        scope=params["scope"],
        check_mode=check_mode,
    )
    out = {
        "changed": result.changed,
        "changes": [c.as_dict() for c in result.changes],
        "before": result.before,
        "after": result.after,
        "leases": result.leases,
    }
    return out, (list(result.diff) if diff_mode else []), list(result.warnings)


def _lean(result: dict[str, Any], diff_mode: bool) -> dict[str, Any]:
    """A step's result without ``before``/``after`` when it changed nothing (unless diffing).

    A no-op run then returns a few hundred bytes instead of the state of every object
    (about 0.6 MB for 100 networks), which Ansible would carry back and parse for nothing.
    """
    if result.get("changed") or diff_mode:
        return result
    return {k: v for k, v in result.items() if k not in ("before", "after")}


def converge_host(
    plan: Mapping[str, Any],
    processes: dhcp.Processes,
    *,
    check_mode: bool = False,
    diff_mode: bool = False,
    run_netlink: Callable[..., dict[str, Any]] = netlink.run,
    converge_dhcp: Callable[..., dhcp.Result] = dhcp.converge,
    firewall: fw.Backend | None = None,
) -> dict[str, Any]:
    """Converge (or, in check mode, predict) every step of the plan; see the module docs.

    Returns ``changed``; ``resources`` (per resource that ran: ``changed``, ``changes``,
    and ``before``/``after`` when it changed or in diff mode; dnsmasq also ``leases``);
    ``leases``; ``warnings``; in diff mode ``diff`` (a list: one before/after per netlink
    resource that changed, one per dnsmasq file). Raises HostNetworkError naming the step
    and the object.
    """
    resources: dict[str, dict[str, Any]] = {}
    warnings: list[str] = []
    diffs: list[dict[str, str]] = []
    for resource, params in steps(plan):
        try:
            if resource == "firewall":
                if firewall is None:
                    raise HostNetworkError(resource, "no nftables backend given", resources)
                fw_result = fw.converge(params["config"], firewall, check_mode=check_mode)
                resources[resource] = _lean(
                    {"changed": fw_result.changed, "changes": fw_result.changes,
                     "before": fw_result.before, "after": fw_result.after},
                    diff_mode,
                )  # fmt: skip
                warnings.extend(fw_result.warnings)
                diffs.extend(fw_result.diff)
                continue
            if resource == "dnsmasq":
                procs: dhcp.Processes = processes
                if check_mode:
                    procs = PlannedNetworks(processes, planned_networks(plan), warnings)
                out, file_diffs, extra = _dnsmasq_step(
                    params, procs, check_mode=check_mode, diff_mode=diff_mode,
                    converge_dhcp=converge_dhcp,
                )  # fmt: skip
                resources[resource] = _lean(out, diff_mode)
                warnings.extend(extra)
                if out["changed"]:
                    diffs.extend(file_diffs)
                continue
            args = dict(params)
            attempts = 1
            if resource == "link" and check_mode:
                args = _without_devices_in(params, new_namespaces(resources))
            elif resource == "link" and removed_namespaces(resources):
                attempts = len(LINK_RETRY_DELAYS) + 1
            out = _run_netlink_step(
                run_netlink, resource, args,
                check_mode=check_mode, diff_mode=diff_mode, attempts=attempts,
            )  # fmt: skip
        except netlink.NetlinkStateError as exc:
            raise HostNetworkError(resource, str(exc), resources, exc.changes) from exc
        except (dhcp.DnsmasqError, fw.FirewallError) as exc:
            raise HostNetworkError(resource, str(exc), resources) from exc
        warnings.extend(out.pop("warnings", []))
        diff = out.pop("diff", None)
        out.pop("gathered", None)
        if diff and out.get("changed"):
            diffs.append(diff)
        resources[resource] = _lean(out, diff_mode)
    result: dict[str, Any] = {
        "changed": any(r["changed"] for r in resources.values()),
        "resources": resources,
        "leases": resources.get("dnsmasq", {}).get("leases", {}),
        "warnings": list(dict.fromkeys(warnings)),
    }
    if diff_mode:
        result["diff"] = diffs
    return result
