"""Jobs: bulk creation, validated status updates, retries, and task-instance completion.

A task instance completes in the same transaction as the job change that
decides it: all jobs of its current generation done -> ``done``; a job failed
beyond its retries and none left idle or running -> ``failed``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, Optional

from .auditlog import KEEP_CREATION_FIELDS, SAME_AS_JOB
from .base import (AUDIT_SQL, NEWEST_AUDIT_TIME, Ctx, StoreBase, campaign_id, campaign_task, loads, move_instance,
                   store_time, task_of)
from .clock import from_micros, optional_text, to_micros
from .db import Tx
from .errors import Conflict, Invalid, NotFound, no_instance
from .limits import MAX_JOBS_PER_CALL, check_int64, chunks
from .outputs import DERIVED, gathered_outputs
from .pgjobs import set_job
from .results import BatchRecord, BulkResult, Change, JobInfo, JobUpdate
from .secrets import known_secrets, leaked, masked
from .statemachine import JOB, JobStatus, TaskStatus, TransitionNotAllowed, decide, job_refusal

J = JobStatus
_STATUS = {s.value: s for s in JobStatus}
#: the job statuses that may decide an instance
_DECIDING = (J.DONE.value, J.FAILED.value)
#: job statuses of a job not yet ended
_ACTIVE = (J.IDLE.value, J.RUNNING.value)
#: the tally of an instance's jobs (aliased ``{j}``) that decides it: total, done, active (idle or running), failed
#: beyond the task's retries (``{retries}``)
_TALLY = (
    "COUNT(*), SUM(CASE WHEN {j}.status = 'done' THEN 1 ELSE 0 END),"
    " SUM(CASE WHEN {j}.status IN ('idle', 'running') THEN 1 ELSE 0 END),"
    " SUM(CASE WHEN {j}.status = 'failed' AND {j}.attempts > {retries} THEN 1 ELSE 0 END)"
)


#: instance statuses whose current generation's jobs may still get their batch ids recorded
RECORDABLE = (TaskStatus.PROCESSING.value, TaskStatus.DONE.value, TaskStatus.FAILED.value)


class Jobs(StoreBase):
    """Jobs of task instances."""

    def create_jobs(
        self,
        campaign: str,
        task: str,
        run: int,
        jids: Sequence[int],
        fields: Optional[Sequence[dict[str, Any]]] = None,
        request_id: Optional[str] = None,
        generation: Optional[int] = None,
    ) -> int:
        """Create jobs ``jids`` (status ``idle``) in the current generation of a ``processing`` instance.

        Pass the claim's ``generation``: if an operator aborted the claim and someone claimed the run again
        in between, the jobs are refused instead of landing in the other claim's generation.
        """
        jid_list, field_list = check_jobs(jids, fields)

        def body(ctx: Ctx) -> int:
            cid, tid, _ = campaign_task(ctx.tx, campaign, task)
            iid, status, gen = _instance(ctx.tx, tid, campaign, task, run)
            if status != TaskStatus.PROCESSING.value:
                raise Invalid(f"task {task} run {run} is {status}, not processing: claim it before creating jobs")
            if generation is not None and generation != gen:
                raise Conflict(f"task {task} run {run} was claimed again (generation {gen}); the claim of generation"
                               f" {generation} is over, its jobs are not created")
            return insert_jobs(ctx, cid, task, run, iid, gen, jid_list, field_list)

        return self._write("job.create", request_id, body,
                           args=(campaign, task, run, jid_list, field_list, generation))

    def update_jobs(
        self,
        campaign: str,
        task: str,
        updates: Sequence[JobUpdate],
        request_id: Optional[str] = None,
        dry_run: bool = False,
    ) -> BulkResult:
        """Apply many job status changes in one transaction; report changed / unchanged / refused."""
        if dry_run:
            with self.db.tx(write=False) as tx:
                return BulkResult(_plan(tx, self, campaign, task, updates, strict=False)[0], dry_run=True)

        def body(ctx: Ctx) -> BulkResult:
            return _apply(ctx, self, campaign, task, updates, strict=False)

        return self._write("job.update", request_id, body, encode=BulkResult.to_dict, decode=BulkResult.from_dict,
                           args=(campaign, task, list(updates)))

    def set_job_status(
        self,
        campaign: str,
        task: str,
        run: int,
        jid: int,
        status: str,
        fields: Optional[dict[str, Any]] = None,
        batch_id: Optional[str] = None,
        reason: str = "",
        generation: Optional[int] = None,
        request_id: Optional[str] = None,
        complete: bool = True,
    ) -> Change:
        """One job transition; a refusal raises :class:`TransitionNotAllowed`.

        ``complete=False`` leaves the instance ``processing`` even when this change decides it, for callers
        whose own check stage completes instances (the ecalautoctrl compat layer).
        """
        if not fields and batch_id is None and request_id is None:
            return self._set_one_job(campaign, task, run, jid, status, reason, generation, complete)
        update = JobUpdate(run, jid, status, fields, batch_id, reason, generation)

        def body(ctx: Ctx) -> BulkResult:
            return _apply(ctx, self, campaign, task, [update], strict=True, complete=complete)

        result = self._write("job.set", request_id, body, encode=BulkResult.to_dict, decode=BulkResult.from_dict,
                             args=(campaign, task, update, complete))
        return result.changes[0]

    def _set_one_job(self, campaign: str, task: str, run: int, jid: int, status: str, reason: str,
                     generation: Optional[int], complete: bool) -> Change:
        """:meth:`set_job_status` of a job without fields in the fewest round trips: one statement on PostgreSQL
        (``ecalstate.pgjobs``), one read and two writes on SQLite (:meth:`_set_one_sqlite`). The generic path reads
        the clock's floor, the names and the job apart and goes through the bulk machinery for one row;
        tests/test_one_job.py holds both fast paths to it."""
        target = _STATUS.get(status) or JobStatus(JOB.parse(status))
        reason = masked(reason, known_secrets()) if reason else reason  # as _plan does: a quoted secret is masked
        if self.db.sql.job_function:
            with self.db.statement() as tx:
                return set_job(tx, campaign, task, run, jid, target, reason, generation, self.actor,
                               self.identity(tx), self.db.audit_texts, to_micros(self.clock()), complete)[0]
        learned: dict[str, int] = {}
        with self.db.tx(write=True) as tx:
            change = self._set_one_sqlite(tx, campaign, task, run, jid, target, reason, generation, complete, learned)
        self.db.audit_texts.update(learned)  # committed: these ids are for good
        return change

    def _set_one_sqlite(self, tx: Tx, campaign: str, task: str, run: int, jid: int, target: JobStatus, reason: str,
                        generation: Optional[int], complete: bool, learned: dict[str, int]) -> Change:
        """The SQLite fast path, in the caller's write transaction (which holds the file's lock: the job read is
        the job written); ``learned``: the text ids it made. A move to done or failed reads its instance's tally
        with the job (:data:`DECIDING_JOB_SQL`) and needs no statement of its own to see that it is undecided."""
        to = target.value
        deciding = complete and to in _DECIDING
        found = tx.one(DECIDING_JOB_SQL if deciding else ONE_JOB_SQL, (task, run, generation, jid, campaign))
        key = f"{task} run {run} job {jid}" + (f" gen {generation}" if generation is not None else "")
        if found is None:
            campaign_task(tx, campaign, task)  # an unknown campaign or task is named as such
            raise NotFound(f"no job {jid} for task {task!r} run {run} in campaign {campaign!r}")
        pk, status, version, attempts, started, gen, iid, current_gen, cid, retries, latest = found[:11]
        if status == to:
            return Change("job", key, status, to, "unchanged")
        current = _STATUS[status]
        refusal = job_refusal(current, target, attempts, retries)
        if refusal:
            raise TransitionNotAllowed("job", key, current, target, JOB.allowed(current), refusal)
        ctx = Ctx(tx, self.actor, None, store_time(self.clock(), latest), self.identity(tx), self.db.audit_texts,
                  learned)
        if tx.execute(MOVE_JOB_SQL, _moved(status, to, attempts, started, ctx.now_us, None, None, pk, version)) != 1:
            raise Conflict("a job changed concurrently; nothing was written, retry")  # (the lock says it cannot)
        tx.execute(AUDIT_SQL, ctx.audit_row(cid, "job", task, to, from_status=status, instance_id=iid,
                                            job_pk=pk, run_number=run, jid=jid, generation=gen, reason=reason))
        if deciding and gen == current_gen and found[11] == TaskStatus.PROCESSING.value:
            decision = decide(*_with_move(found[13:], status, to, attempts > retries), retries)
            if decision:
                _finish(ctx, cid, task, run, iid, found[12], gen, *decision)
        return Change("job", key, status, to, "changed", reason)

    def complete_instances(self, campaign: str, task: str) -> BulkResult:
        """Sweep ``processing`` instances of a task and complete those whose jobs decide it."""

        def body(ctx: Ctx) -> BulkResult:
            cid = campaign_id(ctx.tx, campaign)
            tid, retries = task_of(ctx.tx, cid, campaign, task)
            ids = [r[0] for r in ctx.tx.all(
                "SELECT id FROM task_instance WHERE task_id = ? AND status = 'processing'", (tid,))]
            return BulkResult(_complete(ctx, cid, task, retries, ids))

        return self._write("task.complete", None, body)

    def list_jobs(
        self,
        campaign: str,
        task: str,
        run: Optional[int] = None,
        status: Optional[str] = None,
        all_generations: bool = False,
    ) -> list[JobInfo]:
        """Jobs of a task (current generation unless ``all_generations``), by run and job id."""
        if status is not None:
            JOB.parse(status)
        where = "" if all_generations else " AND j.generation = ti.generation"
        if status is not None:
            where += " AND j.status = ?"
        return self._select_jobs(campaign, task, where, run, [status] if status is not None else [])

    def pending_jobs(self, campaign: str, task: str, run: Optional[int] = None) -> list[JobInfo]:
        """Jobs "to submit": idle without a batch id, in the current generation of a ``processing`` instance.

        A submit or resubmit stage left them so when it was killed (or its batch system's answer was lost)
        between the store's transaction and the batch id's record; the next stage finds them by key or
        submits them.
        """
        return self._select_jobs(campaign, task, " AND j.generation = ti.generation AND ti.status = 'processing'"
                                 " AND j.status = 'idle' AND j.batch_id IS NULL", run)

    def stale_jobs(self, campaign: str, task: str, run: Optional[int] = None) -> list[JobInfo]:
        """Jobs still idle or running of a generation that no longer runs (aborted by an operator, or claimed
        again): the batch system must drop them so that no run runs twice."""
        return self._select_jobs(campaign, task, " AND j.status IN ('idle', 'running')"
                                 " AND (j.generation <> ti.generation OR ti.status <> 'processing')", run)

    def _select_jobs(self, campaign: str, task: str, where: str, run: Optional[int] = None,
                     params: Sequence[Any] = ()) -> list[JobInfo]:
        with self.db.tx(write=False) as tx:
            cid = campaign_id(tx, campaign)
            tid, _ = task_of(tx, cid, campaign, task)
            sql = (
                "SELECT r.run_number, j.jid, j.generation, j.status, j.version, j.attempts, j.batch_id, j.fields,"
                " j.created_at, j.updated_at, j.started_at, j.finished_at"
                " FROM job j JOIN task_instance ti ON ti.id = j.instance_id JOIN run r ON r.id = ti.run_id"
                " WHERE ti.task_id = ?" + where + ("" if run is None else " AND r.run_number = ?")
                + " ORDER BY r.run_number, j.generation, j.jid"
            )
            return [
                JobInfo(task, r[0], r[1], r[2], r[3], r[4], r[5], r[6], loads(r[7]), from_micros(r[8]),
                        from_micros(r[9]), optional_text(r[10]), optional_text(r[11]))
                for r in tx.all(sql, [tid, *params, *([] if run is None else [run])])
            ]

    def record_batch_ids(
        self, campaign: str, task: str, run: int, generation: int, records: Sequence[BatchRecord]
    ) -> int:
        """Annotate submitted job attempts with their batch ids (and fields such as ``logs``); return how many.

        Never a status change (a check may already have seen the jobs finish), and refused with
        :class:`Conflict` when the instance is no longer in ``generation`` or was aborted: those jobs are
        then stale, and the next stage removes them from the batch system. A record for an attempt that is
        no longer the job's latest is skipped.
        """

        def body(ctx: Ctx) -> int:
            tx = ctx.tx
            cid, tid, _ = campaign_task(tx, campaign, task)
            iid, status, gen = _instance(tx, tid, campaign, task, run)
            if gen != generation or status not in RECORDABLE:
                raise Conflict(f"task {task} run {run} is {status} in generation {gen}: batch ids of generation"
                               f" {generation} are not recorded")
            jobs = {r[1]: r for r in tx.all(
                "SELECT j.id, j.jid, j.attempts, j.fields, j.status FROM job j"
                " WHERE j.instance_id = ? AND j.generation = ?" + tx.lock("j"), (iid, gen))}
            rows, annotations, kept = [], [], []
            for rec in records:
                job = jobs.get(rec.jid)
                if job is None or job[2] != rec.attempt:
                    continue
                fields = json.dumps({**loads(job[3]), **rec.fields}, sort_keys=True) if rec.fields else job[3]
                rows.append((rec.batch_id, fields, job[0]))
                if rec.fields:  # e.g. the attempt's logs folder: exported as a field, never as a status change
                    kept.append((job[3], job[0]))
                    annotations.append(_annotation(ctx, cid, task, job[4], rec.fields, iid=iid, pk=job[0], run=run,
                                                   jid=rec.jid, generation=gen))
            if rows:
                tx.many(KEEP_CREATION_FIELDS, kept)
                tx.many("UPDATE job SET batch_id = ?, fields = ? WHERE id = ?", rows)
                tx.many(AUDIT_SQL, annotations)
            return len(rows)

        return self._write("job.record", None, body)


def _instance(tx: Tx, tid: int, campaign: str, task: str, run: int) -> tuple[int, str, int]:
    """(id, status, generation) of the task's instance for ``run``, locked for the write that follows."""
    row = tx.one(
        "SELECT ti.id, ti.status, ti.generation FROM task_instance ti JOIN run r ON r.id = ti.run_id"
        " WHERE ti.task_id = ? AND r.run_number = ?" + tx.lock("ti"),
        (tid, run),
    )
    if row is None:
        raise no_instance(campaign, task, run)
    return int(row[0]), str(row[1]), int(row[2])


def insert_jobs(
    ctx: Ctx, cid: int, task: str, run: int, iid: int, gen: int, jids: Sequence[int], fields: Sequence[dict[str, Any]]
) -> int:
    """Insert ``idle`` jobs into generation ``gen`` of instance ``iid``, audited; refuse ids already taken."""
    tx = ctx.tx
    taken = {r[0] for r in tx.all("SELECT jid FROM job WHERE instance_id = ? AND generation = ?", (iid, gen))}
    dupes = sorted(set(jids) & taken)
    if dupes:
        raise Invalid(f"job(s) {_ids(dupes)} already exist for task {task} run {run} generation {gen}")
    tx.many(
        "INSERT INTO job (instance_id, generation, jid, status, version, attempts, fields, created_at,"
        " updated_at) VALUES (?,?,?,'idle',1,1,?,?,?)",
        [(iid, gen, j, json.dumps(f, sort_keys=True), ctx.now_us, ctx.now_us) for j, f in zip(jids, fields)],
    )
    pks = {r[1]: r[0] for r in tx.all(
        "SELECT id, jid FROM job WHERE instance_id = ? AND generation = ?", (iid, gen))}
    tx.many(AUDIT_SQL, [
        ctx.audit_row(cid, "job", task, J.IDLE.value, instance_id=iid, job_pk=pks[j], run_number=run,
                      jid=j, generation=gen, reason="created by submit", detail=SAME_AS_JOB if f else None)
        for j, f in zip(jids, fields)
    ])
    return len(jids)


def check_jobs(
    jids: Sequence[Any], fields: Optional[Sequence[dict[str, Any]]]
) -> tuple[list[int], list[dict[str, Any]]]:
    """Validated job ids (distinct, >= 0, at least one, at most :data:`MAX_JOBS_PER_CALL`) and one field set per id."""
    if len(jids) > MAX_JOBS_PER_CALL:
        raise Invalid(f"{len(jids)} jobs in one creation: at most {MAX_JOBS_PER_CALL} per call")
    jid_list = [_check_jid(j) for j in jids]
    if len(set(jid_list)) != len(jid_list):
        raise Invalid("duplicate job ids in one creation")
    if not jid_list:
        raise Invalid("no job ids given")
    field_list = list(fields) if fields is not None else [{} for _ in jid_list]
    if len(field_list) != len(jid_list):
        raise Invalid(f"{len(jid_list)} job ids but {len(field_list)} field sets")
    return jid_list, field_list


def _check_jid(jid: Any) -> int:
    try:
        value = int(jid)
    except (TypeError, ValueError):
        raise Invalid(f"invalid job id {jid!r}: expected an integer >= 0") from None
    if value < 0 or isinstance(jid, bool):
        raise Invalid(f"invalid job id {jid!r}: expected an integer >= 0")
    return check_int64(value, "job id", 0)


def _ids(values: Sequence[int]) -> str:
    shown = ", ".join(str(v) for v in values[:10])
    return shown + (f" and {len(values) - 10} more" if len(values) > 10 else "")


class _Row:
    """A job as read for an update."""

    __slots__ = ("pk", "run", "jid", "generation", "status", "version", "attempts", "fields", "iid", "current_gen",
                 "started_at")

    def __init__(self, row: Sequence[Any]) -> None:
        (self.pk, self.run, self.jid, self.generation, self.status, self.version, self.attempts, self.fields,
         self.iid, self.current_gen, self.started_at) = row


def _load(tx: Tx, tid: int, updates: Sequence[JobUpdate]) -> dict[tuple[int, int, int], _Row]:
    """The jobs the updates name (every generation), locked on PostgreSQL; by (run, jid, generation)."""
    rows: dict[tuple[int, int, int], _Row] = {}
    lock = tx.lock("j")
    jids = sorted({u.jid for u in updates})
    # a few job ids: read just those, not every job of the runs (a check of one job in a 10,000-job run)
    by_jid = f" AND j.jid IN ({','.join('?' * len(jids))})" if len(jids) <= 100 else ""
    for chunk in chunks(sorted({u.run for u in updates})):
        marks = ",".join("?" * len(chunk))
        for raw in tx.all(
            "SELECT j.id, r.run_number, j.jid, j.generation, j.status, j.version, j.attempts, j.fields, ti.id,"
            " ti.generation, j.started_at"
            " FROM job j JOIN task_instance ti ON ti.id = j.instance_id JOIN run r ON r.id = ti.run_id"
            f" WHERE ti.task_id = ? AND r.run_number IN ({marks}){by_jid}{lock}",
            (tid, *chunk, *(jids if by_jid else ())),
        ):
            row = _Row(raw)
            rows[(row.run, row.jid, row.generation)] = row
    return rows


def _plan(
    tx: Tx, store: StoreBase, campaign: str, task: str, updates: Sequence[JobUpdate], strict: bool
) -> tuple[list[Change], list[tuple[JobUpdate, _Row, JobStatus]], int, int]:
    """Decide every update against the table and the retry guard, without writing."""
    cid, tid, retries = campaign_task(tx, campaign, task)
    statuses = {str(s): JobStatus(JOB.parse(s)) for s in {u.status for u in updates}}  # parsed once per name
    parsed = [(u, statuses[str(u.status)]) for u in updates]
    rows = _load(tx, tid, updates)
    current_gen: dict[int, int] = {}
    for loaded in rows.values():
        current_gen[loaded.run] = loaded.current_gen
    changes: list[Change] = []
    accepted: list[tuple[JobUpdate, _Row, JobStatus]] = []
    seen: set[tuple[int, int, int]] = set()
    # what a job reports is refused if it carries a secret this process holds (a job never gets them: issue 11)
    secrets = known_secrets() if any(u.fields or u.reason for u in updates) else frozenset()
    for update, target in parsed:
        if leaked([update.reason], secrets):  # a reason quoting a job's stderr: the secret is masked, the rest kept
            update = replace(update, reason=masked(update.reason, secrets))
        gen = update.generation if update.generation is not None else current_gen.get(update.run, -1)
        key = f"{task} run {update.run} job {update.jid}" + (f" gen {gen}" if update.generation is not None else "")
        row = rows.get((update.run, update.jid, gen))
        if row is None:
            if strict:
                raise NotFound(f"no job {update.jid} for task {task!r} run {update.run} in campaign {campaign!r}")
            changes.append(Change("job", key, None, target.value, "refused", "no such job"))
            continue
        if (update.run, update.jid, gen) in seen:
            raise Invalid(f"{key} appears twice in one update")
        seen.add((update.run, update.jid, gen))
        current = _STATUS[row.status]
        if update.fields and leaked(_texts(update.fields), secrets):
            message = "its fields carry a secret of the store's environment (a password or token): nothing stored"
            if strict:
                raise Invalid(f"{key}: {message}")
            if target != J.DONE:
                changes.append(Change("job", key, current.value, target.value, "refused", message))
                continue
            # a finished job whose report leaks a secret fails without its fields: it does not stay active for
            # ever, its result is not used, and the retry limit bounds a payload that leaks every time
            update = replace(update, status=J.FAILED.value, fields={}, reason=f"job report refused: {message}")
            target = J.FAILED
        if update.attempt is not None and update.attempt != row.attempts:
            changes.append(Change("job", key, current.value, target.value, "refused",
                                  f"about attempt {update.attempt}, the job is at attempt {row.attempts}"))
            continue
        if current == target:
            changes.append(Change("job", key, current.value, target.value, "unchanged"))
            if update.fields or update.batch_id:
                accepted.append((update, row, target))
            continue
        reason = job_refusal(current, target, row.attempts, retries)
        if reason:
            if strict:
                raise TransitionNotAllowed("job", key, current, target, JOB.allowed(current), reason)
            changes.append(Change("job", key, current.value, target.value, "refused", reason))
            continue
        changes.append(Change("job", key, current.value, target.value, "changed", update.reason))
        accepted.append((update, row, target))
    return changes, accepted, cid, retries


def _texts(value: Any) -> Iterator[str]:
    """Every text in a field set, keys and nested values included."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _texts(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _texts(item)
    elif isinstance(value, str):
        yield value


def _apply(
    ctx: Ctx, store: StoreBase, campaign: str, task: str, updates: Sequence[JobUpdate], strict: bool,
    complete: bool = True,
) -> BulkResult:
    tx = ctx.tx
    changes, accepted, cid, retries = _plan(tx, store, campaign, task, updates, strict)
    now = ctx.now_us
    job_rows = []
    audit_rows = []
    # the fields of jobs whose fields change go into their creation rows first (kept once until now)
    tx.many(KEEP_CREATION_FIELDS, [(row.fields, row.pk) for update, row, _ in accepted if update.fields])
    deciding: set[int] = set()
    for update, row, target in accepted:
        # most updates carry no fields: the stored JSON text stays (None), never parsed and re-encoded
        fields = json.dumps({**loads(row.fields), **update.fields}, sort_keys=True) if update.fields else None
        if target.value == row.status:
            tx.execute("UPDATE job SET fields = COALESCE(?, fields), batch_id = COALESCE(?, batch_id) WHERE id = ?",
                       (fields, update.batch_id, row.pk))
            if update.fields:  # an annotation (from == to): the exporter sends its fields, no status point
                audit_rows.append(_annotation(ctx, cid, task, row.status, update.fields, update.reason, iid=row.iid,
                                              pk=row.pk, run=row.run, jid=row.jid, generation=row.generation))
            continue
        job_rows.append(_moved(row.status, target.value, row.attempts, row.started_at, now, update.batch_id, fields,
                               row.pk, row.version))
        audit_rows.append(ctx.audit_row(
            cid, "job", task, target.value, from_status=row.status, instance_id=row.iid, job_pk=row.pk,
            run_number=row.run, jid=row.jid, generation=row.generation, reason=update.reason,
            detail=update.fields or None,
        ))
        if row.generation == row.current_gen and target.value in _DECIDING:
            deciding.add(row.iid)
    if job_rows:
        changed = tx.many(MOVE_JOB_SQL, job_rows)
        if changed >= 0 and changed != len(job_rows):
            raise Conflict("a job changed concurrently; nothing was written, retry")
    tx.many(AUDIT_SQL, audit_rows)
    if complete:
        changes.extend(_complete(ctx, cid, task, retries, sorted(deciding)))
    return BulkResult(changes)


def _job_by_names_sql(columns: str = "", join: str = "", group: str = "") -> str:
    """A job by its names, with what its transition needs: its instance, the task's retry limit and the newest audit
    time (the floor of the transaction's time), in one statement; and ``columns`` from a ``join``."""
    return (
        "SELECT j.id, j.status, j.version, j.attempts, j.started_at, j.generation, ti.id, ti.generation, c.id,"
        " t.max_retries, (" + NEWEST_AUDIT_TIME + ")" + columns +
        " FROM campaign c JOIN task t ON t.campaign_id = c.id AND t.name = ?"
        " JOIN run r ON r.campaign_id = c.id AND r.run_number = ? JOIN task_instance ti ON ti.task_id = t.id"
        " AND ti.run_id = r.id JOIN job j ON j.instance_id = ti.id AND j.generation = COALESCE(?, ti.generation)"
        " AND j.jid = ?" + join + " WHERE c.name = ?" + group
    )


ONE_JOB_SQL = _job_by_names_sql()
#: the same, and for a move that may decide the instance, its status, version and current generation's tally with
#: the job as it was (the write lock is held: nothing else changes them; a job of an older generation, whose
#: current one may have no jobs yet, is found all the same, its tally meaningless)
DECIDING_JOB_SQL = _job_by_names_sql(
    ", ti.status, ti.version, " + _TALLY.format(j="o", retries="t.max_retries"),
    " LEFT JOIN job o ON o.instance_id = ti.id AND o.generation = ti.generation", " GROUP BY j.id")
#: a job's transition, with the values :func:`_moved` gives (compare-and-set on its version)
MOVE_JOB_SQL = (
    "UPDATE job SET status = ?, version = version + 1, attempts = ?,"
    " batch_id = COALESCE(?, CASE WHEN ? THEN NULL ELSE batch_id END), fields = COALESCE(?, fields), updated_at = ?,"
    " started_at = ?, finished_at = COALESCE(?, finished_at) WHERE id = ? AND version = ?"
)


def _moved(status: str, to: str, attempts: int, started: Optional[int], now: int, batch_id: Optional[str],
           fields: Optional[str], pk: int, version: int) -> tuple[Any, ...]:
    """The values of :data:`MOVE_JOB_SQL` for a job moving from ``status`` to ``to`` at ``now`` (``fields``: its new
    JSON text, None to keep it). A retry (failed -> idle) is a new attempt, "to submit" (no batch id) until the
    stage that submits it records one; idle clears the start, done and failed set the finish."""
    retry = status == J.FAILED and to == J.IDLE
    if to == J.IDLE:
        started = None
    elif to == J.RUNNING and started is None:
        started = now
    return to, attempts + retry, batch_id, retry, fields, now, started, now if to in _DECIDING else None, pk, version


def _annotation(
    ctx: Ctx, cid: int, task: str, status: str, fields: Mapping[str, Any], reason: str = "", *, iid: int, pk: int,
    run: int, jid: int, generation: int,
) -> tuple[Any, ...]:
    """The audit row of a field-only update: status to the same status, the fields as detail. Not a transition
    (count transitions as rows whose statuses differ); it is how field-only changes reach InfluxDB."""
    return ctx.audit_row(cid, "job", task, status, from_status=status, instance_id=iid, job_pk=pk, run_number=run,
                         jid=jid, generation=generation, reason=reason, detail=dict(fields))


def _complete(ctx: Ctx, cid: int, task: str, retries: int, instance_ids: Sequence[int]) -> list[Change]:
    """Move ``processing`` instances whose current-generation jobs decide it to done or failed."""
    tx = ctx.tx
    out: list[Change] = []
    for chunk in chunks(list(instance_ids)):
        marks = ",".join("?" * len(chunk))
        # two transactions finishing the last two jobs of one instance: the later one waits here for the earlier
        # one's commit, and its tally, a statement of its own (a new snapshot), sees that job (where rows are
        # locked: a SQLite write transaction holds the file already)
        tx.lock_rows("task_instance", chunk)
        rows = tx.all(
            f"SELECT ti.id, ti.version, ti.generation, r.run_number, {_TALLY.format(j='j', retries='?')}"
            " FROM task_instance ti JOIN run r ON r.id = ti.run_id"
            " JOIN job j ON j.instance_id = ti.id AND j.generation = ti.generation"
            f" WHERE ti.id IN ({marks}) AND ti.status = 'processing'"
            " GROUP BY ti.id, ti.version, ti.generation, r.run_number",
            (retries, *chunk),
        )
        for iid, version, gen, run, total, done, active, exhausted in rows:
            decision = decide(total, done, active, exhausted, retries)
            if decision:
                out.append(_finish(ctx, cid, task, run, iid, version, gen, *decision))
    return out


def _with_move(tally: Sequence[int], status: str, to: str, beyond: bool) -> tuple[int, int, int, int]:
    """An instance's tally (total, done, active, failed beyond the retries) read before one of its jobs moved from
    ``status`` to ``to``, with that move counted (``beyond``: the job's attempts are beyond the retries; a move to
    done or failed keeps them)."""
    total, done, active, exhausted = tally
    return (total, done + (to == J.DONE) - (status == J.DONE), active + (to in _ACTIVE) - (status in _ACTIVE),
            exhausted + beyond * ((to == J.FAILED) - (status == J.FAILED)))


def _finish(ctx: Ctx, cid: int, task: str, run: int, iid: int, version: int, gen: int, target: TaskStatus,
            reason: str) -> Change:
    """Move a processing instance its jobs decided to ``target``; a done one's outputs are its jobs'."""
    move_instance(ctx, cid, task, iid=iid, run=run, status="processing", version=version, to=target, reason=reason,
                  generation=gen, outputs=DERIVED if target == TaskStatus.DONE else "{}")
    return Change("task", f"{task} run {run}", "processing", target.value, "changed", reason)


def keep_outputs(tx: Tx, iid: int, generation: int) -> None:
    """Store the outputs of a done instance's generation before it opens a new one (reprocessing): they stay
    what they were until the new generation is done."""
    if tx.scalar("SELECT outputs FROM task_instance WHERE id = ?", (iid,)) == DERIVED:
        tx.execute("UPDATE task_instance SET outputs = ? WHERE id = ?", (gathered_outputs(tx, iid, generation), iid))


def active_jobs(tx: Tx, iid: int, generation: int) -> int:
    """How many jobs of an instance's generation are still idle or running."""
    marks = ",".join("?" * len(_ACTIVE))
    return int(tx.scalar(f"SELECT COUNT(*) FROM job WHERE instance_id = ? AND generation = ? AND status IN ({marks})",
                         (iid, generation, *_ACTIVE)))
