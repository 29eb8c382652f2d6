"""Typed store calls behind the ecalautoctrl compat layer (:mod:`ecalstate.compat`).

The original wrote whatever it was told; these calls map its operations onto
the transition tables, one transaction each, audited, refusing with the same
typed errors as the rest of the store:

* :meth:`LegacyStore.open_generation` is ``createTask``: a ``new``/``reprocess``
  instance is claimed (-> ``processing``, next generation) and gets its jobs;
  ``recreate`` on a ``processing`` instance opens the next generation instead
  of deleting history.
* :meth:`LegacyStore.legacy_update` is ``updateStatus``: ``processing`` claims,
  ``merged`` folds the run into its group leader, ``done``/``failed`` complete.
* :meth:`LegacyStore.import_plan` writes what ``ecalstate import-influx`` read from
  the original's InfluxDB (:mod:`ecalstate.compat.legacy` validates it first): one
  transaction per campaign; what exists already is never overwritten, so a
  second import changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Optional

from ..base import (AUDIT_SQL, IMPORT_ACTOR, Ctx, campaign_id, campaign_task, loads, move_instance, next_generation,
                    task_of)
from ..catalog import check_run, ended_at, run_record
from ..claims import Eligible, move_eligible
from ..clock import to_micros
from ..db import Tx
from ..errors import Invalid, NotFound, no_instance
from ..filters import parse_filter
from ..jobs import active_jobs, check_jobs, insert_jobs, keep_outputs
from ..outputs import DERIVED
from ..results import BulkResult, Change
from ..statemachine import CLAIMABLE, TASK, TaskStatus, TransitionNotAllowed
from ..store import Store

T = TaskStatus
IMPORT_REASON = "imported from InfluxDB"

_INSTANCE_SQL = (
    "SELECT ti.id, r.run_number, r.fill, ti.status, ti.version, ti.generation, r.meta"
    " FROM task_instance ti JOIN run r ON r.id = ti.run_id WHERE ti.task_id = ? AND r.run_number = ?"
)

# each upstream task of an instance with its status for the same run and, when merged, its leader's status
_UPSTREAM_SQL = """
SELECT t.name, u.status, ul.status FROM task_dep d JOIN task t ON t.id = d.depends_on_id
LEFT JOIN task_instance u ON u.task_id = d.depends_on_id
  AND u.run_id = (SELECT run_id FROM task_instance WHERE id = ?)
LEFT JOIN task_instance ul ON ul.id = u.leader_id
WHERE d.task_id = ? ORDER BY t.name
"""


@dataclass(frozen=True)
class LegacyRun:
    """A run as the original's ``run`` measurement held it: metadata and every task's status."""

    run_number: int
    fill: Optional[int]
    meta: dict[str, Any]
    statuses: dict[str, str]


@dataclass(frozen=True)
class Problem:
    """Something an import reports instead of writing: never coerced into a state."""

    campaign: str
    task: Optional[str]
    run: Optional[int]
    jid: Optional[int]
    message: str

    def __str__(self) -> str:
        where = [f"campaign {self.campaign}"] + [f"{k} {v}" for k, v in (("task", self.task), ("run", self.run),
                                                                           ("job", self.jid)) if v is not None]
        return " ".join(where) + ": " + self.message


@dataclass(frozen=True)
class ImportJob:
    """A job's validated legacy history: (time, from, to, fields changed) per transition, oldest first."""

    jid: int
    status: str
    fields: dict[str, Any]
    attempts: int
    started_at: Optional[str]
    finished_at: Optional[str]
    history: list[tuple[str, Optional[str], str, dict[str, Any]]]


@dataclass(frozen=True)
class ImportInstance:
    """A task instance at its latest legacy status, with its raw status history and its jobs."""

    task: str
    run: int
    status: str
    history: list[tuple[str, str]]
    jobs: list[ImportJob] = field(default_factory=list)
    leader_run: Optional[int] = None

    @property
    def generation(self) -> int:
        started = self.jobs or self.status in (T.PROCESSING.value, T.DONE.value, T.FAILED.value)
        return 1 if started else 0


@dataclass(frozen=True)
class ImportRun:
    run_number: int
    fill: Optional[int]
    meta: dict[str, Any]
    first_seen: str


@dataclass
class ImportPlan:
    """What one campaign of a legacy database holds, validated.

    ``problems`` were found while reading it: one per refused instance (with its task), and run-level ones.
    """

    campaign: str
    kind: str
    runs: list[ImportRun] = field(default_factory=list)
    instances: list[ImportInstance] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


