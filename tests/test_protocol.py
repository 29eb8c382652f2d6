"""The submission protocol (issue 10, defects 1-6 and the job-report bound of 11), on the local backend.

Each test makes the race or the failure happen at the exact point the issue names, with real parts: a real
SQLite file, a second store connection acting as the other Jenkins build, real job processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

import pytest
from handler_support import Probe, make_campaign, marker, settle, write_payload

from ecalstate import RunSpec, Store
from ecalstate.backends import MAX_REPORT_BYTES, BatchJob, JobKey, NotAccepted
from ecalstate.backends.local import LocalBackend, _alive
from ecalstate.attention import attention, set_policies
from ecalstate.cli.runs import render_health
from ecalstate.clock import TS_FORMAT
from ecalstate.db import DatabaseError
from ecalstate.errors import Conflict
from ecalstate.handler import StageFailed
from ecalstate.results import BatchRecord, JobUpdate

TESTS = Path(__file__).resolve().parent


class HookBackend(LocalBackend):
    """The local backend, with something another build does right after (or instead of) one submission."""

    after: Optional[Callable[[Sequence[BatchJob]], None]] = None
    instead: Optional[Callable[[Sequence[BatchJob]], None]] = None

    def submit(self, campaign: str, task: str, jobs: Sequence[BatchJob]) -> dict[JobKey, str]:
        instead, self.instead = self.instead, None  # once
        if instead is not None:
            instead(jobs)
        ids = super().submit(campaign, task, jobs)
        after, self.after = self.after, None
        if after is not None:
            after(jobs)
        return ids


@pytest.fixture
def probe(tmp_path: Path) -> Probe:
    store = Store.open(str(tmp_path / "state.db"), actor="build-1", create=True)
    handler = Probe(store, HookBackend(tmp_path / "work", slots=4))
    handler.payload = write_payload(tmp_path / "payload")
    yield handler
    store.close()


def other_build(probe: Probe) -> Probe:
    """The same workflow run by another Jenkins build: its own store connection, the same work folder."""
    handler = Probe(Store.open(probe.store.db.url, actor="build-2"), LocalBackend(probe.backend.workdir, slots=4))
    handler.payload = probe.payload
    return handler


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    stop = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < stop, "timed out"
        time.sleep(0.05)


def pids(probe: Probe, run: int) -> dict[str, str]:
    """Every job folder of ``run`` that started a process, with the process it started."""
    root = probe.backend.workdir / "jobs" / "prompt" / "probe" / str(run)
    return {str(p.parent.relative_to(root)): p.read_text() for p in sorted(root.glob("g*/j*/pid"))}


def test_defect1_recording_batch_ids_never_revives_a_failed_job_nor_restarts_a_running_one(probe: Probe) -> None:
    """A check by another build lands between the batch submission and the record of the batch ids."""
    store, work = probe.store, probe.backend.workdir
    make_campaign(store, [1], retries=2)
    work.mkdir(parents=True)
    marker(work, 1, 0).touch()  # job 0 fails at once
    marker(work, 1, 1, "hang").touch()  # job 1 keeps running
    other = other_build(probe)

    def check_in_between(jobs: Sequence[BatchJob]) -> None:
        wait_for(lambda: (jobs[0].folder / "exit").exists() and (jobs[2].folder / "exit").exists()
                 and (jobs[1].folder / "started").exists())
        other.check("prompt")

    probe.backend.after = check_in_between  # type: ignore[attr-defined]
    assert probe.submit("prompt").counts == {"claimed": 1, "merged": 0, "jobs submitted": 3}
    jobs = store.list_jobs("prompt", "probe", run=1)
    assert [(j.status, j.attempts) for j in jobs] == [("failed", 1), ("running", 1), ("done", 1)]
    assert jobs[1].started_at is not None
    assert all(j.batch_id and j.fields["logs"].endswith(f"/g1/j{j.jid}.a1") for j in jobs)
    assert store.instance("prompt", "probe", 1).status == "processing"

    marker(work, 1, 0).unlink()
    marker(work, 1, 1, "hang").unlink()
    assert probe.resubmit("prompt").counts == {"jobs resubmitted": 1}
    settle(probe)
    assert store.instance("prompt", "probe", 1).status == "done"
    assert [(j.status, j.attempts) for j in store.list_jobs("prompt", "probe", run=1)] == [
        ("done", 2), ("done", 1), ("done", 1)]
    other.store.close()


def test_defect1_a_job_folder_without_its_pid_file_yet_is_not_judged(probe: Probe) -> None:
    """The local backend's own trigger: the folder exists before the runner wrote the pid file."""
    store = probe.store
    make_campaign(store, [1])
    other = other_build(probe)
    probe.backend.instead = lambda jobs: other.check("prompt")  # type: ignore[attr-defined]
    probe.submit("prompt")
    assert [(j.status, j.attempts) for j in store.list_jobs("prompt", "probe", run=1)] == [("idle", 1)] * 3
    settle(probe)
    assert store.instance("prompt", "probe", 1).status == "done"
    other.store.close()


