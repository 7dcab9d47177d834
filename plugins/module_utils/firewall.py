# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Security groups and floating addresses: one nftables table per tenant router namespace.

A config item (``nft_ruleset`` module, ``firewall`` step of ``host_network``, computed by
``plan.host_plan``) describes a table (family ``inet``) in a namespace:

- ``networks``: the security group of each network whose gateway the router holds. The
  ``forward`` chain accepts established/related traffic, then sends what is routed into
  a network's subnet to its chain ``sg-<network>``: traffic from the subnet itself
  (hairpin through a floating address) is accepted, then the ingress rules in order (first
  match wins), then the default (``drop`` ends the chain with a counted drop).
- ``floating``: each floating address is DNATed to its VM's fixed address for the traffic
  the router forwards (``prerouting``), and a client in the VM's own subnet is masqueraded
  behind the gateway (``postrouting``) so that the replies come back through the router.
  Replies are translated back by conntrack.

Desired state: the table is built as nft's JSON (the form ``nft -j list ruleset`` prints,
so that what is read back compares equal), compared with what the namespace has (handles
and counter values ignored) and, when different, replaced in one atomic transaction
(``add``, ``delete``, ``add`` table, chains, rules). Traffic is not interrupted and
conntrack entries (NAT mappings of open connections) stay.

Backend: ``nft -j`` run inside the namespace (``ip netns exec``); see docs/security.md for
why not the python3-nftables binding. Pure Python apart from the backend.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .naming import security_group_chain

__all__ = [
    "FirewallError",
    "NftCommand",
    "Result",
    "canonical",
    "converge",
    "render",
    "wanted",
]

FAMILY = "inet"
NETNS_DIR = "/run/netns"
PROTOCOLS = ("tcp", "udp", "icmp", "any")
PORT_PROTOCOLS = ("tcp", "udp")
ACTIONS = ("accept", "drop")
DEFAULTS = ("drop", "accept")
_PORTS_RE = re.compile(r"^\s*(\d{1,5})\s*(?:-\s*(\d{1,5})\s*)?$")
# base chains: name -> (type, hook, priority); policy accept, the rules decide
BASE_CHAINS = {
    "forward": ("filter", "forward", 0),
    "prerouting": ("nat", "prerouting", -100),
    "postrouting": ("nat", "postrouting", 100),
}

Expr = list[dict[str, Any]]
Table = dict[str, Any]  # {"chains": {name: {...}}, "rules": {chain: [expr, ...]}}


class FirewallError(Exception):
    """An item cannot be converged (bad input, missing namespace, nft failed)."""


class Backend(Protocol):
    def has_namespace(self, namespace: str) -> bool: ...

    def ruleset(self, namespace: str) -> list[dict[str, Any]]: ...

    def apply(self, namespace: str, commands: list[dict[str, Any]]) -> None: ...


# run(argv, stdin or None) -> (rc, stdout, stderr)
RunCommand = Callable[..., tuple[int, str, str]]


class NftCommand:
    """``nft -j`` inside a namespace, through ``ip netns exec``.

    ``run(argv, stdin)`` returns (rc, stdout, stderr): the module passes
    ``AnsibleModule.run_command``. Without ``nft`` (None) nothing can exist: the ruleset
    reads empty and applying fails.
    """

    def __init__(
        self, run: RunCommand, nft: str | None, ip: str = "ip", netns_dir: str = NETNS_DIR
    ) -> None:
        self._run = run
        self._nft = nft
        self._ip = ip
        self._netns_dir = netns_dir

    def has_namespace(self, namespace: str) -> bool:
        return os.path.exists(os.path.join(self._netns_dir, namespace))

    def _nft_in(self, namespace: str, *args: str, stdin: str | None = None) -> str:
        if self._nft is None:
            raise FirewallError("nft (Debian package nftables) is not installed on the host")
        argv = [self._ip, "netns", "exec", namespace, self._nft, "-j", *args]
        rc, out, err = self._run(argv, stdin)
        if rc != 0:
            raise FirewallError(f"{namespace}: nft -j {' '.join(args)}: {(err or out).strip()}")
        return out

    def ruleset(self, namespace: str) -> list[dict[str, Any]]:
        if self._nft is None:
            return []
        out = self._nft_in(namespace, "list", "ruleset")
        try:
            return list(json.loads(out or '{"nftables": []}')["nftables"])
        except (ValueError, KeyError, TypeError) as exc:
            raise FirewallError(f"{namespace}: unreadable output of nft -j: {exc}") from exc

    def apply(self, namespace: str, commands: list[dict[str, Any]]) -> None:
        self._nft_in(namespace, "-f", "-", stdin=json.dumps({"nftables": commands}))


