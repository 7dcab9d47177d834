# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""dnsmasq per tenant network: configuration files, leases and process control.

Neutron's model (neutron/agent/linux/dhcp.py): one dnsmasq per network, running inside
the network's DHCP namespace, listening only on the namespace's leg on the network's
bridge. Every instance owns a state directory ``STATE_ROOT/<name>/``:

- ``dnsmasq.conf``  generated from the instance's settings; its first line records those
  settings as JSON so that the instance can be read back (``gathered``, ``merged``);
- ``hosts``         dhcp-hostsfile, one ``mac,ip,name`` line per reservation;
- ``addn_hosts``    ``ip fqdn name`` per reservation, so reserved names resolve before the
  VM ever asked for a lease;
- ``leases``        dnsmasq's lease file: kept across restarts and configuration changes
  (no NAK storm after a restart), never truncated here;
- ``pid``, ``log``  written by dnsmasq.

A change of ``dnsmasq.conf`` needs a restart; a change of ``hosts``/``addn_hosts`` only
needs SIGHUP (dnsmasq re-reads both and keeps its leases). Rendering is deterministic, so
"is anything to do" is a comparison of file contents.

DNS is for the tenant only: ``no-resolv`` and no ``server=`` line, so dnsmasq has no
upstream and never forwards a query; names of the network's domain are answered locally.

Everything except ``SystemProcesses`` is pure Python (stdlib) and unit-testable;
``SystemProcesses`` runs on the host: it reads a namespace's links and addresses with
``rtnl`` and enters the namespace (``rtnl.setns``) in the child that execs dnsmasq.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ansible_collections.multicloud.migration.plugins.module_utils import rtnl

__all__ = [
    "ACTIONS",
    "STATES",
    "STATE_ROOT",
    "Change",
    "DnsmasqError",
    "Files",
    "Processes",
    "Result",
    "SystemProcesses",
    "converge",
    "decide",
    "merge_instance",
    "normalize_instance",
    "parse_conf_settings",
    "parse_hosts",
    "parse_leases",
    "render",
]

STATE_ROOT = "/var/lib/mcm/dhcp"
NETNS_DIR = "/run/netns"
CONF = "dnsmasq.conf"
HOSTS = "hosts"
ADDN_HOSTS = "addn_hosts"
LEASES = "leases"
PID = "pid"
LOG = "log"
# The files rendered from the settings, in the order they are written.
MANAGED_FILES = (CONF, HOSTS, ADDN_HOSTS)

STATES = ("merged", "replaced", "overridden", "deleted", "gathered")
ACTIONS = ("write", "start", "restart", "reload", "stop", "remove")

DEFAULT_LEASE_TIME = "1h"
DEFAULT_MTU = 1450  # VXLAN over a 1500-byte underlay
MTU_MIN = 68  # RFC 2132, option 26
MTU_MAX = 65535
SETTINGS_HEADER = "# multicloud.migration dnsmasq instance: "

START_TIMEOUT = 10.0  # dnsmasq's own start, then its pid file
STOP_TIMEOUT = 5.0  # after SIGTERM, before SIGKILL
KILL_TIMEOUT = 2.0  # after SIGKILL
RELOAD_TIMEOUT = 2.0  # SIGHUP until the log shows the reservations read again
POLL_INTERVAL = 0.01
LOG_TAIL_LINES = 20
LOG_TAIL_BYTES = 16384

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_IFNAME_RE = re.compile(r"^[^\s/:]{1,15}$")
_LABEL_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_LEASE_TIME_RE = re.compile(r"^(infinite|\d+[smhdw]?)$")
_LEASE_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
LEASE_TIME_MIN = 120  # dnsmasq silently raises shorter leases to 2 minutes


class DnsmasqError(Exception):
    """Something about one instance cannot be done; the message names the instance."""

    def __init__(self, instance: str | None, message: str) -> None:
        self.instance = instance
        self.reason = message
        super().__init__(f"dnsmasq instance {instance!r}: {message}" if instance else message)


# --------------------------------------------------------------------------- settings


def _fail(name: str | None, message: str) -> DnsmasqError:
    return DnsmasqError(name, message)


