"""Core store benchmarks: validated + audited transitions through the public API against the raw floor.

Each figure is measured side by side, in one run, with the same SQL done by raw ``sqlite3`` and no
validation (the floor), on a local-disk SQLite file with the store's discipline (WAL,
``synchronous=NORMAL``, ``BEGIN IMMEDIATE``). API and floor alternate, ``REPEATS`` times, and each keeps
its best round, so that other load on the machine hits both alike.

1. single transitions/s: ``set_job_status`` cycling idle -> running -> failed -> idle (max retries high),
   one transaction each: resolve campaign and task, read the job, check the table and the retry guard,
   compare-and-set, audit row and (on failed) its instance's completion check.
   Floor: BEGIN IMMEDIATE, SELECT status and version, UPDATE ... WHERE version, INSERT audit, COMMIT (the audit
   row in the store's layout: ``audit_log`` with ``string`` ids resolved before timing, integer times).
   Beside them: the lean prototype of bench/lean_tx.py (the same work as the API on a raw connection), and
   what an empty write transaction costs through ``Database.tx`` and by hand (the API's set-up overhead).
2. bulk jobs/s: ``update_jobs`` on 10,000 jobs (100 runs x 100 jobs) idle <-> running, one transaction;
   then running -> done, which also completes the 100 instances. Floor: one transaction with the SELECT,
   an ``executemany`` UPDATE and an ``executemany`` audit INSERT.
3. 8 concurrent claimer processes (``claim(limit=1)`` until nothing is left): claims/s, latency, double
   claims (must be 0). Floor: the same claim SQL (eligible SELECT LIMIT 1, UPDATE, audit INSERT in one
   BEGIN IMMEDIATE) in 8 raw processes. Twice: on the machine as found, and with ``BURNERS`` CPU-bound
   processes beside (a busy machine: the p99 latency ratio depends on it most).

``run()`` returns rows {name, value, unit, anchor, ratio}; ``python -m bench.core`` prints them.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import event

from ecalstate import JobUpdate, Store
from ecalstate.auditlog import vocab_id
from ecalstate.base import AUDIT_SQL
from ecalstate.claims import ELIGIBLE_SQL
from ecalstate.clock import from_micros

from .common import best, cpu_burners, job_campaign, now_micros, parallel, row, text_ids, timed
from .lean_tx import sqlite_transition

C = "bench"  # the campaign bench.common.job_campaign creates
CYCLE = ("running", "failed", "idle")
#: transitions per round (a multiple of the cycle: each round starts from idle), and rounds: short ones, many,
#: alternating, the best of each kept (on a loaded machine long rounds measure the other load)
SINGLE, SINGLE_ROUNDS = 600, 15
BULK_RUNS, BULK_JOBS = 100, 100
CLAIMERS, CLAIM_RUNS = 8, 2000
#: CPU-bound processes beside the claimers for the "busy machine" figures (the machine has 2 cores)
BURNERS = 2
#: the audit texts the floors write (``string`` ids resolved once, before timing)
TEXTS = ("reco", "bench", "", "claimed by submit")
#: the floor's compare-and-set
UPDATE_SQL = "UPDATE job SET status = ?, version = version + 1, updated_at = ? WHERE id = ? AND version = ?"


def raw_connection(path: str) -> sqlite3.Connection:
    """The floor's connection: the store's pragmas, transactions issued by hand."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=10)
    for pragma in ("busy_timeout=10000", "foreign_keys=ON", "journal_mode=WAL", "synchronous=NORMAL"):
        conn.execute(f"PRAGMA {pragma}")
    return conn


def prepared(folder: str, name: str, runs: int, jobs: int, retries: int) -> str:
    """A database with ``runs`` runs of task ``reco`` (``jobs`` idle jobs each, claimed when > 0)."""
    path = os.path.join(folder, name)
    job_campaign(path, runs, jobs)
    with Store.open(path) as store:
        store.update_task(C, "reco", max_retries=retries)
    return path


def audit_values(ids: dict[str, int], now: int, job: tuple[Any, ...], src: str, dst: str) -> tuple[Any, ...]:
    """An audit row for job (pk, instance id, run, jid, generation), as the store writes it (``ids``: of TEXTS)."""
    pk, iid, run, jid, gen = job
    return (now, 1, vocab_id("job"), iid, pk, ids["reco"], run, jid, gen, vocab_id(src), vocab_id(dst), ids["bench"],
            ids[""], ids[""], None, None)


