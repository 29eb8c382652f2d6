"""Reading what a job left in its folder, so that a job cannot turn the reading against its reader.

A job's payload writes into its attempt folder (on HTCondor as the pool's job user, into a group-writable folder),
and whoever reads that folder later (``check`` for the reason of a failure and the report, ``job logs``, the web
view) reads with the handler's rights. So the payload could replace its stderr by a symbolic link to a file only
the handler's account may read (shown, stored in the reason, exported), by a named pipe (the reader waits for ever:
no job of that task is checked again), a directory, a device, a hard link to someone else's file, or a file of
many gigabytes. Every reader of a job file goes through here instead:

- the attempt folder is opened from the work folder down, one component at a time, each without following a
  link (``<workdir>/jobs/<campaign>/<task>/<run>/g<generation>/j<jid>.a<attempt>``, see :mod:`ecalstate.backends`);
- the file is looked at (``lstat``) and opened relative to that folder with ``O_NOFOLLOW | O_NONBLOCK``: only a
  regular file with a single link is read, never more than the caller's bound (the end of a log: from its end);
- anything else is :class:`NotRegular`, whose text is a one-line note naming the file and what it is
  ("stderr is a symbolic link"): what readers show instead of the content, never what a link points to.

A file that grows, shrinks or is replaced while it is read is read as it is: no error, no wait.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import EcalStateError

#: how an attempt folder lies below the work folder: jobs/<campaign>/<task>/<run>/g<generation>/j<jid>.a<attempt>
_LAYOUT = tuple(map(re.compile, (r"jobs", r"(?!\.\.?$).+", r"(?!\.\.?$).+", r"\d+", r"g\d+", r"j\d+\.a\d+")))
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISDIR, "a directory"),
          (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"))


class NotRegular(EcalStateError):
    """A job file, or a folder on the way to it, that is not what the job folder layout promises (a link, a pipe,
    a device...). Its text is the note readers show instead of the content."""


@dataclass(frozen=True)
class AttemptPath:
    """An attempt folder's path, split at the work folder: what the layout says about whose folder it is."""

    workdir: Path
    campaign: str
    task: str
    run: int
    generation: int
    jid: int
    attempt: int

    @property
    def parts(self) -> tuple[str, ...]:
        return ("jobs", self.campaign, self.task, str(self.run), f"g{self.generation}", f"j{self.jid}.a{self.attempt}")


def attempt_path(folder: str | os.PathLike[str]) -> Optional[AttemptPath]:
    """``folder`` read as ``<workdir>/jobs/<campaign>/<task>/<run>/g<generation>/j<jid>.a<attempt>``, or None."""
    path = Path(folder)
    parts = path.parts[-len(_LAYOUT):]
    if len(path.parts) <= len(_LAYOUT) or not path.is_absolute() \
            or not all(rule.fullmatch(part) for rule, part in zip(_LAYOUT, parts)):
        return None
    jid, attempt = parts[5][1:].split(".a")
    return AttemptPath(path.parents[len(_LAYOUT) - 1], parts[1], parts[2], int(parts[3]), int(parts[4][1:]),
                       int(jid), int(attempt))


def kind_of(mode: int) -> str:
    """What a file that is not a regular file is, in words ("a named pipe")."""
    return next((what for test, what in _KINDS if test(mode)), "not a regular file")


@contextmanager
def attempt_dir(folder: str | os.PathLike[str]) -> Iterator[int]:
    """The attempt folder ``folder``, opened (a descriptor for :func:`read_head` and :func:`read_tail`).

    Every component below the work folder is opened without following a link: a folder swapped for a link
    (anywhere from ``jobs`` down) is :class:`NotRegular`, naming it relative to the work folder. A missing folder is
    :class:`FileNotFoundError`; a path that is not an attempt folder of the layout, :class:`NotRegular` too.
    """
    where = attempt_path(folder)
    if where is None:
        raise NotRegular(f"{folder} is not a job attempt folder (.../jobs/<campaign>/<task>/<run>/g<N>/j<J>.a<N>)")
    fd = os.open(where.workdir, _DIR_FLAGS & ~os.O_NOFOLLOW)  # the work folder itself may be reached through a link
    try:
        for depth, part in enumerate(where.parts):
            fd = _step(fd, part, "/".join(where.parts[:depth + 1]))
        yield fd
    finally:
        os.close(fd)