def _address(name: str | None, key: str, value: Any, subnet: ipaddress.IPv4Network) -> str:
    try:
        address = ipaddress.IPv4Address(str(value))
    except ValueError:
        raise _fail(name, f"{key}: {value!r} is not an IPv4 address") from None
    if address not in subnet:
        raise _fail(name, f"{key}: {address} is outside the subnet {subnet}")
    if subnet.prefixlen < 31 and address in (subnet.network_address, subnet.broadcast_address):
        raise _fail(name, f"{key}: {address} is the network or broadcast address of {subnet}")
    return str(address)


def _dns_name(name: str | None, key: str, value: Any) -> str:
    text = str(value).rstrip(".").lower()
    labels = text.split(".")
    if not text or len(text) > 253 or not all(_LABEL_RE.match(label) for label in labels):
        raise _fail(name, f"{key}: {value!r} is not a valid DNS name")
    return text


def _lease_seconds(value: str) -> int | None:
    if value == "infinite":
        return None
    unit = value[-1] if value[-1] in _LEASE_UNIT_SECONDS else "s"
    number = value[:-1] if value[-1] in _LEASE_UNIT_SECONDS else value
    return int(number) * _LEASE_UNIT_SECONDS[unit]


def normalize_instance(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Validated, canonical settings of one instance, defaults applied.

    Raises DnsmasqError naming the instance and the offending key. The result is what
    ``render`` consumes and what the settings line of ``dnsmasq.conf`` records.
    """
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise _fail(
            str(name) if name else None,
            "name: must be 1-128 characters of letters, digits, '_', '.', '-', "
            "starting with a letter or digit",
        )
    for key in ("namespace", "interface", "server", "subnet"):
        if raw.get(key) in (None, ""):
            raise _fail(name, f"{key}: is required")
    namespace = str(raw["namespace"])
    if "/" in namespace or namespace in (".", ".."):
        raise _fail(name, f"namespace: {namespace!r} is not a namespace name")
    interface = str(raw["interface"])
    if not _IFNAME_RE.match(interface):
        raise _fail(name, f"interface: {interface!r} is not an interface name (max 15 bytes)")
    try:
        subnet = ipaddress.IPv4Network(str(raw["subnet"]), strict=True)
    except ValueError as exc:
        raise _fail(name, f"subnet: {raw['subnet']!r} is not an IPv4 CIDR ({exc})") from None
    if subnet.prefixlen > 30:
        raise _fail(name, f"subnet: {subnet} is too small for DHCP (at most /30)")
    server = _address(name, "server", raw["server"], subnet)

    dhcp_range = raw.get("range")
    if dhcp_range is not None:
        if not isinstance(dhcp_range, Sequence) or isinstance(dhcp_range, (str, bytes)):
            raise _fail(name, "range: must be a list [first, last]")
        if len(dhcp_range) != 2:
            raise _fail(name, f"range: must be [first, last], got {len(dhcp_range)} items")
        first = _address(name, "range[0]", dhcp_range[0], subnet)
        last = _address(name, "range[1]", dhcp_range[1], subnet)
        if ipaddress.IPv4Address(first) > ipaddress.IPv4Address(last):
            raise _fail(name, f"range: first {first} is after last {last}")
        if (
            ipaddress.IPv4Address(first)
            <= ipaddress.IPv4Address(server)
            <= ipaddress.IPv4Address(last)
        ):
            raise _fail(name, f"range: {first}-{last} contains the server address {server}")
        dhcp_range = [first, last]

    lease_time = str(raw.get("lease_time") or DEFAULT_LEASE_TIME).strip().lower()
    if not _LEASE_TIME_RE.match(lease_time):
        raise _fail(
            name, f"lease_time: {lease_time!r} must be 'infinite' or a number with s, m, h, d, w"
        )
    seconds = _lease_seconds(lease_time)
    if seconds is not None and seconds < LEASE_TIME_MIN:
        raise _fail(name, f"lease_time: {lease_time} is shorter than dnsmasq's minimum of 2m")

    gateway = raw.get("gateway")
    if gateway is not None:
        gateway = _address(name, "gateway", gateway, subnet)
        if gateway == server:
            raise _fail(name, f"gateway: {gateway} is the DHCP server's own address")

    mtu = raw.get("mtu")
    mtu = DEFAULT_MTU if mtu is None else mtu
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not MTU_MIN <= mtu <= MTU_MAX:
        raise _fail(name, f"mtu: {mtu!r} must be an integer in {MTU_MIN}..{MTU_MAX}")

    domain = raw.get("domain")
    if domain is not None:
        domain = _dns_name(name, "domain", domain)

    dns = raw.get("dns")
    dns = True if dns is None else dns
    if not isinstance(dns, bool):
        raise _fail(name, f"dns: {dns!r} must be true or false")

    hosts = _normalize_hosts(name, raw.get("hosts") or [], subnet, server, gateway)
    return {
        "name": name,
        "namespace": namespace,
        "interface": interface,
        "server": server,
        "subnet": str(subnet),
        "range": dhcp_range,
        "lease_time": lease_time,
        "gateway": gateway,
        "mtu": mtu,
        "domain": domain,
        "dns": dns,
        "hosts": hosts,
    }


def _normalize_hosts(
    name: str,
    hosts: Iterable[Any],
    subnet: ipaddress.IPv4Network,
    server: str,
    gateway: str | None,
) -> list[dict[str, str]]:
    result: list[dict[str, str]] = []
    seen: dict[str, dict[str, int]] = {"mac": {}, "ip": {}, "name": {}}
    for index, host in enumerate(hosts):
        where = f"hosts[{index}]"
        if not isinstance(host, Mapping):
            raise _fail(name, f"{where}: must be a mapping with mac, ip and name")
        mac = str(host.get("mac") or "").strip().lower().replace("-", ":")
        if not _MAC_RE.match(mac):
            raise _fail(name, f"{where}.mac: {host.get('mac')!r} is not a MAC address")
        if int(mac[:2], 16) & 1:
            raise _fail(name, f"{where}.mac: {mac} is a multicast address")
        ip = _address(name, f"{where}.ip", host.get("ip"), subnet)
        if ip in (server, gateway):
            role = "DHCP server" if ip == server else "gateway"
            raise _fail(name, f"{where}.ip: {ip} is the {role} address")
        host_name = str(host.get("name") or "")
        if not _LABEL_RE.match(host_name):
            raise _fail(name, f"{where}.name: {host_name!r} is not a valid host name (one label)")
        host_name = host_name.lower()
        entry = {"mac": mac, "ip": ip, "name": host_name}
        for key, value in entry.items():
            other = seen[key].setdefault(value, index)
            if other != index:
                raise _fail(name, f"{where}.{key}: {value} is also used by hosts[{other}]")
        result.append(entry)
    return sorted(result, key=lambda h: (int(ipaddress.IPv4Address(h["ip"])), h["mac"]))


def merge_instance(have: Mapping[str, Any] | None, given: Mapping[str, Any]) -> dict[str, Any]:
    """Settings of state=merged: ``given`` over ``have``; unset (None) keys are kept.

    Reservations are merged by MAC: a given reservation replaces the one with the same
    MAC and is added otherwise; reservations are only removed by replaced/overridden.
    """
    merged: dict[str, Any] = dict(have or {})
    for key, value in given.items():
        if key == "hosts" or value is None:
            continue
        merged[key] = value
    hosts: dict[str, Mapping[str, Any]] = {
        str(h.get("mac", "")).lower(): h for h in merged.get("hosts") or []
    }
    for host in given.get("hosts") or []:
        if isinstance(host, Mapping):
            hosts[str(host.get("mac", "")).strip().lower().replace("-", ":")] = host
        else:  # let normalize_instance report it
            hosts[repr(host)] = host
    merged["hosts"] = list(hosts.values())
    return normalize_instance(merged)


# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Files:
    """The three rendered files of an instance."""

    conf: str
    hosts: str
    addn_hosts: str

    def as_dict(self) -> dict[str, str]:
        return {CONF: self.conf, HOSTS: self.hosts, ADDN_HOSTS: self.addn_hosts}


def instance_dir(name: str, root: str = STATE_ROOT) -> str:
    return os.path.join(root, name)


def _settings(instance: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in instance.items() if key != "hosts"}


def render(instance: Mapping[str, Any], root: str = STATE_ROOT) -> Files:
    """The files of a normalized instance; the same settings always give the same bytes."""
    directory = instance_dir(instance["name"], root)
    subnet = ipaddress.IPv4Network(instance["subnet"])
    netmask = str(subnet.netmask)
    lease_time = instance["lease_time"]
    domain = instance["domain"]
    settings = json.dumps(_settings(instance), sort_keys=True, separators=(",", ":"))
    lines = [
        f"{SETTINGS_HEADER}{settings}",
        "# Generated by multicloud.migration.dnsmasq: do not edit. Reservations live in",
        "# 'hosts' and 'addn_hosts' (re-read on SIGHUP); 'leases' survives restarts.",
        # DNS: local names only, never forwarded anywhere.
        "no-resolv",
        "no-hosts",
        "domain-needed",
        "bogus-priv",
        f"port={53 if instance['dns'] else 0}",
        # Listen only on the leg inside the namespace.
        "bind-interfaces",
        f"interface={instance['interface']}",
        "except-interface=lo",
        # DHCP: this server owns the subnet; the lease file says who has which address,
        # so no ICMP probe (it delays every new lease by up to 3 s).
        "dhcp-authoritative",
        "no-ping",
    ]
    if instance["range"]:
        first, last = instance["range"]
        lines.append(f"dhcp-range={first},{last},{netmask},{lease_time}")
    else:
        lines.append(f"dhcp-range={subnet.network_address},static,{netmask},{lease_time}")
    # An option without a value is sent as "none": dnsmasq would otherwise offer itself
    # as router (and as DNS server when DNS is off).
    router = f",{instance['gateway']}" if instance["gateway"] else ""
    dns_server = f",{instance['server']}" if instance["dns"] else ""
    lines.append(f"dhcp-option=option:router{router}")
    lines.append(f"dhcp-option=option:dns-server{dns_server}")
    lines.append(f"dhcp-option=option:mtu,{instance['mtu']}")
    if domain:
        lines += [f"domain={domain}", f"local=/{domain}/"]
    lines += [
        f"dhcp-leasefile={os.path.join(directory, LEASES)}",
        f"dhcp-hostsfile={os.path.join(directory, HOSTS)}",
        f"addn-hosts={os.path.join(directory, ADDN_HOSTS)}",
        f"pid-file={os.path.join(directory, PID)}",
        f"log-facility={os.path.join(directory, LOG)}",
        "log-dhcp",
    ]
    hosts = instance["hosts"]
    hosts_lines = [f"{h['mac']},{h['ip']},{h['name']}" for h in hosts]
    addn_lines = [
        f"{h['ip']} {h['name']}.{domain} {h['name']}" if domain else f"{h['ip']} {h['name']}"
        for h in hosts
    ]
    return Files(
        conf="\n".join(lines) + "\n",
        hosts="".join(line + "\n" for line in hosts_lines),
        addn_hosts="".join(line + "\n" for line in addn_lines),
    )


# --------------------------------------------------------------------------- parsing


def parse_conf_settings(text: str | None) -> dict[str, Any] | None:
    """The settings recorded on the first line of a rendered dnsmasq.conf, or None."""
    if not text or not text.startswith(SETTINGS_HEADER):
        return None
    first = text.split("\n", 1)[0][len(SETTINGS_HEADER) :]
    try:
        settings = json.loads(first)
    except ValueError:
        return None
    return settings if isinstance(settings, dict) else None


def parse_hosts(text: str | None) -> list[dict[str, str]]:
    """Reservations of a dhcp-hostsfile written by ``render`` (``mac,ip,name`` lines)."""
    hosts = []
    for line in (text or "").splitlines():
        parts = line.strip().split(",")
        if len(parts) == 3 and not line.startswith("#"):
            hosts.append({"mac": parts[0], "ip": parts[1], "name": parts[2]})
    return hosts


def parse_leases(text: str | None) -> list[dict[str, Any]]:
    """IPv4 leases of a dnsmasq lease file.

    Each line is ``expiry mac ip hostname client-id``; ``*`` stands for "none" and an
    expiry of 0 for an infinite lease (returned as None). The ``duid`` line and DHCPv6
    leases are skipped, and so are lines that do not parse.
    """
    leases = []
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) != 5 or parts[0] == "duid":
            continue
        expiry, mac, ip, hostname, client_id = parts
        try:
            expires = int(expiry)
            ipaddress.IPv4Address(ip)
        except ValueError:
            continue
        leases.append(
            {
                "expiry": expires or None,
                "mac": mac.lower(),
                "ip": ip,
                "hostname": None if hostname == "*" else hostname,
                "client_id": None if client_id == "*" else client_id,
            }
        )
    return leases


# --------------------------------------------------------------------------- decisions


@dataclass
class Change:
    """One thing done (or, in check mode, to be done) to an instance."""

    instance: str
    action: str
    reason: str
    files: list[str] = field(default_factory=list)
    pid: int | None = None
    seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "instance": self.instance,
            "action": self.action,
            "reason": self.reason,
        }
        if self.files:
            result["files"] = list(self.files)
        if self.pid is not None:
            result["pid"] = self.pid
        if self.seconds is not None:
            result["seconds"] = round(self.seconds, 6)
        return result


def decide(
    name: str,
    want: Files,
    have: Mapping[str, str | None],
    pid: int | None,
    *,
    in_namespace: bool = True,
) -> list[Change]:
    """What to do to get from the files on disk and the process (``pid``) to ``want``.

    dnsmasq.conf differs and dnsmasq runs: restart. Only the reservation files differ:
    reload (SIGHUP). dnsmasq not running: start, whatever changed. dnsmasq runs, but not
    in the namespace that now has the configured name (``in_namespace`` false: the
    namespace was deleted and created again): restart. Else nothing.
    """
    wanted = want.as_dict()
    stale = [f for f in MANAGED_FILES if have.get(f) != wanted[f]]
    changes = []
    if stale:
        new = have.get(CONF) is None
        changes.append(
            Change(name, "write", "new instance" if new else f"{', '.join(stale)} changed", stale)
        )
    if pid is None:
        reason = "new instance" if have.get(CONF) is None else "dnsmasq is not running"
        changes.append(Change(name, "start", reason))
    elif CONF in stale:
        changes.append(Change(name, "restart", f"{CONF} changed", pid=pid))
    elif not in_namespace:
        reason = "dnsmasq runs in an older network namespace of that name (re-created)"
        changes.append(Change(name, "restart", reason, pid=pid))
    elif stale:
        changes.append(
            Change(name, "reload", "reservations changed: SIGHUP re-reads them", pid=pid)
        )
    return changes


# --------------------------------------------------------------------------- processes


class Processes(Protocol):
    """What converge needs from the host; SystemProcesses is the real one."""

    def running_pid(self, directory: str) -> int | None: ...

    def check_network(self, instance: Mapping[str, Any]) -> None: ...

    def in_namespace(self, pid: int, namespace: str) -> bool: ...

    def start(self, instance: Mapping[str, Any], directory: str) -> int: ...

    def stop(self, pid: int, directory: str) -> None: ...

    def reload(self, pid: int, directory: str) -> bool: ...


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def log_tail(directory: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of an instance's log (empty when there is none)."""
    path = os.path.join(directory, LOG)
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - LOG_TAIL_BYTES))
            data = handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