# --- 1. single transitions -----------------------------------------------------------------------------

def single(folder: str) -> dict[str, float]:
    """Transitions/s: ``api``, ``floor``, ``lean`` (bench/lean_tx.py on a raw connection); and transactions/s
    of an empty write transaction through ``Database.tx`` (``setup``: the thread's connection, begin, commit)
    and by hand (``raw_setup``). Run 1 has jobs 0 and 1, job 1 stays idle so nothing completes."""
    store = Store.open(prepared(folder, "single.db", runs=1, jobs=2, retries=10**9), actor="bench")
    raw_path, lean_path = (prepared(folder, name, runs=1, jobs=2, retries=10**9)
                           for name in ("single-raw.db", "single-lean.db"))
    ids, lean_ids = text_ids(raw_path, TEXTS), text_ids(lean_path, TEXTS)
    conn, lean_conn = raw_connection(raw_path), raw_connection(lean_path)
    job = conn.execute("SELECT id, instance_id, 1, jid, generation FROM job WHERE jid = 0").fetchone()

    def api() -> float:
        return timed(SINGLE, lambda: [store.set_job_status(C, "reco", 1, 0, CYCLE[i % 3]) for i in range(SINGLE)])

    def lean() -> float:
        return timed(SINGLE, lambda: [sqlite_transition(lean_conn, lean_ids, C, "reco", 1, 0, CYCLE[i % 3],
                                                        "bench")
                                      for i in range(SINGLE)])

    def floor_loop() -> None:
        for i in range(SINGLE):
            conn.execute("BEGIN IMMEDIATE")
            status, version = conn.execute("SELECT status, version FROM job WHERE id = ?", (job[0],)).fetchone()
            now = now_micros()
            conn.execute(UPDATE_SQL, (CYCLE[i % 3], now, job[0], version))
            conn.execute(AUDIT_SQL, audit_values(ids, now, job, status, CYCLE[i % 3]))
            conn.execute("COMMIT")

    def setup_loop() -> None:
        for _ in range(SINGLE):
            with store.db.tx(write=True):
                pass

    def raw_setup_loop() -> None:
        for _ in range(SINGLE):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("COMMIT")

    try:
        rates = best([api, lambda: timed(SINGLE, floor_loop), lean, lambda: timed(SINGLE, setup_loop),
                      lambda: timed(SINGLE, raw_setup_loop)], SINGLE_ROUNDS)
    finally:
        store.close()
        conn.close()
        lean_conn.close()
    return dict(zip(("api", "floor", "lean", "setup", "raw_setup"), rates))


# --- 2. bulk job updates ---------------------------------------------------------------------------------

def bulk(folder: str) -> tuple[float, float, float]:
    """(API idle <-> running, API running -> done with completion, floor) jobs/s."""
    count = BULK_RUNS * BULK_JOBS
    store = Store.open(prepared(folder, "bulk.db", BULK_RUNS, BULK_JOBS, retries=3), actor="bench")
    raw_path = prepared(folder, "bulk-raw.db", BULK_RUNS, BULK_JOBS, retries=3)
    ids = text_ids(raw_path, TEXTS)
    conn = raw_connection(raw_path)
    flips = {"api": "idle", "floor": "idle"}

    def flip(side: str) -> str:
        flips[side] = "running" if flips[side] == "idle" else "idle"
        return flips[side]

    def api() -> float:
        target = flip("api")
        updates = [JobUpdate(r, j, target) for r in range(1, BULK_RUNS + 1) for j in range(BULK_JOBS)]
        return timed(count, lambda: store.update_jobs(C, "reco", updates))

    def floor_once() -> None:
        target = flip("floor")
        conn.execute("BEGIN IMMEDIATE")
        rows = conn.execute("SELECT j.id, j.instance_id, r.run_number, j.jid, j.generation, j.status, j.version"
                            " FROM job j JOIN task_instance ti ON ti.id = j.instance_id"
                            " JOIN run r ON r.id = ti.run_id").fetchall()
        now = now_micros()
        conn.executemany(UPDATE_SQL, [(target, now, r[0], r[6]) for r in rows])
        conn.executemany(AUDIT_SQL, [audit_values(ids, now, r[:5], r[5], target) for r in rows])
        conn.execute("COMMIT")

    try:
        rate_api, rate_floor = best([api, lambda: timed(count, floor_once)])
        if flips["api"] == "idle":
            api()
        done = [JobUpdate(r, j, "done") for r in range(1, BULK_RUNS + 1) for j in range(BULK_JOBS)]
        rate_done = timed(count, lambda: store.update_jobs(C, "reco", done))
        assert {r["status"] for r in store.list_runs(C, task="reco")} == {"done"}
    finally:
        store.close()
        conn.close()
    return rate_api, rate_done, rate_floor


