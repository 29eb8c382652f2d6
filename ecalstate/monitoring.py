"""Health and progress: heartbeats of handler stages, stuck and blocked task instances, the audit's bookmarks.

The original system's blind spot was a Jenkins agent that silently stopped
running stages. Every stage records a heartbeat here; ``health`` reports stages
silent for too long and ``processing`` instances whose jobs made no progress,
NULL-safe: an instance whose jobs never started is judged by when it was claimed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, Optional

from .base import Ctx, StoreBase, campaign_id, task_of
from .clock import TS_FORMAT, from_micros, to_micros
from .db import Tx
from .errors import Invalid
from .limits import MAX_DURATION, MAX_DURATION_TEXT, chunks
from .results import BlockedInstance, Health, SilentHandler, StuckInstance

STAGES = ("submit", "resubmit", "check")
#: default thresholds of health, in seconds: no job progress for 6 h, no stage heartbeat for 2 h
STUCK_AFTER = 6 * 3600
SILENT_AFTER = 2 * 3600
#: jobs created but not submitted for 15 min: the build that claimed them was killed (the next stage submits them)
UNSUBMITTED_AFTER = 15 * 60


def cutoff(seconds: float, now: str) -> str:
    """The timestamp ``seconds`` before ``now`` (the store's clock), in the store's text format (comparable as
    text)."""
    if not 0 <= seconds <= MAX_DURATION:
        raise Invalid(f"invalid duration {seconds}: must be >= 0 and {MAX_DURATION_TEXT}")
    start = datetime.strptime(now, TS_FORMAT)
    return (start - timedelta(seconds=seconds)).strftime(TS_FORMAT)


#: an instance's progress is its current generation's newest job change (integer microseconds), or its claim
#: (``updated_at``, text) while it has no job. Most processing instances are not stuck: the first job changed
#: since the cutoff clears one; the newest change and the count are read for the stuck ones only.
_JOBS = "FROM job j WHERE j.instance_id = ti.id AND j.generation = ti.generation"
STUCK_SQL = f"""
SELECT c.name, t.name, r.run_number, ti.updated_at, (SELECT MAX(j.updated_at) {_JOBS}), (SELECT COUNT(*) {_JOBS})
FROM task_instance ti JOIN task t ON t.id = ti.task_id JOIN run r ON r.id = ti.run_id
JOIN campaign c ON c.id = ti.campaign_id
WHERE ti.status = 'processing' AND NOT EXISTS (SELECT 1 {_JOBS} AND j.updated_at >= ?)
  AND (ti.updated_at < ? OR EXISTS (SELECT 1 {_JOBS}))
"""

# driven from the (few) failed upstream instances, not the (many) waiting ones: 6x faster on 200,000 instances; with
# the upstream task and when it failed (a merged upstream: when its leader did)
BLOCKED_SQL = """
SELECT ti.id, t.name, r.run_number, ut.name, COALESCE(ul.updated_at, u.updated_at), ti.status
FROM task_instance u LEFT JOIN task_instance ul ON ul.id = u.leader_id
JOIN task_dep d ON d.depends_on_id = u.task_id
JOIN task_instance ti ON ti.task_id = d.task_id AND ti.run_id = u.run_id
JOIN task t ON t.id = ti.task_id JOIN run r ON r.id = ti.run_id JOIN task ut ON ut.id = u.task_id
WHERE u.campaign_id = ? AND u.status IN ('failed', 'merged') AND (u.status = 'failed' OR ul.status = 'failed')
  AND ti.status IN ('new', 'reprocess')
ORDER BY t.name, r.run_number, ut.name
"""

#: merged instances whose group leader failed: their run is lost with the leader's (driven from the merged rows;
#: those of a done leader are most of them, and are left at once)
LEADER_FAILED_SQL = """
SELECT t.name, r.run_number, r.fill, lr.run_number, l.updated_at
FROM task_instance ti JOIN task_instance l ON l.id = ti.leader_id
JOIN task t ON t.id = ti.task_id JOIN run r ON r.id = ti.run_id JOIN run lr ON lr.id = l.run_id
WHERE ti.campaign_id = ? AND ti.status = 'merged' AND l.status = 'failed'
ORDER BY t.name, r.run_number
"""

#: instances that wait on an upstream task the operator skipped for their run: they can never be claimed (driven
#: from the skipped instances)
UPSTREAM_SKIPPED_SQL = """
SELECT DISTINCT t.name, r.run_number, ut.name, u.updated_at
FROM task_instance u JOIN task_dep d ON d.depends_on_id = u.task_id
JOIN task_instance ti ON ti.task_id = d.task_id AND ti.run_id = u.run_id
JOIN task t ON t.id = ti.task_id JOIN run r ON r.id = ti.run_id JOIN task ut ON ut.id = u.task_id
WHERE u.campaign_id = ? AND u.status = 'skipped' AND ti.status IN ('new', 'reprocess')
ORDER BY t.name, r.run_number
"""

#: every instance neither done nor skipped (nor merged into a done leader), with its run, fill, last change and the
#: first upstream task not done for its run (with that task's status): what is progressing and what waits for an
#: upstream task. ``{runs}``: all the campaign's instances, or those of some runs (read from the runs first)
UNFINISHED_SQL = """
SELECT t.name, r.run_number, r.fill, ti.status, ti.updated_at, lr.run_number, l.status, (
  SELECT ut.name || ' ' || CASE WHEN u.status = 'merged' THEN 'merged into a ' || COALESCE(ul.status, 'missing')
                                || ' run' ELSE COALESCE(u.status, 'missing') END
  FROM task_dep d JOIN task ut ON ut.id = d.depends_on_id
  LEFT JOIN task_instance u ON u.task_id = d.depends_on_id AND u.run_id = ti.run_id
  LEFT JOIN task_instance ul ON ul.id = u.leader_id
  WHERE d.task_id = ti.task_id AND ti.status IN ('new', 'reprocess')
    AND NOT (COALESCE(u.status, '') = 'done'
             OR (COALESCE(u.status, '') = 'merged' AND COALESCE(ul.status, '') = 'done'))
  ORDER BY ut.name LIMIT 1)
FROM {runs}
JOIN task t ON t.id = ti.task_id LEFT JOIN task_instance l ON l.id = ti.leader_id LEFT JOIN run lr ON lr.id = l.run_id
WHERE {where} AND ti.status IN ('new', 'reprocess', 'processing', 'failed', 'merged')
  AND NOT (ti.status = 'merged' AND COALESCE(l.status, '') = 'done')
"""
#: every run's, or some runs' (SQLite reads the runs first: ``CROSS JOIN`` keeps the order written)
_ALL_RUNS = {"runs": "task_instance ti JOIN run r ON r.id = ti.run_id", "where": "ti.campaign_id = ?"}
_SOME_RUNS = {"runs": "run r CROSS JOIN task_instance ti",
              "where": "ti.run_id = r.id AND r.campaign_id = ? AND r.run_number IN ({marks})"}


def stuck_instances(tx: Tx, cid: Optional[int], after: float, now: str) -> list[StuckInstance]:
    """``processing`` instances with no job progress for ``after`` seconds (never-started ones included)."""
    since = cutoff(after, now)
    return [StuckInstance(name, task, run, claimed if last is None else from_micros(last), jobs)
            for name, task, run, claimed, last, jobs in _late(tx, STUCK_SQL, cid, [to_micros(since), since])]


#: the instances of :data:`UNSUBMITTED_SQL` and :data:`RETRYING_SQL`, one row each
_PER_INSTANCE = " GROUP BY c.name, t.name, r.run_number"


def _late(tx: Tx, sql: str, cid: Optional[int], cutoffs: Sequence[Any], group: str = "") -> list[Any]:
    """The rows ``sql`` selects with its ``cutoffs``, in one campaign or all, by campaign, task and run."""
    params = [*cutoffs] if cid is None else [*cutoffs, cid]
    where = "" if cid is None else " AND ti.campaign_id = ?"
    return tx.all(sql + where + group + " ORDER BY c.name, t.name, r.run_number", params)


def _at_job_times(rows: list[Any]) -> list[StuckInstance]:
    """Rows whose time is a job's (integer microseconds)."""
    return [StuckInstance(r[0], r[1], r[2], from_micros(r[3]), r[4]) for r in rows]


UNSUBMITTED_SQL = """
SELECT c.name, t.name, r.run_number, MIN(j.created_at), COUNT(*)
FROM job j JOIN task_instance ti ON ti.id = j.instance_id AND j.generation = ti.generation
JOIN task t ON t.id = ti.task_id JOIN run r ON r.id = ti.run_id JOIN campaign c ON c.id = ti.campaign_id
WHERE j.status = 'idle' AND j.batch_id IS NULL AND ti.status = 'processing' AND j.updated_at < ?
"""


def unsubmitted_instances(tx: Tx, cid: Optional[int], after: float, now: str) -> list[StuckInstance]:
    """``processing`` instances with jobs "to submit" (no batch id) for ``after`` seconds: a killed submit."""
    return _at_job_times(_late(tx, UNSUBMITTED_SQL, cid, [to_micros(cutoff(after, now))], _PER_INSTANCE))


# instances given up (failed: no job may be retried any more) and failed jobs a resubmit will retry; the cutoff is
# "now": both are listed whatever their age
FAILED_SQL = """
SELECT c.name, t.name, r.run_number, ti.updated_at,
  (SELECT COUNT(*) FROM job j WHERE j.instance_id = ti.id AND j.generation = ti.generation AND j.status = 'failed')
FROM task_instance ti JOIN task t ON t.id = ti.task_id JOIN run r ON r.id = ti.run_id
JOIN campaign c ON c.id = ti.campaign_id
WHERE ti.status = 'failed' AND ti.updated_at <= ?
"""
RETRYING_SQL = """
SELECT c.name, t.name, r.run_number, MIN(j.updated_at), COUNT(*)
FROM job j JOIN task_instance ti ON ti.id = j.instance_id AND j.generation = ti.generation
JOIN task t ON t.id = ti.task_id JOIN run r ON r.id = ti.run_id JOIN campaign c ON c.id = ti.campaign_id
WHERE j.status = 'failed' AND j.attempts <= t.max_retries AND ti.status = 'processing' AND j.updated_at <= ?
"""


def blocked_instances(tx: Tx, cid: int) -> list[tuple[int, str, int]]:
    """Instances waiting on an upstream task that failed for their run (derived, never stored)."""
    return [(r[0], r[1], r[2]) for r in _blocked_rows(tx, cid)]


def _blocked_rows(tx: Tx, cid: int) -> list[Any]:
    """:data:`BLOCKED_SQL`'s rows, one per instance (the first upstream task, by name, that blocks it)."""
    seen: set[int] = set()
    out = []
    for row in tx.all(BLOCKED_SQL, (cid,)):
        if row[0] not in seen:
            seen.add(row[0])
            out.append(row)
    return out


def leader_failed(tx: Tx, cid: int) -> list[tuple[str, int, Optional[int], int, str]]:
    """Merged instances whose group leader failed: (task, run, fill, leader run, when the leader failed)."""
    return [(r[0], r[1], r[2], r[3], r[4]) for r in tx.all(LEADER_FAILED_SQL, (cid,))]


def upstream_skipped(tx: Tx, cid: int) -> list[tuple[str, int, str, str]]:
    """Instances not claimed yet whose upstream task was skipped for their run: (task, run, upstream, since)."""
    return [(r[0], r[1], r[2], r[3]) for r in tx.all(UPSTREAM_SKIPPED_SQL, (cid,))]


def unfinished_instances(tx: Tx, cid: int, runs: Optional[Sequence[int]] = None) -> list[tuple[Any, ...]]:
    """Every instance neither done nor skipped (nor merged into a done leader) of ``runs`` (all: None): (task, run,
    fill, status, last change, leader run, leader status, the first upstream not done with its status or None)."""
    if runs is None:
        return [tuple(r) for r in tx.all(UNFINISHED_SQL.format(**_ALL_RUNS), (cid,))]
    out: list[tuple[Any, ...]] = []
    for chunk in chunks(sorted(set(runs))):
        marks = ",".join("?" * len(chunk))
        sql = UNFINISHED_SQL.format(runs=_SOME_RUNS["runs"], where=_SOME_RUNS["where"].format(marks=marks))
        out += [tuple(r) for r in tx.all(sql, (cid, *chunk))]
    return out


def changed_at(tx: Tx, cid: int, task: str, runs: Sequence[int]) -> dict[int, str]:
    """When ``task``'s instances of ``runs`` last changed (became what they are), by run."""
    out: dict[int, str] = {}
    for chunk in chunks(sorted(set(runs))):
        marks = ",".join("?" * len(chunk))
        out.update((r[0], r[1]) for r in tx.all(
            "SELECT r.run_number, ti.updated_at FROM task_instance ti JOIN task t ON t.id = ti.task_id"
            f" JOIN run r ON r.id = ti.run_id WHERE t.campaign_id = ? AND t.name = ? AND r.run_number IN ({marks})",
            (cid, task, *chunk)))
    return out


def retrying_instances(tx: Tx, cid: Optional[int], now: str) -> list[StuckInstance]:
    """``processing`` instances with failed jobs that a resubmit will retry (``jobs``: how many), since the oldest."""
    return _at_job_times(_late(tx, RETRYING_SQL, cid, [to_micros(now)], _PER_INSTANCE))


def record_heartbeat(ctx: Ctx, cid: int, task: str, stage: str, ok: bool, message: str) -> None:
    """Upsert the (campaign, task, stage) heartbeat and audit it as a ``handler`` row (exported)."""
    ctx.tx.run(  # one statement: two first heartbeats at once cannot both insert (PostgreSQL)
        "INSERT INTO heartbeat (campaign_id, task, stage, last_at, actor, ok, message) VALUES (?,?,?,?,?,?,?)"
        " ON CONFLICT (campaign_id, task, stage) DO UPDATE SET last_at = excluded.last_at,"
        " actor = excluded.actor, ok = excluded.ok, message = excluded.message",
        (cid, task, stage, ctx.now, ctx.actor, ok, message),
    )
    ctx.audit(cid, "handler", task, "ok" if ok else "error", reason=message, detail={"stage": stage})


def forget_heartbeats(ctx: Ctx, cid: int, task: str) -> None:
    """Drop every stage heartbeat of ``task`` (a pseudo-task that was removed, such as the notifier)."""
    ctx.tx.run("DELETE FROM heartbeat WHERE campaign_id = ? AND task = ?", (cid, task))


# ------------------------------------------------------------------ the audit's bookmarks
#
# A consumer's bookmark is the last audit id it acknowledged (table ``export_cursor``, one row per target name);
# ``db prune`` keeps every audit row above the lowest bookmark. The exporter and the notifier are wings over the
# store: they read and move their bookmarks here, in the store's transactions, stamped by the store's clock.

_UPSERT = ("INSERT INTO export_cursor (target, audit_id, updated_at) VALUES (?,?,?)"
           " ON CONFLICT (target) DO UPDATE SET audit_id = excluded.audit_id, updated_at = excluded.updated_at")


def read_cursor(tx: Tx, target: str) -> Optional[int]:
    """The bookmark of ``target``, None when it has none."""
    value = tx.scalar("SELECT audit_id FROM export_cursor WHERE target = ?", (target,))
    return None if value is None else int(value)


def move_cursor(ctx: Ctx, target: str, audit_id: int, forward_only: bool = True) -> None:
    """Set the bookmark of ``target`` (made when missing); never back unless ``forward_only`` is False."""
    guard = " WHERE export_cursor.audit_id < excluded.audit_id" if forward_only else ""
    ctx.tx.run(_UPSERT + guard, (target, audit_id, ctx.now))


def drop_cursors(ctx: Ctx, targets: Iterable[str]) -> None:
    """Forget the bookmarks of ``targets`` (a consumer that was removed)."""
    ctx.tx.many("DELETE FROM export_cursor WHERE target = ?", [(t,) for t in targets])


def read_mark(tx: Tx, key: str) -> Optional[str]:
    """A consumer's note beside its bookmark (``meta`` key ``key``: what a notification channel was already told)."""
    return tx.scalar("SELECT value FROM meta WHERE key = ?", (_mark(key),))


def write_mark(ctx: Ctx, key: str, value: Optional[str]) -> None:
    """Replace (or with None remove) a consumer's note."""
    ctx.tx.run("DELETE FROM meta WHERE key = ?", (_mark(key),))
    if value is not None:
        ctx.tx.run("INSERT INTO meta (key, value) VALUES (?, ?)", (_mark(key), value))


def _mark(key: str) -> str:
    if key == "schema_version":  # the schema's own key is never a consumer's
        raise ValueError("schema_version is not a consumer's note")
    return key


class Monitoring(StoreBase):
    """Heartbeats and health."""

    def heartbeat(self, campaign: str, task: str, stage: str, ok: bool = True, message: str = "") -> None:
        """Record that a handler stage ran (and whether it succeeded); exported as the ``handler`` measurement."""
        if stage not in STAGES:
            raise Invalid(f"unknown stage {stage!r} (valid: {', '.join(STAGES)})")

        def body(ctx: Ctx) -> None:
            cid = campaign_id(ctx.tx, campaign)
            task_of(ctx.tx, cid, campaign, task)
            record_heartbeat(ctx, cid, task, stage, ok, message)

        self._write("heartbeat", None, body)

    def health(
        self,
        campaign: Optional[str] = None,
        stuck_after: float = STUCK_AFTER,
        silent_after: float = SILENT_AFTER,
        unsubmitted_after: float = UNSUBMITTED_AFTER,
    ) -> Health:
        """Stuck, blocked and failed instances, silent or failing handler stages, jobs left unsubmitted; ``ok``
        when none. Failed jobs that a resubmit will retry are listed apart (``retrying``): they are not a problem
        yet."""
        now = self.clock()  # the store's one clock: tests move it
        with self.db.tx(write=False) as tx:
            cid = None if campaign is None else campaign_id(tx, campaign)
            stuck = stuck_instances(tx, cid, stuck_after, now)
            unsubmitted = unsubmitted_instances(tx, cid, unsubmitted_after, now)
            sql = ("SELECT c.name, h.task, h.stage, h.last_at, h.ok, h.message FROM heartbeat h"
                   " JOIN campaign c ON c.id = h.campaign_id")
            params: list[object] = []
            if cid is not None:
                sql += " WHERE h.campaign_id = ?"
                params.append(cid)
            beats = [SilentHandler(r[0], r[1], r[2], r[3], bool(r[4]), r[5])
                     for r in tx.all(sql + " ORDER BY c.name, h.task, h.stage", params)]
            limit = cutoff(silent_after, now)
            silent = [b for b in beats if b.last_at < limit]
            failing = [b for b in beats if not b.ok and b.last_at >= limit]
            campaigns = [cid] if cid is not None else [r[0] for r in tx.all("SELECT id FROM campaign")]
            names = {r[0]: r[1] for r in tx.all("SELECT id, name FROM campaign")}
            blocked_by = [BlockedInstance(names[c], r[1], r[2], r[3], r[4], r[5]) for c in campaigns
                          for r in _blocked_rows(tx, c)]
            blocked = [(b.campaign, b.task, b.run_number) for b in blocked_by]
            failed = [StuckInstance(*r) for r in _late(tx, FAILED_SQL, cid, [now])]
            retrying = retrying_instances(tx, cid, now)
        return Health(stuck, silent, blocked, failing, unsubmitted, failed, retrying, blocked_by)

    # --- the audit's bookmarks ----------------------------------------------------------

    def cursor(self, target: str) -> int:
        """The last audit id ``target`` acknowledged (0 when it never received anything)."""
        with self.db.tx(write=False) as tx:
            return read_cursor(tx, target) or 0

    def set_cursor(self, target: str, audit_id: int, forward_only: bool = True) -> None:
        """Move ``target``'s bookmark to ``audit_id`` in its own short write transaction (never back unless told)."""
        self._write("cursor", None, lambda ctx: move_cursor(ctx, target, audit_id, forward_only))