class SystemProcesses:
    """dnsmasq processes on this host, each started inside its network namespace."""

    def __init__(self, dnsmasq: str = "dnsmasq", netns_dir: str = NETNS_DIR) -> None:
        self.dnsmasq = dnsmasq
        self.netns_dir = netns_dir

    @staticmethod
    def _cmdline(pid: int) -> list[str]:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                return handle.read().decode(errors="replace").split("\0")
        except OSError:  # gone, or not ours to read
            return []

    def _is_ours(self, pid: int, directory: str) -> bool:
        # An exited daemon (zombie) has an empty cmdline; a recycled pid has another one.
        return f"--conf-file={os.path.join(directory, CONF)}" in self._cmdline(pid)

    def running_pid(self, directory: str) -> int | None:
        text = _read(os.path.join(directory, PID))
        try:
            pid = int((text or "").strip())
        except ValueError:
            return None
        return pid if pid > 0 and self._is_ours(pid, directory) else None

    def check_network(self, instance: Mapping[str, Any]) -> None:
        name, namespace, interface = instance["name"], instance["namespace"], instance["interface"]
        path = os.path.join(self.netns_dir, namespace)
        if not os.path.exists(path):
            raise DnsmasqError(name, f"network namespace {namespace!r} does not exist")
        # two small dumps over a plain netlink socket (rtnl)
        sock = rtnl.open_socket_in(path)
        try:
            indexes = [m["index"] for m in rtnl.dump(sock, "link", seq=1)
                       if m.get_attr("IFLA_IFNAME") == interface]  # fmt: skip
            if not indexes:
                raise DnsmasqError(
                    name, f"interface {interface!r} does not exist in namespace {namespace!r}"
                )
            addresses = {
                m.get_attr("IFA_ADDRESS")
                for m in rtnl.dump(sock, "addr", socket.AF_INET, seq=2)
                if m["index"] == indexes[0]
            }
        finally:
            sock.close()
        if instance["server"] not in addresses:
            raise DnsmasqError(
                name,
                f"server address {instance['server']} is not configured on interface "
                f"{interface!r} in namespace {namespace!r}",
            )

    def start(self, instance: Mapping[str, Any], directory: str) -> int:
        name, namespace = instance["name"], instance["namespace"]
        pid_path = os.path.join(directory, PID)
        if os.path.exists(pid_path):
            os.unlink(pid_path)
        try:
            ns_fd = os.open(os.path.join(self.netns_dir, namespace), os.O_RDONLY)
        except FileNotFoundError:
            raise DnsmasqError(name, f"network namespace {namespace!r} does not exist") from None

        def enter_namespace() -> None:  # in the child, between fork and exec
            rtnl.setns(ns_fd)

        argv = [self.dnsmasq, f"--conf-file={os.path.join(directory, CONF)}"]
        try:
            with tempfile.TemporaryFile() as stderr:
                try:
                    # dnsmasq daemonises; its first process exits once the daemon is set up
                    # (status 0) or failed (status and message on stderr). Nothing of ours
                    # (stdout is the module's pipe) may stay open in the daemon.
                    proc = subprocess.run(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=stderr,
                        cwd="/",
                        preexec_fn=enter_namespace,  # the module is single-threaded
                        timeout=START_TIMEOUT,
                        check=False,
                    )
                except subprocess.TimeoutExpired:
                    raise DnsmasqError(
                        name,
                        self._failure(
                            f"dnsmasq did not start within {START_TIMEOUT:g}s", "", directory
                        ),
                    ) from None
                except subprocess.SubprocessError as exc:  # the child's setns was refused
                    raise DnsmasqError(
                        name, f"cannot start dnsmasq inside namespace {namespace!r}: {exc}"
                    ) from None
                stderr.seek(0)
                message = stderr.read().decode(errors="replace").strip()
        finally:
            os.close(ns_fd)
        if proc.returncode != 0:
            raise DnsmasqError(
                name,
                self._failure(
                    f"dnsmasq failed to start (exit {proc.returncode})", message, directory
                ),
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            pid = self.running_pid(directory)
            if pid is not None:
                return pid
            time.sleep(POLL_INTERVAL)
        raise DnsmasqError(
            name,
            self._failure(
                f"dnsmasq wrote no pid file within {START_TIMEOUT:g}s", message, directory
            ),
        )

    @staticmethod
    def _failure(what: str, stderr: str, directory: str) -> str:
        parts = [what]
        if stderr:
            parts.append(f"stderr: {stderr}")
        tail = log_tail(directory)
        if tail:
            parts.append(f"last lines of {os.path.join(directory, LOG)}:\n{tail}")
        return "; ".join(parts)

    def _wait_gone(self, pid: int, directory: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._is_ours(pid, directory):
                return True
            time.sleep(POLL_INTERVAL)
        return not self._is_ours(pid, directory)

    def stop(self, pid: int, directory: str) -> None:
        for sig, timeout in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, KILL_TIMEOUT)):
            if not self._is_ours(pid, directory):
                break
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            if self._wait_gone(pid, directory, timeout):
                break
        else:
            raise DnsmasqError(
                os.path.basename(directory), f"dnsmasq (pid {pid}) survived SIGTERM and SIGKILL"
            )
        try:
            os.unlink(os.path.join(directory, PID))
        except FileNotFoundError:
            pass

    def in_namespace(self, pid: int, namespace: str) -> bool:
        try:
            running = os.stat(f"/proc/{pid}/ns/net")
            named = os.stat(os.path.join(self.netns_dir, namespace))
        except OSError:
            return False
        return (running.st_dev, running.st_ino) == (named.st_dev, named.st_ino)

    def reload(self, pid: int, directory: str) -> bool:
        """SIGHUP, then wait (bounded) until the log says the hosts file was read again."""
        log = os.path.join(directory, LOG)
        try:
            offset = os.path.getsize(log)
        except OSError:
            offset = 0
        os.kill(pid, signal.SIGHUP)
        marker = f"read {os.path.join(directory, HOSTS)}"
        deadline = time.monotonic() + RELOAD_TIMEOUT
        while True:
            try:
                with open(log, "rb") as handle:
                    if os.fstat(handle.fileno()).st_size < offset:  # truncated or rotated
                        offset = 0
                    handle.seek(offset)
                    if marker in handle.read().decode(errors="replace"):
                        return True
            except FileNotFoundError:
                pass
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_INTERVAL)


