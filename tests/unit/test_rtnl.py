"""rtnl's dump decoding against pyroute2's: messages pyroute2 encodes, both decoders read."""

from __future__ import annotations

import errno
import socket
import struct

import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from ansible_collections.multicloud.migration.plugins.module_utils import netlink as nl
from ansible_collections.multicloud.migration.plugins.module_utils import rtnl

SEQ = 7


def _encode(cls, msg_type, fields, attrs, seq=SEQ):
    msg = cls()
    msg["header"]["type"] = msg_type
    msg["header"]["sequence_number"] = seq
    msg["header"]["flags"] = 2  # NLM_F_MULTI, as in a dump
    for key, value in fields.items():
        msg[key] = value
    msg["attrs"] = attrs
    msg.encode()
    return bytes(msg.data)


def _done(seq=SEQ):
    return struct.pack("=IHHIIi", 20, rtnl.NLMSG_DONE, 2, seq, 0, 0)


def _error(code, seq=SEQ):
    return struct.pack("=IHHIIi", 36, rtnl.NLMSG_ERROR, 0, seq, 0, -code) + bytes(16)


def _pyroute2(cls, data):
    msg = cls(data)
    msg.decode()
    return msg


def _same_attrs(ours, theirs, attrs):
    """Every attribute rtnl decodes has pyroute2's value (nested maps compared in turn)."""
    for name, decoder in attrs.values():
        if name == "IFLA_INFO_DATA":
            kind = theirs.get_attr("IFLA_INFO_KIND")
            sub = rtnl._INFO_DATA.get(kind)
            if sub is None:
                assert ours.get_attr(name) is None
                continue
            _same_attrs(ours.get_attr(name), theirs.get_attr(name), sub)
        elif isinstance(decoder, dict):
            if theirs.get_attr(name) is None:
                assert ours.get_attr(name) is None
                continue
            _same_attrs(ours.get_attr(name), theirs.get_attr(name), decoder)
        else:
            assert ours.get_attr(name) == theirs.get_attr(name), name


VXLAN_LINK = {
    "fields": {"family": 0, "index": 5, "flags": 0x1043, "ifi_type": 1},
    "attrs": [
        ("IFLA_IFNAME", "vxlan-1001"),
        ("IFLA_TXQLEN", 1000),  # not read: skipped
        ("IFLA_MTU", 1450),
        ("IFLA_ADDRESS", "52:54:00:aa:bb:cc"),
        ("IFLA_MASTER", 3),
        ("IFLA_GROUP", 0),
        (
            "IFLA_LINKINFO",
            {
                "attrs": [
                    ("IFLA_INFO_KIND", "vxlan"),
                    (
                        "IFLA_INFO_DATA",
                        {
                            "attrs": [
                                ("IFLA_VXLAN_ID", 1001),
                                ("IFLA_VXLAN_LOCAL", "172.30.0.21"),
                                ("IFLA_VXLAN_TTL", 3),
                                ("IFLA_VXLAN_LEARNING", 0),
                                ("IFLA_VXLAN_PORT", 4789),
                            ]
                        },
                    ),
                ]
            },
        ),
        ("IFLA_IFALIAS", "mcm:acme/web"),
    ],
}
VETH_LINK = {
    "fields": {"family": 0, "index": 9, "flags": 0, "ifi_type": 1},
    "attrs": [
        ("IFLA_IFNAME", "dhb-1001"),
        ("IFLA_MTU", 1450),
        ("IFLA_ADDRESS", "0a:1b:2c:3d:4e:5f"),
        ("IFLA_LINK", 2),
        ("IFLA_LINK_NETNSID", 0),
        ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "veth")]}),
    ],
}
PLAIN_LINK = {"fields": {"family": 0, "index": 1, "flags": 0x49}, "attrs": [("IFLA_IFNAME", "lo")]}


