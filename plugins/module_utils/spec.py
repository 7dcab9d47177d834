# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The northbound spec: schema, validation, normalisation.

One YAML file describes many tenants, their networks and VMs (docs/spec.md is the
reference). This module is the only place that knows its schema:

- ``load_spec_text`` turns YAML text into data (syntax errors name the line);
- ``validate`` returns every problem of a spec, each naming the path of the offending
  value (``tenants[0].networks[1].subnet``), or an empty list;
- ``normalize`` returns a new, fully defaulted structure (addresses, VNIs, DHCP ranges,
  sizes in MiB, MACs and every derived name) that roles and modules consume as is.

Pure Python (stdlib ``ipaddress``; PyYAML only inside the loader), importable on the
controller and in unit tests without Ansible.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import math
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from .controller_task import TaskFailure
from .naming import (
    DHCP_LEG_INDEX_MAX,
    VNI_MAX,
    VNI_MIN,
    bridge_name,
    default_dns_domain,
    dhcp_leg_names,
    dhcp_namespace,
    domain_name,
    firewall_table,
    router_leg_names,
    router_mac,
    router_namespace,
    security_group_chain,
    vm_mac,
    vxlan_name,
)

__all__ = [
    "MODES",
    "PROTOCOLS",
    "STATES",
    "STORAGES",
    "TASK_ARGUMENT_SPEC",
    "TASK_OPTIONS",
    "Problem",
    "SpecError",
    "allocate_vnis",
    "load_spec_text",
    "normalize",
    "parse_size_mib",
    "spec_summary",
    "spec_task",
    "validate",
]

MODES = ("managed", "managed-novlan", "static", "system")
STATES = ("present", "absent")
# Modes whose DHCP server hands out a dynamic range (static: reservations only).
DYNAMIC_DHCP_MODES = ("managed", "managed-novlan")
DHCP_MODES = ("managed", "managed-novlan", "static")

TOP_KEYS = ("tenants", "shared_storage")
TENANT_KEYS = ("name", "networks", "floating_range", "state")
NETWORK_KEYS = (
    "name", "cloud", "subnet", "gateway", "mode", "vni", "dhcp", "security_group", "vms",
    "state",
)  # fmt: skip
DHCP_KEYS = ("enabled", "range", "domain")
VM_KEYS = (
    "name", "vcpus", "memory", "disk", "ip", "floating_ip", "image", "host", "storage",
    "state", "adopted", "mac", "domain_name",
)  # fmt: skip
SECURITY_GROUP_KEYS = ("default", "ingress")
RULE_KEYS = ("proto", "ports", "from", "action")
# Security groups (docs/security.md): what a rule matches and does, what the rest gets.
PROTOCOLS = ("tcp", "udp", "icmp", "any")
PORT_PROTOCOLS = ("tcp", "udp")
RULE_ACTIONS = ("accept", "drop")
SECURITY_GROUP_DEFAULTS = ("drop", "accept")
PORT_MAX = 65535
_PORTS_RE = re.compile(r"^\s*(\d{1,5})\s*(?:-\s*(\d{1,5})\s*)?$")
# Keys only an adopted VM (an existing domain the collection leaves alone) may carry.
ADOPTED_ONLY_KEYS = ("mac", "domain_name")
SHARED_STORAGE_KEYS = ("path", "pool")

# Where a VM's disk lives: "local" (the vm module's own pool, LOCAL_POOL at LOCAL_POOL_PATH
# on the VM's host) or "shared" (the pool of shared_storage, the same directory on every
# cloud host, so that a live migration moves memory only).
STORAGES = ("local", "shared")
LOCAL_POOL = "mcm"  # the vm module's default pool and its directory
LOCAL_POOL_PATH = "/var/lib/mcm/vms"
DEFAULT_SHARED_POOL = "mcm-shared"
DEFAULT_SHARED_PATH = "/var/lib/mcm/shared/vms"

NAME_MAX = 63  # one DNS label
# qdhcp-<tenant>.<network>, qrouter-<tenant>, <tenant>-<vm>: keep the tenant part short.
TENANT_NAME_MAX = 24
VCPUS_MAX = 64
MEMORY_MIN_MIB = 16
DISK_MIN_MIB = 1
# Automatically allocated VNIs lie in VNI_AUTO_MIN..VNI_MAX; explicit VNIs below
# VNI_AUTO_MIN can therefore never displace an allocated one.
VNI_AUTO_MIN = 4096
SEGMENT_NETWORKS_MAX = DHCP_LEG_INDEX_MAX + 1

ROOT_PATH = "(top level)"