# --------------------------------------------------------------------------- state


def _write_atomic(path: str, text: str) -> None:
    # dnsmasq re-reads the hosts files on SIGHUP: it must never see half a file.
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)  # dnsmasq reads them after dropping root
    os.replace(tmp, path)


def list_instances(root: str = STATE_ROOT, scope: str | Iterable[str] | None = None) -> list[str]:
    """Names of the instances under ``root`` (directories), narrowed to name prefixes."""
    try:
        names = sorted(
            entry.name
            for entry in os.scandir(root)
            if entry.is_dir(follow_symlinks=False) and _NAME_RE.match(entry.name)
        )
    except FileNotFoundError:
        return []
    if not scope:
        return names
    prefixes = (scope,) if isinstance(scope, str) else tuple(scope)
    return [name for name in names if name.startswith(prefixes)]


def read_files(directory: str) -> dict[str, str | None]:
    return {name: _read(os.path.join(directory, name)) for name in MANAGED_FILES}


def read_instance(files: Mapping[str, str | None]) -> dict[str, Any] | None:
    """The settings and reservations an instance's files record (None when not ours)."""
    settings = parse_conf_settings(files.get(CONF))
    if settings is None:
        return None
    return {**settings, "hosts": parse_hosts(files.get(HOSTS))}


