"""One validated job transition in the fewest round trips: prototypes of the lean hot path (issue 14).

``set_job_status`` does, in one transaction: resolve campaign and task, read the job (locked), check the
transition table and the retry guard, compare-and-set, write the audit row at the store's time (the clock,
never before the newest audit row), and for done/failed see whether the instance is decided (schema 7: no
instance row is written unless it is). Through the store's generic path
that is about eight statements, each a round trip on PostgreSQL; the store's fast paths (``ecalstate.pgjobs``,
``Jobs._set_one_sqlite``) grew out of these prototypes, which stay as the yardstick of the same work done
with nothing around it.

* :data:`PG_SQL`: all of it but the completion check in ONE statement (data-modifying CTEs). The table is
  passed as data (the statuses the target may be reached from); the statement answers (current status,
  attempts, max retries, changed) so that a refusal still gets its typed error naming the current status.
  A transition to done or failed asks :data:`PG_TALLY` after it, in the same transaction (a statement of its
  own, after the instance's row lock: see there why). So BEGIN, the statement, COMMIT: 3 round trips, 5 for done
  and failed.
* :func:`sqlite_transition`: SQLite has no data-modifying CTEs; on one raw ``sqlite3`` connection kept open
  (no pool checkout, no begin/commit events), ``BEGIN IMMEDIATE``, one SELECT that reads the job, its
  instance, the retry limit and the newest audit time, then the update and the audit insert.

Both write the schema-6 layout as the store does: the audit row into ``audit_log`` with ``string`` ids (the
caller resolves its texts once per connection: :func:`bench.common.text_ids`; statuses and the entity are the
vocabulary's fixed ids), its time and the job's as integer microseconds, never before the newest audit row
plus 1 us (read from ``audit_log``: an integer, no text to parse).
"""

from __future__ import annotations

import sqlite3
from typing import Any, Optional

from ecalstate.auditlog import VOCABULARY, vocab_id
from ecalstate.base import AUDIT_SQL
from ecalstate.statemachine import JOB, JobStatus, TransitionNotAllowed, job_refusal

from .common import now_micros

#: the statuses each target may be reached from, as the transition table says
SOURCES = {t.value: [s.value for s in JobStatus if JOB.is_allowed(s, t)] for t in JobStatus}

PG_SQL = """
WITH cur AS (
  SELECT j.id, j.status, j.version, j.attempts, j.started_at, ti.id AS iid, ti.generation, r.run_number,
         c.id AS cid, t.max_retries
  FROM campaign c JOIN task t ON t.campaign_id = c.id AND t.name = %(task)s
  JOIN task_instance ti ON ti.task_id = t.id
  JOIN run r ON r.id = ti.run_id AND r.run_number = %(run)s
  JOIN job j ON j.instance_id = ti.id AND j.generation = ti.generation AND j.jid = %(jid)s
  WHERE c.name = %(campaign)s
  FOR UPDATE OF j
), clock AS (
  SELECT GREATEST(%(now)s::bigint, (SELECT a.ts + 1 FROM audit_log a ORDER BY a.id DESC LIMIT 1)) AS now
), upd AS (
  UPDATE job SET status = %(to)s, version = job.version + 1, updated_at = clock.now,
    attempts = CASE WHEN cur.status = 'failed' AND %(to)s = 'idle' THEN job.attempts + 1 ELSE job.attempts END,
    batch_id = CASE WHEN cur.status = 'failed' AND %(to)s = 'idle' THEN NULL ELSE job.batch_id END,
    started_at = CASE WHEN %(to)s = 'idle' THEN NULL WHEN %(to)s = 'running' THEN COALESCE(job.started_at, clock.now)
                      ELSE job.started_at END,
    finished_at = CASE WHEN %(to)s IN ('done', 'failed') THEN clock.now ELSE job.finished_at END
  FROM cur, clock
  WHERE job.id = cur.id AND job.version = cur.version AND cur.status = ANY(%(sources)s)
    AND NOT (cur.status = 'failed' AND %(to)s = 'idle' AND cur.attempts > cur.max_retries)
  RETURNING job.id, job.attempts
), audit_row AS (
  INSERT INTO audit_log (ts, campaign_id, entity, instance_id, job_pk, task, run_number, jid, generation, from_status,
                         to_status, actor, identity, reason, request_id, detail)
  SELECT clock.now, cur.cid, %(entity)s, cur.iid, cur.id, %(task_id)s, cur.run_number, %(jid)s, cur.generation,
         array_position(%(vocabulary)s::text[], cur.status::text), %(to_id)s, %(actor)s, %(identity)s, %(reason)s,
         NULL, NULL
  FROM cur, clock, upd
)
SELECT cur.status, cur.attempts, cur.max_retries, (SELECT COUNT(*) FROM upd), cur.iid, cur.generation
FROM cur
"""
#: whether the instance is decided, asked in a statement of its own: a statement's snapshot is taken when it
#: starts, so a tally inside the CTE would not see the job another transaction finished while this one waited
#: for the instance's row lock (two last jobs finishing together would both find the instance undecided)
PG_TALLY = (
    "SELECT COUNT(*), COUNT(*) FILTER (WHERE status = 'done'), COUNT(*) FILTER (WHERE status IN ('idle', 'running')),"
    " COUNT(*) FILTER (WHERE status = 'failed' AND attempts > %s) FROM job WHERE instance_id = %s AND generation = %s"
)


