"""The ecalautoctrl compat layer: the original's documented fragment runs unchanged (SQLite file and PostgreSQL),
leaves the state the original left (merged group, leader processing, job 0 done with its fields), every
change audited; the handler's check finishes the task; refused calls raise typed errors and write nothing."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from drive import drive_instance, snapshot

from ecalstate import RunSpec, Store, TransitionNotAllowed
from ecalstate.compat import JobCtrl, RunCtrl, TaskHandler, close_stores
from ecalstate.errors import Invalid, NotFound
from ecalstate.statemachine import TaskStatus, UnknownStatus

TASK = "pi0-mon"
FILL_A = [356001, 356002, 356003]  # fill 8000: the last run leads, the others are merged
FILL_B = [356010]  # fill 8001: a group of one


@pytest.fixture
def db(db_url: str) -> Iterator[str]:
    with Store.open(db_url, actor="setup", create=True) as store:
        store.create_campaign("prompt")
        store.add_task("prompt", "reco")
        store.add_task("prompt", TASK, max_retries=1)
        store.add_task("prompt", "calib", depends_on=["reco"])
        store.update_rtype("prompt", "all", add=["reco", TASK, "calib"])
        store.inject_runs("prompt", [RunSpec(r, 8000, {"era": "Run2022F"}) for r in FILL_A]
                          + [RunSpec(r, 8001, {"era": "Run2022G"}) for r in FILL_B])
    yield db_url
    close_stores()


class Pi0Monitoring(TaskHandler):
    """A per-fill monitoring handler in the original's style; its submit wraps the documented fragment."""

    def __init__(self) -> None:
        super().__init__(task=TASK)
        self.parser.add_argument("--eosdir", default="/eos/ecal/pi0")
        self.parser.add_argument("--plotsurl", default="https://ecal-automation.example/pi0")

    def submit(self) -> None:
        fills: dict[str, list[dict[str, Any]]] = {}
        for run_dict in self.rctrl.getRuns(status={self.task: "new"}):
            fills.setdefault(run_dict["fill"], []).append(run_dict)
        for group in fills.values():
            group.sort(key=lambda r: int(r["run_number"]))
            run = run_dict = group[-1]
            eosdir = f"{self.opts.eosdir}/{run['fill']}"
            plotsurl = f"{self.opts.plotsurl}/{run['fill']}"
            # --- the fragment from the original's documentation, unchanged ---
            jctrl = JobCtrl(workflow=self.task, campaign=self.campaign,
                            tags={'run_number': run, 'fill': run_dict['fill']}, dbname=self.opts.dbname)
            if not jctrl.taskExist():
                jctrl.createTask(jids=[0], fields=[{'group': ','.join([r['run_number'] for r in group[:-1]])}])
            try:
                jctrl.running(jid=0)
                self.rctrl.updateStatus(run=run['run_number'], status={self.task: 'processing'})
                for r in group[:-1]:
                    self.rctrl.updateStatus(run=r['run_number'], status={self.task: 'merged'})
                jctrl.done(jid=0, fields={'output': f'{eosdir}/pi0_fitMassInfo_{run["fill"]}.txt', 'plots': plotsurl})
            except Exception as e:
                jctrl.failed(jid=0)
                self.log.error(f'Failed producing the monitoring plots for fill {run["fill"]}: {e}')


def task_history(store: Store, run: int) -> list[tuple[Any, ...]]:
    return [(h.entity, h.jid, h.from_status, h.to_status) for h in store.history("prompt", TASK, run, limit=None)]


