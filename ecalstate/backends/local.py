"""Local backend: jobs as detached subprocesses, for laptops, demos and sites without a pool.

Jobs outlive the stage that started them (a later ``check`` process finds them
through the files each one keeps in its folder: ``pid``, ``started``, ``exit``),
and at most ``slots`` of them run at once across every stage sharing the workdir.
A job whose process is gone without an ``exit`` file died (killed, machine
rebooted): it is reported failed. The payload runs in that folder and can replace those files: they are read
only as small regular files of the job's folder (:mod:`.jobfiles`); a job whose ``pid`` or ``exit`` is anything
else (a link, a named pipe, not what the runner writes) is failed with a note saying so.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import signal
import stat
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from ..errors import EcalStateError
from . import Backend, BackendError, BatchJob, JobKey, NotAccepted, Observation, last_line, time_text
from .jobfiles import NotRegular, attempt_dir, read_head

RUNNER = Path(__file__).with_name("_runner.py")
#: per job folder: the lock the runner holds while it starts the job, and the mark of a removed job
LOCK_NAME = ".lock"
REMOVED_NAME = "removed"
#: what the runner writes: "PID STARTTIME" (or "PID -"), and the exit code
_PID = re.compile(r"(\d+) (\d+|-)")
_EXIT = re.compile(r"-?\d+")
#: the longest bookkeeping file read (a removal's reason is the longest)
_SMALL = 4096
#: what opening a name the job replaced by a link, a named pipe (for writing) or a folder fails with
_PLANTED = (errno.ELOOP, errno.ENXIO, errno.EISDIR)


class LocalBackend(Backend):
    """Run each job as a detached local process, ``slots`` at a time."""

    name = "local"

    def __init__(self, workdir: str | os.PathLike[str], slots: Optional[int] = None,
                 python: Optional[str] = None, job_env: Sequence[str] = ()) -> None:
        super().__init__(workdir, job_env)
        if slots is not None and slots < 1:
            raise BackendError(f"invalid number of local slots {slots}: expected >= 1")
        self.slots = slots or os.cpu_count() or 1
        self.python = python or sys.executable

    def check(self) -> None:
        self.makedirs(self.workdir, job_writable=False)
        if not os.access(self.workdir, os.W_OK):
            raise BackendError(f"local backend: work folder {self.workdir} is not writable")

    def submit(self, campaign: str, task: str, jobs: Sequence[BatchJob]) -> dict[JobKey, str]:
        """Start the jobs; a job folder that already has a process (or was removed) is never started again."""
        try:
            for job in jobs:
                executable = self.stage(job.spec.executable)
                cmd = [self.python, executable] if job.spec.python else [executable]
                (job.folder / "run.json").write_text(json.dumps({"cmd": cmd + list(job.spec.args),
                                                                 "env": dict(job.env)}))
            slots_dir = self.makedirs(self.workdir / "slots", job_writable=False)
        except (OSError, EcalStateError) as err:
            detail = str(err) if isinstance(err, EcalStateError) else f"local backend: cannot prepare jobs: {err}"
            raise NotAccepted(detail) from None
        try:
            subprocess.run([sys.executable, str(RUNNER), str(slots_dir), str(self.slots),
                            *(str(job.folder) for job in jobs)],
                           check=True, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError) as err:
            lines = (getattr(err, "stderr", "") or str(err)).strip().splitlines() or ["no detail"]
            started = any(os.path.lexists(job.folder / "pid") for job in jobs)  # else certainly not accepted
            raise (BackendError if started else NotAccepted)(f"local backend: cannot start jobs: {lines[-1]}") \
                from None
        pids = {job.key: _pid_of(job.folder) for job in jobs}
        return {key: f"local:{pid}" for key, pid in pids.items() if pid}

    def remove(self, campaign: str, task: str, keys: Sequence[JobKey], reason: str) -> None:
        """Mark each job folder removed (so no runner starts it later) and stop its process if it runs."""
        for key in keys:
            try:
                with attempt_dir(self.job_dir(campaign, task, key)) as folder:
                    self._remove(folder, reason)
            except (OSError, NotRegular):  # no folder (never started), or one the job replaced: nothing to stop
                continue

    def _remove(self, folder: int, reason: str) -> None:
        """Mark the (open) job folder removed and stop its process, under the folder's lock when the job left it be
        (one it replaced is skipped: the runner took it before the payload started, and no longer needs it)."""
        flags = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # never through a link, never waiting on a pipe
        try:
            lock: Optional[int] = os.open(LOCK_NAME, os.O_CREAT | os.O_RDONLY | flags, 0o600, dir_fd=folder)
        except OSError as err:
            if err.errno not in _PLANTED:
                raise
            lock = None
        try:
            if lock is not None and stat.S_ISREG(os.fstat(lock).st_mode):
                fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                mark = os.open(REMOVED_NAME, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | flags, 0o644, dir_fd=folder)
                with os.fdopen(mark, "w") as handle:
                    handle.write(reason + "\n")
            except OSError as err:
                if err.errno not in _PLANTED:
                    raise
            try:
                pid = _small(folder, "pid")
            except NotRegular:
                pid = ""
            if pid and _PID.fullmatch(pid) and _alive(pid):
                try:
                    os.killpg(int(pid.split()[0]), signal.SIGTERM)  # the job's own session
                except ProcessLookupError:
                    pass
        finally:
            if lock is not None:
                os.close(lock)

    def observe(self, campaign: str, task: str, keys: Sequence[JobKey]) -> dict[JobKey, Observation]:
        """Jobs whose folder is missing are left out: no evidence (another --workdir?) is not a failure."""
        seen = {}
        for key in keys:
            try:
                with attempt_dir(self.job_dir(campaign, task, key)) as folder:
                    seen[key] = _observe(folder)
            except NotRegular as err:  # the job's folder, or a folder above it, replaced by a link
                seen[key] = Observation("failed", str(err))
            except FileNotFoundError:
                continue
        return seen


def _observe(folder: int) -> Observation:
    """The job in the (open) attempt folder ``folder``, from the runner's files."""
    try:
        pid_text, code = _small(folder, "pid"), _small(folder, "exit")
    except NotRegular as err:
        return Observation("failed", str(err))
    if pid_text and not _PID.fullmatch(pid_text):
        return Observation("failed", "pid holds no process id")
    batch_id = f"local:{pid_text.split()[0]}" if pid_text else None
    started = _started(folder)
    if code:
        if not _EXIT.fullmatch(code):
            return Observation("failed", "exit holds no exit code", batch_id, started=started)
        return Observation(*_exit_status(int(code), folder), batch_id=batch_id, started=started)
    if pid_text and _alive(pid_text):
        return Observation("running" if _exists(folder, "started") else "idle", batch_id=batch_id, started=started)
    if not pid_text:
        if _exists(folder, REMOVED_NAME):
            try:
                why = _small(folder, REMOVED_NAME)
            except NotRegular as err:
                why = str(err)
            return Observation("failed", f"removed before it started: {why}")
        return Observation("idle")  # being submitted, or "to submit" again: the submit stages decide
    return Observation("failed", f"job process {pid_text.split()[0]} died without an exit code", batch_id)


