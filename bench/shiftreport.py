"""The shift report on a simulated year (issue 23 item 2): how long it takes and how long it is.

``python -m bench.shiftreport [--runs N]``. The year is bench/simulate.py's (``runs`` runs x 20 tasks x 50 jobs, every
instance done, one in twenty reprocessed), followed by a day of trouble written through the store's API so that
every section has hundreds to thousands of items: 2,000 more runs whose first task is claimed by one build (jobs made in the
claim, as a handler does) that submits none of them, half submitted by the next build; every one of those jobs
failing until no retry is left (2,000 failed instances); 200 operator skips of them (each with its cascade to
19 tasks) and 2,000 failing heartbeats. Then ``ecalstate report shift`` (the library call and the text
rendering, as the command runs them) over the whole year and over the last 8 hours: its wall time, its lines and
the totals it counted. Each section is capped at its default 20 items.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from bench.common import row
from bench.simulate import simulate
from ecalstate import JobUpdate, RunSpec, Store
from ecalstate.cli.report import render_shift
from ecalstate.clock import TS_FORMAT
from ecalstate.results import BatchRecord
from ecalstate.shiftreport import shift_report

TASKS, JOBS = 20, 50
TROUBLE = 2_000
#: operator skips (one call each, as a shifter types them; each cascades to the 19 downstream tasks)
SKIPS = 200
C = "prompt"


def trouble(path: str, runs: int) -> None:
    """The day of trouble after the year (see the module)."""
    first = 380_000 + runs + 1
    numbers = list(range(first, first + TROUBLE))
    with Store.open(path, actor="oms-sync") as store:
        store.inject_runs(C, [RunSpec(r, 9_500 + i // 8, {"class": "Collisions"}) for i, r in enumerate(numbers)])
    with Store.open(path, actor="jenkins-41") as store:
        store.claim(C, "t00", jobs=lambda claim: [(0, {})])
    with Store.open(path, actor="jenkins-42") as store:
        for run in numbers[::2]:
            store.record_batch_ids(C, "t00", run, 1, [BatchRecord(0, 1, f"local:{run}", {"logs": f"/w/{run}"})])
        for attempt in range(4):  # max retries 3: the fourth failure is for good
            store.update_jobs(C, "t00", [JobUpdate(r, 0, "failed", reason=f"exit 3: attempt {attempt + 1} of {r}")
                                         for r in numbers])
            if attempt < 3:
                store.update_jobs(C, "t00", [JobUpdate(r, 0, "idle", reason="resubmitted") for r in numbers])
        for i in range(TROUBLE):
            store.heartbeat(C, "t00", "check", False, f"check: schedd unreachable ({i})")
    with Store.open(path, actor="alice") as store:
        for run in numbers[:SKIPS]:
            store.set_status(C, "t00", [run], "skipped", reason=f"bad DQ of run {run}")


def measure(path: str, since: str) -> tuple[float, int, dict[str, int]]:
    """Seconds to gather and render the report from ``since``, its lines, and the totals of its sections."""
    with Store.open(path, read_only=True) as store:
        start = time.perf_counter()
        found = shift_report(store, C, since)
        text = render_shift(found)
        seconds = time.perf_counter() - start
    totals = {name: getattr(found, name).total for name in ("runs", "processed", "failures", "blocked", "actions",
                                                           "stages", "needs_action")}
    return seconds, len(text.splitlines()), totals


def run(runs: int = 2000) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="ecalstate-shift-", dir=os.environ.get("ECALSTATE_BENCH_DIR")) as tmp:
        path = os.path.join(tmp, "year.db")
        simulate(path, runs, TASKS, JOBS)
        trouble(path, runs)
        with Store.open(path, read_only=True) as store, store.db.tx(write=False) as tx:
            audit = int(tx.scalar("SELECT COUNT(*) FROM audit_log"))
        eight = (datetime.now(timezone.utc) - timedelta(hours=8)).strftime(TS_FORMAT)
        label = f"report shift on a simulated year ({runs:,} runs x {TASKS} tasks, {audit:,} audit rows) + a day of" \
                " trouble"
        out = []
        for name, since in (("the whole year", "2024-12-01T00:00:00.000000Z"), ("the last 8 h", eight)):
            best = min((measure(path, since) for _ in range(3)), key=lambda m: m[0])
            seconds, lines, totals = best
            said = ", ".join(f"{k} {v:,}" for k, v in totals.items())
            out += [row(f"{label}, {name}: wall time (library + text)", seconds, "s", note=said),
                    row(f"{label}, {name}: lines printed", lines, "lines", note=said)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2000, help="runs of the simulated year (a full year: 2000)")
    for figure in run(parser.parse_args().runs):
        print(f"{figure['name']}: {figure['value']:.2f} {figure['unit']} ({figure.get('note', '')})")


if __name__ == "__main__":
    main()