@dataclass(frozen=True)
class ImportResult:
    """Counts per outcome for one campaign, and every problem reported."""

    campaign: str
    dry_run: bool
    campaign_created: bool
    tasks_created: list[str]
    runs: dict[str, int]
    instances: dict[str, int]
    jobs: int
    audit_rows: int
    problems: list[Problem]


class LegacyStore:
    """The original's operations over a :class:`~ecalstate.store.Store`, validated by the transition tables: a
    wing that writes through the store's public seams (one transaction each, ``Store.write``)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def open_generation(
        self,
        campaign: str,
        task: str,
        run: int,
        jids: Sequence[int],
        fields: Optional[Sequence[dict[str, Any]]] = None,
        recreate: bool = False,
    ) -> int:
        """Create jobs in a fresh generation of an instance, claiming it first when it is new; returns the
        generation."""
        jid_list, field_list = check_jobs(jids, fields)

        def body(ctx: Ctx) -> int:
            tx = ctx.tx
            cid = campaign_id(tx, campaign)
            tid, _ = task_of(tx, cid, campaign, task)
            inst = _instance(tx, campaign, task, tid, run)
            status = TaskStatus(inst.status)
            what = f"{task} run {run}"
            if status in CLAIMABLE:
                _check_upstream(tx, tid, inst, what)
                generation = inst.generation + 1
                move_eligible(ctx, cid, task, inst, T.PROCESSING, "claimed by createTask", generation=generation)
            elif status == T.PROCESSING:
                generation = inst.generation
                if tx.scalar("SELECT COUNT(*) FROM job WHERE instance_id = ? AND generation = ?",
                             (inst.instance_id, generation)):
                    if not recreate:
                        raise Invalid(f"task {what} already has jobs in generation {generation}; "
                                      "recreate=True opens a new generation")
                    keep_outputs(tx, inst.instance_id, generation)
                    generation += 1
                    next_generation(ctx, task, iid=inst.instance_id, run=run, version=inst.version,
                                    generation=generation)
            else:
                raise TransitionNotAllowed(TASK.entity, what, status, T.PROCESSING, TASK.allowed(status),
                                           "reprocess it first to run it again")
            insert_jobs(ctx, cid, task, run, inst.instance_id, generation, jid_list, field_list)
            return generation

        return self.store.write("legacy.create", body)

    def legacy_update(
        self,
        campaign: str,
        run: int,
        statuses: Mapping[str, str],
        leader: Optional[int] = None,
        reason: str = "updateStatus",
    ) -> BulkResult:
        """Set several tasks' statuses for one run, all or nothing; the same status again is ``unchanged``."""
        targets = {task: TaskStatus(TASK.parse(status)) for task, status in statuses.items()}
        if T.REPROCESS in targets.values():
            raise Invalid("reprocess goes through Store.reprocess (it cascades to merged runs)")

        def body(ctx: Ctx) -> BulkResult:
            tx = ctx.tx
            cid = campaign_id(tx, campaign)
            changes = []
            for task, target in targets.items():
                tid, _ = task_of(tx, cid, campaign, task)
                inst = _instance(tx, campaign, task, tid, run)
                current = TaskStatus(inst.status)
                what = f"{task} run {run}"
                if current == target:
                    changes.append(Change("task", what, current.value, target.value, "unchanged"))
                    continue
                TASK.check(current, target, what)
                if target == T.PROCESSING:
                    _check_upstream(tx, tid, inst, what)
                    move_eligible(ctx, cid, task, inst, target, reason, generation=inst.generation + 1)
                elif target == T.MERGED:
                    head = _leader(tx, tid, inst, task, leader)
                    move_eligible(ctx, cid, task, inst, target, f"{reason}: merged into run {head[1]}",
                                  leader_id=head[0])
                else:
                    _finish(ctx, cid, task, inst, target, reason)
                changes.append(Change("task", what, current.value, target.value, "changed", reason))
            return BulkResult(changes)

        return self.store.write("legacy.update", body)

    def legacy_runs(self, campaign: str) -> list[LegacyRun]:
        """Every run of a campaign with its metadata and every task's status, by run number."""
        with self.store.db.tx(write=False) as tx:
            cid = campaign_id(tx, campaign)
            runs = {r[0]: LegacyRun(r[1], r[2], loads(r[3]), {}) for r in tx.all(
                "SELECT id, run_number, fill, meta FROM run WHERE campaign_id = ? ORDER BY run_number", (cid,))}
            for run_id, task, status in tx.all(
                "SELECT ti.run_id, t.name, ti.status FROM task_instance ti JOIN task t ON t.id = ti.task_id"
                " WHERE ti.campaign_id = ?", (cid,)
            ):
                runs[run_id].statuses[task] = status
        return list(runs.values())

    def legacy_outputs(
        self, campaign: str, task: str, runs: Optional[Sequence[int]] = None, era: Optional[str] = None
    ) -> list[str]:
        """The files of ``task``'s done instances (of ``runs``, or of the runs of ``era``): one element per file, in
        run then job order, each job's ``output`` field split at commas (a job may list several)."""
        wanted = None if runs is None else set(runs)
        with self.store.db.tx(write=False) as tx:
            _, tid, _ = campaign_task(tx, campaign, task)
            rows = tx.all(
                "SELECT r.run_number, r.meta, j.fields FROM task_instance ti JOIN run r ON r.id = ti.run_id"
                " JOIN job j ON j.instance_id = ti.id AND j.generation = ti.generation"
                " WHERE ti.task_id = ? AND ti.status = 'done' ORDER BY r.run_number, j.jid", (tid,))
        out = []
        for number, meta, fields in rows:
            if (wanted is not None and number not in wanted) or (era is not None and loads(meta).get("era") != era):
                continue
            value = loads(fields).get("output")
            out += [f.strip() for f in str(value).split(",") if f.strip()] if value not in (None, "") else []
        return out

    def group_leader(self, campaign: str, task: str, group: Sequence[int], fill: Any = None) -> int:
        """The run that owns a group's jobs: the one ``task`` is processing, else the newest of the group.

        ``group`` empty: every run of ``fill``. Each run of the group must be in ``fill`` when it is given."""
        number = None if fill in (None, "") else check_run(1, fill)[1]
        with self.store.db.tx(write=False) as tx:
            cid = campaign_id(tx, campaign)
            tid, _ = task_of(tx, cid, campaign, task)
            rows = tx.all("SELECT r.run_number, r.fill, ti.status FROM run r LEFT JOIN task_instance ti"
                          " ON ti.run_id = r.id AND ti.task_id = ? WHERE r.campaign_id = ?"
                          + (" AND r.fill = ?" if not group else ""), (tid, cid) + ((number,) if not group else ()))
        found = {r[0]: (r[1], r[2]) for r in rows if not group or r[0] in set(group)}
        for run in group:
            if run not in found:
                raise NotFound(f"run {run} of the group is not in campaign {campaign!r}")
            if number is not None and found[run][0] != number:
                raise Invalid(f"run {run} is in fill {found[run][0]}, not {number}: it cannot be in that group")
        if not found:
            raise NotFound(f"fill {number} has no run in campaign {campaign!r}")
        processing = [r for r, (_, status) in found.items() if status == T.PROCESSING.value]
        return max(processing or found)

    def import_plan(self, plan: ImportPlan, dry_run: bool = False) -> ImportResult:
        """Write a campaign's legacy state in one transaction; what exists already is left as it is."""
        if dry_run:
            with self.store.db.tx(write=False) as tx:
                return _import(tx, None, plan)
        return self.store.write("legacy.import", lambda ctx: _import(ctx.tx, ctx, plan))


