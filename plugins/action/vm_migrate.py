# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action of multicloud.migration.vm_migrate: the module, with live progress lines.

The module runs in the background on the source host (async_wrapper, as for a task with
``async``) and writes its latest progress sample to ``progress_file`` there (a file in the
task's remote temporary directory unless the task names one). Every second (every half
second during the first five) one ``cat`` - no Python started on the host - reads that
file and async_wrapper's job file; a line is printed every ``progress_interval`` seconds.
Once the job file says the module ended, its result is the module's output that file
holds, decoded as the task executor decodes a module's output (ansible.builtin.async_status
is asked only when async_wrapper wrote the file itself: the module was killed or crashed);
the job's file is removed in one command, and the task's result is the module's own,
without the async bookkeeping keys, so that success and failure look as they do without
this plugin.

Without progress lines (the module in the foreground, like ansible.builtin.normal): check
mode, a task that sets ``async`` itself, or ``progress_interval: 0``.
"""

from __future__ import annotations

import math
import posixpath
import shlex
import time
from typing import Any

from ansible import constants as C
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display
from ansible.utils.vars import merge_hash

from ansible_collections.multicloud.migration.plugins.module_utils.migration_progress import (
    format_progress_line,
    parse_progress,
    with_rate,
)

display = Display()

DEFAULT_INTERVAL = 3.0
DEFAULT_TIMEOUT = 600  # the module's defaults (timeout, shutdown_timeout)
DEFAULT_SHUTDOWN_TIMEOUT = 60
# Past the module's own bounds (a timed-out live job gets 60 s to stop after abortJob; the
# module starts, connects, checks): the async_wrapper kills the module after timeout +
# shutdown_timeout + ASYNC_MARGIN, and this action gives up POLL_GRACE seconds later.
ASYNC_MARGIN = 120
POLL_GRACE = 30
TICK = 1.0  # seconds between two reads (one cat) of the progress file and the job's file
FIRST_TICK = 0.5  # ... during the first FAST_READS seconds: a short migration ends early
FAST_READS = 5.0
MAX_POLL_ERRORS = 5  # consecutive failed reads (connection bounce) before giving up
MAX_UNREAD = 5  # reads without the job's file before asking async_status (it says why)
STATUS_TRIES = 3  # async_status calls for the final result (the job's file said finished)
JOB_MARK = "--- vm_migrate async job ---"
PROGRESS_NAME = "vm_migrate_progress.json"
# Keys that async_wrapper / async_status add to the module's result.
ASYNC_KEYS = ("ansible_job_id", "started", "finished", "results_file", "erased", "child_pid")
OUTPUT_KEYS = ("stdout", "stderr", "stdout_lines", "stderr_lines")
JSON_CALLBACKS = ("json", "jsonl")


def parse_interval(value: Any) -> float:
    """progress_interval as seconds (>= 0); ValueError with a message otherwise."""
    if value is None or value == "":
        return DEFAULT_INTERVAL
    if isinstance(value, bool):
        raise ValueError(f"progress_interval must be a number of seconds, not {value!r}")
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"progress_interval must be a number of seconds, not {value!r}") from None
    if seconds < 0 or math.isnan(seconds):
        raise ValueError(f"progress_interval must be 0 (no progress lines) or more, not {value}")
    return seconds


def _seconds(value: Any, default: int) -> int:
    """An integer option as the module will see it (the module validates it itself)."""
    try:
        return max(int(float(value)), 0) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def async_limit(args: dict[str, Any]) -> int:
    """Seconds the background module may run before async_wrapper kills it."""
    timeout = _seconds(args.get("timeout"), DEFAULT_TIMEOUT)
    shutdown = _seconds(args.get("shutdown_timeout"), DEFAULT_SHUTDOWN_TIMEOUT)
    return timeout + shutdown + ASYNC_MARGIN


def module_result(status: dict[str, Any]) -> dict[str, Any]:
    """The module's result out of async_status's answer (the async keys removed)."""
    result = {k: v for k, v in status.items() if k not in ASYNC_KEYS and k not in OUTPUT_KEYS}
    stderr = status.get("stderr")
    if result.get("failed") and stderr and "module_stderr" not in result:
        result["module_stderr"] = stderr  # a crash: what the foreground run would show
    return result


def read_command(progress_file: str, results_file: str) -> str:
    """One shell command (no Python) printing the progress file, JOB_MARK, the job's file."""
    return (
        f"cat {shlex.quote(progress_file)} 2>/dev/null; printf '\\n%s\\n' {shlex.quote(JOB_MARK)}; "
        f"cat {shlex.quote(results_file)} 2>/dev/null"
    )


def split_output(stdout: str | None) -> tuple[str, str | None]:
    """(progress file text, job file text) of read_command's output; no job text when the
    mark is missing (the command did not run)."""
    progress, mark, job = (stdout or "").partition(JOB_MARK)
    return progress, (job if mark else None)


