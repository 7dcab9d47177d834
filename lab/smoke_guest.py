#!/usr/bin/env python
"""Lab self-check, run inside one lab host: boot the guest image and see it take a lease.

It builds a throwaway L2 segment (a bridge, a DHCP namespace with a veth leg created
directly inside it, dnsmasq serving that segment only), boots the busybox guest from the
lab's image directory with libvirt on that bridge, waits for its DHCP lease, pings it,
writes a marker file to its disk through the serial console and reads it back, then
removes everything it made, also when a step fails. Prints one JSON object.

Only python3, pyroute2 and libvirt-python are needed (the lab node has them).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import xml.sax.saxutils as su
from pathlib import Path

import libvirt
from pyroute2 import IPRoute, NetNS, netns

NAME = "mcm-smoke"
BRIDGE = "mcmsmk-br"
VETH_ROOT = "mcmsmk-d0"
VETH_NS = "mcmsmk-d1"
NAMESPACE = "mcm-smoke-dhcp"
SUBNET = "10.255.0"  # /24 inside the throwaway segment only
MAC = "52:54:00:5e:00:01"
MTU = 1450


class SmokeError(Exception):
    pass


def in_namespace(ns: str, argv: list[str], **kwargs: object) -> subprocess.Popen:
    """Start a program inside a network namespace (setns in the child, no `ip netns exec`)."""

    def enter() -> None:
        netns.setns(ns, flags=0)

    return subprocess.Popen(argv, preexec_fn=enter, **kwargs)  # noqa: PLW1509 (single-threaded)


def domain_xml(work: Path, images: Path, volume: str) -> str:
    q = su.quoteattr
    return f"""<domain type='qemu'>
  <name>{NAME}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{images / "vmlinux"}</kernel>
    <initrd>{images / "initrd.img"}</initrd>
    <cmdline>console=ttyS0 panic=-1 mcm.hostname={NAME}</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <on_reboot>restart</on_reboot>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file={q(volume)}/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='bridge'>
      <source bridge='{BRIDGE}'/>
      <mac address='{MAC}'/>
      <model type='virtio'/>
      <mtu size='{MTU}'/>
    </interface>
    <serial type='unix'>
      <source mode='bind' path={q(str(work / "console.sock"))}/>
      <log file={q(str(work / "console.log"))} append='off'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>"""


def pool_xml(work: Path) -> str:
    return f"""<pool type='dir'><name>{NAME}</name>
  <target><path>{work / "disks"}</path></target></pool>"""


def volume_xml(base: Path) -> str:
    return f"""<volume><name>{NAME}.qcow2</name>
  <capacity unit='MiB'>64</capacity>
  <target><format type='qcow2'/></target>
  <backingStore><path>{base}</path><format type='qcow2'/></backingStore>
</volume>"""


def console(sock_path: Path, command: str, timeout: float = 30.0) -> str:
    """Run one shell command on the guest's serial console and return its output."""
    token = f"MCM{int(time.time() * 1000) % 100000}"
    # The shell echoes what we type; the end line is computed so it appears only as output.
    line = f"{command}; echo {token}-$((40+2))\n"
    end = f"{token}-42"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        sock.connect(str(sock_path))
        sock.sendall(b"\n")
        time.sleep(0.3)
        sock.sendall(line.encode())
        buf = ""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                continue
            if not chunk:
                break
            buf += chunk.decode(errors="replace")
            if end in buf.split(line.strip(), 1)[-1]:
                out = buf.split(line.strip(), 1)[-1].split(end, 1)[0]
                return out.replace("\r", "").strip()
    raise SmokeError(f"no answer on the serial console to {command!r} within {timeout:.0f} s")


def read_lease(path: Path) -> tuple[str, str] | None:
    try:
        for row in path.read_text().splitlines():
            fields = row.split()
            if len(fields) >= 4 and fields[1].lower() == MAC:
                return fields[2], fields[3]
    except FileNotFoundError:
        return None
    return None


