# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Open vSwitch bridges and ports as desired state, over the OVSDB protocol.

Private to the collection (used by the ovs_bridge module), not a public API.

1. ``want_bridges(params)``: the bridges and ports asked for, normalised.
2. ``read_state(idl)``: what ovsdb holds, in the same shape (python3-openvswitch's IDL).
3. ``diff_bridges(want, have)``: the list of changes. Every managed attribute is compared:
   a bridge's datapath type, fail mode and MTU; a port's bridge, interface type, every
   interface option (remote_ip, key, dst_port, local_ip, ... as one map: a drifted, extra
   or missing option is corrected), split-horizon flag (``protected``), VLAN tag and MTU.
   This is the gap of openvswitch.openvswitch, whose port module ignores changed tunnel
   options on an existing port.
4. ``apply_changes(idl, changes)``: one OVSDB transaction, then a bounded wait until
   ovs-vswitchd has applied it (``cur_cfg`` reaches the transaction's ``next_cfg``, as
   ``ovs-vsctl`` waits), then the interfaces' ``error`` column is checked.

Steps 1 and 3 are plain Python (unit tested without Open vSwitch).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

OWNER_KEY = "mcm-owner"
DEFAULT_DB = "unix:/var/run/openvswitch/db.sock"
DEFAULT_SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"

COLUMNS = {
    "Open_vSwitch": ["bridges", "next_cfg", "cur_cfg"],
    "Bridge": ["name", "ports", "datapath_type", "fail_mode", "external_ids"],
    "Port": ["name", "interfaces", "protected", "tag", "external_ids"],
    "Interface": ["name", "type", "options", "mtu_request", "error", "ofport"],
}


class OvsdbError(Exception):
    """A failure with the changes planned so far (reported with the error)."""

    def __init__(self, msg: str, changes: list[dict[str, Any]] | None = None) -> None:
        super().__init__(msg)
        self.changes = changes or []


# --- 1. want -------------------------------------------------------------------------


def _options(value: Mapping[str, Any] | None) -> dict[str, str]:
    # ovsdb stores every option as a string; 4790 and "4790" are the same option.
    out = {}
    for key, item in (value or {}).items():
        out[str(key)] = str(item).lower() if isinstance(item, bool) else str(item)
    return out


def want_bridges(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The bridges of the module's arguments, normalised; raises OvsdbError on bad input."""
    out = []
    seen_ports: dict[str, str] = {}
    for bridge in params.get("bridges") or []:
        name = bridge["name"]
        ports = []
        for port in bridge.get("ports") or []:
            if port["name"] == name:
                raise OvsdbError(f"bridge {name}: port {name} is the bridge's own port")
            if port["name"] in seen_ports:
                raise OvsdbError(
                    f"port {port['name']} is listed twice (bridges {seen_ports[port['name']]}"
                    f" and {name})"
                )
            seen_ports[port["name"]] = name
            ports.append({
                "name": port["name"],
                "type": port.get("type") or "",
                "options": _options(port.get("options")),
                "protected": bool(port.get("protected")),
                "tag": port.get("tag"),
                "mtu": port.get("mtu"),
                "state": port.get("state") or "present",
            })  # fmt: skip
        out.append({
            "name": name,
            "state": bridge.get("state") or "present",
            "datapath_type": bridge.get("datapath_type"),
            "fail_mode": bridge.get("fail_mode"),
            "mtu": bridge.get("mtu"),
            "owner": bridge.get("owner") or "mcm:ovs",
            "ports": ports,
            "purge_ports": bool(bridge.get("purge_ports")),
        })  # fmt: skip
    return out


# --- 3. diff -------------------------------------------------------------------------


def _port_have_values(port: Mapping[str, Any]) -> dict[str, Any]:
    return {key: port.get(key) for key in ("type", "options", "protected", "tag", "mtu")}


def diff_bridges(want: list[dict[str, Any]], have: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Changes that make ovsdb hold ``want``; ``have`` is read_state()'s result.

    A change is ``{action, object, name, bridge, details}``; ``details`` of an update maps
    each differing attribute to ``[have, want]``. Removals come first.
    """
    removals: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    port_home = {p: b for b, data in have.items() for p in data["ports"]}
    for bridge in want:
        name = bridge["name"]
        current = have.get(name)
        if bridge["state"] == "absent":
            if current is not None:
                removals.append({"action": "delete", "object": "bridge", "name": name,
                                 "bridge": name, "details": {}})  # fmt: skip
            continue
        if current is None:
            details = {k: bridge[k] for k in ("datapath_type", "fail_mode", "mtu", "owner")
                       if bridge[k] is not None}  # fmt: skip
            others.append({"action": "create", "object": "bridge", "name": name,
                           "bridge": name, "details": details})  # fmt: skip
            current = {"ports": {}, "datapath_type": "", "fail_mode": None, "mtu": None}
        else:
            details = {}
            for key in ("datapath_type", "fail_mode", "mtu"):
                if bridge[key] is not None and bridge[key] != current.get(key):
                    details[key] = [current.get(key), bridge[key]]
            if details:
                others.append({"action": "update", "object": "bridge", "name": name,
                               "bridge": name, "details": details})  # fmt: skip
        listed = set()
        for port in bridge["ports"]:
            listed.add(port["name"])
            home = port_home.get(port["name"])
            if port["state"] == "absent":
                if home == name:
                    removals.append({"action": "delete", "object": "port", "name": port["name"],
                                     "bridge": name, "details": {}})  # fmt: skip
                continue
            values = {k: port[k] for k in ("type", "options", "protected", "tag", "mtu")}
            if home is None:
                others.append({"action": "create", "object": "port", "name": port["name"],
                               "bridge": name, "details": values})  # fmt: skip
                continue
            if home != name:
                # A port lives on one bridge: moving it is delete + create.
                removals.append({"action": "delete", "object": "port", "name": port["name"],
                                 "bridge": home, "details": {"moved_to": name}})  # fmt: skip
                others.append({"action": "create", "object": "port", "name": port["name"],
                               "bridge": name, "details": values})  # fmt: skip
                continue
            old = _port_have_values(have[name]["ports"][port["name"]])
            details = {}
            for key, value in values.items():
                if key == "mtu" and value is None:
                    continue  # not managed when not given
                if value != old[key]:
                    details[key] = [old[key], value]
            if details:
                others.append({"action": "update", "object": "port", "name": port["name"],
                               "bridge": name, "details": details})  # fmt: skip
        if bridge["purge_ports"] and name in have:
            for port_name, port in sorted(have[name]["ports"].items()):
                if port_name not in listed and port.get("owner"):
                    removals.append({"action": "delete", "object": "port", "name": port_name,
                                     "bridge": name, "details": {"purged": True}})  # fmt: skip
    return removals + others


def predict(have: Mapping[str, Any], changes: list[dict[str, Any]], want: list[dict[str, Any]]
            ) -> dict[str, Any]:  # fmt: skip
    """The state after ``changes`` (the module's ``after`` in check mode)."""
    after = {b: {**data, "ports": dict(data["ports"])} for b, data in have.items()}
    wanted = {b["name"]: b for b in want}
    for change in changes:
        bridge, name = change["bridge"], change["name"]
        if change["object"] == "bridge":
            if change["action"] == "delete":
                after.pop(name, None)
            else:
                w = wanted[name]
                base = after.get(name) or {"ports": {}, "owner": w["owner"]}
                base.update({k: w[k] for k in ("datapath_type", "fail_mode", "mtu")
                             if w[k] is not None})  # fmt: skip
                after[name] = base
        elif change["action"] == "delete":
            after.get(bridge, {"ports": {}})["ports"].pop(name, None)
        else:
            w = next(p for p in wanted[bridge]["ports"] if p["name"] == name)
            port = dict(after[bridge]["ports"].get(name) or {"owner": wanted[bridge]["owner"]})
            port.update({k: w[k] for k in ("type", "options", "protected", "tag")})
            if w["mtu"] is not None:
                port["mtu"] = w["mtu"]
            after[bridge]["ports"][name] = port
    return after


def diff_text(state: Mapping[str, Any]) -> str:
    """One line per bridge and port, for Ansible's --diff."""
    lines = []
    for name, bridge in sorted(state.items()):
        lines.append(f"bridge {name} datapath_type={bridge.get('datapath_type') or 'system'}"
                     f" mtu={bridge.get('mtu')}")  # fmt: skip
        for port_name, port in sorted(bridge["ports"].items()):
            opts = ",".join(f"{k}={v}" for k, v in sorted(port["options"].items()))
            lines.append(f"  port {port_name} type={port['type'] or 'system'}"
                         f" protected={str(port['protected']).lower()} tag={port['tag']}"
                         f" mtu={port.get('mtu')} options={{{opts}}}")  # fmt: skip
    return "\n".join(lines) + ("\n" if lines else "")


# --- 2 and 4. the IDL ---------------------------------------------------------------


def _one(value: Any) -> Any:
    # optional columns (min 0, max 1) come back as a list of zero or one element
    if isinstance(value, list):
        return value[0] if value else None
    return value


def connect(db: str, schema: str, timeout: float) -> Any:
    """An IDL over the Open_vSwitch database, synchronised (bounded by ``timeout``)."""
    import ovs.db.idl
    import ovs.poller

    helper = ovs.db.idl.SchemaHelper(location=schema)
    for table, columns in COLUMNS.items():
        helper.register_columns(table, columns)
    idl = ovs.db.idl.Idl(db, helper)
    deadline = time.monotonic() + timeout
    seqno = idl.change_seqno
    while True:
        idl.run()
        if idl.change_seqno != seqno and idl.has_ever_connected():
            return idl
        if time.monotonic() > deadline:
            idl.close()
            raise OvsdbError(f"no answer from ovsdb-server at {db} within {timeout:.0f} s:"
                             " is Open vSwitch running?")  # fmt: skip
        poller = ovs.poller.Poller()
        idl.wait(poller)
        poller.timer_wait(200)
        poller.block()


def read_state(idl: Any) -> dict[str, Any]:
    """{bridge: {datapath_type, fail_mode, mtu, owner, ports: {port: {...}}}}."""
    out: dict[str, Any] = {}
    for bridge in idl.tables["Bridge"].rows.values():
        ports = {}
        mtu = None
        for port in bridge.ports:
            iface = port.interfaces[0] if port.interfaces else None
            if port.name == bridge.name:
                mtu = _one(iface.mtu_request) if iface else None
                continue
            ports[port.name] = {
                "type": iface.type if iface else "",
                "options": dict(iface.options) if iface else {},
                "protected": bool(port.protected),
                "tag": _one(port.tag),
                "mtu": _one(iface.mtu_request) if iface else None,
                "owner": dict(port.external_ids).get(OWNER_KEY),
                "ofport": _one(iface.ofport) if iface else None,
                "error": _one(iface.error) if iface else None,
            }
        out[bridge.name] = {
            "datapath_type": bridge.datapath_type,
            "fail_mode": _one(bridge.fail_mode),
            "mtu": mtu,
            "owner": dict(bridge.external_ids).get(OWNER_KEY),
            "ports": ports,
        }
    return out


def _find(idl: Any, table: str, name: str) -> Any:
    for row in idl.tables[table].rows.values():
        if row.name == name:
            return row
    return None


def _set_port(txn: Any, port: Any, iface: Any, values: Mapping[str, Any]) -> None:
    if "type" in values:
        iface.type = values["type"]
    if "options" in values:
        iface.options = values["options"]
    if values.get("mtu") is not None:
        iface.mtu_request = [values["mtu"]]
    if "protected" in values:
        port.protected = values["protected"]
    if "tag" in values:
        port.tag = [] if values["tag"] is None else [values["tag"]]


def _new_port(txn: Any, idl: Any, name: str, owner: str, values: Mapping[str, Any]) -> Any:
    iface = txn.insert(idl.tables["Interface"])
    iface.name = name
    port = txn.insert(idl.tables["Port"])
    port.name = name
    port.interfaces = [iface]
    port.external_ids = {OWNER_KEY: owner}
    _set_port(txn, port, iface, values)
    return port


def apply_changes(idl: Any, want: list[dict[str, Any]], changes: list[dict[str, Any]],
                  timeout: float) -> None:  # fmt: skip
    """Apply ``changes`` in one transaction and wait until ovs-vswitchd applied them."""
    import ovs.db.idl
    import ovs.poller

    wanted = {b["name"]: b for b in want}
    txn = ovs.db.idl.Transaction(idl)
    root = next(iter(idl.tables["Open_vSwitch"].rows.values()))
    new_bridges: dict[str, Any] = {}

    def bridge_row(name: str) -> Any:
        return new_bridges.get(name) or _find(idl, "Bridge", name)

    for change in changes:
        obj, action, name = change["object"], change["action"], change["name"]
        if obj == "bridge" and action == "delete":
            row = _find(idl, "Bridge", name)
            root.delvalue("bridges", row.uuid)
            row.delete()
        elif obj == "bridge":
            w = wanted[name]
            if action == "create":
                row = txn.insert(idl.tables["Bridge"])
                row.name = name
                row.external_ids = {OWNER_KEY: w["owner"]}
                own = _new_port(txn, idl, name, w["owner"], {"type": "internal", "mtu": w["mtu"]})
                row.ports = [own]
                root.addvalue("bridges", row.uuid)
                new_bridges[name] = row
            else:
                row = _find(idl, "Bridge", name)
            if w["datapath_type"] is not None:
                row.datapath_type = w["datapath_type"]
            if w["fail_mode"] is not None:
                row.fail_mode = [w["fail_mode"]]
            if action == "update" and w["mtu"] is not None:
                own = _find(idl, "Interface", name)
                own.mtu_request = [w["mtu"]]
        elif action == "delete":
            row = _find(idl, "Bridge", change["bridge"])
            port = _find(idl, "Port", name)
            row.delvalue("ports", port.uuid)
            port.delete()
        else:
            w = next(p for p in wanted[change["bridge"]]["ports"] if p["name"] == name)
            if action == "create":
                port = _new_port(txn, idl, name, wanted[change["bridge"]]["owner"], w)
                bridge_row(change["bridge"]).addvalue("ports", port.uuid)
            else:
                port = _find(idl, "Port", name)
                iface = port.interfaces[0]
                _set_port(txn, port, iface, {k: v[1] for k, v in change["details"].items()})
    root.increment("next_cfg")  # ovs-vswitchd copies it to cur_cfg once applied
    deadline = time.monotonic() + timeout
    while True:
        status = txn.commit()
        if status != ovs.db.idl.Transaction.INCOMPLETE:
            break
        if time.monotonic() > deadline:
            txn.abort()
            raise OvsdbError(f"ovsdb did not commit within {timeout:.0f} s", changes)
        idl.run()
        poller = ovs.poller.Poller()
        idl.wait(poller)
        txn.wait(poller)
        poller.timer_wait(200)
        poller.block()
    if status not in (ovs.db.idl.Transaction.SUCCESS, ovs.db.idl.Transaction.UNCHANGED):
        raise OvsdbError(f"ovsdb transaction {status}: {txn.get_error()}", changes)
    next_cfg = txn.get_increment_new_value()
    while next_cfg is not None and next_cfg >= 0:
        idl.run()
        if (root.cur_cfg or 0) >= next_cfg:
            break
        if time.monotonic() > deadline:
            raise OvsdbError(f"ovs-vswitchd did not apply the changes within {timeout:.0f} s"
                             " (is it running?)", changes)  # fmt: skip
        poller = ovs.poller.Poller()
        idl.wait(poller)
        poller.timer_wait(200)
        poller.block()


def interface_errors(state: Mapping[str, Any], want: list[dict[str, Any]]) -> list[str]:
    """Errors ovs-vswitchd reported on the listed ports (a missing NIC, a bad option...)."""
    out = []
    for bridge in want:
        if bridge["state"] == "absent":
            continue
        ports = state.get(bridge["name"], {}).get("ports", {})
        for port in bridge["ports"]:
            error = ports.get(port["name"], {}).get("error")
            if port["state"] == "present" and error:
                out.append(f"port {port['name']} of bridge {bridge['name']}: {error}")
    return out


def run(params: Mapping[str, Any], check_mode: bool, diff_mode: bool) -> dict[str, Any]:
    """The module's work; its result (without ``changed`` adjustments)."""
    want = want_bridges(params)
    idl = connect(params["db"], params["schema"], params["timeout"])
    try:
        before = read_state(idl)
        changes = diff_bridges(want, before)
        if changes and not check_mode:
            apply_changes(idl, want, changes, params["timeout"])
            after = read_state(idl)
            errors = interface_errors(after, want)
            if errors:
                raise OvsdbError("; ".join(errors), changes)
        else:
            after = predict(before, changes, want)
    finally:
        idl.close()
    result: dict[str, Any] = {"changed": bool(changes), "changes": changes,
                              "before": before, "after": after}  # fmt: skip
    if diff_mode:
        result["diff"] = {"before": diff_text(before), "after": diff_text(after)}
    return result
