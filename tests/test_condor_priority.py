"""HTCondor job priority from deadlines, and a check's schedd queries, on the real personal pool (issue 22).

The pool has one partitionable slot of 2 CPUs; jobs here ask for both, so one runs at a time: the order in which
the schedd starts idle jobs is seen one job at a time. Every client of the test pool is the same HTCondor user, so
other tests' jobs share the queue: the assertions are about these jobs' order only.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from handler_support import Probe, condor_workdir, marker, settle, write_payload

from ecalstate import RunSpec, Store
from ecalstate.backends import JobKey
from ecalstate.backends.htcondor import CONSTRAINT_CHUNK, CondorBackend
from ecalstate.deadlines import LIVE_PRIORITY_BASE, MISSED_PRIORITY, job_priority
from ecalstate.errors import Invalid

WHOLE_SLOT = {"request_cpus": "2", "request_memory": "64MB"}


@pytest.fixture
def workdir(condor_pool: Any) -> Iterator[Path]:
    with condor_workdir(condor_pool, "priority-") as folder:
        yield folder


def ended(hours_ago: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(hours=hours_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def queue(constraint: str, *attrs: str) -> list[dict[str, Any]]:
    import htcondor2

    return [dict(ad) for ad in htcondor2.Schedd().query(constraint=constraint, projection=["EcalRun", *attrs])]


def wait_for(what: str, test: Any, seconds: float = 180) -> Any:
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        found = test()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"waited {seconds} s for {what}")


def test_the_schedd_starts_the_prompt_job_before_the_reprocessing_one(condor_pool: Any, workdir: Path,
                                                                       sqlite_url: str, tmp_path: Path) -> None:
    """A reprocessing campaign's job (no deadline: JobPrio 0) is submitted first, a prompt job with a 48 h deadline
    after it (JobPrio from its deadline); when the slot frees, the schedd starts the prompt job."""
    store = Store.open(sqlite_url, actor="tester", create=True)
    for campaign, run, deadline in (("hold", 1, None), ("rereco", 2, None), ("prompt", 3, 48 * 3600)):
        store.create_campaign(campaign)
        store.add_task(campaign, "probe", deadline=deadline)
        store.update_rtype(campaign, "all", add=["probe"])
        store.inject_runs(campaign, [RunSpec(run, 1, {"jobs": 1, "end_time": ended(1)})])
        marker(workdir, run, 0, "hang").touch()
    handler = Probe(store, CondorBackend(workdir, template=WHOLE_SLOT))
    handler.payload = write_payload(tmp_path / "payload")
    mine = f'regexp("^{workdir}/", Iwd)'
    try:
        handler.submit("hold")  # takes the whole slot and keeps it
        wait_for("the blocking job to run", lambda: [a for a in queue(mine, "JobStatus") if a["JobStatus"] == 2])
        handler.submit("rereco")
        handler.submit("prompt")
        prios = {a["EcalRun"]: a["JobPrio"] for a in queue(mine, "JobPrio")}
        due = next(d for d in store.deadlines("prompt") if d.run_number == 3).deadline
        assert prios == {1: 0, 2: 0, 3: job_priority(due, store.clock())} and prios[3] > LIVE_PRIORITY_BASE // 2
        marker(workdir, 1, 0, "hang").unlink()  # the slot frees: which idle job does the schedd start?
        started = wait_for("a waiting job to start", lambda: [a["EcalRun"] for a in queue(
            mine + " && EcalRun != 1", "JobStatus") if a["JobStatus"] != 1])
        assert started == [3]
        assert [a["JobStatus"] for a in queue(mine + " && EcalRun == 2", "JobStatus")] == [1]  # still idle
    finally:
        for run in (1, 2, 3):
            marker(workdir, run, 0, "hang").unlink(missing_ok=True)
        for campaign in ("hold", "rereco", "prompt"):
            settle(handler, campaign, deadline=120)
    assert all(store.instance(c, "probe", r).status == "done" for c, r in (("hold", 1), ("rereco", 2), ("prompt", 3)))
    store.close()


def test_a_queued_job_whose_deadline_passes_drops_below_the_live_ones(condor_pool: Any, workdir: Path,
                                                                        sqlite_url: str, tmp_path: Path) -> None:
    """JobPrio is set at submission from the instance's deadline; a job still idle when that deadline passes would
    keep a priority above every live deadline's. The next check lowers it to the missed one; a job whose deadline
    is still ahead, and one without a deadline, keep theirs."""
    store = Store.open(sqlite_url, actor="tester", create=True)
    for campaign, run, deadline, end in (("soon", 1, 3600, ended(0.5)), ("later", 2, 48 * 3600, ended(0.5)),
                                         ("none", 3, None, ended(0.5))):
        store.create_campaign(campaign)
        store.add_task(campaign, "probe", deadline=deadline)
        store.update_rtype(campaign, "all", add=["probe"])
        store.inject_runs(campaign, [RunSpec(run, 1, {"jobs": 1, "end_time": end})])
    handler = Probe(store, CondorBackend(workdir, template={"requirements": "False"}))  # they stay idle
    handler.payload = write_payload(tmp_path / "payload")
    mine = f'regexp("^{workdir}/", Iwd)'
    try:
        for campaign in ("soon", "later", "none"):
            handler.submit(campaign)
        before = {a["EcalRun"]: a["JobPrio"] for a in queue(mine, "JobPrio")}
        assert before[1] > before[2] > MISSED_PRIORITY and before[3] == 0
        two_hours = (datetime.now(timezone.utc) + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        store.clock = lambda: two_hours  # type: ignore[method-assign]
        reports = [handler.check(c) for c in ("soon", "later", "none")]
        after = {a["EcalRun"]: a["JobPrio"] for a in queue(mine, "JobPrio")}
        assert after == {1: MISSED_PRIORITY, 2: before[2], 3: 0}
        assert reports[0].counts.get("deadline missed while queued") == 1, reports[0].summary()
        assert "deadline missed while queued" not in reports[1].summary() + reports[2].summary()
    finally:
        import htcondor2

        htcondor2.Schedd().act(htcondor2.JobAction.Remove, mine)
    store.close()


def test_a_template_may_not_set_the_priority(tmp_path: Path) -> None:
    with pytest.raises(Invalid, match="may not set priority"):
        CondorBackend(tmp_path, template={"priority": "10"})


def test_a_check_of_many_queued_jobs_asks_the_queue_once(condor_pool: Any, workdir: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs of 1,000 runs that stay queued (they can never match): observing them asks the schedd's queue once,
    and never its history (they are all in the queue). The bench does 10,000 (docs/performance.md)."""
    import htcondor2

    backend = CondorBackend(workdir)
    schedd = htcondor2.Schedd()
    runs = 1000
    keys = [JobKey(r, 0, 1, 1) for r in range(1, runs + 1)]
    items = [{"run": str(k.run), "dir": str(backend.job_dir("many", "check", k))} for k in keys]
    for item in items:
        Path(item["dir"]).mkdir(parents=True, exist_ok=True)
    schedd.submit(htcondor2.Submit({
        "executable": "/bin/true", "initialdir": "$(dir)", "requirements": "False", "+EcalCampaign": '"many"',
        "+EcalTask": '"check"', "+EcalRun": "$(run)", "+EcalJobId": "0", "+EcalGeneration": "1",
        "+EcalAttempt": "1"}), itemdata=iter(items))
    real = htcondor2.Schedd
    try:
        Counting.calls = []
        monkeypatch.setattr(htcondor2, "Schedd", lambda: Counting(real()))
        seen = backend.observe("many", "check", keys)
        assert len(seen) == runs and {o.status for o in seen.values()} == {"idle"}
        assert Counting.calls == ["query"] and runs > CONSTRAINT_CHUNK
    finally:
        real().act(htcondor2.JobAction.Remove, 'EcalCampaign == "many" && EcalTask == "check"')


class Counting:
    """A schedd whose queue and history queries are counted."""

    calls: list[str] = []

    def __init__(self, schedd: Any) -> None:
        self.schedd = schedd

    def query(self, *args: Any, **kwargs: Any) -> Any:
        Counting.calls.append("query")
        return self.schedd.query(*args, **kwargs)

    def history(self, *args: Any, **kwargs: Any) -> Any:
        Counting.calls.append("history")
        return self.schedd.history(*args, **kwargs)
