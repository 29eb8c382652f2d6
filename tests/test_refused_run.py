"""Issue 25 item 1, what remained after the backfill's skip cascade: a run that cannot start must neither stop a
stage nor wait under a wrong name.

The state: ``calib`` was declared before it depended on ``reco``, the operator skipped ``reco`` for run 2, then the
dependency was added (``task update --depends-on``): calib run 2 can never start (no cascade made it skipped);
``reco`` of run 4 is still being processed. A drop-in handler written as docs/migration.md shows
(``getRuns(status={task: "new"})``, then the original's fragment) meets both runs in its loop.
"""

from __future__ import annotations

import logging

import pytest

from ecalstate import RunSpec, Store, TransitionNotAllowed
from ecalstate.compat import JobCtrl, TaskHandler, close_stores

C = "prompt"


def world(store: Store) -> Store:
    store.create_campaign(C)
    store.add_task(C, "reco")
    store.add_task(C, "calib")
    store.update_rtype(C, "all", add=["reco", "calib"])
    store.inject_runs(C, [RunSpec(1, 10), RunSpec(2, 10), RunSpec(3, 11), RunSpec(4, 12), RunSpec(5, 13)])
    for claim in store.claim(C, "reco", limit=4):  # runs 1-4; run 5's reconstruction never starts
        store.create_jobs(C, "reco", claim.run_number, [0])
        if claim.run_number != 4:  # run 4's is still running
            store.set_job_status(C, "reco", claim.run_number, 0, "done")
    store.complete_instances(C, "reco")
    store.reprocess(C, "reco", runs=[2], reason="ECAL partly off")
    store.set_status(C, "reco", [2], "skipped", reason="ECAL partly off")
    store.update_task(C, "calib", depends_on=["reco"])
    return store


def make_world(url: str) -> None:
    with Store.open(url, actor="setup", create=True) as store:
        world(store)


class Calib(TaskHandler):
    """A per-run drop-in handler: the documented loop and the original's fragment."""

    def __init__(self) -> None:
        super().__init__(task="calib")

    def submit(self) -> None:
        for run in self.rctrl.getRuns(status={self.task: "new"}):
            jctrl = JobCtrl(workflow=self.task, campaign=self.campaign, tags={"run_number": run["run_number"]},
                            dbname=self.opts.dbname)
            if not jctrl.taskExist():
                jctrl.createTask(jids=[0])
            try:
                jctrl.running(jid=0)
                self.rctrl.updateStatus(run=run["run_number"], status={self.task: "processing"})
                jctrl.done(jid=0, fields={"output": f"/eos/calib_{run['run_number']}.db"})
            except Exception as err:
                jctrl.failed(jid=0)
                self.log.error(f"calibration of run {run['run_number']} failed: {err}")


def test_a_dropin_stage_goes_on_past_runs_whose_upstream_is_not_ready(db_url: str,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    make_world(db_url)
    try:
        with caplog.at_level(logging.INFO, logger="ecalstate.compat"):
            assert Calib()(["--db", db_url, "-c", C, "submit"]) == 0
        with Store.open(db_url) as store:
            status = {n: store.instance(C, "calib", n).status for n in range(1, 6)}
            assert status == {1: "processing", 2: "new", 3: "processing", 4: "new", 5: "new"}
            assert [j.status for j in store.list_jobs(C, "calib", run=3)] == ["done"]
            assert not store.list_jobs(C, "calib", run=2) and not store.list_jobs(C, "calib", run=4)
            (beat,) = store.history(C, entity="handler", limit=None)
            assert (beat.task, beat.to_status) == ("calib", "ok")
            assert beat.reason == "3 run(s) wait for their upstream tasks: calib run 2, calib run 4, calib run 5"
            assert not store.health(C).failing
        waits = [r.getMessage() for r in caplog.records if "waits" in r.getMessage()]
        assert any("calib run 2 waits: upstream task reco is skipped" in w for w in waits), waits
        assert any("calib run 4 waits: upstream task reco is processing" in w for w in waits), waits
        assert any("calib run 5 waits: upstream task reco is new" in w for w in waits), waits
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        close_stores()


def test_outside_a_stage_the_refusal_still_raises(sqlite_url: str) -> None:
    """The library's contract is unchanged: a script calling JobCtrl itself gets the typed error."""
    make_world(sqlite_url)
    try:
        with pytest.raises(TransitionNotAllowed, match="upstream task reco is skipped"):
            JobCtrl(workflow="calib", campaign=C, tags={"run_number": 2}, dbname=sqlite_url).createTask(jids=[0])
    finally:
        close_stores()


def test_a_group_waiting_on_a_run_under_a_skipped_upstream_says_so(store: Store) -> None:
    """Fill 10 waits for ever on run 2 (until an operator skips it, as health's no-upstream reason says): the plan
    names the skipped upstream, not a claim by another build."""
    world(store)
    plan = store.plan(C, "calib", "fill")
    (fill10,) = [w for w in plan.waiting if w.group == "fill 10"]
    assert str(fill10) == "fill 10 waits: run 2 reco skipped"
    assert [(c.kind, c.run, c.status) for c in fill10.causes] == [("upstream", 2, "reco skipped")]
    store.set_status(C, "calib", [2], "skipped", reason="its reconstruction was skipped")  # health's command
    assert [[e.run_number for e in g] for g in store.plan(C, "calib", "fill").groups][:1] == [[1]]
