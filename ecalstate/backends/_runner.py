"""Start local jobs detached from the submitting process (run as a script: stdlib only, no ecalstate import).

Usage: python _runner.py SLOTS_DIR SLOTS JOB_DIR...

Each JOB_DIR holds ``run.json`` ({"cmd": [...], "env": {...}}); the command gets exactly that environment,
nothing of the runner's own (the handler's secrets stay in the handler). For each one a
daemon is forked into its own session; the runner writes ``pid`` ("PID STARTTIME",
so a recycled pid is not mistaken for the job) and exits. The daemon waits for one
of SLOTS slot locks (bounded parallelism across every submitter sharing the
folder), writes ``started`` (its pid and the Unix time), runs the command with stdout/stderr in ``stdout`` and
``stderr``, and writes its exit code to ``exit`` (negative: killed by that signal).
A daemon that dies without writing ``exit`` is judged failed by the backend. A folder
that already has a ``pid`` (or a ``removed`` mark) is skipped: starting is idempotent by key.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any


def write_atomic(path: str, text: str) -> None:
    """Write ``path`` whole or not at all; the temporary file is made anew (the payload runs in the same folder:
    never written through a link or a pipe it left under that name)."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def start_time(pid: int) -> str:
    """Field 22 of /proc/PID/stat (start time in clock ticks): with the pid, a unique process identity."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "-"


def acquire_slot(folder: str, slots: int, stopped: list[int]) -> int:
    """Wait for one of the slot locks and keep it (its descriptor stays open until the process ends): 0; or the
    negative signal that stopped the wait."""
    os.makedirs(folder, exist_ok=True)
    while not stopped:
        for index in range(slots):
            fd = os.open(os.path.join(folder, f"slot{index}"), os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return 0
            except BlockingIOError:
                os.close(fd)
        time.sleep(0.1)
    return -stopped[0]


def daemon(slots_dir: str, slots: int, job_dir: str) -> None:
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    # a removal (SIGTERM to the session) from the first instant on: before the payload runs it stops the wait and
    # the payload never starts; once it runs, it goes on to the payload. Either way ``exit`` says the signal.
    stopped: list[int] = []
    child: list[subprocess.Popen[bytes]] = []

    def on_term(signum: int, _frame: object) -> None:
        stopped.append(signum)
        for process in child:
            process.send_signal(signum)

    signal.signal(signal.SIGTERM, on_term)
    with open(os.path.join(job_dir, "run.json")) as handle:
        spec = json.load(handle)
    code = acquire_slot(slots_dir, slots, stopped)
    if code == 0:
        write_atomic(os.path.join(job_dir, "started"), f"{os.getpid()} {time.time():.6f}")  # pid, Unix time
        code = run_payload(job_dir, spec, stopped, child)
    write_atomic(os.path.join(job_dir, "exit"), str(code))


def run_payload(job_dir: str, spec: dict[str, Any], stopped: list[int], child: list[subprocess.Popen[bytes]]) -> int:
    """The payload's exit code (negative: the signal that ended it); it is not started once ``stopped``."""
    with open(os.path.join(job_dir, "stdout"), "wb") as out, open(os.path.join(job_dir, "stderr"), "wb") as err:
        if stopped:
            return -stopped[0]
        try:
            child.append(subprocess.Popen(spec["cmd"], cwd=job_dir, env=spec["env"],
                                          stdin=subprocess.DEVNULL, stdout=out, stderr=err))
        except OSError as exc:
            err.write(f"cannot start {spec['cmd'][0]}: {exc.strerror}\n".encode())
            return 127
        if stopped:  # the signal came while it started: the session's signal may have missed it
            child[0].send_signal(stopped[0])
        return child[0].wait()


def main(argv: list[str]) -> None:
    slots_dir, slots, job_dirs = argv[0], int(argv[1]), argv[2:]
    for job_dir in job_dirs:
        # under the folder's lock: a job already started (pid) or removed is never started again
        lock = os.open(os.path.join(job_dir, ".lock"), os.O_CREAT | os.O_RDONLY, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if any(os.path.exists(os.path.join(job_dir, name)) for name in ("pid", "removed")):
                continue
            pid = os.fork()
            if pid == 0:
                try:
                    os.close(lock)
                    daemon(slots_dir, slots, job_dir)
                finally:
                    os._exit(0)
            write_atomic(os.path.join(job_dir, "pid"), f"{pid} {start_time(pid)}")
        finally:
            os.close(lock)


if __name__ == "__main__":
    main(sys.argv[1:])
