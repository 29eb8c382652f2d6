"""The two transition tables: validated at import, rendered into the docs, and enforced pair by pair.

Every (from, to) pair of both tables goes through the real store (SQLite and PostgreSQL): allowed
pairs succeed and write exactly one audit row for the entity, refused pairs raise
TransitionNotAllowed naming entity, current, requested and allowed, and write nothing.
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
from drive import REASON, audit_count, drive_instance, drive_job, only, start_jobs

from ecalstate import JOB, TASK, JobStatus, Store, TaskStatus, TransitionNotAllowed
from ecalstate.statemachine import DOC_COMMAND, Machine, document, render_markdown

T = TaskStatus
J = JobStatus
DOC = Path(__file__).resolve().parent.parent / "docs" / "state-machines.md"


def pair_params(machine: Machine, allowed: bool) -> list[Any]:
    return [
        pytest.param(a, b, id=f"{a.value} -> {b.value}")
        for a, b in machine.pairs()
        if machine.is_allowed(a, b) == allowed
    ]


# --- the tables themselves -------------------------------------------------------------------------

def job_table(**changes: frozenset[Any]) -> dict[Enum, frozenset[Any]]:
    table: dict[Enum, frozenset[Any]] = dict(JOB.table)
    table.update({JobStatus(k): v for k, v in changes.items()})
    return table


BAD_MACHINES = [
    pytest.param(job_table(idle=frozenset({J.RUNNING, J.DONE}), running=frozenset({J.DONE, J.IDLE})),
                 frozenset({J.DONE}), "unreachable: failed",
                 id="unreachable status"),
    pytest.param(job_table(done=frozenset({J.IDLE})), frozenset({J.DONE}), "terminal status done has exits: idle",
                 id="terminal with exits"),
    pytest.param(job_table(failed=frozenset()), frozenset({J.DONE}), "without exits not declared terminal: failed",
                 id="undeclared dead end"),
    pytest.param(job_table(idle=frozenset({J.RUNNING, J.FAILED, "archived"})), frozenset({J.DONE}),
                 "unknown target 'archived'", id="unknown target name"),
    pytest.param(job_table(idle=frozenset({J.RUNNING, J.FAILED, T.DONE})), frozenset({J.DONE}),
                 "unknown target <TaskStatus.DONE", id="status of the other machine"),
    pytest.param(job_table(idle=frozenset({J.IDLE, J.RUNNING, J.FAILED})), frozenset({J.DONE}),
                 "self-transition idle -> idle", id="self transition"),
    pytest.param({k: v for k, v in JOB.table.items() if k != J.FAILED}, frozenset({J.DONE}),
                 "statuses without a row: failed", id="missing row"),
]


@pytest.mark.parametrize(("table", "terminals", "problem"), BAD_MACHINES)
def test_a_bad_table_fails_at_construction(table: dict[Enum, frozenset[Any]], terminals: frozenset[Any],
                                           problem: str) -> None:
    with pytest.raises(RuntimeError, match=re.escape(problem)):
        Machine("job", JobStatus, J.IDLE, table, {}, terminals)


def test_a_cause_for_a_refused_pair_fails_at_construction() -> None:
    with pytest.raises(RuntimeError, match="cause documented for a refused pair done -> idle"):
        Machine("job", JobStatus, J.IDLE, JOB.table, {(J.DONE, J.IDLE): "never"}, JOB.terminals)


def test_the_shipped_tables_are_the_designed_ones() -> None:
    assert {a.value: sorted(b.value for b in bs) for a, bs in TASK.table.items()} == {
        "new": ["merged", "processing", "skipped"], "reprocess": ["merged", "processing", "skipped"],
        "processing": ["done", "failed", "reprocess"], "done": ["reprocess"], "failed": ["reprocess", "skipped"],
        "merged": ["reprocess"], "skipped": ["reprocess"],
    }
    assert {a.value: sorted(b.value for b in bs) for a, bs in JOB.table.items()} == {
        "idle": ["done", "failed", "running"], "running": ["done", "failed", "idle"], "failed": ["idle"], "done": [],
    }
    assert JOB.terminal() == {J.DONE} and TASK.terminal() == frozenset()


@pytest.mark.parametrize("machine", [TASK, JOB], ids=["task", "job"])
def test_render_markdown_round_trips_to_the_table(machine: Machine) -> None:
    lines = render_markdown(machine).splitlines()
    assert lines[:2] == ["| from | allowed to | typical cause |", "| --- | --- | --- |"]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    assert rows[0][:2] == ["(none)", machine.initial.value]
    parsed = {}
    for source, targets, cause in rows[1:]:
        status = machine.parse(source)
        parsed[status] = frozenset() if targets == "(none)" else frozenset(
            machine.parse(t) for t in targets.split(", "))
        expected = "terminal" if not parsed[status] else "; ".join(
            machine.causes[(status, t)] for t in sorted(parsed[status], key=list(machine.statuses).index))
        assert cause == expected
    assert parsed == dict(machine.table)


def test_docs_state_machines_is_up_to_date() -> None:
    assert DOC.read_text() == document(), f"docs/state-machines.md is stale; regenerate it with:\n{DOC_COMMAND}"


def test_unknown_status_names_are_refused_with_the_valid_ones() -> None:
    with pytest.raises(Exception, match=r"unknown job status 'finished' \(valid: idle, running, done, failed\)"):
        JOB.parse("finished")


# --- task-instance pairs through the store --------------------------------------------------------

RUN, PARTNER = 1, 2  # both in fill 10 of the chain fixture; reco has no upstream task


def task_row(store: Store) -> tuple[str, int]:
    info = store.instance("prompt", "reco", RUN)
    return info.status, info.version


def new_audit_rows(store: Store, after: int) -> list[Any]:
    return [r for r in store.history("prompt", limit=None) if r.id > after]


def last_audit_id(store: Store) -> int:
    rows = store.history(limit=1)
    return rows[-1].id if rows else 0


@pytest.mark.parametrize(("current", "requested"), pair_params(TASK, allowed=True))
def test_allowed_task_pair(chain: Store, current: TaskStatus, requested: TaskStatus) -> None:
    drive_instance(chain, "prompt", "reco", RUN, current, partner=PARTNER)
    status, version = task_row(chain)
    mark = last_audit_id(chain)
    if requested == T.PROCESSING:
        claims = chain.claim("prompt", "reco", group_by=only(RUN))
        assert [(c.run_number, c.merged) for c in claims] == [(RUN, [])]
    elif requested == T.MERGED:
        # the partner leads; when the pair starts from reprocess, the partner is still new
        claims = chain.claim("prompt", "reco", group_by=only(RUN, PARTNER))
        assert [(c.run_number, c.merged) for c in claims] == [(PARTNER, [RUN])]
    elif requested == T.REPROCESS:  # a merged run's group is reprocessed whole: its leader too; an undone skip
        # brings back what it cascaded to (calib and plots)
        assert chain.reprocess("prompt", "reco", runs=[RUN], reason="pair test").counts() == {
            "changed": 2 if current == T.MERGED else 3 if current == T.SKIPPED else 1, "unchanged": 0, "refused": 0}
    elif requested == T.SKIPPED:  # nothing to do downstream either: calib and plots skip the run too
        assert chain.set_status("prompt", "reco", [RUN], requested.value, reason="pair test").counts() == {
            "changed": 3, "unchanged": 0, "refused": 0}
        assert {chain.instance("prompt", t, RUN).status for t in ("calib", "plots")} == {"skipped"}
    else:
        assert chain.set_status("prompt", "reco", [RUN], requested.value, reason="pair test").counts() == {
            "changed": 1, "unchanged": 0, "refused": 0}
    assert task_row(chain) == (requested.value, version + 1)
    cascade = T.SKIPPED in (current, requested)  # a skip, or its undoing, moves calib and plots with reco
    rows = [r for r in new_audit_rows(chain, mark) if r.task == "reco" or not cascade]
    mine = [r for r in rows if r.run_number == RUN]
    assert len(mine) == 1
    row = mine[0]
    assert (row.entity, row.task, row.from_status, row.to_status, row.actor) == (
        "task", "reco", status, requested.value, "tester")
    assert row.reason == ("pair test" if requested in (T.DONE, T.FAILED, T.REPROCESS, T.SKIPPED) else row.reason)
    assert row.reason
    # the only other row a transition may write is the group leader's: its claim, or its group reprocessed whole
    others = [(r.run_number, r.from_status, r.to_status) for r in rows if r.run_number != RUN]
    leader = {T.MERGED: [(PARTNER, "new", "processing")]}.get(requested, [])
    if requested == T.REPROCESS and current == T.MERGED:
        leader = [(PARTNER, "processing", "reprocess")]
    assert others == leader


@pytest.mark.parametrize(("current", "requested"), pair_params(TASK, allowed=False))
def test_refused_task_pair(chain: Store, current: TaskStatus, requested: TaskStatus) -> None:
    drive_instance(chain, "prompt", "reco", RUN, current, partner=PARTNER)
    before_row, before_audit = task_row(chain), audit_count(chain)
    with pytest.raises(TransitionNotAllowed) as caught:
        chain.set_status("prompt", "reco", [RUN], requested.value, reason="pair test")
    err = caught.value
    assert (err.entity, err.current, err.requested, err.allowed) == (
        "task instance", current, requested, TASK.allowed(current))
    message = str(err)
    assert f"task instance reco run {RUN}" in message
    assert f"{current.value} -> {requested.value} not allowed" in message
    assert all(s.value in message for s in TASK.allowed(current))
    if requested in (T.PROCESSING, T.MERGED):
        # nor does a claim take an instance the table does not let it take
        assert chain.claim("prompt", "reco", group_by=only(RUN)) == []
    assert task_row(chain) == before_row
    assert audit_count(chain) == before_audit


def test_operator_cannot_claim_by_hand(chain: Store) -> None:
    """new -> processing is in the table but belongs to claims: set refuses it, writing nothing."""
    before = audit_count(chain)
    with pytest.raises(Exception, match="processing is set by claims, not by hand") as caught:
        chain.set_status("prompt", "reco", [RUN], "processing", reason="pair test")
    assert not isinstance(caught.value, TransitionNotAllowed)
    assert audit_count(chain) == before and task_row(chain) == ("new", 1)


# --- job pairs through the store -------------------------------------------------------------------

def job_row(store: Store, jid: int) -> tuple[str, int, int]:
    job = next(j for j in store.list_jobs("prompt", "reco", run=RUN) if j.jid == jid)
    return job.status, job.version, job.attempts


@pytest.fixture
def jobs(chain: Store) -> Store:
    """reco run 1 processing with jobs 0 and 1: job 1 stays idle, so no job change completes the instance."""
    start_jobs(chain, "prompt", "reco", RUN, [0, 1])
    return chain


@pytest.mark.parametrize(("current", "requested"), pair_params(JOB, allowed=True))
def test_allowed_job_pair(jobs: Store, current: JobStatus, requested: JobStatus) -> None:
    drive_job(jobs, "prompt", "reco", RUN, 0, current)
    status, version, attempts = job_row(jobs, 0)
    mark = last_audit_id(jobs)
    change = jobs.set_job_status("prompt", "reco", RUN, 0, requested.value, reason="pair test")
    assert (change.outcome, change.current, change.requested) == ("changed", current.value, requested.value)
    retried = current == J.FAILED and requested == J.IDLE
    assert job_row(jobs, 0) == (requested.value, version + 1, attempts + retried)
    rows = new_audit_rows(jobs, mark)
    assert [(r.entity, r.task, r.run_number, r.jid, r.generation, r.from_status, r.to_status, r.actor, r.reason)
            for r in rows] == [("job", "reco", RUN, 0, 1, status, requested.value, "tester", "pair test")]
    assert jobs.instance("prompt", "reco", RUN).status == "processing"


@pytest.mark.parametrize(("current", "requested"), pair_params(JOB, allowed=False))
def test_refused_job_pair(jobs: Store, current: JobStatus, requested: JobStatus) -> None:
    drive_job(jobs, "prompt", "reco", RUN, 0, current)
    before_row, before_audit = job_row(jobs, 0), audit_count(jobs)
    with pytest.raises(TransitionNotAllowed) as caught:
        jobs.set_job_status("prompt", "reco", RUN, 0, requested.value, reason="pair test")
    err = caught.value
    assert (err.entity, err.current, err.requested, err.allowed) == ("job", current, requested, JOB.allowed(current))
    message = str(err)
    assert f"job reco run {RUN} job 0" in message and f"{current.value} -> {requested.value} not allowed" in message
    assert all(s.value in message for s in JOB.allowed(current)) or "none: terminal" in message
    assert job_row(jobs, 0) == before_row and audit_count(jobs) == before_audit


def test_retry_guard_allows_up_to_max_retries_then_refuses(jobs: Store) -> None:
    """reco has max_retries=2: a job may run 1 + 2 times; the third failure cannot go back to idle."""
    for attempt in (1, 2, 3):
        jobs.set_job_status("prompt", "reco", RUN, 0, "failed", reason=f"attempt {attempt}")
        assert job_row(jobs, 0)[2] == attempt
        if attempt < 3:
            jobs.set_job_status("prompt", "reco", RUN, 0, "idle", reason=REASON)
    before_row, before_audit = job_row(jobs, 0), audit_count(jobs)
    with pytest.raises(TransitionNotAllowed, match=r"retries exhausted: 3 attempts, max retries 2") as caught:
        jobs.set_job_status("prompt", "reco", RUN, 0, "idle", reason="one more")
    assert (caught.value.current, caught.value.requested) == (J.FAILED, J.IDLE)
    assert job_row(jobs, 0) == before_row and audit_count(jobs) == before_audit
    # the exhausted failure decides the instance once nothing is left running
    jobs.set_job_status("prompt", "reco", RUN, 1, "done", reason=REASON)
    assert jobs.instance("prompt", "reco", RUN).status == "failed"


def test_the_rule_that_decides_an_instance_is_one_rule_in_python_and_sql() -> None:
    """Issue 21: the rule deciding an instance from its jobs is written once (``DECISIONS``); the Python the hot
    paths run and the SQL the PostgreSQL function is made of are both generated from it and agree on every tally
    (here the SQL is evaluated by SQLite, which speaks the same CASE and ||)."""
    import itertools
    import sqlite3

    from ecalstate.statemachine import decide, decision_sql

    names = {c: f":{c}" for c in ("total", "done", "active", "exhausted", "retries")}
    status_sql, reason_sql = decision_sql(names)
    conn = sqlite3.connect(":memory:")
    seen = set()
    for total, done, active, retries in itertools.product(range(1, 5), range(5), range(5), range(3)):
        for exhausted in range(total - done - active + 1):
            if done + active + exhausted > total:
                continue
            tally = {"total": total, "done": done, "active": active, "exhausted": exhausted, "retries": retries}
            sql = conn.execute(f"SELECT {status_sql}, {reason_sql}", tally).fetchone()
            python = decide(total, done, active, exhausted, retries)
            assert sql == ((python[0].value, python[1]) if python else (None, None)), tally
            seen.add(sql[0])
    assert seen == {"done", "failed", None}
    assert decide(3, 3, 0, 0, 2) == (TaskStatus.DONE, "all 3 jobs done")
    assert decide(3, 1, 0, 2, 2) == (TaskStatus.FAILED, "2 of 3 jobs failed beyond 2 retries")
    assert decide(3, 1, 1, 1, 2) is None  # a job still runs: the instance waits for it