def ping(ip: str, count: int = 3) -> int:
    proc = in_namespace(
        NAMESPACE,
        ["ping", "-c", str(count), "-W", "2", "-i", "0.3", ip],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    out, _err = proc.communicate(timeout=20)
    received = 0
    for row in out.decode().splitlines():
        if "packets transmitted" in row:
            received = int(row.split(",")[1].split()[0])
    return received


def setup_segment(work: Path) -> subprocess.Popen:
    netns.create(NAMESPACE)
    with IPRoute() as ipr:
        ipr.link("add", ifname=BRIDGE, kind="bridge")
        ipr.link(
            "add", ifname=VETH_ROOT, kind="veth", peer={"ifname": VETH_NS, "net_ns_fd": NAMESPACE}
        )
        br = ipr.link_lookup(ifname=BRIDGE)[0]
        leg = ipr.link_lookup(ifname=VETH_ROOT)[0]
        ipr.link("set", index=leg, master=br, mtu=MTU, state="up")
        ipr.link("set", index=br, mtu=MTU, state="up")
    with NetNS(NAMESPACE) as ns:
        idx = ns.link_lookup(ifname=VETH_NS)[0]
        ns.link("set", index=idx, mtu=MTU, state="up")
        ns.addr("add", index=idx, address=f"{SUBNET}.2", prefixlen=24)
        ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
    return in_namespace(
        NAMESPACE,
        [
            "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces",
            f"--interface={VETH_NS}", "--except-interface=lo", "--port=0",
            f"--dhcp-range={SUBNET}.100,{SUBNET}.150,255.255.255.0,5m",
            f"--dhcp-option=option:mtu,{MTU}", "--dhcp-option=option:router",
            f"--dhcp-leasefile={work / 'leases'}", f"--pid-file={work / 'dnsmasq.pid'}",
            f"--log-facility={work / 'dnsmasq.log'}", "--log-dhcp",
        ],
    )  # fmt: skip


def teardown(conn: libvirt.virConnect | None, dnsmasq: subprocess.Popen | None) -> list[str]:
    """Remove everything the check made; return what could not be removed."""
    problems: list[str] = []
    if conn is not None:
        try:
            dom = conn.lookupByName(NAME)
            if dom.isActive():
                dom.destroy()
            if dom.isPersistent():
                dom.undefine()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                problems.append(f"domain: {exc}")
        try:
            pool = conn.storagePoolLookupByName(NAME)
            for vol in pool.listAllVolumes():
                vol.delete()
            pool.destroy()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                problems.append(f"pool: {exc}")
    if dnsmasq is not None and dnsmasq.poll() is None:
        dnsmasq.send_signal(signal.SIGTERM)
        try:
            dnsmasq.wait(timeout=5)
        except subprocess.TimeoutExpired:
            dnsmasq.kill()
            dnsmasq.wait()
    with IPRoute() as ipr:
        for name in (VETH_ROOT, BRIDGE):
            idx = ipr.link_lookup(ifname=name)
            if idx:
                ipr.link("del", index=idx[0])
    if NAMESPACE in netns.listnetns():
        netns.remove(NAMESPACE)
    return problems


def run(images: Path, work: Path, boot_timeout: float) -> dict:
    result: dict = {"host": socket.gethostname(), "domain": NAME, "mac": MAC}
    conn = libvirt.open("qemu:///system")
    dnsmasq = None
    # Leftovers of an interrupted earlier run would make every step below fail.
    teardown(conn, None)
    try:
        (work / "disks").mkdir(parents=True, exist_ok=True)
        for stale in ("leases", "console.log", "console.sock"):
            (work / stale).unlink(missing_ok=True)
        dnsmasq = setup_segment(work)
        pool = conn.storagePoolCreateXML(pool_xml(work), 0)
        vol = pool.createXML(volume_xml(images / "disk.qcow2"), 0)
        started = time.monotonic()
        conn.createXML(domain_xml(work, images, vol.path()), 0)
        deadline = started + boot_timeout
        lease = None
        while lease is None and time.monotonic() < deadline:
            if dnsmasq.poll() is not None:
                raise SmokeError(f"dnsmasq exited with {dnsmasq.returncode}")
            lease = read_lease(work / "leases")
            time.sleep(0.5)
        if lease is None:
            log = (work / "console.log").read_text(errors="replace")[-1500:]
            raise SmokeError(f"no DHCP lease within {boot_timeout:.0f} s; console:\n{log}")
        result["lease_ip"], result["lease_hostname"] = lease
        result["seconds_to_lease"] = round(time.monotonic() - started, 1)
        result["pings_answered"] = ping(lease[0])
        marker = f"mcm-marker-{os.getpid()}"
        console(work / "console.sock", "mount | grep -q /mnt/disk", timeout=60)
        result["guest_mtu"] = console(work / "console.sock", "cat /sys/class/net/eth0/mtu")
        console(work / "console.sock", f"echo {marker} > /mnt/disk/marker; sync")
        result["marker_read_back"] = console(work / "console.sock", "cat /mnt/disk/marker")
        result["marker_ok"] = result["marker_read_back"] == marker
        result["ok"] = bool(result["pings_answered"]) and result["marker_ok"]
    finally:
        problems = teardown(conn, dnsmasq)
        conn.close()
        result["cleaned"] = not problems
        if problems:
            result["cleanup_problems"] = problems
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--images", type=Path, default=Path("/var/lib/mcm/images"))
    parser.add_argument("--work", type=Path, default=Path("/var/lib/mcm/smoke"))
    parser.add_argument("--boot-timeout", type=float, default=180.0)
    args = parser.parse_args()
    try:
        result = run(args.images, args.work, args.boot_timeout)
    except (SmokeError, libvirt.libvirtError, OSError, subprocess.SubprocessError) as exc:
        print(json.dumps({"ok": False, "error": str(exc)}))
        return 1
    print(json.dumps(result))
    return 0 if result.get("ok") and result.get("cleaned") else 1


if __name__ == "__main__":
    sys.exit(main())