def read_leases(directory: str) -> list[dict[str, Any]]:
    return parse_leases(_read(os.path.join(directory, LEASES)))


@dataclass
class Result:
    """What converge did (or would do): the module returns these as they are."""

    changes: list[Change] = field(default_factory=list)
    diff: list[dict[str, str]] = field(default_factory=list)
    leases: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    gathered: list[dict[str, Any]] = field(default_factory=list)
    before: list[dict[str, Any]] = field(default_factory=list)
    after: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def _file_diff(directory: str, name: str, before: str | None, after: str | None) -> dict[str, str]:
    path = os.path.join(directory, name)
    return {
        "before_header": path if before is not None else f"{path} (absent)",
        "after_header": path if after is not None else f"{path} (absent)",
        "before": before or "",
        "after": after or "",
    }


def _gather(name: str, root: str, processes: Processes) -> dict[str, Any]:
    directory = instance_dir(name, root)
    pid = processes.running_pid(directory)
    return {
        "name": name,
        "directory": directory,
        "config": read_instance(read_files(directory)),
        "running": pid is not None,
        "pid": pid,
        "leases": read_leases(directory),
    }


def _delete(
    name: str, root: str, processes: Processes, result: Result, *, check_mode: bool, reason: str
) -> None:
    directory = instance_dir(name, root)
    files = read_files(directory)
    pid = processes.running_pid(directory)
    have = read_instance(files)
    if have is not None:
        result.before.append(have)
    if pid is not None:
        change = Change(name, "stop", reason, pid=pid)
        began = time.monotonic()
        if not check_mode:
            processes.stop(pid, directory)
            change.seconds = time.monotonic() - began
        result.changes.append(change)
    result.changes.append(Change(name, "remove", f"{reason}: state directory removed"))
    result.diff.extend(
        _file_diff(directory, f, text, None) for f, text in files.items() if text is not None
    )
    if not check_mode:
        shutil.rmtree(directory)


