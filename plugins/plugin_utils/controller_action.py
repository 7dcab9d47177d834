# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Base of the action plugins whose module only touches files on the controller.

On a local connection (the task runs on the controller: ``connection: local`` or
``delegate_to: localhost``) the task's function runs in this process: same parameters,
validated against the module's own argument spec, same result, no module start-up. On
any other connection the module is executed on the host as for any module.
See plugins/module_utils/controller_task.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.multicloud.migration.plugins.module_utils.controller_task import (
    TaskFailure,
)

# task(params, check_mode, diff_mode) -> result
TaskFunction = Callable[[Mapping[str, Any], bool, bool], dict[str, Any]]


class ControllerAction(ActionBase):
    """Subclasses set ARGUMENT_SPEC, OPTIONS (required_if, ...) and TASK."""

    ARGUMENT_SPEC: ClassVar[dict[str, dict[str, Any]]] = {}
    OPTIONS: ClassVar[dict[str, list]] = {}
    TASK: TaskFunction
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        if self._connection.transport != "local":
            result.update(self._execute_module(task_vars=task_vars))
            return result
        try:
            params = self.validate_argument_spec(self.ARGUMENT_SPEC, **self.OPTIONS)[1]
        except AnsibleActionFail as exc:
            return {**result, "failed": True, "msg": exc.message}
        # What the module would get: the arguments through JSON (plain str, int, dict and
        # list, as PyYAML's safe dumper wants them; no templating engine's tagged types).
        params = json.loads(json.dumps(params, default=str))
        try:
            result.update(self.TASK(params, bool(self._task.check_mode), bool(self._task.diff)))
        except TaskFailure as exc:
            result.update(failed=True, msg=str(exc))
        return result
