"""Eight OS processes hammer one campaign for ~5 s: claims (half grouped by fill), job creation, bulk job
updates on each other's runs, downstream claims and reprocessing. Each process records what the API said
it changed; afterwards the database must hold exactly that: no double claim, no lost update, every audit
chain unbroken, and no "database is locked" (nor any other error) reaching a caller.
"""

from __future__ import annotations

import multiprocessing as mp
import random
import time
import traceback
from collections import Counter
from typing import Any

import pytest
from drive import TRANSITIONS, audit_problems, undecided_problems

from ecalstate import Conflict, Invalid, JobUpdate, RunSpec, Store

C = "conc"
WORKERS = 8
SECONDS = 5.0
RUNS = 240
JOBS = 3


def hammer(url: str, worker: int, start: Any, seconds: float, out: Any) -> None:
    """One process: loop over random API calls until the deadline, recording every accepted change."""
    rng = random.Random(worker)
    record: dict[str, Any] = {"leaders": [], "task": Counter(), "job": Counter(), "created": 0, "calls": 0,
                              "stale": 0, "errors": []}
    group_by = "fill" if worker % 2 else None
    with Store.open(url, actor=f"worker-{worker}") as store:
        start.wait()  # every process imported and connected before the first call
        deadline = time.time() + seconds
        while time.time() < deadline:
            record["calls"] += 1
            try:
                step(store, rng, group_by, record)
            except Exception:  # noqa: BLE001 - every error is a finding; the test asserts there are none
                record["errors"].append(traceback.format_exc(limit=3))
    out.put(record)


def step(store: Store, rng: random.Random, group_by: str | None, record: dict[str, Any]) -> None:
    roll = rng.random()
    if roll < 0.3:
        task = "calib" if rng.random() < 0.3 else "reco"
        for claim in store.claim(C, task, limit=rng.randint(1, 3), group_by=group_by):
            record["leaders"].append((task, claim.run_number, claim.generation))
            for run in claim.runs:
                record["task"][(task, run)] += 1
            try:
                record["created"] += store.create_jobs(C, task, claim.run_number, range(JOBS),
                                                       generation=claim.generation)
            except (Conflict, Invalid) as err:  # an operator aborted the claim meanwhile: a clean refusal
                assert "was claimed again" in str(err) or "is reprocess, not processing" in str(err), err
                record["stale"] += 1
        return
    task = "calib" if roll < 0.4 else "reco"
    if roll > 0.97:
        done = store.list_runs(C, task="reco", status="done")
        if done:
            result = store.reprocess(C, "reco", runs=[rng.choice(done)["run_number"]], downstream=True, reason="hammer")
            count_task_changes(result.changes, record)
        return
    processing = store.list_runs(C, task=task, status="processing")
    if not processing:
        return
    run = rng.choice(processing)
    updates = [JobUpdate(run["run_number"], jid, rng.choice(["running", "done", "done", "failed", "idle"]),
                         generation=run["generation"]) for jid in rng.sample(range(JOBS + 1), 3)]
    result = store.update_jobs(C, task, updates)
    for change in result.changes:
        if change.entity == "job" and change.outcome == "changed":
            record["job"][(task, run["run_number"], run["generation"], int(change.key.split()[4]))] += 1
    count_task_changes(result.changes, record)


def count_task_changes(changes: list[Any], record: dict[str, Any]) -> None:
    for change in changes:
        if change.entity == "task" and change.outcome == "changed":
            task, _, run = change.key.split()
            record["task"][(task, int(run))] += 1