def test_defect2_a_failed_submit_never_rolls_back_a_claim_taken_again_meanwhile(probe: Probe) -> None:
    """Build 1's submission fails before the batch system took it; meanwhile an operator aborted the run and
    build 2 claimed it again (generation 2): build 1's rollback must leave generation 2 alone."""
    store = probe.store
    make_campaign(store, [1])
    other = other_build(probe)

    def abort_and_reclaim(jobs: Sequence[BatchJob]) -> None:
        other.store.reprocess("prompt", "probe", runs=[1], reason="operator: wrong conditions")
        claimed = other.store.claim("prompt", "probe")
        assert [(c.run_number, c.generation) for c in claimed] == [(1, 2)]
        other.store.create_jobs("prompt", "probe", 1, [0, 1, 2], generation=2)
        raise NotAccepted("schedd refused the cluster")

    probe.backend.instead = abort_and_reclaim  # type: ignore[attr-defined]
    with pytest.raises(StageFailed, match="not rolled back"):
        probe.submit("prompt")
    info = store.instance("prompt", "probe", 1)
    assert (info.status, info.generation) == ("processing", 2)

    probe.submit("prompt")  # the next stage submits generation 2, which was left "to submit"
    settle(probe)
    assert store.instance("prompt", "probe", 1).status == "done"
    assert sorted(pids(probe, 1)) == ["g2/j0.a1", "g2/j1.a1", "g2/j2.a1"]  # generation 1 never ran
    assert [(j.generation, j.status) for j in store.list_jobs("prompt", "probe", run=1, all_generations=True)] == [
        (1, "failed")] * 3 + [(2, "done")] * 3
    other.store.close()


class LockedOnce(Store):
    """The store, whose next write fails as SQLite does while another process holds the write lock."""

    armed = False

    def _write(self, *args: Any, **kwargs: Any) -> Any:
        if self.armed:
            self.armed = False
            raise DatabaseError(f"database error on {self.db.url}: database is locked")
        return super()._write(*args, **kwargs)


def test_defect3_a_failure_after_the_batch_system_took_the_jobs_keeps_the_claim(tmp_path: Path) -> None:
    store = LockedOnce.open(str(tmp_path / "state.db"), actor="build-1", create=True)
    probe = Probe(store, HookBackend(tmp_path / "work", slots=4))
    probe.payload = write_payload(tmp_path / "payload")
    make_campaign(store, [1])

    def lock(jobs: Sequence[BatchJob]) -> None:
        store.armed = True

    probe.backend.after = lock  # type: ignore[attr-defined]
    with pytest.raises(StageFailed, match="jobs in the batch system, batch ids not recorded: .*database is locked"):
        probe.submit("prompt")
    info = store.instance("prompt", "probe", 1)
    assert (info.status, info.generation) == ("processing", 1)
    started = pids(probe, 1)
    assert sorted(started) == ["g1/j0.a1", "g1/j1.a1", "g1/j2.a1"]

    report = probe.submit("prompt")  # finds the jobs by key: adopts them, submits nothing again
    assert report.counts == {"jobs adopted": 3}
    settle(probe)
    assert store.instance("prompt", "probe", 1).status == "done"
    assert pids(probe, 1) == started
    jobs = store.list_jobs("prompt", "probe", run=1, all_generations=True)
    assert [(j.generation, j.batch_id) for j in jobs] == [(1, f"local:{started[f'g1/j{i}.a1'].split()[0]}")
                                                         for i in range(3)]
    store.close()


