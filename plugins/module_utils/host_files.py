# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Files and directories on a host, written only where they differ (runs on the host).

Shared by tls_files (any files) and host_certificate (the libvirt and qemu TLS files):
directories first, then every file whose content differs is rewritten atomically
(temporary file in the same directory, mode 0600 until it is renamed over the old one),
then mode, owner and group are corrected where they differ. Contents never reach a
result or a diff: both name paths and sha256 digests only (the files include private
keys). Plain Python, no AnsibleModule, so that unit tests drive it in a temporary
directory.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class WantedDirectory:
    path: str
    mode: str = "0755"
    owner: str = "root"
    group: str = "root"


@dataclass(frozen=True)
class WantedFile:
    path: str
    data: bytes = field(repr=False)  # may be a private key: never in a repr
    mode: str = "0644"
    owner: str = "root"
    group: str = "root"


@dataclass
class Changes:
    """What converge changed (or, in check mode, would change)."""

    directories: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    before: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.directories or self.files)

    def diff(self) -> dict[str, str]:
        """Ansible's diff: one line per path, digests instead of contents."""
        return {
            "before": "".join(f"{line}\n" for line in self.before),
            "after": "".join(f"{line}\n" for line in self.after)
            + "".join(f"directory {d}\n" for d in self.directories),
        }


def digest(data: bytes | None) -> str:
    return "absent" if data is None else "sha256:" + hashlib.sha256(data).hexdigest()


def read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def uid_of(owner: str) -> int:
    return int(owner) if owner.isdigit() else pwd.getpwnam(owner).pw_uid


def gid_of(group: str) -> int:
    return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid


def attribute_problems(path: str, mode: str, owner: str, group: str) -> list[str]:
    """What differs in mode, owner and group of an existing path (empty: nothing)."""
    info = os.stat(path)
    problems = []
    if stat.S_IMODE(info.st_mode) != int(mode, 8):
        problems.append(f"mode {stat.S_IMODE(info.st_mode):04o}, want {mode}")
    if info.st_uid != uid_of(owner):
        problems.append(f"owner uid {info.st_uid}, want {owner}")
    if info.st_gid != gid_of(group):
        problems.append(f"group gid {info.st_gid}, want {group}")
    return problems


def _set_attributes(path: str, mode: str, owner: str, group: str, check_mode: bool) -> bool:
    if not attribute_problems(path, mode, owner, group):
        return False
    if not check_mode:
        # owner first: chown may clear set-id bits that chmod then sets as wanted
        os.chown(path, uid_of(owner), gid_of(group))
        os.chmod(path, int(mode, 8))
    return True


def write_atomically(path: str, data: bytes) -> None:
    """Replace ``path`` by ``data``: readers see the old file or the new one, never a part.

    The temporary file is made in the same directory (one file system, so the rename is
    atomic; on SELinux hosts it gets the directory's default context, as a new file would).
    """
    fd, tmp = tempfile.mkstemp(prefix=".mcm-", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)  # never readable by others, even for a moment
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def converge(
    directories: Iterable[WantedDirectory], files: Iterable[WantedFile], check_mode: bool
) -> Changes:
    """Make the directories, then the files, as wanted; return what changed."""
    changes = Changes()
    for item in directories:
        missing = not os.path.isdir(item.path)
        if missing and not check_mode:
            os.makedirs(item.path, mode=0o700, exist_ok=True)
        fixed = False
        if os.path.isdir(item.path):
            fixed = _set_attributes(item.path, item.mode, item.owner, item.group, check_mode)
        if missing or fixed:
            changes.directories.append(item.path)
    for item in files:
        current = read(item.path)
        rewrite = current != item.data
        if rewrite and not check_mode:
            write_atomically(item.path, item.data)
        fixed = False
        if os.path.exists(item.path):
            fixed = _set_attributes(item.path, item.mode, item.owner, item.group, check_mode)
        if rewrite or fixed:
            changes.files.append(item.path)
            changes.before.append(f"{item.path}: {digest(current)}")
            changes.after.append(
                f"{item.path}: {digest(item.data)} mode {item.mode} {item.owner}:{item.group}"
            )
    return changes