@pytest.mark.parametrize("link", [VXLAN_LINK, VETH_LINK, PLAIN_LINK], ids=["vxlan", "veth", "lo"])
def test_links_decode_as_pyroute2_decodes_them(link):
    data = _encode(ifinfmsg, 16, link["fields"], link["attrs"])
    messages, done, _cut = rtnl.decode(data, rtnl.KINDS["link"], SEQ)
    theirs = _pyroute2(ifinfmsg, data)
    assert not done and len(messages) == 1
    ours = messages[0]
    for field in ("family", "index", "flags", "ifi_type"):
        assert ours[field] == theirs[field]
    _same_attrs(ours, theirs, rtnl._LINK)
    # what the link engine makes of them is the same
    assert nl._parse_link(ours, "ns") == nl._parse_link(theirs, "ns")


def test_a_vxlan_link_gives_the_engine_its_tunnel():
    data = _encode(ifinfmsg, 16, VXLAN_LINK["fields"], VXLAN_LINK["attrs"])
    record = nl._parse_link(rtnl.decode(data, rtnl.KINDS["link"], SEQ)[0][0], None)
    assert record["vxlan"] == {
        "id": 1001, "port": 4789, "learning": False, "local": "172.30.0.21", "ttl": 3,
    }  # fmt: skip
    assert (record["name"], record["mac"], record["owner"], record["state"]) == (
        "vxlan-1001", "52:54:00:aa:bb:cc", "mcm:acme/web", "up",
    )  # fmt: skip
    assert (record["_index"], record["_master"], record["_link_netnsid"]) == (5, 3, None)


def test_addresses_routes_and_fdb_entries_decode_as_pyroute2():
    cases = [
        (
            "addr", ifaddrmsg, 20,
            {"family": socket.AF_INET, "prefixlen": 24, "index": 4, "scope": 0},
            [("IFA_ADDRESS", "10.10.1.254"), ("IFA_LOCAL", "10.10.1.254"), ("IFA_LABEL", "x")],
        ),
        (
            "route", rtmsg, 24,
            {"family": socket.AF_INET, "dst_len": 0, "table": 254, "proto": 4, "type": 1},
            [("RTA_TABLE", 254), ("RTA_GATEWAY", "10.10.1.1"), ("RTA_OIF", 4),
             ("RTA_PRIORITY", 100)],
        ),
        (
            "route", rtmsg, 24,
            {"family": socket.AF_INET, "dst_len": 24, "table": 254, "proto": 2, "type": 1},
            [("RTA_TABLE", 254), ("RTA_DST", "10.10.2.0"), ("RTA_OIF", 5)],
        ),
        (
            "neigh", ndmsg, 28,
            {"family": 7, "ifindex": 5, "state": 0x80, "flags": 0x02},
            [("NDA_LLADDR", "00:00:00:00:00:00"), ("NDA_DST", "172.30.0.22")],
        ),
    ]  # fmt: skip
    for what, cls, msg_type, fields, attrs in cases:
        data = _encode(cls, msg_type, fields, attrs)
        ours = rtnl.decode(data, rtnl.KINDS[what], SEQ)[0][0]
        theirs = _pyroute2(cls, data)
        for field in fields:
            assert ours[field] == theirs[field], (what, field)
        _same_attrs(ours, theirs, rtnl.KINDS[what].attrs)
        assert ours.get_attr("IFA_LABEL") is None  # not decoded: not read by the engines


def test_a_batch_ends_at_done_and_skips_other_requests():
    one = _encode(ifinfmsg, 16, PLAIN_LINK["fields"], PLAIN_LINK["attrs"])
    stale = _encode(ifinfmsg, 16, VETH_LINK["fields"], VETH_LINK["attrs"], seq=SEQ - 1)
    two = _encode(ifinfmsg, 16, VXLAN_LINK["fields"], VXLAN_LINK["attrs"])
    messages, done, cut = rtnl.decode(one + stale + two + _done(), rtnl.KINDS["link"], SEQ)
    assert done and [m.get_attr("IFLA_IFNAME") for m in messages] == ["lo", "vxlan-1001"]
    messages, done, cut = rtnl.decode(one, rtnl.KINDS["link"], SEQ)
    assert not done and not cut and len(messages) == 1


