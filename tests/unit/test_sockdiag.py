"""sockdiag.cut on real loopback connections: only the process's sockets to the peers
given are destroyed (the kernel needs CAP_NET_ADMIN: make test runs as root)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest

from ansible_collections.multicloud.migration.plugins.module_utils import rtnl, sockdiag

OTHER_PROCESS = textwrap.dedent(
    """
    import socket, sys
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname(), timeout=5)
    peer, _ = server.accept()
    print(client.getsockname()[1], flush=True)
    sys.stdin.readline()
    client.sendall(b"still here")
    print(peer.recv(64).decode(), flush=True)
    """
)


def _pair(family: int, host: str) -> tuple[socket.socket, socket.socket, socket.socket]:
    server = socket.create_server((host, 0), family=family)
    client = socket.create_connection(server.getsockname()[:2], timeout=5)
    peer, _address = server.accept()
    peer.settimeout(5)
    return server, client, peer


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_cut_destroys_only_this_process_sockets_to_the_peer() -> None:
    v4 = _pair(socket.AF_INET, "127.0.0.1")
    v6 = _pair(socket.AF_INET6, "::1") if _has_ipv6_loopback() else None
    other = subprocess.Popen([sys.executable, "-c", OTHER_PROCESS], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        other_port = int(other.stdout.readline())
        done = sockdiag.cut(os.getpid(), {"127.0.0.1"})
        client, accepted = v4[1].getsockname()[1], v4[2].getsockname()[1]
        # the client's socket or the accepted one, both unless the reset of the first
        # closed the second already; not the listener, not the other process's connection
        ends = {f"127.0.0.1:{client} -> 127.0.0.1:{accepted}",
                f"127.0.0.1:{accepted} -> 127.0.0.1:{client}"}  # fmt: skip
        assert done and set(done) <= ends and len(set(done)) == len(done), done
        assert str(other_port) not in " ".join(done)
        for end in v4[1:]:  # destroyed (aborted) or reset by the other end's destruction
            with pytest.raises((ConnectionAbortedError, ConnectionResetError)):
                end.recv(16)
        if v6 is not None:  # another peer address: untouched
            v6[1].sendall(b"v6")
            assert v6[2].recv(16) == b"v6"
        out, _err = other.communicate("go\n", timeout=10)
        assert out.strip() == "still here"
        assert sockdiag.cut(os.getpid(), {"127.0.0.1"}) == []  # nothing left to cut
    finally:
        if other.poll() is None:
            other.kill()
            other.communicate(timeout=10)
        for group in (v4, v6 or ()):
            for sock in group:
                sock.close()


def test_the_dump_names_the_connections_with_inodes() -> None:
    server, client, peer = _pair(socket.AF_INET, "127.0.0.1")
    try:
        with rtnl.open_socket(sockdiag.NETLINK_SOCK_DIAG) as sock:
            found = {str(c): c for c in sockdiag.connections(sock, socket.AF_INET)}
        name = f"127.0.0.1:{client.getsockname()[1]} -> 127.0.0.1:{peer.getsockname()[1]}"
        assert name in found and found[name].peer == "127.0.0.1"
        assert found[name].inode == os.fstat(client.fileno()).st_ino
        assert all(c.state != sockdiag.TCP_LISTEN for c in found.values())
    finally:
        for sock in (server, client, peer):
            sock.close()


def test_a_process_without_such_connections_cuts_nothing() -> None:
    assert sockdiag.cut(os.getpid(), {"192.0.2.1"}) == []