def test_fragment_leaves_the_original_state_then_check_finishes(db: str, caplog: pytest.LogCaptureFixture) -> None:
    handler = Pi0Monitoring()
    with caplog.at_level(logging.INFO, logger="ecalstate.compat"):
        assert handler(["--db", db, "-c", "prompt", "submit"]) == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

    with Store.open(db) as store:
        leader = store.instance("prompt", TASK, 356003)
        assert (leader.status, leader.generation) == ("processing", 1)
        for run in FILL_A[:-1]:
            merged = store.instance("prompt", TASK, run)
            assert (merged.status, merged.leader_run) == ("merged", 356003)
        (job,) = store.list_jobs("prompt", TASK, run=356003)
        assert (job.jid, job.status) == (0, "done")
        assert job.fields == {"group": "356001,356002", "output": "/eos/ecal/pi0/8000/pi0_fitMassInfo_8000.txt",
                              "plots": "https://ecal-automation.example/pi0/8000"}
        (single,) = store.list_jobs("prompt", TASK, run=356010)
        assert (single.status, single.fields["group"]) == ("done", "")
        assert store.instance("prompt", TASK, 356010).status == "processing"
        # every change audited, in order: injection, createTask's claim, the job's life, the merges
        assert task_history(store, 356003) == [
            ("task", None, None, "new"), ("task", None, "new", "processing"),
            ("job", 0, None, "idle"), ("job", 0, "idle", "running"), ("job", 0, "running", "done")]
        for run in FILL_A[:-1]:
            assert task_history(store, run) == [("task", None, None, "new"), ("task", None, "new", "merged")]

    assert handler(["--db", db, "-c", "prompt", "check"]) == 0
    with Store.open(db) as store:
        leader = store.instance("prompt", TASK, 356003)
        assert leader.status == "done"
        assert leader.outputs == {"output": "/eos/ecal/pi0/8000/pi0_fitMassInfo_8000.txt",
                                  "plots": "https://ecal-automation.example/pi0/8000"}
        assert [store.instance("prompt", TASK, r).status for r in FILL_A[:-1]] == ["merged", "merged"]
        assert task_history(store, 356003)[-1] == ("task", None, "processing", "done")
        health = store.health("prompt")
        assert not health.failing and not health.stuck
    rctrl = RunCtrl(dbname=db, campaign="prompt")
    assert rctrl.getOutput(process=TASK, runs=["356003", 356010]) == [
        "/eos/ecal/pi0/8000/pi0_fitMassInfo_8000.txt", "/eos/ecal/pi0/8001/pi0_fitMassInfo_8001.txt"]
    assert rctrl.getOutput(process=TASK, era="Run2022G") == ["/eos/ecal/pi0/8001/pi0_fitMassInfo_8001.txt"]
    assert [r["run_number"] for r in rctrl.getRuns(status={TASK: ["merged"]})] == ["356001", "356002"]
    # a second submit finds nothing new: nothing changes
    with Store.open(db) as store:
        before = snapshot(store)
    assert handler(["--db", db, "-c", "prompt", "submit"]) == 0
    with Store.open(db) as store:
        after = snapshot(store)
    assert {k: v for k, v in after.items() if k not in ("heartbeat", "audit_log", "string")} == \
        {k: v for k, v in before.items() if k not in ("heartbeat", "audit_log", "string")}


def test_a_stage_failing_in_one_campaign_is_logged_and_recorded(db: str, caplog: pytest.LogCaptureFixture) -> None:
    with Store.open(db) as store:
        store.create_campaign("rereco")
        store.add_task("rereco", TASK)
    handler = Pi0Monitoring()  # resubmit is not implemented: a failure in both campaigns, each recorded
    assert handler(["--db", db, "-c", "prompt,rereco", "resubmit"]) == 1
    assert sum("resubmit of pi0-mon" in r.getMessage() for r in caplog.records) == 2
    with Store.open(db) as store:
        assert {(f.campaign, f.stage, f.ok) for f in store.health().failing} == {
            ("prompt", "resubmit", False), ("rereco", "resubmit", False)}


def assert_refused_writes_nothing(db: str, call: Any, error: type[Exception]) -> Exception:
    with Store.open(db) as store:
        before = snapshot(store)
    with pytest.raises(error) as info:
        call()
    with Store.open(db) as store:
        assert snapshot(store) == before
    return info.value


