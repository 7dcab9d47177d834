#!/usr/bin/env python
"""The embedded multi-cloud lab: build its images, start and stop its hosts.

Each cloud host is a privileged podman container named exactly as its inventory host in
``inventories/lab/hosts.yml`` (the single source of the lab's topology). Hosts of one cloud
share an underlay network; every host also has a leg on an inter-cloud WAN network shaped
with tc htb. The networks are CNI bridges without gateway and without NAT, so nothing the
lab does can leave the machine.

Usage: lab.py {up,down,clean,status,images,hosts} (see --help). The Makefile exports
CONTAINERS_CONF pointing at lab/containers.conf (runc, cgroupfs, ulimits, CNI).
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
LAB_DIR = ROOT / "lab"
CACHE_DIR = ROOT / ".cache"
STATE_DIR = ROOT / ".lab"
INVENTORY = ROOT / "inventories" / "lab" / "hosts.yml"
CNI_DIR = Path("/etc/cni/net.d")
CNI_IPAM_DIR = Path("/var/lib/cni/networks")
APT_SOURCES = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]

SUITE = "bookworm"
BASE_REPO = "localhost/mcm-base"
NODE_REPO = "localhost/mcm-node"
LAB_LABEL = "io.multicloud.lab"
# Bump to force a rebuild of the base image when the recipe below changes.
BASE_RECIPE = "debootstrap-minbase-v1"
READY_TIMEOUT = 90.0


class LabError(Exception):
    """A problem an operator can act on; printed without a traceback."""


# --------------------------------------------------------------------------- topology


@dataclass(frozen=True)
class LabNetwork:
    name: str  # podman/CNI network name
    bridge: str  # Linux bridge on the machine
    subnet: ipaddress.IPv4Network
    interface: str  # interface name inside the hosts
    rate: str | None = None  # tc htb rate on the hosts' leg, None = unshaped


@dataclass(frozen=True)
class LabHost:
    name: str
    cloud: str
    underlay_ip: ipaddress.IPv4Address
    wan_ip: ipaddress.IPv4Address


@dataclass
class Topology:
    hosts: list[LabHost]
    underlays: dict[str, LabNetwork]  # cloud -> network
    wan: LabNetwork
    shared_dir: str
    images_dir: str
    clouds: list[str] = field(default_factory=list)
    # mcm_vm_boot: how the lab's VMs boot the guest image (kernel, initrd, cmdline)
    vm_boot: dict[str, str] = field(default_factory=dict)

    @property
    def networks(self) -> list[LabNetwork]:
        return [*self.underlays.values(), self.wan]

    def host(self, name: str) -> LabHost:
        for host in self.hosts:
            if host.name == name:
                return host
        raise LabError(f"no lab host named {name!r}; hosts: {', '.join(self.host_names)}")

    @property
    def host_names(self) -> list[str]:
        return [h.name for h in self.hosts]


def _network(data: object, where: str) -> LabNetwork:
    if not isinstance(data, dict):
        raise LabError(f"{where}: expected a mapping with network, bridge, subnet, interface")
    try:
        net = LabNetwork(
            name=str(data["network"]),
            bridge=str(data["bridge"]),
            subnet=ipaddress.IPv4Network(str(data["subnet"])),
            interface=str(data["interface"]),
            rate=str(data["rate"]) if data.get("rate") else None,
        )
    except KeyError as exc:
        raise LabError(f"{where}: missing key {exc}") from exc
    except ValueError as exc:
        raise LabError(f"{where}: {exc}") from exc
    if len(net.bridge.encode()) > 15:
        raise LabError(f"{where}.bridge: {net.bridge!r} is longer than 15 bytes")
    return net


def parse_topology(inventory: dict) -> Topology:
    """Read the lab's topology out of the inventory data (hosts.yml as loaded by YAML)."""
    try:
        top = inventory["all"]
        top_vars = top.get("vars") or {}
        children = top["children"]
    except (KeyError, TypeError) as exc:
        raise LabError("inventory: expected all.vars and all.children") from exc
    wan = _network(top_vars.get("lab_wan"), "all.vars.lab_wan")
    clouds = sorted((children.get("clouds") or {}).get("children") or {})
    if not clouds:
        raise LabError("inventory: all.children.clouds.children lists no cloud group")
    hosts: list[LabHost] = []
    underlays: dict[str, LabNetwork] = {}
    for cloud in clouds:
        group = children.get(cloud)
        if not isinstance(group, dict) or not group.get("hosts"):
            raise LabError(f"inventory: cloud group {cloud!r} has no hosts")
        where = f"{cloud}.vars.lab_underlay"
        underlays[cloud] = _network((group.get("vars") or {}).get("lab_underlay"), where)
        for name, raw_vars in group["hosts"].items():
            hvars = raw_vars or {}
            try:
                host = LabHost(
                    name=name,
                    cloud=cloud,
                    underlay_ip=ipaddress.IPv4Address(str(hvars["underlay_ip"])),
                    wan_ip=ipaddress.IPv4Address(str(hvars["wan_ip"])),
                )
            except KeyError as exc:
                raise LabError(f"inventory: host {name!r} lacks {exc}") from exc
            except ValueError as exc:
                raise LabError(f"inventory: host {name!r}: {exc}") from exc
            hosts.append(host)
    topo = Topology(
        hosts=hosts,
        underlays=underlays,
        wan=wan,
        shared_dir=str(top_vars.get("lab_shared_dir", "/var/lib/mcm/shared")),
        images_dir=str(top_vars.get("lab_images_dir", "/var/lib/mcm/images")),
        clouds=clouds,
        vm_boot={str(k): str(v) for k, v in (top_vars.get("mcm_vm_boot") or {}).items()},
    )
    check_topology(topo)
    return topo


