"""Local backend: jobs as detached subprocesses, for laptops, demos and sites without a pool.

Jobs outlive the stage that started them (a later ``check`` process finds them
through the files each one keeps in its folder: ``pid``, ``started``, ``exit``),
and at most ``slots`` of them run at once across every stage sharing the workdir.
A job whose process is gone without an ``exit`` file died (killed, machine
rebooted): it is reported failed.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from ..errors import EcalStateError
from . import Backend, BackendError, BatchJob, JobKey, NotAccepted, Observation, stderr_tail

RUNNER = Path(__file__).with_name("_runner.py")
#: per job folder: the lock the runner holds while it starts the job, and the mark of a removed job
LOCK_NAME = ".lock"
REMOVED_NAME = "removed"


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
            started = any((job.folder / "pid").exists() for job in jobs)  # else certainly not accepted
            raise (BackendError if started else NotAccepted)(f"local backend: cannot start jobs: {lines[-1]}") \
                from None
        return {job.key: f"local:{_read(job.folder / 'pid').split()[0]}" for job in jobs
                if (job.folder / "pid").exists()}

    def remove(self, campaign: str, task: str, keys: Sequence[JobKey], reason: str) -> None:
        """Mark each job folder removed (so no runner starts it later) and stop its process if it runs."""
        for key in keys:
            folder = self.job_dir(campaign, task, key)
            if not folder.is_dir():
                continue
            fd = os.open(folder / LOCK_NAME, os.O_CREAT | os.O_RDONLY, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                (folder / REMOVED_NAME).write_text(reason + "\n")
                pid_text = _read(folder / "pid")
                if pid_text and _alive(pid_text):
                    try:
                        os.killpg(int(pid_text.split()[0]), signal.SIGTERM)  # the job's own session
                    except ProcessLookupError:
                        pass
            finally:
                os.close(fd)

    def observe(self, campaign: str, task: str, keys: Sequence[JobKey]) -> dict[JobKey, Observation]:
        """Jobs whose folder is missing are left out: no evidence (another --workdir?) is not a failure."""
        folders = {key: self.job_dir(campaign, task, key) for key in keys}
        return {key: self._observe(folder) for key, folder in folders.items() if folder.is_dir()}

    def _observe(self, folder: Path) -> Observation:
        pid_text = _read(folder / "pid")
        batch_id = f"local:{pid_text.split()[0]}" if pid_text else None
        code = _read(folder / "exit")
        if code:
            return Observation(*_exit_status(int(code), folder), batch_id=batch_id)
        if pid_text and _alive(pid_text):
            return Observation("running" if (folder / "started").exists() else "idle", batch_id=batch_id)
        if not pid_text:
            if (folder / REMOVED_NAME).exists():
                return Observation("failed", f"removed before it started: {_read(folder / REMOVED_NAME)}")
            return Observation("idle")  # being submitted, or "to submit" again: the submit stages decide
        return Observation("failed", f"job process {pid_text.split()[0]} died without an exit code", batch_id)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _exit_status(code: int, folder: Path) -> tuple[str, str]:
    if code == 0:
        return "done", ""
    reason = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
    last = stderr_tail(folder / "stderr")
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
