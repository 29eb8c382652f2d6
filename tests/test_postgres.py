"""What PostgreSQL needs beyond the shared store suite: concurrency under READ COMMITTED.

SQLite serialises writers (BEGIN IMMEDIATE); PostgreSQL runs them side by side, so every
read-then-write must lock what it reads, claims must skip rows another claimer holds, and
audit ids, handed out before commit, must still reach the exporter in an order it cannot skip.
Real server (the ``pg_url`` fixture), real processes for the multi-process tests.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ecalstate import JobUpdate, RunSpec, Store
from ecalstate.base import Ctx
from ecalstate.export import FileTarget, export

pytestmark = pytest.mark.postgres
SPAWN = multiprocessing.get_context("spawn")


def campaign(url: str, runs: int, jobs_per_run: int = 0) -> Store:
    store = Store.open(url, actor="setup", create=True)
    store.create_campaign("prompt")
    store.add_task("prompt", "reco", max_retries=5)
    store.update_rtype("prompt", "all", add=["reco"])
    store.inject_runs("prompt", [RunSpec(n, n // 10) for n in range(1, runs + 1)])
    return store


def in_parallel(count: int, target: Callable[..., Any], *args: Any) -> list[Any]:
    """Run ``target(i, *args)`` in ``count`` threads started together; results (or exceptions) in order."""
    results: list[Any] = [None] * count
    start = threading.Barrier(count)

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = target(i, *args)
        except Exception as err:  # returned to the test, which asserts on it
            results[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


# ------------------------------------------------------------------------------------------- claims


def test_a_claimer_skips_rows_another_one_holds_instead_of_waiting(pg_url: str) -> None:
    store = campaign(pg_url, 6)
    engine = sa.create_engine(pg_url)
    try:
        with engine.begin() as other:  # another claimer, in the middle of its transaction
            other.exec_driver_sql(
                "SELECT ti.id FROM task_instance ti JOIN run r ON r.id = ti.run_id"
                " WHERE r.run_number IN (1, 2) FOR UPDATE OF ti")
            t0 = time.monotonic()
            taken = store.claim("prompt", "reco", limit=2)
            waited = time.monotonic() - t0
            assert [c.run_number for c in taken] == [3, 4]
            assert waited < 5, "the claim waited for the other claimer's locks instead of skipping them"
        assert [c.run_number for c in store.claim("prompt", "reco")] == [1, 2, 5, 6]
    finally:
        engine.dispose()
        store.close()


def _claimer(worker: int, url: str, deadline: float) -> list[int]:
    """Claim 1-3 runs at a time until none is left; the runs this process got."""
    got: list[int] = []
    with Store.open(url, actor=f"claimer-{worker}") as store:
        while time.time() < deadline:
            claims = store.claim("prompt", "reco", limit=1 + worker % 3)
            if not claims and not store.eligible("prompt", "reco"):
                break
            got += [c.run_number for c in claims]
    return got


def test_eight_claiming_processes_never_claim_a_run_twice(pg_url: str) -> None:
    runs = 400
    campaign(pg_url, runs).close()
    with SPAWN.Pool(8) as pool:
        per_worker = pool.starmap(_claimer, [(w, pg_url, time.time() + 60) for w in range(8)])
    claimed = Counter(r for got in per_worker for r in got)
    assert sorted(claimed) == list(range(1, runs + 1))
    assert [r for r, n in claimed.items() if n > 1] == []
    with Store.open(pg_url) as store:
        assert store.overview("prompt").totals["reco"]["processing"] == runs
        audited = [h for h in store.history("prompt", limit=None) if h.to_status == "processing"]
        assert len(audited) == runs and len({h.run_number for h in audited}) == runs


# ----------------------------------------------------------------------------- read-then-write races


def test_concurrent_injections_of_the_same_runs_create_them_once(pg_url: str) -> None:
    store = campaign(pg_url, 0)
    runs = [RunSpec(n, 1) for n in range(100, 140)]
    results = in_parallel(6, lambda i: store.inject_runs("prompt", runs))
    assert [r for r in results if isinstance(r, Exception)] == []
    assert sorted(len(r.new) for r in results) == [0] * 5 + [40]
    assert len(store.list_runs("prompt")) == 40
    assert len(store.history("prompt", entity="task", limit=None)) == 40
    store.close()


def test_a_request_id_replayed_concurrently_gives_the_first_outcome(pg_url: str) -> None:
    store = campaign(pg_url, 20)
    results = in_parallel(6, lambda i: store.claim("prompt", "reco", limit=3, request_id="build-42"))
    assert [r for r in results if isinstance(r, Exception)] == []
    assert len({tuple(c.run_number for c in r) for r in results}) == 1  # every caller: the same 3 runs
    assert store.overview("prompt").totals["reco"]["processing"] == 3
    store.close()


def test_first_heartbeats_of_many_stages_at_once(pg_url: str) -> None:
    store = campaign(pg_url, 1)
    results = in_parallel(6, lambda i: store.heartbeat("prompt", "reco", "check", ok=i % 2 == 0, message=str(i)))
    assert [r for r in results if isinstance(r, Exception)] == []
    assert len(store.history("prompt", entity="handler", limit=None)) == 6
    store.close()


def _finisher(worker: int, url: str, runs: list[int]) -> int:
    """Mark job ``worker`` of every run done, one transaction per run."""
    with Store.open(url, actor=f"check-{worker}") as store:
        for run in runs:
            store.update_jobs("prompt", "reco", [JobUpdate(run, worker, "done")])
    return len(runs)


def test_jobs_finished_by_different_processes_complete_their_instance(pg_url: str) -> None:
    """No write skew: each process sees the other's job still running, yet the last one completes the run."""
    runs = list(range(1, 61))
    store = campaign(pg_url, len(runs))
    for claim in store.claim("prompt", "reco"):
        store.create_jobs("prompt", "reco", claim.run_number, [0, 1])
    with SPAWN.Pool(2) as pool:
        pool.starmap(_finisher, [(0, pg_url, runs), (1, pg_url, runs)])
    assert store.overview("prompt").totals["reco"]["done"] == len(runs)
    store.close()