def job_finished(data: dict[str, Any] | None) -> bool:
    """Whether async_wrapper's job file holds the end of the job, as async_status decides:
    the module's result (no ``started`` key), or ``finished`` set."""
    return data is not None and ("started" not in data or bool(data.get("finished")))


class ActionModule(ActionBase):
    _supports_check_mode = True
    _supports_async = True

    def run(self, tmp: str | None = None, task_vars: dict[str, Any] | None = None) -> dict:
        result = super().run(tmp, task_vars)
        del tmp  # no longer has any effect
        task_vars = task_vars or {}
        args = dict(self._task.args)
        try:
            interval = parse_interval(args.pop("progress_interval", None))
        except ValueError as exc:
            return merge_hash(result, {"failed": True, "msg": str(exc)})
        # The module accepts (and ignores) it: its invocation shows the value in use.
        args["progress_interval"] = interval
        if self._task.async_val or self._task.check_mode or interval == 0:
            return merge_hash(result, self._foreground(args, task_vars))
        return merge_hash(result, self._with_progress(args, interval, task_vars))

    # ------------------------------------------------------------------ foreground
    def _foreground(self, args: dict[str, Any], task_vars: dict[str, Any]) -> dict[str, Any]:
        """As ansible.builtin.normal does (a task's own async included)."""
        wrap_async = bool(self._task.async_val) and not self._connection.has_native_async
        data = self._execute_module(module_args=args, task_vars=task_vars, wrap_async=wrap_async)
        if not wrap_async:
            self._remove_tmp_path(self._connection._shell.tmpdir)
        return data

    # ------------------------------------------------------------------ background + progress
    def _with_progress(
        self, args: dict[str, Any], interval: float, task_vars: dict[str, Any]
    ) -> dict[str, Any]:
        host = str(self._task.delegate_to or task_vars.get("inventory_hostname") or "?")
        name, destination = args.get("name"), args.get("destination")
        if not args.get("progress_file"):
            if self._connection._shell.tmpdir is None:
                self._make_tmp_path()
            args["progress_file"] = self._connection._shell.join_path(
                self._connection._shell.tmpdir, PROGRESS_NAME
            )
        progress_file = str(args["progress_file"])
        limit = async_limit(args)
        saved = self._task.async_val
        self._task.async_val = limit
        try:
            started = self._execute_module(module_args=args, task_vars=task_vars, wrap_async=True)
        finally:
            # the task executor must not poll on its own: this action returns the result
            self._task.async_val = saved
        jid = started.get("ansible_job_id")
        if started.get("failed") or not jid:
            started.setdefault("msg", "the module did not start in the background")
            return module_result(started)
        status: dict[str, Any] | None = None
        try:
            # async_status's own action expands the directory at every call: here it is
            # the directory of the job's file that async_wrapper returned
            results_file = started.get("results_file")
            if results_file:
                async_dir = posixpath.dirname(str(results_file))
            else:
                async_dir = self._remote_expand_user(
                    self.get_shell_option("async_dir", default="~/.ansible_async")
                )
                results_file = self._connection._shell.join_path(async_dir, jid)
            results_file = str(results_file)
            status = self._poll(
                jid=jid, async_dir=async_dir, interval=interval, limit=limit,
                results_file=results_file,
                task_vars=task_vars, host=host, name=name, destination=destination,
                progress_file=progress_file,
            )  # fmt: skip
            if status is not None:
                self._finish(jid, results_file, progress_file, status)
        finally:
            # a tmpdir made by async_status on a connection without pipelining
            self._remove_tmp_path(self._connection._shell.tmpdir)
        if status is None:
            return {
                "failed": True,
                "changed": False,
                "msg": (
                    f"vm_migrate on {host}: no result after {limit + POLL_GRACE} s (timeout + "
                    f"shutdown_timeout + {ASYNC_MARGIN} s, + {POLL_GRACE} s): the background "
                    f"job {jid} may still run there - see ansible.builtin.async_status "
                    f"jid={jid}, and check where {name} runs before retrying"
                ),
                "ansible_job_id": jid,
            }
        result = module_result(status)
        if status.get("child_pid") and result.get("msg") == "Timeout exceeded":
            result["msg"] = (
                f"vm_migrate on {host}: the module ran longer than {limit} s (timeout + "
                f"shutdown_timeout + {ASYNC_MARGIN} s) and was killed: check where {name} "
                "runs (the source, or the destination) and whether a migration job is left"
            )
        return result

    def _poll(
        self,
        *,
        jid: str,
        async_dir: str,
        results_file: str,
        interval: float,
        limit: int,
        task_vars: dict[str, Any],
        host: str,
        name: Any,
        destination: Any,
        progress_file: str,
    ) -> dict[str, Any] | None:
        """Until the job ends: every TICK seconds one ``cat`` of the progress file and of
        the job's file, and a progress line every ``interval`` seconds; then the module's
        result from the job's file (from async_status when async_wrapper wrote it). Bounded
        by ``limit`` + POLL_GRACE seconds; None when the job never ended."""
        tick = min(interval, TICK)
        begun = time.monotonic()
        deadline = begun + limit + POLL_GRACE
        errors = unread = 0
        last_line: float | None = None
        command = read_command(progress_file, results_file)
        reads = int(FAST_READS / FIRST_TICK) + int((limit + POLL_GRACE) / tick) + 2
        for _attempt in range(reads):
            pause = FIRST_TICK if time.monotonic() - begun < FAST_READS else tick
            time.sleep(max(min(pause, tick, deadline - time.monotonic()), 0))
            try:
                res = self._low_level_execute_command(command, sudoable=True)
            except Exception as exc:  # as the task executor: retry after a connection bounce
                errors += 1
                display.vvvv(f"vm_migrate: cannot read the job {jid}'s files ({exc}), retrying")
                if errors >= MAX_POLL_ERRORS:
                    raise
                self._reset_connection()
                continue
            errors = 0
            progress_text, job_text = split_output(res.get("stdout"))
            job = parse_progress(job_text)
            unread = 0 if job is not None else unread + 1
            if job is not None and job_finished(job) and "started" not in job:
                # the module's own output, as async_wrapper wrote it (atomically): what
                # async_status would return, without running it
                decoded = self._decode_output(job_text or "")
                if decoded is not None:
                    return {**decoded, "finished": True, "ansible_job_id": jid}
            if job_finished(job) or unread >= MAX_UNREAD:
                return self._final_status(jid, async_dir, task_vars)
            now = time.monotonic()
            if now >= deadline:
                return None
            record = with_rate(parse_progress(progress_text))
            if last_line is None:
                due = record is not None or now - begun >= interval
            else:
                due = now - last_line >= interval - tick / 2
            if not due:
                continue  # no line yet: a short migration prints none
            line = format_progress_line(
                host, record, name=name, destination=destination, waited=now - begun
            )
            display.display(line, stderr=self._json_stdout())
            last_line = now
        return None

    def _decode_output(self, text: str) -> dict[str, Any] | None:
        """A module's output decoded as ActionBase decodes it after a run (ansible-core
        2.19 and later: the module serialization profile's tags, such as its warnings);
        None when it does not parse."""
        res = {"stdout": text, "stderr": "", "rc": 0}
        try:
            data = self._parse_returned_data(res, "legacy")  # the profile of our modules
        except TypeError:  # ansible-core before 2.19: no profile
            data = self._parse_returned_data(res)  # pylint: disable=no-value-for-parameter
        return data if data.get("_ansible_parsed") else None

    def _final_status(self, jid: str, async_dir: str, task_vars: dict[str, Any]) -> dict:
        """async_status (mode status) of an ended job: the module's result."""
        status: dict[str, Any] = {}
        for attempt in range(STATUS_TRIES):
            status = self._async_status(jid, "status", async_dir, task_vars)
            if status.get("finished") or status.get("failed") or status.get("skipped"):
                break
            if attempt + 1 < STATUS_TRIES:
                time.sleep(TICK)
        return status

    def _finish(
        self, jid: str, results_file: str, progress_file: str, status: dict[str, Any]
    ) -> None:
        """Remove the async job's file (what async_status mode=cleanup does) and, when the
        module may not have removed it (killed, crashed), the progress file, in one command;
        a failure here only warns."""
        paths = [] if status.get("msg") == "could not find job" else [results_file]
        if status.get("failed"):
            paths.append(progress_file)  # else the module removed it
        if not paths:
            return
        res = self._low_level_execute_command(
            "rm -f " + " ".join(shlex.quote(p) for p in paths), sudoable=True
        )
        if res.get("rc") != 0:
            display.warning(f"vm_migrate: async job {jid}'s files {', '.join(paths)} not "
                            f"removed: {res.get('stderr')}")  # fmt: skip

    def _async_status(
        self, jid: str, mode: str, async_dir: str, task_vars: dict[str, Any]
    ) -> dict[str, Any]:
        """The module ansible.builtin.async_status (mode status or cleanup), called as its
        action plugin calls it, with the async directory already expanded."""
        return self._execute_module(
            module_name="ansible.legacy.async_status",
            module_args={"jid": jid, "mode": mode, "_async_dir": async_dir},
            task_vars=task_vars,
        )

    def _reset_connection(self) -> None:
        try:
            self._connection.reset()
        except AttributeError:
            pass  # this connection has nothing to reset

    @staticmethod
    def _json_stdout() -> bool:
        """True when the stdout callback prints JSON (its output must stay parseable)."""
        callback = str(C.config.get_config_value("DEFAULT_STDOUT_CALLBACK") or "")
        return callback.rsplit(".", 1)[-1] in JSON_CALLBACKS