def _step(fd: int, name: str, shown: str) -> int:
    """The folder ``name`` of the folder ``fd``, opened without following a link; ``fd`` is closed once it is
    open (on an error ``fd`` stays open, the caller's to close)."""
    try:
        child = os.open(name, _DIR_FLAGS, dir_fd=fd)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise NotRegular(f"{shown} is {_what(fd, name)}") from None
        raise
    os.close(fd)
    return child


def _what(fd: int, name: str) -> str:
    try:
        return kind_of(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
    except OSError:
        return "not a folder"


@contextmanager
def open_regular(dir_fd: int, name: str) -> Iterator[int]:
    """The regular file ``name`` (a relative path, no ``..``) of the folder ``dir_fd``, opened for reading.

    :class:`NotRegular` when it, or a folder on the way to it, is anything else, or when it has other hard links (a
    file of someone else linked into the job's folder); :class:`FileNotFoundError` when it does not exist.
    """
    *folders, last = name.split("/")
    if not last or any(part in ("", ".", "..") for part in [*folders, last]):
        raise NotRegular(f"{name} is not a file name inside the job folder")
    fd = os.dup(dir_fd)
    try:
        for depth, part in enumerate(folders):
            fd = _step(fd, part, "/".join(folders[:depth + 1]))
        mode = os.stat(last, dir_fd=fd, follow_symlinks=False).st_mode  # never open a pipe or device to look at it
        if not stat.S_ISREG(mode):
            raise NotRegular(f"{name} is {kind_of(mode)}")
        try:
            handle = os.open(last, _FILE_FLAGS, dir_fd=fd)
        except OSError as err:  # replaced since: a link now
            if err.errno == errno.ELOOP:
                raise NotRegular(f"{name} is a symbolic link") from None
            raise
    finally:
        os.close(fd)
    try:
        info = os.fstat(handle)
        if not stat.S_ISREG(info.st_mode):  # replaced between the look and the open
            raise NotRegular(f"{name} is {kind_of(info.st_mode)}")
        if info.st_nlink > 1:  # 0: replaced since it was opened, still the job's own file
            raise NotRegular(f"{name} has {info.st_nlink} hard links")
        yield handle
    finally:
        os.close(handle)


def read_head(dir_fd: int, name: str, limit: int) -> bytes:
    """At most ``limit`` bytes from the start of the regular file ``name`` of the folder ``dir_fd``."""
    with open_regular(dir_fd, name) as fd:
        return _read_at(fd, 0, limit)


def read_tail(dir_fd: int, name: str, limit: int) -> tuple[bytes, bool]:
    """At most the last ``limit`` bytes of the regular file ``name``, and whether older content was left out."""
    with open_regular(dir_fd, name) as fd:
        start = max(0, os.fstat(fd).st_size - limit)
        return _read_at(fd, start, limit), start > 0


def _read_at(fd: int, offset: int, limit: int) -> bytes:
    """Up to ``limit`` bytes from ``offset``; less when the file ends sooner (or shrank meanwhile)."""
    chunks: list[bytes] = []
    got = 0
    while got < limit:
        data = os.pread(fd, limit - got, offset + got)
        if not data:
            break
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


def read_inside(workdir: str | os.PathLike[str], path: str | os.PathLike[str], limit: int) -> tuple[bytes, int]:
    """At most ``limit`` bytes from the start of the file ``path``, and its size: a regular file (one link) inside
    the work folder ``workdir`` as written (absolute, no ``.`` or ``..``), reached from the work folder down without
    following a link, as :func:`open_regular` reaches a job's files (a plot a job reported: the web view serves it).

    :class:`NotRegular` when it lies elsewhere or is anything else (its text names what), FileNotFoundError when it
    does not exist.
    """
    top, wanted = Path(workdir), os.fspath(path)
    inside = os.path.isabs(wanted) and os.path.normpath(wanted) == wanted
    try:
        relative = Path(wanted).relative_to(top).as_posix() if inside else ""
    except ValueError:
        relative = ""
    if not relative or relative == ".":
        raise NotRegular(f"{wanted} is not inside the work folder {top}")
    folder = os.open(top, _DIR_FLAGS & ~os.O_NOFOLLOW)  # the work folder itself may be reached through a link
    try:
        with open_regular(folder, relative) as fd:
            return _read_at(fd, 0, limit), os.fstat(fd).st_size
    finally:
        os.close(folder)
