"""Deadlines: when each task instance must be done, how late it was, and which tasks missed their cadence.

ECAL's prompt calibrations exist to be ready before CMS prompt reconstruction uses them, about 48 hours after data
taking (Tier-0 takes conditions in run order and stops at the first run whose calibration is not finished). A task
of a campaign may have a deadline (:class:`~ecalstate.results.TaskSettings`) counted from its instance's reference:

- ``run-end``: the run's end, as its run source wrote it (metadata ``end_time``, kept normalised in ``run.ended_at``);
- ``fill-end``: the fill's end: the beam dump's time the source gave (``fill_end.dumped_at``), else, once the fill is
  known to have ended (:func:`~ecalstate.catalog.ended_fills`), the newest end of its runs.

A run without one has no deadline, and says why. An instance's latency is its **first** done time (its first done
audit row) minus the reference: a calibration reprocessed weeks later was still ready when Tier-0 took it. A merged
run is done with its group: it carries its leader's reference, deadline and done time. Every time comes from the
store's clock (``store.clock()``), which tests and simulations replace.

The same reference orders claims (:func:`urgency`: what can still make its deadline first, earliest deadline first,
then what already missed, then what has none) and sets HTCondor's job priority (:func:`job_priority`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, NamedTuple, Optional

from .auditlog import TASK_ROWS, vocab_id
from .base import StoreBase, campaign_id
from .catalog import ended_fills
from .clock import from_micros, to_micros
from .db import Tx
from .errors import NotFound
from .limits import chunks
from .results import (AT_RISK, DONE, DONE_LATE, FILL_END, MISSED, NO_DEADLINE, NO_END_TIME, ON_TIME, CadenceGap,
                      InstanceDeadline, TaskSettings)

_S = 1_000_000  # microseconds in a second

#: an instance's first done time (integer microseconds): its first ``-> done`` audit row, through the partial index
#: of the instances' rows (``ix_audit_task``); an instance still new was never done
FIRST_DONE_SQL = (f"CASE WHEN ti.status = 'new' THEN NULL ELSE (SELECT MIN(ts) FROM audit_log WHERE instance_id = ti.id"
                  f" AND {TASK_ROWS} AND to_status = {vocab_id('done')}) END")
#: instances (id, task id, run id, status, leader id, first done): narrow rows, their runs read apart (a run's end
#: once for its twenty tasks)
_ROWS_SQL = f"""
SELECT ti.id, ti.task_id, ti.run_id, ti.status, ti.leader_id, {FIRST_DONE_SQL}
FROM task_instance ti WHERE ti.campaign_id = ? AND ti.status <> 'skipped'"""
_RUNS_SQL = "SELECT id, run_number, fill, ended_at FROM run WHERE campaign_id = ?"
#: the statuses of an instance whose deadline may still be open (a done one was done, a skipped one is not expected)
OPEN_STATUSES = ("new", "reprocess", "processing", "failed", "merged")


class Judged(NamedTuple):
    """What :func:`judge` says of one instance (times as integer microseconds; a tuple: made for every instance)."""

    deadline: Optional[int]
    warn_at: Optional[int]
    latency: Optional[int]
    state: str


def judge(reference: Optional[int], settings: TaskSettings, done: Optional[int], now: int) -> Judged:
    """The deadline rule, on times in integer microseconds. Unfinished: ``on-time`` before ``deadline - warn_before``,
    ``at-risk`` from then until the deadline, ``missed`` from the deadline on; done: ``done`` when by the deadline,
    else ``done-late``. Without a reference: ``no-end-time``."""
    assert settings.deadline is not None
    if reference is None:
        return Judged(None, None, None, NO_END_TIME)
    deadline = reference + settings.deadline * _S
    warn_at = deadline - (settings.warn_before or 0) * _S
    if done is not None:
        return Judged(deadline, warn_at, done - reference, DONE if done <= deadline else DONE_LATE)
    state = MISSED if now >= deadline else AT_RISK if now >= warn_at else ON_TIME
    return Judged(deadline, warn_at, None, state)


# ------------------------------------------------------------------ HTCondor's priority of a job

#: the priority of a job whose instance has no deadline (HTCondor's default) and of one whose deadline has passed
NO_DEADLINE_PRIORITY = 0
MISSED_PRIORITY = 1
#: a live deadline's priority is this minus the deadline in minutes since :data:`PRIORITY_EPOCH`: the earlier the
#: deadline, the higher (an absolute time, so jobs submitted at different times compare by their deadlines)
LIVE_PRIORITY_BASE = 1_000_000_000
PRIORITY_EPOCH = to_micros("2020-01-01T00:00:00.000000Z")


def job_priority(deadline: Optional[str], now: str) -> int:
    """HTCondor's ``priority`` (JobPrio) for a job whose instance must be done by ``deadline``: earlier deadline,
    higher priority; every live deadline above every missed one, which is above no deadline (0, the default).

    Live: ``1,000,000,000 - minutes from 2020-01-01 to the deadline`` (2026: about 996 million; a minute's
    resolution; positive until the year 3900). Missed at submit: 1. No deadline: 0."""
    if deadline is None:
        return NO_DEADLINE_PRIORITY
    due = to_micros(deadline)
    if due <= to_micros(now):
        return MISSED_PRIORITY
    minutes = max(0, (due - PRIORITY_EPOCH) // (60 * _S))
    return max(MISSED_PRIORITY + 1, LIVE_PRIORITY_BASE - minutes)


def priority_now(priority: int, now: str) -> int:
    """A queued job's priority as :func:`job_priority` would give it ``now``: a live deadline's priority names its
    deadline (to the minute), so one that passed while the job waited becomes the missed one; any other stays."""
    if priority <= MISSED_PRIORITY or priority > LIVE_PRIORITY_BASE:
        return priority
    due = PRIORITY_EPOCH + (LIVE_PRIORITY_BASE - priority) * 60 * _S
    return MISSED_PRIORITY if due <= to_micros(now) else priority


# ------------------------------------------------------------------ references

@dataclass(frozen=True)
class FillEnds:
    """What a campaign knows of its fills' ends: the fills that ended, and each fill's reference."""

    ended: set[int]
    dumped: dict[int, Optional[str]]
    last_end: dict[int, Optional[str]]

    @classmethod
    def read(cls, tx: Tx, cid: int, fills: Collection[int]) -> FillEnds:
        """The ends of ``fills`` (each campaign's few: one grouped read of their runs)."""
        wanted = sorted(set(fills))
        ended: set[int] = set()
        dumped: dict[int, Optional[str]] = {}
        last: dict[int, Optional[str]] = {}
        for part in chunks(wanted):
            marks = ",".join("?" * len(part))
            ended |= ended_fills(tx, cid, part)
            dumped.update(tx.all(f"SELECT fill, dumped_at FROM fill_end WHERE campaign_id = ? AND fill IN ({marks})",
                                 (cid, *part)))
            last.update(tx.all(f"SELECT fill, MAX(ended_at) FROM run WHERE campaign_id = ? AND fill IN ({marks})"
                               " GROUP BY fill", (cid, *part)))
        return cls(ended, dumped, last)

    def reference(self, fill: Optional[int]) -> tuple[Optional[str], str]:
        """(the fill's end, why there is none)."""
        if fill is None:
            return None, "the run has no fill"
        if fill not in self.ended:
            return None, f"fill {fill} has not ended"
        when = self.dumped.get(fill) or self.last_end.get(fill)
        return (when, "") if when else (None, f"fill {fill} ended, but none of its runs has an end time")


def reference_of(settings: TaskSettings, run: int, fill: Optional[int], ended_at: Optional[str],
                 fills: FillEnds) -> tuple[Optional[str], str]:
    """(an instance's reference by its task's settings, why it has none)."""
    if settings.deadline_from == FILL_END:
        when, why = fills.reference(fill)
        return when, (f"run {run}: {why}" if why else "")
    return ended_at, ("" if ended_at else f"run {run} has no end time")


def urgency(reference: Optional[str], settings: Optional[TaskSettings], now: str) -> tuple[int, str]:
    """How a claim orders an instance: (0: can still make its deadline, 1: missed it, 2: none; its reference), so the
    earliest deadline comes first among those that can make it (a policy: what already missed goes after them)."""
    if settings is None or settings.deadline is None or reference is None:
        return (2, "")
    missed = to_micros(reference) + settings.deadline * _S <= to_micros(now)
    return (1 if missed else 0, reference)


def task_settings(tx: Tx, cid: int) -> dict[int, tuple[str, TaskSettings, str]]:
    """Every task of a campaign: id -> (name, settings, created at)."""
    return {r[0]: (r[1], TaskSettings.from_json(r[2]), r[3])
            for r in tx.all("SELECT id, name, settings, created_at FROM task WHERE campaign_id = ?", (cid,))}


class Deadlines(StoreBase):
    """Deadlines, latencies and cadence gaps, read with the store's clock."""

    def deadlines(
        self, campaign: str, task: Optional[str] = None, runs: Optional[Collection[int]] = None,
        now: Optional[str] = None, finished: bool = True, since: Optional[str] = None,
        states: Optional[Collection[str]] = None,
    ) -> list[InstanceDeadline]:
        """Every instance of the campaign's tasks that have a deadline (``task``: of that one, whether or not it has
        one), or of ``runs``, against the deadline, at ``now`` (the store's clock). Skipped instances are left out.

        ``finished=False`` leaves out instances that were done (their deadline is decided: what ``health`` asks);
        ``since`` leaves out those first done before it; ``states`` keeps only the instances in those states (the
        attention model asks for ``at-risk`` and ``missed``: nothing is made for the others, and of a run-end task
        only the instances of runs ended long enough ago are read). A few reads per campaign, none per instance."""
        now = now or self.clock()
        now_us = to_micros(now)
        with self.db.tx(write=False) as tx:
            cid = campaign_id(tx, campaign)
            tasks = task_settings(tx, cid)
            if task is not None:
                wanted = [t for t, (name, _, _) in tasks.items() if name == task]
                if not wanted:
                    raise NotFound(f"unknown task {task!r} in campaign {campaign!r}")
            else:
                wanted = [t for t, (_, s, _) in tasks.items() if s.deadline is not None]
            run_of: dict[int, tuple[int, Optional[int], Optional[str]]] = {}
            if runs is None:
                run_of.update((r[0], r[1:]) for r in tx.all(_RUNS_SQL, (cid,)))
            else:
                for part in chunks(sorted(set(runs))):
                    run_of.update((r[0], r[1:]) for r in tx.all(
                        _RUNS_SQL + f" AND run_number IN ({','.join('?' * len(part))})", (cid, *part)))
            run_ids = None if runs is None else sorted(run_of)
            late = _late_cutoffs(tasks, wanted, states, now_us)
            rows = _rows(tx, cid, [t for t in wanted if t not in late], run_ids, finished, since)
            if late and tx.scalar("SELECT 1 FROM run WHERE campaign_id = ? AND ended_at <= ? LIMIT 1",
                                  (cid, max(late.values()))):  # only runs ended long enough ago can be at risk
                rows += _rows(tx, cid, list(late), run_ids, finished, since, ended_by=late)
            by_id = {r[0]: r for r in rows}
            leaders = {r[4] for r in rows if r[3] == "merged" and r[4] is not None} - set(by_id)
            for part in chunks(sorted(leaders)):
                by_id.update((r[0], r) for r in tx.all(
                    _ROWS_SQL + f" AND ti.id IN ({','.join('?' * len(part))})", (cid, *part)))
            missing = {r[2] for r in by_id.values()} - set(run_of)
            for part in chunks(sorted(missing)):
                run_of.update((r[0], r[1:]) for r in tx.all(
                    _RUNS_SQL + f" AND id IN ({','.join('?' * len(part))})", (cid, *part)))
            fill_tasks = {t for t in wanted if tasks[t][1].deadline_from == FILL_END}
            fills = FillEnds.read(tx, cid, {f for r in by_id.values() if r[1] in fill_tasks
                                            for f in [run_of[r[2]][1]] if f is not None})
        out = []
        texts: dict[int, str] = {}  # times repeat (a run's reference for each of its tasks): each formatted once
        for row in rows:
            leader = by_id.get(row[4]) if row[3] == "merged" and row[4] is not None else None
            name, settings, _ = tasks[row[1]]
            item = _deadline(row, run_of[row[2]], leader, leader and run_of[leader[2]], name, settings, fills,
                             now_us, texts, states)
            recent = since is None or item is None or item.done_at is None or item.done_at >= since
            if item is not None and (finished or item.done_at is None) and recent:
                out.append(item)
        out.sort(key=attrgetter("task", "run_number"))
        return out

    def cadence_gaps(self, campaign: str, now: Optional[str] = None) -> list[CadenceGap]:
        """The tasks with a cadence whose newest done instance (or, never done, their creation) is older than it:
        one per gap, from when it began (``since``)."""
        now = now or self.clock()
        out = []
        with self.db.tx(write=False) as tx:
            cid = campaign_id(tx, campaign)
            for tid, (name, settings, created) in sorted(task_settings(tx, cid).items(), key=lambda t: t[1][0]):
                if not settings.cadence:
                    continue
                # done within the cadence: no gap; the newest instances first (the index's order), found at once
                cutoff = from_micros(to_micros(now) - settings.cadence * _S)
                if tx.scalar("SELECT 1 FROM task_instance WHERE campaign_id = ? AND task_id = ? AND status = 'done'"
                             " AND updated_at > ? ORDER BY id DESC LIMIT 1", (cid, tid, cutoff)):
                    continue
                last = tx.scalar("SELECT MAX(updated_at) FROM task_instance WHERE campaign_id = ? AND task_id = ?"
                                 " AND status = 'done'", (cid, tid))
                since = from_micros(to_micros(last or created) + settings.cadence * _S)
                if since <= now:
                    out.append(CadenceGap(campaign, name, settings.cadence, last, since))
        return out


def _late_cutoffs(tasks: Mapping[int, tuple[str, TaskSettings, str]], wanted: Sequence[int],
                  states: Optional[Collection[str]], now: int) -> dict[int, str]:
    """When only ``at-risk`` and ``missed`` instances are asked: for each run-end task, the newest run end that can
    be at risk now (``now - deadline + warn_before``); an instance of a run that ended later is on time."""
    if states is None or not set(states) <= {AT_RISK, MISSED}:
        return {}
    out = {}
    for tid in wanted:
        settings = tasks[tid][1]
        if settings.deadline is not None and settings.deadline_from != FILL_END:
            out[tid] = from_micros(now - int((settings.deadline - (settings.warn_before or 0)) * _S))
    return out


def _rows(tx: Tx, cid: int, tasks: Sequence[int], run_ids: Optional[Sequence[int]], finished: bool,
          since: Optional[str], ended_by: Optional[Mapping[int, str]] = None) -> list[Any]:
    """The instance rows of ``tasks`` (of the runs ``run_ids``), with their first done times; ``ended_by`` (task id ->
    a time): only merged ones (they follow their leader) and those of runs ended by their task's time."""
    if not tasks or run_ids == []:
        return []
    sql = _ROWS_SQL + f" AND ti.task_id IN ({','.join('?' * len(tasks))})"
    params: list[Any] = [cid, *tasks]
    if ended_by is not None:
        by_task = " ".join("WHEN ? THEN ?" for _ in ended_by)
        sql += (" AND (ti.status = 'merged' OR EXISTS (SELECT 1 FROM run r WHERE r.id = ti.run_id"
                f" AND r.ended_at <= CASE ti.task_id {by_task} END))")
        params += [v for item in ended_by.items() for v in item]
    if not finished:  # a merged run whose leader is done is done
        sql += (f" AND ti.status IN ({','.join(repr(s) for s in OPEN_STATUSES)}) AND NOT (ti.status = 'merged' AND"
                " EXISTS (SELECT 1 FROM task_instance l WHERE l.id = ti.leader_id AND l.status = 'done'))")
    elif since is not None:  # an instance first done at or after ``since`` changed last at or after it
        sql += " AND (ti.status <> 'done' OR ti.updated_at >= ?)"
        params.append(since)
    if run_ids is None:
        return tx.all(sql, params)
    out: list[Any] = []
    for part in chunks(run_ids):
        out += tx.all(sql + f" AND ti.run_id IN ({','.join('?' * len(part))})", (*params, *part))
    return out


def _deadline(row: Sequence[Any], run: Sequence[Any], leader: Optional[Sequence[Any]],
              leader_run: Optional[Sequence[Any]], task: str, settings: TaskSettings, fills: FillEnds, now: int,
              texts: dict[int, str], states: Optional[Collection[str]] = None) -> Optional[InstanceDeadline]:
    """One row of :meth:`Deadlines.deadlines`: an instance row and its run's (number, fill, end); ``leader`` and
    ``leader_run``: a merged run's group leader's. None when its state is not one of ``states``."""
    number, fill, status = run[0], run[1], row[3]
    if settings.deadline is None:
        if states is not None and NO_DEADLINE not in states:
            return None
        return InstanceDeadline(task, number, fill, status, None, None, None, None, None, None, NO_DEADLINE,
                                "the task has no deadline")
    source, source_run = (row, run) if leader is None or leader_run is None else (leader, leader_run)
    reference, why = reference_of(settings, source_run[0], source_run[1], source_run[2], fills)
    done = source[5]  # a merged run is done with its group
    judged = judge(None if reference is None else to_micros(reference), settings, done, now)
    if states is not None and judged.state not in states:
        return None
    latency = None if judged.latency is None else judged.latency / _S
    return InstanceDeadline(task, number, fill, status, reference, settings.deadline_from if reference else None,
                            _text(judged.deadline, texts), _text(judged.warn_at, texts), _text(done, texts), latency,
                            judged.state, why, None if leader_run is None else leader_run[0])


def _text(micros: Optional[int], texts: dict[int, str]) -> Optional[str]:
    if micros is None:
        return None
    text = texts.get(micros)
    if text is None:
        text = texts[micros] = from_micros(micros)
    return text


def done_latencies(tx: Tx, rows: Mapping[int, int]) -> dict[int, tuple[float, bool]]:
    """For audit rows (audit id -> instance id) that moved an instance to done: (latency in seconds, deadline met) of
    those that were its first done row, for a task with a deadline and an instance with a reference (the exporter's
    fields of a done point). A merged run has no done row: its group's leader carries the group's."""
    out: dict[int, tuple[float, bool]] = {}
    instances = sorted(set(rows.values()))
    for part in chunks(instances):
        marks = ",".join("?" * len(part))
        found = tx.all(
            "SELECT ti.id, ti.campaign_id, t.settings, r.run_number, r.fill, r.ended_at, (SELECT MIN(id) FROM audit_log"
            f" WHERE instance_id = ti.id AND {TASK_ROWS} AND to_status = {vocab_id('done')}), (SELECT MIN(ts) FROM"
            f" audit_log WHERE instance_id = ti.id AND {TASK_ROWS} AND to_status = {vocab_id('done')})"
            " FROM task_instance ti JOIN task t ON t.id = ti.task_id JOIN run r ON r.id = ti.run_id"
            f" WHERE ti.id IN ({marks})", tuple(part))
        fills_of: dict[int, set[int]] = {}
        for iid, cid, raw, _, fill, _, _, _ in found:
            if fill is not None and TaskSettings.from_json(raw).deadline_from == FILL_END:
                fills_of.setdefault(cid, set()).add(fill)
        ends = {cid: FillEnds.read(tx, cid, fills) for cid, fills in fills_of.items()}
        first = {}
        for _, cid, raw, run, fill, ended, first_id, first_ts in found:
            settings = TaskSettings.from_json(raw)
            reference = None
            if settings.deadline is not None and first_id is not None:
                reference, _ = reference_of(settings, run, fill, ended, ends.get(cid) or FillEnds(set(), {}, {}))
            if reference is not None:
                judged = judge(to_micros(reference), settings, first_ts, first_ts)
                first[first_id] = ((first_ts - to_micros(reference)) / _S, judged.state == DONE)
        out.update((audit_id, first[audit_id]) for audit_id in rows if audit_id in first)
    return out
