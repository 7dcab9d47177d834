# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Desired state over netlink: namespaces, links, IPv4 addresses and routes, VXLAN FDB.

Every resource follows the same three steps, like openvswitch.openvswitch's modules but
with netlink objects instead of command strings:

1. ``want``: the module's ``config``, validated and defaulted by ``normalize_*``;
2. ``have``: what exists, read by ``read_*`` over one pyroute2 session per namespace
   (a ``Session``), as plain dicts;
3. ``diff_*(want, have, state, ...)``: the list of changes between them. These functions
   are pure (no netlink, no root), so the comparison logic is unit-tested on hand-made
   ``have`` data. ``apply_*`` carries the changes out, never in check mode.

A change is plain data::

    {"action": "create" | "update" | "recreate" | "delete", "object": "link",
     "name": "vxlan-1001", "namespace": None, "details": {...}}

``namespace`` is None for the root namespace (shown as ``root``); ``describe`` gives the
one-line form used in diffs. An attribute the kernel cannot change in place (a VXLAN
device's VNI or port, a link's kind, a veth's peer) is a ``recreate``.

Ownership: links we create carry ``ifalias`` = the config's ``owner`` (``mcm:...``);
namespaces are ours by name (``qdhcp-``/``qrouter-``); addresses, routes and FDB entries
are ours through their interface or namespace. ``overridden`` and ``deleted`` only ever
remove objects of ours, optionally narrowed by ``scope`` (an owner prefix) and
``scope_namespaces`` (namespace name prefixes).

Works with pyroute2 0.7.2 (Debian 12) and later 0.7.x: a namespace is entered with
``setns`` (and left again) only to open its netlink socket or its sysctl file; a socket
stays bound to the namespace it was opened in.
"""

from __future__ import annotations

import copy
import errno
import functools
import importlib.util
import ipaddress
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NamedTuple, Optional, Union

from ansible_collections.multicloud.migration.plugins.module_utils import rtnl

# pyroute2 makes every change; it is imported on first use (pyroute2()): a run that only
# reads, through rtnl, never loads it (0.1 s of a no-op host_network run on a lab host).
# The pure part (want/have/diff) works without it.
HAS_PYROUTE2 = importlib.util.find_spec("pyroute2") is not None
PYROUTE2_IMPORT_ERROR: str | None = None if HAS_PYROUTE2 else "No module named 'pyroute2'"
_EXCEPTIONS = "pyroute2.netlink.exceptions"


class Pyroute2(NamedTuple):
    IPRoute: Any
    netns: Any
    NetlinkError: type[Exception]


@functools.lru_cache(maxsize=1)
def pyroute2() -> Pyroute2:
    """pyroute2's IPRoute, netns and NetlinkError, imported once."""
    try:
        from pyroute2 import IPRoute, netns
        from pyroute2.netlink.exceptions import NetlinkError
    except ImportError as exc:
        raise NetlinkStateError(f"pyroute2 is required: {exc}") from exc
    return Pyroute2(IPRoute, netns, NetlinkError)


def netlink_errors() -> tuple[type[BaseException], ...]:
    """For except clauses: OSError (rtnl's errors too), and pyroute2's NetlinkError once
    pyroute2 is loaded (nothing can have raised it before)."""
    loaded = sys.modules.get(_EXCEPTIONS)
    return (loaded.NetlinkError, OSError) if loaded is not None else (OSError,)


def dump_interrupted() -> tuple[type[BaseException], ...]:
    """For except clauses: a dump the kernel interrupted (rtnl's, or pyroute2's)."""
    loaded = sys.modules.get(_EXCEPTIONS)
    if loaded is None:
        return (rtnl.DumpInterrupted,)
    return (rtnl.DumpInterrupted, loaded.NetlinkDumpInterrupted)


__all__ = [
    "HAS_PYROUTE2",
    "PYROUTE2_IMPORT_ERROR",
    "STATES",
    "NetlinkStateError",
    "Session",
    "describe",
    "diff_addresses",
    "diff_fdb",
    "diff_links",
    "diff_netns",
    "diff_routes",
    "module_main",
    "run",
]

STATES = ("merged", "replaced", "overridden", "deleted", "gathered")
RESET_STATES = ("replaced", "overridden")
OWNER_PREFIX = "mcm:"
OUR_NAMESPACE_PREFIXES = ("qdhcp-", "qrouter-")
NETNS_DIR = "/run/netns"
ROOT_LABEL = "root"
ZERO_MAC = "00:00:00:00:00:00"
VXLAN_DEFAULT_PORT = 4789
LINK_KINDS = ("bridge", "vxlan", "veth", "device")
# Creation order: a bridge must exist before a port is enslaved to it.
_KIND_RANK = {"bridge": 0, "vxlan": 1, "veth": 2}
IFNAME_MAX = 15
DEFAULT_ROUTE = "0.0.0.0/0"

IFF_UP = 0x1
AF_INET = 2
AF_BRIDGE = 7
NTF_SELF = 0x02
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
MAIN_TABLE = 254
RTN_UNICAST = 1
RTPROT_KERNEL = 2
RTPROT_STATIC = 4

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_NS_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")

Key = tuple  # (namespace, name, ...) with namespace None for the root namespace
Change = dict[str, Any]


class NetlinkStateError(Exception):
    """The desired state cannot be computed or applied; ``changes`` lists what was done."""

    def __init__(self, message: str, changes: list[Change] | None = None) -> None:
        super().__init__(message)
        self.changes = changes or []


# ---------------------------------------------------------------------------------------
# Ownership, labels, changes


def ns_label(namespace: str | None) -> str:
    """How a namespace is named in messages: its name, or ``root``."""
    return ROOT_LABEL if namespace is None else namespace


# typing.Union, not `str | Iterable[str] | None` or typing.TypeAlias: module_utils run on
# the managed hosts' Python, 3.9 and later (make lint runs vermin on them).
Scope = Optional[Union[str, Iterable[str]]]  # noqa: UP007, UP045


def scope_list(scope: Scope) -> list[str]:
    """A scope given as one owner prefix or several (several tenants in one call)."""
    if scope is None:
        return []
    return [scope] if isinstance(scope, str) else [str(s) for s in scope]


def is_ours(owner: str | None, scope: Scope = None) -> bool:
    """An owner tag (ifalias) of ours, inside ``scope`` (any of its prefixes) when given."""
    if not owner or not owner.startswith(OWNER_PREFIX):
        return False
    return scope is None or any(owner.startswith(prefix) for prefix in scope_list(scope))


def namespace_matches(name: str, entry: str) -> bool:
    """A ``scope_namespaces`` entry names one namespace exactly, or, when it ends with
    ``-`` or ``.``, every namespace it prefixes (``qdhcp-acme.`` covers acme's DHCP
    namespaces and cannot match tenant ``acme2``'s)."""
    return name == entry or (entry.endswith(("-", ".")) and name.startswith(entry))


def is_our_namespace(name: str | None, scope_namespaces: Iterable[str] | None = None) -> bool:
    """A namespace of ours (qdhcp-/qrouter-), inside ``scope_namespaces`` when given."""
    if name is None or not name.startswith(OUR_NAMESPACE_PREFIXES):
        return False
    entries = list(scope_namespaces or [])
    return not entries or any(namespace_matches(name, entry) for entry in entries)


def _namespace_in_scope(
    name: str | None, scope: Scope, scope_namespaces: Iterable[str] | None
) -> bool:
    """Whether untagged objects inside namespace ``name`` count as ours in this scope.

    With an owner ``scope`` but no ``scope_namespaces``, only tagged objects are in scope.
    """
    if scope_namespaces:
        return is_our_namespace(name, scope_namespaces)
    if scope is not None:
        return False
    return is_our_namespace(name)


def make_change(
    action: str,
    obj: str,
    name: str,
    namespace: str | None,
    details: Mapping[str, Any] | None = None,
) -> Change:
    return {
        "action": action,
        "object": obj,
        "name": name,
        "namespace": namespace,
        "details": dict(details or {}),
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def describe(change: Mapping[str, Any]) -> str:
    """One line for a change: ``update link brq-1001 in root: mtu 1500 -> 1450``."""
    details = dict(change.get("details") or {})
    obj = change["object"]
    where = f" in {ns_label(change.get('namespace'))}" if obj != "netns" else ""
    if obj == "address":
        where = f" on {details.pop('interface', '?')}{where}"
    elif obj == "fdb":
        details.pop("mac", None)
        details.pop("dst", None)
        where = f" on {details.pop('device', '?')}{where}"
    parts = []
    for key, value in details.items():
        if isinstance(value, Mapping) and set(value) == {"from", "to"}:
            parts.append(f"{key} {_fmt(value['from'])} -> {_fmt(value['to'])}")
        elif isinstance(value, (list, tuple)):
            parts.append(f"{key}=[{', '.join(_fmt(v) for v in value)}]")
        else:
            parts.append(f"{key}={_fmt(value)}")
    text = f"{change['action']} {obj} {change['name']}{where}"
    return f"{text}: {', '.join(parts)}" if parts else text


def _check_state(state: str) -> None:
    if state not in STATES:
        raise NetlinkStateError(f"state must be one of {', '.join(STATES)}, got {state!r}")


def _check_scope(scope: Scope, scope_namespaces: Iterable[str] | None) -> None:
    for prefix in scope_list(scope):
        if not prefix.startswith(OWNER_PREFIX):
            raise NetlinkStateError(f"scope {prefix!r} must start with {OWNER_PREFIX!r}")
    for prefix in scope_namespaces or []:
        if not str(prefix).startswith(OUR_NAMESPACE_PREFIXES):
            raise NetlinkStateError(
                f"scope_namespaces entry {prefix!r} must start with one of "
                f"{', '.join(OUR_NAMESPACE_PREFIXES)}"
            )


def _check_ifname(name: Any, path: str) -> str:
    if not isinstance(name, str) or not name:
        raise NetlinkStateError(f"{path}: an interface name is required")
    if len(name.encode()) > IFNAME_MAX or "/" in name or any(c.isspace() for c in name):
        raise NetlinkStateError(
            f"{path}: {name!r} is not a valid interface name (at most {IFNAME_MAX} bytes, "
            "no '/' or blanks)"
        )
    return name


def _check_ns_name(name: Any, path: str) -> str | None:
    if name is None or name == "":
        return None
    if not isinstance(name, str) or not _NS_NAME_RE.match(name) or name in (".", ".."):
        raise NetlinkStateError(f"{path}: {name!r} is not a valid namespace name")
    return name


def _check_owner(owner: Any, path: str) -> str | None:
    if owner is None:
        return None
    if not isinstance(owner, str) or not owner.startswith(OWNER_PREFIX):
        raise NetlinkStateError(f"{path}: owner {owner!r} must start with {OWNER_PREFIX!r}")
    return owner


def _mac(value: Any, path: str) -> str:
    text = str(value).strip().lower().replace("-", ":")
    if not _MAC_RE.match(text):
        raise NetlinkStateError(f"{path}: {value!r} is not a MAC address")
    return text


def _ipv4(value: Any, path: str) -> str:
    try:
        return str(ipaddress.IPv4Address(str(value)))
    except ValueError:
        raise NetlinkStateError(f"{path}: {value!r} is not an IPv4 address") from None


# ---------------------------------------------------------------------------------------
# Namespaces


def normalize_netns(config: Iterable[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    want: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, item in enumerate(config or []):
        path = f"config[{i}]"
        name = _check_ns_name(item.get("name"), f"{path}.name")
        if name is None:
            raise NetlinkStateError(f"{path}.name: a namespace name is required")
        if name in seen:
            raise NetlinkStateError(f"{path}.name: namespace {name} is listed twice")
        seen.add(name)
        state = item.get("state") or "present"
        if state not in ("present", "absent"):
            raise NetlinkStateError(f"{path}.state: must be present or absent, got {state!r}")
        forwarding = item.get("forwarding")
        want.append(
            {
                "name": name,
                "forwarding": None if forwarding is None else bool(forwarding),
                "state": state,
            }
        )
    return want


def diff_netns(
    want: list[dict[str, Any]],
    have: Mapping[str, Mapping[str, Any]],
    state: str,
    *,
    scope_namespaces: Iterable[str] | None = None,
) -> list[Change]:
    """Changes that turn namespaces ``have`` ({name: {name, forwarding}}) into ``want``."""
    _check_state(state)
    changes: list[Change] = []
    if state == "gathered":
        return changes

    def delete(name: str) -> None:
        if not is_our_namespace(name):
            raise NetlinkStateError(
                f"namespace {name}: not ours (names of ours start with "
                f"{' or '.join(OUR_NAMESPACE_PREFIXES)}), refusing to delete it"
            )
        changes.append(make_change("delete", "netns", name, None))

    if state == "deleted":
        if want:
            for item in want:
                if item["name"] in have:
                    delete(item["name"])
        elif scope_namespaces:
            for name in sorted(have):
                if is_our_namespace(name, scope_namespaces):
                    delete(name)
        return changes

    listed = set()
    for item in want:
        name = item["name"]
        listed.add(name)
        if item["state"] == "absent":
            if name in have:
                delete(name)
            continue
        forwarding = item["forwarding"]
        if forwarding is None and state in RESET_STATES:
            forwarding = False
        if name not in have:
            details = {} if forwarding is None else {"forwarding": forwarding}
            changes.append(make_change("create", "netns", name, None, details))
        elif forwarding is not None and have[name].get("forwarding") != forwarding:
            changes.append(
                make_change(
                    "update",
                    "netns",
                    name,
                    None,
                    {"forwarding": {"from": have[name].get("forwarding"), "to": forwarding}},
                )
            )
    if state == "overridden":
        for name in sorted(have):
            if name not in listed and is_our_namespace(name, scope_namespaces):
                delete(name)
    return changes


def simulate_netns(
    have: Mapping[str, Mapping[str, Any]], changes: list[Change]
) -> dict[str, dict[str, Any]]:
    after = {name: dict(record) for name, record in have.items()}
    for change in changes:
        name = change["name"]
        if change["action"] == "delete":
            after.pop(name, None)
        elif change["action"] == "create":
            after[name] = {"name": name, "forwarding": change["details"].get("forwarding", False)}
        else:
            after[name]["forwarding"] = change["details"]["forwarding"]["to"]
    return after


# ---------------------------------------------------------------------------------------
# Links


def _link_key(record: Mapping[str, Any]) -> Key:
    return (record["namespace"], record["name"])


def normalize_links(config: Iterable[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """Validated link records; a veth's peer becomes a record of its own (``peer_side``)."""
    want: list[dict[str, Any]] = []
    seen: set[Key] = set()

    def add(record: dict[str, Any], path: str) -> None:
        key = _link_key(record)
        if key in seen:
            raise NetlinkStateError(
                f"{path}: link {record['name']} in namespace {ns_label(record['namespace'])} "
                "is listed twice"
            )
        seen.add(key)
        want.append(record)

    for i, item in enumerate(config or []):
        path = f"config[{i}]"
        name = _check_ifname(item.get("name"), f"{path}.name")
        kind = item.get("kind")
        if kind not in LINK_KINDS:
            raise NetlinkStateError(f"{path}.kind: must be one of {', '.join(LINK_KINDS)}")
        namespace = _check_ns_name(item.get("namespace"), f"{path}.namespace")
        owner = _check_owner(item.get("owner"), f"{path}.owner")
        mtu = item.get("mtu")
        state = item.get("state")
        if state not in (None, "up", "down"):
            raise NetlinkStateError(f"{path}.state: must be up or down, got {state!r}")
        master = item.get("master")
        if master is not None:
            master = _check_ifname(master, f"{path}.master")
            if master == name:
                raise NetlinkStateError(f"{path}.master: link {name} cannot be its own master")
        if kind == "device":
            if owner is not None:
                raise NetlinkStateError(
                    f"{path}.owner: link {name} is an existing device, it gets no owner tag"
                )
        elif owner is None:
            raise NetlinkStateError(f"{path}.owner: link {name} ({kind}) needs an owner tag")
        if item.get("vxlan") and kind != "vxlan":
            raise NetlinkStateError(f"{path}.vxlan: only for kind vxlan")
        if item.get("peer") and kind != "veth":
            raise NetlinkStateError(f"{path}.peer: only for kind veth")
        vxlan = None
        if kind == "vxlan":
            spec = item.get("vxlan") or {}
            vni = spec.get("id")
            if not isinstance(vni, int) or isinstance(vni, bool) or not 1 <= vni <= 16777215:
                raise NetlinkStateError(f"{path}.vxlan.id: a VNI in 1..16777215 is required")
            port = spec.get("port")
            port = VXLAN_DEFAULT_PORT if port is None else int(port)
            if not 1 <= port <= 65535:
                raise NetlinkStateError(f"{path}.vxlan.port: {port} is not a UDP port")
            ttl = spec.get("ttl")
            if ttl is not None and not 0 <= int(ttl) <= 255:
                raise NetlinkStateError(f"{path}.vxlan.ttl: must be in 0..255")
            local = spec.get("local")
            vxlan = {
                "id": vni,
                "port": port,
                "learning": True if spec.get("learning") is None else bool(spec["learning"]),
                "local": None if local in (None, "") else _ipv4(local, f"{path}.vxlan.local"),
                "ttl": None if ttl is None else int(ttl),
            }
        mac = item.get("mac")
        if mac is not None and kind in ("device", "bridge"):
            raise NetlinkStateError(f"{path}.mac: only for kinds veth and vxlan")
        record = {
            "name": name,
            "namespace": namespace,
            "kind": kind,
            "mtu": None if mtu is None else int(mtu),
            "mac": None if mac is None else _mac(mac, f"{path}.mac"),
            "master": master,
            "state": state,
            "owner": owner,
            "vxlan": vxlan,
            "peer": None,
            "peer_side": False,
        }
        if kind == "veth":
            peer = item.get("peer") or {}
            peer_name = _check_ifname(peer.get("name"), f"{path}.peer.name")
            peer_ns = _check_ns_name(peer.get("namespace"), f"{path}.peer.namespace")
            if (peer_ns, peer_name) == (namespace, name):
                raise NetlinkStateError(f"{path}.peer: a veth cannot be its own peer")
            peer_state = peer.get("state")
            if peer_state not in (None, "up", "down"):
                raise NetlinkStateError(f"{path}.peer.state: must be up or down")
            peer_mtu = peer.get("mtu")
            peer_mac = peer.get("mac")
            record["peer"] = {"name": peer_name, "namespace": peer_ns}
            add(record, path)
            add(
                {
                    "name": peer_name,
                    "namespace": peer_ns,
                    "kind": "veth",
                    "mtu": record["mtu"] if peer_mtu is None else int(peer_mtu),
                    "mac": None if peer_mac is None else _mac(peer_mac, f"{path}.peer.mac"),
                    "master": None,
                    "state": peer_state,
                    "owner": _check_owner(peer.get("owner"), f"{path}.peer.owner") or owner,
                    "vxlan": None,
                    "peer": {"name": name, "namespace": namespace},
                    "peer_side": True,
                },
                f"{path}.peer",
            )
        else:
            add(record, path)
    return want


def _compare_link(
    want: Mapping[str, Any], have: Mapping[str, Any], reset: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(reasons to recreate, in-place updates) between one wanted and one existing link."""
    recreate: dict[str, Any] = {}
    update: dict[str, Any] = {}
    kind = want["kind"]
    if kind != "device" and have.get("kind") != kind:
        recreate["kind"] = {"from": have.get("kind") or "device", "to": kind}
        return recreate, update
    if kind == "vxlan":
        wx, hx = want["vxlan"], have.get("vxlan") or {}
        for attr in ("id", "port"):
            if hx.get(attr) != wx[attr]:
                recreate[f"vxlan.{attr}"] = {"from": hx.get(attr), "to": wx[attr]}
        if wx["local"] is not None and hx.get("local") != wx["local"]:
            update["vxlan.local"] = {"from": hx.get("local"), "to": wx["local"]}
        elif wx["local"] is None and reset and hx.get("local"):
            # The kernel keeps a local address once set: unsetting it means a new device.
            recreate["vxlan.local"] = {"from": hx.get("local"), "to": None}
        if bool(hx.get("learning")) != wx["learning"]:
            update["vxlan.learning"] = {"from": hx.get("learning"), "to": wx["learning"]}
        ttl = wx["ttl"] if wx["ttl"] is not None else (0 if reset else None)
        if ttl is not None and (hx.get("ttl") or 0) != ttl:
            update["vxlan.ttl"] = {"from": hx.get("ttl"), "to": ttl}
    if kind == "veth":
        hp = have.get("peer") or {}
        wp = want["peer"]
        if (hp.get("namespace"), hp.get("name")) != (wp["namespace"], wp["name"]) or hp.get(
            "unknown"
        ):
            recreate["peer"] = {
                "from": _peer_text(hp),
                "to": _peer_text(wp),
            }
    if recreate:
        return recreate, update
    if want["mtu"] is not None and have.get("mtu") != want["mtu"]:
        update["mtu"] = {"from": have.get("mtu"), "to": want["mtu"]}
    if want.get("mac") is not None and have.get("mac") != want["mac"]:
        update["mac"] = {"from": have.get("mac"), "to": want["mac"]}
    if want["master"] is not None or (reset and kind != "device"):
        if have.get("master") != want["master"]:
            update["master"] = {"from": have.get("master"), "to": want["master"]}
    state = want["state"]
    if state is None and reset and kind != "device":
        state = "up"
    if state is not None and have.get("state") != state:
        update["state"] = {"from": have.get("state"), "to": state}
    if want["owner"] is not None and have.get("owner") != want["owner"]:
        update["owner"] = {"from": have.get("owner"), "to": want["owner"]}
    return recreate, update


def _peer_text(peer: Mapping[str, Any] | None) -> str:
    if not peer or peer.get("unknown") or not peer.get("name"):
        return "unknown"
    return f"{peer['name']}@{ns_label(peer.get('namespace'))}"


def _create_details(want: Mapping[str, Any]) -> dict[str, Any]:
    details: dict[str, Any] = {"kind": want["kind"]}
    for attr in ("mtu", "mac", "master", "owner"):
        if want[attr] is not None:
            details[attr] = want[attr]
    details["state"] = want["state"] or "up"
    if want["vxlan"]:
        for attr, value in want["vxlan"].items():
            if value is not None:
                details[f"vxlan.{attr}"] = value
    if want["peer"]:
        details["peer"] = _peer_text(want["peer"])
    return details


def check_link_references(
    want: list[dict[str, Any]], have: Mapping[Key, Mapping[str, Any]], gone: Iterable[Key] = ()
) -> list[str]:
    """Problems with masters that neither exist nor are in ``want`` (same namespace)."""
    problems = []
    wanted = {_link_key(w) for w in want}
    gone = set(gone)
    for w in want:
        if w["master"] is None:
            continue
        key = (w["namespace"], w["master"])
        if key in wanted or (key in have and key not in gone):
            continue
        problems.append(
            f"link {w['name']}: master {w['master']} does not exist in namespace "
            f"{ns_label(w['namespace'])}"
        )
    return problems


def diff_links(
    want: list[dict[str, Any]],
    have: Mapping[Key, Mapping[str, Any]],
    state: str,
    *,
    scope: Scope = None,
) -> list[Change]:
    """Changes that turn links ``have`` ({(ns, name): record}) into ``want``.

    Deletions come first, then creations/recreations (bridges first), then updates;
    deleting or recreating a veth takes its peer along.
    """
    _check_state(state)
    changes: list[Change] = []
    if state == "gathered":
        return changes
    gone: set[Key] = set()

    def peer_key(record: Mapping[str, Any]) -> Key | None:
        peer = record.get("peer")
        if record.get("kind") != "veth" or not peer or peer.get("unknown"):
            return None
        return (peer.get("namespace"), peer.get("name"))

    def delete(key: Key) -> None:
        record = have[key]
        if not is_ours(record.get("owner")):
            raise NetlinkStateError(
                f"link {key[1]} in namespace {ns_label(key[0])}: not ours "
                f"(ifalias {record.get('owner')!r}), refusing to delete it"
            )
        details = {"kind": record.get("kind") or "device"}
        pkey = peer_key(record)
        if pkey:
            details["peer"] = _peer_text(record["peer"])
            gone.add(pkey)
        gone.add(key)
        changes.append(make_change("delete", "link", key[1], key[0], details))

    if state == "deleted":
        if want:
            for w in want:
                key = _link_key(w)
                if w["kind"] == "device" or w["peer_side"] or key not in have or key in gone:
                    continue
                delete(key)
        elif scope is not None:
            for key in sorted(have, key=_sort_key):
                if key not in gone and is_ours(have[key].get("owner"), scope):
                    delete(key)
        return changes

    wanted = {_link_key(w) for w in want}
    if state == "overridden":
        for key in sorted(have, key=_sort_key):
            if key in wanted or key in gone or not is_ours(have[key].get("owner"), scope):
                continue
            delete(key)

    reset = state in RESET_STATES
    builds: list[tuple[int, Change]] = []
    updates: list[Change] = []
    built: set[Key] = set()
    for w in sorted(want, key=lambda r: r["peer_side"]):  # a pair's main end first
        key = _link_key(w)
        if w["peer_side"]:
            main = (w["peer"]["namespace"], w["peer"]["name"])
            if main in built:
                continue
        current = None if key in gone else have.get(key)
        if current is None:
            if w["kind"] == "device":
                raise NetlinkStateError(
                    f"link {w['name']}: device does not exist in namespace "
                    f"{ns_label(w['namespace'])}"
                )
            if w["peer_side"]:
                continue  # the main end exists with another peer: it is recreated
            if w["kind"] == "veth":
                pkey = (w["peer"]["namespace"], w["peer"]["name"])
                if pkey in have and pkey not in gone:
                    raise NetlinkStateError(
                        f"link {w['name']}: its peer {w['peer']['name']} already exists in "
                        f"namespace {ns_label(pkey[0])}"
                    )
                built.add(pkey)
            built.add(key)
            builds.append(
                (
                    _KIND_RANK[w["kind"]],
                    make_change("create", "link", w["name"], w["namespace"], _create_details(w)),
                )
            )
            continue
        recreate, update = _compare_link(w, current, reset)
        if recreate and w["peer_side"]:
            continue  # only a kind mismatch gets here: the main end's recreate covers it
        if recreate:
            pkey = peer_key(current)
            if pkey:
                gone.add(pkey)
            gone.add(key)
            built.add(key)
            if w["kind"] == "veth":
                built.add((w["peer"]["namespace"], w["peer"]["name"]))
            details = {**recreate, "reason": "cannot be changed in place"}
            builds.append(
                (
                    _KIND_RANK[w["kind"]],
                    make_change("recreate", "link", w["name"], w["namespace"], details),
                )
            )
        elif update:
            updates.append(make_change("update", "link", w["name"], w["namespace"], update))
    builds.sort(key=lambda item: item[0])
    changes.extend(change for _rank, change in builds)
    changes.extend(updates)
    return changes


def _sort_key(key: Key) -> tuple:
    return tuple("" if part is None else str(part) for part in key)


def link_from_want(want: Mapping[str, Any]) -> dict[str, Any]:
    """The record a wanted link will have once created (for check mode's ``after``)."""
    vxlan = None
    if want["vxlan"]:
        vxlan = dict(want["vxlan"])
        vxlan["ttl"] = vxlan["ttl"] or 0
    return {
        "name": want["name"],
        "namespace": want["namespace"],
        "kind": want["kind"],
        "mtu": want["mtu"],
        "mac": want.get("mac"),
        "master": want["master"],
        "state": want["state"] or "up",
        "owner": want["owner"],
        "vxlan": vxlan,
        "peer": dict(want["peer"]) if want["peer"] else None,
    }


def simulate_links(
    have: Mapping[Key, Mapping[str, Any]], changes: list[Change], want: list[dict[str, Any]]
) -> dict[Key, dict[str, Any]]:
    after = dict(have)  # records are copied before an update changes them
    by_key = {_link_key(w): w for w in want}
    for change in changes:
        key = (change["namespace"], change["name"])
        if change["action"] in ("delete", "recreate") and key in after:
            record = after.pop(key)
            peer = record.get("peer") or {}
            if record.get("kind") == "veth" and peer.get("name"):
                after.pop((peer.get("namespace"), peer["name"]), None)
        if change["action"] in ("create", "recreate"):
            w = by_key[key]
            after[key] = link_from_want(w)
            if w["peer"]:
                pkey = (w["peer"]["namespace"], w["peer"]["name"])
                after[pkey] = link_from_want(by_key[pkey])
        elif change["action"] == "update":
            after[key] = copy.deepcopy(dict(after[key]))
            for attr, value in change["details"].items():
                if attr.startswith("vxlan."):
                    after[key]["vxlan"][attr[6:]] = value["to"]
                else:
                    after[key][attr] = value["to"]
    return after


# ---------------------------------------------------------------------------------------
# Addresses


def normalize_addresses(config: Iterable[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    want = []
    seen: set[Key] = set()
    for i, item in enumerate(config or []):
        path = f"config[{i}]"
        namespace = _check_ns_name(item.get("namespace"), f"{path}.namespace")
        interface = _check_ifname(item.get("interface"), f"{path}.interface")
        if (namespace, interface) in seen:
            raise NetlinkStateError(
                f"{path}: interface {interface} in namespace {ns_label(namespace)} is listed twice"
            )
        seen.add((namespace, interface))
        addresses = item.get("addresses")
        normalized = None
        if addresses is not None:
            normalized = []
            for j, cidr in enumerate(addresses):
                try:
                    iface = ipaddress.IPv4Interface(str(cidr))
                except ValueError:
                    raise NetlinkStateError(
                        f"{path}.addresses[{j}]: {cidr!r} is not an IPv4 address with prefix"
                    ) from None
                if "/" not in str(cidr):
                    raise NetlinkStateError(
                        f"{path}.addresses[{j}]: {cidr!r} needs a prefix length (/24)"
                    )
                if str(iface) not in normalized:
                    normalized.append(str(iface))
        want.append({"namespace": namespace, "interface": interface, "addresses": normalized})
    return want


def _iface_is_ours(
    link: Mapping[str, Any] | None,
    scope: Scope,
    scope_namespaces: Iterable[str] | None,
) -> bool:
    """An interface whose addresses/routes/FDB entries are ours: tagged, or (untagged, not
    loopback) inside a namespace of ours."""
    if link is None:
        return False
    if is_ours(link.get("owner"), scope):
        return True
    if link.get("name") == "lo" or link.get("owner"):
        return False
    return _namespace_in_scope(link.get("namespace"), scope, scope_namespaces)


def diff_addresses(
    want: list[dict[str, Any]],
    have: Mapping[Key, list[str]],
    links: Mapping[Key, Mapping[str, Any]],
    state: str,
    *,
    scope: Scope = None,
    scope_namespaces: Iterable[str] | None = None,
) -> list[Change]:
    """Changes between addresses ``have`` ({(ns, ifname): [cidr]}) and ``want``.

    ``links`` ({(ns, ifname): link record}) tells which interfaces exist and are ours.
    """
    _check_state(state)
    changes: list[Change] = []
    if state == "gathered":
        return changes

    def change(action: str, key: Key, cidr: str) -> None:
        changes.append(make_change(action, "address", cidr, key[0], {"interface": key[1]}))

    def refuse(key: Key) -> None:
        raise NetlinkStateError(
            f"address on {key[1]} in namespace {ns_label(key[0])}: the interface is not ours, "
            "refusing to remove its addresses"
        )

    listed = set()
    for w in want:
        key = (w["namespace"], w["interface"])
        listed.add(key)
        current = list(have.get(key, []))
        wanted = w["addresses"]
        if state == "deleted":
            if wanted:
                for cidr in wanted:
                    if cidr in current:
                        change("delete", key, cidr)
            elif current:
                if not _iface_is_ours(links.get(key), None, None):
                    refuse(key)
                for cidr in current:
                    change("delete", key, cidr)
            continue
        for cidr in wanted or []:
            if cidr not in current:
                change("create", key, cidr)
        if state in RESET_STATES:
            for cidr in current:
                if cidr not in (wanted or []):
                    change("delete", key, cidr)
    if state == "overridden" or (state == "deleted" and not want and scope is not None):
        for key in sorted(have, key=_sort_key):
            if key in listed or not _iface_is_ours(links.get(key), scope, scope_namespaces):
                continue
            for cidr in have[key]:
                change("delete", key, cidr)
    # Removals first: an address may move between interfaces of one namespace.
    return sorted(changes, key=lambda c: c["action"] != "delete")


def simulate_addresses(
    have: Mapping[Key, list[str]], changes: list[Change]
) -> dict[Key, list[str]]:
    after = {key: list(value) for key, value in have.items()}
    for change in changes:
        key = (change["namespace"], change["details"]["interface"])
        if change["action"] == "delete":
            after[key] = [c for c in after.get(key, []) if c != change["name"]]
        else:
            after.setdefault(key, []).append(change["name"])
    return {key: value for key, value in after.items() if value}


# ---------------------------------------------------------------------------------------
# Routes


def _route_dst(value: Any, path: str) -> str:
    if str(value).strip().lower() == "default":
        return DEFAULT_ROUTE
    try:
        return str(ipaddress.IPv4Network(str(value), strict=True))
    except ValueError:
        raise NetlinkStateError(
            f"{path}: {value!r} is not an IPv4 network (host bits must be 0) or 'default'"
        ) from None


def route_text(dst: str) -> str:
    return "default" if dst == DEFAULT_ROUTE else dst


def normalize_routes(config: Iterable[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    want = []
    seen_ns: set[str | None] = set()
    for i, item in enumerate(config or []):
        path = f"config[{i}]"
        namespace = _check_ns_name(item.get("namespace"), f"{path}.namespace")
        if namespace in seen_ns:
            raise NetlinkStateError(
                f"{path}.namespace: namespace {ns_label(namespace)} is listed twice"
            )
        seen_ns.add(namespace)
        routes = item.get("routes")
        normalized = None
        if routes is not None:
            normalized = []
            seen: set[tuple] = set()
            for j, route in enumerate(routes):
                rpath = f"{path}.routes[{j}]"
                dst = _route_dst(route.get("dst"), f"{rpath}.dst")
                gateway = route.get("gateway")
                gateway = None if gateway in (None, "") else _ipv4(gateway, f"{rpath}.gateway")
                dev = route.get("dev")
                dev = None if dev in (None, "") else _check_ifname(dev, f"{rpath}.dev")
                if gateway is None and dev is None:
                    raise NetlinkStateError(f"{rpath}: a route needs a gateway or a dev")
                metric = int(route.get("metric") or 0)
                if (dst, metric) in seen:
                    raise NetlinkStateError(
                        f"{rpath}: route {route_text(dst)} metric {metric} is listed twice"
                    )
                seen.add((dst, metric))
                normalized.append({"dst": dst, "gateway": gateway, "dev": dev, "metric": metric})
        want.append({"namespace": namespace, "routes": normalized})
    return want


def _route_is_ours(
    key: Key,
    route: Mapping[str, Any],
    links: Mapping[Key, Mapping[str, Any]],
    scope: Scope,
    scope_namespaces: Iterable[str] | None,
) -> bool:
    if route.get("proto") == RTPROT_KERNEL:
        return False
    namespace = key[0]
    if _namespace_in_scope(namespace, scope, scope_namespaces):
        return True
    dev = route.get("dev")
    link = links.get((namespace, dev)) if dev else None
    return link is not None and is_ours(link.get("owner"), scope)


def _route_details(route: Mapping[str, Any]) -> dict[str, Any]:
    details = {"metric": route["metric"]}
    if route.get("gateway"):
        details["gateway"] = route["gateway"]
    if route.get("dev"):
        details["dev"] = route["dev"]
    return details


def diff_routes(
    want: list[dict[str, Any]],
    have: Mapping[Key, Mapping[str, Any]],
    links: Mapping[Key, Mapping[str, Any]],
    state: str,
    *,
    scope: Scope = None,
    scope_namespaces: Iterable[str] | None = None,
) -> list[Change]:
    """Changes between routes ``have`` ({(ns, dst, metric): route}) and ``want``.

    Only IPv4 unicast routes of the main table are managed; routes the kernel adds for a
    connected subnet (proto kernel) are never ours.
    """
    _check_state(state)
    changes: list[Change] = []
    if state == "gathered":
        return changes

    def name_of(dst: str) -> str:
        return route_text(dst)

    def delete(key: Key) -> None:
        route = have[key]
        if not _route_is_ours(key, route, links, None, None):
            raise NetlinkStateError(
                f"route {name_of(key[1])} metric {key[2]} in namespace {ns_label(key[0])}: "
                "not ours, refusing to delete it"
            )
        changes.append(
            make_change("delete", "route", name_of(key[1]), key[0], _route_details(route))
        )

    listed_ns = set()
    wanted_keys: set[Key] = set()
    for w in want:
        namespace = w["namespace"]
        listed_ns.add(namespace)
        routes = w["routes"]
        if state == "deleted":
            if routes:
                for route in routes:
                    key = (namespace, route["dst"], route["metric"])
                    if key in have:
                        delete(key)
            else:
                for key in sorted(have, key=_sort_key):
                    if key[0] == namespace and _route_is_ours(key, have[key], links, None, None):
                        delete(key)
            continue
        for route in routes or []:
            key = (namespace, route["dst"], route["metric"])
            wanted_keys.add(key)
            current = have.get(key)
            if current is None:
                changes.append(
                    make_change("create", "route", name_of(route["dst"]), namespace,
                                _route_details(route))
                )  # fmt: skip
                continue
            update = {}
            if current.get("gateway") != route["gateway"]:
                update["gateway"] = {"from": current.get("gateway"), "to": route["gateway"]}
            if route["dev"] is not None and current.get("dev") != route["dev"]:
                update["dev"] = {"from": current.get("dev"), "to": route["dev"]}
            if update:
                update["metric"] = route["metric"]
                changes.append(make_change("update", "route", name_of(route["dst"]), namespace,
                                           update))  # fmt: skip
        if state in RESET_STATES:
            for key in sorted(have, key=_sort_key):
                if key[0] == namespace and key not in wanted_keys:
                    if _route_is_ours(key, have[key], links, None, None):
                        delete(key)
    if state == "overridden" or (state == "deleted" and not want and scope is not None):
        for key in sorted(have, key=_sort_key):
            if key[0] in listed_ns and state == "overridden":
                continue
            if _route_is_ours(key, have[key], links, scope, scope_namespaces):
                delete(key)
    return sorted(changes, key=lambda c: c["action"] != "delete")


def simulate_routes(
    have: Mapping[Key, Mapping[str, Any]], changes: list[Change]
) -> dict[Key, dict[str, Any]]:
    after = {key: dict(value) for key, value in have.items()}
    for change in changes:
        dst = DEFAULT_ROUTE if change["name"] == "default" else change["name"]
        details = change["details"]
        key = (change["namespace"], dst, details["metric"])
        if change["action"] == "delete":
            after.pop(key, None)
        elif change["action"] == "create":
            after[key] = {
                "dst": dst,
                "gateway": details.get("gateway"),
                "dev": details.get("dev"),
                "metric": details["metric"],
                "proto": RTPROT_STATIC,
            }
        else:
            for attr in ("gateway", "dev"):
                if attr in details:
                    after[key][attr] = details[attr]["to"]
    return after


# ---------------------------------------------------------------------------------------
# FDB (head-end replication entries on VXLAN devices)


def fdb_name(mac: str, dst: str) -> str:
    return f"{mac} dst {dst}"


def normalize_fdb(config: Iterable[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    want = []
    seen: set[Key] = set()
    for i, item in enumerate(config or []):
        path = f"config[{i}]"
        namespace = _check_ns_name(item.get("namespace"), f"{path}.namespace")
        device = _check_ifname(item.get("device"), f"{path}.device")
        if (namespace, device) in seen:
            raise NetlinkStateError(
                f"{path}: device {device} in namespace {ns_label(namespace)} is listed twice"
            )
        seen.add((namespace, device))
        entries = item.get("entries")
        normalized = None
        if entries is not None:
            normalized = []
            for j, entry in enumerate(entries):
                mac = _mac(entry.get("mac") or ZERO_MAC, f"{path}.entries[{j}].mac")
                dst = _ipv4(entry.get("dst"), f"{path}.entries[{j}].dst")
                if (mac, dst) not in normalized:
                    normalized.append((mac, dst))
        want.append({"namespace": namespace, "device": device, "entries": normalized})
    return want


def diff_fdb(
    want: list[dict[str, Any]],
    have: Mapping[Key, Iterable[tuple[str, str]]],
    links: Mapping[Key, Mapping[str, Any]],
    state: str,
    *,
    scope: Scope = None,
) -> list[Change]:
    """Changes between FDB entries ``have`` ({(ns, device): {(mac, dst)}}) and ``want``.

    Only entries of our kind count (NTF_SELF, permanent, with a destination); learned
    entries are never touched. Removals happen only on VXLAN devices of ours.
    """
    _check_state(state)
    changes: list[Change] = []
    if state == "gathered":
        return changes

    def change(action: str, key: Key, entry: tuple[str, str]) -> None:
        if action == "delete" and not is_ours((links.get(key) or {}).get("owner")):
            raise NetlinkStateError(
                f"fdb {fdb_name(*entry)} on {key[1]} in namespace {ns_label(key[0])}: the device "
                "is not ours, refusing to remove its entries"
            )
        changes.append(
            make_change(action, "fdb", fdb_name(*entry), key[0],
                        {"device": key[1], "mac": entry[0], "dst": entry[1]})
        )  # fmt: skip

    listed = set()
    for w in want:
        key = (w["namespace"], w["device"])
        listed.add(key)
        current = sorted(have.get(key, ()))
        wanted = w["entries"]
        if state == "deleted":
            for entry in current if wanted is None or not wanted else wanted:
                if entry in current:
                    change("delete", key, entry)
            continue
        for entry in wanted or []:
            if entry not in current:
                change("create", key, entry)
        if state in RESET_STATES:
            for entry in current:
                if entry not in (wanted or []):
                    change("delete", key, entry)
    if state == "overridden" or (state == "deleted" and not want and scope is not None):
        for key in sorted(have, key=_sort_key):
            if key in listed or not is_ours((links.get(key) or {}).get("owner"), scope):
                continue
            for entry in sorted(have[key]):
                change("delete", key, entry)
    return sorted(changes, key=lambda c: c["action"] != "delete")


def simulate_fdb(
    have: Mapping[Key, Iterable[tuple[str, str]]], changes: list[Change]
) -> dict[Key, set[tuple[str, str]]]:
    after = {key: set(value) for key, value in have.items()}
    for change in changes:
        details = change["details"]
        key = (change["namespace"], details["device"])
        entry = (details["mac"], details["dst"])
        if change["action"] == "delete":
            after.get(key, set()).discard(entry)
        else:
            after.setdefault(key, set()).add(entry)
    return after


# ---------------------------------------------------------------------------------------
# Gathered form and diff text


def _public_link(record: Mapping[str, Any]) -> dict[str, Any]:
    out = {
        "name": record["name"],
        "namespace": record["namespace"],
        "kind": record.get("kind") or "device",
        "mtu": record.get("mtu"),
        "mac": record.get("mac"),
        "master": record.get("master"),
        "state": record.get("state"),
        "owner": record.get("owner"),
    }
    if record.get("vxlan"):
        out["vxlan"] = dict(record["vxlan"])
    if record.get("kind") == "veth":
        peer = record.get("peer") or {}
        out["peer"] = {"name": peer.get("name"), "namespace": peer.get("namespace")}
    return out


def gather_links(
    links: Mapping[Key, Mapping[str, Any]],
    select: Callable[[Key, Mapping[str, Any]], bool],
) -> list[dict[str, Any]]:
    return [
        _public_link(links[key]) for key in sorted(links, key=_sort_key) if select(key, links[key])
    ]


def _line(record: Mapping[str, Any], skip: Iterable[str] = ()) -> str:
    parts = []
    for key, value in record.items():
        if key in skip or value is None:
            continue
        if isinstance(value, Mapping):
            inner = " ".join(f"{k}={_fmt(v)}" for k, v in value.items() if v is not None)
            parts.append(f"{key}=({inner})")
        elif isinstance(value, (list, tuple)):
            parts.append(f"{key}=[{', '.join(_fmt(v) for v in value)}]")
        else:
            parts.append(f"{key}={_fmt(value)}")
    return " ".join(parts)


def render(obj: str, items: list[Mapping[str, Any]]) -> str:
    """Text of a gathered list, one line per object, for Ansible's --diff."""
    lines = []
    for item in items:
        if obj == "netns":
            lines.append(f"netns {item['name']} {_line(item, ('name',))}".rstrip())
        elif obj == "link":
            where = ns_label(item["namespace"])
            lines.append(f"link {where}/{item['name']} {_line(item, ('name', 'namespace'))}")
        elif obj == "address":
            where = ns_label(item["namespace"])
            for cidr in item["addresses"]:
                lines.append(f"address {where}/{item['interface']} {cidr}")
        elif obj == "route":
            where = ns_label(item["namespace"])
            for route in item["routes"]:
                lines.append(f"route {where} {route['dst']} {_line(route, ('dst',))}")
        elif obj == "fdb":
            where = ns_label(item["namespace"])
            for entry in item["entries"]:
                lines.append(f"fdb {where}/{item['device']} {entry['mac']} dst {entry['dst']}")
    return "\n".join(lines) + ("\n" if lines else "")


# ---------------------------------------------------------------------------------------
# The system side: sessions, readers, appliers


def _nl_error_text(exc: BaseException) -> str:
    loaded = sys.modules.get(_EXCEPTIONS)
    if loaded is not None and isinstance(exc, loaded.NetlinkError):
        code = getattr(exc, "code", 0) or 0
        message = exc.args[1] if len(exc.args) > 1 and exc.args[1] else os.strerror(code)
        return f"{message} (errno {code})"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} (errno {exc.errno})"
    return str(exc)


class Session:
    """One pyroute2 IPRoute socket per network namespace, opened on first use.

    Entering a namespace means ``setns`` of this (single-threaded) process and back; it
    is only done to open a socket or a sysctl file, which stay bound to that namespace.
    """

    def __init__(self) -> None:
        if not HAS_PYROUTE2:
            raise NetlinkStateError(f"pyroute2 is required: {PYROUTE2_IMPORT_ERROR}")
        self._root_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        self._sockets: dict[str | None, Any] = {}
        self._ns_fds: dict[str, int] = {}
        self._nsids: dict[tuple[str | None, str | None], int | None] = {}
        # parsed link dumps per namespace, until forget(): several steps of one module
        # call (host_network) read the same links; every apply_* forgets them first
        self._links: dict[str | None, list[dict[str, Any]]] = {}
        # plain netlink sockets for the dumps the read_* functions decode (rtnl): pyroute2
        # decoded every attribute of every message, most of a no-op run's reading time
        self._dump_sockets: dict[str | None, Any] = {}
        self._seq = 0

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def link_records(self, namespace: str | None) -> list[dict[str, Any]]:
        """The parsed links of a namespace (copies: read_links fills in masters and peers),
        dumped once until forget()."""
        if namespace not in self._links:
            dump = self.dump(namespace, "link")
            self._links[namespace] = [_parse_link(msg, namespace) for msg in dump]
        return [
            {**record, "vxlan": dict(record["vxlan"]) if record["vxlan"] else None}
            for record in self._links[namespace]
        ]

    def dump(self, namespace: str | None, what: str, family: int = 0) -> list[rtnl.Message]:
        """Every ``link``, ``addr``, ``route`` or ``neigh`` of a namespace (of one address
        family; 0: all), decoded by rtnl: only the attributes the read_* functions use."""
        return rtnl.dump(self._dump_socket(namespace), what, family, self._next_seq())

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _dump_socket(self, namespace: str | None) -> Any:
        if namespace not in self._dump_sockets:
            self._dump_sockets[namespace] = self._inside(namespace, rtnl.open_socket)
        return self._dump_sockets[namespace]

    def forget(self) -> None:
        """Drop the link dumps: the next read asks the kernel (called before any change)."""
        self._links.clear()

    def close(self) -> None:
        self._links.clear()
        for sock in [*self._sockets.values(), *self._dump_sockets.values()]:
            sock.close()
        self._sockets.clear()
        self._dump_sockets.clear()
        for fd in self._ns_fds.values():
            os.close(fd)
        self._ns_fds.clear()
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    @staticmethod
    def namespaces() -> list[str]:
        try:
            return sorted(os.listdir(NETNS_DIR))
        except FileNotFoundError:
            return []

    @staticmethod
    def exists(namespace: str | None) -> bool:
        return namespace is None or os.path.exists(os.path.join(NETNS_DIR, namespace))

    def ns_fd(self, namespace: str | None) -> int:
        if namespace is None:
            return self._root_fd
        if namespace not in self._ns_fds:
            try:
                self._ns_fds[namespace] = os.open(os.path.join(NETNS_DIR, namespace), os.O_RDONLY)
            except FileNotFoundError:
                raise NetlinkStateError(f"namespace {namespace} does not exist") from None
        return self._ns_fds[namespace]

    def _inside(self, namespace: str | None, func: Callable[[], Any]) -> Any:
        if namespace is None:
            return func()
        rtnl.setns(self.ns_fd(namespace))
        try:
            return func()
        finally:
            rtnl.setns(self._root_fd)

    def ipr(self, namespace: str | None) -> Any:
        if namespace not in self._sockets:
            iproute = pyroute2().IPRoute
            self._sockets[namespace] = self._inside(namespace, lambda: iproute(ext_ack=True))
        return self._sockets[namespace]

    def forwarding(self, namespace: str | None) -> bool:
        def read() -> bool:
            with open("/proc/sys/net/ipv4/ip_forward", encoding="ascii") as handle:
                return handle.read().strip() == "1"

        return self._inside(namespace, read)

    def set_forwarding(self, namespace: str | None, value: bool) -> None:
        def write() -> None:
            with open("/proc/sys/net/ipv4/ip_forward", "w", encoding="ascii") as handle:
                handle.write("1" if value else "0")

        self._inside(namespace, write)

    def create_namespace(self, name: str) -> None:
        pyroute2().netns.create(name)

    def remove_namespace(self, name: str) -> None:
        for sockets in (self._sockets, self._dump_sockets):
            sock = sockets.pop(name, None)
            if sock is not None:
                sock.close()
        fd = self._ns_fds.pop(name, None)
        if fd is not None:
            os.close(fd)
        pyroute2().netns.remove(name)

    def nsid(self, namespace: str | None, target: str | None) -> int | None:
        """The id under which ``namespace`` knows ``target`` (IFLA_LINK_NETNSID), if any."""
        key = (namespace, target)
        if key not in self._nsids:
            sock = self._dump_socket(namespace)
            self._nsids[key] = rtnl.nsid(sock, self.ns_fd(target), self._next_seq())
        return self._nsids[key]


@contextmanager
def _opened(shared: Session | None) -> Iterator[Session]:
    """The shared session (left open: its owner closes it), or a new one for this step."""
    if shared is not None:
        yield shared
        return
    with Session() as session:
        yield session


def read_netns(session: Session, names: Iterable[str] | None = None) -> dict[str, dict]:
    """Existing namespaces (all, or those of ``names`` that exist) with their forwarding."""
    existing = session.namespaces()
    if names is not None:
        wanted = set(names)
        existing = [name for name in existing if name in wanted]
    return {name: {"name": name, "forwarding": session.forwarding(name)} for name in existing}


def _parse_link(msg: Any, namespace: str | None) -> dict[str, Any]:
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    record = {
        "name": msg.get_attr("IFLA_IFNAME"),
        "namespace": namespace,
        "kind": kind,
        "mtu": msg.get_attr("IFLA_MTU"),
        "mac": (msg.get_attr("IFLA_ADDRESS") or "").lower() or None,
        "master": None,
        "state": "up" if msg["flags"] & IFF_UP else "down",
        "owner": msg.get_attr("IFLA_IFALIAS") or None,
        "vxlan": None,
        "peer": None,
        "_index": msg["index"],
        "_master": msg.get_attr("IFLA_MASTER"),
        "_link": msg.get_attr("IFLA_LINK"),
        "_link_netnsid": msg.get_attr("IFLA_LINK_NETNSID"),
        "_group": msg.get_attr("IFLA_GROUP"),
    }
    if kind == "vxlan":
        data = info.get_attr("IFLA_INFO_DATA")
        local = data.get_attr("IFLA_VXLAN_LOCAL") if data is not None else None
        record["vxlan"] = {
            "id": data.get_attr("IFLA_VXLAN_ID"),
            "port": data.get_attr("IFLA_VXLAN_PORT"),
            "learning": bool(data.get_attr("IFLA_VXLAN_LEARNING")),
            "local": None if local in (None, "0.0.0.0") else local,
            "ttl": data.get_attr("IFLA_VXLAN_TTL") or 0,
        }
    return record


def read_links(
    session: Session, namespaces: Iterable[str | None], resolve_peers: bool = True
) -> dict[Key, dict[str, Any]]:
    """Links of the given namespaces with masters and veth peers resolved to names.

    A peer in a namespace that was not read (or has no name) is ``{"unknown": True}``.
    """
    by_index: dict[str | None, dict[int, dict[str, Any]]] = {}
    for namespace in dict.fromkeys(namespaces):
        if not session.exists(namespace):
            continue
        by_index[namespace] = {r["_index"]: r for r in session.link_records(namespace)}
    for records in by_index.values():
        for record in records.values():
            master = records.get(record["_master"]) if record["_master"] else None
            record["master"] = master["name"] if master else None
            if record["kind"] != "veth" or not resolve_peers:
                continue
            record["peer"] = _resolve_peer(session, by_index, record)
    links = {}
    for records in by_index.values():
        for record in records.values():
            links[(record["namespace"], record["name"])] = record
    return links


def _resolve_peer(
    session: Session,
    by_index: Mapping[str | None, Mapping[int, Mapping[str, Any]]],
    record: Mapping[str, Any],
) -> dict[str, Any]:
    namespace, peer_index = record["namespace"], record["_link"]
    if record["_link_netnsid"] is None:
        peer = by_index[namespace].get(peer_index)
        if peer is not None:
            return {"name": peer["name"], "namespace": namespace}
        return {"unknown": True}
    for other, records in by_index.items():
        if other == namespace:
            continue
        peer = records.get(peer_index)
        if peer is None or peer["kind"] != "veth" or peer["_link"] != record["_index"]:
            continue
        if session.nsid(namespace, other) == record["_link_netnsid"]:
            return {"name": peer["name"], "namespace": other}
    return {"unknown": True}


def read_addresses(
    session: Session, links: Mapping[Key, Mapping[str, Any]], namespaces: Iterable[str | None]
) -> dict[Key, list[str]]:
    have: dict[Key, list[str]] = {}
    for namespace in dict.fromkeys(namespaces):
        if not session.exists(namespace):
            continue
        names = {r["_index"]: r["name"] for r in links.values() if r["namespace"] == namespace}
        for msg in session.dump(namespace, "addr", AF_INET):
            name = names.get(msg["index"])
            address = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if name is None or address is None:
                continue
            have.setdefault((namespace, name), []).append(f"{address}/{msg['prefixlen']}")
    return have


def read_routes(
    session: Session, links: Mapping[Key, Mapping[str, Any]], namespaces: Iterable[str | None]
) -> dict[Key, dict[str, Any]]:
    have: dict[Key, dict[str, Any]] = {}
    for namespace in dict.fromkeys(namespaces):
        if not session.exists(namespace):
            continue
        names = {r["_index"]: r["name"] for r in links.values() if r["namespace"] == namespace}
        for msg in session.dump(namespace, "route", AF_INET):
            table = msg.get_attr("RTA_TABLE") or msg["table"]
            if table != MAIN_TABLE or msg["type"] != RTN_UNICAST:
                continue
            dst = msg.get_attr("RTA_DST")
            dst = DEFAULT_ROUTE if msg["dst_len"] == 0 else f"{dst}/{msg['dst_len']}"
            metric = msg.get_attr("RTA_PRIORITY") or 0
            have[(namespace, dst, metric)] = {
                "dst": dst,
                "gateway": msg.get_attr("RTA_GATEWAY"),
                "dev": names.get(msg.get_attr("RTA_OIF")),
                "metric": metric,
                "proto": msg["proto"],
            }
    return have


def read_fdb(
    session: Session, links: Mapping[Key, Mapping[str, Any]], namespaces: Iterable[str | None]
) -> dict[Key, set[tuple[str, str]]]:
    """Our kind of FDB entries (self, permanent, with a dst) of every VXLAN device."""
    have: dict[Key, set[tuple[str, str]]] = {}
    for namespace in dict.fromkeys(namespaces):
        if not session.exists(namespace):
            continue
        vxlans = {
            r["_index"]: r["name"]
            for r in links.values()
            if r["namespace"] == namespace and r["kind"] == "vxlan"
        }
        if not vxlans:
            continue
        for name in vxlans.values():
            have.setdefault((namespace, name), set())
        for msg in session.dump(namespace, "neigh", AF_BRIDGE):
            name = vxlans.get(msg["ifindex"])
            if name is None or not msg["flags"] & NTF_SELF or not msg["state"] & NUD_PERMANENT:
                continue
            dst, mac = msg.get_attr("NDA_DST"), msg.get_attr("NDA_LLADDR")
            if dst and mac:
                have[(namespace, name)].add((mac.lower(), dst))
    return have


def learned_fdb(messages: Iterable[Any], index: int) -> list[tuple[str, str]]:
    """(mac, dst) of the remote entries the VXLAN device ``index`` learned: NTF_SELF with a
    destination, neither permanent nor static (ours, the head-end replication list, are)."""
    out = []
    for msg in messages:
        if msg["ifindex"] != index or not msg["flags"] & NTF_SELF:
            continue
        if msg["state"] & (NUD_PERMANENT | NUD_NOARP):
            continue
        dst, mac = msg.get_attr("NDA_DST"), msg.get_attr("NDA_LLADDR")
        if dst and mac and mac.lower() != ZERO_MAC:
            out.append((mac.lower(), dst))
    return sorted(out)


def orphaned_fdb(
    messages: Iterable[Any], index: int, removed: Iterable[str]
) -> list[tuple[str, str]]:
    """(mac, dst) learned by the VXLAN device ``index`` behind a remote in ``removed`` that
    no static entry of the device points at any more: until they age out, they would still
    send unicast frames to a peer that left the flood list (or to its old address)."""
    messages = list(messages)
    kept = {
        msg.get_attr("NDA_DST")
        for msg in messages
        if msg["ifindex"] == index and msg["flags"] & NTF_SELF
        and msg["state"] & (NUD_PERMANENT | NUD_NOARP)
    }  # fmt: skip
    gone = set(removed) - kept
    return [(mac, dst) for mac, dst in learned_fdb(messages, index) if dst in gone]


def _forget_learned(ipr: Any, index: int, removed: Iterable[str] | None = None) -> None:
    """Delete what a VXLAN device learned (behind the remotes ``removed`` only, if given).
    The kernel keeps learned entries when learning is switched off, and they would then
    never follow a MAC that moves to another peer."""
    messages = ipr.get_neighbours(family=AF_BRIDGE)
    entries = (
        learned_fdb(messages, index) if removed is None else orphaned_fdb(messages, index, removed)
    )
    for mac, dst in entries:
        try:
            ipr.fdb("del", ifindex=index, lladdr=mac, dst=dst)
        except pyroute2().NetlinkError as exc:
            if exc.code != errno.ENOENT:  # expired meanwhile: fine
                raise


def _apply_each(
    changes: list[Change], func: Callable[[Change], None], done: list[Change] | None = None
) -> None:
    done = [] if done is None else done
    for change in changes:
        try:
            func(change)
        except NetlinkStateError as exc:
            raise NetlinkStateError(str(exc), done) from exc
        except netlink_errors() as exc:
            raise NetlinkStateError(f"{describe(change)}: {_nl_error_text(exc)}", done) from exc
        done.append(change)


def apply_netns(session: Session, changes: list[Change]) -> None:
    session.forget()  # the links change: no read after this may use the dump

    def one(change: Change) -> None:
        name = change["name"]
        if change["action"] == "delete":
            session.remove_namespace(name)
            return
        if change["action"] == "create":
            session.create_namespace(name)
            forwarding = change["details"].get("forwarding")
        else:
            forwarding = change["details"]["forwarding"]["to"]
        if forwarding is not None:
            session.set_forwarding(name, forwarding)

    _apply_each(changes, one)


def apply_links(
    session: Session,
    changes: list[Change],
    want: list[dict[str, Any]],
    have: Mapping[Key, Mapping[str, Any]],
) -> None:
    session.forget()  # the links change: no read after this may use the dump
    by_key = {_link_key(w): w for w in want}
    gone = {(c["namespace"], c["name"]) for c in changes if c["action"] in ("delete", "recreate")}

    def master_index(namespace: str | None, master: str | None) -> int:
        if master is None:
            return 0
        return session.ipr(namespace).link("get", ifname=master)[0]["index"]

    def create(w: Mapping[str, Any]) -> None:
        namespace = w["namespace"]
        if not session.exists(namespace):
            raise NetlinkStateError(
                f"link {w['name']}: namespace {namespace} does not exist "
                "(create it first with multicloud.migration.netns)"
            )
        ipr = session.ipr(namespace)
        spec: dict[str, Any] = {"ifname": w["name"], "kind": w["kind"]}
        if w["mtu"] is not None:
            spec["mtu"] = w["mtu"]
        if w.get("mac") is not None:
            spec["address"] = w["mac"]
        if w["kind"] == "vxlan":
            vx = w["vxlan"]
            spec.update(
                vxlan_id=vx["id"], vxlan_port=vx["port"], vxlan_learning=int(vx["learning"])
            )
            if vx["ttl"] is not None:
                spec["vxlan_ttl"] = vx["ttl"]
            if vx["local"] is not None:
                spec["vxlan_local"] = vx["local"]
        if w["kind"] == "veth":
            peer_ns = w["peer"]["namespace"]
            peer_want = by_key[(peer_ns, w["peer"]["name"])]
            peer: dict[str, Any] = {"ifname": peer_want["name"]}
            if peer_ns != namespace:
                peer["net_ns_fd"] = session.ns_fd(peer_ns)
            if peer_want["mtu"] is not None:
                peer["mtu"] = peer_want["mtu"]
            if peer_want.get("mac") is not None:
                peer["address"] = peer_want["mac"]
            spec["peer"] = peer
        ipr.link("add", **spec)
        ipr.link(
            "set",
            ifname=w["name"],
            ifalias=w["owner"],
            master=master_index(namespace, w["master"]),
            state=w["state"] or "up",
        )
        if w["kind"] == "veth":
            session.ipr(peer_ns).link(
                "set",
                ifname=peer_want["name"],
                ifalias=peer_want["owner"],
                state=peer_want["state"] or "up",
            )

    def one(change: Change) -> None:
        key = (change["namespace"], change["name"])
        ipr = session.ipr(change["namespace"])
        action = change["action"]
        if action in ("delete", "recreate"):
            old = have[key]
            ports = [r["name"] for r in have.values()
                     if r["namespace"] == key[0] and r.get("master") == key[1]
                     and (r["namespace"], r["name"]) not in gone]  # fmt: skip
            fdb = sorted(read_fdb(session, {key: old}, [key[0]]).get(key, ())) if (
                action == "recreate" and old.get("kind") == "vxlan") else []  # fmt: skip
            ipr.link("del", index=old["_index"])
            if action == "delete":
                return
            create(by_key[key])
            for port in ports:
                ipr.link("set", ifname=port, master=master_index(key[0], key[1]))
            if fdb:  # our flood list survives the new device
                index = ipr.link("get", ifname=key[1])[0]["index"]
                for mac, dst in fdb:
                    ipr.fdb("append", ifindex=index, lladdr=mac, dst=dst)
            return
        if action == "create":
            create(by_key[key])
            return
        details = change["details"]
        spec: dict[str, Any] = {"ifname": change["name"]}
        if "mtu" in details:
            spec["mtu"] = details["mtu"]["to"]
        if "mac" in details:
            spec["address"] = details["mac"]["to"]
        if "master" in details:
            spec["master"] = master_index(change["namespace"], details["master"]["to"])
        if "owner" in details:
            spec["ifalias"] = details["owner"]["to"]
        vxlan = {k[6:]: v["to"] for k, v in details.items() if k.startswith("vxlan.")}
        if vxlan:
            spec["kind"] = "vxlan"
            for attr, value in vxlan.items():
                spec[f"vxlan_{attr}"] = int(value) if attr == "learning" else value
        bounce = "mac" in details and have[key].get("state") == "up"
        if bounce:  # not every driver takes a new address while up
            ipr.link("set", ifname=change["name"], state="down")
        if len(spec) > 1:
            ipr.link("set", **spec)
        if vxlan.get("learning") is False:
            _forget_learned(ipr, have[key]["_index"])
        if "state" in details:  # after mtu/master: a port comes up in its final place
            ipr.link("set", ifname=change["name"], state=details["state"]["to"])
        elif bounce:
            ipr.link("set", ifname=change["name"], state="up")

    done: list[Change] = []
    deletes = [c for c in changes if c["action"] == "delete"]
    for namespace in dict.fromkeys(c["namespace"] for c in deletes):
        batch = [c for c in deletes if c["namespace"] == namespace]
        if len(batch) > 1:
            _delete_links_at_once(session, namespace, batch, have, done)
        else:
            _apply_each(batch, one, done)
    _apply_each([c for c in changes if c["action"] != "delete"], one, done)


# A device group no link of ours uses: "mcm" in ASCII, the low byte counts up if taken.
_DELETE_GROUP_BASE = 0x6D636D00


def _delete_links_at_once(
    session: Session,
    namespace: str | None,
    batch: list[Change],
    have: Mapping[Key, Mapping[str, Any]],
    done: list[Change],
) -> None:
    """Delete many links of one namespace with a single RTM_DELLINK by device group.

    The kernel then unregisters them as one batch; one by one, each deletion waits for
    its own RCU grace period (~30 ms), which makes hundreds of deletions take seconds.
    """
    used = {r.get("_group") for r in have.values() if r["namespace"] == namespace}
    group = next(
        g for g in range(_DELETE_GROUP_BASE, _DELETE_GROUP_BASE + len(used) + 1) if g not in used
    )
    ipr = session.ipr(namespace)
    try:
        for change in batch:
            ipr.link("set", index=have[(namespace, change["name"])]["_index"], group=group)
        ipr.link("del", group=group)
    except netlink_errors() as exc:
        raise NetlinkStateError(
            f"delete {len(batch)} links in {ns_label(namespace)}: {_nl_error_text(exc)}", done
        ) from exc
    done.extend(batch)


def _index_of(links: Mapping[Key, Mapping[str, Any]], key: Key, session: Session) -> int:
    record = links.get(key)
    if record is not None:
        return record["_index"]
    return session.ipr(key[0]).link("get", ifname=key[1])[0]["index"]


def apply_addresses(
    session: Session, changes: list[Change], links: Mapping[Key, Mapping[str, Any]]
) -> None:
    session.forget()  # the links change: no read after this may use the dump

    def one(change: Change) -> None:
        key = (change["namespace"], change["details"]["interface"])
        iface = ipaddress.IPv4Interface(change["name"])
        session.ipr(key[0]).addr(
            "add" if change["action"] == "create" else "del",
            index=_index_of(links, key, session),
            address=str(iface.ip),
            prefixlen=iface.network.prefixlen,
        )

    _apply_each(changes, one)


def apply_routes(
    session: Session, changes: list[Change], links: Mapping[Key, Mapping[str, Any]]
) -> None:
    session.forget()  # the links change: no read after this may use the dump

    def one(change: Change) -> None:
        namespace = change["namespace"]
        details = change["details"]
        dst = DEFAULT_ROUTE if change["name"] == "default" else change["name"]
        net = ipaddress.IPv4Network(dst)
        spec: dict[str, Any] = {
            "dst_len": net.prefixlen,
            "table": MAIN_TABLE,
            "priority": details["metric"],
        }
        if net.prefixlen:
            spec["dst"] = str(net.network_address)
        if change["action"] == "delete":
            session.ipr(namespace).route("del", **spec)
            return

        def value(attr: str) -> Any:
            item = details.get(attr)
            return item["to"] if isinstance(item, Mapping) else item

        gateway, dev = value("gateway"), value("dev")
        if change["action"] == "update" and "dev" not in details:
            dev = None  # let the kernel pick the device for the new gateway
        if gateway:
            spec["gateway"] = gateway
        if dev:
            spec["oif"] = _index_of(links, (namespace, dev), session)
        spec["proto"] = RTPROT_STATIC
        session.ipr(namespace).route("replace", **spec)

    _apply_each(changes, one)


def apply_fdb(
    session: Session, changes: list[Change], links: Mapping[Key, Mapping[str, Any]]
) -> None:
    session.forget()  # the links change: no read after this may use the dump

    def one(change: Change) -> None:
        details = change["details"]
        key = (change["namespace"], details["device"])
        # append: several head-end replication entries (one per peer) coexist
        session.ipr(key[0]).fdb(
            "append" if change["action"] == "create" else "del",
            ifindex=_index_of(links, key, session),
            lladdr=details["mac"],
            dst=details["dst"],
        )

    done: list[Change] = []
    _apply_each(changes, one, done)
    # A remote no longer listed (a peer gone, or its address changed): what the device
    # learned behind it goes too, so that frames to those MACs are flooded to the listed
    # peers instead of still going, unicast, to the old address.
    removed: dict[Key, set[str]] = {}
    for change in changes:
        if change["action"] == "delete":
            key = (change["namespace"], change["details"]["device"])
            removed.setdefault(key, set()).add(change["details"]["dst"])
    for key, dsts in removed.items():
        try:
            _forget_learned(session.ipr(key[0]), _index_of(links, key, session), dsts)
        except netlink_errors() as exc:
            where = f"fdb on {key[1]}: forgetting what was learned behind {sorted(dsts)}"
            raise NetlinkStateError(f"{where}: {_nl_error_text(exc)}", done) from exc


# ---------------------------------------------------------------------------------------
# One module call: want -> have -> changes -> (apply) -> result


def _namespaces_to_read(
    session: Session,
    listed: Iterable[str | None],
    state: str,
    want_empty: bool,
    gather_all: bool,
) -> tuple[list[str | None], list[str]]:
    """(namespaces to read, listed namespaces that do not exist)."""
    existing = session.namespaces()
    names: list[str | None] = [None]
    missing = []
    for namespace in listed:
        if namespace is None:
            continue
        if namespace in existing:
            names.append(namespace)
        else:
            missing.append(namespace)
    if state in ("overridden", "gathered") or (state == "deleted" and want_empty):
        names.extend(n for n in existing if gather_all or is_our_namespace(n))
    return list(dict.fromkeys(names)), sorted(set(missing))


def _result(
    changes: list[Change],
    *,
    have: Any,
    after: Any,
    gather: Callable[[Any], list[dict[str, Any]]],
    obj: str,
    diff_mode: bool,
    warnings: list[str],
    state: str,
) -> dict[str, Any]:
    """The step's result; ``gather`` turns the state read (``have``) and the state after
    (``after``; ``have`` itself when nothing changed) into before/after."""
    before = gather(have)
    after_items = before if after is have else gather(after)
    result: dict[str, Any] = {
        "changed": bool(changes),
        "changes": changes,
        "before": before,
        "after": after_items,
        "warnings": warnings,
    }
    if state == "gathered":
        result["gathered"] = before
    if diff_mode:
        result["diff"] = {
            "before": render(obj, before),
            "after": render(obj, after_items),
            "before_header": f"{obj} (before)",
            "after_header": f"{obj} (after)",
        }
    return result


def _missing_namespaces(missing: list[str], check_mode: bool, what: str) -> list[str]:
    if not missing:
        return []
    if not check_mode:
        raise NetlinkStateError(
            f"{what}: namespace {', '.join(missing)} does not exist "
            "(create it first with multicloud.migration.netns)"
        )
    return [
        f"namespace {name} does not exist (yet): assumed empty in check mode" for name in missing
    ]


def run_netns(
    params: Mapping[str, Any], check_mode: bool, diff_mode: bool, shared: Session | None = None
) -> dict[str, Any]:
    state = params.get("state") or "merged"
    scope_namespaces = params.get("scope_namespaces") or []
    _check_state(state)
    _check_scope(None, scope_namespaces)
    want = normalize_netns(params.get("config"))
    gather_all = bool(params.get("all"))
    with _opened(shared) as session:
        have = read_netns(session)

        def select(names: Mapping[str, Any]) -> list[dict[str, Any]]:
            listed = {w["name"] for w in want}
            return [
                dict(names[n]) for n in sorted(names)
                if gather_all or n in listed or is_our_namespace(n, scope_namespaces)
            ]  # fmt: skip

        changes = diff_netns(want, have, state, scope_namespaces=scope_namespaces)
        if changes and not check_mode:
            apply_netns(session, changes)
            after = read_netns(session)
        elif changes:
            after = simulate_netns(have, changes)
        else:
            after = have
    return _result(
        changes, have=have, after=after, gather=select, obj="netns",
        diff_mode=diff_mode, warnings=[], state=state,
    )  # fmt: skip


def run_link(
    params: Mapping[str, Any], check_mode: bool, diff_mode: bool, shared: Session | None = None
) -> dict[str, Any]:
    state = params.get("state") or "merged"
    scope = params.get("scope")
    _check_state(state)
    _check_scope(scope, params.get("scope_namespaces"))
    want = normalize_links(params.get("config"))
    gather_all = bool(params.get("all"))
    with _opened(shared) as session:
        namespaces, missing = _namespaces_to_read(
            session, [w["namespace"] for w in want], state, not want, gather_all
        )
        warnings = _missing_namespaces(
            [m for m in missing if state != "deleted"], check_mode, "link"
        )
        have = read_links(session, namespaces)
        changes = diff_links(want, have, state, scope=scope)
        if state not in ("deleted", "gathered"):
            gone = [(c["namespace"], c["name"]) for c in changes if c["action"] == "delete"]
            problems = check_link_references(want, have, gone)
            if problems and not check_mode:
                raise NetlinkStateError("; ".join(problems))
            warnings.extend(problems)
        listed = {_link_key(w) for w in want}

        def select(key: Key, record: Mapping[str, Any]) -> bool:
            return gather_all or key in listed or is_ours(record.get("owner"), scope)

        if changes and not check_mode:
            apply_links(session, changes, want, have)
            after = read_links(session, namespaces)
        elif changes:
            after = simulate_links(have, changes, want)
        else:
            after = have
    return _result(
        changes, have=have, after=after, gather=lambda links: gather_links(links, select),
        obj="link", diff_mode=diff_mode, warnings=warnings, state=state,
    )  # fmt: skip


def _gather_grouped(
    have: Mapping[Key, Any], field: str, select: Callable[[Key], bool], obj: str
) -> list[dict[str, Any]]:
    out = []
    for key in sorted(have, key=_sort_key):
        if not select(key) or not have[key]:
            continue
        if obj == "address":
            out.append({"namespace": key[0], "interface": key[1], field: list(have[key])})
        else:
            entries = [{"mac": mac, "dst": dst} for mac, dst in sorted(have[key])]
            out.append({"namespace": key[0], "device": key[1], field: entries})
    return out


def run_address(
    params: Mapping[str, Any], check_mode: bool, diff_mode: bool, shared: Session | None = None
) -> dict[str, Any]:
    state = params.get("state") or "merged"
    scope, scope_namespaces = params.get("scope"), params.get("scope_namespaces") or []
    _check_state(state)
    _check_scope(scope, scope_namespaces)
    want = normalize_addresses(params.get("config"))
    gather_all = bool(params.get("all"))
    with _opened(shared) as session:
        namespaces, missing = _namespaces_to_read(
            session, [w["namespace"] for w in want], state, not want, gather_all
        )
        warnings = _missing_namespaces(missing, check_mode, "address")
        links = read_links(session, namespaces, resolve_peers=False)
        for w in want:
            key = (w["namespace"], w["interface"])
            if key not in links and w["namespace"] not in missing:
                message = (
                    f"address: interface {key[1]} does not exist in namespace {ns_label(key[0])}"
                )
                if not check_mode and state != "deleted":
                    raise NetlinkStateError(message)
                warnings.append(message)
        have = read_addresses(session, links, namespaces)
        changes = diff_addresses(
            want, have, links, state, scope=scope, scope_namespaces=scope_namespaces
        )
        listed = {(w["namespace"], w["interface"]) for w in want}

        def select(key: Key) -> bool:
            return (
                gather_all or key in listed
                or _iface_is_ours(links.get(key), scope, scope_namespaces)
            )  # fmt: skip

        if changes and not check_mode:
            apply_addresses(session, changes, links)
            after = read_addresses(session, links, namespaces)
        elif changes:
            after = simulate_addresses(have, changes)
        else:
            after = have
    return _result(
        changes, have=have, after=after,
        gather=lambda addresses: _gather_grouped(addresses, "addresses", select, "address"),
        obj="address", diff_mode=diff_mode, warnings=warnings, state=state,
    )  # fmt: skip


def _gather_routes(
    have: Mapping[Key, Mapping[str, Any]], select: Callable[[Key, Mapping[str, Any]], bool]
) -> list[dict[str, Any]]:
    grouped: dict[str | None, list[dict[str, Any]]] = {}
    for key in sorted(have, key=_sort_key):
        route = have[key]
        if select(key, route):
            grouped.setdefault(key[0], []).append(
                {
                    "dst": route_text(route["dst"]),
                    "gateway": route.get("gateway"),
                    "dev": route.get("dev"),
                    "metric": route["metric"],
                }
            )
    return [
        {"namespace": ns, "routes": routes}
        for ns, routes in sorted(grouped.items(), key=lambda item: item[0] or "")
    ]


def run_route(
    params: Mapping[str, Any], check_mode: bool, diff_mode: bool, shared: Session | None = None
) -> dict[str, Any]:
    state = params.get("state") or "merged"
    scope, scope_namespaces = params.get("scope"), params.get("scope_namespaces") or []
    _check_state(state)
    _check_scope(scope, scope_namespaces)
    want = normalize_routes(params.get("config"))
    gather_all = bool(params.get("all"))
    with _opened(shared) as session:
        namespaces, missing = _namespaces_to_read(
            session, [w["namespace"] for w in want], state, not want, gather_all
        )
        warnings = _missing_namespaces(missing, check_mode, "route")
        links = read_links(session, namespaces, resolve_peers=False)
        for w in want:
            for route in w["routes"] or []:
                if route["dev"] and (w["namespace"], route["dev"]) not in links:
                    message = (
                        f"route {route_text(route['dst'])}: dev {route['dev']} does not exist "
                        f"in namespace {ns_label(w['namespace'])}"
                    )
                    if not check_mode and state != "deleted":
                        raise NetlinkStateError(message)
                    warnings.append(message)
        have = read_routes(session, links, namespaces)
        changes = diff_routes(
            want, have, links, state, scope=scope, scope_namespaces=scope_namespaces
        )
        listed = {(w["namespace"], r["dst"], r["metric"]) for w in want for r in w["routes"] or []}

        def select(key: Key, route: Mapping[str, Any]) -> bool:
            if gather_all:
                return True
            return key in listed or _route_is_ours(key, route, links, scope, scope_namespaces)

        if changes and not check_mode:
            apply_routes(session, changes, links)
            after = read_routes(session, links, namespaces)
        elif changes:
            after = simulate_routes(have, changes)
        else:
            after = have
    return _result(
        changes, have=have, after=after, gather=lambda routes: _gather_routes(routes, select),
        obj="route", diff_mode=diff_mode, warnings=warnings, state=state,
    )  # fmt: skip


def run_fdb(
    params: Mapping[str, Any], check_mode: bool, diff_mode: bool, shared: Session | None = None
) -> dict[str, Any]:
    state = params.get("state") or "merged"
    scope = params.get("scope")
    _check_state(state)
    _check_scope(scope, params.get("scope_namespaces"))
    want = normalize_fdb(params.get("config"))
    gather_all = bool(params.get("all"))
    with _opened(shared) as session:
        namespaces, missing = _namespaces_to_read(
            session, [w["namespace"] for w in want], state, not want, gather_all
        )
        warnings = _missing_namespaces(missing, check_mode, "fdb")
        links = read_links(session, namespaces, resolve_peers=False)
        for w in want:
            key = (w["namespace"], w["device"])
            link = links.get(key)
            if link is not None and link["kind"] != "vxlan":
                raise NetlinkStateError(
                    f"fdb: device {key[1]} in namespace {ns_label(key[0])} is a "
                    f"{link['kind'] or 'device'}, not a vxlan device"
                )
            if link is None and w["namespace"] not in missing:
                message = f"fdb: device {key[1]} does not exist in namespace {ns_label(key[0])}"
                if not check_mode and state != "deleted":
                    raise NetlinkStateError(message)
                warnings.append(message)
        have = read_fdb(session, links, namespaces)
        changes = diff_fdb(want, have, links, state, scope=scope)
        listed = {(w["namespace"], w["device"]) for w in want}

        def select(key: Key) -> bool:
            return (
                gather_all or key in listed or is_ours((links.get(key) or {}).get("owner"), scope)
            )

        if changes and not check_mode:
            apply_fdb(session, changes, links)
            after = read_fdb(session, links, namespaces)
        elif changes:
            after = simulate_fdb(have, changes)
        else:
            after = have
    return _result(
        changes, have=have, after=after,
        gather=lambda entries: _gather_grouped(entries, "entries", select, "fdb"),
        obj="fdb", diff_mode=diff_mode, warnings=warnings, state=state,
    )  # fmt: skip


_RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    "netns": run_netns,
    "link": run_link,
    "address": run_address,
    "route": run_route,
    "fdb": run_fdb,
}


def run(
    resource: str,
    params: Mapping[str, Any],
    check_mode: bool,
    diff_mode: bool,
    shared: Session | None = None,
) -> dict:
    """Converge one resource (netns, link, address, route, fdb) as a module call does.

    Returns ``changed``, ``changes``, ``before``, ``after``, ``warnings`` and, in diff
    mode, ``diff``; raises NetlinkStateError with a message naming the object and cause.
    With ``shared``, the step uses that session (its sockets and link dumps) and leaves it
    open; otherwise it opens and closes its own.
    """
    if resource not in _RUNNERS:
        raise NetlinkStateError(f"unknown resource {resource!r}")
    return _RUNNERS[resource](params, check_mode, diff_mode, shared)


class SharedRuns:
    """``run`` for the steps of one module call (host_network), sharing one session: one
    socket per namespace, the links dumped once, while the steps change nothing.

    After a step that changed something, or failed, the session is closed and the next
    step opens a new one: a socket held in a namespace the netns step removed would keep
    that namespace (and the veth legs the kernel removes with it) alive. Use as a context
    manager; it closes the last session.
    """

    def __init__(self) -> None:
        self._session: Session | None = None

    def __enter__(self) -> SharedRuns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def __call__(
        self, resource: str, params: Mapping[str, Any], check_mode: bool, diff_mode: bool
    ) -> dict:
        if self._session is None:
            self._session = Session()
        try:
            out = run(resource, params, check_mode, diff_mode, self._session)
        except BaseException:
            self.close()
            raise
        if out.get("changed"):
            self.close()
        return out


def module_main(kind: str, item_spec: dict[str, Any], *, scoped: bool = True) -> None:
    """The main() of the netlink resource modules, which differ only by kind and items."""
    from ansible.module_utils.basic import AnsibleModule, missing_required_lib

    argument_spec: dict[str, Any] = {
        "config": {"type": "list", "elements": "dict", "default": [], "options": item_spec},
        "state": {"type": "str", "choices": list(STATES), "default": "merged"},
        "scope_namespaces": {"type": "list", "elements": "str", "default": []},
        "all": {"type": "bool", "default": False},
    }
    if scoped:
        argument_spec["scope"] = {"type": "list", "elements": "str"}
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    if not HAS_PYROUTE2:
        module.fail_json(msg=missing_required_lib("pyroute2"), exception=PYROUTE2_IMPORT_ERROR)
    try:
        result = run(kind, module.params, module.check_mode, module._diff)
    except NetlinkStateError as exc:
        module.fail_json(msg=str(exc), changes=exc.changes)
    for warning in result.pop("warnings"):
        module.warn(warning)
    module.exit_json(**result)
