"""Append whole lines to a file, or nothing: the line-protocol export file and the prune archive.

A write that fails half-way (full disk, quota) is cut back to where the file ended, so no half line stays
for the next append to fuse with. A half line already there (a process killed mid-write) is cut before
appending: whoever wrote it never saw it acknowledged, so its data is written again anyway.
"""

from __future__ import annotations

import contextlib
import os

_BLOCK = 65536


def append_whole(path: str, data: bytes) -> None:
    """Append ``data`` (lines, each ending with a newline) and fsync it; on ``OSError`` the file is as before."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        size = _cut_torn_tail(fd)
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
