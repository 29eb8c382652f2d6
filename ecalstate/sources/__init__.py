"""Run sources: where a campaign's runs come from (a file, CMS OMS, another catalogue).

A source answers one question, :meth:`RunSource.fetch`: "which runs after run N, and what became of
these runs that were still being taken?" It does its I/O (files, HTTP) before any transaction;
:meth:`~ecalstate.sources.store.RunSources.apply_sync` then writes the answer in one transaction
(runs, ended runs, ended fills and the cursor together), so a source that fails halfway writes nothing
and a sync repeated writes nothing twice. :func:`~ecalstate.sources.sync.sync` joins the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional, Protocol

from ..errors import EcalStateError
from ..results import RunSpec



class SourceError(EcalStateError):
    """A run source could not answer (unreachable, refused credentials, server error, malformed reply)."""


@dataclass(frozen=True)
class SourceRun:
    """A run as a source sees it; ``ongoing`` while it is still being taken (no end time yet)."""

    spec: RunSpec
    ongoing: bool = False


@dataclass(frozen=True)
class Rejected:
    """A row a source could not take (``resource``: ``runs``, ``fills``; its ``number`` when it has a usable one),
    and why: skipped and reported, the rest of the answer goes on (see docs/security.md, "The OMS run source")."""

    resource: str
    number: Optional[int]
    reason: str


@dataclass(frozen=True)
class SourceBatch:
    """One answer of a source: runs (new, or re-read because they were ongoing), fills that ended
    (fill -> why we know), the run number the cursor may move to, the rows rejected, and ``known_below``:
    runs up to this number were read again only to find runs listed late, so those already present are no news
    (not reported as existing)."""

    runs: list[SourceRun]
    fills_ended: dict[int, str] = field(default_factory=dict)
    last_run: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    known_below: int = 0
    #: when fills ended, as the source says (fill -> its beam dump's time): their deadlines count from it
    fills_dumped: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SourceState:
    """What a campaign knows of one source: its cursor, the runs still ongoing, the fills not known to have
    ended (most recent first, at most a few dozen)."""

    last_run: int
    ongoing: list[int]
    open_fills: list[int]


class RunSource(Protocol):
    """What :func:`~ecalstate.sources.sync.sync` needs of a source."""

    #: the cursor's key: one cursor per campaign and source name
    name: str

    def fetch(self, state: SourceState) -> SourceBatch:
        """Runs after ``state.last_run``, the runs of ``state.ongoing`` again, and the fills known to have ended."""
        ...


def later_fill_started(fills: Sequence[int]) -> dict[int, str]:
    """Fills numbers grow: every fill seen below the highest one has ended."""
    if not fills:
        return {}
    newest = max(fills)
    return {f: f"a later fill ({newest}) started" for f in set(fills) if f < newest}