def check_topology(topo: Topology) -> None:
    """Refuse a topology that would clash with itself or reach outside the lab."""
    problems: list[str] = []
    names = [h.name for h in topo.hosts]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"host {name} is in more than one cloud")
    seen: dict[ipaddress.IPv4Address, str] = {}
    for host in topo.hosts:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", host.name):
            problems.append(f"host {host.name}: not a valid container/host name")
        under = topo.underlays[host.cloud]
        for ip, net, what in (
            (host.underlay_ip, under, "underlay_ip"),
            (host.wan_ip, topo.wan, "wan_ip"),
        ):
            if ip not in net.subnet or ip in (
                net.subnet.network_address,
                net.subnet.broadcast_address,
            ):
                problems.append(
                    f"host {host.name}: {what} {ip} is not a host address of {net.subnet}"
                )
            if ip in seen:
                problems.append(f"host {host.name}: {what} {ip} is already used by {seen[ip]}")
            seen[ip] = host.name
    nets = topo.networks
    for i, a in enumerate(nets):
        if not a.subnet.is_private:
            problems.append(f"network {a.name}: {a.subnet} is not a private range")
        for b in nets[i + 1 :]:
            if a.subnet.overlaps(b.subnet):
                problems.append(f"networks {a.name} and {b.name} overlap")
            if a.name == b.name or a.bridge == b.bridge:
                problems.append(f"networks {a.name} and {b.name} share a name or bridge")
    if problems:
        raise LabError("inventory: " + "; ".join(problems))


def load_topology(path: Path = INVENTORY) -> Topology:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise LabError(f"cannot read the lab inventory {path}: {exc}") from exc
    return parse_topology(data)


def cni_conflist(net: LabNetwork) -> dict:
    """A CNI bridge network with no gateway on the machine and no masquerading."""
    return {
        "cniVersion": "0.4.0",
        "name": net.name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": net.bridge,
                "isGateway": False,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": str(net.subnet)}]],
                    "routes": [],
                },
            }
        ],
        "args": {"podman_labels": {LAB_LABEL: "true"}},
    }


