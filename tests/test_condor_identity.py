"""Who held or removed a job (issue 23, item 7), and when a job started (item 4): the audit records the identity
HTCondor reports for a hold or a removal (a user's command, or the pool itself) and when it happened; a job's start
is the one the schedd recorded. The pool test holds and removes real jobs with the documented tools."""

from __future__ import annotations

import calendar
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from handler_support import Probe, condor_workdir, make_campaign, marker, write_payload

from ecalstate import Store
from ecalstate.backends.htcondor import CondorBackend, observation

C = "prompt"
AT = 1796580116  # 2026-12-06T18:01:56Z


@pytest.mark.parametrize("ad, reason", [
    ({"JobStatus": 5, "HoldReason": "via condor_hold (by user alice)", "HoldReasonCode": 1},
     "held by HTCondor user alice at 2026-12-06T18:01:56Z: via condor_hold"),
    ({"JobStatus": 5, "HoldReason": "disk quota on eos (by user alice)", "HoldReasonCode": 1},
     "held by HTCondor user alice at 2026-12-06T18:01:56Z: disk quota on eos"),
    ({"JobStatus": 5, "HoldReason": "Error from slot1_1@vm: Failed to open 'stdout'", "HoldReasonCode": 14},
     "held by the pool at 2026-12-06T18:01:56Z: Error from slot1_1@vm: Failed to open 'stdout'"),
    ({"JobStatus": 5}, "held by the pool at 2026-12-06T18:01:56Z: no reason given"),
    ({"JobStatus": 3, "RemoveReason": "via condor_rm (by user bob)"},
     "removed by HTCondor user bob at 2026-12-06T18:01:56Z: via condor_rm"),
    ({"JobStatus": 3, "RemoveReason": "via condor_rm (by user bob)", "LastHoldReason": "via condor_hold (by user al)"},
     "removed by HTCondor user bob at 2026-12-06T18:01:56Z: via condor_rm; it was held by HTCondor user al:"
     " via condor_hold"),
    ({"JobStatus": 3, "RemoveReason": "The system macro SYSTEM_PERIODIC_REMOVE expression 'x' evaluated to TRUE"},
     "removed by the pool at 2026-12-06T18:01:56Z: The system macro SYSTEM_PERIODIC_REMOVE expression 'x'"
     " evaluated to TRUE"),
    ({"JobStatus": 3}, "removed by the pool at 2026-12-06T18:01:56Z: no reason given"),
])
def test_holds_and_removals_name_who_did_them_and_when(ad: dict[str, Any], reason: str) -> None:
    seen = observation({"ClusterId": 7, "ProcId": 1, "EnteredCurrentStatus": AT, **ad})
    assert (seen.status, seen.reason, seen.batch_id) == ("failed", reason, "7.1")
    assert observation({"ClusterId": 7, "ProcId": 1, **ad}).reason == reason.replace(" at 2026-12-06T18:01:56Z", "")


def test_a_jobs_start_is_the_one_the_schedd_recorded() -> None:
    ad = {"ClusterId": 7, "ProcId": 1, "JobStartDate": AT - 60}
    assert observation({**ad, "JobStatus": 4, "ExitCode": 0, "JobCurrentStartDate": AT}).started == \
        "2026-12-06T18:01:56.000000Z"
    assert observation({**ad, "JobStatus": 2}).started == "2026-12-06T18:00:56.000000Z"  # the first start
    assert observation({"ClusterId": 7, "ProcId": 1, "JobStatus": 1}).started is None


@pytest.fixture
def workdir(condor_pool: Any) -> Iterator[Path]:
    with condor_workdir(condor_pool, "identity-") as folder:
        yield folder


def tool(pool: Any, name: str, *args: str) -> str:
    """A condor_* command as docs/htcondor.md's walkthrough runs it (the wrappers, the client configuration)."""
    env = {**os.environ, "PATH": f"{pool.bindir}:{os.environ['PATH']}", "CONDOR_CONFIG": str(pool.client_config)}
    done = subprocess.run([name, *args], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_hold_and_a_removal_on_the_pool_name_the_identity_htcondor_reports(
        condor_pool: Any, workdir: Path, sqlite_url: str, tmp_path: Path) -> None:
    store = Store.open(sqlite_url, actor="tester", create=True)
    make_campaign(store, [21], retries=1, meta={"jobs": 3})
    handler = Probe(store, CondorBackend(workdir, template={"request_memory": "64MB"}))
    handler.payload = write_payload(tmp_path / "payload")
    for jid in (0, 1):
        marker(workdir, 21, jid, "hang").touch()  # they run until held or removed
    before = time.time()
    handler.submit(C)
    ids = {j.jid: j.batch_id for j in store.list_jobs(C, "probe", run=21)}
    deadline = time.monotonic() + 120
    while tool(condor_pool, "condor_q", ids[0].split(".")[0], "-af", "JobStatus").split().count("2") < 2:
        # jobs 0 and 1 running (job 2 may have finished)
        assert time.monotonic() < deadline, "the pool did not start the jobs"
        time.sleep(0.5)
    tool(condor_pool, "condor_hold", ids[0])
    tool(condor_pool, "condor_rm", ids[1])
    acted = time.time()
    deadline = time.monotonic() + 120
    while True:
        handler.check(C)
        jobs = {j.jid: j for j in store.list_jobs(C, "probe", run=21)}
        if all(j.status in ("done", "failed") for j in jobs.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    reasons = {a.jid: a.reason for a in store.history(C, task="probe", run=21, limit=None) if a.to_status == "failed"}
    store.close()
    assert [jobs[j].status for j in (0, 1, 2)] == ["failed", "failed", "done"]
    assert reasons[0].startswith("held by HTCondor user htcjob at ") and reasons[0].endswith(": via condor_hold")
    assert reasons[1].startswith("removed by HTCondor user htcjob at ") and reasons[1].endswith(": via condor_rm")
    for jid in (0, 1):
        assert before - 1 <= utc(reasons[jid].split(" at ")[1][:19]) <= acted + 1, reasons[jid]
    for job in jobs.values():  # the schedd's start, whether or not a check saw the job running
        assert job.started and before - 1 <= utc(job.started[:19]) <= acted + 1, job


def utc(text: str) -> float:
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
