# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private doc fragments: what every module of the collection promises (not a public API)."""

from __future__ import annotations


class ModuleDocFragment:
    # The Python floor of what runs on the managed hosts (the modules and the module_utils
    # they import): RHEL 9's python3 is 3.9. `make lint` holds them to it (vermin and
    # .ci/runtime_unions.py). Both fragments below carry it, so every module declares it.
    # Modules that converge a list of resources to a desired state.
    DOCUMENTATION = r"""
options: {}
requirements:
  - Python 3.9 or later on the managed host
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
  idempotent:
    description:
      - When run twice in a row outside check mode, with the same arguments, the second invocation indicates no change.
      - This assumes that the system controlled/queried by the module has not changed in a relevant way.
    support: full
"""

    # Modules that only read.
    INFO_MODULE = r"""
options: {}
requirements:
  - Python 3.9 or later on the managed host
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: This action does not modify state.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: N/A
    details: This action does not modify state.
  idempotent:
    description:
      - When run twice in a row outside check mode, with the same arguments, the second invocation indicates no change.
    support: full
    details: This action does not modify state.
"""

    # Modules with an action plugin that runs them in the controller's process there.
    CONTROLLER_ACTION = r"""
options: {}
attributes:
  action:
    description: Indicates this has a corresponding action plugin so some parts of the options can be executed on the controller.
    support: full
    details:
      - On the controller (connection C(local), or C(delegate_to) C(localhost)) the action
        plugin runs the task in ansible-playbook's own process, without starting a module;
        on any other connection the module runs on the host. Same options, same result.
"""
