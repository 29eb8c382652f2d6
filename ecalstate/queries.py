"""Read-only views: the run x task overview, runs by status, instances, the audit history."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

from .auditlog import made_and_done
from .base import StoreBase, campaign_id, campaign_task, loads, task_names, task_of
from .clock import to_micros
from .errors import Invalid, no_instance
from .filters import RunFilter, parse_filter
from .limits import INT64_MAX
from .monitoring import blocked_instances, stuck_instances
from .outputs import instance_outputs
from .results import AuditRow, InstanceInfo, InstanceOutputs, MadeBy, Overview, OverviewRow
from .statemachine import TASK, TaskStatus

#: what the audit records: task instances' and jobs' transitions, ``handler`` rows (the stages' heartbeats) and
#: ``attention`` rows (what needed action: a reason appearing, changing level or clearing)
HISTORY_KINDS = ("task", "job", "handler", "attention")
#: what a shift reads unless it asks for more: the transitions, without the heartbeats
DEFAULT_KINDS = ("task", "job")
#: the most rows ``history`` counts to say "N of M" (beyond: "of at least"), so that its cost stays bounded
COUNT_CAP = 100_000


class Queries(StoreBase):
    """What operators and dashboards look at."""

    def overview(
        self,
        campaign: str,
        tasks: Sequence[str] = (),
        runs: Optional[Sequence[int]] = None,
        stuck_after: Optional[float] = None,
    ) -> Overview:
        """The run x task status matrix with totals per task, blocked and (optionally) stuck marks."""
        with self.db.tx(write=False) as tx:
            cid = campaign_id(tx, campaign)
            names = task_names(tx, cid)
            wanted = [task_of(tx, cid, campaign, t)[0] for t in tasks] if tasks else sorted(names)
            ordered = [names[t] for t in wanted]
            by_run: dict[int, OverviewRow] = {}
            run_filter = set(runs) if runs is not None else None
            for number, fill in tx.all("SELECT run_number, fill FROM run WHERE campaign_id = ? ORDER BY run_number",
                                       (cid,)):
                if run_filter is None or number in run_filter:
                    by_run[number] = OverviewRow(number, fill, {})
            totals: dict[str, dict[str, int]] = {n: {s.value: 0 for s in TaskStatus} for n in ordered}
            columns = {t: (names[t], totals[names[t]]) for t in wanted}
            sql, params = ("SELECT ti.task_id, r.run_number, ti.status FROM run r JOIN task_instance ti"
                           " ON ti.run_id = r.id WHERE r.campaign_id = ?"), [cid]
            if run_filter:  # a page of runs (the web view): read its span, not the whole campaign
                sql += " AND r.run_number BETWEEN ? AND ?"
                params += [min(run_filter), max(run_filter)]
            for task_id, number, status in tx.tuples(sql, params):  # run by run: 2x faster than the campaign index

                row, column = by_run.get(number), columns.get(task_id)
                if row is None or column is None:
                    continue
                row.statuses[column[0]] = status
                column[1][status] += 1
            blocked = [(t, r) for _, t, r in blocked_instances(tx, cid) if r in by_run and t in totals]
            stuck = [] if stuck_after is None else [
                (s.task, s.run_number) for s in stuck_instances(tx, cid, stuck_after, self.clock())
                if s.run_number in by_run and s.task in totals]
            gaps, notes = _gaps(tx, cid, campaign, [r for r in by_run.values() if len(r.statuses) < len(ordered)],
                                ordered)
        return Overview(campaign, ordered, list(by_run.values()), totals, blocked, stuck, gaps, notes)

    def list_runs(
        self, campaign: str, task: Optional[str] = None, status: Optional[str] = None
    ) -> list[dict[str, Any]]:
        """Runs with fill, metadata, run types and (for ``task``) that task's status, filterable by status."""
        if status is not None:
            TASK.parse(status)
        with self.db.tx(write=False) as tx:
            cid = campaign_id(tx, campaign)
            if task is None:
                if status is not None:
                    raise Invalid("filtering runs by status needs a task")
                rows = tx.all("SELECT run_number, fill, meta, rtypes, injected_at FROM run WHERE campaign_id = ?"
                              " ORDER BY run_number", (cid,))
                return [_run_dict(r) for r in rows]
            tid, _ = task_of(tx, cid, campaign, task)
            sql = ("SELECT r.run_number, r.fill, r.meta, r.rtypes, r.injected_at, ti.status, ti.generation"
                   " FROM task_instance ti JOIN run r ON r.id = ti.run_id WHERE ti.task_id = ?")
            params: list[Any] = [tid]
            if status is not None:
                sql += " AND ti.status = ?"
                params.append(status)
            rows = tx.all(sql + " ORDER BY r.run_number", params)
            return [{**_run_dict(r), "task": task, "status": r[5], "generation": r[6]} for r in rows]

    def run_page(
        self,
        campaign: str,
        tasks: Sequence[str] = (),
        statuses: Sequence[str] = (),
        first: Optional[int] = None,
        last: Optional[int] = None,
        limit: int = 200,
        offset: int = 0,
    ) -> tuple[int, list[dict[str, Any]]]:
        """One page of runs, newest first, for views too large for one screen: (how many match, the page).

        ``statuses`` keeps runs where one of ``tasks`` (any task when empty) has one of them; ``first`` and
        ``last`` bound the run numbers.
        """
        for status in statuses:
            TASK.parse(status)
        with self.db.tx(write=False) as tx:
            cid = campaign_id(tx, campaign)
            where, params = " WHERE r.campaign_id = ?", list[Any]([cid])
            for clause, bound in ((" AND r.run_number >= ?", first), (" AND r.run_number <= ?", last)):
                if bound is not None:
                    where += clause
                    params.append(bound)
            if statuses:
                where += (" AND EXISTS (SELECT 1 FROM task_instance ti WHERE ti.run_id = r.id AND ti.status IN ("
                          + ",".join("?" * len(statuses)) + ")")
                params += list(statuses)
                if tasks:
                    where += " AND ti.task_id IN (" + ",".join("?" * len(tasks)) + ")"
                    params += [task_of(tx, cid, campaign, t)[0] for t in tasks]
                where += ")"
            total = tx.scalar("SELECT COUNT(*) FROM run r" + where, params)
            rows = tx.all("SELECT r.run_number, r.fill, r.meta, r.rtypes, r.injected_at FROM run r" + where
                          + " ORDER BY r.run_number DESC LIMIT ? OFFSET ?", [*params, limit, offset])
        return int(total), [_run_dict(r) for r in rows]

    def jobs_run(self, campaign: str, task: str, run: int) -> int:
        """The run holding ``run``'s jobs: the leader of its group when it is merged into one, else itself
        (NotFound when the task has no instance for it)."""
        info = self.instance(campaign, task, run)
        return info.leader_run if info.status == "merged" and info.leader_run is not None else run

    def outputs(self, campaign: str, task: str, runs: Optional[Sequence[int]] = None) -> list[InstanceOutputs]:
        """Each instance's current outputs (of ``runs``, else every run of the task), in run order: a merged run's
        are its group leader's; with the generation that gave them and what made it (the claim's record)."""
        with self.db.tx(write=False) as tx:
            _, tid, _ = campaign_task(tx, campaign, task)
            sql = ("SELECT r.run_number, ti.status, h.id, h.generation, h.outputs, hr.run_number"
                   " FROM task_instance ti JOIN run r ON r.id = ti.run_id"
                   " JOIN task_instance h ON h.id = CASE WHEN ti.status = 'merged' AND ti.leader_id IS NOT NULL"
                   " THEN ti.leader_id ELSE ti.id END JOIN run hr ON hr.id = h.run_id WHERE ti.task_id = ?")
            params: list[Any] = [tid]
            if runs is not None:
                spans = run_spans(runs)
                sql += " AND (" + (" OR ".join("r.run_number BETWEEN ? AND ?" for _ in spans) or "1 = 0") + ")"
                params += [bound for span in spans for bound in span]
            rows = tx.all(sql + " ORDER BY r.run_number", params)
            made, done = made_and_done(tx, [r[2] for r in rows])
            gathered: dict[int, dict[str, Any]] = {}
            out = []
            for number, status, holder, generation, stored, from_run in rows:
                if holder not in gathered:
                    gathered[holder] = instance_outputs(tx, holder, generation, stored)
                found = gathered[holder]
                gave = done.get(holder) if found else None
                out.append(InstanceOutputs(number, status, from_run, gave, {k: str(v) for k, v in found.items()},
                                           None if gave is None else made.get((holder, gave))))
        return out

    def made_by(self, campaign: str, task: str, run: int) -> dict[int, MadeBy]:
        """What made each generation of ``run``'s instance (the workflow's version and configuration its claim
        recorded), by generation; a generation without a record is left out."""
        with self.db.tx(write=False) as tx:
            _, tid, _ = campaign_task(tx, campaign, task)
            iid = tx.scalar("SELECT ti.id FROM task_instance ti JOIN run r ON r.id = ti.run_id"
                            " WHERE ti.task_id = ? AND r.run_number = ?", (tid, run))
            if iid is None:
                raise no_instance(campaign, task, run)
            made, _ = made_and_done(tx, [int(iid)])
        return {generation: found for (_, generation), found in made.items()}

    def instance(self, campaign: str, task: str, run: int) -> InstanceInfo:
        with self.db.tx(write=False) as tx:
            _, tid, _ = campaign_task(tx, campaign, task)
            row = tx.one(
                "SELECT r.run_number, r.fill, ti.status, ti.version, ti.generation, lr.run_number, ti.outputs,"
                " ti.updated_at, ti.id FROM task_instance ti JOIN run r ON r.id = ti.run_id"
                " LEFT JOIN task_instance l ON l.id = ti.leader_id LEFT JOIN run lr ON lr.id = l.run_id"
                " WHERE ti.task_id = ? AND r.run_number = ?", (tid, run))
            if row is None:
                raise no_instance(campaign, task, run)
            return InstanceInfo(campaign, task, row[0], row[1], row[2], row[3], row[4], row[5],
                                instance_outputs(tx, row[8], row[4], row[6]), row[7])

    def history(
        self,
        campaign: Optional[str] = None,
        task: Optional[str] = None,
        run: Optional[int] = None,
        limit: Optional[int] = 100,
        entity: Optional[str] = None,
        after_id: int = 0,
        *,
        runs: Optional[Sequence[int]] = None,
        since: Optional[str] = None,
        until: Optional[str] = None,
        actor: Optional[str] = None,
        status: Optional[str] = None,
        transitions_only: bool = False,
        offset: int = 0,
        kinds: Optional[Sequence[str]] = None,
    ) -> list[AuditRow]:
        """Audit rows, newest last; ``limit`` keeps the most recent ones (after the ``offset`` newest: pages).

        The shift's questions: ``since``/``until`` (the store's UTC text times, e.g. ``2026-12-01T06:00:00Z``),
        ``runs`` (a run set), ``actor`` (the label, or the OS account of the identity: ``alice`` matches
        ``alice@host``), ``status`` (the status a transition went to), ``kinds`` (entities among
        :data:`HISTORY_KINDS`: ``handler`` rows are the stages' heartbeats, which drown a shift's transitions).
        ``transitions_only`` leaves out the annotations (a job's fields changing without its status: from == to),
        which shifters rarely want.
        """
        with self.db.tx(write=False) as tx:
            where, params = self._history_where(tx, campaign, task, run, entity, after_id, runs, since, until, actor,
                                                status, transitions_only, kinds)
            sql = ("SELECT a.id, a.ts, c.name, a.entity, a.task, a.run_number, a.jid, a.generation, a.from_status,"
                   " a.to_status, a.actor, a.reason, a.request_id, a.identity,"
                   " CASE WHEN a.from_status = a.to_status OR a.entity IN ('task', 'attention') THEN a.detail END"
                   " FROM audit a JOIN campaign c ON c.id = a.campaign_id" + where + " ORDER BY a.id DESC")
            if limit is not None or offset:
                sql += " LIMIT ? OFFSET ?"
                params += [INT64_MAX if limit is None else limit, offset]
            rows = tx.all(sql, params)
        return [_audit_row(r) for r in reversed(rows)]

    def history_count(
        self,
        campaign: Optional[str] = None,
        task: Optional[str] = None,
        run: Optional[int] = None,
        entity: Optional[str] = None,
        *,
        runs: Optional[Sequence[int]] = None,
        since: Optional[str] = None,
        until: Optional[str] = None,
        actor: Optional[str] = None,
        status: Optional[str] = None,
        transitions_only: bool = False,
        kinds: Optional[Sequence[str]] = None,
    ) -> int:
        """How many rows :meth:`history` would give without a limit, same filters: a page says "N of M", and
        what is left out is never silent."""
        with self.db.tx(write=False) as tx:
            where, params = self._history_where(tx, campaign, task, run, entity, 0, runs, since, until, actor, status,
                                                transitions_only, kinds)
            return int(tx.scalar("SELECT COUNT(*) FROM audit a" + where, params))

    def history_counts(
        self,
        campaign: Optional[str] = None,
        task: Optional[str] = None,
        run: Optional[int] = None,
        *,
        runs: Optional[Sequence[int]] = None,
        since: Optional[str] = None,
        until: Optional[str] = None,
        actor: Optional[str] = None,
        status: Optional[str] = None,
        transitions_only: bool = False,
        cap: Optional[int] = None,
    ) -> dict[str, int]:
        """How many rows :meth:`history` would give per kind (``task``, ``job``, ``handler``), same filters, in one
        pass: what a view shows of how many, and how many heartbeats it hides.

        ``cap``: count only the newest ``cap + 1`` matching rows (a count grows with the audit: 0.25 s a 350,000
        rows); more than ``cap`` in all means "more than cap"."""
        with self.db.tx(write=False) as tx:
            where, params = self._history_where(tx, campaign, task, run, None, 0, runs, since, until, actor, status,
                                                transitions_only)
            rows = "SELECT a.entity AS entity FROM audit a" + where
            if cap is not None:
                rows += " ORDER BY a.id DESC LIMIT ?"
                params.append(cap + 1)
            counts = {kind: 0 for kind in HISTORY_KINDS}
            counts.update({r[0]: int(r[1]) for r in tx.all(
                f"SELECT entity, COUNT(*) FROM ({rows}) AS matched GROUP BY entity", params)})
            return counts

    def _history_where(
        self, tx: Any, campaign: Optional[str], task: Optional[str], run: Optional[int], entity: Optional[str],
        after_id: int, runs: Optional[Sequence[int]], since: Optional[str], until: Optional[str],
        actor: Optional[str], status: Optional[str], transitions_only: bool, kinds: Optional[Sequence[str]] = None,
    ) -> tuple[str, list[Any]]:
        """The WHERE clause (and its parameters) of :meth:`history`'s filters, over ``audit a``.

        A time window bounds the ids too, found on the table's integer times (one range the planner uses): the view's
        text times are made row by row, so a window alone read the whole audit (0.25 s a 350,000 rows)."""
        if since is None:
            sql, params = " WHERE a.id > ?", list[Any]([after_id])
        else:  # none since then: an id past every id
            sql = " WHERE a.id >= COALESCE((SELECT MIN(l.id) FROM audit_log l WHERE l.ts >= ? AND l.id > ?), ?)"
            params = [_micros(since), after_id, INT64_MAX]
        if until is not None:
            sql += " AND a.id <= COALESCE((SELECT MAX(l.id) FROM audit_log l WHERE l.ts < ?), 0)"
            params.append(_micros(until))
        if kinds is not None:
            unknown = sorted(set(kinds) - set(HISTORY_KINDS))
            if unknown:
                raise Invalid(f"unknown kind {unknown[0]!r} (valid: {', '.join(HISTORY_KINDS)})")
            sql += " AND a.entity IN (" + (",".join("?" * len(kinds)) or "NULL") + ")"
            params += list(kinds)
        if campaign is not None:
            sql += " AND a.campaign_id = ?"
            params.append(campaign_id(tx, campaign))
            if task is not None:
                task_of(tx, params[-1], campaign, task)
        for clause, value in (("a.task = ?", task), ("a.run_number = ?", run), ("a.entity = ?", entity),
                              ("a.ts >= ?", since), ("a.ts < ?", until), ("a.to_status = ?", status)):
            if value is not None:
                sql += f" AND {clause}"
                params.append(value)
        if transitions_only:
            sql += " AND (a.from_status IS NULL OR a.from_status <> a.to_status)"
        if actor is not None:
            sql += " AND (a.actor = ? OR a.identity LIKE ? ESCAPE '!')"
            params += [actor, re.sub(r"([!%_])", r"!\1", actor) + "@%"]
        if runs is not None:
            spans = run_spans(runs)
            sql += " AND (" + (" OR ".join("a.run_number BETWEEN ? AND ?" for _ in spans) or "1 = 0") + ")"
            params += [bound for span in spans for bound in span]
        return sql, params