def _small(folder: int, name: str) -> str:
    """A bookkeeping file of the runner (bounded, stripped), "" when missing or unreadable; :class:`NotRegular`
    when the job replaced it by anything but a regular file."""
    try:
        return read_head(folder, name, _SMALL).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _started(folder: int) -> Optional[str]:
    """When the runner started the payload ("PID TIME" in ``started``), or None: not started, or a file the job
    replaced or wrote (its own start time is all it could change, and a bad one is not taken)."""
    try:
        parts = _small(folder, "started").split()
    except NotRegular:
        return None
    try:
        return time_text(float(parts[1])) if len(parts) == 2 and 0 < float(parts[1]) < 1e10 else None
    except ValueError:
        return None


def _pid_of(path: Path) -> str:
    """The process id the runner recorded in the attempt folder ``path``, or ""."""
    try:
        with attempt_dir(path) as folder:
            text = _small(folder, "pid")
    except (OSError, NotRegular):
        return ""
    return text.split()[0] if _PID.fullmatch(text) else ""


def _exists(folder: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=folder, follow_symlinks=False)
        return True
    except OSError:
        return False


def _exit_status(code: int, folder: int) -> tuple[str, str]:
    if code == 0:
        return "done", ""
    reason = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
    last = last_line(folder)
    return "failed", reason + (f": {last}" if last else "")


def _alive(pid_text: str) -> bool:
    """True when the recorded process still runs: same pid, same start time, not a zombie."""
    pid, _, started = pid_text.partition(" ")
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return False
    state, *rest = stat.rsplit(")", 1)[1].split()
    return state not in ("Z", "X") and (started in ("", "-") or rest[18] == started)