def test_refused_updates_raise_typed_errors_and_write_nothing(db: str) -> None:
    rctrl = RunCtrl(dbname=db, campaign="prompt")
    jctrl = JobCtrl(workflow=TASK, campaign="prompt", tags={"run_number": "356010", "fill": "8001"}, dbname=db)
    jctrl.createTask(jids=[0, 1])
    for jid in (0, 1):
        jctrl.running(jid=jid)
        jctrl.done(jid=jid, fields={"output": f"/eos/f{jid}.root"})
    assert jctrl.taskCompleted()
    rctrl.updateStatus(run=356010, status={TASK: "done"})
    # one element per job output (callers remove files one by one), run then job order
    assert rctrl.getOutput(process=TASK, runs=[356010]) == ["/eos/f0.root", "/eos/f1.root"]

    err = assert_refused_writes_nothing(db, lambda: rctrl.updateStatus(run=356010, status={TASK: "new"}),
                                        TransitionNotAllowed)
    assert "done -> new not allowed" in str(err)
    # a done job cannot run again (the original wrote the point anyway)
    assert_refused_writes_nothing(db, lambda: jctrl.running(jid=0), TransitionNotAllowed)
    # a status the original never had, and a run that was never injected
    assert_refused_writes_nothing(db, lambda: rctrl.updateStatus(run=356010, status={TASK: "locked"}), UnknownStatus)
    assert_refused_writes_nothing(db, lambda: rctrl.updateStatus(run=999999, status={TASK: "processing"}), NotFound)
    # all or nothing: a legal change next to a refused one is not written either
    assert_refused_writes_nothing(
        db, lambda: rctrl.updateStatus(run=356001, status={"reco": "processing", TASK: "done"}), TransitionNotAllowed)
    # createTask on a finished instance: reprocess first
    assert_refused_writes_nothing(db, lambda: jctrl.createTask(jids=[0], recreate=True), TransitionNotAllowed)
    # a downstream task cannot start before its upstream is done
    err = assert_refused_writes_nothing(
        db, lambda: JobCtrl(workflow="calib", campaign="prompt", tags={"run_number": 356001},
                            dbname=db).createTask(jids=[0]), TransitionNotAllowed)
    assert "upstream task reco is new" in str(err)
    # merging needs a leader: no processing run of the task in fill 8000
    err = assert_refused_writes_nothing(db, lambda: rctrl.updateStatus(run=356001, status={TASK: "merged"}), Invalid)
    assert "found none" in str(err)


def test_done_is_refused_while_jobs_are_in_flight(db: str) -> None:
    rctrl = RunCtrl(dbname=db, campaign="prompt")
    jctrl = JobCtrl(workflow=TASK, campaign="prompt", tags={"run_number": 356002}, dbname=db)
    jctrl.createTask(jids=[0, 1])
    jctrl.running(jid=0)
    err = assert_refused_writes_nothing(db, lambda: rctrl.updateStatus(run=356002, status={TASK: "done"}),
                                        TransitionNotAllowed)
    assert "2 job(s) of generation 1 still idle or running" in str(err)
    rctrl.updateStatus(run=356002, status={TASK: "failed"})
    assert rctrl.getRuns(status={TASK: "failed"})[0]["run_number"] == "356002"


def test_recreate_opens_a_new_generation_and_keeps_history(db: str) -> None:
    jctrl = JobCtrl(workflow=TASK, campaign="prompt", tags={"run_number": 356001}, dbname=db)
    assert not jctrl.taskExist()
    assert jctrl.createTask(jids=[0, 1], fields=[{"n": 0}, {"n": 1}]) == 1
    assert jctrl.taskExist()
    with pytest.raises(Invalid, match="recreate=True opens a new generation"):
        jctrl.createTask(jids=[0])
    jctrl.running(jid=0)
    jctrl.failed(jid=0, fields={"log": "oom"})
    jctrl.idle(jid=0)
    jctrl.failed(jid=0)
    assert jctrl.getNRetries(jid=0) == 2
    # the retry guard: max retries 1, two attempts used
    with pytest.raises(TransitionNotAllowed, match="retries exhausted"):
        jctrl.idle(jid=0)
    assert jctrl.getJobs() == {"idle": ["1"], "running": [], "done": [], "failed": ["0"]}
    (last,) = jctrl.getJob(jid=0, last=True)  # the original's last(*): a list of one point
    assert (last["failed"], last["idle"], last["log"], last["n"]) == (1, 0, "oom", 0)
    points = jctrl.getJob(jid=0)  # the original's default: every point, as InfluxDB's ResultSet
    assert [p["failed"] for p in points.get_points()] == [0, 0, 1, 0, 1]

    assert jctrl.createTask(jids=[0], recreate=True) == 2
    assert jctrl.getJobs() == {"idle": ["0"], "running": [], "done": [], "failed": []}
    assert jctrl.getNRetries(jid=0) == 0
    with Store.open(jctrl.store.db.url) as store:
        generations = [(j.generation, j.jid, j.status) for j in store.list_jobs("prompt", TASK, all_generations=True)]
        assert generations == [(1, 0, "failed"), (1, 1, "idle"), (2, 0, "idle")]
        assert store.instance("prompt", TASK, 356001).status == TaskStatus.PROCESSING.value