def _released_warnings(
    name: str,
    before: Sequence[Mapping[str, str]],
    after: Sequence[Mapping[str, str]],
    leases: Sequence[Mapping[str, Any]],
) -> list[str]:
    wanted = {h["mac"]: h["ip"] for h in after}
    dropped = {h["mac"]: h["ip"] for h in before if wanted.get(h["mac"]) != h["ip"]}
    held = [lease for lease in leases if dropped.get(lease["mac"]) == lease["ip"]]
    if not held or shutil.which("dhcp_release"):
        return []
    who = ", ".join(f"{lease['ip']} ({lease['mac']})" for lease in held)
    return [
        f"dnsmasq instance {name!r}: the lease of removed or changed reservation(s) {who} is "
        "not released (dhcp_release from dnsmasq-utils is not installed): it stays in the "
        "lease file until it expires; dnsmasq refuses its renewal"
    ]


def _converge_one(
    given: Mapping[str, Any],
    state: str,
    processes: Processes,
    result: Result,
    *,
    root: str,
    check_mode: bool,
) -> None:
    name = str(given.get("name"))
    directory = instance_dir(name, root)
    files = read_files(directory)
    have = read_instance(files)
    if files[CONF] is not None and have is None:
        raise DnsmasqError(
            name, f"{os.path.join(directory, CONF)} exists but was not written by this module"
        )
    want = merge_instance(have, given) if state == "merged" else normalize_instance(given)
    processes.check_network(want)
    wanted = render(want, root)
    pid = processes.running_pid(directory)
    in_namespace = pid is None or processes.in_namespace(pid, want["namespace"])
    changes = decide(name, wanted, files, pid, in_namespace=in_namespace)
    if have is not None:
        result.before.append(have)
    result.after.append(want)
    leases = read_leases(directory)
    if have is not None:
        result.warnings += _released_warnings(name, have["hosts"], want["hosts"], leases)
    for change in changes:
        if change.action == "write":
            result.diff.extend(
                _file_diff(directory, f, files[f], wanted.as_dict()[f]) for f in change.files
            )
        if check_mode:
            continue
        began = time.monotonic()
        if change.action == "write":
            os.makedirs(directory, mode=0o755, exist_ok=True)
            for f in change.files:
                _write_atomic(os.path.join(directory, f), wanted.as_dict()[f])
        elif change.action == "start":
            change.pid = processes.start(want, directory)
        elif change.action == "restart":
            if pid is None:
                raise AssertionError(f"dnsmasq instance {name!r}: restart without a running pid")
            processes.stop(pid, directory)
            change.pid = processes.start(want, directory)
        elif change.action == "reload":
            if pid is None:
                raise AssertionError(f"dnsmasq instance {name!r}: reload without a running pid")
            if not processes.reload(pid, directory):
                result.warnings.append(
                    f"dnsmasq instance {name!r}: sent SIGHUP to pid {pid}, but its log did not "
                    f"show the reservations read again within {RELOAD_TIMEOUT:g}s"
                )
        change.seconds = time.monotonic() - began
    result.changes.extend(changes)
    result.leases[name] = read_leases(directory) if not check_mode else leases


