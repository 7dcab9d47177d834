# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action of multicloud.migration.tenant_spec: on the controller, validate the spec in
this process (no module start-up); on any other connection, the module.
See plugins/plugin_utils/controller_action.py."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ansible_collections.multicloud.migration.plugins.module_utils.spec import (
    TASK_ARGUMENT_SPEC,
    TASK_OPTIONS,
    spec_task,
)
from ansible_collections.multicloud.migration.plugins.plugin_utils.controller_action import (
    ControllerAction,
)


def _task(params: Mapping[str, Any], check_mode: bool, diff_mode: bool) -> dict[str, Any]:
    return spec_task(params)  # read-only: the same in check and diff mode


class ActionModule(ControllerAction):
    ARGUMENT_SPEC = TASK_ARGUMENT_SPEC
    OPTIONS = TASK_OPTIONS
    TASK = staticmethod(_task)
