#!/usr/bin/env python
"""Run shell commands on a lab guest through its serial console (inside a lab host).

    python3 guest_console.py SOCKET 'command' ['command' ...]

Prints one JSON list of {"cmd", "rc", "out"}. The socket is the unix chardev libvirt
binds for the guest's ttyS0 (multicloud.migration.vm: <console dir>/<domain>.console).
The guest's console protocol is in lab/guest/README.md: a root shell on ttyS0; output
is framed by markers the typed line itself cannot match. The socket is drained all the
time (a client that stops reading slows the guest down).
"""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
import time
import uuid


class GuestSerial:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buf, self.closed, self.cond = b"", False, threading.Condition()
        threading.Thread(target=self._reader, daemon=True).start()

    def _reader(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            with self.cond:
                self.buf += data
                self.closed = not data
                self.cond.notify_all()
            if not data:
                return

    def expect(self, pattern: bytes, timeout: float) -> tuple[bytes, re.Match]:
        rx, deadline = re.compile(pattern), time.monotonic() + timeout
        with self.cond:
            while True:
                match = rx.search(self.buf)
                if match:
                    before, self.buf = self.buf[: match.start()], self.buf[match.end() :]
                    return before, match
                left = deadline - time.monotonic()
                if self.closed or left <= 0:
                    raise TimeoutError(pattern.decode())
                self.cond.wait(left)

    def run(self, cmd: str, timeout: float = 30) -> tuple[int, str]:
        tok = uuid.uuid4().hex[:8].encode()
        self.sock.sendall(b"echo @@B%s''@@; %s; echo @@E%s''@@ $?\n" % (tok, cmd.encode(), tok))
        self.expect(rb"@@B" + tok + rb"@@\r?\n", timeout)
        out, match = self.expect(rb"@@E" + tok + rb"@@ (\d+)\r?\n", timeout)
        text = out.decode(errors="replace").replace("\r\n", "\n")
        text = "\n".join(li for li in text.split("\n") if not li.startswith("MCM-GUEST "))
        return int(match.group(1)), text.strip()

    def wait_shell(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.run("true", timeout=3)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    guest = GuestSerial(argv[0])
    guest.wait_shell()
    results = []
    for cmd in argv[1:]:
        rc, out = guest.run(cmd, timeout=60)
        results.append({"cmd": cmd, "rc": rc, "out": out})
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
