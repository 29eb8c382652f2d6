"""The scripted night (issue 23, item 2): a night of prompt calibration played on a real store with the real PhiSym
handler stages on the local backend (their jobs real processes), OMS answers written through the run source's sync,
operators acting through the command line, a Jenkins stage killed by SIGKILL in the middle of its submit and one
failing on a misconfigured node; then ``ecalstate report shift`` (text and Markdown) must mention every event of the
night, and nothing of the shift before ``--since``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from click.testing import CliRunner

from ecalstate import RunSpec, Store
from ecalstate.backends.local import LocalBackend
from ecalstate.cli import main
from ecalstate.handler import TaskHandler
from ecalstate.sources import SourceBatch, SourceRun
from ecalstate.sources.store import RunSources

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "handlers"))

from phisym_calib import PhiSymCalib  # noqa: E402
from phisym_reco import PhiSymReco  # noqa: E402

C = "prompt"
RECO, CALIB = "phisym-reco", "phisym-calib"


def ago(hours: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")


def collisions(run: int, fill: int, ended: float, **meta: object) -> SourceRun:
    return SourceRun(RunSpec(run, fill, {"class": "Collisions", "nevents": 20000, "end_time": ago(ended), **meta}))


def cli(db: str, actor: str, *args: str) -> str:
    """An operator's command, through the real command line."""
    result = CliRunner(env={"ECALSTATE_CAMPAIGN": None, "ECALSTATE_DB": None}).invoke(
        main, ["--db", db, "--actor", actor, *args], prog_name="ecalstate")
    assert result.exit_code == 0, (args, result.output)
    return result.stdout


def build(db: str, work: Path, handler: type[TaskHandler], actor: str) -> TaskHandler:
    """One Jenkins build of a handler's stages (its actor is the build's tag)."""
    return handler(Store.open(db, actor=actor), LocalBackend(work, slots=2))


def settle(handler: TaskHandler, timeout: float = 90.0) -> None:
    """check until no job of the handler's task is idle or running."""
    stop = time.monotonic() + timeout
    while True:
        handler.check(C)
        if not [j for j in handler.store.list_jobs(C, handler.task) if j.status in ("idle", "running")]:
            return
        assert time.monotonic() < stop, "jobs did not finish"
        time.sleep(0.2)


def stages(db: str, work: Path, handler: type[TaskHandler], actor: str, resubmit: bool = False) -> None:
    """A build: submit, then check until its jobs are done (and resubmit what failed, then check again)."""
    stage = build(db, work, handler, actor)
    try:
        stage.submit(C)
        settle(stage)
        if resubmit:
            stage.resubmit(C)
            settle(stage)
    finally:
        stage.store.close()


KILLED = """
import sys, time
from pathlib import Path
sys.path.insert(0, {handlers!r})
from ecalstate import Store
from ecalstate.backends.local import LocalBackend
from phisym_reco import PhiSymReco

class Slow(LocalBackend):
    def submit(self, campaign, task, jobs):  # the batch system takes its time: Jenkins aborts the build here
        Path({ready!r}).write_text("claimed")
        time.sleep(120)

PhiSymReco(Store.open({db!r}, actor="jenkins-reco-8"), Slow({work!r}, slots=2)).submit("prompt")
"""