# ------------------------------------------------------------------------------- audit id ordering


def test_the_exporter_never_skips_an_audit_row_that_commits_late(pg_url: str, tmp_path: Path) -> None:
    """Ids are handed out before commit: a row with a smaller id can commit after a larger one."""
    store = campaign(pg_url, 2)
    store.heartbeat("prompt", "reco", "submit")
    audited, release = threading.Event(), threading.Event()

    def slow(ctx: Ctx) -> None:
        ctx.audit(1, "handler", "reco", "ok", reason="slow writer", detail={"stage": "check"})
        audited.set()
        release.wait(30)

    slow_writer = threading.Thread(target=lambda: store._write("test.slow", None, slow))
    slow_writer.start()
    target = FileTarget(str(tmp_path / "points.lp"))
    try:
        assert audited.wait(30)
        store.heartbeat("prompt", "reco", "resubmit", message="fast writer")  # a larger id, committed first
        exporter = threading.Thread(target=lambda: export(Store.open(pg_url), target))
        exporter.start()
        _wait_until_done_or_waiting(pg_url, exporter)  # an exporter may wait for the slow writer, or not
    finally:
        release.set()
        slow_writer.join(30)
    exporter.join(30)
    export(Store.open(pg_url), target)
    lines = (tmp_path / "points.lp").read_text().splitlines()
    with Store.open(pg_url) as check:
        assert len([line for line in lines if line]) == len(check.history(limit=None))
    assert any("slow writer" in line for line in lines)
    store.close()


def _wait_until_done_or_waiting(url: str, thread: threading.Thread) -> None:
    """Until ``thread`` ends or some session waits for a lock (the exporter, behind the slow writer)."""
    engine = sa.create_engine(url)
    try:
        for _ in range(300):
            with engine.connect() as conn:
                if not thread.is_alive() or conn.exec_driver_sql("SELECT count(*) FROM pg_locks WHERE NOT granted").scalar():
                    return
            time.sleep(0.05)
    finally:
        engine.dispose()


def _writer(worker: int, url: str, seconds: float) -> int:
    """Heartbeats and claims for ``seconds``: many small audited transactions."""
    count = 0
    with Store.open(url, actor=f"writer-{worker}") as store:
        deadline = time.time() + seconds
        while time.time() < deadline:
            store.heartbeat("prompt", "reco", "check", message=f"w{worker} {count}")
            store.claim("prompt", "reco", limit=1)
            count += 1
    return count


def test_an_exporter_running_beside_eight_writers_sends_every_row_once(pg_url: str, tmp_path: Path) -> None:
    campaign(pg_url, 3000).close()
    target = FileTarget(str(tmp_path / "points.lp"))
    db = Store.open(pg_url)
    with SPAWN.Pool(8) as pool:
        pending = pool.starmap_async(_writer, [(w, pg_url, 5.0) for w in range(8)])
        while not pending.ready():
            export(db, target)
        assert sum(pending.get()) > 0
    export(db, target)
    lines = [line for line in (tmp_path / "points.lp").read_text().splitlines() if line]
    with Store.open(pg_url) as store:
        rows = store.history(limit=None)
    assert len(lines) == len(rows)
    assert len(set(lines)) == len(lines)
    db.close()