def _import(tx: Tx, ctx: Optional[Ctx], plan: ImportPlan) -> ImportResult:
    """Compare ``plan`` with the database and, given a write context, insert what is missing."""
    cid = tx.scalar("SELECT id FROM campaign WHERE name = ?", (plan.campaign,))
    created = cid is None
    if created and ctx is not None:
        cid = tx.scalar("INSERT INTO campaign (name, kind, description, created_at) VALUES (?,?,?,?) RETURNING id",
                        (plan.campaign, plan.kind, IMPORT_REASON, ctx.now))
        tx.run("INSERT INTO rtype (campaign_id, name, filter) VALUES (?, 'all', '')", (cid,))
    tasks = {} if cid is None else {r[1]: r[0] for r in tx.all("SELECT id, name FROM task WHERE campaign_id = ?",
                                                                   (cid,))}
    new_tasks = sorted({i.task for i in plan.instances} - set(tasks))
    runs = {} if cid is None else {r[0]: r[1] for r in tx.all("SELECT run_number, id FROM run WHERE campaign_id = ?",
                                                                  (cid,))}
    existing: dict[tuple[str, int], tuple[str, Optional[int]]] = {} if cid is None else {
        (r[0], r[1]): (r[2], r[3]) for r in tx.all(
        "SELECT t.name, r.run_number, ti.status, ti.id FROM task_instance ti JOIN task t ON t.id = ti.task_id"
        " JOIN run r ON r.id = ti.run_id WHERE ti.campaign_id = ?", (cid,))}
    counts = {"imported": 0, "unchanged": 0, "conflict": 0, "refused": sum(p.task is not None for p in plan.problems)}
    problems = list(plan.problems)
    new_runs = [r for r in plan.runs if r.run_number not in runs]
    jobs = audit = 0
    if ctx is not None:
        assert cid is not None
        for name in new_tasks:
            tasks[name] = tx.scalar("INSERT INTO task (campaign_id, name, max_retries, created_at) VALUES (?,?,3,?)"
                                    " RETURNING id", (cid, name, ctx.now))
        rtypes = [(r[0], parse_filter(r[1])) for r in tx.all("SELECT name, filter FROM rtype WHERE campaign_id = ?",
                                                             (cid,))]
        for run in new_runs:
            matched = ",".join(n for n, flt in rtypes if flt.matches(run_record(run.run_number, run.fill, run.meta)))
            runs[run.run_number] = tx.scalar(
                "INSERT INTO run (campaign_id, run_number, fill, meta, rtypes, injected_at, ended_at)"
                " VALUES (?,?,?,?,?,?,?) RETURNING id", (cid, run.run_number, run.fill,
                                                         json.dumps(run.meta, sort_keys=True), matched, run.first_seen,
                                                         ended_at(run.meta)))
    for inst in sorted(plan.instances, key=lambda i: i.leader_run is not None):  # leaders before merged runs
        found = existing.get((inst.task, inst.run))
        if found is not None:
            outcome = "unchanged" if found[0] == inst.status else "conflict"
            counts[outcome] += 1
            if outcome == "conflict":
                problems.append(Problem(plan.campaign, inst.task, inst.run, None,
                                        f"already {found[0]} here, {inst.status} in InfluxDB: left as it is"))
            continue
        leader = None if inst.leader_run is None else existing.get((inst.task, inst.leader_run))
        if inst.leader_run is not None and leader is None:
            counts["refused"] += 1
            problems.append(Problem(plan.campaign, inst.task, inst.run, None,
                                    f"merged into run {inst.leader_run}, which was not imported"))
            continue
        counts["imported"] += 1
        jobs += len(inst.jobs)
        audit += 1 + sum(len(j.history) for j in inst.jobs)
        iid = None
        if ctx is not None:
            assert cid is not None
            iid = _insert_instance(ctx, cid, tasks[inst.task], runs[inst.run], inst,
                                   None if leader is None else leader[1])
        existing[(inst.task, inst.run)] = (inst.status, iid)
    return ImportResult(plan.campaign, ctx is None, created, new_tasks, {"new": len(new_runs),
                        "existing": len(plan.runs) - len(new_runs)}, counts, jobs, audit, problems)