def test_the_shift_report_mentions_every_event_of_a_scripted_night(tmp_path: Path) -> None:
    db, work = str(tmp_path / "state.db"), tmp_path / "work"
    with Store.open(db, actor="setup", create=True) as store:
        store.create_campaign(C)
        store.add_task(C, RECO, max_retries=1)
        store.add_task(C, CALIB, depends_on=[RECO], max_retries=0)
        store.update_task(C, CALIB, deadline=2 * 3600, deadline_from="fill-end", warn_before=1800)
        store.create_rtype(C, "collisions", "class=Collisions")
        store.update_rtype(C, "collisions", add=[RECO, CALIB])

    # the shift before: fill 9000 taken, closed and calibrated
    with Store.open(db, actor="oms-sync") as store:
        RunSources(store).apply_sync(C, "oms", SourceBatch(
            [collisions(379998, 9000, 7.0), collisions(379999, 9000, 6.5)], last_run=379999))
    cli(db, "bob", "run", "close-fill", "-c", C, "--fill", "9000", "--reason", "closed by the previous shift")
    stages(db, work, PhiSymReco, "jenkins-reco-5")
    stages(db, work, PhiSymCalib, "jenkins-calib-2")
    with Store.open(db) as store:
        assert store.instance(C, CALIB, 379999).status == "done"
        since = store.clock()
    time.sleep(0.01)

    # the night: OMS lists fills 9001 and 9002 (dumped), a cosmics run, and fill 9003 with a run still being taken
    with Store.open(db, actor="oms-sync") as store:
        RunSources(store).apply_sync(C, "oms", SourceBatch(
            [collisions(380001, 9001, 3.4), collisions(380002, 9001, 3.2, inject_failure=1),
             collisions(380003, 9001, 3.0), collisions(380004, 9002, 2.8, inject_failure=9),
             collisions(380005, 9002, 2.6),
             SourceRun(RunSpec(380006, 9002, {"class": "Cosmics", "end_time": ago(2.5)}))],
            fills_ended={9001: "OMS: fill ended (beam dumped)", 9002: "OMS: fill ended (beam dumped)"},
            fills_dumped={9001: ago(2.95), 9002: ago(2.5)}, last_run=380006))
    cli(db, "alice", "set", "-c", C, "--task", RECO, "--runs", "380005", "skipped", "--reason", "ECAL partly off")
    stages(db, work, PhiSymReco, "jenkins-reco-6", resubmit=True)  # 380002 recovered, 380004 failed for good
    stages(db, work, PhiSymCalib, "jenkins-calib-3")  # fill 9001; fill 9002 waits for 380004
    cli(db, "alice", "reprocess", "-c", C, "--task", CALIB, "--fill", "9001", "--downstream",
        "--reason", "new laser corrections")
    stages(db, work, PhiSymCalib, "jenkins-calib-4")  # fill 9001 calibrated again

    # a node whose work folder anyone may write: the stage refuses it, and says so in its heartbeat
    shared = tmp_path / "shared-work"
    shared.mkdir()
    shared.chmod(0o777)
    failed = subprocess.run([sys.executable, str(REPO / "handlers" / "phisym_reco.py"), "-c", C, "--db", db,
                             "--actor", "jenkins-reco-7", "--workdir", str(shared), "submit"],
                            capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1 and "is not a folder of this user" in failed.stderr, failed.stderr

    # fill 9003: a run ends, another is being taken; Jenkins kills the submit stage that claimed the first
    with Store.open(db, actor="oms-sync") as store:
        RunSources(store).apply_sync(C, "oms", SourceBatch(
            [collisions(380007, 9003, 0.5), SourceRun(RunSpec(380008, 9003, {"class": "Collisions"}), ongoing=True)],
            last_run=380008))
    ready = tmp_path / "claimed"
    victim = subprocess.Popen([sys.executable, "-c", KILLED.format(handlers=str(REPO / "handlers"), ready=str(ready),
                                                                  db=db, work=str(work))],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stop = time.monotonic() + 60
    while not ready.exists():
        assert victim.poll() is None and time.monotonic() < stop, victim.communicate()
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait(timeout=30) == -signal.SIGKILL
    stages(db, work, PhiSymReco, "jenkins-reco-9")  # the next build submits what the killed one claimed
    cli(db, "alice", "run", "close-fill", "-c", C, "--fill", "9003", "--reason", "beam dumped, OMS late")

    with Store.open(db) as store:
        assert [store.instance(C, RECO, r).status for r in (380002, 380004, 380005, 380007)] == [
            "done", "failed", "skipped", "done"]
        assert store.instance(C, CALIB, 380003).generation == 2

    for fmt in ("text", "markdown"):
        told(fmt, cli(db, "shifter", "report", "shift", "-c", C, "--since", since, "--format", fmt))


def told(fmt: str, out: str) -> None:
    """Every event of the night is in the report ``out``, and nothing of the shift before."""
    lines = out.splitlines()

    def line(*words: str) -> str:
        found = [x for x in lines if all(w in x for w in words)]
        assert found, f"no line with {words} in the {fmt} report:\n{out}"
        return found[0]

    # runs arrived, ended, skipped, being taken, activating no task
    assert "8 runs arrived: 380001-380008 (fills 9001-9003)" in out
    line("run 380001 (fill 9001): arrived", "ended", "tasks phisym-calib, phisym-reco")
    line("run 380005 (fill 9002)", "skipped: ECAL partly off (alice)")
    line("run 380006 (fill 9002)", "no task: no run type activates its tasks", "class=Cosmics")
    line("run 380008 (fill 9003)", "still being taken")
    line("fill 9001 ended", "OMS: fill ended (beam dumped) (oms-sync)")
    line("fill 9002 ended", "OMS: fill ended (beam dumped) (oms-sync)")
    line("fill 9003 ended", "beam dumped, OMS late (alice)")
    # fills calibrated, by which version, and the runs reconstructed
    assert len([x for x in lines if "fill 9001: phisym-calib 2.1 from runs 380001-380003" in x]) == 2
    line("phisym-reco 1.4: 4 runs done (380001-380003,380007)")
    # what failed, and what became of it
    line("phisym-reco run 380002:", "injected transient failure", "recovered by a retry: attempt 2 done")
    line("phisym-reco run 380004:", "2 failed attempts", "injected transient failure", "failed for good: no retry left")
    line("phisym-calib run 380004 blocked: its upstream phisym-reco failed")
    # operator actions, who and why
    line("alice [", "phisym-reco new -> skipped, run 380005: ECAL partly off")
    line("alice [", "phisym-calib done -> reprocess, run 380003: new laser corrections")
    line("alice [", "phisym-calib merged -> reprocess, runs 380001-380002: new laser corrections")
    # stages: the one that failed, the one killed mid-submit (and who submitted its jobs)
    line("phisym-reco submit failed once", "is not a folder of this user")
    line("phisym-reco submit claimed run 380007", "(jenkins-reco-8)", "was killed or failed after its claim",
         "its jobs were submitted", "by jenkins-reco-9")
    # what needs action now, with its command
    line("problem: phisym-reco run 380004 failed with no retry left",
         "ecalstate reprocess -c prompt --task phisym-reco --runs 380004 --reason")
    # deadlines: fill 9002's calibration missed, fill 9001's done late
    line("missed: phisym-calib run 380004 (fill 9002): due")
    line("done late: phisym-calib run 380003 (fill 9001): due")
    assert re.search(r"latency: phisym-calib: 1 done, p50 [0-9.]+ h, p95 [0-9.]+ h, max [0-9.]+ h, 0% within",
                     out), out
    # nothing of the shift before
    for before in ("379998", "379999", "fill 9000", "previous shift", "jenkins-reco-5", "jenkins-calib-2",
                   "bob"):
        assert before not in out, (before, fmt)
