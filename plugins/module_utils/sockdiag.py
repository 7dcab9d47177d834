# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Cutting one process's TCP connections to a peer (sock_diag ``SOCK_DESTROY``).

A migration whose destination went silent (the inter-cloud link cut) can wait in qemu
for as long as TCP does: a stream with unacknowledged data gives up after
``net.ipv4.tcp_retries2`` (about 15 minutes by default), and a stream that waits for an
answer with nothing left to send (qemu's NBD client once its writes were acknowledged)
never gives up, and libvirt's abortJob waits for it. Destroying the qemu process's
sockets to the destination (what ``ss -K`` does) makes each pending call fail with
ECONNABORTED at once, so the job ends and the VM keeps running on its source.

The kernel must have ``CONFIG_INET_DIAG_DESTROY`` (Debian's has); the caller needs
CAP_NET_ADMIN in the network namespace of the sockets. The sockets are found with a
dump of the namespace's TCP sockets (IPv4 and IPv6), kept when their inode is one of the
process's open file descriptors and their peer one of the given addresses.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

from ansible_collections.multicloud.migration.plugins.module_utils import rtnl

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
SOCK_DESTROY = 21
ALL_STATES = 0xFFFFFFFF
TCP_LISTEN = 10
# struct inet_diag_sockid: sport and dport (big endian), src and dst (16 bytes each),
# interface, cookie (2 x u32)
_SOCKID = "2s2s16s16sI8s"
# struct inet_diag_req_v2: family, protocol, ext, pad, states, the sockid
_REQUEST = struct.Struct("=BBBxI" + _SOCKID)
# struct inet_diag_msg: family, state, timer, retrans, the sockid, expires, rqueue, wqueue,
# uid, inode
_TCP = rtnl.Kind(
    SOCK_DIAG_BY_FAMILY,
    SOCK_DIAG_BY_FAMILY,
    "BBBB" + _SOCKID + "IIIII",
    ("family", "state", "timer", "retrans", "sport", "dport", "src", "dst", "iface",
     "cookie", "expires", "rqueue", "wqueue", "uid", "inode"),
    {},
)  # fmt: skip


@dataclass(frozen=True)
class Connection:
    """One TCP socket as the kernel's dump names it (the raw id fields to destroy it)."""

    family: int
    state: int
    sport: bytes
    dport: bytes
    src: bytes
    dst: bytes
    iface: int
    cookie: bytes
    inode: int

    @property
    def peer(self) -> str:
        return _address(self.family, self.dst)

    def __str__(self) -> str:
        local, remote = _address(self.family, self.src), self.peer
        if self.family == socket.AF_INET6:
            local, remote = f"[{local}]", f"[{remote}]"
        return (f"{local}:{struct.unpack('>H', self.sport)[0]} -> "
                f"{remote}:{struct.unpack('>H', self.dport)[0]}")  # fmt: skip


def _address(family: int, raw: bytes) -> str:
    return socket.inet_ntop(family, raw[:4] if family == socket.AF_INET else raw)


def connections(sock: socket.socket, family: int, seq: int = 1) -> list[Connection]:
    """Every TCP socket of one address family in the netlink socket's namespace, listening
    ones left out."""
    body = _REQUEST.pack(family, socket.IPPROTO_TCP, 0, ALL_STATES, b"", b"", b"", b"", 0, b"")
    sock.send(rtnl.message(SOCK_DIAG_BY_FAMILY, rtnl.NLM_F_REQUEST | rtnl.NLM_F_DUMP, seq, body))
    found = []
    for msg in rtnl.read_dump(sock, _TCP, seq, "TCP socket"):
        if msg["state"] == TCP_LISTEN:
            continue
        found.append(Connection(**{key: msg[key] for key in Connection.__dataclass_fields__}))
    return found


def destroy(sock: socket.socket, conn: Connection, seq: int) -> None:
    """Destroys one socket (RtnlError on failure; ENOENT when it is already gone)."""
    body = _REQUEST.pack(conn.family, socket.IPPROTO_TCP, 0, ALL_STATES, conn.sport, conn.dport,
                         conn.src, conn.dst, conn.iface, conn.cookie)  # fmt: skip
    sock.send(rtnl.message(SOCK_DESTROY, rtnl.NLM_F_REQUEST | rtnl.NLM_F_ACK, seq, body))
    rtnl.acknowledged(sock, seq)


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets process ``pid`` has open (from /proc/PID/fd)."""
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    for entry in os.listdir(fd_dir):
        try:
            target = os.readlink(f"{fd_dir}/{entry}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def cut(pid: int, peers: set[str], timeout: float = 5.0) -> list[str]:
    """Destroys every TCP connection of process ``pid`` to one of the addresses ``peers``
    in the caller's network namespace; what was cut (``local:port -> peer:port``).
    OSError (RtnlError included) when the dump or a destroy fails."""
    wanted = {ipaddress.ip_address(peer) for peer in peers}
    inodes = socket_inodes(pid)
    done: list[str] = []
    with rtnl.open_socket(NETLINK_SOCK_DIAG) as sock:
        sock.settimeout(timeout)
        seq = 0
        for family in (socket.AF_INET, socket.AF_INET6):
            seq += 1
            for conn in connections(sock, family, seq):
                if conn.inode not in inodes or ipaddress.ip_address(conn.peer) not in wanted:
                    continue
                seq += 1
                try:
                    destroy(sock, conn, seq)
                except rtnl.RtnlError as exc:
                    if exc.errno != errno.ENOENT:  # closed between the dump and now
                        raise
                    continue
                done.append(str(conn))
    return done
