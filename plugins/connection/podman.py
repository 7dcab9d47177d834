# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Connection: run tasks in local podman containers, with pipelining (one exec per module)."""

from __future__ import annotations

DOCUMENTATION = r"""
name: podman
short_description: Run tasks in local podman containers, with pipelining
version_added: 0.1.0
description:
  - Runs commands and modules inside running podman containers of the controller with
    C(podman exec), like C(containers.podman.podman), and adds pipelining - a module is
    sent on the standard input of one C(podman exec -i) instead of being copied into the
    container, made executable, run and removed (five C(podman exec) calls).
  - On a 2-core machine this cuts the cost of a task from about 0.75 s to about 0.25 s
    (see C(docs/performance.md) of the collection). C(containers.podman.podman) declares
    that it cannot pipeline, so C(ANSIBLE_PIPELINING) has no effect on it.
  - Files (M(ansible.builtin.copy), M(ansible.builtin.template), M(ansible.builtin.fetch))
    are streamed through C(podman exec -i ... cat); the container is never paused or
    mounted.
  - The embedded lab of the collection (C(inventories/lab)) uses it.
author: multicloud.migration contributors (@multicloud)
options:
  remote_addr:
    description: Name or ID of the container.
    type: str
    default: inventory_hostname
    vars:
      - name: inventory_hostname
      - name: ansible_host
      - name: ansible_podman_host
  remote_user:
    description:
      - User (name or UID) that runs commands inside the container; omit for the
        container's own user.
    type: str
    ini:
      - section: defaults
        key: remote_user
    env:
      - name: ANSIBLE_REMOTE_USER
    vars:
      - name: ansible_user
  podman_executable:
    description: The podman executable.
    type: str
    default: podman
    env:
      - name: ANSIBLE_PODMAN_EXECUTABLE
    vars:
      - name: ansible_podman_executable
  podman_extra_args:
    description: Extra arguments given to podman before the C(exec) sub-command.
    type: str
    default: ""
    ini:
      - section: defaults
        key: podman_extra_args
    env:
      - name: ANSIBLE_PODMAN_EXTRA_ARGS
    vars:
      - name: ansible_podman_extra_args
  pipelining:
    description:
      - Send modules on the standard input of C(podman exec -i) (one call per task).
      - Unlike most connections, on by default; V(false) runs modules the classic way.
    type: boolean
    default: true
    env:
      - name: ANSIBLE_PIPELINING
    ini:
      - section: defaults
        key: pipelining
      - section: connection
        key: pipelining
    vars:
      - name: ansible_pipelining
notes:
  - Needs the podman CLI on the controller, with access to the containers (the same user
    and C(CONTAINERS_CONF) that started them).
seealso:
  - name: containers.podman.podman
    description: The connection this one follows, without pipelining.
    link: https://docs.ansible.com/ansible/latest/collections/containers/podman/podman_connection.html
"""

import shlex
import subprocess
from typing import IO, Any

from ansible.errors import AnsibleConnectionFailure, AnsibleError
from ansible.module_utils.common.process import get_bin_path
from ansible.module_utils.common.text.converters import to_bytes, to_native
from ansible.plugins.connection import ConnectionBase, ensure_connect
from ansible.utils.display import Display

display = Display()

# podman's own failures (no such container, container not running) exit with 125.
PODMAN_ERROR_RC = 125


class Connection(ConnectionBase):
    """podman exec into a local container; modules are pipelined."""

    transport = "multicloud.migration.podman"
    has_pipelining = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._podman_cmd: str | None = None

    # ------------------------------------------------------------------ helpers
    def _container(self) -> str:
        return str(self.get_option("remote_addr"))

    def _base_argv(self) -> list[str]:
        if self._podman_cmd is None:
            executable = self.get_option("podman_executable")
            try:
                self._podman_cmd = get_bin_path(executable)
            except ValueError as exc:
                raise AnsibleError(f"{executable} command not found in PATH") from exc
        argv = [self._podman_cmd]
        extra = self.get_option("podman_extra_args")
        if extra:
            argv += shlex.split(to_native(extra, errors="surrogate_or_strict"))
        return argv

    def _exec_argv(self, command: list[str], interactive: bool) -> list[str]:
        argv = [*self._base_argv(), "exec"]
        if interactive:
            argv.append("-i")
        user = self.get_option("remote_user")
        if user:
            argv += ["--user", str(user)]
        return [*argv, self._container(), *command]

    def _run(
        self,
        argv: list[str],
        *,
        in_data: bytes | None = None,
        stdin: IO[bytes] | None = None,
        stdout: IO[bytes] | None = None,
    ) -> tuple[int, bytes, bytes]:
        display.vvv(f"RUN {argv}", host=self._container())
        proc = subprocess.run(
            [to_bytes(a, errors="surrogate_or_strict") for a in argv],
            input=in_data,
            stdin=stdin if in_data is None else None,
            stdout=stdout if stdout is not None else subprocess.PIPE,
            stderr=subprocess.PIPE,
            check=False,
        )
        out = proc.stdout if stdout is None else b""
        if proc.returncode == PODMAN_ERROR_RC and proc.stderr.startswith(b"Error:"):
            raise AnsibleConnectionFailure(
                f"podman exec in {self._container()} failed: {to_native(proc.stderr).strip()}"
            )
        return proc.returncode, out, proc.stderr

    # ------------------------------------------------------------------ connection API
    def _connect(self) -> Connection:
        super()._connect()
        self._base_argv()  # fail early when podman is missing
        self._connected = True
        return self

    @ensure_connect
    def exec_command(
        self, cmd: str, in_data: bytes | None = None, sudoable: bool = True
    ) -> tuple[int, bytes, bytes]:
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        command = shlex.split(to_native(cmd, errors="surrogate_or_strict"))
        argv = self._exec_argv(command, interactive=in_data is not None)
        return self._run(argv, in_data=in_data)

    @ensure_connect
    def put_file(self, in_path: str, out_path: str) -> None:
        super().put_file(in_path, out_path)
        display.vvv(f"PUT {in_path} TO {out_path}", host=self._container())
        argv = self._exec_argv(["sh", "-c", 'cat > "$1"', "sh", out_path], interactive=True)
        try:
            with open(to_bytes(in_path, errors="surrogate_or_strict"), "rb") as source:
                rc, _out, err = self._run(argv, stdin=source)
        except OSError as exc:
            raise AnsibleError(f"cannot read {in_path}: {exc}") from exc
        if rc != 0:
            raise AnsibleError(
                f"failed to copy {in_path} to {out_path} in container {self._container()}: "
                f"{to_native(err).strip()}"
            )

    @ensure_connect
    def fetch_file(self, in_path: str, out_path: str) -> None:
        super().fetch_file(in_path, out_path)
        display.vvv(f"FETCH {in_path} TO {out_path}", host=self._container())
        argv = self._exec_argv(["cat", in_path], interactive=False)
        try:
            with open(to_bytes(out_path, errors="surrogate_or_strict"), "wb") as target:
                rc, _out, err = self._run(argv, stdout=target)
        except OSError as exc:
            raise AnsibleError(f"cannot write {out_path}: {exc}") from exc
        if rc != 0:
            raise AnsibleError(
                f"failed to fetch {in_path} from container {self._container()}: "
                f"{to_native(err).strip()}"
            )

    def close(self) -> None:
        super().close()
        self._connected = False
