"""The original design, measured: InfluxDB 1.6.7 as the state store, one point per status change.

ecalautoctrl kept job and task states in InfluxDB itself. To change a job's status it had to read
the job's last point (an InfluxQL ``SELECT last(...)`` over HTTP ``/query``), check the change in
Python, and write a new point (HTTP ``/write``): two requests, no transaction between them. Here
that loop runs against a real InfluxDB 1.6.7 (started from scripts/servers.py), side by side with
ecalstate's validated, audited transition (``Store.set_job_status``, one SQLite transaction each)
on the same jobs, with 1 and 8 processes. A third pair counts what the read-then-write race does
when 8 writers move the same jobs: transitions applied more than once.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import requests

from ecalstate import JOB, JobStatus

from .common import job_campaign, job_keys, parallel, row, servers, split, transition_worker

RUNS, JOBS_PER_RUN = 60, 10           # 600 jobs, idle -> running -> done: 1,200 transitions
RACE_RUNS, RACE_JOBS = 20, 5          # 100 jobs moved idle -> running by 8 writers at once
FIELDS = ("idle", "running", "done", "failed")


def _series(run: int, jid: int) -> str:
    return f"job,campaign=bench,id={jid},run_number={run},task=reco"


def _point(run: int, jid: int, status: str) -> str:
    onehot = ",".join(f"{s}={int(s == status)}i" for s in FIELDS)
    return f'{_series(run, jid)} status="{status}",{onehot} {time.time_ns()}'


def _influx_worker(url: str, db: str, jobs: Sequence[tuple[int, int]], targets: Sequence[str],
                   start: Any) -> tuple[int, float]:
    """The original loop: read the last point, validate, write a point. Returns (applied, finished at)."""
    session = requests.Session()
    applied = 0
    start.wait()
    for target in targets:
        for run, jid in jobs:
            query = (f'SELECT last("status") FROM "job" WHERE "task" = \'reco\' AND "run_number" = \'{run}\''
                     f' AND "id" = \'{jid}\'')
            answer = session.get(f"{url}/query", params={"db": db, "q": query}, timeout=30).json()
            current = answer["results"][0]["series"][0]["values"][0][1]
            if not JOB.is_allowed(JobStatus(current), JobStatus(target)):
                continue
            reply = session.post(f"{url}/write", params={"db": db}, data=_point(run, jid, target), timeout=30)
            reply.raise_for_status()
            applied += 1
    return applied, time.time()


def run() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    targets = ("running", "done")
    with tempfile.TemporaryDirectory(prefix="ecalstate-bench-orig-") as tmp, servers().InfluxServer() as influx:
        for workers in (1, 8):
            db = f"orig{workers}"
            influx.create_database(db)
            influx.write([_point(r, j, "idle") for r, j in job_keys(range(1, RUNS + 1), JOBS_PER_RUN)], db=db)
            url = f"{tmp}/store{workers}.db"
            job_campaign(url, RUNS, JOBS_PER_RUN)
            parts = split(RUNS, workers)
            applied, seconds = parallel(workers, _influx_worker,
                                        [(influx.url, db, job_keys(s, JOBS_PER_RUN), targets) for s in parts])
            original = row(f"original design: InfluxDB 1.6.7 read last point + write point, {workers} proc",
                           sum(applied) / seconds, "transitions/s")
            applied, seconds = parallel(workers, transition_worker,
                                        [(url, job_keys(s, JOBS_PER_RUN), targets) for s in parts])
            out += [original, row(f"ecalstate set_job_status (validated, audited), SQLite, {workers} proc",
                                  sum(applied) / seconds, "transitions/s", original)]

        influx.create_database("race")
        race_jobs = job_keys(range(1, RACE_RUNS + 1), RACE_JOBS)
        influx.write([_point(r, j, "idle") for r, j in race_jobs], db="race")
        applied, _ = parallel(8, _influx_worker, [(influx.url, "race", race_jobs, ("running",))] * 8)
        out.append(row("original design: idle->running applied twice or more, 8 writers on the same 100 jobs",
                       sum(applied) - len(race_jobs), "transitions"))
        url = f"{tmp}/race.db"
        job_campaign(url, RACE_RUNS, RACE_JOBS)
        applied, _ = parallel(8, transition_worker, [(url, race_jobs, ("running",))] * 8)
        out.append(row("ecalstate: idle->running applied twice or more, 8 writers on the same 100 jobs",
                       sum(applied) - len(race_jobs), "transitions"))
    return out


if __name__ == "__main__":
    for r in run():
        print(r, file=sys.stdout)
