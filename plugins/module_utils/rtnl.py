# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading rtnetlink dumps (links, IPv4 addresses and routes, bridge FDB) fast.

pyroute2 decodes every attribute of every message it receives: a link carries about 40
(statistics, queue counts, AF_SPEC...), and decoding a dump of the 400 links of a host
with 100 tenant networks took 0.1-0.2 s, most of a no-op ``host_network`` run's netlink
reads. This reader asks the kernel for the same dumps over a plain ``AF_NETLINK`` socket
of the standard library and decodes only the attributes the ``netlink`` engines read;
the others are skipped unread. pyroute2 still does every change and every other request.

A decoded message mimics the part of pyroute2's interface those engines use:
``msg["index"]`` for the header's fields (pyroute2's names) and ``msg.get_attr(NAME)``
for an attribute (pyroute2's names and value types; ``None`` when absent), also on the
nested ``IFLA_LINKINFO`` and ``IFLA_INFO_DATA``. ``tests/unit/test_rtnl.py`` checks the
decoding against pyroute2's own on messages pyroute2 encoded.
"""

from __future__ import annotations

import errno
import functools
import os
import socket
import struct
from collections.abc import Mapping
from typing import Any

NETLINK_ROUTE = 0
CLONE_NEWNET = 0x40000000
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
RTM_NEWNSID = 88
RTM_GETNSID = 90
NETNSA_NSID = 1
NETNSA_FD = 3
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
RECV_SIZE = 1 << 16  # the kernel fills at most 32 kB per dump message batch
_NLMSG = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")
_ERRNO = struct.Struct("=i")


class RtnlError(OSError):
    """The kernel refused a dump request (``errno`` set), or its answer was cut short."""


class DumpInterrupted(RtnlError):
    """The table changed while the kernel dumped it (NLM_F_DUMP_INTR): read it again."""


# --------------------------------------------------------------------------- decoders
def _asciiz(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode("utf-8", "replace")


def _u8(data: bytes) -> int:
    return data[0]


def _u32(data: bytes) -> int:
    return struct.unpack_from("=I", data)[0]


def _s32(data: bytes) -> int:
    return struct.unpack_from("=i", data)[0]


def _be16(data: bytes) -> int:
    return struct.unpack_from(">H", data)[0]


def _l2addr(data: bytes) -> str:
    return ":".join(f"{b:02x}" for b in data)


def _ipaddr(data: bytes) -> str:
    if len(data) == 4:
        return socket.inet_ntop(socket.AF_INET, data)
    if len(data) == 16:
        return socket.inet_ntop(socket.AF_INET6, data)
    return data.hex()


# attribute type -> (pyroute2's name, decoder); a nested map decodes an NLA list
AttrMap = Mapping[int, tuple[str, Any]]

_VXLAN: AttrMap = {
    1: ("IFLA_VXLAN_ID", _u32),
    4: ("IFLA_VXLAN_LOCAL", _ipaddr),
    5: ("IFLA_VXLAN_TTL", _u8),
    7: ("IFLA_VXLAN_LEARNING", _u8),
    15: ("IFLA_VXLAN_PORT", _be16),
}
# IFLA_INFO_DATA depends on IFLA_INFO_KIND: only VXLAN's is read
_INFO_DATA: Mapping[str, AttrMap] = {"vxlan": _VXLAN}
_LINKINFO: AttrMap = {1: ("IFLA_INFO_KIND", _asciiz), 2: ("IFLA_INFO_DATA", None)}
_LINK: AttrMap = {
    1: ("IFLA_ADDRESS", _l2addr),
    3: ("IFLA_IFNAME", _asciiz),
    4: ("IFLA_MTU", _u32),
    5: ("IFLA_LINK", _u32),
    10: ("IFLA_MASTER", _u32),
    18: ("IFLA_LINKINFO", _LINKINFO),
    20: ("IFLA_IFALIAS", _asciiz),
    27: ("IFLA_GROUP", _u32),
    37: ("IFLA_LINK_NETNSID", _s32),
}
_ADDR: AttrMap = {1: ("IFA_ADDRESS", _ipaddr), 2: ("IFA_LOCAL", _ipaddr)}
_ROUTE: AttrMap = {
    1: ("RTA_DST", _ipaddr),
    4: ("RTA_OIF", _u32),
    5: ("RTA_GATEWAY", _ipaddr),
    6: ("RTA_PRIORITY", _u32),
    15: ("RTA_TABLE", _u32),
}
_NEIGH: AttrMap = {1: ("NDA_DST", _ipaddr), 2: ("NDA_LLADDR", _l2addr)}


class Kind:
    """One kind of dump: request type, answer type, header layout (pyroute2's field names)
    and the attributes decoded."""

    def __init__(
        self, request: int, answer: int, header: str, fields: tuple[str, ...], attrs: AttrMap
    ) -> None:
        self.request, self.answer, self.attrs = request, answer, attrs
        self.header = struct.Struct("=" + header)
        self.fields = fields
        # Every value the header unpacks gets a name: checked once here, so the decoder can
        # zip fields and values without zip(strict=True), which Python 3.9 lacks.
        count = len(self.header.unpack(bytes(self.header.size)))
        if count != len(fields):
            raise ValueError(f"header {header!r} holds {count} values, {len(fields)} names given")


KINDS: dict[str, Kind] = {
    # struct ifinfomsg: family, pad, type, index, flags, change
    "link": Kind(18, 16, "BxHiII", ("family", "ifi_type", "index", "flags", "change"), _LINK),
    # struct ifaddrmsg: family, prefixlen, flags, scope, index
    "addr": Kind(22, 20, "BBBBI", ("family", "prefixlen", "flags", "scope", "index"), _ADDR),
    # struct rtmsg
    "route": Kind(
        26,
        24,
        "BBBBBBBBI",
        ("family", "dst_len", "src_len", "tos", "table", "proto", "scope", "type", "flags"),
        _ROUTE,
    ),
    # struct ndmsg: family, pad, pad, ifindex, state, flags, type
    "neigh": Kind(30, 28, "BxxxiHBB", ("family", "ifindex", "state", "flags", "ndm_type"), _NEIGH),
}


class Attrs(dict):
    """Decoded attributes: ``get_attr(name)`` as pyroute2 (the first occurrence, or None)."""

    def get_attr(self, name: str) -> Any:
        return self.get(name)


class Message(dict):
    """A decoded message: the header's fields as items, the attributes by ``get_attr``."""

    def __init__(self, fields: Mapping[str, Any], attrs: Attrs) -> None:
        super().__init__(fields)
        self.attrs = attrs

    def get_attr(self, name: str) -> Any:
        return self.attrs.get(name)


def decode_attrs(data: bytes | memoryview, offset: int, end: int, attrs: AttrMap) -> Attrs:
    """The attributes of ``attrs`` found in ``data[offset:end]``; the others are skipped."""
    out = Attrs()
    while offset + 4 <= end:
        length, kind = _NLA.unpack_from(data, offset)
        if length < 4:
            break
        known = attrs.get(kind & NLA_TYPE_MASK)
        if known is not None and known[0] not in out:
            name, decoder = known
            start, stop = offset + 4, min(offset + length, end)
            if decoder is None:  # IFLA_INFO_DATA: by the kind read before it
                sub = _INFO_DATA.get(out.get("IFLA_INFO_KIND") or "")
                if sub is not None:
                    out[name] = decode_attrs(data, start, stop, sub)
            elif isinstance(decoder, Mapping):
                out[name] = decode_attrs(data, start, stop, decoder)
            else:
                out[name] = decoder(bytes(data[start:stop]))
        offset += (length + 3) & ~3
    return out


def decode(data: bytes, kind: Kind, seq: int) -> tuple[list[Message], bool, bool]:
    """The messages of one receive buffer that answer request ``seq``, whether the answer
    ended (NLMSG_DONE, or the acknowledgement of a request sent with NLM_F_ACK) and whether
    the kernel flagged it interrupted; messages of another request are skipped."""
    messages: list[Message] = []
    interrupted = False
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, msg_type, flags, msg_seq, _pid = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size or offset + length > len(data):
            raise RtnlError(errno.EBADMSG, "truncated netlink message in a dump")
        body = offset + _NLMSG.size
        if msg_seq != seq:
            offset += (length + 3) & ~3
            continue
        interrupted = interrupted or bool(flags & NLM_F_DUMP_INTR)
        if msg_type == NLMSG_DONE:
            return messages, True, interrupted
        elif msg_type == NLMSG_ERROR:
            code = -_ERRNO.unpack_from(data, body)[0]
            if code:
                raise RtnlError(code, os.strerror(code))
            return messages, True, interrupted  # acknowledged
        elif msg_type == kind.answer:
            values = kind.header.unpack_from(data, body)
            attrs = decode_attrs(data, body + kind.header.size, offset + length, kind.attrs)
            messages.append(Message(zip(kind.fields, values), attrs))  # noqa: B905 (Kind checks)
        offset += (length + 3) & ~3
    return messages, False, interrupted


@functools.lru_cache(maxsize=1)
def _ctypes() -> tuple[Any, Any]:
    import ctypes

    return ctypes, ctypes.CDLL(None, use_errno=True)


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace ``fd`` refers to."""
    if hasattr(os, "setns"):  # Python 3.12 and later
        os.setns(fd, CLONE_NEWNET)  # novm: guarded, libc's setns below on older Pythons
        return
    ctypes, libc = _ctypes()
    if libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def open_socket_in(path: str) -> socket.socket:
    """A route netlink socket in the namespace ``path`` (/run/netns/NAME): the thread
    enters it for the socket's creation only, the socket stays bound to it."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(path, os.O_RDONLY)
        try:
            setns(target)
            try:
                return open_socket()
            finally:
                setns(own)
        finally:
            os.close(target)
    finally:
        os.close(own)


def open_socket(protocol: int = NETLINK_ROUTE) -> socket.socket:
    """A netlink socket (route by default) in the calling thread's network namespace."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
    try:
        sock.bind((0, 0))
    except OSError:
        sock.close()
        raise
    return sock


def request(
    kind: Kind, family: int, seq: int, flags: int = NLM_F_DUMP, attrs: bytes = b""
) -> bytes:
    """A request of ``kind``: its header with ``family`` (other fields 0), then ``attrs``."""
    body = kind.header.pack(family, *([0] * (len(kind.fields) - 1))) + attrs
    return message(kind.request, NLM_F_REQUEST | flags, seq, body)


def message(msg_type: int, flags: int, seq: int, body: bytes) -> bytes:
    """A netlink message: its header, then ``body``."""
    return _NLMSG.pack(_NLMSG.size + len(body), msg_type, flags, seq, 0) + body


def dump(sock: socket.socket, what: str, family: int = 0, seq: int = 1) -> list[Message]:
    """Every object of one kind (``link``, ``addr``, ``route``, ``neigh``) in the socket's
    namespace, of one address family (0: all; the kernel filters)."""
    kind = KINDS[what]
    sock.send(request(kind, family, seq))
    return read_dump(sock, kind, seq, what)


def read_dump(sock: socket.socket, kind: Kind, seq: int, what: str) -> list[Message]:
    """The messages answering the dump request ``seq`` (of ``kind``), read to its end."""
    messages: list[Message] = []
    interrupted = False
    for _batch in range(1_000_000):  # a dump ends with NLMSG_DONE; bounded all the same
        data = _receive(sock)
        batch, done, cut = decode(data, kind, seq)
        messages.extend(batch)
        interrupted = interrupted or cut
        if done:
            if interrupted:  # read to its end first: nothing of it stays in the socket
                raise DumpInterrupted(errno.EAGAIN, f"the kernel interrupted the {what} dump")
            return messages
    raise RtnlError(errno.EOVERFLOW, "a netlink dump did not end")


_NO_ANSWER = Kind(0, 0, "", (), {})  # a request the kernel answers by its acknowledgement


def acknowledged(sock: socket.socket, seq: int) -> None:
    """Waits for the kernel's answer to request ``seq`` sent with NLM_F_ACK (an
    NLMSG_ERROR message); raises its error, returns on success."""
    for _attempt in range(1000):  # the answer, after anything left of an earlier request
        _messages, done, _cut = decode(_receive(sock), _NO_ANSWER, seq)
        if done:
            return
    raise RtnlError(errno.ENOMSG, "no answer to a netlink request")


def _receive(sock: socket.socket) -> bytes:
    data, _ancdata, flags, _addr = sock.recvmsg(RECV_SIZE)
    if flags & socket.MSG_TRUNC:
        raise RtnlError(errno.EMSGSIZE, "a netlink message did not fit the buffer")
    return data


_NSID = Kind(RTM_GETNSID, RTM_NEWNSID, "Bxxx", ("family",), {NETNSA_NSID: ("NETNSA_NSID", _s32)})


def nsid(sock: socket.socket, fd: int, seq: int = 1) -> int | None:
    """The id under which the socket's namespace knows the namespace ``fd`` refers to
    (IFLA_LINK_NETNSID of a veth whose peer is there), None when it has none."""
    attr = _NLA.pack(8, NETNSA_FD) + struct.pack("=I", fd)
    sock.send(request(_NSID, 0, seq, flags=0, attrs=attr))
    for _attempt in range(1000):  # the answer, after anything left of an earlier request
        messages, _done, _cut = decode(_receive(sock), _NSID, seq)
        if messages:
            value = messages[0].get_attr("NETNSA_NSID")
            return None if value is None or value < 0 else value
    raise RtnlError(errno.ENOMSG, "no answer to a netns id request")