# --- 3. concurrent claimers ----------------------------------------------------------------------------------

def claimer(path: str, raw: bool, start: Any) -> tuple[tuple[list[tuple[int, int]], list[float]], float]:
    """Claim one run at a time until none is left: ((runs and generations claimed, latencies), finished at)."""
    claimed: list[tuple[int, int]] = []
    latencies: list[float] = []
    ids = text_ids(path, TEXTS) if raw else {}
    conn = raw_connection(path) if raw else None
    store = None if raw else Store.open(path, actor=f"claimer-{os.getpid()}")
    start.wait()
    while True:
        t0 = time.perf_counter()
        got = raw_claim(conn, ids) if conn is not None else [
            (c.run_number, c.generation) for c in store.claim(C, "reco", limit=1)]  # type: ignore[union-attr]
        if not got:
            break
        latencies.append(time.perf_counter() - t0)
        claimed += got
    return (claimed, latencies), time.time()


def raw_claim(conn: sqlite3.Connection, ids: dict[str, int]) -> list[tuple[int, int]]:
    """The claim's SQL without the API (``ids``: of TEXTS)."""
    conn.execute("BEGIN IMMEDIATE")
    found = conn.execute(ELIGIBLE_SQL.format(order="") + " LIMIT 1", (1, 1)).fetchone()
    if found is not None:
        iid, run, _, status, version, gen, _, _ = found
        now = now_micros()
        conn.execute("UPDATE task_instance SET status = 'processing', version = version + 1, generation = ?,"
                     " updated_at = ? WHERE id = ? AND version = ?", (gen + 1, from_micros(now), iid, version))
        conn.execute(AUDIT_SQL, (now, 1, vocab_id("task"), iid, None, ids["reco"], run, None, gen + 1,
                                 vocab_id(status), vocab_id("processing"), ids["bench"], ids[""],
                                 ids["claimed by submit"], None, None))
    conn.execute("COMMIT")
    return [] if found is None else [(run, gen + 1)]


def claims(folder: str, raw: bool, load: str) -> tuple[float, float, float, int]:
    """(claims/s, p50 latency ms, p99 latency ms, double claims) with ``CLAIMERS`` processes."""
    path = prepared(folder, f"claims-{'raw' if raw else 'api'}-{load}.db", CLAIM_RUNS, 0, retries=3)
    results, elapsed = parallel(CLAIMERS, claimer, [(path, raw)] * CLAIMERS)
    claimed = [c for got, _ in results for c in got]
    latencies = sorted(lat for _, lats in results for lat in lats)
    with sqlite3.connect(path) as conn:
        doubled = conn.execute("SELECT COUNT(*) FROM (SELECT 1 FROM audit WHERE to_status = 'processing'"
                               " GROUP BY instance_id, generation HAVING COUNT(*) > 1)").fetchone()[0]
    assert len(set(claimed)) == CLAIM_RUNS, f"{len(set(claimed))} of {CLAIM_RUNS} runs claimed"
    p99 = latencies[int(len(latencies) * 0.99)]
    return len(claimed) / elapsed, statistics.median(latencies) * 1000, p99 * 1000, len(claimed) - CLAIM_RUNS + doubled


def lock_holder(holds: list[float]) -> Callable[[str], None]:
    """A SQLite trace callback recording how long each write transaction holds the lock (BEGIN IMMEDIATE to its
    COMMIT or ROLLBACK)."""
    began: list[float] = []

    def trace(sql: str) -> None:
        verb = sql.lstrip()[:15].upper()
        if verb.startswith("BEGIN IMMEDIATE"):
            began[:] = [time.perf_counter()]
        elif verb.startswith(("COMMIT", "ROLLBACK")) and began:
            holds.append(time.perf_counter() - began.pop())
    return trace


