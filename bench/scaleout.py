"""Scale-out figures: SQLite against PostgreSQL, 1 against 8 processes, big databases.

0. One validated job transition at a time on PostgreSQL: ``Store.set_job_status``, the one-statement
   prototype of bench/lean_tx.py, and the raw psycopg floor (SELECT ... FOR UPDATE, UPDATE ... WHERE version,
   INSERT audit_log with ``string`` ids resolved before timing, COMMIT: four round trips and no validation),
   alternating, best of three each.
1. Validated, audited job transitions (``Store.set_job_status``, one transaction each) with 1 and
   8 processes on SQLite and on a real PostgreSQL 15 (started from scripts/servers.py), checked
   afterwards: every job done, one audit row per transition (no lost or doubled update).
2. Claims with 8 concurrent claimers (``claim(limit=1)`` until nothing is left) against 1 claimer;
   double claims counted (must be 0).
3. ``status`` (the run x task overview) and ``health`` on a database of 1,000,000 jobs, against the
   same 1,000 runs x 20 tasks with one job each.
4. The size of a simulated year (2,000 runs x 20 tasks x 50 jobs, bench/simulate.py: written in schema 5, then
   upgraded by the real migration, whose time is a figure), and after ``prune`` of its first half (everything
   exported) and VACUUM.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from ecalstate import Store
from ecalstate.auditlog import vocab_id
from ecalstate.base import AUDIT_SQL
from ecalstate.retention import prune, stats, vacuum

from .common import (best, job_campaign, job_keys, median_ms, now_micros, parallel, row, servers, split, text_ids,
                     timed, transition_worker)
from .lean_tx import pg_transition
from .simulate import simulate

RUNS, JOBS_PER_RUN = 80, 10      # 800 jobs: 1,600 transitions per measurement
CLAIM_RUNS = 1600


def _check_transitions(url: str, jobs: int) -> int:
    """Lost or doubled updates: jobs not done, plus audit rows beyond one per transition (must be 0)."""
    with Store.open(url) as store, store.db.tx(write=False) as tx:
        not_done = int(tx.scalar("SELECT COUNT(*) FROM job WHERE status <> 'done'"))
        audited = int(tx.scalar("SELECT COUNT(*) FROM audit WHERE entity = 'job'"))
    return not_done + abs(audited - 3 * jobs)


def transitions(engines: dict[str, Callable[[], str]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    first: dict[str, Any] = {}
    for engine, new_url in engines.items():
        one: dict[str, Any] = {}
        for workers in (1, 8):
            url = new_url()
            job_campaign(url, RUNS, JOBS_PER_RUN)
            args = [(url, job_keys(s, JOBS_PER_RUN), ("running", "done")) for s in split(RUNS, workers)]
            applied, seconds = parallel(workers, transition_worker, args)
            anchor = (one or None) if workers == 8 else (first or None)
            result = row(f"validated transitions, {engine}, {workers} proc", sum(applied) / seconds,
                         "transitions/s", anchor)
            one = one or result
            out.append(result)
            out.append(row(f"lost or doubled job updates, {engine}, {workers} proc",
                           _check_transitions(url, RUNS * JOBS_PER_RUN), "updates"))
        first = first or one
    return out


def _claimer(url: str, start: Any) -> tuple[list[int], float]:
    got: list[int] = []
    with Store.open(url, actor="bench") as store:
        start.wait()
        while True:
            claims = store.claim("bench", "reco", limit=1)
            if not claims:
                if not store.eligible("bench", "reco"):
                    break
                continue
            got += [c.run_number for c in claims]
    return got, time.time()


def claims(engines: dict[str, Callable[[], str]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for engine, new_url in engines.items():
        single: dict[str, Any] = {}
        for workers in (1, 8):
            url = new_url()
            job_campaign(url, CLAIM_RUNS, 0)
            got, seconds = parallel(workers, _claimer, [(url,)] * workers)
            taken = Counter(r for runs in got for r in runs)
            result = row(f"claims, {engine}, {workers} concurrent claimer(s)", sum(taken.values()) / seconds,
                         "claims/s", single or None)
            single = single or result
            out.append(result)
            out.append(row(f"double claims, {engine}, {workers} claimer(s) ({len(taken)} of {CLAIM_RUNS} runs)",
                           sum(n - 1 for n in taken.values()) + CLAIM_RUNS - len(taken), "claims"))
    return out


def big_status(tmp: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    small, big = os.path.join(tmp, "small.db"), os.path.join(tmp, "million.db")
    simulate(small, 1000, 20, 1)
    simulate(big, 1000, 20, 50)
    with Store.open(small) as s_store, Store.open(big) as b_store:
        jobs = stats(b_store.db).rows["job"]
        for what, call in (("status", lambda s: s.overview("prompt")), ("health", lambda s: s.health("prompt"))):
            anchor = row(f"{what}, 1,000 runs x 20 tasks, 1 job each (SQLite)", median_ms(lambda: call(s_store)), "ms")
            out += [anchor, row(f"{what}, 1,000 runs x 20 tasks, {jobs:,} jobs (SQLite)",
                                median_ms(lambda: call(b_store)), "ms", anchor)]
    return out


def year(tmp: str) -> list[dict[str, Any]]:
    path = os.path.join(tmp, "year.db")
    t0 = time.perf_counter()
    migration = simulate(path, 2000, 20, 50)
    built = time.perf_counter() - t0
    with Store.open(path) as store:
        before = stats(store.db)
        with store.db.tx() as tx:  # everything exported: only age decides
            tx.run("INSERT INTO export_cursor (target, audit_id, updated_at) VALUES ('influx', ?, '')",
                   (before.rows["audit"] * 2,))
        t0 = time.perf_counter()
        pruned = prune(store.db, "2025-07-01")
        pruning = time.perf_counter() - t0
        vacuum(store.db)
        after = stats(store.db)
    size = row(f"database size, simulated year: 2,000 runs x 20 tasks x 50 jobs ({before.rows['job']:,} jobs, "
               f"{before.rows['audit']:,} audit rows; built in {built:.0f} s)", before.size_bytes / 2**20, "MiB")
    return [size, row("migration of the simulated year from schema 5 (ecalstate db upgrade)", migration, "s"),
            row(f"database size after prune --before 2025-07-01 and VACUUM ({pruned.audit:,} audit rows, "
                f"{pruned.jobs:,} jobs removed)", after.size_bytes / 2**20, "MiB", size),
            row("prune of half a simulated year (chunks of 20,000 rows, one transaction each)", pruning, "s")]


#: transitions per round (a multiple of the cycle running -> failed -> idle), and rounds: short rounds, many of
#: them, alternating, the best of each kept (a loaded 2-core machine makes a round trip cost 50-300 us)
PG_SINGLE, PG_ROUNDS = 150, 12
CYCLE = ("running", "failed", "idle")
#: the PostgreSQL floor's compare-and-set and audit row
PG_UPDATE = "UPDATE job SET status = %s, version = version + 1, updated_at = %s WHERE id = %s AND version = %s"
PG_AUDIT = AUDIT_SQL.replace("?", "%s")


def pg_single(url: str) -> list[dict[str, Any]]:
    """One validated transition at a time on PostgreSQL: the API, the one-statement prototype
    (bench/lean_tx.py) and the raw psycopg floor (lock, compare-and-set, audit; no validation), side by side."""
    import psycopg

    job_campaign(url, 3, 1)  # run 1 for the API, 2 for the floor, 3 for the prototype; one job each
    ids = text_ids(url, ("reco", "bench", ""))
    store = Store.open(url, actor="bench")
    store.update_task("bench", "reco", max_retries=10**9)
    raw_url = url.replace("postgresql+psycopg://", "postgresql://")
    floor_conn = psycopg.connect(raw_url)
    lean_conn = psycopg.connect(raw_url)
    pk, iid, gen = one(floor_conn, "SELECT j.id, j.instance_id, j.generation FROM job j JOIN task_instance ti"
                       " ON ti.id = j.instance_id JOIN run r ON r.id = ti.run_id WHERE r.run_number = 2")
    floor_conn.commit()

    def api() -> None:
        for i in range(PG_SINGLE):
            store.set_job_status("bench", "reco", 1, 0, CYCLE[i % 3])

    def floor() -> None:
        for i in range(PG_SINGLE):
            status, version = one(floor_conn, "SELECT status, version FROM job WHERE id = %s FOR UPDATE", (pk,))
            now = now_micros()
            floor_conn.execute(PG_UPDATE, (CYCLE[i % 3], now, pk, version))
            floor_conn.execute(PG_AUDIT, (now, 1, vocab_id("job"), iid, pk, ids["reco"], 2, 0, gen, vocab_id(status),
                                          vocab_id(CYCLE[i % 3]), ids["bench"], ids[""], ids[""], None, None))
            floor_conn.commit()

    def lean() -> None:
        for i in range(PG_SINGLE):
            pg_transition(lean_conn, ids, "bench", "reco", 3, 0, CYCLE[i % 3], "bench")

    try:
        rate_api, rate_floor, rate_lean = best([partial(timed, PG_SINGLE, f) for f in (api, floor, lean)], PG_ROUNDS)
        trips = [round_trips(f) / PG_SINGLE for f in (api, floor, lean)]
    finally:
        store.close()
        floor_conn.close()
        lean_conn.close()
    label = "single transition, PostgreSQL:"
    anchor = row(f"{label} raw psycopg lock + compare-and-set + audit (floor)", rate_floor, "transitions/s")
    trips_anchor = row(f"{label} round trips each, floor", trips[1], "round trips")
    return [anchor, row(f"{label} Store.set_job_status", rate_api, "transitions/s", anchor),
            row(f"{label} one-statement prototype (bench/lean_tx.py)", rate_lean, "transitions/s", anchor),
            trips_anchor, row(f"{label} round trips each, Store.set_job_status", trips[0], "round trips", trips_anchor),
            row(f"{label} round trips each, one-statement prototype", trips[2], "round trips", trips_anchor)]


def one(conn: Any, sql: str, params: Sequence[Any] = ()) -> Any:
    """The row a query must find."""
    found = conn.execute(sql, params).fetchone()
    if found is None:
        raise RuntimeError(f"benchmark set-up: nothing found by {sql}")
    return found


def round_trips(call: Callable[[], Any]) -> int:
    """Requests ``call()`` sends to the server through psycopg: statements, ``executemany`` batches, and per
    commit two (the BEGIN psycopg sends before a transaction's first statement, and the COMMIT)."""
    import psycopg

    count = [0]
    originals = {(psycopg.Cursor, "execute"): 1, (psycopg.Cursor, "executemany"): 1, (psycopg.Connection, "commit"): 2}
    saved = {key: getattr(*key) for key in originals}

    def counting(key: tuple[Any, str]) -> Callable[..., Any]:
        def method(this: Any, *args: Any, **kwargs: Any) -> Any:
            count[0] += originals[key]
            return saved[key](this, *args, **kwargs)
        return method

    for key in originals:
        setattr(*key, counting(key))
    try:
        call()
    finally:
        for key, method in saved.items():
            setattr(*key, method)
    return count[0]


def run() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="ecalstate-bench-scale-") as tmp, servers().PostgresServer() as pg:
        counter = iter(range(1000))
        engines: dict[str, Callable[[], str]] = {
            "SQLite": lambda: os.path.join(tmp, f"s{next(counter)}.db"),
            "PostgreSQL": lambda: pg.create_database(),
        }
        return pg_single(pg.create_database()) + transitions(engines) + claims(engines) + big_status(tmp) + year(tmp)


if __name__ == "__main__":
    for r in run():
        print(r, file=sys.stdout)