def test_updatestatus_processing_claims_and_reprocess_cascades(db: str) -> None:
    rctrl = RunCtrl(dbname=db, campaign="prompt")
    rctrl.updateStatus(run="356003", status={TASK: "processing"})
    rctrl.updateStatus(run={"run_number": "356002"}, status={TASK: "merged"}, leader=356003)
    jctrl = JobCtrl(workflow=TASK, campaign="prompt", tags={"run_number": 356003}, dbname=db)
    assert not jctrl.taskExist()  # claimed without jobs: createTask fills the claimed generation
    assert jctrl.createTask(jids=[0]) == 1
    jctrl.done(jid=0)
    rctrl.updateStatus(run=356003, status={TASK: "done"})
    with pytest.raises(Invalid, match="one task at a time"):
        rctrl.updateStatus(run=356003, status={TASK: "reprocess", "reco": "processing"})
    result = rctrl.updateStatus(run=356003, status={TASK: "reprocess"})
    assert {c.key for c in result.changes} == {f"{TASK} run 356003", f"{TASK} run 356002"}
    assert not jctrl.taskExist()
    assert jctrl.createTask(jids=[0]) == 2
    with Store.open(db) as store:
        drive_instance(store, "prompt", "reco", 356001, TaskStatus.PROCESSING)
    assert rctrl.getRuns(status={"reco": "processing", TASK: "new"})[0]["run_number"] == "356001"


def test_eflow_style_jobctrl_by_fill_and_group_belongs_to_the_leader(db: str) -> None:
    """``JobCtrl(task=..., tags={'fill': F, 'group': '...'})`` as the eflow scripts call it: no run_number; the
    jobs belong to the group's leader run (the newest), the string job ids round-trip into idle()/done()."""
    with Store.open(db) as store:
        store.add_task("prompt", "eflow-phisym")
        store.update_rtype("prompt", "all", add=["eflow-phisym"], backfill=True)
    group = ",".join(str(r) for r in FILL_A)
    jctrl = JobCtrl(task="eflow-phisym", campaign="prompt", tags={"fill": 8000, "group": group}, dbname=db)
    assert jctrl.run == 356003
    # a field named as one of the JobCtrl's tags is refused, as the original's sanity check refused it
    with pytest.raises(Invalid, match="field 'group' of job 0 names a tag"):
        jctrl.createTask(jids=[0, 1], fields=[{"group": group}, {"group": group}])
    jctrl.createTask(jids=[0, 1], fields=[{"runs": group}, {"runs": group}])
    rctrl = RunCtrl(dbname=db, campaign="prompt")
    for run in FILL_A[:-1]:
        rctrl.updateStatus(run=run, status={"eflow-phisym": "merged"})
    for jid in jctrl.getIdle():
        jctrl.running(jid)
        jctrl.failed(jid=jid)
    assert jctrl.getFailed() == ["0", "1"]
    for jid in jctrl.getFailed():  # the usual resubmit loop: ids come back as strings
        jctrl.idle(jid)
    jctrl.running("0")
    jctrl.done(jid="0", fields={"output": "/eos/eflow/8000_0.root"})
    jctrl.running(jid="1")
    jctrl.done(jid="1", fields={"output": "/eos/eflow/8000_1.root"})
    assert jctrl.taskCompleted() and jctrl.getNRetries("0") == 1
    rctrl.updateStatus(run=356003, status={"eflow-phisym": "done"})
    with Store.open(db) as store:
        assert [store.instance("prompt", "eflow-phisym", r).leader_run for r in FILL_A] == [356003, 356003, None]
        assert [j.run_number for j in store.list_jobs("prompt", "eflow-phisym")] == [356003, 356003]
    files = rctrl.getOutput(process="eflow-phisym", runs=FILL_A)
    assert files == ["/eos/eflow/8000_0.root", "/eos/eflow/8000_1.root"]
    files.remove("/eos/eflow/8000_0.root")  # what the callers do with each element
    # the fill alone: the group is every run of the fill; a group naming a run of another fill is refused
    assert JobCtrl(task="eflow-phisym", campaign="prompt", tags={"fill": "8000"}, dbname=db).run == 356003
    with pytest.raises(Invalid, match="run 356010 is in fill 8001, not 8000"):
        JobCtrl(task="eflow-phisym", campaign="prompt", tags={"fill": 8000, "group": "356002,356010"}, dbname=db)
    with pytest.raises(Invalid, match="workflow= or task="):
        JobCtrl(campaign="prompt", tags={"run_number": 356001}, dbname=db)
    with pytest.raises(Invalid, match="invalid job id 'x'"):
        jctrl.idle("x")