def test_an_error_answer_and_a_cut_message_raise():
    with pytest.raises(rtnl.RtnlError) as info:
        rtnl.decode(_error(errno.EPERM), rtnl.KINDS["route"], SEQ)
    assert info.value.errno == errno.EPERM
    one = _encode(ifinfmsg, 16, PLAIN_LINK["fields"], PLAIN_LINK["attrs"])
    with pytest.raises(rtnl.RtnlError, match="truncated"):
        rtnl.decode(one[:-4], rtnl.KINDS["link"], SEQ)
    # an acknowledgement (error 0) is no error
    assert rtnl.decode(_error(0) + _done(), rtnl.KINDS["link"], SEQ) == ([], True, False)


class _FakeSocket:
    """Answers a dump request with prepared receive buffers."""

    def __init__(self, buffers, flags=0):
        self.sent, self.buffers, self.flags = [], list(buffers), flags

    def send(self, data):
        self.sent.append(data)

    def recvmsg(self, size):
        assert size == rtnl.RECV_SIZE
        return self.buffers.pop(0), [], self.flags, None


def test_dump_requests_one_family_and_reads_until_done():
    one = _encode(ifaddrmsg, 20, {"family": 2, "prefixlen": 24, "index": 4},
                  [("IFA_LOCAL", "10.0.0.1")])  # fmt: skip
    two = _encode(ifaddrmsg, 20, {"family": 2, "prefixlen": 16, "index": 5},
                  [("IFA_LOCAL", "10.1.0.1")])  # fmt: skip
    sock = _FakeSocket([one, two + _done()])
    messages = rtnl.dump(sock, "addr", socket.AF_INET, SEQ)
    assert [(m["index"], m.get_attr("IFA_LOCAL")) for m in messages] == [
        (4, "10.0.0.1"), (5, "10.1.0.1"),
    ]  # fmt: skip
    length, msg_type, flags, seq, _pid, family = struct.unpack_from("=IHHIIB", sock.sent[0])
    assert (length, msg_type, flags, seq, family) == (24, 22, 0x301, SEQ, socket.AF_INET)
    with pytest.raises(rtnl.RtnlError, match="did not fit"):
        rtnl.dump(_FakeSocket([one], flags=socket.MSG_TRUNC), "addr", socket.AF_INET, SEQ)


def test_an_interrupted_dump_is_read_to_its_end_then_raised():
    """NLM_F_DUMP_INTR: the table changed meanwhile; host_network reads the step again."""
    one = bytearray(_encode(ifinfmsg, 16, PLAIN_LINK["fields"], PLAIN_LINK["attrs"]))
    struct.pack_into("=H", one, 6, 2 | rtnl.NLM_F_DUMP_INTR)
    sock = _FakeSocket([bytes(one), _done()])
    with pytest.raises(rtnl.DumpInterrupted):
        rtnl.dump(sock, "link", 0, SEQ)
    assert sock.buffers == []  # nothing of it left for the next request


def test_nsid_asks_for_the_id_of_a_namespace_fd():
    def answer(value, seq=SEQ):
        attr = struct.pack("=HHi", 8, rtnl.NETNSA_NSID, value)
        return struct.pack("=IHHII", 16 + 4 + 8, rtnl.RTM_NEWNSID, 0, seq, 0) + bytes(4) + attr

    sock = _FakeSocket([answer(5, seq=SEQ - 1) + answer(3)])
    assert rtnl.nsid(sock, 42, SEQ) == 3
    length, msg_type, flags, seq, _pid = struct.unpack_from("=IHHII", sock.sent[0])
    assert (length, msg_type, flags, seq) == (28, rtnl.RTM_GETNSID, 1, SEQ)
    assert struct.unpack_from("=HHI", sock.sent[0], 20) == (8, rtnl.NETNSA_FD, 42)
    assert rtnl.nsid(_FakeSocket([answer(-1)]), 42, SEQ) is None  # none assigned
    with pytest.raises(rtnl.RtnlError):
        rtnl.nsid(_FakeSocket([_error(errno.EBADF)]), 42, SEQ)
