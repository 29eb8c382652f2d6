"""Job logs: the stdout and stderr of a job attempt, found through the folder the job recorded.

Each attempt runs in its own folder (``.../j<jid>.a<attempt>``, see :mod:`ecalstate.backends`), which the
handler records as the job's ``logs`` field; earlier attempts are its siblings. Reading is bounded (the tail
of a log, never a whole 10 GB file) and never fails on bytes that are not UTF-8. The job wrote that folder, so a
log is read only as a regular file of the job's own attempt folder, reached without following a link
(:mod:`ecalstate.backends.jobfiles`); anything else is a one-line note ("stderr is a named pipe") instead of text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from .backends.jobfiles import NotRegular, attempt_dir, attempt_path
from .backends.jobfiles import read_tail as read_end
from .errors import Invalid, NotFound

if TYPE_CHECKING:
    from .store import Store

#: the two logs of every attempt folder (both backends write them under these names)
STREAMS = ("stdout", "stderr")
#: at most this many bytes are read from the end of a log
MAX_BYTES = 64 * 1024
_ATTEMPT = re.compile(r"\.a\d+$")


@dataclass(frozen=True)
class JobLog:
    """The tail of one log of one job attempt (``text`` is empty when the file does not exist or was not read)."""

    run_number: int
    jid: int
    generation: int
    attempt: int
    stream: str
    path: str
    exists: bool
    text: str
    #: True when older content was left out (the file is longer than what was read, or than ``lines``)
    truncated: bool
    #: why the log was not read ("stderr is a symbolic link"), shown instead of its text; "" when it was read
    note: str = ""


def attempt_folder(logs: str, attempt: int) -> Path:
    """The folder of ``attempt``, from the folder of the latest attempt (``.../j3.a2`` -> ``.../j3.a1``)."""
    folder = Path(logs)
    if not _ATTEMPT.search(folder.name):
        raise Invalid(f"{logs} is not a job attempt folder (expected a name like j3.a1)")
    return folder.with_name(_ATTEMPT.sub(f".a{attempt}", folder.name))


def read_tail(folder: Path, stream: str, lines: Optional[int] = None,
              max_bytes: int = MAX_BYTES) -> tuple[str, bool]:
    """The last ``lines`` lines (all that fit in ``max_bytes``) of the log ``stream`` of the attempt folder
    ``folder``, and whether anything older was left out.

    Raises :class:`~ecalstate.backends.jobfiles.NotRegular` (its text is the note) when the log or its folder is
    not what the job folder layout promises, :class:`FileNotFoundError` when it does not exist.
    """
    with attempt_dir(folder) as fd:
        data, truncated = read_end(fd, stream, max_bytes)
    if truncated:  # the first line read is partial
        data = data[data.find(b"\n") + 1:] if b"\n" in data else data
    text = data.decode("utf-8", errors="replace")
    if lines is not None:
        kept = text.splitlines(keepends=True)
        if len(kept) > lines:
            text, truncated = "".join(kept[len(kept) - lines:] if lines else []), True
    return text, truncated


def job_logs(
    store: Store,
    campaign: str,
    task: str,
    run: int,
    jid: Optional[int] = None,
    attempt: Optional[int] = None,
    stream: str = "stdout",
    lines: Optional[int] = None,
) -> list[JobLog]:
    """The ``stream`` log of the jobs of a run (current generation; one job with ``jid``), latest attempt unless
    ``attempt`` is given. A run merged into a group has no jobs of its own: its leader's are given (their
    ``run_number`` says whose)."""
    if stream not in STREAMS:
        raise Invalid(f"unknown log {stream!r} (valid: {', '.join(STREAMS)})")
    jobs = [j for j in store.list_jobs(campaign, task, store.jobs_run(campaign, task, run))
            if jid is None or j.jid == jid]
    if not jobs:
        what = f"job {jid} of run {run}" if jid is not None else f"run {run}"
        raise NotFound(f"task {task} has no jobs for {what} in campaign {campaign!r}")
    out = []
    for job in jobs:
        wanted = job.attempts if attempt is None else attempt
        if not 1 <= wanted <= job.attempts:
            raise Invalid(f"job {job.jid} of run {run} has attempts 1-{job.attempts}, not {wanted}")
        logs = job.fields.get("logs")
        if not logs:
            raise NotFound(f"job {job.jid} of run {run} recorded no log folder (not submitted yet?)")
        folder = attempt_folder(str(logs), wanted)
        path = folder / stream
        text, truncated, exists, note = "", False, True, ""
        where = attempt_path(folder)
        if where is None or (where.campaign, where.task, where.run, where.generation, where.jid) != (
                campaign, task, job.run_number, job.generation, job.jid):
            note = (f"{folder} is not this job's attempt folder"
                    f" (.../jobs/{campaign}/{task}/{job.run_number}/g{job.generation}/j{job.jid}.a{wanted})")
        else:
            try:
                text, truncated = read_tail(folder, stream, lines)
            except FileNotFoundError:
                exists = False
            except NotRegular as err:
                note = str(err)
            except OSError as err:
                raise NotFound(f"cannot read {path}: {err.strerror}") from None
        out.append(JobLog(job.run_number, job.jid, job.generation, wanted, stream, str(path), exists, text,
                          truncated, note))
    return out
