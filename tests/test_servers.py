"""Smoke tests: every server fixture of tests/servers_plugin.py really works (real servers, no fakes)."""
from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import requests


def test_influx_write_and_influxql_read_back(influx: Any) -> None:
    db = "smoke_" + uuid.uuid4().hex[:8]
    influx.create_database(db)
    r = requests.post(f"{influx.url}/write", params={"db": db},
                      data="task_state,task=t1,state=done count=3i 1700000000000000000")
    assert r.status_code == 204, r.text
    body = influx.query('SELECT "count", "state" FROM task_state WHERE task = \'t1\'', db=db)
    series = body["results"][0]["series"][0]
    assert series["name"] == "task_state"
    row = dict(zip(series["columns"], series["values"][0]))
    assert row["count"] == 3 and row["state"] == "done"
    assert row["time"] == "2023-11-14T22:13:20Z"


def test_victoria_v2_write_and_export(victoria: Any) -> None:
    from influxdb_client import InfluxDBClient, Point
    from influxdb_client.client.write_api import SYNCHRONOUS

    job_id = uuid.uuid4().hex[:8]
    with InfluxDBClient(url=victoria.url, token="unused", org="unused") as client:
        client.write_api(write_options=SYNCHRONOUS).write(
            bucket="smoke", record=Point("smokejob").tag("job_id", job_id).field("runtime_s", 1.5))
    victoria.force_flush()
    rows = victoria.export(f'{{__name__="smokejob_runtime_s",job_id="{job_id}"}}')
    assert len(rows) == 1, rows
    assert rows[0]["metric"]["job_id"] == job_id
    assert rows[0]["values"] == [1.5]


def test_postgres_select_1(pg_url: str) -> None:
    import sqlalchemy as sa

    assert pg_url.startswith("postgresql+psycopg://")
    engine = sa.create_engine(pg_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("select 1")).scalar() == 1
            assert conn.execute(sa.text("select current_database()")).scalar() == pg_url.rsplit("/", 1)[1]
    finally:
        engine.dispose()


def test_pg_url_gives_a_fresh_database_each_time(postgres: Any, pg_url: str) -> None:
    assert pg_url != postgres.url
    assert postgres.url.endswith("/postgres")


def test_condor_pool_runs_jobs_and_reports_exit_codes(condor_pool: Any) -> None:
    import htcondor2 as htcondor

    jobdir: Path = condor_pool.make_jobdir("smoke-")
    script = jobdir / "exit_with.sh"
    script.write_text("#!/bin/sh\necho \"running as $(id -un) with $1\"\nexit \"$1\"\n")
    script.chmod(0o755)
    schedd = htcondor.Schedd()
    clusters = {}
    for code in (0, 3):
        sub = htcondor.Submit({
            "executable": str(script),
            "arguments": str(code),
            "initialdir": str(jobdir),  # default is the submitter's cwd, which does not exist in the chroot
            "output": f"{jobdir}/job{code}.out",
            "error": f"{jobdir}/job{code}.err",
            "log": f"{jobdir}/jobs.log",
            "request_cpus": "1",
            "request_memory": "64MB",
            "should_transfer_files": "NO",
        })
        clusters[code] = schedd.submit(sub, count=1).cluster()
    constraint = " || ".join(f"ClusterId == {c}" for c in clusters.values())

    deadline = time.monotonic() + 60
    while ads := schedd.query(constraint=constraint, projection=["ClusterId", "JobStatus", "HoldReason"]):
        held = [dict(ad) for ad in ads if ad.get("JobStatus") == 5]
        assert not held, f"held jobs: {held}"
        assert time.monotonic() < deadline, f"jobs still queued after 60 s: {[dict(ad) for ad in ads]}"
        time.sleep(0.3)

    exit_codes: dict[int, int] = {}
    deadline = time.monotonic() + 20   # history is written when the job leaves the queue; allow a moment
    while len(exit_codes) < 2 and time.monotonic() < deadline:
        for ad in schedd.history(constraint=constraint, projection=["ClusterId", "ExitCode", "JobStatus"]):
            exit_codes[int(ad["ClusterId"])] = int(ad["ExitCode"])
        if len(exit_codes) < 2:
            time.sleep(0.3)
    assert exit_codes == {clusters[0]: 0, clusters[3]: 3}
    assert (jobdir / "job3.out").read_text().strip() == "running as htcjob with 3"


def test_tools_are_installed(groovy_lint: str, chromium: str) -> None:
    assert Path(groovy_lint).exists()
    assert Path(chromium).exists()
