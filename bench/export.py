"""Export benchmarks against the real InfluxDB 1.6.7 (started here from scripts/servers.py).

1. Full export of ~250,000 points (a campaign driven through the Store API: injections, claims,
   jobs created with an output path, running, done with a number of events: status points plus the
   user-field points of job_text and job_number) in batches of 5,000, against the original's pattern of one write
   request per status change (a sample of 2,000 single-point writes of the same lines on a keep-alive
   connection, extrapolated).
2. Incremental export of 1,000 changes on a database of 1,000,000 audit rows against the same
   1,000 changes on a database of 1,000 rows: the cost must follow the changes, not the database.

``run()`` returns rows {name, value, unit, anchor, ratio}: ``ratio`` is value / the value of the row
named by ``anchor``. ``python -m bench.export`` prints them as a table.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ecalstate import JobUpdate, RunSpec, Store
from ecalstate.export import V1Target, export, read_batch

from .common import row, servers

TASKS = [f"t{i:02d}" for i in range(20)]


def campaign(store: Store, runs: int, tasks: list[str], jobs: int) -> None:
    """``runs`` x ``tasks`` instances; each claimed and run through ``jobs`` jobs idle -> running -> done."""
    store.create_campaign("bench")
    for task in tasks:
        store.add_task("bench", task)
    store.update_rtype("bench", "all", add=tasks)
    for start in range(0, runs, 5000):
        store.inject_runs("bench", [RunSpec(100000 + n, n // 10) for n in range(start, min(runs, start + 5000))])
    if not jobs:
        return
    for task in tasks:
        claims = store.claim("bench", task)
        for claim in claims:
            store.create_jobs("bench", task, claim.run_number, list(range(jobs)),
                              [{"output": f"/eos/bench/{task}/{claim.run_number}_{j}.root"} for j in range(jobs)])
        for status in ("running", "done"):
            fields = {"nevents": 1000} if status == "done" else None
            store.update_jobs("bench", task, [JobUpdate(c.run_number, j, status, fields) for c in claims
                                              for j in range(jobs)])


def audit_rows(store: Store) -> int:
    with store.db.tx(write=False) as tx:
        return int(tx.scalar("SELECT COUNT(*) FROM audit"))


def full_export(influx: Any, workdir: Path) -> list[dict[str, Any]]:
    with Store.open(str(workdir / "full.db"), actor="bench", create=True) as store:
        campaign(store, runs=1000, tasks=TASKS[:10], jobs=6)
        influx.create_database("full")
        target = V1Target(influx.url, "full")
        t0 = time.perf_counter()
        result = export(store, target)
        batched = time.perf_counter() - t0
        target.close()
        points = result.points
        assert result.refused == 0 and points > audit_rows(store)

        lines = [text for _, text in read_batch(store.db, 0, result.cursor_after, 2000)[0]][:2000]
        influx.create_database("single")
        one_request_each = V1Target(influx.url, "single")
        t0 = time.perf_counter()
        for text in lines:
            one_request_each.send(text.encode())
        one_by_one = time.perf_counter() - t0
        one_request_each.close()
    single_rate = len(lines) / one_by_one
    single = row("one write request per point (original pattern; 2,000-point sample)", single_rate, "points/s")
    return [
        single,
        row(f"full export, {points:,} points, batches of 5,000", points / batched, "points/s", single),
        row(f"full export, {points:,} points: time (one request per point: {points / single_rate:,.0f} s)",
            batched, "s"),
    ]


def incremental(influx: Any, workdir: Path, rounds: int = 5) -> list[dict[str, Any]]:
    """1,000 changes (50 claims on each of 20 tasks), exported to InfluxDB after the cursor; the
    median of ``rounds`` after one warm-up round. Also the database side alone (read and format)."""
    timings: dict[str, float] = {}
    reads: dict[str, float] = {}
    sizes: dict[str, int] = {}
    for label, runs in (("small", 50 * (rounds + 2)), ("large", 50_000)):
        with Store.open(str(workdir / f"{label}.db"), actor="bench", create=True) as store:
            campaign(store, runs=runs, tasks=TASKS, jobs=0)
            sizes[label] = audit_rows(store)
            database = f"inc_{label}"
            influx.create_database(database)
            target = V1Target(influx.url, database)
            # the database was exported before: the cursor sits at its end (setting it is bench set-up)
            store.set_cursor(target.name, sizes[label])
            samples, read_samples = [], []
            for _ in range(rounds + 1):
                for task in TASKS:
                    store.claim("bench", task, limit=50)
                t0 = time.perf_counter()
                result = export(store, target)
                samples.append(time.perf_counter() - t0)
                assert result.points == 1000, result
                t0 = time.perf_counter()
                read_batch(store.db, result.cursor_before, result.cursor_after, 5000)
                read_samples.append(time.perf_counter() - t0)
            assert store.cursor(target.name) == sizes[label] + (rounds + 1) * 1000
            target.close()
            timings[label] = statistics.median(samples[1:]) * 1000
            reads[label] = statistics.median(read_samples[1:]) * 1000
    small = row(f"incremental export of 1,000 changes, database of {sizes['small']:,} audit rows",
                timings["small"], "ms")
    small_read = row(f"reading and formatting 1,000 changes, database of {sizes['small']:,} audit rows",
                     reads["small"], "ms")
    return [
        small,
        row(f"incremental export of 1,000 changes, database of {sizes['large']:,} audit rows", timings["large"],
            "ms", small),
        small_read,
        row(f"reading and formatting 1,000 changes, database of {sizes['large']:,} audit rows", reads["large"],
            "ms", small_read),
    ]


def run() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="ecalstate-bench-") as tmp, servers().InfluxServer() as influx:
        workdir = Path(tmp)
        return full_export(influx, workdir) + incremental(influx, workdir)


def main() -> int:
    rows = run()
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        ratio = "" if r["ratio"] is None else f"  x{r['ratio']} vs {r['anchor']}"
        print(f"{r['name']:<{width}}  {r['value']:>12,.1f} {r['unit']}{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