@dataclass
class Result:
    changed: bool = False
    changes: list[dict[str, Any]] = field(default_factory=list)
    before: list[dict[str, Any]] = field(default_factory=list)
    after: list[dict[str, Any]] = field(default_factory=list)
    diff: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- expressions


def _payload(protocol: str, fld: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": fld}}


def _match(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _network(value: Any, what: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(str(value), strict=True)
    except ValueError as exc:
        raise FirewallError(f"{what}: {value!r} is not an IPv4 CIDR without host bits") from exc
    if net.version != 4:
        raise FirewallError(f"{what}: {value!r} is not IPv4")
    return net  # type: ignore[return-value]


def _address(value: Any, what: str) -> str:
    try:
        addr = ipaddress.ip_address(str(value))
    except ValueError as exc:
        raise FirewallError(f"{what}: {value!r} is not an IPv4 address") from exc
    if addr.version != 4:
        raise FirewallError(f"{what}: {value!r} is not IPv4")
    return str(addr)


def _addr_right(net: ipaddress.IPv4Network) -> Any:
    """nft's JSON for an address or prefix (a /32 is printed as the address)."""
    if net.prefixlen == 32:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def ports_right(value: Any, what: str = "ports") -> Any:
    """``22`` / ``"22"`` -> 22; ``"8000-8080"`` -> {"range": [8000, 8080]}."""
    text = str(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else ""
    match = _PORTS_RE.match(text)
    if match is None:
        raise FirewallError(f"{what}: {value!r} is not a port or a range of ports (8000-8080)")
    first = int(match.group(1))
    last = int(match.group(2)) if match.group(2) is not None else first
    if not (1 <= first <= last <= 65535):
        raise FirewallError(f"{what}: {value!r} is not a range inside 1..65535")
    return first if first == last else {"range": [first, last]}


def rule_expr(rule: Mapping[str, Any], what: str) -> Expr:
    """One ingress rule: source, protocol and ports, counter, verdict."""
    proto = rule.get("proto") or "any"
    action = rule.get("action") or "accept"
    if proto not in PROTOCOLS:
        raise FirewallError(f"{what}.proto: {proto!r} is not one of {', '.join(PROTOCOLS)}")
    if action not in ACTIONS:
        raise FirewallError(f"{what}.action: {action!r} is not one of {', '.join(ACTIONS)}")
    expr: Expr = []
    source = _network(rule.get("from") or "0.0.0.0/0", f"{what}.from")
    if source.prefixlen:
        expr.append(_match(_payload("ip", "saddr"), _addr_right(source)))
    ports = rule.get("ports")
    if ports is not None and ports != "":
        if proto not in PORT_PROTOCOLS:
            raise FirewallError(f"{what}.ports: only with proto tcp or udp (proto is {proto})")
        expr.append(_match(_payload(proto, "dport"), ports_right(ports, f"{what}.ports")))
    elif proto != "any":
        expr.append(_match({"meta": {"key": "l4proto"}}, proto))
    expr.append({"counter": {"packets": 0, "bytes": 0}})
    expr.append({action: None})
    return expr


def wanted(item: Mapping[str, Any]) -> Table | None:
    """The table an item asks for (canonical form), or None for ``state: absent``."""
    if (item.get("state") or "present") == "absent":
        return None
    chains: dict[str, dict[str, Any]] = {}
    rules: dict[str, list[Expr]] = {}

    def base(name: str) -> None:
        kind, hook, prio = BASE_CHAINS[name]
        chains[name] = {"type": kind, "hook": hook, "prio": prio, "policy": "accept"}
        rules[name] = []

    networks = list(item.get("networks") or [])
    if networks:
        base("forward")
        established = _match({"ct": {"key": "state"}}, ["established", "related"], "in")
        rules["forward"].append([established, {"accept": None}])
    for index, net in enumerate(networks):
        what = f"networks[{index}]"
        name = net.get("name")
        if not name:
            raise FirewallError(f"{what}.name is required")
        subnet = _network(net.get("subnet"), f"{what}.subnet")
        default = net.get("default") or "drop"
        if default not in DEFAULTS:
            raise FirewallError(f"{what}.default: {default!r} is not one of drop, accept")
        chain = security_group_chain(name)
        if chain in chains:
            raise FirewallError(f"{what}: network {name!r} is listed twice")
        inside = _match(_payload("ip", "daddr"), _addr_right(subnet))
        rules["forward"].append([inside, {"jump": {"target": chain}}])
        chains[chain] = {}
        body = [[_match(_payload("ip", "saddr"), _addr_right(subnet)), {"accept": None}]]
        body += [
            rule_expr(rule, f"{what}.ingress[{i}]")
            for i, rule in enumerate(net.get("ingress") or [])
        ]
        if default == "drop":
            body.append([{"counter": {"packets": 0, "bytes": 0}}, {"drop": None}])
        rules[chain] = body
    floating = list(item.get("floating") or [])
    if floating:
        for name in ("prerouting", "postrouting"):
            base(name)
    seen: set[str] = set()
    for index, fip in enumerate(floating):
        what = f"floating[{index}]"
        address = _address(fip.get("address"), f"{what}.address")
        fixed = _address(fip.get("fixed"), f"{what}.fixed")
        subnet = _network(fip.get("subnet"), f"{what}.subnet")
        if address in seen:
            raise FirewallError(f"{what}.address: {address} is listed twice")
        seen.add(address)
        to_fip = _match(_payload("ip", "daddr"), address)
        dnat = {"dnat": {"family": "ip", "addr": fixed}}
        rules["prerouting"].append([to_fip, {"counter": {"packets": 0, "bytes": 0}}, dnat])
        rules["postrouting"].append(
            [
                _match({"ct": {"key": "status"}}, "dnat", "in"),
                _match(_payload("ip", "saddr"), _addr_right(subnet)),
                _match(_payload("ip", "daddr"), fixed),
                {"masquerade": None},
            ]
        )
    return {"chains": chains, "rules": rules}


# --------------------------------------------------------------------------- reading


def _strip_counters(expr: Iterable[Mapping[str, Any]]) -> Expr:
    return [{"counter": {}} if "counter" in stmt else dict(stmt) for stmt in expr]


def canonical(ruleset: Iterable[Mapping[str, Any]], table: str) -> Table | None:
    """A table as read by ``nft -j list ruleset``, in the form ``wanted`` returns (None when
    the namespace has no such table). Handles and counter values are left out."""
    found = False
    chains: dict[str, dict[str, Any]] = {}
    rules: dict[str, list[Expr]] = {}
    for entry in ruleset:
        for kind, obj in entry.items():
            if not isinstance(obj, Mapping) or obj.get("family") != FAMILY:
                continue
            if kind == "table" and obj.get("name") == table:
                found = True
            elif kind == "chain" and obj.get("table") == table:
                chains[obj["name"]] = {
                    k: obj[k] for k in ("type", "hook", "prio", "policy") if k in obj
                }
                rules.setdefault(obj["name"], [])
            elif kind == "rule" and obj.get("table") == table:
                rules.setdefault(obj["chain"], []).append(_strip_counters(obj.get("expr") or []))
    if not found:
        return None
    return {"chains": chains, "rules": rules}


def _comparable(table: Table | None) -> Any:
    if table is None:
        return None
    return {
        "chains": table["chains"],
        "rules": {c: [_strip_counters(e) for e in r] for c, r in table["rules"].items()},
    }


# --------------------------------------------------------------------------- text


def _right_text(right: Any) -> str:
    if isinstance(right, Mapping):
        if "prefix" in right:
            return f"{right['prefix']['addr']}/{right['prefix']['len']}"
        if "range" in right:
            return "-".join(str(v) for v in right["range"])
        if "set" in right:
            return "{ " + ", ".join(_right_text(v) for v in right["set"]) + " }"
    if isinstance(right, list):
        return ",".join(_right_text(v) for v in right)
    return str(right)


def _left_text(left: Any) -> str:
    if isinstance(left, Mapping):
        if "payload" in left:
            return f"{left['payload'].get('protocol')} {left['payload'].get('field')}"
        for key in ("meta", "ct"):
            if key in left:
                return f"{key} {left[key].get('key')}"
    return json.dumps(left, sort_keys=True)


def _stmt_text(stmt: Mapping[str, Any]) -> str:
    [(kind, value)] = list(stmt.items())[:1] or [("", None)]
    if kind == "match":
        op = value.get("op")
        sep = " " if op in ("==", "in") else f" {op} "
        return f"{_left_text(value.get('left'))}{sep}{_right_text(value.get('right'))}"
    if kind in ("accept", "drop", "masquerade", "return"):
        return kind
    if kind == "counter":
        return "counter"
    if kind in ("jump", "goto"):
        return f"{kind} {value.get('target')}"
    if kind in ("dnat", "snat"):
        return f"{kind} {value.get('family', 'ip')} to {value.get('addr')}"
    return json.dumps(dict(stmt), sort_keys=True)


def render(table_name: str, table: Table | None) -> str:
    """The table as text, close to ``nft list table`` (for diffs and results)."""
    if table is None:
        return ""
    lines = [f"table {FAMILY} {table_name} {{"]
    for chain in sorted(table["chains"], key=_chain_order):
        lines.append(f"  chain {chain} {{")
        spec = table["chains"][chain]
        if spec.get("hook"):
            lines.append(
                f"    type {spec.get('type')} hook {spec['hook']} priority {spec.get('prio')}; "
                f"policy {spec.get('policy', 'accept')};"
            )
        lines.extend(
            "    " + " ".join(_stmt_text(s) for s in expr) for expr in table["rules"].get(chain, [])
        )
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _chain_order(name: str) -> tuple[int, str]:
    order = list(BASE_CHAINS)
    return (order.index(name), "") if name in order else (len(order), name)


# --------------------------------------------------------------------------- converge


def _commands(family_table: dict[str, str], want: Table | None, exists: bool) -> list[dict]:
    """One transaction: the table replaced as a whole (or deleted)."""
    out: list[dict[str, Any]] = []
    if want is None:
        return [{"delete": {"table": family_table}}] if exists else []
    out.append({"add": {"table": family_table}})
    out.append({"delete": {"table": family_table}})
    out.append({"add": {"table": family_table}})
    base = {"family": family_table["family"], "table": family_table["name"]}
    for name in sorted(want["chains"], key=_chain_order):
        out.append({"add": {"chain": {**base, "name": name, **want["chains"][name]}}})
    for name in sorted(want["chains"], key=_chain_order):
        out.extend(
            {"add": {"rule": {**base, "chain": name, "expr": expr}}}
            for expr in want["rules"].get(name, [])
        )
    return out


def _summary(want: Table | None) -> dict[str, Any]:
    if want is None:
        return {}
    return {
        "chains": len(want["chains"]),
        "rules": sum(len(r) for r in want["rules"].values()),
    }


def converge(
    config: Iterable[Mapping[str, Any]],
    backend: Backend,
    *,
    check_mode: bool = False,
) -> Result:
    """Make every item's table what it asks for (or predict it in check mode).

    Raises FirewallError naming the item (its namespace and table) on bad input, a
    namespace missing outside check mode, or a failure of nft.
    """
    result = Result()
    seen: set[tuple[str, str]] = set()
    for index, item in enumerate(config):
        namespace, table = item.get("namespace"), item.get("table")
        if not namespace or not table:
            raise FirewallError(f"config[{index}]: namespace and table are required")
        if (namespace, table) in seen:
            raise FirewallError(f"config[{index}]: {namespace} table {table} is listed twice")
        seen.add((namespace, table))
        where = f"{namespace}: table {FAMILY} {table}"
        try:
            want = wanted(item)
        except FirewallError as exc:
            raise FirewallError(f"{where}: {exc}") from exc
        if backend.has_namespace(namespace):
            have = canonical(backend.ruleset(namespace), table)
        elif want is None:
            continue  # nothing can be there
        elif check_mode:
            result.warnings.append(
                f"namespace {namespace} does not exist (yet): table {table} predicted on an "
                "empty namespace"
            )
            have = None
        else:
            raise FirewallError(f"{where}: namespace {namespace} does not exist")
        if _comparable(have) == _comparable(want):
            continue
        action = "delete" if want is None else ("create" if have is None else "replace")
        result.changed = True
        result.changes.append(
            {"action": action, "object": "nft_table", "name": table, "namespace": namespace,
             "details": _summary(want)}
        )  # fmt: skip
        before, after = render(table, have), render(table, want)
        result.before.append({"namespace": namespace, "table": table, "ruleset": before})
        result.after.append({"namespace": namespace, "table": table, "ruleset": after})
        result.diff.append(
            {"before": before, "after": after,
             "before_header": f"{namespace}: {FAMILY} {table}",
             "after_header": f"{namespace}: {FAMILY} {table}"}
        )  # fmt: skip
        if check_mode:
            continue
        family_table = {"family": FAMILY, "name": table}
        backend.apply(namespace, _commands(family_table, want, have is not None))
        got = canonical(backend.ruleset(namespace), table)
        if _comparable(got) != _comparable(want):
            result.warnings.append(
                f"{where}: nft reads the table back differently from what was written; "
                "the next run will report a change again"
            )
    return result
