"""Append whole lines to a file, or nothing, in step with a database transaction: the line-protocol export file
(whose lines count once the export's cursor commits) and the prune archive (whose rows count once their delete
commits).

A write that fails half-way (full disk, quota) is cut back to where the file ended, so no half line stays for
the next append to fuse with. Appends made in a :func:`batch` stand or fall with the caller's transaction, which
commits as the block's last statement: before the first of them a note beside the file (``FILE.pending``,
fsynced) records the file's size and what the commit makes true; an error in the block cuts the file back to
that size; the note goes when the block ends. A process killed in between (SIGKILL, power cut) leaves the note,
and the next writer's :func:`settle` asks the database whether the commit happened: the lines stay if it did and
are cut off if it did not, so the file and the database agree, and nothing is written twice or lost. The writer
holds a lock on its note while it works: a second writer neither settles a live batch nor starts one of its own
(it is refused, and may try again later). A half line without a note (an older version's killed writer) is cut
before appending.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Optional

_BLOCK = 65536
#: the note beside a file while a batch of appends waits for its commit
PENDING = ".pending"


def append_whole(path: str, data: bytes) -> None:
    """Append ``data`` (lines, each ending with a newline) and fsync it; on ``OSError`` the file is as before."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        _append(fd, data, _cut_torn_tail(fd))
    finally:
        os.close(fd)


class Batch:
    """Appends to one file that count only once the caller's transaction commits (see :func:`batch`)."""

    def __init__(self, path: str) -> None:
        self.path = path
        #: the file's size before the first append of the batch; None while nothing was appended
        self.size: Optional[int] = None
        #: the note, open and locked while the batch lasts
        self.note_fd: Optional[int] = None

    def write(self, data: bytes, note: Mapping[str, Any]) -> None:
        """Append ``data`` (whole lines) and fsync it; the first write leaves the note first, with ``note``: what
        the commit makes true, for :func:`settle`'s ``committed`` to check."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
        try:
            size = _cut_torn_tail(fd)
            if self.size is None:
                info = os.fstat(fd)
                self.note_fd = _write_note(self.path + PENDING, {"size": size, "dev": info.st_dev,
                                                                 "ino": info.st_ino, "note": dict(note)})
                self.size = size
            _append(fd, data, size)
        finally:
            os.close(fd)


@contextlib.contextmanager
def batch(path: str) -> Iterator[Batch]:
    """A :class:`Batch` of appends to ``path``: the block's last statement commits the caller's transaction.

    An error in the block (a write, or the commit itself) cuts the file back to its size before the batch; the note
    goes once the block is over, or stays for :func:`settle` when the file could not be cut back.
    """
    current = Batch(path)
    try:
        try:
            yield current
        except BaseException:
            if current.size is not None:
                try:
                    _truncate(path, current.size)
                except OSError:
                    raise  # the note stays: the next settle cuts the lines its commit never made count
                _remove_note(path)
            raise
        if current.size is not None:
            _remove_note(path)
    finally:
        if current.note_fd is not None:
            os.close(current.note_fd)  # and with it the lock


def settle(path: str, committed: Callable[[Mapping[str, Any]], bool]) -> bool:
    """Finish a batch a dead process left beside ``path``: ``committed(note)`` says from the database whether its
    transaction committed; if not, the file is cut back to its size before the batch. Returns whether it was cut.

    Only the file the note was made for is cut (same device and inode, not shorter): a file moved away or replaced
    since is left alone. A note whose writer is still at work (it holds the note's lock) is refused with
    ``BlockingIOError``."""
    try:
        fd = os.open(path + PENDING, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BlockingIOError(errno.EAGAIN, f"another writer is at work ({path + PENDING} is locked)") from None
        if not _same_file(fd, path + PENDING):  # its writer finished meanwhile, and removed it
            return False
        raw = b""
        while chunk := os.read(fd, _BLOCK):
            raw += chunk
        try:
            found = json.loads(raw)
            size, identity, note = int(found["size"]), (found["dev"], found["ino"]), found["note"]
        except (ValueError, KeyError, TypeError):  # killed while writing the note: no line was appended after it
            _remove_note(path)
            return False
        try:
            info: Optional[os.stat_result] = os.stat(path)
        except FileNotFoundError:
            info = None
        cut = (info is not None and (info.st_dev, info.st_ino) == identity and info.st_size > size
               and not _judged(committed, note))
        if cut:
            _truncate(path, size)
        _remove_note(path)
        return cut
    finally:
        os.close(fd)


def _judged(committed: Callable[[Mapping[str, Any]], bool], note: Any) -> bool:
    """``committed(note)``; a note it cannot read (another version's) keeps the lines: never lose what may count."""
    try:
        return committed(note)
    except (KeyError, ValueError, TypeError):
        return True


def _same_file(fd: int, path: str) -> bool:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (info.st_dev, info.st_ino) == (mine.st_dev, mine.st_ino)


def _write_note(note_path: str, content: Mapping[str, Any]) -> int:
    """The note, on disk (with its name in the folder) before any line it covers: written and locked under a
    temporary name, then linked into place whole. Returns its open descriptor, which holds the lock until it is
    closed. Another writer's note, or another writer making one, is refused."""
    draft = note_path + ".new"  # a killed writer's draft is taken over (no line was appended after it)
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BlockingIOError(errno.EAGAIN, f"another writer is at work ({draft} is locked)") from None
        os.ftruncate(fd, 0)
        data = json.dumps(content, sort_keys=True).encode()
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
        try:
            os.link(draft, note_path)
        except FileExistsError:
            raise FileExistsError(errno.EEXIST, f"another writer is at work ({note_path} exists)") from None
        finally:
            if _same_file(fd, draft):
                os.unlink(draft)
        folder = os.open(os.path.dirname(note_path) or ".", os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _remove_note(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path + PENDING)


def _append(fd: int, data: bytes, size: int) -> None:
    """Write ``data`` at the end of ``fd`` (``size`` bytes long) and fsync; on ``OSError`` cut back to ``size``."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):  # the original error is what the caller must see
            os.ftruncate(fd, size)
            os.fsync(fd)
        raise


def _truncate(path: str, size: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def _cut_torn_tail(fd: int) -> int:
    """Remove a last line without its newline; returns the file's size after."""
    size = os.fstat(fd).st_size
    end = size
    while end > 0:
        start = max(0, end - _BLOCK)
        block = os.pread(fd, end - start, start)
        if end == size and block.endswith(b"\n"):
            return size
        newline = block.rfind(b"\n")
        if newline >= 0:
            end = start + newline + 1
            break
        end = start
    os.ftruncate(fd, end)
    return end
