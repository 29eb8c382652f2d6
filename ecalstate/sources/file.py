"""A run file (JSON or CSV, read by the caller) as a run source: the same sync as OMS, without a server."""

from __future__ import annotations

from collections.abc import Sequence

from ..results import RunSpec
from ..results import ONGOING
from . import SourceBatch, SourceRun, SourceState, later_fill_started


class FileSource:
    """Runs listed in a file: a run with ``ongoing: true``, or an ``end_time`` of null, is still being taken.

    Every run of the file is offered on each sync (a file has no "after run N"); the store injects
    each once. Fills below the highest fill of the file have ended.
    """

    def __init__(self, runs: Sequence[RunSpec], name: str = "file") -> None:
        self.name = name
        self.runs = list(runs)

    def fetch(self, state: SourceState) -> SourceBatch:
        runs = [SourceRun(spec, _ongoing(spec.meta)) for spec in self.runs]
        fills = [s.fill for s in self.runs if s.fill is not None]
        return SourceBatch(runs, later_fill_started(fills), max((s.run_number for s in self.runs), default=0))


def _ongoing(meta: dict[str, object]) -> bool:
    flag = meta.get(ONGOING)
    return str(flag).lower() in ("true", "1") or ("end_time" in meta and meta["end_time"] in (None, ""))
