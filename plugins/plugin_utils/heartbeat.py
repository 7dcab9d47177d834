# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The heartbeat of a migration run's ledger row (docs/state.md, "Owners and heartbeats").

A run that opens or takes over a row owns it while ansible-playbook lives. A small
process, detached from the task that opened the row, beats for it on the state host every
few seconds (touches ``migrations/<id>.beat`` while that file still names the run's
token) and ends when ansible-playbook is gone, when the row was closed or taken over, or
when its job's container ends. So a killed controller or AWX job stops beating by itself,
and another run may take the row over once the heartbeat is older than the owner timeout;
a live run is never taken over. Only the controller can tell whether its own
ansible-playbook lives; only the state host's clock dates the beats.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable

# beat() -> still the owner (False: the row was closed or taken over: stop); an exception
# is a beat that did not reach the state host (tried again)
Beat = Callable[[], bool]
# The exit status of the remote beat when the beat file no longer names this run: any
# other failure (ssh's 255 for an unreachable host, say) is not an answer about the owner.
NOT_OWNER_RC = 3


class BeatFailed(Exception):
    """The beat did not reach the state host: no answer about the owner."""


def beat_command(path: str, token: str) -> str:
    """The shell command that beats on a remote state host: touch the beat file while it
    names ``token``, else exit NOT_OWNER_RC."""
    quoted = shlex.quote(path)
    return (f'if [ "$(cat {quoted} 2>/dev/null)" = {shlex.quote(token)} ]; '
            f"then touch {quoted}; else exit {NOT_OWNER_RC}; fi")  # fmt: skip


def still_owner(rc: int) -> bool:
    """The answer of beat_command's exit status; BeatFailed when it gives none."""
    if rc == 0:
        return True
    if rc == NOT_OWNER_RC:
        return False
    raise BeatFailed(f"the beat exited with {rc}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def keep_beating(
    beat: Beat, owner_pid: int, interval: float, sleep: Callable[[float], None] = time.sleep
) -> str:
    """Beat every ``interval`` seconds while ``owner_pid`` lives; why it stopped. A beat
    that fails (state host unreachable for a moment) is tried again at the next tick: the
    row's owner counts as gone only after the owner timeout, several ticks later."""
    while True:
        sleep(interval)
        if not alive(owner_pid):
            return "owner gone"
        try:
            if not beat():
                return "no longer the owner"
        except Exception:  # noqa: BLE001 - a failed beat is retried; nothing to report to
            continue


def spawn(run: Callable[[], object]) -> int:
    """Run ``run`` in a process detached from this one (double fork, new session, standard
    streams on /dev/null, no other inherited descriptor), so that neither the task that
    spawned it nor a caller reading ansible-playbook's output waits for it. Returns the
    pid of the first child (reaped here); the detached grandchild is reparented to init."""
    child = os.fork()
    if child:
        os.waitpid(child, 0)
        return child
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, 65536)
        run()
    finally:
        os._exit(0)