def _insert_instance(ctx: Ctx, cid: int, tid: int, run_id: int, inst: ImportInstance, leader_id: Optional[int]) -> int:
    """One imported instance, its jobs and their audit rows, at their legacy times, by the ``import`` actor."""
    tx = ctx.tx
    gen = inst.generation
    first, last = inst.history[0][0], inst.history[-1][0]
    iid = int(tx.scalar(
        "INSERT INTO task_instance (campaign_id, task_id, run_id, status, version, generation, leader_id, outputs,"
        " created_at, updated_at) VALUES (?,?,?,?,1,?,?,'{}',?,?) RETURNING id",
        (cid, tid, run_id, inst.status, gen, leader_id, first, last)))
    rows = [replace(ctx, now=last, actor=IMPORT_ACTOR).audit_row(
        cid, "task", inst.task, inst.status, instance_id=iid, run_number=inst.run, generation=gen,
        reason=IMPORT_REASON, detail={"legacy_history": inst.history[-50:]})]
    for job in inst.jobs:
        pk = tx.scalar(
            "INSERT INTO job (instance_id, generation, jid, status, version, attempts, fields, created_at, updated_at,"
            " started_at, finished_at) VALUES (?,?,?,?,1,?,?,?,?,?,?) RETURNING id",
            (iid, gen, job.jid, job.status, job.attempts, json.dumps(job.fields, sort_keys=True),
             to_micros(job.history[0][0]), to_micros(job.history[-1][0]),
             *(None if t is None else to_micros(t) for t in (job.started_at, job.finished_at))))
        rows += [replace(ctx, now=ts, actor=IMPORT_ACTOR).audit_row(
            cid, "job", inst.task, to, from_status=frm, instance_id=iid, job_pk=pk, run_number=inst.run, jid=job.jid,
            generation=gen, reason=IMPORT_REASON, detail=changed or None) for ts, frm, to, changed in job.history]
    tx.many(AUDIT_SQL, rows)
    if inst.status == T.DONE.value:  # its outputs are its jobs' (read when asked)
        tx.run("UPDATE task_instance SET outputs = ? WHERE id = ?", (DERIVED, iid))
    return iid