def host_uuid(name: str) -> str:
    """The libvirt host UUID node-init derives for a host (kept here for checks)."""
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, name + ".mcm-lab"))


def run_args(host: LabHost, topo: Topology, image: str) -> list[str]:
    """The `podman run` arguments that create one lab host."""
    under = topo.underlays[host.cloud]
    args = [
        "run", "--detach", "--privileged",
        "--name", host.name, "--hostname", host.name,
        "--label", f"{LAB_LABEL}=true", "--label", f"{LAB_LABEL}.cloud={host.cloud}",
        "--network", f"{under.name}:ip={host.underlay_ip},interface_name={under.interface}",
        "--network", f"{topo.wan.name}:ip={host.wan_ip},interface_name={topo.wan.interface}",
        "--dns", "none",
        "--volume", f"{STATE_DIR / 'shared'}:{topo.shared_dir}:rw",
        "--volume", f"{CACHE_DIR / 'guest'}:{topo.images_dir}:ro",
    ]  # fmt: skip
    for other in topo.hosts:
        if other.name != host.name:
            # Migration hands the destination's host name to qemu: every host must
            # resolve every other one; the WAN address reaches all of them.
            args += ["--add-host", f"{other.name}:{other.wan_ip}"]
    return [*args, image]


def shaping_commands(net: LabNetwork, current_qdisc: str = "") -> list[list[str]]:
    """tc htb on a host's leg of a network (netem is not available on this kernel).

    ``current_qdisc`` is what `tc qdisc show dev DEV` prints now: an htb root that is
    already there is kept (tc cannot "replace" an htb qdisc with itself), its class is
    replaced so a changed rate applies.
    """
    if not net.rate:
        return []
    dev = net.interface
    cmds = []
    if not re.search(r"qdisc htb 1: root", current_qdisc):
        cmds.append(["tc", "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb",
                     "default", "10"])  # fmt: skip
    cmds.append(["tc", "class", "replace", "dev", dev, "parent", "1:", "classid", "1:10", "htb",
                 "rate", net.rate, "ceil", net.rate])  # fmt: skip
    return cmds


# --------------------------------------------------------------------------- apt mirror


def parse_apt_sources(texts: Iterable[str]) -> dict[str, str]:
    """Map Debian suites (bookworm, bookworm-security, ...) to the mirror URI apt uses.

    Both the one-line format and deb822 (.sources) are read; non-Debian repositories
    (other keyrings, other components) are ignored.
    """
    found: dict[str, str] = {}
    for text in texts:
        # deb822 stanzas
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                key, _sep, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if fields.get("types", "").split().count("deb") and "uris" in fields:
                uri = fields["uris"].split()[0]
                for suite in fields.get("suites", "").split():
                    if suite.startswith(SUITE):
                        found.setdefault(suite, uri)
        # one-line format
        for line in text.splitlines():
            parts = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2].startswith(SUITE):
                found.setdefault(parts[2], parts[1])
    return found


def apt_mirrors() -> dict[str, str]:
    texts = []
    for path in APT_SOURCES:
        try:
            texts.append(path.read_text())
        except OSError:
            continue
    found = parse_apt_sources(texts)
    if SUITE not in found:
        raise LabError(
            f"no Debian {SUITE} mirror found in /etc/apt/sources.list*: the lab builds its "
            "images from the mirror this machine's apt uses"
        )
    return found


def sources_list(mirrors: dict[str, str]) -> str:
    lines = [f"deb {uri} {suite} main" for suite, uri in sorted(mirrors.items())]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- helpers


def inputs_hash(files: Sequence[Path], *extra: str) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    for item in extra:
        digest.update(item.encode() + b"\0")
    return digest.hexdigest()[:12]


def say(msg: str) -> None:
    print(f"lab: {msg}", flush=True)