def pg_transition(conn: Any, ids: dict[str, int], campaign: str, task: str, run: int, jid: int, target: str,
                  actor: str, identity: str = "", reason: str = "") -> tuple[str, bool, bool]:
    """One transaction on a psycopg connection (not autocommit): (status before, changed, instance decided).
    ``ids``: the ``string`` ids of the task, actor, identity and reason, resolved once per connection."""
    try:
        found = conn.execute(PG_SQL, {
            "campaign": campaign, "task": task, "run": run, "jid": jid, "to": target, "sources": SOURCES[target],
            "now": now_micros(), "entity": vocab_id("job"), "task_id": ids[task], "to_id": vocab_id(target),
            "vocabulary": list(VOCABULARY), "actor": ids[actor], "identity": ids[identity], "reason": ids[reason],
        }).fetchone()
        if found is None:
            raise LookupError(f"no job {jid} for task {task!r} run {run} in campaign {campaign!r}")
        status, attempts, retries, changed, iid, gen = found
        if not changed and status != target:
            _refuse(task, run, jid, status, target, attempts, retries)
        decided = False
        if changed and target in ("done", "failed"):
            conn.execute("SELECT 1 FROM task_instance WHERE id = %s FOR UPDATE", (iid,))  # see PG_TALLY
            total, done, active, exhausted = conn.execute(PG_TALLY, (retries, iid, gen)).fetchone()
            decided = done == total or (active == 0 and exhausted > 0)
    except BaseException:
        conn.rollback()
        raise
    conn.commit()
    return status, bool(changed), decided


def _refuse(task: str, run: int, jid: int, status: str, target: str, attempts: int, retries: int) -> None:
    """The API's typed refusal, with the store's reason (not in the table, or the retry guard)."""
    current, wanted = JobStatus(status), JobStatus(target)
    raise TransitionNotAllowed("job", f"{task} run {run} job {jid}", current, wanted, JOB.allowed(current),
                               job_refusal(current, wanted, attempts, retries))


SQLITE_READ = (
    "SELECT j.id, j.status, j.version, j.attempts, ti.id, ti.generation, t.max_retries, c.id,"
    " (SELECT a.ts FROM audit_log a ORDER BY a.id DESC LIMIT 1)"
    " FROM campaign c JOIN task t ON t.campaign_id = c.id AND t.name = ?"
    " JOIN task_instance ti ON ti.task_id = t.id JOIN run r ON r.id = ti.run_id AND r.run_number = ?"
    " JOIN job j ON j.instance_id = ti.id AND j.generation = ti.generation AND j.jid = ?"
    " WHERE c.name = ?"
)
SQLITE_UPDATE = (
    "UPDATE job SET status = ?, version = version + 1, attempts = ?, updated_at = ?,"
    " batch_id = CASE WHEN ? THEN NULL ELSE batch_id END,"
    " started_at = CASE WHEN ? = 'idle' THEN NULL WHEN ? = 'running' THEN COALESCE(started_at, ?) ELSE started_at END,"
    " finished_at = CASE WHEN ? IN ('done', 'failed') THEN ? ELSE finished_at END WHERE id = ? AND version = ?"
)
SQLITE_TALLY = (
    "SELECT COUNT(*), SUM(status = 'done'), SUM(status IN ('idle', 'running')), SUM(status = 'failed' AND attempts > ?)"
    " FROM job WHERE instance_id = ? AND generation = ?"
)


def _after(latest: Optional[int], now: int) -> int:
    """The transaction's time: the clock, never before the newest audit row (plus 1 us)."""
    return now if latest is None else max(now, latest + 1)


def sqlite_transition(conn: sqlite3.Connection, ids: dict[str, int], campaign: str, task: str, run: int, jid: int,
                      target: str, actor: str, identity: str = "", reason: str = "") -> tuple[str, bool, bool]:
    """The same transition on a raw autocommit ``sqlite3`` connection: (status before, changed, decided).
    ``ids`` as for :func:`pg_transition`."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = conn.execute(SQLITE_READ, (task, run, jid, campaign)).fetchone()
        if found is None:
            raise LookupError(f"no job {jid} for task {task!r} run {run} in campaign {campaign!r}")
        pk, status, version, attempts, iid, gen, retries, cid, latest = found
        if status == target:
            conn.execute("COMMIT")
            return status, False, False
        if job_refusal(JobStatus(status), JobStatus(target), attempts, retries):
            _refuse(task, run, jid, status, target, attempts, retries)
        retry = status == "failed" and target == "idle"
        attempts += retry
        now = _after(latest, now_micros())
        conn.execute(SQLITE_UPDATE, (target, attempts, now, retry, target, target, now, target, now, pk, version))
        conn.execute(AUDIT_SQL, (now, cid, vocab_id("job"), iid, pk, ids[task], run, jid, gen, vocab_id(status),
                                 vocab_id(target), ids[actor], ids[identity], ids[reason], None, None))
        decided = False
        if target in ("done", "failed"):
            total, done, active, exhausted = conn.execute(SQLITE_TALLY, (retries, iid, gen)).fetchone()
            decided = done == total or (active == 0 and exhausted > 0)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return status, True, decided
