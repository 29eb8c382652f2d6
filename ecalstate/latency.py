"""Latency: how long after their runs (or fills) ended a campaign's tasks were done, and the share within the deadline.

A wing over :meth:`~ecalstate.store.Store.deadlines`: the instances first done in a window, per task (or per task
and week), with count, p50, p95, max and the share done by the deadline; per task also the instances still open past
their deadline. The numbers are the ones a Grafana panel computes from the exporter's done points (their
``<task>_latency_s`` and ``<task>_deadline_met`` fields): the percentiles are InfluxQL's (:func:`nearest_rank`), the
weeks are InfluxDB's ``GROUP BY time(1w)`` buckets (7 days from 1970-01-01, a Thursday). Merged runs are done with
their group: a group counts once, by its leader (the one done point the export writes).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from .clock import from_micros, to_micros
from .errors import Invalid
from .results import DONE, DONE_LATE, MISSED, InstanceDeadline
from .store import Store

#: how rows are grouped: per task, or per task and week
GROUPINGS = ("task", "week")
WEEK_US = 7 * 86400 * 1_000_000


@dataclass(frozen=True)
class LatencyRow:
    """One row of the table: a task (and week), its done instances' latencies in seconds, and the share done by
    the deadline; ``open_missed``: instances not done yet and past their deadline (per task rows only)."""

    task: str
    week: Optional[str]
    count: int
    p50_s: Optional[float]
    p95_s: Optional[float]
    max_s: Optional[float]
    within: Optional[float]
    open_missed: Optional[int]


def nearest_rank(values: Sequence[float], percent: float) -> Optional[float]:
    """InfluxQL's ``percentile(field, N)``: the ``floor(n * N / 100 + 0.5)``-th smallest value (None when that
    rank is 0, as InfluxDB answers nothing)."""
    ordered = sorted(values)
    rank = int(math.floor(len(ordered) * percent / 100 + 0.5))
    return ordered[rank - 1] if 1 <= rank <= len(ordered) else None


def week_of(ts: str) -> str:
    """The start (UTC date) of the InfluxDB week bucket holding ``ts``."""
    return from_micros(to_micros(ts) // WEEK_US * WEEK_US)[:10]


def latency_table(store: Store, campaign: str, task: Optional[str] = None, since: Optional[str] = None,
                  by: str = "task", now: Optional[str] = None) -> list[LatencyRow]:
    """The latency table of a campaign's tasks with a deadline (or of ``task``), over the instances first done at or
    after ``since`` (None: all), ``by`` task or week."""
    if by not in GROUPINGS:
        raise Invalid(f"unknown grouping {by!r} (valid: {', '.join(GROUPINGS)})")
    rows = store.deadlines(campaign, task, now=now, since=since)
    groups: dict[tuple[str, Optional[str]], list[InstanceDeadline]] = defaultdict(list)
    if by == "task":  # every task listed, even with nothing done yet
        for name in {r.task for r in rows}:
            groups[(name, None)] = []
    missed: dict[str, int] = defaultdict(int)
    for row in rows:
        if row.leader_run is not None:  # done with its group: its leader counts
            continue
        if row.state in (DONE, DONE_LATE) and row.latency_s is not None and row.done_at is not None:
            groups[(row.task, week_of(row.done_at) if by == "week" else None)].append(row)
        elif row.state == MISSED:
            missed[row.task] += 1
    out = []
    for (name, week), done in sorted(groups.items(), key=lambda g: (g[0][0], g[0][1] or "")):
        latencies = [d.latency_s for d in done if d.latency_s is not None]
        out.append(LatencyRow(name, week, len(latencies), nearest_rank(latencies, 50), nearest_rank(latencies, 95),
                              max(latencies) if latencies else None,
                              sum(d.state == DONE for d in done) / len(done) if done else None,
                              missed[name] if by == "task" else None))
    return out