_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_HOST_LABEL_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?$")
_SIZE_RE = re.compile(
    r"^\s*(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[kmgt](?:i?b)?)?\s*$", re.IGNORECASE
)
_POOL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
# libvirt domain names: no '/', no control characters, not empty; kept printable ASCII.
_DOMAIN_NAME_RE = re.compile(r"^[A-Za-z0-9_.+-][A-Za-z0-9_.+:-]{0,127}$")
_UNIT_MIB = {"k": Fraction(1, 1024), "m": Fraction(1), "g": Fraction(1024), "t": Fraction(1024**2)}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec: where (a path like ``tenants[0].name``) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class SpecError(Exception):
    """The spec cannot be used; ``problems`` lists every reason."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        count = len(self.problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"{count} problem{'s' if count != 1 else ''} in the spec:\n{lines}")


# --------------------------------------------------------------------------- loading


def load_spec_text(text: str, source: str = "<spec>") -> dict[str, Any]:
    """Safe-load a YAML spec; raise SpecError (path = ``source``) when it is not usable.

    Besides YAML syntax errors, a key given twice in one mapping is an error (PyYAML
    would silently keep the last one).
    """
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = loader.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # unhashable key: the constructor below reports it
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first given on line {first + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return loader.construct_mapping(node, deep=True)

    _Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

    try:
        data = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        raise SpecError([Problem(source, _yaml_error_message(exc))]) from None
    except yaml.YAMLError as exc:
        raise SpecError([Problem(source, f"invalid YAML: {exc}")]) from None
    if data is None:
        raise SpecError([Problem(source, "the document is empty: expected a 'tenants' list")])
    if not isinstance(data, dict):
        raise SpecError(
            [
                Problem(
                    source,
                    f"the top level must be a mapping with a 'tenants' list, got {_kind(data)}",
                )
            ]
        )
    return data


def _yaml_error_message(exc: Any) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    message = exc.problem or exc.context or "invalid YAML"
    if exc.context and exc.problem and exc.context_mark is not None:
        message += f" ({exc.context}, line {exc.context_mark.line + 1})"
    return where + message


# --------------------------------------------------------------------------- helpers


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


def _sub(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _suggest(word: str, choices: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _natural_key(path: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def parse_size_mib(value: Any) -> int:
    """A memory or disk size in MiB (rounded up to a whole MiB).

    A plain number (int, float or numeric string) is GB, where 1 GB = 1024 MiB as in the
    seed; a string may carry a unit K, M, G, T, optionally followed by B or iB, letters
    in any case (``256MiB``, ``1 GiB``, ``512M``, ``0.5g``). Raises ValueError with a
    message meant for the user.
    """
    if isinstance(value, bool):
        raise ValueError(f"must be a size such as 256MiB or 1GiB, got {_kind(value)}")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"must be a finite size, got {value}")
        amount = Fraction(repr(value)) * 1024  # repr: 0.1 means one tenth, not a binary float
        shown = f"{value} GB"
    elif isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match is None:
            raise ValueError(
                f"invalid size {value!r}: use a number of GB or a number with a unit "
                "(K, M, G, T, optionally with iB), such as 256MiB or 1GiB"
            )
        unit = (match.group("unit") or "g")[0].lower()
        amount = Fraction(match.group("number")) * _UNIT_MIB[unit]
        shown = repr(value)
    else:
        raise ValueError(f"must be a size such as 256MiB or 1GiB, got {_kind(value)}")
    if amount <= 0:
        raise ValueError(f"must be positive, got {shown}")
    return math.ceil(amount)


def _label_problem(value: str, max_len: int, kind: str) -> str | None:
    if not value:
        return f"{kind} name must not be empty"
    if len(value) > max_len:
        reason = (
            " (derived namespace and domain names must stay short)"
            if max_len == TENANT_NAME_MAX
            else ""
        )
        return f"{kind} name {value!r} is {len(value)} characters long; at most {max_len}{reason}"
    if not _LABEL_RE.match(value):
        return (
            f"invalid {kind} name {value!r}: use lowercase letters, digits and hyphens, "
            "not starting or ending with a hyphen"
        )
    return None


def _is_hostname(value: str) -> bool:
    if not value or len(value) > 253:
        return False
    labels = value[:-1].split(".") if value.endswith(".") else value.split(".")
    return all(len(label) <= 63 and _HOST_LABEL_RE.match(label) for label in labels)


# --------------------------------------------------------------------------- model

IPv4 = ipaddress.IPv4Address


@dataclass
class _Vm:
    path: str
    tenant: str | None
    network: str | None
    name: str | None = None
    vcpus: int | None = None
    memory_mib: int | None = None
    disk_mib: int | None = None
    ip: IPv4 | None = None
    image: str | None = None
    host: str | None = None
    storage: str = "local"
    storage_pool: str | None = None  # shared storage: its pool and directory
    storage_path: str | None = None
    state: str = "present"  # effective: absent when the VM or a parent is absent
    adopted: bool = False  # an existing domain recorded in the spec, never converged
    mac: str | None = None  # explicit (adopted only); else derived
    domain: str | None = None  # explicit libvirt domain name (adopted only); else derived
    floating_ip: IPv4 | None = None  # DNATed to ip by the tenant router

    def effective_mac(self) -> str | None:
        if self.mac is not None:
            return self.mac
        return None if self.tenant is None or self.name is None else vm_mac(self.tenant, self.name)

    def effective_domain(self) -> str | None:
        if self.domain is not None:
            return self.domain
        if self.tenant is None or self.name is None:
            return None
        return domain_name(self.tenant, self.name)


@dataclass
class _Network:
    path: str
    tenant: str | None
    name: str | None = None
    cloud: str | None = None
    subnet: ipaddress.IPv4Network | None = None
    gateway: IPv4 | None = None
    mode: str | None = "managed"
    vni: int | None = None  # explicit VNI
    vni_ok: bool = True
    dhcp_given: bool = False
    dhcp_enabled: bool = True
    dhcp_range: tuple[IPv4, IPv4] | None = None
    dhcp_range_given: bool = False
    dhcp_server: IPv4 | None = None
    domain: str | None = None
    vms: list[_Vm] = field(default_factory=list)
    state: str = "present"  # effective
    security_group: dict[str, Any] | None = None  # normalised, None: no filtering

    @property
    def dhcp_on(self) -> bool:
        return self.mode in DHCP_MODES and self.dhcp_enabled

    @property
    def segment_key(self) -> str | None:
        """What one VNI belongs to: the network, or the tenant's novlan segment on a cloud.

        Names are DNS labels (no '/' or '~'), so the two forms never meet.
        """
        if self.tenant is None or self.mode is None:
            return None
        if self.mode == "managed-novlan":
            return None if self.cloud is None else f"{self.tenant}/~novlan/{self.cloud}"
        return None if self.name is None else f"{self.tenant}/{self.name}"


@dataclass
class _Tenant:
    path: str
    name: str | None = None
    state: str = "present"
    networks: list[_Network] = field(default_factory=list)
    floating_range: ipaddress.IPv4Network | None = None


class _Checker:
    """One pass over the raw spec: parses what it can, records every problem."""

    def __init__(self, clouds: Iterable[str] | None) -> None:
        self.clouds: set[str] | None = None if clouds is None else {str(c) for c in clouds}
        self.problems: list[Problem] = []
        self.tenants: list[_Tenant] = []
        self.shared_pool = DEFAULT_SHARED_POOL
        self.shared_path = DEFAULT_SHARED_PATH

    def add(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    # ---------------------------------------------------------------- generic

    def mapping(self, value: Any, path: str, what: str) -> bool:
        if isinstance(value, Mapping):
            return True
        self.add(path, f"must be a mapping ({what}), got {_kind(value)}")
        return False

    def keys(self, value: Mapping[Any, Any], path: str, known: tuple[str, ...]) -> None:
        for key in value:
            if key in known:
                continue
            shown = str(key)
            guess = _suggest(shown, known)
            hint = f"did you mean {guess!r}?" if guess else f"known keys: {', '.join(known)}"
            self.add(_sub(path, shown), f"unknown key {shown!r} ({hint})")

    def required(self, value: Mapping[Any, Any], key: str, path: str) -> bool:
        if key in value:
            return True
        self.add(_sub(path, key), "missing required key")
        return False

    def name(self, value: Mapping[Any, Any], path: str, kind: str, max_len: int) -> str | None:
        if not self.required(value, "name", path):
            return None
        raw = value["name"]
        if not isinstance(raw, str):
            self.add(_sub(path, "name"), f"{kind} name must be a string, got {_kind(raw)}")
            return None
        problem = _label_problem(raw, max_len, kind)
        if problem:
            self.add(_sub(path, "name"), problem)
            return None
        return raw

    def state(self, value: Mapping[Any, Any], path: str) -> str:
        raw = value.get("state", "present")
        if raw in STATES:
            return str(raw)
        self.add(
            _sub(path, "state"),
            f"invalid state {raw!r}: allowed values are {', '.join(STATES)}"
            if isinstance(raw, str)
            else f"must be one of {', '.join(STATES)}, got {_kind(raw)}",
        )
        return "present"

    def address(self, raw: Any, path: str, what: str) -> IPv4 | None:
        if not isinstance(raw, str):
            self.add(path, f"{what} must be an IPv4 address string, got {_kind(raw)}")
            return None
        try:
            address = ipaddress.ip_address(raw.strip())
        except ValueError:
            self.add(path, f"invalid {what} {raw!r}: not an IPv4 address")
            return None
        if address.version != 4:
            self.add(path, f"{what} {raw!r} is IPv6: only IPv4 is supported for now")
            return None
        return address  # type: ignore[return-value]

    def list_of(self, value: Mapping[Any, Any], key: str, path: str, what: str) -> list[Any]:
        raw = value.get(key)
        if raw is None:
            if key in value:
                self.add(_sub(path, key), f"must be a list of {what}, got null")
            return []
        if not isinstance(raw, list):
            self.add(_sub(path, key), f"must be a list of {what}, got {_kind(raw)}")
            return []
        return raw

    # ---------------------------------------------------------------- walk

    def run(self, spec: Any) -> None:
        if not isinstance(spec, Mapping):
            self.add(
                ROOT_PATH, f"the spec must be a mapping with a 'tenants' list, got {_kind(spec)}"
            )
            return
        self.keys(spec, "", TOP_KEYS)
        self.shared_storage(spec)
        if not self.required(spec, "tenants", ""):
            return
        for index, raw in enumerate(self.list_of(spec, "tenants", "", "tenants")):
            self.tenant(raw, f"tenants[{index}]")
        self.cross_tenant()
        self.problems.sort(key=lambda problem: _natural_key(problem.path))

    def shared_storage(self, spec: Mapping[Any, Any]) -> None:
        """Where VMs with ``storage: shared`` keep their disks (the same on every host)."""
        if spec.get("shared_storage") is None:
            return
        value = spec["shared_storage"]
        where = "shared_storage"
        if not self.mapping(value, where, "with path and pool"):
            return
        self.keys(value, where, SHARED_STORAGE_KEYS)
        if value.get("path") is not None:
            directory = self.storage_path(value["path"], _sub(where, "path"))
            if directory is not None:
                self.shared_path = directory
        if value.get("pool") is not None:
            pool = value["pool"]
            if not isinstance(pool, str) or not _POOL_RE.match(pool):
                self.add(
                    _sub(where, "pool"),
                    f"invalid pool name {pool!r}: use 1 to 64 letters, digits, '_', '.' or "
                    "'-', starting with a letter or digit",
                )
            elif pool == LOCAL_POOL:
                self.add(
                    _sub(where, "pool"),
                    f"pool {pool!r} is the pool of local disks (at {LOCAL_POOL_PATH}): name the "
                    f"shared pool differently, e.g. {DEFAULT_SHARED_POOL!r}",
                )
            else:
                self.shared_pool = pool

    def storage_path(self, raw: Any, where: str) -> str | None:
        if not isinstance(raw, str) or not raw.strip():
            self.add(
                where,
                f"must be an absolute directory path such as {DEFAULT_SHARED_PATH}, "
                f"got {_kind(raw)}",
            )
            return None
        if not raw.startswith("/"):
            self.add(where, f"{raw!r} is not an absolute path: write it from /")
            return None
        if any(c.isspace() or not c.isprintable() for c in raw):
            self.add(where, f"{raw!r} contains whitespace or control characters")
            return None
        if ".." in raw.split("/"):
            self.add(where, f"{raw!r} contains '..': give the directory itself")
            return None
        directory = "/" + posixpath.normpath(raw).lstrip("/")  # normpath keeps a leading //
        if directory == "/":
            self.add(where, "the root directory cannot hold the VMs' disks")
            return None
        if directory == LOCAL_POOL_PATH or directory.startswith(LOCAL_POOL_PATH + "/"):
            self.add(
                where,
                f"{raw!r} is (inside) {LOCAL_POOL_PATH}, the directory of the pool of local "
                f"disks: give a directory on the shared storage, e.g. {DEFAULT_SHARED_PATH}",
            )
            return None
        return directory

    def tenant(self, raw: Any, path: str) -> None:
        tenant = _Tenant(path)
        self.tenants.append(tenant)
        if not self.mapping(raw, path, "a tenant with name and networks"):
            return
        self.keys(raw, path, TENANT_KEYS)
        tenant.name = self.name(raw, path, "tenant", TENANT_NAME_MAX)
        tenant.state = self.state(raw, path)
        if raw.get("floating_range") is not None:
            tenant.floating_range = self.floating_range(raw["floating_range"], path)
        if tenant.state == "present":
            self.required(raw, "networks", path)
        for index, network in enumerate(self.list_of(raw, "networks", path, "networks")):
            self.network(tenant, network, f"{path}.networks[{index}]")
        self.tenant_checks(tenant)
        self.floating_checks(tenant)

    def network(self, tenant: _Tenant, raw: Any, path: str) -> None:
        net = _Network(path, tenant.name)
        tenant.networks.append(net)
        if not self.mapping(raw, path, "a network with name, cloud, subnet"):
            return
        self.keys(raw, path, NETWORK_KEYS)
        net.name = self.name(raw, path, "network", NAME_MAX)
        declared = self.state(raw, path)
        net.state = "absent" if "absent" in (tenant.state, declared) else "present"
        self.cloud(net, raw, path)
        self.mode(net, raw, path)
        self.vni(net, raw, path)
        self.subnet(net, raw, path)
        gateway_given = raw.get("gateway") is not None
        if gateway_given:
            net.gateway = self.address(raw["gateway"], _sub(path, "gateway"), "gateway")
        self.dhcp(net, raw, path)
        if raw.get("security_group") is not None:
            self.security_group(net, raw["security_group"], _sub(path, "security_group"))
        for index, vm in enumerate(self.list_of(raw, "vms", path, "VMs")):
            self.vm(net, vm, f"{path}.vms[{index}]")
        self.addressing(net, gateway_given)

    def cloud(self, net: _Network, raw: Mapping[Any, Any], path: str) -> None:
        if not self.required(raw, "cloud", path):
            return
        value = raw["cloud"]
        where = _sub(path, "cloud")
        if not isinstance(value, str) or not value:
            self.add(where, f"must be the name of an inventory group, got {_kind(value)}")
            return
        if self.clouds is not None and value not in self.clouds:
            guess = _suggest(value, self.clouds)
            known = ", ".join(sorted(self.clouds)) or "none"
            hint = f"did you mean {guess!r}? " if guess else ""
            self.add(where, f"unknown cloud group {value!r} ({hint}known: {known})")
        net.cloud = value

    def mode(self, net: _Network, raw: Mapping[Any, Any], path: str) -> None:
        value = raw.get("mode", "managed")
        if value in MODES:
            net.mode = str(value)
            return
        net.mode = None
        allowed = ", ".join(MODES)
        if isinstance(value, str):
            guess = _suggest(value, MODES)
            hint = f" (did you mean {guess!r}?)" if guess else ""
            self.add(_sub(path, "mode"), f"invalid mode {value!r}{hint}: allowed are {allowed}")
        else:
            self.add(_sub(path, "mode"), f"must be one of {allowed}, got {_kind(value)}")

    def vni(self, net: _Network, raw: Mapping[Any, Any], path: str) -> None:
        if raw.get("vni") is None:
            return
        value = raw["vni"]
        if isinstance(value, bool) or not isinstance(value, int):
            self.add(
                _sub(path, "vni"),
                f"must be an integer from {VNI_MIN} to {VNI_MAX}, got {_kind(value)}",
            )
            net.vni_ok = False
        elif not VNI_MIN <= value <= VNI_MAX:
            self.add(_sub(path, "vni"), f"VNI {value} is out of range {VNI_MIN}..{VNI_MAX}")
            net.vni_ok = False
        else:
            net.vni = value

    def subnet(self, net: _Network, raw: Mapping[Any, Any], path: str) -> None:
        if not self.required(raw, "subnet", path):
            return
        value = raw["subnet"]
        where = _sub(path, "subnet")
        if not isinstance(value, str):
            self.add(where, f"must be a CIDR string such as 10.0.0.0/24, got {_kind(value)}")
            return
        text = value.strip()
        if "/" not in text:
            self.add(where, f"{value!r} has no prefix length: write it as CIDR, e.g. {text}/24")
            return
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            self.add(where, f"invalid CIDR {value!r}")
            return
        if loose.version != 4:
            self.add(where, f"{value!r} is an IPv6 subnet: only IPv4 is supported for now")
            return
        if loose.network_address != ipaddress.ip_interface(text).ip:
            self.add(where, f"{value!r} has host bits set: did you mean {loose}?")
            return
        net.subnet = loose  # type: ignore[assignment]

    def dhcp(self, net: _Network, raw: Mapping[Any, Any], path: str) -> None:
        if raw.get("dhcp") is None:
            return
        value = raw["dhcp"]
        where = _sub(path, "dhcp")
        net.dhcp_given = True
        if not self.mapping(value, where, "with enabled, range, domain"):
            return
        self.keys(value, where, DHCP_KEYS)
        if net.mode == "system":
            self.add(where, "mode system has no addressing: remove the dhcp block")
            return
        if "enabled" in value:
            if isinstance(value["enabled"], bool):
                net.dhcp_enabled = value["enabled"]
            else:
                self.add(
                    _sub(where, "enabled"), f"must be true or false, got {_kind(value['enabled'])}"
                )
        if value.get("domain") is not None:
            domain = value["domain"]
            if not isinstance(domain, str) or not _is_hostname(domain):
                self.add(_sub(where, "domain"), f"invalid DNS domain {domain!r}")
            else:
                net.domain = domain.rstrip(".").lower()
        if value.get("range") is not None:
            self.dhcp_range(net, value["range"], _sub(where, "range"))

    def dhcp_range(self, net: _Network, value: Any, where: str) -> None:
        net.dhcp_range_given = True
        if net.mode == "static":
            self.add(where, "mode static hands out reservations only: remove dhcp.range")
            return
        if not isinstance(value, list) or len(value) != 2:
            self.add(
                where, f"must be a list [first, last] of two IPv4 addresses, got {_kind(value)}"
            )
            return
        first = self.address(value[0], where, "range start")
        last = self.address(value[1], where, "range end")
        if first is not None and last is not None:
            net.dhcp_range = (first, last)

    def vm(self, net: _Network, raw: Any, path: str) -> None:
        vm = _Vm(path, net.tenant, net.name)
        net.vms.append(vm)
        if not self.mapping(raw, path, "a VM with name, vcpus, memory, disk"):
            return
        self.keys(raw, path, VM_KEYS)
        vm.name = self.name(raw, path, "vm", NAME_MAX)
        declared = self.state(raw, path)
        vm.state = "absent" if "absent" in (net.state, declared) else "present"
        if self.required(raw, "vcpus", path):
            value = raw["vcpus"]
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= VCPUS_MAX:
                self.add(
                    _sub(path, "vcpus"),
                    f"must be an integer from 1 to {VCPUS_MAX}, got {_kind(value)}",
                )
            else:
                vm.vcpus = value
        for key, minimum in (("memory", MEMORY_MIN_MIB), ("disk", DISK_MIN_MIB)):
            if not self.required(raw, key, path):
                continue
            try:
                size = parse_size_mib(raw[key])
            except ValueError as exc:
                self.add(_sub(path, key), str(exc))
                continue
            if size < minimum:
                self.add(_sub(path, key), f"{key} is {size} MiB; at least {minimum} MiB is needed")
                continue
            setattr(vm, f"{key}_mib", size)
        if raw.get("ip") is not None:
            vm.ip = self.address(raw["ip"], _sub(path, "ip"), "ip")
        if raw.get("floating_ip") is not None:
            self.floating_ip(net, vm, raw, _sub(path, "floating_ip"))
        if raw.get("image") is not None:
            image = raw["image"]
            if not isinstance(image, str) or not image.strip():
                self.add(_sub(path, "image"), f"must be a non-empty string, got {_kind(image)}")
            else:
                vm.image = image
        if raw.get("host") is not None:
            host = raw["host"]
            if not isinstance(host, str) or not _is_hostname(host):
                self.add(_sub(path, "host"), f"invalid host name {host!r}")
            else:
                vm.host = host
        if raw.get("storage") is not None:
            self.vm_storage(vm, raw["storage"], _sub(path, "storage"))
        self.vm_adoption(vm, raw, path)
        if (
            net.mode == "static"
            and vm.state == "present"
            and raw.get("ip") is None
            and not vm.adopted
        ):
            self.add(
                _sub(path, "ip"),
                "mode static has no dynamic range: every VM needs an ip (a reservation)",
            )

    # ---------------------------------------------------------------- security

    def cidr(self, value: Any, where: str, what: str) -> ipaddress.IPv4Network | None:
        """An IPv4 CIDR without host bits (a plain address is its /32)."""
        if not isinstance(value, str):
            self.add(where, f"{what} must be a CIDR string such as 10.0.0.0/24, got {_kind(value)}")
            return None
        text = value.strip()
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            self.add(where, f"invalid {what} {value!r}: not an IPv4 CIDR")
            return None
        if loose.version != 4:
            self.add(where, f"{what} {value!r} is IPv6: only IPv4 is supported for now")
            return None
        if loose.network_address != ipaddress.ip_interface(text).ip:
            self.add(where, f"{what} {value!r} has host bits set: did you mean {loose}?")
            return None
        return loose  # type: ignore[return-value]

    def floating_range(self, value: Any, path: str) -> ipaddress.IPv4Network | None:
        where = _sub(path, "floating_range")
        if isinstance(value, str) and "/" not in value:
            self.add(where, f"{value!r} has no prefix length: write it as CIDR, e.g. {value}/24")
            return None
        network = self.cidr(value, where, "floating range")
        if network is None:
            return None
        if (
            network.is_link_local
            or network.is_loopback
            or network.is_multicast
            or network.is_reserved
            or network.network_address.is_unspecified
        ):
            self.add(
                where,
                f"floating range {network} is not unicast address space a router can route "
                "(link-local, loopback, multicast, reserved or 0.0.0.0)",
            )
            return None
        if network.prefixlen > 30:
            self.add(where, f"floating range {network} is too small: /30 or larger")
            return None
        return network

    def floating_ip(self, net: _Network, vm: _Vm, raw: Mapping[Any, Any], where: str) -> None:
        address = self.address(raw["floating_ip"], where, "floating_ip")
        if address is None:
            return
        vm.floating_ip = address
        if net.mode == "system":
            self.add(where, "a network in mode system is not routed: it has no floating addresses")
        if raw.get("ip") is None:
            self.add(
                where,
                "a floating address needs the VM's ip (a reservation): the router DNATs to it",
            )

    def security_group(self, net: _Network, value: Any, where: str) -> None:
        if not self.mapping(value, where, "with ingress and default"):
            return
        self.keys(value, where, SECURITY_GROUP_KEYS)
        if net.mode == "system":
            self.add(where, "a network in mode system is not routed: no security group applies")
            return
        default = value.get("default", "drop")
        if default not in SECURITY_GROUP_DEFAULTS:
            self.add(
                _sub(where, "default"),
                f"must be one of {', '.join(SECURITY_GROUP_DEFAULTS)}, got {_kind(default)}",
            )
            default = "drop"
        rules = []
        for index, rule in enumerate(self.list_of(value, "ingress", where, "rules")):
            parsed = self.rule(rule, f"{where}.ingress[{index}]")
            if parsed is not None:
                rules.append(parsed)
        net.security_group = {"default": default, "ingress": rules}

    def rule(self, raw: Any, where: str) -> dict[str, Any] | None:
        if not self.mapping(raw, where, "a rule with proto, ports, from, action"):
            return None
        self.keys(raw, where, RULE_KEYS)
        ok = True
        proto = raw.get("proto", "any")
        if proto not in PROTOCOLS:
            guess = _suggest(proto, PROTOCOLS) if isinstance(proto, str) else None
            hint = f" (did you mean {guess!r}?)" if guess else ""
            self.add(
                _sub(where, "proto"),
                f"invalid proto {proto!r}{hint}: allowed are {', '.join(PROTOCOLS)}"
                if isinstance(proto, str)
                else f"must be one of {', '.join(PROTOCOLS)}, got {_kind(proto)}",
            )
            proto, ok = "any", False
        ports = None
        if raw.get("ports") is not None:
            ports = self.ports(raw["ports"], _sub(where, "ports"))
            ok = ok and ports is not None
            if ports is not None and proto not in PORT_PROTOCOLS:
                self.add(
                    _sub(where, "ports"),
                    f"ports need proto tcp or udp (proto is {proto!r}): set proto, or remove ports",
                )
                ok = False
        source = ipaddress.IPv4Network("0.0.0.0/0")
        if raw.get("from") is not None:
            parsed = self.cidr(raw["from"], _sub(where, "from"), "from")
            if parsed is None:
                ok = False
            else:
                source = parsed
        action = raw.get("action", "accept")
        if action not in RULE_ACTIONS:
            self.add(
                _sub(where, "action"),
                f"must be one of {', '.join(RULE_ACTIONS)}, got {_kind(action)}",
            )
            ok = False
        if not ok:
            return None
        return {"proto": proto, "ports": ports, "from": str(source), "action": action}

    def ports(self, value: Any, where: str) -> str | None:
        """A port or an inclusive range, normalised to ``"22"`` or ``"8000-8080"``."""
        text = None
        if isinstance(value, int) and not isinstance(value, bool):
            text = str(value)
        elif isinstance(value, str):
            text = value
        match = _PORTS_RE.match(text) if text is not None else None
        if match is None:
            self.add(
                where,
                f'must be a port (22) or a range of ports ("8000-8080"), got {_kind(value)}',
            )
            return None
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if not (1 <= first <= PORT_MAX and 1 <= last <= PORT_MAX):
            self.add(where, f"ports {value!r} out of range 1..{PORT_MAX}")
            return None
        if first > last:
            self.add(where, f"port range {value!r} is reversed: write {last}-{first}")
            return None
        return str(first) if first == last else f"{first}-{last}"

    def floating_checks(self, tenant: _Tenant) -> None:
        """Floating addresses of a tenant: inside its floating range, which none of its
        present subnets overlaps."""
        vms = [vm for net in tenant.networks for vm in net.vms if vm.floating_ip is not None]
        fr = tenant.floating_range
        if fr is not None:
            for net in tenant.networks:
                if net.subnet is not None and net.state == "present" and net.subnet.overlaps(fr):
                    self.add(
                        _sub(tenant.path, "floating_range"),
                        f"floating range {fr} overlaps subnet {net.subnet} of network "
                        f"{net.name!r} ({net.path})",
                    )
        for vm in vms:
            where = _sub(vm.path, "floating_ip")
            if fr is None:
                self.add(
                    where,
                    f"tenant {tenant.name!r} has no floating_range: add one that holds "
                    f"{vm.floating_ip}",
                )
            elif vm.floating_ip not in fr or vm.floating_ip in (
                fr.network_address,
                fr.broadcast_address,
            ):
                self.add(
                    where,
                    f"floating_ip {vm.floating_ip} is not a usable address of the tenant's "
                    f"floating range {fr}",
                )

    def vm_adoption(self, vm: _Vm, raw: Mapping[Any, Any], path: str) -> None:
        """``adopted``, and the ``mac``/``domain_name`` only an adopted VM may give."""
        adopted = raw.get("adopted", False)
        if not isinstance(adopted, bool):
            self.add(_sub(path, "adopted"), f"must be true or false, got {_kind(adopted)}")
            adopted = False
        vm.adopted = adopted
        for key in ADOPTED_ONLY_KEYS:
            if raw.get(key) is not None and not adopted:
                self.add(
                    _sub(path, key),
                    f"only an adopted VM (adopted: true) gives its {key}; "
                    "the collection derives it for the VMs it creates",
                )
        mac = raw.get("mac")
        if adopted and mac is not None:
            text = mac.lower() if isinstance(mac, str) else None
            if text is None or not _MAC_RE.match(text):
                self.add(_sub(path, "mac"), f"must be a MAC like 52:54:00:12:34:56, got {mac!r}")
            elif int(text[:2], 16) & 1:
                self.add(_sub(path, "mac"), f"{text} is a multicast MAC; a NIC needs a unicast one")
            else:
                vm.mac = text
        domain = raw.get("domain_name")
        if adopted and domain is not None:
            if not isinstance(domain, str) or not _DOMAIN_NAME_RE.match(domain):
                self.add(
                    _sub(path, "domain_name"),
                    f"invalid libvirt domain name {domain!r} (letters, digits, '_', '.', '+', "
                    "'-', ':'; at most 128)",
                )
            else:
                vm.domain = domain

    def vm_storage(self, vm: _Vm, value: Any, where: str) -> None:
        allowed = ", ".join(STORAGES)
        if value not in STORAGES:
            if isinstance(value, str):
                guess = _suggest(value, STORAGES)
                hint = f" (did you mean {guess!r}?)" if guess else ""
                self.add(where, f"invalid storage {value!r}{hint}: allowed are {allowed}")
            else:
                self.add(where, f"must be one of {allowed}, got {_kind(value)}")
            return
        vm.storage = str(value)
        if vm.storage == "shared":
            vm.storage_pool, vm.storage_path = self.shared_pool, self.shared_path

    # ---------------------------------------------------------------- addressing

    def addressing(self, net: _Network, gateway_given: bool) -> None:
        """Checks inside one network: sizes, gateway, DHCP server and range, VM addresses."""
        subnet = net.subnet
        if subnet is None or net.mode is None:
            return
        path = net.path
        if net.dhcp_on and subnet.prefixlen > 29:
            self.add(
                _sub(path, "subnet"),
                f"{subnet} is too small for DHCP: besides the network and broadcast addresses "
                "it needs a gateway, a DHCP server address and at least one address to hand "
                "out (/29 or larger)",
            )
            return
        if subnet.prefixlen > 30:
            need = "an address" if net.mode == "system" else "a gateway"
            self.add(
                _sub(path, "subnet"),
                f"{subnet} is too small: it needs {need} besides the network and broadcast "
                "addresses (/30 or larger)",
            )
            return
        network_address, broadcast = subnet.network_address, subnet.broadcast_address

        def misplaced(address: IPv4) -> str | None:
            if address not in subnet:
                return f"is outside subnet {subnet}"
            if address == network_address:
                return f"is the network address of {subnet}"
            if address == broadcast:
                return f"is the broadcast address of {subnet}"
            return None

        if net.gateway is not None:
            problem = misplaced(net.gateway)
            if problem:
                self.add(_sub(path, "gateway"), f"gateway {net.gateway} {problem}")
                net.gateway = None
        elif not gateway_given and net.mode != "system":  # system: nothing is addressed
            net.gateway = network_address + 1
        gateway = net.gateway

        if net.dhcp_on:
            # Last usable address, or the one below when the gateway took it.
            server = broadcast - 1
            net.dhcp_server = server if server != gateway else broadcast - 2

        present_ips: dict[IPv4, _Vm] = {}
        for vm in net.vms:
            if vm.ip is None:
                continue
            where = _sub(vm.path, "ip")
            problem = misplaced(vm.ip)
            if problem:
                self.add(where, f"ip {vm.ip} {problem}")
                continue
            if vm.ip == gateway:
                self.add(where, f"ip {vm.ip} is the gateway address of the network")
                continue
            if vm.ip == net.dhcp_server:
                self.add(
                    where,
                    f"ip {vm.ip} is the DHCP server address of the network "
                    "(the last usable address, or the one below it when the gateway takes it)",
                )
                continue
            if vm.state != "present":
                continue
            other = present_ips.get(vm.ip)
            if other is not None:
                self.add(
                    where, f"duplicate ip {vm.ip}: also given to vm {other.name!r} ({other.path})"
                )
                continue
            present_ips[vm.ip] = vm

        if not net.dhcp_on or net.mode not in DYNAMIC_DHCP_MODES:
            net.dhcp_range = None
            return
        if net.dhcp_range_given:
            self.check_range(net, misplaced, present_ips)
            return
        excluded = set(present_ips) | {a for a in (gateway, net.dhcp_server) if a is not None}
        net.dhcp_range = _default_range(subnet, excluded)
        if net.dhcp_range is None:
            self.add(
                _sub(path, "dhcp.range"),
                "no free address left in the upper half of the subnet for the default DHCP "
                "range: set dhcp.range",
            )

    def check_range(self, net: _Network, misplaced: Any, present_ips: dict[IPv4, _Vm]) -> None:
        where = _sub(net.path, "dhcp.range")
        if net.dhcp_range is None:
            return
        first, last = net.dhcp_range
        bad = False
        for label, address in (("start", first), ("end", last)):
            problem = misplaced(address)
            if problem:
                self.add(where, f"range {label} {address} {problem}")
                bad = True
        if bad:
            net.dhcp_range = None
            return
        if first > last:
            self.add(where, f"range is reversed: start {first} is after end {last}")
            net.dhcp_range = None
            return
        if net.gateway is not None and first <= net.gateway <= last:
            self.add(where, f"range {first}-{last} contains the gateway {net.gateway}")
        server = net.dhcp_server
        if server is not None and first <= server <= last:
            self.add(
                where,
                f"range {first}-{last} contains the DHCP server address {server} "
                "(the last usable address, or the one below it when the gateway takes it)",
            )
        for address, vm in sorted(present_ips.items()):
            if first <= address <= last:
                self.add(
                    where,
                    f"range {first}-{last} contains {address}, reserved for vm {vm.name!r} "
                    f"({vm.path}): keep static reservations outside the dynamic range",
                )

    # ---------------------------------------------------------------- cross checks

    def tenant_checks(self, tenant: _Tenant) -> None:
        networks: dict[str, _Network] = {}
        vms: dict[str, _Vm] = {}
        macs: dict[str, _Vm] = {}
        for net in tenant.networks:
            if net.name is not None:
                other = networks.setdefault(net.name, net)
                if other is not net:
                    self.add(
                        _sub(net.path, "name"),
                        f"duplicate network name {net.name!r} in tenant {tenant.name!r} "
                        f"(also {other.path})",
                    )
            for vm in net.vms:
                if vm.name is None:
                    continue
                other_vm = vms.setdefault(vm.name, vm)
                if other_vm is not vm:
                    self.add(
                        _sub(vm.path, "name"),
                        f"duplicate vm name {vm.name!r} in tenant {tenant.name!r} "
                        f"(also {other_vm.path})",
                    )
                    continue
                if tenant.name is None or vm.state != "present":
                    continue
                mac = vm.effective_mac()
                if mac is None:
                    continue
                other_vm = macs.setdefault(mac, vm)
                if other_vm is not vm:
                    self.add(
                        _sub(vm.path, "mac" if vm.mac else "name"),
                        f"{'MAC' if vm.mac else 'derived MAC'} {mac} collides with vm "
                        f"{other_vm.name!r} ({other_vm.path}): rename one of them",
                    )
        present = [n for n in tenant.networks if n.subnet is not None and n.state == "present"]
        for later_index, later in enumerate(present):
            for earlier in present[:later_index]:
                if later.subnet.overlaps(earlier.subnet):  # type: ignore[union-attr]
                    self.add(
                        _sub(later.path, "subnet"),
                        f"{later.subnet} overlaps {earlier.subnet} of network "
                        f"{earlier.name!r} ({earlier.path}) in the same tenant",
                    )
                    break

    def cross_tenant(self) -> None:
        names: dict[str, _Tenant] = {}
        for tenant in self.tenants:
            if tenant.name is None:
                continue
            other = names.setdefault(tenant.name, tenant)
            if other is not tenant:
                self.add(
                    _sub(tenant.path, "name"),
                    f"duplicate tenant name {tenant.name!r} (also {other.path})",
                )
        self.derived_name_clashes()
        self.vni_checks()
        self.floating_unique()

    def floating_unique(self) -> None:
        """A floating address belongs to one present VM of the whole spec."""
        owners: dict[IPv4, _Vm] = {}
        for tenant in self.tenants:
            for net in tenant.networks:
                for vm in net.vms:
                    if vm.floating_ip is None or vm.state != "present":
                        continue
                    other = owners.setdefault(vm.floating_ip, vm)
                    if other is not vm:
                        self.add(
                            _sub(vm.path, "floating_ip"),
                            f"floating_ip {vm.floating_ip} is also given to vm {other.name!r} "
                            f"of tenant {other.tenant!r} ({other.path})",
                        )

    def derived_name_clashes(self) -> None:
        namespaces: dict[str, _Network] = {}
        domains: dict[str, _Vm] = {}
        for tenant in self.tenants:
            if tenant.name is None:
                continue
            for net in tenant.networks:
                if net.name is None:
                    continue
                namespace = dhcp_namespace(tenant.name, net.name)
                other = namespaces.setdefault(namespace, net)
                if other is not net and other.tenant != net.tenant:
                    self.add(
                        _sub(net.path, "name"),
                        f"derived DHCP namespace {namespace!r} clashes with network "
                        f"{other.name!r} of tenant {other.tenant!r} ({other.path}): rename one",
                    )
                for vm in net.vms:
                    if vm.name is None:
                        continue
                    domain = vm.effective_domain()
                    if domain is None:
                        continue
                    other_vm = domains.setdefault(domain, vm)
                    if other_vm is not vm and (
                        other_vm.tenant != vm.tenant or other_vm.name != vm.name
                    ):
                        self.add(
                            _sub(vm.path, "domain_name" if vm.domain else "name"),
                            f"{'libvirt' if vm.domain else 'derived libvirt'} domain name "
                            f"{domain!r} clashes with vm {other_vm.name!r} of tenant "
                            f"{other_vm.tenant!r} "
                            f"({other_vm.path}): rename one",
                        )

    def vni_checks(self) -> None:
        segments: dict[str, list[_Network]] = {}
        for tenant in self.tenants:
            for net in tenant.networks:
                key = net.segment_key
                if key is not None:
                    segments.setdefault(key, []).append(net)
        owners: dict[int, _Network] = {}
        for members in segments.values():
            explicit = [net for net in members if net.vni is not None]
            if len(members) > SEGMENT_NETWORKS_MAX:
                first = members[0]
                self.add(
                    _sub(members[SEGMENT_NETWORKS_MAX].path, "mode"),
                    f"more than {SEGMENT_NETWORKS_MAX} managed-novlan networks of tenant "
                    f"{first.tenant!r} on cloud {first.cloud!r} share one segment",
                )
            if not explicit:
                continue
            chosen = explicit[0]
            for net in explicit[1:]:
                if net.mode == "managed-novlan" and net.vni != chosen.vni:
                    self.add(
                        _sub(net.path, "vni"),
                        f"managed-novlan networks of tenant {net.tenant!r} on cloud "
                        f"{net.cloud!r} share one segment: vni {net.vni} differs from vni "
                        f"{chosen.vni} of network {chosen.name!r} ({chosen.path})",
                    )
            if chosen.vni is None:
                raise AssertionError(f"network {chosen.name!r} has no vni after validation")
            owner = owners.setdefault(chosen.vni, chosen)
            if owner is not chosen:
                self.add(
                    _sub(chosen.path, "vni"),
                    f"VNI {chosen.vni} is already used by network {owner.name!r} of tenant "
                    f"{owner.tenant!r} ({owner.path})",
                )


def _default_range(subnet: ipaddress.IPv4Network, excluded: set[IPv4]) -> tuple[IPv4, IPv4] | None:
    """Longest run of free addresses in the upper half of the subnet (lowest run on a tie)."""
    low = int(subnet.network_address) + subnet.num_addresses // 2
    high = int(subnet.broadcast_address) - 1
    taken = sorted(int(a) for a in excluded if low <= int(a) <= high)
    best: tuple[int, int] | None = None
    start = low
    for stop in [*taken, high + 1]:
        if stop > start and (best is None or stop - start > best[1] - best[0] + 1):
            best = (start, stop - 1)
        start = max(start, stop + 1)
    if best is None:
        return None
    return ipaddress.IPv4Address(best[0]), ipaddress.IPv4Address(best[1])


# --------------------------------------------------------------------------- VNIs


def _auto_vni(key: str, used: set[int]) -> int:
    span = VNI_MAX - VNI_AUTO_MIN + 1
    offset = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % span
    while VNI_AUTO_MIN + offset in used:
        offset = (offset + 1) % span
    return VNI_AUTO_MIN + offset


def allocate_vnis(segments: Mapping[str, int | None]) -> dict[str, int]:
    """VNI of every segment: the explicit one, else allocated from its key.

    A segment's key is ``<tenant>/<network>``, or ``<tenant>/~novlan/<cloud>`` for the
    shared segment of a tenant's managed-novlan networks on one cloud. An allocated VNI
    is VNI_AUTO_MIN + sha256(key) (first 8 bytes, big endian) modulo the size of
    VNI_AUTO_MIN..VNI_MAX. Explicit VNIs are taken first; then keys in sorted order take
    their VNI, or the next free one above it (wrapping) when it is taken.
    """
    result = {key: vni for key, vni in segments.items() if vni is not None}
    used = set(result.values())
    for key in sorted(key for key, vni in segments.items() if vni is None):
        vni = _auto_vni(key, used)
        used.add(vni)
        result[key] = vni
    return result


# --------------------------------------------------------------------------- API


def _check(spec: Any, clouds: Iterable[str] | None) -> _Checker:
    checker = _Checker(clouds)
    checker.run(spec)
    return checker


def validate(spec: Any, clouds: Iterable[str] | None = None) -> list[Problem]:
    """Every problem of ``spec`` (empty when valid); ``clouds=None`` skips the group check."""
    return _check(spec, clouds).problems


def normalize(spec: Any, clouds: Iterable[str] | None = None) -> dict[str, Any]:
    """A new, fully defaulted copy of a valid spec; raise SpecError listing every problem.

    ``state`` of a network or VM is the effective one: absent when it or a parent is.
    """
    checker = _check(spec, clouds)
    if checker.problems:
        raise SpecError(checker.problems)

    segments: dict[str, list[_Network]] = {}
    for tenant in checker.tenants:
        for net in tenant.networks:
            segments.setdefault(net.segment_key, []).append(net)  # type: ignore[arg-type]
    vnis = allocate_vnis(
        {
            key: next((n.vni for n in nets if n.vni is not None), None)
            for key, nets in segments.items()
        }
    )
    # A network's DHCP leg index on its segment: position by name (0 unless novlan).
    leg_index = {
        id(net): index
        for nets in segments.values()
        for index, net in enumerate(sorted(nets, key=lambda n: str(n.name)))
    }

    tenants = []
    # Transit segments (between a tenant's routers in different clouds) take their VNIs
    # after every network, so adding them never moves a network's VNI.
    used = set(vnis.values())
    for tenant in checker.tenants:
        if tenant.name is None:
            raise AssertionError("a tenant without a name passed validation")
        networks = [
            _normal_network(tenant, net, vnis[net.segment_key], leg_index[id(net)])  # type: ignore[index]
            for net in tenant.networks
        ]
        transit_vni = _auto_vni(f"{tenant.name}/~transit", used)
        used.add(transit_vni)
        tenants.append(
            {
                "name": tenant.name,
                "state": tenant.state,
                "router_namespace": router_namespace(tenant.name),
                "floating_range": str(tenant.floating_range) if tenant.floating_range else None,
                "firewall_table": firewall_table(tenant.name),
                "transit": {
                    "vni": transit_vni,
                    "bridge": bridge_name(transit_vni),
                    "vxlan": vxlan_name(transit_vni),
                    "legs": list(router_leg_names(transit_vni)),
                },
                "networks": networks,
            }
        )
    return {"tenants": tenants}


def _normal_network(tenant: _Tenant, net: _Network, vni: int, leg_index: int) -> dict[str, Any]:
    if tenant.name is None or net.name is None or net.subnet is None:
        raise AssertionError("a network without tenant, name or subnet passed validation")
    routed = net.mode != "system"
    dhcp_on = net.dhcp_on
    domain = None
    if net.mode != "system":
        domain = net.domain or default_dns_domain(tenant.name, net.name)
    dhcp_range = net.dhcp_range if dhcp_on else None
    return {
        "tenant": tenant.name,
        "name": net.name,
        "state": net.state,
        "cloud": net.cloud,
        "mode": net.mode,
        "subnet": str(net.subnet),
        "prefixlen": net.subnet.prefixlen,
        "netmask": str(net.subnet.netmask),
        "gateway": str(net.gateway) if net.gateway is not None else None,
        "routed": routed,
        "vni": vni,
        "bridge": bridge_name(vni),
        "vxlan": vxlan_name(vni),
        "router_namespace": router_namespace(tenant.name) if routed else None,
        "router_legs": list(router_leg_names(vni)) if routed else None,
        "gateway_mac": router_mac(tenant.name, vni) if routed else None,
        "dhcp": {
            "enabled": dhcp_on,
            "range": [str(a) for a in dhcp_range] if dhcp_range else None,
            "server": str(net.dhcp_server) if dhcp_on else None,
            "domain": domain,
            "namespace": dhcp_namespace(tenant.name, net.name) if dhcp_on else None,
            "legs": list(dhcp_leg_names(vni, leg_index)) if dhcp_on else None,
        },
        "security_group": (
            {**net.security_group, "chain": security_group_chain(net.name)}
            if net.security_group is not None and routed
            else None
        ),
        "vms": [_normal_vm(tenant.name, net.name, vm, domain) for vm in net.vms],
    }


def _normal_vm(tenant: str, network: str, vm: _Vm, dns_domain: str | None) -> dict[str, Any]:
    if vm.name is None:
        raise AssertionError("a VM without a name passed validation")
    return {
        "tenant": tenant,
        "network": network,
        "name": vm.name,
        "state": vm.state,
        "vcpus": vm.vcpus,
        "memory_mib": vm.memory_mib,
        "disk_mib": vm.disk_mib,
        "ip": str(vm.ip) if vm.ip is not None else None,
        "floating_ip": str(vm.floating_ip) if vm.floating_ip is not None else None,
        "image": vm.image,
        "host": vm.host,
        "storage": vm.storage,
        "storage_pool": vm.storage_pool,
        "storage_path": vm.storage_path,
        "mac": vm.mac or vm_mac(tenant, vm.name),
        "domain_name": vm.domain or domain_name(tenant, vm.name),
        "adopted": vm.adopted,
        "fqdn": f"{vm.name}.{dns_domain}" if dns_domain else None,
    }


# The tenant_spec task (the module and its action plugin run this): its parameters,
# their constraints, and the task itself.
TASK_ARGUMENT_SPEC: dict[str, dict[str, Any]] = {
    "path": {"type": "path"},
    "content": {"type": "raw"},
    "clouds": {"type": "list", "elements": "str"},
}
TASK_OPTIONS: dict[str, list] = {
    "required_one_of": [("path", "content")],
    "mutually_exclusive": [("path", "content")],
}


def spec_task(params: Mapping[str, Any]) -> dict[str, Any]:
    """Validate and normalise the spec of ``params``: the task's result, or TaskFailure
    listing every problem (each on its own line, with its path)."""
    path, content, clouds = (params.get(k) for k in ("path", "content", "clouds"))
    source = path or "<content>"
    problems: list[Problem]
    try:
        if path:
            try:
                with open(path, encoding="utf-8") as handle:
                    content = handle.read()
            except OSError as exc:
                raise TaskFailure(f"cannot read the spec file {path}: {exc.strerror}") from exc
        data = load_spec_text(content, source) if isinstance(content, str) else content
        problems = validate(data, clouds)
    except SpecError as exc:
        problems = list(exc.problems)
    if problems:
        lines = [str(p) for p in problems]
        count = f"{len(lines)} problem{'s' if len(lines) > 1 else ''}"
        lines.insert(0, f"the spec {source} has {count}; nothing was changed:")
        raise TaskFailure("\n".join(lines))
    normal = normalize(data, clouds)
    return {"changed": False, "spec": normal, "problems": [], "summary": spec_summary(normal)}


def spec_summary(normal: Mapping[str, Any]) -> dict[str, int]:
    """How many tenants, networks and VMs a normalised spec keeps present."""
    tenants = [t for t in normal["tenants"] if t["state"] == "present"]
    networks = [n for t in tenants for n in t["networks"] if n["state"] == "present"]
    vms = [v for n in networks for v in n["vms"] if v["state"] == "present"]
    return {"tenants": len(tenants), "networks": len(networks), "vms": len(vms)}
