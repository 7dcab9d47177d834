#!/usr/bin/python
# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Certificate and key files (and their directories) on a host, in one module call."""

from __future__ import annotations

DOCUMENTATION = r"""
module: tls_files
short_description: Install certificate and key files on a host in one call
version_added: 0.1.0
description:
  - Makes the directories O(directories) and writes the files O(files) with the given
    content, mode, owner and group - what a loop of M(ansible.builtin.file) and
    M(ansible.builtin.copy) tasks would do, in one round trip to the host (the
    M(multicloud.migration.migration_tls) role installs ten files per host).
  - A file is rewritten only when its content differs (atomically, through a temporary file
    in the same directory); mode, owner and group are corrected when they differ.
  - File contents are never logged nor shown in a diff (they include private keys) -
    RV(changed_files) and the diff name the paths and the sha256 of the contents only.
author: multicloud.migration contributors (@multicloud)
options:
  directories:
    description: Directories made first (with their parents), in this order.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Absolute path.
        type: path
        required: true
      mode:
        description: Mode, in octal (V('0750')).
        type: str
        default: "0755"
      owner:
        description: Owner.
        type: str
        default: root
      group:
        description: Group.
        type: str
        default: root
  files:
    description: Files written.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Absolute path; its directory must exist or be in O(directories).
        type: path
        required: true
      content:
        description: The whole content of the file (kept out of logs).
        type: str
        required: true
      mode:
        description: Mode, in octal (V('0600') for a private key).
        type: str
        default: "0644"
      owner:
        description: Owner.
        type: str
        default: root
      group:
        description: Group.
        type: str
        default: root
extends_documentation_fragment:
  - multicloud.migration._attributes
seealso:
  - module: ansible.builtin.copy
"""

EXAMPLES = r"""
# The multicloud.migration.migration_tls role passes the PEM files of its PKI directory on
# the controller: content: "{{ lookup('ansible.builtin.file', PATH, rstrip=false) }}".
- name: A certificate, and a private key in a directory of its own
  multicloud.migration.tls_files:
    directories:
      - {path: /etc/mcm-example, mode: "0755"}
      - {path: /etc/mcm-example/private, mode: "0700"}
    files:
      - path: /etc/mcm-example/cert.pem
        content: |
          -----BEGIN CERTIFICATE-----
          (the certificate, PEM)
          -----END CERTIFICATE-----
      - path: /etc/mcm-example/private/key.pem
        content: |
          -----BEGIN PRIVATE KEY-----
          (the key, PEM)
          -----END PRIVATE KEY-----
        mode: "0600"
  register: installed
"""

RETURN = r"""
changed_files:
  description: Paths of the files (re)written or whose mode, owner or group was corrected.
  returned: always
  type: list
  elements: str
  sample: [/etc/pki/CA/cacert.pem]
changed_directories:
  description: Paths of the directories made or corrected.
  returned: always
  type: list
  elements: str
"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.multicloud.migration.plugins.module_utils.host_files import (
    WantedDirectory,
    WantedFile,
    converge,
)

OWNERSHIP = {
    "owner": {"type": "str", "default": "root"},
    "group": {"type": "str", "default": "root"},
}
DIRECTORY_SPEC = {
    "path": {"type": "path", "required": True},
    "mode": {"type": "str", "default": "0755"},
    **OWNERSHIP,
}
FILE_SPEC = {
    "path": {"type": "path", "required": True},
    "content": {"type": "str", "required": True, "no_log": True},
    "mode": {"type": "str", "default": "0644"},
    **OWNERSHIP,
}
ARGUMENT_SPEC = {
    "directories": {"type": "list", "elements": "dict", "default": [], "options": DIRECTORY_SPEC},
    "files": {"type": "list", "elements": "dict", "default": [], "options": FILE_SPEC},
}


def main() -> None:
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        supports_check_mode=True,
    )
    directories = [WantedDirectory(**item) for item in module.params["directories"]]
    files = [
        WantedFile(
            path=item["path"],
            data=item["content"].encode(),
            mode=item["mode"],
            owner=item["owner"],
            group=item["group"],
        )
        for item in module.params["files"]
    ]
    try:
        changes = converge(directories, files, module.check_mode)
    except (OSError, KeyError, ValueError) as exc:
        # KeyError: an unknown owner or group; ValueError: a mode that is not octal
        module.fail_json(msg=f"tls_files: {exc}")
    result: dict[str, Any] = {
        "changed": changes.changed,
        "changed_files": changes.files,
        "changed_directories": changes.directories,
    }
    if module._diff and changes.changed:
        result["diff"] = changes.diff()
    module.exit_json(**result)


if __name__ == "__main__":
    main()
