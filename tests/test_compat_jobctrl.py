"""JobCtrl as real ECAL scripts call it (issue 24, part 2), on SQLite and PostgreSQL.

Each test is one call pattern taken from scripts written for the original: groups given as the list that
``args.run_list.split(',')`` makes, fills and job ids taken from numpy/awkward arrays (whose integer scalars are
numpy scalars), ``datetime.utcnow() - jctrl.taskEndTime()``, user fields that name a tag or a status, and the
shapes the original's getters return (``getJob(jid, last=True)[0]['output']``, ``getJob(jid).get_points()``).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest
from drive import snapshot

from ecalstate import RunSpec, Store
from ecalstate.compat import JobCtrl, close_stores
from ecalstate.errors import Invalid

TASK = "eflow"
FILL = 8000
RUNS = [357889, 357890, 357891]  # fill 8000
OTHER = 357900  # fill 8001


@pytest.fixture
def db(db_url: str) -> Iterator[str]:
    with Store.open(db_url, actor="setup", create=True) as store:
        store.create_campaign("prompt")
        store.add_task("prompt", TASK, max_retries=2)
        store.update_rtype("prompt", "all", add=[TASK])
        store.inject_runs("prompt", [RunSpec(r, FILL) for r in RUNS] + [RunSpec(OTHER, FILL + 1)])
    yield db_url
    close_stores()


def jobctrl(db: str, **tags: Any) -> JobCtrl:
    return JobCtrl(task=TASK, campaign="prompt", tags=tags, dbname=db)


def unchanged(db: str, call: Any, error: type[Exception] = Invalid) -> Exception:
    """``call`` raises ``error`` and the database is exactly as before."""
    with Store.open(db) as store:
        before = snapshot(store)
    with pytest.raises(error) as info:
        call()
    with Store.open(db) as store:
        assert snapshot(store) == before
    return info.value


def test_a_group_as_a_list_a_tuple_or_a_comma_string_names_the_same_jobs(db: str) -> None:
    """``tags={'fill': F, 'group': args.run_list.split(',')}``: was refused (``invalid run number "['357889'"``)."""
    run_list = ",".join(str(r) for r in RUNS)
    forms: list[Any] = [run_list.split(","), tuple(run_list.split(",")), run_list, list(reversed(RUNS)),
                        np.array(RUNS), [np.int64(r) for r in RUNS], f" {RUNS[0]}, {RUNS[1]} ,{RUNS[2]}"]
    first = jobctrl(db, fill=FILL, group=forms[0])
    assert first.run == RUNS[-1]  # the newest run of the group leads it
    first.createTask(jids=[0, 1])
    first.running(jid=0)
    for form in forms:
        ctrl = jobctrl(db, fill=FILL, group=form)
        assert ctrl.run == RUNS[-1], form
        assert ctrl.getJobs() == {"idle": ["1"], "running": ["0"], "done": [], "failed": []}, form
    # one run given: a list of one element, as split(',') makes it, is that run (its own leader)
    single = jobctrl(db, fill=FILL, group="357889".split(","))
    assert single.run == 357889 and not single.taskExist()
    assert jobctrl(db, fill=FILL, group=("357889",)).run == 357889
    # the group's runs must belong to the fill; a run that is not a number is named
    with pytest.raises(Invalid, match="run 357900 is in fill 8001, not 8000"):
        jobctrl(db, fill=FILL, group=["357889", "357900"])
    with pytest.raises(Invalid, match="invalid run number 'x'"):
        jobctrl(db, fill=FILL, group=["357889", "x"])
    with pytest.raises(Invalid, match="needs tags with a run_number, or a fill and/or group"):
        jobctrl(db, group=[])


def test_tags_jids_and_fields_may_be_numpy_scalars(db: str) -> None:
    """Fills and runs taken from an array (awkward's integer scalars are numpy's): the fields were a TypeError
    (``Object of type int64 is not JSON serializable``) from inside the store."""
    fills, runs = np.array([FILL, FILL + 1]), np.array(RUNS)
    ctrl = jobctrl(db, fill=fills[0], group=runs[:2])
    assert ctrl.run == RUNS[1]
    by_run = jobctrl(db, run_number=np.int32(RUNS[0]), fill=fills[0])
    assert by_run.run == RUNS[0]
    ctrl.createTask(jids=np.arange(2), fields=[{"nevents": np.int64(10), "lumi": np.float64(1.5)},
                                               {"nevents": np.int64(20), "lumi": np.float32(0.25)}])
    ctrl.running(jid=np.int64(0))
    ctrl.done(jid=np.int64(0), fields={"nevents": np.int64(12), "ok": np.bool_(True)})
    (last,) = ctrl.getJob(jid=0, last=True)
    assert (last["nevents"], last["lumi"], last["ok"]) == (12, 1.5, True)
    assert type(last["nevents"]) is int and type(last["lumi"]) is float and type(last["ok"]) is bool
    with Store.open(db) as store:
        fields = {j.jid: j.fields for j in store.list_jobs("prompt", TASK, run=RUNS[1])}
    assert fields == {0: {"nevents": 12, "lumi": 1.5, "ok": True}, 1: {"nevents": 20, "lumi": 0.25}}
    with pytest.raises(Invalid, match="invalid fill"):
        jobctrl(db, fill=np.float64(8000.5), group=runs[:2])


def test_task_end_time_is_a_naive_utc_datetime(db: str) -> None:
    """Callers write ``datetime.utcnow() - jctrl.taskEndTime()``: a TypeError with the aware datetime it was."""
    ctrl = jobctrl(db, run_number=RUNS[0])
    ctrl.createTask(jids=[0, 1])
    assert ctrl.taskEndTime() is None
    for jid in (0, 1):
        ctrl.running(jid)
        ctrl.done(jid)
    end = ctrl.taskEndTime()
    assert isinstance(end, datetime) and end.tzinfo is None
    age = datetime.utcnow() - end  # the caller's own line
    assert timedelta(0) <= age < timedelta(minutes=1)
    with Store.open(db) as store:
        last = max(j.finished_at or "" for j in store.list_jobs("prompt", TASK, run=RUNS[0]))
    assert end == datetime.fromisoformat(last).astimezone(timezone.utc).replace(tzinfo=None)


@pytest.mark.parametrize("name", ["id", "run_number", "campaign", "task", "time", "fill", "idle", "running", "done",
                                  "failed"])
def test_a_field_named_as_a_tag_or_a_status_is_refused_and_nothing_written(db: str, name: str) -> None:
    """The original's sanity check refused a point whose field keys are tag keys; a status name as a field set two
    statuses at once. Both were stored, then overwrote the tag or the status in what getJob returned."""
    ctrl = jobctrl(db, run_number=RUNS[0], fill=FILL)
    err = unchanged(db, lambda: ctrl.createTask(jids=[0, 1], fields=[{"output": "a"}, {name: 1}]))
    assert f"field {name!r} of job 1" in str(err) and "names a tag or a status" in str(err)
    ctrl.createTask(jids=[0, 1])
    ctrl.running(jid=0)
    err = unchanged(db, lambda: ctrl.done(jid=0, fields={"output": "/eos/a.root", name: "x"}))
    assert f"field {name!r} of job 0" in str(err)
    assert ctrl.getJobs()["running"] == ["0"]


def test_getjob_has_exactly_one_status_and_its_own_tags_whatever_the_store_holds(db: str) -> None:
    """Fields written around the compat layer (``ecalstate job set --field``) never overwrite a status or a tag in
    what getJob returns: exactly one status is set."""
    ctrl = jobctrl(db, run_number=RUNS[0])
    ctrl.createTask(jids=[0])
    with Store.open(db) as store:
        store.set_job_status("prompt", TASK, RUNS[0], 0, "running", fields={"done": 1, "id": "9", "output": "o"})
    (last,) = ctrl.getJob(0, last=True)
    assert {s: last[s] for s in ("idle", "running", "done", "failed")} == {"idle": 0, "running": 1, "done": 0,
                                                                          "failed": 0}
    assert "id" not in last and last["output"] == "o"
    points = list(ctrl.getJob(0).get_points())
    assert [sum(p[s] for s in ("idle", "running", "done", "failed")) for p in points] == [1, 1]
    assert [(p["id"], p["running"]) for p in points] == [("0", 0), ("0", 1)]


def test_createtask_refuses_no_jobs_and_an_existing_task_unless_recreate(db: str) -> None:
    """``createTask(jids=None)`` was a TypeError from ``len(None)``; an empty list is refused before the claim."""
    ctrl = jobctrl(db, run_number=RUNS[0])
    for jids in (None, [], np.array([], dtype=int)):
        err = unchanged(db, lambda: ctrl.createTask(jids=jids))
        assert "createTask: the job id list is empty" in str(err)
    with Store.open(db) as store:
        assert store.instance("prompt", TASK, RUNS[0]).status == "new"  # not claimed
    ctrl.createTask(jids=[0, 1])
    ctrl.running(0)
    ctrl.failed(0)
    err = unchanged(db, lambda: ctrl.createTask(jids=[0, 1]))
    assert "recreate=True" in str(err)
    # recreate starts the task over: every job idle again (more jobs allowed), retries counted afresh
    ctrl.createTask(jids=[0, 1, 2], recreate=True)
    assert ctrl.getJobs() == {"idle": ["0", "1", "2"], "running": [], "done": [], "failed": []}
    assert ctrl.getNRetries(0) == 0 and ctrl.taskExist() and not ctrl.taskCompleted()


def test_the_getters_return_the_originals_shapes(db: str) -> None:
    """``getJob(jid, last=True)`` is the original's ``last(*)`` answer: a list of one point (time and fields, no
    tags), ``[]`` for an unknown job; ``getJob(jid)`` (``last=False``, the original's default) answers like
    InfluxDB's ResultSet: ``get_points()`` gives every point, tags included; the status lists hold strings."""
    ctrl = jobctrl(db, run_number=RUNS[0], fill=FILL)
    ctrl.createTask(jids=[0, 1], fields=[{"log": "/l/0"}, {"log": "/l/1"}])
    ctrl.running(0)
    ctrl.failed(0, fields={"reason": "oom"})
    ctrl.failed(0, fields={"reason": "oom, again"})  # a second point with failed=1: a field update, no new failure
    ctrl.idle(0)
    ctrl.running(0)
    ctrl.done(0, fields={"output": "/eos/0.root"})

    last = ctrl.getJob(0, last=True)
    assert isinstance(last, list) and len(last) == 1
    point = last[0]
    assert point["output"] == "/eos/0.root" and point["reason"] == "oom, again" and point["log"] == "/l/0"
    assert (point["idle"], point["running"], point["failed"], point["done"]) == (0, 0, 0, 1)
    assert set(point) == {"time", "idle", "running", "failed", "done", "log", "reason", "output"}
    assert datetime.strptime(point["time"][:19], "%Y-%m-%dT%H:%M:%S") and point["time"].endswith("Z")
    assert ctrl.getJob(7, last=True) == []

    history = ctrl.getJob(0)
    points = list(history.get_points())
    assert [(p["idle"], p["running"], p["failed"], p["done"]) for p in points] == [
        (1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 1, 0), (1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 0, 1)]
    assert {(p["campaign"], p["task"], p["run_number"], p["fill"], p["id"]) for p in points} == {
        ("prompt", TASK, str(RUNS[0]), str(FILL), "0")}
    assert [p["time"] for p in points] == sorted(p["time"] for p in points)
    assert len(history) == 1 and len(ctrl.getJob(7)) == 0 and list(ctrl.getJob(7).get_points()) == []
    assert ctrl.getNRetries(0) == 1  # failed once; the field update on the failed job is not a failure
    assert ctrl.getNRetries(7) == 0
    assert ctrl.getJobs() == {"idle": ["1"], "running": [], "failed": [], "done": ["0"]}
    assert (ctrl.getIdle(), ctrl.getRunning(), ctrl.getFailed(), ctrl.getDone()) == (["1"], [], [], ["0"])
    assert ctrl.taskExist() is True and ctrl.taskCompleted() is False
