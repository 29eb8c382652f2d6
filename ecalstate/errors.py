"""The library's exceptions: every user-facing refusal is an :class:`EcalStateError`.

The CLI turns these, and only these, into one clean line and exit code 1.
"""

from __future__ import annotations


class EcalStateError(Exception):
    """Base of every refusal the library reports to a user."""


class NotFound(EcalStateError):
    """A campaign, task, run type, run or job that does not exist."""


def no_instance(campaign: str, task: str, run: int) -> NotFound:
    """The refusal of a task instance that does not exist (the one wording every reader uses)."""
    return NotFound(f"task {task!r} has no instance for run {run} in campaign {campaign!r}")


class Invalid(EcalStateError):
    """Bad input: a malformed value, a duplicate name, a dependency cycle."""


class Conflict(EcalStateError):
    """A concurrent change won (compare-and-set failed) or a request id was reused."""


class SchemaError(EcalStateError):
    """The database schema is newer than this code, or cannot be opened."""


class StorageError(EcalStateError):
    """A file the library appends to (export file, prune archive) could not be written: full disk, permissions."""


class Refused(EcalStateError):
    """A refused request: nothing was written; ``result`` (a bulk call's outcomes, if any) says what and why."""

    def __init__(self, message: str, result: object) -> None:
        super().__init__(message)
        self.result = result