def podman(*args: str, check: bool = True, capture: bool = True, stdin: bytes | None = None
           ) -> subprocess.CompletedProcess:  # fmt: skip
    if "CONTAINERS_CONF" not in os.environ:
        os.environ["CONTAINERS_CONF"] = str(LAB_DIR / "containers.conf")
    try:
        proc = subprocess.run(["podman", *args], capture_output=capture, input=stdin, check=False)
    except FileNotFoundError as exc:
        raise LabError("podman is not installed: run `make deps`") from exc
    if check and proc.returncode != 0:
        err = (proc.stderr or b"").decode(errors="replace").strip()
        raise LabError(f"podman {' '.join(args[:3])} failed: {err}")
    return proc


def image_exists(ref: str) -> bool:
    return podman("image", "exists", ref, check=False).returncode == 0


def drop_other_tags(repo: str, keep: str) -> None:
    out = podman("images", "--format", "{{.Repository}}:{{.Tag}}", repo, check=False)
    for ref in (out.stdout or b"").decode().split():
        if ref != keep and ref.startswith(repo + ":"):
            podman("rmi", "--force", ref, check=False)


# --------------------------------------------------------------------------- images


def build_base() -> str:
    mirrors = apt_mirrors()
    tag = f"{BASE_REPO}:{inputs_hash([], BASE_RECIPE, SUITE, json.dumps(mirrors, sort_keys=True))}"
    if image_exists(tag):
        say(f"base image {tag} cached")
        return tag
    started = time.monotonic()
    CACHE_DIR.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR, prefix="rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        say(f"debootstrap {SUITE} from {mirrors[SUITE]} (about 30 s)")
        proc = subprocess.run(
            ["debootstrap", "--variant=minbase", SUITE, str(rootfs), mirrors[SUITE]],
            capture_output=True, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            log = (proc.stdout + proc.stderr).decode(errors="replace")[-2000:]
            raise LabError(f"debootstrap failed:\n{log}")
        (rootfs / "etc/apt/sources.list").write_text(sources_list(mirrors))
        for leftover in (rootfs / "var/cache/apt/archives").glob("*.deb"):
            leftover.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        proc = subprocess.run(
            ["podman", "import", "--change", "CMD=/bin/bash", "-", tag],
            stdin=tar.stdout, capture_output=True, check=False,
        )  # fmt: skip
        tar.wait()
        if proc.returncode != 0 or tar.returncode != 0:
            raise LabError(f"podman import failed: {proc.stderr.decode(errors='replace')}")
    drop_other_tags(BASE_REPO, tag)
    say(f"base image {tag} built in {time.monotonic() - started:.0f} s")
    return tag


def build_node(base: str) -> str:
    ctx = LAB_DIR / "node"
    files = sorted(p for p in ctx.iterdir() if p.is_file())
    tag = f"{NODE_REPO}:{inputs_hash(files, base)}"
    if image_exists(tag):
        say(f"node image {tag} cached")
        return tag
    started = time.monotonic()
    say("building the node image (libvirt, qemu, dnsmasq, OVS; about 1 min)")
    proc = podman(
        "build", "--network=host", "--build-arg", f"BASE={base}", "--label", f"{LAB_LABEL}=true",
        "--tag", tag, "--file", str(ctx / "Containerfile"), str(ctx),
        check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        log = (proc.stdout + proc.stderr).decode(errors="replace")[-3000:]
        raise LabError(f"node image build failed:\n{log}")
    drop_other_tags(NODE_REPO, tag)
    say(f"node image {tag} built in {time.monotonic() - started:.0f} s")
    return tag


def build_guest() -> Path:
    out = CACHE_DIR / "guest"
    proc = subprocess.run([str(LAB_DIR / "guest" / "build.sh"), str(out)], check=False)
    if proc.returncode != 0:
        raise LabError("the guest image build failed (see above)")
    return out


def build_images() -> str:
    base = build_base()
    node = build_node(base)
    build_guest()
    return node


# --------------------------------------------------------------------------- networks


def ensure_networks(topo: Topology) -> None:
    CNI_DIR.mkdir(parents=True, exist_ok=True)
    for net in topo.networks:
        path = CNI_DIR / f"{net.name}.conflist"
        want = json.dumps(cni_conflist(net), indent=2) + "\n"
        if path.exists() and path.read_text() == want:
            continue
        if path.exists():
            say(f"network {net.name} differs from the inventory: recreating it")
            remove_network(net)
        path.write_text(want)
        say(f"network {net.name}: bridge {net.bridge}, {net.subnet}, no gateway, no NAT")


def remove_network(net: LabNetwork) -> None:
    podman("network", "rm", "--force", net.name, check=False)
    (CNI_DIR / f"{net.name}.conflist").unlink(missing_ok=True)
    shutil.rmtree(CNI_IPAM_DIR / net.name, ignore_errors=True)
    delete_link(net.bridge)


def delete_link(name: str) -> None:
    from pyroute2 import IPRoute  # the venv has it; the lab's only netlink need

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)
        if idx:
            ipr.link("del", index=idx[0])


# --------------------------------------------------------------------------- hosts


def container_state(name: str) -> dict | None:
    proc = podman("container", "inspect", name, check=False)
    if proc.returncode != 0:
        return None
    data = json.loads(proc.stdout)
    return data[0] if data else None


def start_hosts(topo: Topology, image: str) -> None:
    for host in topo.hosts:
        state = container_state(host.name)
        if state is not None:
            running = state["State"]["Running"]
            same_image = state.get("ImageName") == image
            # A rebuilt or removed .cache/guest is not what a running host has mounted.
            sees_guest = (
                running
                and exec_in(
                    host.name, "test", "-s", f"{topo.images_dir}/.stamp", check=False
                ).returncode
                == 0
            )
            if running and same_image and sees_guest:
                continue
            if not running:
                why = "stopped"
            elif not same_image:
                why = "built from an older image"
            else:
                why = "not seeing the current guest image"
            say(f"host {host.name} is {why}: recreating it")
            podman("rm", "--force", "--time", "0", host.name, check=False)
        podman(*run_args(host, topo, image))
        say(f"host {host.name} ({host.cloud}) started")


def exec_in(host: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return podman("exec", host, *cmd, check=check)


def wait_ready(topo: Topology, timeout: float = READY_TIMEOUT) -> dict[str, tuple[str, str]]:
    """Wait until libvirtd answers in every host; return their libvirt and QEMU versions."""
    deadline = time.monotonic() + timeout
    versions: dict[str, tuple[str, str]] = {}
    pending = list(topo.host_names)
    while pending:
        for name in list(pending):
            proc = exec_in(
                name, "virsh", "-c", "qemu:///system", "version", "--daemon", check=False
            )
            if proc.returncode == 0:
                text = proc.stdout.decode()
                daemon = re.search(r"Running against daemon: (\S+)", text)
                qemu = re.search(r"Running hypervisor: QEMU (\S+)", text)
                versions[name] = (
                    daemon.group(1) if daemon else "?",
                    qemu.group(1) if qemu else "?",
                )
                pending.remove(name)
        if not pending:
            break
        if time.monotonic() > deadline:
            logs = {
                n: podman("logs", "--tail", "20", n, check=False).stdout.decode() for n in pending
            }
            raise LabError(f"libvirtd did not answer within {timeout:.0f} s in {pending}: {logs}")
        time.sleep(0.5)
    return versions


def shape_links(topo: Topology) -> None:
    for host in topo.hosts:
        for net in (topo.underlays[host.cloud], topo.wan):
            current = exec_in(host.name, "tc", "qdisc", "show", "dev", net.interface)
            for cmd in shaping_commands(net, current.stdout.decode()):
                exec_in(host.name, *cmd)


def print_hosts(topo: Topology, versions: dict[str, tuple[str, str]] | None = None) -> None:
    print(f"{'host':<10} {'cloud':<9} {'underlay (eth0)':<17} {'wan (eth1)':<14} "
          f"{'libvirt':<8} {'qemu':<8} state")  # fmt: skip
    for host in topo.hosts:
        state = container_state(host.name)
        status = "absent" if state is None else state["State"]["Status"]
        libvirt, qemu = (versions or {}).get(host.name, ("-", "-"))
        print(f"{host.name:<10} {host.cloud:<9} {host.underlay_ip!s:<17} {host.wan_ip!s:<14} "
              f"{libvirt:<8} {qemu:<8} {status}")  # fmt: skip
    print(f"WAN {topo.wan.subnet} shaped to {topo.wan.rate or 'unlimited'} (tc htb); shared "
          f"directory {STATE_DIR / 'shared'} at {topo.shared_dir} in every host")  # fmt: skip


# --------------------------------------------------------------------------- commands


def cmd_up(topo: Topology) -> None:
    started = time.monotonic()
    image = build_images()
    (STATE_DIR / "shared").mkdir(parents=True, exist_ok=True)
    ensure_networks(topo)
    start_hosts(topo, image)
    versions = wait_ready(topo)
    shape_links(topo)
    say(f"up in {time.monotonic() - started:.1f} s")
    print_hosts(topo, versions)


def lab_containers() -> list[str]:
    out = podman("ps", "--all", "--filter", f"label={LAB_LABEL}=true", "--format", "{{.Names}}",
                 check=False)  # fmt: skip
    return (out.stdout or b"").decode().split()


def cmd_down(topo: Topology) -> None:
    names = sorted(set(lab_containers()) | {h.name for h in topo.hosts if container_state(h.name)})
    if names:
        podman("rm", "--force", "--time", "0", *names)
        say(f"removed hosts {', '.join(names)}")
    for net in topo.networks:
        remove_network(net)
    # Networks the lab made under an older inventory (it may have been edited).
    for path in CNI_DIR.glob("mcm-*.conflist"):
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if old.get("args", {}).get("podman_labels", {}).get(LAB_LABEL) == "true":
            bridge = old["plugins"][0].get("bridge", "")
            remove_network(LabNetwork(old["name"], bridge, ipaddress.IPv4Network("0.0.0.0/32"), ""))
    shutil.rmtree(STATE_DIR, ignore_errors=True)
    say("down: no lab host, network, bridge or shared state left")


def cmd_clean(topo: Topology) -> None:
    cmd_down(topo)
    for repo in (NODE_REPO, BASE_REPO):
        out = podman("images", "--format", "{{.Repository}}:{{.Tag}}", repo, check=False)
        for ref in (out.stdout or b"").decode().split():
            podman("rmi", "--force", ref, check=False)
    shutil.rmtree(CACHE_DIR, ignore_errors=True)
    say("clean: images and caches removed")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument(
        "command",
        choices=["up", "down", "clean", "status", "images", "hosts"],
        help="up: build (cached) and start; down: remove all the lab made but the images; "
        "clean: down + images; status: print the hosts; images: build only; "
        "hosts: print the host names",
    )
    parser.add_argument("--inventory", type=Path, default=INVENTORY)
    args = parser.parse_args(argv)
    try:
        topo = load_topology(args.inventory)
        if args.command == "hosts":
            print(" ".join(topo.host_names))
        elif args.command == "images":
            build_images()
        elif args.command == "up":
            cmd_up(topo)
        elif args.command == "down":
            cmd_down(topo)
        elif args.command == "clean":
            cmd_clean(topo)
        else:
            running = all(container_state(n) for n in topo.host_names)
            print_hosts(topo, wait_ready(topo, timeout=5) if running else None)
    except LabError as exc:
        print(f"lab: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
