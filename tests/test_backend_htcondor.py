"""The HTCondor backend end to end against the real personal pool (trixie chroot, scripts/htcondor-pool.sh).

Jobs run inside the chroot as the unprivileged job user with trixie's python3;
the work folder lives in the pool's jobs folder (bind-mounted at the same path).
Teardown removes only that folder, from the host side, never through the chroot.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from handler_support import (
    Probe,
    cli_process,
    condor_workdir,
    make_campaign,
    marker,
    settle,
    snapshot,
    transitions,
    write_payload,
)

from ecalstate import Store
from ecalstate.backends import JobKey, JobSpec
from ecalstate.backends.htcondor import CondorBackend, environment_arg, observation, quote_args
from ecalstate.errors import EcalStateError

C = "prompt"
BAD_CONFIG = """\
COLLECTOR_HOST = 127.0.0.1:9
CONDOR_HOST = 127.0.0.1
NETWORK_INTERFACE = 127.0.0.1
USE_SHARED_PORT = False
SEC_CLIENT_AUTHENTICATION_METHODS = CLAIMTOBE
SEC_CLAIMTOBE_USER = htcjob
"""


@pytest.fixture
def workdir(condor_pool: Any) -> Iterator[Path]:
    with condor_workdir(condor_pool, "handler-") as folder:
        yield folder


def bad_config(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "bad_condor_config"
    path.write_text(BAD_CONFIG)
    return {**os.environ, "CONDOR_CONFIG": str(path)}


def test_end_to_end_failure_hold_resubmit_done(condor_pool: Any, workdir: Path, sqlite_url: str,
                                               tmp_path: Path) -> None:
    store = Store.open(sqlite_url, actor="tester", create=True)
    make_campaign(store, [11], retries=2, meta={"jobs": 4})
    backend = CondorBackend(workdir, template={"request_memory": "64MB", "+JobFlavour": '"espresso"'})
    handler = Probe(store, backend)
    handler.payload = write_payload(tmp_path / "payload")
    marker(workdir, 11, 1).touch()  # job 1 exits 3
    # job 2 is held at once: its stdout file exists and the job user may not write it
    stdout = backend.makedirs(backend.job_dir(C, "probe", JobKey(11, 2, 1, 1))) / "stdout"
    stdout.write_text("")
    stdout.chmod(0o444)
    t0 = time.monotonic()

    assert handler.submit(C).counts == {"claimed": 1, "merged": 0, "jobs submitted": 4}
    batch_ids = [j.batch_id for j in store.list_jobs(C, "probe", run=11)]
    cluster = batch_ids[0].split(".")[0]
    assert batch_ids == [f"{cluster}.{i}" for i in range(4)]  # one cluster for the task instance

    # a check that cannot reach the schedd: one clear line, exit 1, nothing changes
    before = snapshot(store)
    args = ["-c", C, "--db", store.db.url, "--backend", "htcondor", "--workdir", str(workdir), "check"]
    out, err = cli_process(handler.payload, args, env=bad_config(tmp_path)).communicate(timeout=60)
    assert err.strip().splitlines() == ["Error: prompt: HTCondor schedd unreachable: Unable to locate local daemon."]
    assert snapshot(store) == before

    settle(handler, C, deadline=120)
    jobs = {j.jid: j for j in store.list_jobs(C, "probe", run=11)}
    assert {i: j.status for i, j in jobs.items()} == {0: "done", 1: "failed", 2: "failed", 3: "done"}
    assert jobs[0].fields == {"slice": 0, "output": str(workdir / "out/11/g1/job0.json"), "answer": 42,
                              "logs": str(backend.job_dir(C, "probe", JobKey(11, 0, 1, 1))),
                              "started": jobs[0].started}  # the schedd's JobCurrentStartDate
    reasons = {a.jid: a.reason for a in store.history(C, task="probe", run=11, limit=None) if a.to_status == "failed"}
    assert reasons[1] == "exit code 3: input marked broken"
    assert reasons[2].startswith("held by the pool at ") and "Permission denied" in reasons[2] \
        and str(stdout) in reasons[2]
    import htcondor2

    queue = htcondor2.Schedd().query(constraint=f"ClusterId == {cluster}", projection=["ProcId", "JobStatus"])
    assert [ad["JobStatus"] for ad in queue if ad["ProcId"] == 2] in ([], [3])  # the held job was removed
    assert store.instance(C, "probe", 11).status == "processing"

    marker(workdir, 11, 1).unlink()  # the fix
    assert handler.resubmit(C).counts == {"jobs resubmitted": 2}
    settle(handler, C, deadline=120)
    info = store.instance(C, "probe", 11)
    assert info.status == "done"
    assert [(j.status, j.attempts) for j in store.list_jobs(C, "probe", run=11)] == [
        ("done", 1), ("done", 2), ("done", 2), ("done", 1)]
    assert transitions(store, "probe", 11) == {
        None: ["new", "processing", "done"], 0: ["idle", "done"], 3: ["idle", "done"],
        1: ["idle", "failed", "idle", "done"], 2: ["idle", "failed", "idle", "done"]}
    errors = [a.reason for a in store.history(C, entity="handler", limit=None) if a.to_status == "error"]
    assert errors == ["HTCondor schedd unreachable: Unable to locate local daemon."]  # the check above
    assert store.health(C).ok  # later checks succeeded

    # every attempt left the queue with the attributes that name it
    clusters = {cluster, store.list_jobs(C, "probe", run=11)[1].batch_id.split(".")[0]}
    assert len(clusters) == 2  # the resubmission is a cluster of its own
    mine = " || ".join(f"ClusterId == {c}" for c in clusters)
    ads = htcondor2.Schedd().history(constraint=f'EcalCampaign == "{C}" && EcalTask == "probe" && ({mine})',
                                     projection=["EcalJobId", "EcalAttempt", "EcalGeneration", "JobFlavour"])
    assert sorted((ad["EcalJobId"], ad["EcalAttempt"]) for ad in ads) == [
        (0, 1), (1, 1), (1, 2), (2, 1), (2, 2), (3, 1)]
    assert {(ad["EcalGeneration"], ad["JobFlavour"]) for ad in ads} == {(1, "espresso")}
    store.close()
    print(f"\nHTCondor end to end (submit, fail + hold, resubmit, done): {time.monotonic() - t0:.1f} s")


def test_submit_with_the_schedd_unreachable_claims_nothing(tmp_path: Path, sqlite_url: str) -> None:
    pytest.importorskip("htcondor2")
    store = Store.open(sqlite_url, actor="tester", create=True)
    make_campaign(store, [1, 2])
    before = snapshot(store)
    args = ["-c", C, "--db", store.db.url, "--backend", "htcondor", "--workdir", str(tmp_path / "w"), "submit"]
    proc = cli_process(write_payload(tmp_path / "p"), args, env=bad_config(tmp_path))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and out == ""
    assert err.strip().splitlines() == ["Error: prompt: HTCondor schedd unreachable: Unable to locate local daemon."]
    assert snapshot(store) == before
    assert [(h.stage, h.ok) for h in store.health(C).failing] == [("submit", False)]
    store.close()


@pytest.mark.parametrize("ad, expected", [
    ({"JobStatus": 1}, ("idle", "")),
    ({"JobStatus": 2}, ("running", "")),
    ({"JobStatus": 6}, ("running", "")),
    ({"JobStatus": 7}, ("running", "")),
    ({"JobStatus": 4, "ExitCode": 0}, ("done", "")),
    ({"JobStatus": 4, "ExitCode": 2}, ("failed", "exit code 2")),
    ({"JobStatus": 4, "ExitBySignal": True, "ExitSignal": 9}, ("failed", "killed by signal 9")),
    ({"JobStatus": 5, "HoldReason": "disk full"}, ("failed", "held by the pool: disk full")),
    ({"JobStatus": 3}, ("failed", "removed by the pool: no reason given")),
    ({"JobStatus": 3, "RemoveReason": "by operator (by user alice)", "LastHoldReason": "x"},
     ("failed", "removed by HTCondor user alice: by operator; it was held by the pool: x")),
])
def test_status_mapping(ad: dict[str, Any], expected: tuple[str, str]) -> None:
    seen = observation({"ClusterId": 7, "ProcId": 1, **ad})
    assert (seen.status, seen.reason, seen.batch_id) == (*expected, "7.1")
    assert seen.release == (ad["JobStatus"] == 5)  # only held jobs are removed after being recorded


def test_arguments_and_templates() -> None:
    assert quote_args(["a b", "it's", 'say "x"', "$HOME"]) == '"\'a b\' \'it\'\'s\' \'say ""x""\' \'$(DOLLAR)HOME\'"'
    # a line break cannot travel in HTCondor's item data: refused before anything reaches the schedd (it answered
    # "itemdata values must not contain newlines", which the stage reported as "the jobs may be in the batch system")
    for bad in (["--tag", "a\nb"], ["x\r"]):
        with pytest.raises(EcalStateError, match="line break"):
            quote_args(bad)
    with pytest.raises(EcalStateError, match="line break"):
        environment_arg({"ECALSTATE_OPTION_TAG": "a\nb"})
    with pytest.raises(EcalStateError, match=r"may not set \+EcalRun"):
        CondorBackend("/tmp/x", template={"+EcalRun": "1"})
    with pytest.raises(EcalStateError, match="may not set getenv"):  # the handler's environment never reaches jobs
        CondorBackend("/tmp/x", template={"getenv": "True"})


def test_the_phisym_workflows_run_on_the_pool(condor_pool: Any, workdir: Path, sqlite_url: str) -> None:
    """The example workflows' stdlib payloads run inside the pool (trixie's python3, as the job user)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "handlers"))
    from phisym_calib import PhiSymCalib
    from phisym_plots import PhiSymPlots
    from phisym_reco import PhiSymReco

    from ecalstate import RunSpec

    store = Store.open(sqlite_url, actor="tester", create=True)
    store.create_campaign(C)
    store.add_task(C, "phisym-reco", max_retries=1)
    store.add_task(C, "phisym-calib", depends_on=["phisym-reco"])
    store.add_task(C, "phisym-plots", depends_on=["phisym-calib"])
    store.update_rtype(C, "all", add=["phisym-reco", "phisym-calib", "phisym-plots"])
    store.inject_runs(C, [RunSpec(21, 3, {"nevents": 60000, "inject_failure": 1}), RunSpec(22, 3, {"nevents": 20000})])
    assert store.close_fill(C, 3, "beam dumped")  # a per-fill group is claimed only once its fill ended
    reco = PhiSymReco(store, CondorBackend(workdir, template=PhiSymReco.condor))
    calib = PhiSymCalib(store, CondorBackend(workdir, template=PhiSymCalib.condor))
    reco.submit(C)
    settle(reco, C, deadline=120)  # run 22 done; run 21's first job failed: its reco waits for resubmit
    # the fill waits for every run's reconstruction: never calibrated from run 22 alone
    assert calib.submit(C, dry_run=True).waiting == ["fill 3 waits: run 21 phisym-reco processing"]
    assert calib.submit(C).counts == {}
    for workflow in (PhiSymReco, PhiSymCalib, PhiSymPlots):
        handler = workflow(store, CondorBackend(workdir, template=workflow.condor))
        handler.submit(C)
        settle(handler, C, deadline=120)
        while handler.resubmit(C).counts:
            settle(handler, C, deadline=120)
    assert [r.statuses for r in store.overview(C).rows] == [
        {"phisym-reco": "done", "phisym-calib": "merged", "phisym-plots": "merged"},
        {"phisym-reco": "done", "phisym-calib": "done", "phisym-plots": "done"}]
    assert store.list_jobs(C, "phisym-reco", run=21)[0].attempts == 2  # the injected failure, resubmitted
    png = Path(store.instance(C, "phisym-plots", 22).outputs["plots"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_uid == 2001  # written by the job user
    store.close()


def test_a_shell_payload_runs_and_its_failure_quotes_stderr(workdir: Path, tmp_path: Path) -> None:
    """Issue 13, items 4 and 2: a shell script is staged like a .py payload (it was held with "No such file"), and
    a failed job's reason carries the last line of its stderr, as on the local backend."""
    backend = CondorBackend(workdir, template={"request_memory": "64MB"})
    script = tmp_path / "scripts" / "calib.sh"
    script.parent.mkdir()
    script.write_text('#!/bin/sh\necho "working on $1"\necho "fit diverged for $1" >&2\necho >&2\nexit "$2"\n')
    script.chmod(0o755)
    keys = [JobKey(21, 0, 1, 1), JobKey(21, 1, 1, 1)]
    jobs = [backend.batch_job(C, "shell", k, JobSpec(k.jid, str(script), ("EB+01", str(k.jid * 4))))
            for k in keys]
    backend.submit(C, "shell", jobs)
    stop = time.monotonic() + 120
    while True:
        seen = backend.observe(C, "shell", keys)
        if len(seen) == 2 and all(o.status in ("done", "failed") for o in seen.values()):
            break
        assert time.monotonic() < stop, seen
        time.sleep(0.5)
    assert [(seen[k].status, seen[k].reason) for k in keys] == [
        ("done", ""), ("failed", "exit code 4: fit diverged for EB+01")]
    assert (jobs[0].folder / "stdout").read_text() == "working on EB+01\n"