#: the metadata key a run source sets while a run is being taken (``sources.ONGOING``; the core reads no wing)
ONGOING_KEY = "ongoing"
#: what an empty cell says, by kind (the CLI's text, the grid's label)
GAP_LABELS = {"ongoing": "ongoing", "inactive": "n/a", "backfill": "backfill?"}
GAP_LEGEND = {"ongoing": "the run is still being taken", "inactive": "no run type activates the task for the run",
              "backfill": "the task was added to a run type of the run after it came"}


def _gaps(tx: Any, cid: int, campaign: str, rows: Sequence[OverviewRow], tasks: Sequence[str],
          ) -> tuple[dict[tuple[str, int], str], dict[int, str]]:
    """Why the ``rows``' cells without an instance are empty, per cell (a kind of :data:`GAP_LABELS`) and per run
    (in words): a blank cell meant a run still being taken, a run no run type matched, and a task added later."""
    gaps: dict[tuple[str, int], str] = {}
    notes: dict[int, str] = {}
    if not rows:
        return gaps, notes
    rtypes: dict[str, tuple[RunFilter, set[str]]] = {}
    for name, text in tx.all("SELECT name, filter FROM rtype WHERE campaign_id = ? ORDER BY id", (cid,)):
        rtypes[name] = (parse_filter(text), set())
    for rtype, task in tx.all("SELECT r.name, t.name FROM rtype_task x JOIN rtype r ON r.id = x.rtype_id"
                              " JOIN task t ON t.id = x.task_id WHERE r.campaign_id = ?", (cid,)):
        rtypes[rtype][1].add(task)
    wanted = {r.run_number: r for r in rows}
    numbers = sorted(wanted)
    for start in range(0, len(numbers), 500):
        chunk = numbers[start:start + 500]
        for number, fill, meta_text, names in tx.all(
                "SELECT run_number, fill, meta, rtypes FROM run WHERE campaign_id = ? AND run_number IN ("
                + ",".join("?" * len(chunk)) + ")", (cid, *chunk)):
            meta = loads(meta_text)
            matched = [n for n in names.split(",") if n in rtypes]
            why: list[str] = []
            for task in tasks:
                if task in wanted[number].statuses:
                    continue
                if meta.get(ONGOING_KEY):
                    kind, said = "ongoing", "still being taken: its tasks start once a sync sees it ended"
                elif any(task in rtypes[n][1] for n in matched):
                    rtype = next(n for n in matched if task in rtypes[n][1])
                    kind, said = "backfill", (f"{task} was added to {rtype} after the run came (ecalstate rtype update"
                                              f" -c {campaign} {rtype} --add {task} --backfill)")
                else:
                    record = {**meta, "run_number": number, "fill": fill}
                    kind, said = "inactive", "no run type activates its tasks: " + (
                        "; ".join(_unmet(name, flt, record) for name, (flt, active) in rtypes.items()
                                  if task in active) or f"none activates {task}")
                gaps[(task, number)] = kind
                if said not in why:
                    why.append(said)
            notes[number] = "; ".join(why)
    return gaps, notes


