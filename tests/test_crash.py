"""Crash safety: writers SIGKILLed at random moments, round after round, leave a sound SQLite database.

Each round forks writers that loop over write transactions (injections, grouped claims, bulk job creation and
updates, one-job transitions, downstream reprocessing) and kills them with SIGKILL after a random delay. Each
writer flags when it is inside a store call, so the test knows (and requires) that kills landed mid-call.
Afterwards: ``PRAGMA integrity_check`` is ok, every task instance and job has an unbroken audit chain
ending at its status with one row per version (nothing half-applied), no instance is left processing that its
jobs decide, and the database takes writes.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import sqlite3
import time
from typing import Any

from drive import audit_problems, undecided_problems

from ecalstate import Conflict, Invalid, JobUpdate, NotFound, RunSpec, Store, TransitionNotAllowed

C = "crash"
ROUNDS = 8
WRITERS = 3


def writer(path: str, seed: int, inside: Any) -> None:
    """Loop over big write transactions until killed; ``inside`` is 1 while a store call runs."""
    rng = random.Random(seed)
    store = Store.open(path, actor=f"writer-{seed}")
    while True:
        roll = rng.random()
        inside.value = 1
        if roll < 0.15:
            base = rng.randrange(1, 5000)
            store.inject_runs(C, [RunSpec(r, r // 4) for r in range(base, base + 60)])
        elif roll < 0.4:
            for claim in store.claim(C, rng.choice(["reco", "calib"]), limit=5, group_by="fill"):
                try:
                    store.create_jobs(C, claim.task, claim.run_number, range(100), generation=claim.generation)
                except (Conflict, Invalid):
                    pass  # re-claimed after an abort by another writer: refused, nothing written
        elif roll < 0.95:
            task = rng.choice(["reco", "calib"])
            runs = store.list_runs(C, task=task, status="processing")[:8]
            if roll < 0.6:  # one job a call: the fast path (one read and two writes); half the time every job of
                for run in runs[:2]:  # the run is finished, so that these calls decide instances too
                    finish = rng.random() < 0.5
                    for jid in range(100) if finish else range(0, 100, 9):
                        try:
                            store.set_job_status(C, task, run["run_number"], jid, "done" if finish else
                                                 rng.choice(["running", "done", "failed", "idle"]))
                        except (NotFound, TransitionNotAllowed):
                            pass  # no jobs yet in this generation, or a move the table refuses
            else:
                updates = [JobUpdate(r["run_number"], jid, rng.choice(["running", "done", "done", "failed"]))
                           for r in runs for jid in range(100)]
                store.update_jobs(C, task, updates)
        else:
            done = store.list_runs(C, task="reco", status="done")
            if done:
                store.reprocess(C, "reco", runs=[r["run_number"] for r in done[:20]], downstream=True, reason="crash")
        inside.value = 0


def test_sigkill_mid_transaction_leaves_no_half_applied_transition(tmp_path: Any) -> None:
    path = str(tmp_path / "state.db")
    with Store.open(path, actor="setup", create=True) as store:
        store.create_campaign(C)
        store.add_task(C, "reco", max_retries=1)
        store.add_task(C, "calib", depends_on=["reco"], max_retries=0)
        store.update_rtype(C, "all", add=["reco", "calib"])
    ctx = mp.get_context("fork")  # no connection is open here; children open their own
    rng = random.Random(7)
    mid_call = 0
    for round_no in range(ROUNDS):
        flags = [ctx.Value("i", 0) for _ in range(WRITERS)]
        procs = [ctx.Process(target=writer, args=(path, round_no * WRITERS + w, flags[w])) for w in range(WRITERS)]
        for p in procs:
            p.start()
        time.sleep(rng.uniform(0.4, 1.5))
        for p, flag in zip(procs, flags):
            mid_call += flag.value
            os.kill(p.pid, signal.SIGKILL)
            time.sleep(rng.uniform(0, 0.05))
        for p in procs:
            p.join(timeout=30)
            assert p.exitcode == -signal.SIGKILL, "a writer died on its own instead of by SIGKILL"
    assert mid_call >= ROUNDS, f"only {mid_call} kills landed inside a store call; the test proved little"

    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert raw.execute("PRAGMA foreign_key_check").fetchall() == []
    jobs, changes = raw.execute("SELECT COUNT(*), SUM(version - 1) FROM job").fetchone()
    raw.close()
    assert jobs > 0 and changes > 0, "the writers did too little before being killed"
    with Store.open(path) as store:
        assert audit_problems(store) == []
        assert undecided_problems(store) == []
        store.inject_runs(C, [RunSpec(99999, 1)])  # and it still takes writes
        assert store.instance(C, "reco", 99999).status == "new"