def _instance(tx: Tx, campaign: str, task: str, tid: int, run: int) -> Eligible:
    """The (locked) instance of ``task`` for ``run``."""
    row = tx.one(_INSTANCE_SQL + tx.lock("ti"), (tid, run))
    if row is None:
        raise no_instance(campaign, task, run)
    return Eligible(row[0], row[1], row[2], row[3], row[4], row[5], loads(row[6]))


class UpstreamNotReady(TransitionNotAllowed):
    """A run's instance cannot start yet (or ever: a skipped upstream) because its upstream tasks are not done for
    the run: within a drop-in stage, that run waits and the stage goes on (:class:`~ecalstate.compat.TaskHandler`)."""

    def __init__(self, what: str, status: TaskStatus, why: str) -> None:
        super().__init__(TASK.entity, what, status, T.PROCESSING, TASK.allowed(status), why)
        self.why = why


def _check_upstream(tx: Tx, tid: int, inst: Eligible, what: str) -> None:
    """Refuse to start an instance whose upstream tasks are not done for its run (the claim rule)."""
    for name, status, leader_status in tx.all(_UPSTREAM_SQL, (inst.instance_id, tid)):
        if status == T.DONE.value or (status == T.MERGED.value and leader_status == T.DONE.value):
            continue
        state = status if status != T.MERGED.value else f"merged into a {leader_status} leader"
        raise UpstreamNotReady(what, TaskStatus(inst.status),
                               f"upstream task {name} is {state or 'not active for this run'}")


def _leader(tx: Tx, tid: int, inst: Eligible, task: str, leader: Optional[int]) -> tuple[int, int]:
    """(instance id, run) of the group leader: the given run, else the one processing run of the task in the fill."""
    if leader is not None:
        row = tx.one(_INSTANCE_SQL, (tid, leader))
        if row is None or row[0] == inst.instance_id:
            raise Invalid(f"run {leader} cannot lead run {inst.run_number} of task {task}: "
                          + ("it has no instance" if row is None else "a run cannot lead itself"))
        if row[3] != T.PROCESSING.value:
            raise Invalid(f"leader run {leader} of task {task} is {row[3]}, not processing")
        return int(row[0]), int(row[1])
    if inst.fill is None:
        raise Invalid(f"run {inst.run_number} has no fill, so task {task} has no leader to merge it into; "
                      "pass leader=RUN")
    rows = tx.all(
        "SELECT ti.id, r.run_number FROM task_instance ti JOIN run r ON r.id = ti.run_id"
        " WHERE ti.task_id = ? AND r.fill = ? AND ti.status = 'processing' AND ti.id <> ? ORDER BY r.run_number",
        (tid, inst.fill, inst.instance_id),
    )
    if len(rows) != 1:
        found = "none" if not rows else "runs " + ", ".join(str(r[1]) for r in rows)
        raise Invalid(f"cannot merge run {inst.run_number} of task {task}: the leader must be the one processing "
                      f"run of fill {inst.fill}, found {found}; pass leader=RUN")
    return int(rows[0][0]), int(rows[0][1])


def _finish(ctx: Ctx, cid: int, task: str, inst: Eligible, target: TaskStatus, reason: str) -> None:
    """processing -> done (no job of the generation still idle or running; its outputs are its jobs') or -> failed:
    a script's own call, refused while jobs still run, not a decision from its jobs."""
    if target == T.DONE:
        active = active_jobs(ctx.tx, inst.instance_id, inst.generation)
        if active:
            raise TransitionNotAllowed(TASK.entity, f"{task} run {inst.run_number}", T.PROCESSING, target,
                                       TASK.allowed(T.PROCESSING),
                                       f"{active} job(s) of generation {inst.generation} still idle or running")
    move_instance(ctx, cid, task, iid=inst.instance_id, run=inst.run_number, status=inst.status,
                  version=inst.version, to=target, reason=reason, generation=inst.generation,
                  outputs=DERIVED if target == T.DONE else "{}")
