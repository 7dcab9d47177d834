# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action of multicloud.migration.migration_record: on the controller, read and write the
state directory in this process (no module start-up); on any other connection, the
module. See plugins/plugin_utils/controller_action.py."""

from __future__ import annotations

from ansible_collections.multicloud.migration.plugins.module_utils.ledger import (
    TASK_ARGUMENT_SPEC,
    TASK_OPTIONS,
    record_task,
)
from ansible_collections.multicloud.migration.plugins.plugin_utils.controller_action import (
    ControllerAction,
)


class ActionModule(ControllerAction):
    ARGUMENT_SPEC = TASK_ARGUMENT_SPEC
    OPTIONS = TASK_OPTIONS
    TASK = staticmethod(record_task)
