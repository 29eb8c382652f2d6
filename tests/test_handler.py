"""TaskHandler on the local backend: the submit/check/resubmit lifecycle, rollbacks, heartbeats, the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from handler_support import Probe, cli_process, make_campaign, marker, settle, snapshot, transitions, write_payload

from ecalstate import Store
from ecalstate.backends import JobKey, JobSpec
from ecalstate.backends.local import LocalBackend
from ecalstate.handler import StageFailed
from ecalstate.results import Claim

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def probe(tmp_path: Path, db_url: str) -> Probe:
    """The probe workflow on the local backend, on each engine (SQLite file, PostgreSQL)."""
    store = Store.open(db_url, actor="tester", create=True)
    handler = Probe(store, LocalBackend(tmp_path / "work", slots=2))
    handler.payload = write_payload(tmp_path / "payload")
    yield handler
    store.close()


def test_lifecycle_failure_resubmit_after_fix_done_and_audited(probe: Probe) -> None:
    store, work = probe.store, probe.backend.workdir
    make_campaign(store, [1, 2], retries=2)
    work.mkdir(parents=True)
    marker(work, 1, 1).touch()

    report = probe.submit("prompt")
    assert report.counts == {"claimed": 2, "merged": 0, "jobs submitted": 6} and report.runs == [1, 2]
    settle(probe)
    assert store.instance("prompt", "probe", 2).status == "done"
    assert store.instance("prompt", "probe", 1).status == "processing"
    failed = store.list_jobs("prompt", "probe", run=1, status="failed")
    assert [(j.jid, j.attempts) for j in failed] == [(1, 1)]

    probe.resubmit("prompt")  # not fixed yet: fails again, still within the retry limit
    settle(probe)
    assert [(j.jid, j.attempts) for j in store.list_jobs("prompt", "probe", run=1, status="failed")] == [(1, 2)]
    assert store.instance("prompt", "probe", 1).status == "processing"

    marker(work, 1, 1).unlink()  # the fix
    assert probe.resubmit("prompt").counts == {"jobs resubmitted": 1}
    settle(probe)
    info = store.instance("prompt", "probe", 1)
    assert info.status == "done"
    assert info.outputs["output"].split(",") == [str(work / "out/1/g1" / f"job{i}.json") for i in range(3)]
    jobs = store.list_jobs("prompt", "probe", run=1)
    assert [(j.status, j.attempts) for j in jobs] == [("done", 1), ("done", 3), ("done", 1)]
    assert all(j.fields["answer"] == 42 and j.fields["slice"] == j.jid for j in jobs)
    assert all(j.batch_id and j.batch_id.startswith("local:") for j in jobs)
    assert jobs[1].fields["logs"].endswith("/jobs/prompt/probe/1/g1/j1.a3")  # the last attempt's folder
    assert json.loads(Path(jobs[1].fields["output"]).read_text())["attempt"] == "3"

    assert transitions(store, "probe", 1) == {
        None: ["new", "processing", "done"],
        0: ["idle", "done"], 2: ["idle", "done"],
        1: ["idle", "failed", "idle", "failed", "idle", "done"]}
    reasons = [a.reason for a in store.history("prompt", task="probe", run=1, limit=None) if a.to_status == "failed"]
    assert reasons == ["exit code 3: input marked broken"] * 2
    beats = {a.reason.split(":")[0] for a in store.history("prompt", entity="handler", limit=None)}
    assert beats == {"submit", "check", "resubmit"} and store.health("prompt").ok


def test_a_job_killed_behind_the_handlers_back_is_failed_then_resubmitted(probe: Probe) -> None:
    """The local analogue of a held job: the process is gone, no exit code was written."""
    store, work = probe.store, probe.backend.workdir
    make_campaign(store, [4], meta={"jobs": 2})
    work.mkdir(parents=True)
    marker(work, 4, 1, "hang").touch()
    probe.submit("prompt")
    folder = probe.backend.job_dir("prompt", "probe", JobKey(4, 1, 1, 1))
    stop = time.monotonic() + 30
    while not (folder / "started").exists() and time.monotonic() < stop:
        time.sleep(0.05)
    pid = int((folder / "pid").read_text().split()[0])
    os.killpg(pid, signal.SIGKILL)
    settle(probe)
    failed = store.list_jobs("prompt", "probe", run=4, status="failed")
    assert [j.jid for j in failed] == [1]
    assert [a.reason for a in store.history("prompt", task="probe", run=4, limit=None) if a.to_status == "failed"] == [
        f"job process {pid} died without an exit code"]
    marker(work, 4, 1, "hang").unlink()
    assert probe.resubmit("prompt").counts == {"jobs resubmitted": 1}
    settle(probe)
    assert store.instance("prompt", "probe", 4).status == "done"
    assert transitions(store, "probe", 4)[1] == ["idle", "failed", "idle", "done"]


def test_a_check_that_cannot_find_the_jobs_changes_nothing(probe: Probe, tmp_path: Path) -> None:
    """A check pointed at another work folder has no evidence about the jobs: they stay as they are."""
    make_campaign(probe.store, [6], meta={"jobs": 2})
    probe.submit("prompt")
    before = snapshot(probe.store)
    elsewhere = Probe(probe.store, LocalBackend(tmp_path / "elsewhere"))
    assert elsewhere.check("prompt").counts == {"active": 2, "not found by the backend": 2}
    assert snapshot(probe.store) == before
    settle(probe)
    assert probe.store.instance("prompt", "probe", 6).status == "done"


def test_retries_exhausted_fail_the_instance_and_resubmit_leaves_it(probe: Probe) -> None:
    store, work = probe.store, probe.backend.workdir
    make_campaign(store, [7], retries=0)
    work.mkdir(parents=True)
    marker(work, 7, 0).touch()
    probe.submit("prompt")
    settle(probe)
    assert store.instance("prompt", "probe", 7).status == "failed"
    assert probe.resubmit("prompt").counts == {}
    assert [j.status for j in store.list_jobs("prompt", "probe", run=7)] == ["failed", "done", "done"]


class Flaky(Probe):
    """Cannot build the jobs of run 2 (a bug in the workflow, a missing input...)."""

    def jobs(self, campaign: str, claim: Claim) -> list[JobSpec]:
        if claim.run_number == 2:
            raise RuntimeError("no input for run 2")
        return super().jobs(campaign, claim)


def test_submit_failure_before_jobs_rolls_back_that_claim_only(probe: Probe) -> None:
    store = probe.store
    make_campaign(store, [1, 2])
    flaky = Flaky(store, probe.backend)
    flaky.payload = probe.payload
    with pytest.raises(StageFailed, match="run 2: RuntimeError: no input for run 2"):
        flaky.submit("prompt")
    assert store.instance("prompt", "probe", 1).status == "processing"
    # claim and job creation are one transaction: the failed jobs() undid the claim, nothing was written
    assert store.instance("prompt", "probe", 2).status == "new"
    assert store.list_jobs("prompt", "probe", run=2) == []
    assert [a.to_status for a in store.history("prompt", task="probe", run=2, limit=None)] == ["new"]
    assert [(h.stage, h.ok) for h in store.health("prompt").failing] == [("submit", False)]

    assert probe.submit("prompt").runs == [2]  # fixed: the run is still eligible
    settle(probe)
    assert store.instance("prompt", "probe", 2).generation == 1
    assert store.instance("prompt", "probe", 2).status == "done"
    assert store.health("prompt").ok


def test_submit_failure_after_jobs_created_fails_them_and_releases_merged_runs(probe: Probe) -> None:
    store = probe.store
    make_campaign(store, [1, 2, 3])
    store.close_fill("prompt", 1, "beam dumped")

    class ByFill(Probe):
        group_by = "fill"

    grouped = ByFill(store, probe.backend)
    grouped.payload = probe.payload.parent / "missing.py"
    with pytest.raises(StageFailed, match="missing.py does not exist"):
        grouped.submit("prompt")
    assert [store.instance("prompt", "probe", r).status for r in (1, 2, 3)] == ["reprocess"] * 3
    jobs = store.list_jobs("prompt", "probe", run=3)
    assert [(j.generation, j.status) for j in jobs] == [(1, "failed")] * 3
    assert "submit failed: job payload" in store.history("prompt", task="probe", run=3, limit=1)[0].reason

    grouped.payload = probe.payload
    report = grouped.submit("prompt")
    assert report.counts == {"claimed": 1, "merged": 2, "jobs submitted": 3}
    settle(grouped)
    assert [store.instance("prompt", "probe", r).status for r in (1, 2, 3)] == ["merged", "merged", "done"]
    assert [j.generation for j in store.list_jobs("prompt", "probe", run=3)] == [2, 2, 2]


def cli(handler: type[Probe], *args: str, env: dict[str, str] | None = None) -> object:
    return CliRunner().invoke(handler.cli(), list(args), env=env, catch_exceptions=False)


def test_unreachable_backend_is_one_line_exit_1_and_claims_nothing(probe: Probe, tmp_path: Path) -> None:
    make_campaign(probe.store, [1, 2])
    before = snapshot(probe.store)
    (tmp_path / "file").write_text("not a folder")
    result = cli(type(probe), "-c", "prompt", "--db", probe.store.db.url, "--workdir", str(tmp_path / "file/work"),
                 "submit")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"Error: prompt: cannot create {tmp_path}/file/work: Not a directory"]
    assert snapshot(probe.store) == before
    assert [(h.stage, h.message) for h in probe.store.health("prompt").failing] == [
        ("submit", f"cannot create {tmp_path}/file/work: Not a directory")]


def test_cli_dry_run_writes_nothing_and_json_reports(probe: Probe, tmp_path: Path) -> None:
    make_campaign(probe.store, [1, 2])
    before = snapshot(probe.store)
    url = probe.store.db.url
    handler = type("CliProbe", (Probe,), {"payload": probe.payload})
    result = cli(handler, "-c", "prompt", "--db", url, "submit", "--dry-run", "--limit", "1",
                 env={"ECALSTATE_WORKDIR": str(probe.backend.workdir)})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "prompt probe submit: would claim 1, would merge 0 (runs 1) [dry run]"
    # the jobs it would submit, with their arguments (generation 1: the claim it would make)
    assert [line.split(" --marker")[0] for line in lines[1:]] == [
        f"  run 1 job {i}: {probe.payload} --out {probe.backend.workdir}/out/1/g1/job{i}.json" for i in range(3)]
    assert snapshot(probe.store) == before and probe.store.history("prompt", entity="handler") == []


def test_cli_loops_over_campaigns_and_reports_each_error(probe: Probe, tmp_path: Path) -> None:
    make_campaign(probe.store, [1])
    make_campaign(probe.store, [5], campaign="rereco")
    # the payload path comes from the class, as a workflow script has it
    handler = type("CliProbe", (Probe,), {"payload": probe.payload})
    env = {"ECALSTATE_DB": probe.store.db.url, "ECALSTATE_WORKDIR": str(probe.backend.workdir)}
    result = cli(handler, "-c", "prompt,nosuch", "-c", "rereco", "--json", "submit", env=env)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    reports = [json.loads(line) for line in lines[:-1]]
    assert [(r["campaign"], r["runs"]) for r in reports] == [("prompt", [1]), ("rereco", [5])]
    assert lines[-1] == "Error: nosuch: unknown campaign 'nosuch'"
    assert probe.store.instance("rereco", "probe", 5).status == "processing"


def test_two_submit_stages_at_the_same_moment_never_submit_the_same_run(probe: Probe, tmp_path: Path) -> None:
    runs = list(range(1, 21))
    make_campaign(probe.store, runs, meta={"jobs": 1})
    args = ["-c", "prompt", "--db", probe.store.db.url, "--workdir", str(probe.backend.workdir), "--json", "submit"]
    go = time.time() + 2.0  # both processes are up and waiting well before this moment
    procs = [cli_process(probe.payload, args, start_at=go) for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    submitted = [json.loads(out)["runs"] for out in outputs]
    assert sorted(submitted[0] + submitted[1]) == runs  # every run once, by one of them
    settle(probe)
    claims = [a for a in probe.store.history("prompt", limit=None) if a.to_status == "processing"]
    assert sorted(a.run_number for a in claims) == runs
    assert [(j.run_number, j.generation, j.attempts, j.status) for j in probe.store.list_jobs(
        "prompt", "probe", all_generations=True)] == [(r, 1, 1, "done") for r in runs]
    started = sorted((probe.backend.workdir / "jobs").glob("prompt/probe/*/g*/j*.a*/started"))
    assert len(started) == len(runs)


def test_jobs_that_reach_the_database_set_their_own_status(probe: Probe, tmp_path: Path) -> None:
    """A payload may call `ecalstate job set` itself; check reconciles what the batch system says on top."""
    make_campaign(probe.store, [3], meta={"jobs": 1})
    payload = tmp_path / "selfreport" / "selfreport_job.py"
    payload.parent.mkdir()
    payload.write_text(textwrap.dedent(f"""
        import os, subprocess, sys
        e = os.environ
        subprocess.run([{str(Path(sys.executable).parent / "ecalstate")!r}, "--db", {probe.store.db.url!r}, "job", "set",
                        "-c", e["ECALSTATE_CAMPAIGN"], "--task", e["ECALSTATE_TASK"], "--run", e["ECALSTATE_RUN"],
                        "--job", e["ECALSTATE_JOB_ID"], "running", "--field", "progress=half"], check=True)
    """))

    class SelfReporting(Probe):
        def jobs(self, campaign: str, claim: Claim) -> list[JobSpec]:
            return [JobSpec(0, str(payload))]

    handler = SelfReporting(probe.store, probe.backend)
    handler.submit("prompt")
    settle(handler)
    job = probe.store.list_jobs("prompt", "probe", run=3)[0]
    fields = {k: v for k, v in job.fields.items() if k != "started"}  # (a check that saw it running first adds it)
    assert (job.status, fields) == ("done", {"progress": "half", "logs": str(
        probe.backend.job_dir("prompt", "probe", JobKey(3, 0, 1, 1)))})
    assert transitions(probe.store, "probe", 3)[0] == ["idle", "done"]
    assert [(a.from_status, a.to_status) for a in probe.store.history("prompt", task="probe", run=3, limit=None)
            if a.entity == "job" and a.from_status != a.to_status] == [(None, "idle"), ("idle", "running"),
                                                                      ("running", "done")]


def test_importing_ecalstate_and_the_handler_cli_never_imports_htcondor() -> None:
    code = ("import sys, ecalstate, ecalstate.handler, ecalstate.backends.local\n"
            "sys.path.insert(0, 'handlers')\n"
            "import phisym_reco\n"
            "try:\n    phisym_reco.PhiSymReco.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'htcondor2' not in sys.modules, 'htcondor2 imported'\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "submit" in result.stdout and "resubmit" in result.stdout
