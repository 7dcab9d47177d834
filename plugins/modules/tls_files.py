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

import hashlib
import os
import tempfile
from typing import Any

from ansible.module_utils.basic import AnsibleModule

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


def _digest(data: bytes | None) -> str:
    return "absent" if data is None else "sha256:" + hashlib.sha256(data).hexdigest()


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def _attributes(module: AnsibleModule, path: str, item: dict[str, Any], changed: bool) -> bool:
    changed = module.set_owner_if_different(path, item["owner"], changed)
    changed = module.set_group_if_different(path, item["group"], changed)
    return module.set_mode_if_different(path, item["mode"], changed)


def _write(module: AnsibleModule, path: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tls_files.", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o600)  # never readable by others, even for a moment
        module.atomic_move(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def main() -> None:
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        supports_check_mode=True,
    )
    changed_dirs: list[str] = []
    changed_files: list[str] = []
    before: list[str] = []
    after: list[str] = []
    for item in module.params["directories"]:
        path = item["path"]
        missing = not os.path.isdir(path)
        if missing and not module.check_mode:
            os.makedirs(path, mode=0o700, exist_ok=True)
        fixed = _attributes(module, path, item, False) if os.path.isdir(path) else False
        if missing or fixed:
            changed_dirs.append(path)
    for item in module.params["files"]:
        path = item["path"]
        data = item["content"].encode()
        current = _read(path)
        rewrite = current != data
        if rewrite and not module.check_mode:
            _write(module, path, data)
        exists = os.path.exists(path)
        fixed = _attributes(module, path, item, False) if exists else False
        if rewrite or fixed:
            changed_files.append(path)
            before.append(f"{path}: {_digest(current)}")
            after.append(f"{path}: {_digest(data)} mode {item['mode']} {item['owner']}:"
                         f"{item['group']}")  # fmt: skip
    changed = bool(changed_dirs or changed_files)
    result: dict[str, Any] = {
        "changed": changed,
        "changed_files": changed_files,
        "changed_directories": changed_dirs,
    }
    if module._diff and changed:
        result["diff"] = {
            "before": "".join(f"{line}\n" for line in before),
            "after": "".join(f"{line}\n" for line in after)
            + "".join(f"directory {d}\n" for d in changed_dirs),
        }
    module.exit_json(**result)


if __name__ == "__main__":
    main()