def test_import_ecalautoctrl_runs_unchanged_scripts(db: str) -> None:
    import ecalautoctrl
    from ecalautoctrl import JobCtrl as AliasJobCtrl
    from ecalautoctrl import QueryOMS, RunCtrl as AliasRunCtrl, TaskHandler as AliasHandler

    assert (AliasJobCtrl, AliasRunCtrl, AliasHandler) == (JobCtrl, RunCtrl, TaskHandler)
    assert ecalautoctrl.QueryOMS is QueryOMS
    rctrl = AliasRunCtrl(dbname=db, campaign="prompt")
    assert [r["run_number"] for r in rctrl.getRuns(status={TASK: "new"})] == ["356001", "356002", "356003", "356010"]


def test_queryoms_answers_from_the_oms_client(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """``QueryOMS().get_run_attribute(run, 'fill_number')`` and the ``.oms.query(...)`` chain, on item 4's client,
    against the local OMS-format server, with credentials from the environment."""
    from oms_server import oms_server

    from ecalautoctrl import QueryOMS

    secret = tmp_path / "secret"
    secret.write_text("pw-of-the-client")
    secret.chmod(0o600)
    with oms_server("ecal", "pw-of-the-client") as oms:
        oms.run(390001, 9000)
        oms.fill(9000, end="2026-06-02T03:00:00Z")
        oms.fill(9001)
        for name, value in {"ECALSTATE_OMS_URL": oms.api_url, "ECALSTATE_OMS_CLIENT_ID": "ecal",
                            "ECALSTATE_OMS_CLIENT_SECRET_FILE": str(secret),
                            "ECALSTATE_OMS_TOKEN_URL": oms.token_url}.items():
            monkeypatch.setenv(name, value)
        query = QueryOMS()
        assert query.get_run_attribute("390001", "fill_number") == 9000
        assert query.get_run_attribute(390001, "end_time") == "2026-06-01T12:00:00Z"
        data = query.oms.query("fills").filter("fill_number", 9000, "GE").attrs(["fill_number", "end_time"]) \
            .sort("fill_number", asc=False).data().json()
        assert [(d["type"], d["attributes"]["fill_number"], d["attributes"]["end_time"]) for d in data["data"]] == [
            ("fills", 9001, None), ("fills", 9000, "2026-06-02T03:00:00Z")]
        with pytest.raises(NotFound, match="OMS has no run 390002"):
            query.get_run_attribute(390002, "fill_number")