def _unmet(rtype: str, run_filter: RunFilter, record: dict[str, Any]) -> str:
    """The first clause of ``rtype``'s filter the run fails, and what the run has instead."""
    for clause in run_filter.clauses:
        if not clause.matches(record):
            has = record.get(clause.key)
            shown = has if isinstance(has, str) else json.dumps(has)  # (true, not True: as filters spell it)
            value = "no " + clause.key if has is None else f"{clause.key}={shown}"
            return f"{rtype} needs {clause.key}{clause.op}{clause.value} (the run has {value})"
    return f"{rtype} matches it now (the run came before its filter changed)"


def _micros(text: str) -> int:
    """A time bound as integer microseconds: the store's format, or any ISO 8601 time (UTC unless it says)."""
    try:
        return to_micros(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise Invalid(f"invalid time {text!r}: expected the store's format, e.g. 2026-12-01T06:00:00.000000Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return (moment - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)


def _audit_row(row: Sequence[Any]) -> AuditRow:
    """A history row: an annotation with the fields it recorded, a claim with what made its generation."""
    audit = AuditRow(*row[:14])
    if not row[14]:
        return audit
    detail = loads(row[14])
    if audit.entity == "task":
        return replace(audit, made_by=MadeBy.from_detail(detail))
    return replace(audit, fields=detail)


def run_spans(runs: Sequence[int]) -> list[tuple[int, int]]:
    """A run set as its consecutive spans: ``356001-356100,356200`` is two ranges, not 101 parameters."""
    spans: list[tuple[int, int]] = []
    for run in sorted(set(runs)):
        if spans and run == spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], run)
        else:
            spans.append((run, run))
    return spans


def _run_dict(row: Sequence[Any]) -> dict[str, Any]:
    return {"run_number": row[0], "fill": row[1], "meta": loads(row[2]),
            "rtypes": [r for r in row[3].split(",") if r], "injected_at": row[4]}