def lock_held(folder: str) -> tuple[float, float]:
    """Median microseconds one claim holds the write lock, one process claiming every run: (raw, API). What the
    other claimers wait for, and what sends them deeper into the busy handler's back-off."""
    raw_holds: list[float] = []
    api_holds: list[float] = []
    raw_path = prepared(folder, "hold-raw.db", CLAIM_RUNS // 4, 0, retries=3)
    ids = text_ids(raw_path, TEXTS)
    conn = raw_connection(raw_path)
    conn.set_trace_callback(lock_holder(raw_holds))
    while raw_claim(conn, ids):
        pass
    conn.close()
    with Store.open(prepared(folder, "hold-api.db", CLAIM_RUNS // 4, 0, retries=3), actor="bench") as store:
        event.listen(store.db.engine, "connect", lambda dbapi, _record: dbapi.set_trace_callback(
            lock_holder(api_holds)))
        store.db.close()  # new connections, traced
        while store.claim(C, "reco", limit=1):
            pass
    return statistics.median(raw_holds) * 1e6, statistics.median(api_holds) * 1e6


def claim_rows(folder: str, load: str) -> list[dict[str, Any]]:
    """Raw and API claimers side by side, under ``load`` (the label of the machine's state)."""
    raw_rate, raw_p50, raw_p99, raw_doubles = claims(folder, True, load)
    api_rate, api_p50, api_p99, api_doubles = claims(folder, False, load)
    label = f"{CLAIMERS} claimer processes ({load}):"
    claim_floor = row(f"{label} raw sqlite3 (floor)", raw_rate, "claims/s")
    p50_floor = row(f"{label} claim latency p50, raw sqlite3", raw_p50, "ms")
    p99_floor = row(f"{label} claim latency p99, raw sqlite3", raw_p99, "ms")
    return [claim_floor, row(f"{label} Store.claim", api_rate, "claims/s", claim_floor),
            p50_floor, row(f"{label} claim latency p50, Store.claim", api_p50, "ms", p50_floor),
            p99_floor, row(f"{label} claim latency p99, Store.claim", api_p99, "ms", p99_floor),
            row(f"{label} double claims, raw sqlite3", raw_doubles, "claims"),
            row(f"{label} double claims, Store.claim (must be 0)", api_doubles, "claims")]


def run() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="ecalstate-bench-", dir=os.environ.get("ECALSTATE_BENCH_DIR")) as folder:
        rates = single(folder)
        floor = row("single transition: raw sqlite3, no validation (floor)", rates["floor"], "transitions/s")
        api = row("single transition: Store.set_job_status", rates["api"], "transitions/s", floor)
        cost = row("single transition: Store.set_job_status, time each", 1e6 / rates["api"], "us")
        rows = [floor, api,
                row("single transition: lean prototype (bench/lean_tx.py: raw connection, one read)", rates["lean"],
                    "transitions/s", floor),
                cost,
                row("of which an empty write transaction through Database.tx (thread's connection, begin, commit)",
                    1e6 / rates["setup"], "us", cost),
                row("of which an empty write transaction by hand (BEGIN IMMEDIATE, COMMIT)", 1e6 / rates["raw_setup"],
                    "us", cost)]
        flip, done, bulk_floor_rate = bulk(folder)
        bulk_floor = row("bulk job update: raw sqlite3 executemany, 10,000 jobs (floor)", bulk_floor_rate, "jobs/s")
        rows += [bulk_floor,
                 row("bulk job update: Store.update_jobs, 10,000 jobs idle <-> running", flip, "jobs/s", bulk_floor),
                 row("bulk job update: Store.update_jobs, 10,000 jobs -> done, 100 instances completed", done,
                     "jobs/s", bulk_floor)]
        raw_hold, api_hold = lock_held(folder)
        hold = row("claim, 1 process: write lock held per claim (median), raw sqlite3", raw_hold, "us")
        rows += [hold, row("claim, 1 process: write lock held per claim (median), Store.claim", api_hold, "us", hold)]
        for load, burners in (("machine as found", 0), (f"{BURNERS} CPU burners beside", BURNERS)):
            with cpu_burners(burners):
                rows += claim_rows(folder, load)
    return rows


def main() -> None:
    rows = run()
    width = max(len(r["name"]) for r in rows)
    print(f"{'benchmark':<{width}}  {'value':>10}  {'unit':<14} ratio to anchor")
    for r in rows:
        ratio = "" if r["ratio"] is None else f"x{r['ratio']:g} of {r['anchor']}"
        print(f"{r['name']:<{width}}  {r['value']:>10,.1f}  {r['unit']:<14} {ratio}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
