# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tasks that run on the controller: one body for the module and its action plugin.

tenant_spec and migration_record only read and write files on the controller. Their
action plugins (plugins/action/) run the task's function in the controller's own process
when the task runs there (connection local), which spares the start-up of a module
(AnsiballZ: about 0.5 s a task); on any other connection the module runs as usual. Both
paths call the same function with the validated parameters; it returns the task's result
or raises TaskFailure, whose message becomes the task's ``msg``.
"""

from __future__ import annotations


class TaskFailure(Exception):
    """The task failed; str(exc) is the message the operator sees."""