def test_a_run_claimed_by_a_stage_that_has_not_submitted_it_is_listed_by_the_stage_that_does(probe: Probe) -> None:
    """Two submit stages at once: one claimed run 1 and is not yet at its submission (or was killed there); the
    other finds the run's jobs "to submit", submits them, and must list the run among those it submitted (it
    listed only the runs it claimed itself, and the claiming stage, finding nothing left, listed none: run 1
    was in nobody's report)."""
    store = probe.store
    make_campaign(store, [1, 2])
    [claim] = store.claim("prompt", "probe", 1, jobs=lambda c: [(s.jid, s.fields) for s in probe.jobs("prompt", c)])
    assert claim.run_number == 1
    report = probe.submit("prompt")
    assert report.runs == [1, 2] and report.counts["jobs submitted"] == 6
    settle(probe)
    assert [store.instance("prompt", "probe", r).status for r in (1, 2)] == ["done", "done"]


KILLED_SUBMIT = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from ecalstate.backends.local import LocalBackend
from handler_support import Probe

class Killed(LocalBackend):
    calls = 0
    def submit(self, campaign, task, jobs):
        Killed.calls += 1
        if Killed.calls == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # Jenkins aborts the build in the middle of the stage
        return super().submit(campaign, task, jobs)

Probe.payload = {payload!r}
from ecalstate import Store
handler = Probe(Store.open({db!r}), Killed({work!r}, slots=4))
handler.submit("prompt", limit=4)
"""


def test_defect4_a_killed_submit_leaves_jobs_to_submit_that_the_next_stage_submits(probe: Probe) -> None:
    store = probe.store
    make_campaign(store, [1, 2, 3, 4])
    code = KILLED_SUBMIT.format(tests=str(TESTS), payload=str(probe.payload), db=store.db.url,
                                work=str(probe.backend.workdir))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == -9, result.stderr
    statuses = [store.instance("prompt", "probe", r).status for r in (1, 2, 3, 4)]
    assert statuses == ["processing", "processing", "new", "new"]  # one group claimed at a time
    assert [(j.status, j.batch_id) for j in store.list_jobs("prompt", "probe", run=2)] == [("idle", None)] * 3
    health = store.health("prompt", unsubmitted_after=0)
    assert [(u.run_number, u.jobs) for u in health.unsubmitted] == [(2, 3)] and not health.ok
    set_policies(store, "prompt", {"unsubmitted": 0})  # what health says of it, with its command
    text = render_health(attention(store, "prompt"), 3600, 3600)
    assert "probe run 2 has 3 jobs never submitted since" in text and "[unsubmitted," in text
    later = Store.open(store.db.url)
    later.clock = lambda: (datetime.now(timezone.utc) + timedelta(minutes=16)).strftime(TS_FORMAT)  # type: ignore
    assert [u.run_number for u in later.health("prompt").unsubmitted] == [2]  # the default thresholds see it
    later.close()

    report = probe.submit("prompt")
    assert report.counts == {"jobs submitted": 9, "claimed": 2, "merged": 0}
    settle(probe)
    assert [store.instance("prompt", "probe", r).status for r in (1, 2, 3, 4)] == ["done"] * 4
    assert all(sorted(pids(probe, r)) == ["g1/j0.a1", "g1/j1.a1", "g1/j2.a1"] for r in (1, 2, 3, 4))
    assert store.health("prompt", unsubmitted_after=0).unsubmitted == []


def test_defect5_a_request_id_reused_with_other_arguments_is_refused(probe: Probe) -> None:
    store = probe.store
    make_campaign(store, [1, 2])
    store.claim("prompt", "probe")
    assert store.create_jobs("prompt", "probe", 1, [0], request_id="build-7") == 1
    assert store.create_jobs("prompt", "probe", 1, [0], request_id="build-7") == 1  # a replay: the first outcome
    with pytest.raises(Conflict, match="'build-7' was already used for a job.create call with other arguments"):
        store.create_jobs("prompt", "probe", 2, [0], request_id="build-7")
    assert store.list_jobs("prompt", "probe", run=2) == []
    store.reprocess("prompt", "probe", runs=[1], reason="r", request_id="op-1")
    with pytest.raises(Conflict, match="other arguments"):
        store.reprocess("prompt", "probe", runs=[2], reason="r", request_id="op-1")
    assert store.instance("prompt", "probe", 2).status == "processing"
    store.inject_runs("prompt", [RunSpec(3, 1)], request_id="sync-1")
    with pytest.raises(Conflict, match="other arguments"):
        store.inject_runs("prompt", [RunSpec(4, 1)], request_id="sync-1")
    assert [r["run_number"] for r in store.list_runs("prompt")] == [1, 2, 3]


def test_defect5_on_the_command_line_one_line_exit_1(probe: Probe) -> None:
    store = probe.store
    make_campaign(store, [1])
    store.claim("prompt", "probe")
    store.create_jobs("prompt", "probe", 1, [0, 1])
    base = [str(Path(sys.executable).parent / "ecalstate"), "--db", store.db.url, "job", "set", "-c", "prompt",
            "--task", "probe", "--run", "1", "--request-id", "r-1"]
    first = subprocess.run(base + ["--job", "0", "running"], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    again = subprocess.run(base + ["--job", "1", "running"], capture_output=True, text=True)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [
        "Error: request id 'r-1' was already used for a job.set call with other arguments; give this call a new"
        " request id"]
    assert [j.status for j in store.list_jobs("prompt", "probe", run=1)] == ["running", "idle"]


def test_defect6_aborting_a_processing_run_removes_its_batch_jobs(probe: Probe) -> None:
    store, work = probe.store, probe.backend.workdir
    make_campaign(store, [1])
    work.mkdir(parents=True)
    for jid in range(3):
        marker(work, 1, jid, "hang").touch()
    probe.submit("prompt")
    wait_for(lambda: probe.check("prompt").counts.get("running", 0) == 3 or all(
        j.status == "running" for j in store.list_jobs("prompt", "probe", run=1)))
    old = {k: v.split()[0] for k, v in pids(probe, 1).items()}

    store.reprocess("prompt", "probe", runs=[1], reason="operator: wrong conditions")
    report = probe.submit("prompt")  # removes generation 1 from the batch system, then claims generation 2
    assert report.counts == {"superseded jobs removed": 3, "claimed": 1, "merged": 0, "jobs submitted": 3}
    root = work / "jobs/prompt/probe/1"
    wait_for(lambda: all((root / k / "exit").exists() for k in old))
    assert not any(_alive(pids(probe, 1)[k]) for k in old)
    gen1 = [j for j in store.list_jobs("prompt", "probe", run=1, all_generations=True) if j.generation == 1]
    assert [(j.status, j.attempts) for j in gen1] == [("failed", 1)] * 3
    reasons = {a.reason for a in store.history("prompt", task="probe", run=1, limit=None)
               if a.generation == 1 and a.to_status == "failed"}
    assert reasons == {"superseded: its task instance was aborted or claimed again"}

    for jid in range(3):
        marker(work, 1, jid, "hang").unlink()
    settle(probe)
    assert store.instance("prompt", "probe", 1).status == "done"


def test_defect6_lost_jobs_of_an_old_generation_do_not_stay_idle(probe: Probe) -> None:
    """Jobs the batch system lost (a schedd restart): no evidence of them, yet their generation is over."""
    store = probe.store
    make_campaign(store, [1])
    store.claim("prompt", "probe")
    store.create_jobs("prompt", "probe", 1, [0, 1])  # never submitted: nothing in the batch system
    store.set_status("prompt", "probe", [1], "failed", reason="operator: lost in the schedd restart")
    probe.check("prompt")
    assert [j.status for j in store.list_jobs("prompt", "probe", run=1)] == ["failed", "failed"]


def test_defect11_an_oversized_job_report_is_not_stored(probe: Probe) -> None:
    store = probe.store
    make_campaign(store, [1], meta={"jobs": 1})
    probe.submit("prompt")
    job = store.list_jobs("prompt", "probe", run=1)[0]
    folder = Path(job.fields["logs"])
    wait_for(lambda: (folder / "exit").exists())
    (folder / "report.json").write_text(json.dumps({"fields": {"blob": "x" * (MAX_REPORT_BYTES + 1)}}))
    settle(probe)
    done = store.list_jobs("prompt", "probe", run=1)[0]
    assert done.status == "done" and "blob" not in done.fields
    assert len(json.dumps(done.fields)) < 1000
    last = store.history("prompt", task="probe", run=1, limit=None)
    assert any(a.jid == 0 and "job report too large" in a.reason for a in last)
    assert os.path.getsize(folder / "report.json") > MAX_REPORT_BYTES


def test_batch_ids_are_an_annotation_refused_for_another_generation(probe: Probe) -> None:
    store = probe.store
    make_campaign(store, [1])
    store.claim("prompt", "probe")
    store.create_jobs("prompt", "probe", 1, [0, 1], generation=1)
    store.update_jobs("prompt", "probe", [JobUpdate(1, 0, "failed", generation=1)])
    audit = len(store.history("prompt", limit=None))
    records = [BatchRecord(0, 1, "7.0", {"logs": "/a"}), BatchRecord(1, 1, "7.1"), BatchRecord(1, 2, "8.0")]
    assert store.record_batch_ids("prompt", "probe", 1, 1, records) == 2  # attempt 2 of job 1 does not exist
    jobs = store.list_jobs("prompt", "probe", run=1)
    assert [(j.status, j.attempts, j.batch_id) for j in jobs] == [("failed", 1, "7.0"), ("idle", 1, "7.1")]
    assert jobs[0].fields == {"logs": "/a"}
    # no transition: only the annotation that carries job 0's new field to the exporter (failed -> failed)
    added = store.history("prompt", limit=None)[audit:]
    assert [(a.jid, a.from_status, a.to_status) for a in added] == [(0, "failed", "failed")]

    # a check's observation of attempt 1 arrives after job 0 was resubmitted (attempt 2): refused
    store.update_jobs("prompt", "probe", [JobUpdate(1, 0, "idle", generation=1)])
    assert store.list_jobs("prompt", "probe", run=1)[0].batch_id is None  # a new attempt is "to submit"
    late = store.update_jobs("prompt", "probe", [JobUpdate(1, 0, "failed", generation=1, attempt=1)])
    assert [(c.outcome, c.reason) for c in late.changes] == [
        ("refused", "about attempt 1, the job is at attempt 2")]

    store.reprocess("prompt", "probe", runs=[1], reason="operator")
    store.claim("prompt", "probe")
    with pytest.raises(Conflict, match="batch ids of generation 1 are not recorded"):
        store.record_batch_ids("prompt", "probe", 1, 1, [BatchRecord(0, 2, "9.0")])
    assert [j.batch_id for j in store.list_jobs("prompt", "probe", run=1, all_generations=True)] == [None, "7.1"]


def test_jobs_submitted_for_a_generation_aborted_meanwhile_are_removed_at_once(probe: Probe) -> None:
    """The batch system took generation 1 while an operator aborted it and build 2 claimed generation 2: the
    record is refused, and generation 1 leaves the batch system before the stage ends."""
    store, work = probe.store, probe.backend.workdir
    make_campaign(store, [1], meta={"jobs": 2})
    work.mkdir(parents=True)
    for jid in range(2):
        marker(work, 1, jid, "hang").touch()
    other = other_build(probe)

    def abort_and_reclaim(jobs: Sequence[BatchJob]) -> None:
        other.store.reprocess("prompt", "probe", runs=[1], reason="operator: wrong conditions")
        other.store.claim("prompt", "probe")
        other.store.create_jobs("prompt", "probe", 1, [0, 1], generation=2)

    probe.backend.after = abort_and_reclaim  # type: ignore[attr-defined]
    with pytest.raises(StageFailed, match="batch ids of generation 1 are not recorded"):
        probe.submit("prompt")
    root = work / "jobs/prompt/probe/1"
    assert sorted(pids(probe, 1)) == ["g1/j0.a1", "g1/j1.a1"]
    assert all((root / f"g1/j{jid}.a1/removed").exists() for jid in range(2))
    wait_for(lambda: not any(_alive(text) for text in pids(probe, 1).values()))
    assert [(j.generation, j.status) for j in store.list_jobs("prompt", "probe", run=1, all_generations=True)] == [
        (1, "failed"), (1, "failed"), (2, "idle"), (2, "idle")]

    for jid in range(2):
        marker(work, 1, jid, "hang").unlink()
    assert other.submit("prompt").counts == {"jobs submitted": 2}
    settle(probe)
    assert store.instance("prompt", "probe", 1).status == "done"
    other.store.close()