def converge(
    state: str,
    config: Sequence[Mapping[str, Any]],
    processes: Processes,
    *,
    scope: str | Iterable[str] | None = None,
    root: str = STATE_ROOT,
    check_mode: bool = False,
) -> Result:
    """Bring the instances under ``root`` to ``state`` (see the module's documentation).

    Raises DnsmasqError on the first instance that cannot be handled; what was done to
    the instances before it stays done and is lost from the report, as with any module
    that fails half-way.
    """
    if state not in STATES:
        raise DnsmasqError(None, f"state must be one of {', '.join(STATES)}, got {state!r}")
    names = [str(item.get("name")) for item in config]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DnsmasqError(duplicates[0], "listed more than once in config")
    for item in config:
        if not isinstance(item.get("name"), str) or not _NAME_RE.match(item["name"]):
            normalize_instance(item)  # raises with the reason
    existing = list_instances(root)
    in_scope = list_instances(root, scope)
    result = Result()

    if state == "gathered":
        for name in names or in_scope:
            if name in existing:
                result.gathered.append(_gather(name, root, processes))
        return result

    if state == "deleted":
        for name in names or in_scope:
            if name in existing:
                _delete(
                    name, root, processes, result, check_mode=check_mode, reason="state=deleted"
                )
        return result

    if state == "overridden":
        for name in in_scope:
            if name not in names:
                _delete(
                    name,
                    root,
                    processes,
                    result,
                    check_mode=check_mode,
                    reason="not listed (overridden)",
                )
    for item in config:
        _converge_one(item, state, processes, result, root=root, check_mode=check_mode)
    return result