def test_eight_processes_lose_nothing_and_claim_nothing_twice(db_url: str) -> None:
    with Store.open(db_url, actor="setup", create=True) as store:
        store.create_campaign(C)
        store.add_task(C, "reco", max_retries=2)
        store.add_task(C, "calib", depends_on=["reco"], max_retries=1)
        store.update_rtype(C, "all", add=["reco", "calib"])
        store.inject_runs(C, [RunSpec(r, 1000 + r // 3) for r in range(1, RUNS + 1)])
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start = ctx.Barrier(WORKERS)
    procs = [ctx.Process(target=hammer, args=(db_url, w, start, SECONDS, out)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    records = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0

    errors = [e for r in records for e in r["errors"]]
    assert errors == [], f"{len(errors)} errors reached callers, first:\n{errors[0]}"
    assert all(r["calls"] > 20 for r in records), [r["calls"] for r in records]
    leaders = Counter(x for r in records for x in r["leaders"])
    assert leaders and max(leaders.values()) == 1, "a run was claimed twice within one generation"
    task_changes = sum((r["task"] for r in records), Counter())
    job_changes = sum((r["job"] for r in records), Counter())
    created = sum(r["created"] for r in records)
    assert job_changes and created

    with Store.open(db_url) as store, store.db.tx(write=False) as tx:
        instances = {(t, r): v for t, r, v in tx.all(
            "SELECT t.name, r.run_number, ti.version FROM task_instance ti JOIN task t ON t.id = ti.task_id"
            " JOIN run r ON r.id = ti.run_id")}
        jobs = {(t, r, g, j): v for t, r, g, j, v in tx.all(
            "SELECT t.name, r.run_number, j.generation, j.jid, j.version FROM job j"
            " JOIN task_instance ti ON ti.id = j.instance_id JOIN task t ON t.id = ti.task_id"
            " JOIN run r ON r.id = ti.run_id")}
        claims = tx.all("SELECT instance_id, generation, COUNT(*) FROM audit WHERE entity = 'task'"
                        " AND to_status = 'processing' GROUP BY instance_id, generation HAVING COUNT(*) > 1")
        audited = tx.scalar(f"SELECT COUNT(*) FROM audit WHERE {TRANSITIONS}")
        problems = audit_problems(store)
    assert claims == [], "double claims in the audit"
    assert undecided_problems(store) == []  # a completion decided by two concurrent job changes is not lost either
    assert problems == []
    # no lost update: every version step of every row is a change some process was told it made
    assert {k: v - 1 for k, v in instances.items() if v > 1} == dict(task_changes)
    assert {k: v - 1 for k, v in jobs.items() if v > 1} == dict(job_changes)
    assert len(jobs) == created
    assert audited == len(instances) + created + sum(task_changes.values()) + sum(job_changes.values())


def finish_job(url: str, jid: int, runs: int, bulk: bool, start: Any, out: Any) -> None:
    """Set job ``jid`` of every run done, in step with the other process (one barrier per run); ``bulk``: through
    ``update_jobs`` (the generic path) instead of ``set_job_status`` (the one-job fast path)."""
    with Store.open(url, actor=f"finisher-{jid}") as store:
        for run in range(1, runs + 1):
            start.wait()
            if bulk:
                store.update_jobs(C, "reco", [JobUpdate(run, jid, "done")])
            else:
                store.set_job_status(C, "reco", run, jid, "done")
    out.put(jid)


@pytest.mark.parametrize("bulk", [False, True], ids=["one-job path", "bulk path"])
def test_the_last_two_jobs_finishing_at_once_complete_the_instance(db_url: str, bulk: bool) -> None:
    """Each transaction sees only its own job done until the other commits: one of them must still decide (on
    PostgreSQL both paths lock the instance before they count its jobs, in a statement of its own)."""
    runs = 100
    with Store.open(db_url, actor="setup", create=True) as store:
        store.create_campaign(C)
        store.add_task(C, "reco")
        store.update_rtype(C, "all", add=["reco"])
        store.inject_runs(C, [RunSpec(r) for r in range(1, runs + 1)])
        for claim in store.claim(C, "reco"):
            store.create_jobs(C, "reco", claim.run_number, [0, 1])
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=finish_job, args=(db_url, jid, runs, bulk, start, out)) for jid in (0, 1)]
    for p in procs:
        p.start()
    assert sorted(out.get(timeout=120) for _ in procs) == [0, 1]
    for p in procs:
        p.join(timeout=30)
    with Store.open(db_url) as store:
        assert {r["status"] for r in store.list_runs(C, task="reco")} == {"done"}
        assert audit_problems(store) == []
        completions = [h for h in store.history(C, limit=None) if h.entity == "task" and h.to_status == "done"]
        assert len(completions) == runs  # each instance completed once
