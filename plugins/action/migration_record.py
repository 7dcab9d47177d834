# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action of multicloud.migration.migration_record.

- The state directory lives on the state host (the task is delegated there) or, as an
  explicit option, on the controller: on a local connection the task runs in this process
  (no module start-up), on any other the module runs on the state host.
  See plugins/plugin_utils/controller_action.py.
- ``action: start`` records which run owns the row it opens or takes over (this
  controller, ansible-playbook's pid, the AWX job, a token) and leaves a heartbeat process
  beating for it while ansible-playbook lives (plugins/plugin_utils/heartbeat.py).
"""

from __future__ import annotations

import getpass
import os
import socket
import uuid
from typing import Any

from ansible.utils.display import Display

from ansible_collections.multicloud.migration.plugins.module_utils.ledger import (
    TASK_ARGUMENT_SPEC,
    TASK_OPTIONS,
    StateDir,
    record_task,
)
from ansible_collections.multicloud.migration.plugins.plugin_utils import heartbeat
from ansible_collections.multicloud.migration.plugins.plugin_utils.controller_action import (
    ControllerAction,
)

display = Display()

# beats per owner timeout: a run counts as gone after missing about six in a row
BEATS_PER_TIMEOUT = 6


class ActionModule(ControllerAction):
    ARGUMENT_SPEC = TASK_ARGUMENT_SPEC
    OPTIONS = TASK_OPTIONS
    TASK = staticmethod(record_task)

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        args = self._task.args
        if args.get("action") != "start":
            return super().run(tmp, task_vars)
        # WorkerProcess is forked from ansible-playbook: its parent is the run's process
        owner_pid = os.getppid()
        job = (task_vars or {}).get("awx_job_id") or (task_vars or {}).get("tower_job_id")
        args["owner"] = {
            "controller": socket.gethostname(),
            "user": getpass.getuser(),
            "pid": owner_pid,
            "job": str(job) if job else None,
            "token": uuid.uuid4().hex,
        }
        result = super().run(tmp, task_vars)
        row = result.get("row") or {}
        if result.get("failed") or self._task.check_mode or row.get("id") is None:
            return result
        # the token of the run that owns the row now (ours, after a start or a takeover)
        result["owner_token"] = args["owner"]["token"]
        self._start_heartbeat(int(row["id"]), args, owner_pid)
        return result

    def _start_heartbeat(self, row_id: int, args: dict[str, Any], owner_pid: int) -> None:
        token = args["owner"]["token"]
        state_dir = str(args["state_dir"])
        timeout = int(args.get("owner_timeout") or 30)
        if self._connection.transport == "local":

            def beat() -> bool:
                return StateDir(state_dir).beat(row_id, token)
        else:
            command = heartbeat.beat_command(f"{state_dir}/migrations/{row_id}.beat", token)

            def beat() -> bool:
                rc = self._low_level_execute_command(command, sudoable=True)["rc"]
                return heartbeat.still_owner(rc)

        def run() -> None:
            display._final_q = None  # the worker's queue to ansible-playbook is not ours
            heartbeat.keep_beating(beat, owner_pid, max(1.0, timeout / BEATS_PER_TIMEOUT))

        heartbeat.spawn(run)
