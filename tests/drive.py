"""Test helpers: bring a task instance or a job into a given status through the public API only.

Shared by the state-machine, store and property tests, so that every test reaches a status the
way production code does (injection, claims, jobs, operator transitions), never by writing SQL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlmodel import SQLModel

from ecalstate import JobStatus, Store, TaskStatus
from ecalstate.claims import Eligible

T = TaskStatus
J = JobStatus
REASON = "driven by a test"

#: how each task status is reached, as the status it is reached from (``new`` is where injection leaves it)
TASK_PATH: dict[TaskStatus, TaskStatus] = {
    T.PROCESSING: T.NEW,
    T.MERGED: T.NEW,
    T.DONE: T.PROCESSING,
    T.FAILED: T.PROCESSING,
    T.REPROCESS: T.DONE,
    T.SKIPPED: T.NEW,
}
JOB_PATH: dict[JobStatus, JobStatus] = {J.RUNNING: J.IDLE, J.DONE: J.IDLE, J.FAILED: J.IDLE}


def only(*runs: int) -> Callable[[list[Eligible]], list[list[Eligible]]]:
    """A claim grouper taking exactly ``runs`` as one group, the last one the leader (if they are eligible)."""

    def grouper(eligible: list[Eligible]) -> list[list[Eligible]]:
        by_run = {e.run_number: e for e in eligible}
        group = [by_run[r] for r in runs if r in by_run]
        return [group] if group else []

    return grouper


def drive_instance(
    store: Store, campaign: str, task: str, run: int, status: TaskStatus, partner: int | None = None
) -> None:
    """Bring a ``new`` instance to ``status``; ``merged`` folds it into ``partner``'s group (partner leads)."""
    if status == T.NEW:
        return
    drive_instance(store, campaign, task, run, TASK_PATH[status], partner)
    if status == T.PROCESSING:
        claimed = store.claim(campaign, task, group_by=only(run))
        assert [c.run_number for c in claimed] == [run], claimed
    elif status == T.MERGED:
        if partner is None:
            raise ValueError("merging needs a partner run to lead the group")
        claimed = store.claim(campaign, task, group_by=only(run, partner))
        assert [(c.run_number, c.merged) for c in claimed] == [(partner, [run])], claimed
    elif status == T.REPROCESS:
        store.reprocess(campaign, task, runs=[run], reason=REASON)
    else:
        store.set_status(campaign, task, [run], status.value, reason=REASON)
    assert store.instance(campaign, task, run).status == status.value


def drive_job(store: Store, campaign: str, task: str, run: int, jid: int, status: JobStatus) -> None:
    """Bring an ``idle`` job of a ``processing`` instance to ``status`` (one validated transition)."""
    if status != J.IDLE:
        drive_job(store, campaign, task, run, jid, JOB_PATH[status])
        store.set_job_status(campaign, task, run, jid, status.value, reason=REASON)


def start_jobs(store: Store, campaign: str, task: str, run: int, jids: Sequence[int]) -> None:
    """Claim ``run`` alone and create its jobs."""
    drive_instance(store, campaign, task, run, T.PROCESSING)
    store.create_jobs(campaign, task, run, list(jids))


def audit_count(store: Store) -> int:
    with store.db.tx(write=False) as tx:
        return int(tx.scalar("SELECT COUNT(*) FROM audit WHERE entity IN ('task', 'job')"))


def snapshot(store: Store) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table, to prove that a refused call wrote nothing."""
    out = {}
    with store.db.tx(write=False) as tx:
        for table in SQLModel.metadata.sorted_tables:
            order = ", ".join(str(i + 1) for i in range(len(table.columns)))
            out[table.name] = [tuple(r) for r in tx.all(f"SELECT * FROM {table.name} ORDER BY {order}")]
    return out


#: audit rows that are transitions; annotations (a field-only update: status to the same status) are not
TRANSITIONS = "entity IN ('task', 'job') AND (from_status IS NULL OR from_status <> to_status)"


def undecided_problems(store: Store) -> list[str]:
    """Instances left ``processing`` though their current generation's jobs decide them (all done, or none idle
    or running and one failed beyond its task's retries): every job write completes its instance in the same
    transaction, so none may be found after it (for stores whose writers all ask for completion)."""
    with store.db.tx(write=False) as tx:
        rows = tx.all(
            "SELECT ti.id, r.run_number, t.name, COUNT(*), SUM(CASE WHEN j.status = 'done' THEN 1 ELSE 0 END),"
            " SUM(CASE WHEN j.status IN ('idle', 'running') THEN 1 ELSE 0 END),"
            " SUM(CASE WHEN j.status = 'failed' AND j.attempts > t.max_retries THEN 1 ELSE 0 END)"
            " FROM task_instance ti JOIN task t ON t.id = ti.task_id JOIN run r ON r.id = ti.run_id"
            " JOIN job j ON j.instance_id = ti.id AND j.generation = ti.generation"
            " WHERE ti.status = 'processing' GROUP BY ti.id, r.run_number, t.name")
    return [f"{task} run {run}: processing, yet {done} of {total} jobs done, {active} active, {beyond} failed"
            " beyond the retries" for _, run, task, total, done, active, beyond in rows
            if done == total or (active == 0 and beyond)]


def audit_problems(store: Store) -> list[str]:
    """Half-applied or lost transitions: each task instance and job must have one unbroken chain of audit
    rows (first from nothing, each from the previous to), ending at its current status, one row per version."""
    problems = []
    with store.db.tx(write=False) as tx:
        chains: dict[tuple[str, int], list[tuple[str | None, str]]] = {}
        for entity, key, src, dst in tx.all(
            "SELECT entity, CASE WHEN entity = 'job' THEN job_pk ELSE instance_id END, from_status, to_status"
            f" FROM audit WHERE {TRANSITIONS} ORDER BY id"
        ):
            chains.setdefault((entity, key), []).append((src, dst))
        rows = [("task", *r) for r in tx.all("SELECT id, status, version FROM task_instance")]
        rows += [("job", *r) for r in tx.all("SELECT id, status, version FROM job")]
    for entity, pk, status, version in rows:
        chain = chains.pop((entity, pk), [])
        if len(chain) != version:
            problems.append(f"{entity} {pk}: version {version} but {len(chain)} audit rows")
        if not chain or chain[0][0] is not None or chain[-1][1] != status:
            problems.append(f"{entity} {pk}: status {status}, audit chain {chain}")
        breaks = [(a, b) for a, b in zip(chain, chain[1:]) if a[1] != b[0]]
        if breaks:
            problems.append(f"{entity} {pk}: audit chain broken at {breaks}")
    problems += [f"audit rows for a missing {entity} {pk}" for entity, pk in chains]
    return problems
