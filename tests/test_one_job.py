"""The one-job fast paths of ``set_job_status`` against the generic path, on both engines.

PostgreSQL runs a job transition without fields as one statement (``ecalstate.pgjobs``); SQLite as one read and
two writes (``Jobs._set_one_sqlite``). Random sequences of calls go to two identical runs: run 1 through the
generic transaction (a request id sends a call there), run 2 through the fast path. Both must answer alike
(changed, unchanged, the same refusals with the same messages) and leave the same rows: jobs, instances, outputs,
and audit rows in the same order with the same texts. And each is really as short as it says.
"""

from __future__ import annotations

import itertools
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecalstate import JobUpdate, RunSpec, Store
from ecalstate.db import DatabaseError
from ecalstate.errors import EcalStateError
from ecalstate.statemachine import JobStatus

STATUSES = [s.value for s in JobStatus]
CALLS = st.lists(st.tuples(st.integers(0, 1), st.sampled_from(STATUSES), st.sampled_from(["", "held: memory"])),
                 min_size=1, max_size=25)
_names = itertools.count()


def campaign(store: Store) -> str:
    name = f"c{next(_names)}"
    store.create_campaign(name)
    store.add_task(name, "reco", max_retries=1)
    store.add_task(name, "calib", depends_on=["reco"])
    store.update_rtype(name, "all", add=["reco", "calib"])
    store.inject_runs(name, [RunSpec(1, 1), RunSpec(2, 1)])
    store.claim(name, "reco")
    for run in (1, 2):
        store.create_jobs(name, "reco", run, [0, 1], fields=[{"output": f"/eos/{run}_0"}, {"output": f"/eos/{run}_1"}])
    return name


def answer(call: Any, run: int) -> str:
    try:
        change = call()
    except EcalStateError as err:
        return f"{type(err).__name__}: " + str(err).replace(f"run {run} ", "run N ")
    return f"{change.current} -> {change.requested}: {change.outcome} ({change.reason})"


def rows(store: Store, name: str, run: int, as_run: int = 0) -> str:
    """Jobs, audit rows and instances of one run (``as_run``: its output paths written as that run's)."""
    with store.db.tx(write=False) as tx:
        jobs = tx.all("SELECT j.jid, j.generation, j.status, j.version, j.attempts, j.batch_id, j.started_at IS NULL,"
                      " j.finished_at IS NULL, j.fields FROM job j JOIN task_instance ti ON ti.id = j.instance_id"
                      " JOIN run r ON r.id = ti.run_id JOIN campaign c ON c.id = ti.campaign_id"
                      " WHERE c.name = ? AND r.run_number = ? ORDER BY j.jid", (name, run))
        audit = tx.all("SELECT a.entity, a.task, a.jid, a.generation, a.from_status, a.to_status, a.actor, a.identity,"
                       " a.reason, a.detail FROM audit a JOIN campaign c ON c.id = a.campaign_id"
                       " WHERE c.name = ? AND a.run_number = ? ORDER BY a.id", (name, run))
    instances = [(i.status, i.version, i.generation, i.outputs) for i in
                 (store.instance(name, task, run) for task in ("reco", "calib"))]
    found = repr((jobs, [tuple(r) for r in audit], instances))
    return found.replace(f"/eos/{run}_", f"/eos/{as_run}_") if as_run else found


@pytest.fixture(scope="module")
def pg_store(postgres: Any) -> Any:
    url = postgres.create_database()
    with Store.open(url, actor="check", create=True) as store:
        yield store


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def any_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    if request.param == "postgresql":
        yield request.getfixturevalue("pg_store")
        return
    with Store.open(str(tmp_path_factory.mktemp("one-job") / "state.db"), actor="check", create=True) as store:
        yield store


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(calls=CALLS)
def test_the_fast_path_does_what_the_generic_path_does(any_store: Store, calls: list[Any]) -> None:
    store = any_store
    name = campaign(store)
    for jid, status, reason in calls:
        generic = answer(lambda: store.set_job_status(name, "reco", 1, jid, status, reason=reason,
                                                      request_id=str(uuid.uuid4())), 1)
        fast = answer(lambda: store.set_job_status(name, "reco", 2, jid, status, reason=reason), 2)
        assert fast == generic
    assert rows(store, name, 2) == rows(store, name, 1, as_run=2)


def test_unknown_names_and_jobs_are_refused_alike(any_store: Store) -> None:
    name = campaign(any_store)
    for campaign_name, task, jid in (("nope", "reco", 0), (name, "nope", 0), (name, "reco", 9), (name, "reco", -1)):
        generic = answer(lambda: any_store.set_job_status(campaign_name, task, 1, jid, "running",
                                                          request_id=str(uuid.uuid4())), 1)
        fast = answer(lambda: any_store.set_job_status(campaign_name, task, 2, jid, "running"), 2)
        assert fast == generic and fast.startswith("NotFound")


def test_a_generation_named_is_the_one_moved_on_both_paths(any_store: Store) -> None:
    """A report about an older generation's job moves that job (not the current one's), and never completes the
    instance: the generic and the fast path alike."""
    name = campaign(any_store)
    any_store.reprocess(name, "reco", runs=[1, 2], reason="again")
    any_store.claim(name, "reco")
    for run in (1, 2):
        any_store.create_jobs(name, "reco", run, [0])
    for run in (1, 2):  # run 1 by the generic path (a request id sends it there)
        for jid in (0, 1):
            request = str(uuid.uuid4()) if run == 1 else None
            change = any_store.set_job_status(name, "reco", run, jid, "done", generation=1, request_id=request)
            assert (change.key, change.outcome) == (f"reco run {run} job {jid} gen 1", "changed")
    assert rows(any_store, name, 2) == rows(any_store, name, 1, as_run=2)
    assert any_store.instance(name, "reco", 2).status == "processing"


def test_an_older_generation_is_found_while_the_current_one_has_no_jobs(any_store: Store) -> None:
    """Reclaimed, its new jobs not yet created: a late report of the old generation's job still finds it (the
    read of a move to done or failed also tallies the current generation, which has no jobs yet)."""
    name = campaign(any_store)
    any_store.reprocess(name, "reco", runs=[1, 2], reason="again")
    any_store.claim(name, "reco")
    for run in (1, 2):  # run 1 by the generic path
        for jid, status in ((0, "done"), (1, "failed")):
            change = any_store.set_job_status(name, "reco", run, jid, status, generation=1,
                                              request_id=str(uuid.uuid4()) if run == 1 else None)
            assert change.outcome == "changed"
    assert rows(any_store, name, 2) == rows(any_store, name, 1, as_run=2)
    assert any_store.instance(name, "reco", 2).status == "processing"


#: (moves before, the move, the instance after) of jobs 0 and 1 (max retries 1: one retry, then a failure is beyond
#: them): the deciding move's read tallies the jobs as they were, the move itself must be counted in
RETRIED = [(0, "failed"), (0, "idle")]
DECIDING = {
    "last job done": ([(1, "done")], (0, "done"), "done"),
    "first job done": ([], (0, "done"), "processing"),
    "failed within retries": ([(1, "done")], (0, "failed"), "processing"),
    "failed beyond retries, the other done": ([(1, "done")] + RETRIED, (0, "failed"), "failed"),
    "failed beyond retries, the other running": ([(1, "running")] + RETRIED, (0, "failed"), "processing"),
    "the other failed beyond retries, this one done": ([(1, "failed"), (1, "idle"), (1, "failed")], (0, "done"),
                                                       "failed"),
    "done from running": ([(1, "done"), (0, "running")], (0, "done"), "done"),
}


@pytest.mark.parametrize("before, move, after", DECIDING.values(), ids=DECIDING.keys())
def test_a_deciding_move_counts_itself_as_the_generic_path_does(any_store: Store, before: Any, move: Any,
                                                                after: str) -> None:
    name = campaign(any_store)
    for run in (1, 2):
        for jid, status in before:
            assert any_store.set_job_status(name, "reco", run, jid, status).outcome == "changed"
    generic = any_store.set_job_status(name, "reco", 1, *move, request_id=str(uuid.uuid4()))
    fast = any_store.set_job_status(name, "reco", 2, *move)
    assert (fast.current, fast.outcome) == (generic.current, generic.outcome)
    assert fast.outcome == "changed"
    assert [any_store.instance(name, "reco", run).status for run in (1, 2)] == [after, after]
    assert rows(any_store, name, 2) == rows(any_store, name, 1, as_run=2)


def test_a_sqlite_transition_is_one_read_and_two_writes(tmp_path: Any) -> None:
    """Every statement the SQLite connection runs for a job transition: BEGIN, the job read (names, instance, retry
    limit and the newest audit time at once; for done and failed the instance's tally too), the job's
    compare-and-set, its audit row, COMMIT; and the instance's move and audit row only when this move decides it."""
    with Store.open(str(tmp_path / "state.db"), actor="check", create=True) as store:
        name = campaign(store)
        for jid in (0, 1):  # the thread's connection is open and the texts known (the completion's too)
            store.set_job_status(name, "reco", 1, jid, "done")
        store.set_job_status(name, "reco", 2, 1, "running")
        sent: list[str] = []
        with store.db.tx(write=False) as tx:
            tx.conn.set_trace_callback(sent.append)  # the thread's one idle connection: the next calls'
        one = ["BEGIN IMMEDIATE", "SELECT j.id, j.status,", "UPDATE job SET", "INSERT INTO audit_log", "COMMIT"]
        for jid, status, statements in ((0, "running", one), (0, "done", one),
                                        (1, "done", one[:-1] + ["UPDATE task_instance SET", "INSERT INTO audit_log",
                                                                "COMMIT"])):
            sent.clear()  # the previous call's, or this read's own COMMIT
            change = store.set_job_status(name, "reco", 2, jid, status)
            assert change.outcome == "changed"
            assert [" ".join(s.split()[:3]) for s in sent] == statements, sent
        assert store.instance(name, "reco", 2).status == "done"


def test_a_transition_is_one_round_trip(pg_store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request psycopg sends for one transition: queries, and the commands it sends by itself (BEGIN,
    COMMIT, ROLLBACK, SET): one query, nothing else (the statement is its own transaction)."""
    name = campaign(pg_store)
    pg_store.set_job_status(name, "reco", 2, 0, "running")  # the connection is pooled and warm
    sent: list[str] = []
    real = psycopg.Cursor.execute

    def counted(self: Any, query: Any, *args: Any, **kw: Any) -> Any:
        sent.append(str(query))
        return real(self, query, *args, **kw)

    monkeypatch.setattr(psycopg.Cursor, "execute", counted)
    real_command = psycopg.Connection._exec_command
    def command(self: Any, sql: Any, *args: Any, **kw: Any) -> Any:
        sent.append(str(sql))
        return real_command(self, sql, *args, **kw)

    monkeypatch.setattr(psycopg.Connection, "_exec_command", command)
    change = pg_store.set_job_status(name, "reco", 2, 0, "done")
    assert change.outcome == "changed"
    assert len(sent) == 1 and "ecalstate_set_job" in sent[0], sent


def test_two_last_jobs_finishing_together_decide_their_instance_once(pg_store: Store, postgres: Any) -> None:
    """Both transitions wait behind the instance's row lock, their statements already started: each statement
    of the function takes its own snapshot, so the later tally sees the earlier job done and exactly one of them
    completes the instance (a tally inside one statement would have seen neither)."""
    name = campaign(pg_store)
    pg_store.update_jobs(name, "reco", [JobUpdate(1, j, "running") for j in (0, 1)])
    raw = pg_store.db.url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(raw) as holder, psycopg.connect(raw, autocommit=True) as watcher:
        holder.execute("SELECT ti.id FROM task_instance ti JOIN campaign c ON c.id = ti.campaign_id"
                       " WHERE c.name = %s FOR UPDATE OF ti", (name,))
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(pg_store.set_job_status, name, "reco", 1, jid, "done") for jid in (0, 1)]
            deadline = time.monotonic() + 30
            while watcher.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                                  " AND datname = current_database()").fetchone()[0] < 2:
                assert time.monotonic() < deadline, "the two transitions never waited for the instance's lock"
                time.sleep(0.01)
            holder.rollback()
            assert [f.result(timeout=30).outcome for f in futures] == ["changed", "changed"]
    assert pg_store.instance(name, "reco", 1).status == "done"
    completions = [h for h in pg_store.history(name, run=1, limit=None) if h.entity == "task" and h.to_status == "done"]
    assert len(completions) == 1


def test_a_connection_the_server_dropped_is_replaced_not_failed(pg_store: Store) -> None:
    """The one-statement path takes its connection from the same pool: one whose backend was terminated (a
    server restart, an idle timeout) is found by the pool's ping and replaced; the transition goes through."""
    name = campaign(pg_store)
    pg_store.set_job_status(name, "reco", 2, 0, "running")
    raw = pg_store.db.url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(raw, autocommit=True) as admin:  # every pooled connection's backend goes
        others = "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        assert admin.execute(f"SELECT COUNT(pg_terminate_backend(pid)) {others}").fetchone()[0] >= 1
        while admin.execute(f"SELECT COUNT(*) {others}").fetchone()[0]:
            time.sleep(0.01)
    assert pg_store.set_job_status(name, "reco", 2, 0, "done").outcome == "changed"
    assert pg_store.instance(name, "reco", 2).status == "processing"  # job 1 still idle


def test_a_server_that_takes_no_connection_is_one_clean_error(postgres: Any) -> None:
    """The one-statement path's own checkout fails like every other call: a DatabaseError of one line, never the
    driver's or SQLAlchemy's exception (a CLI would print a traceback)."""
    url = postgres.create_database()
    with Store.open(url, actor="t", create=True) as store:
        name = campaign(store)
        name_db = url.rsplit("/", 1)[1]
        admin = url.rsplit("/", 1)[0].replace("postgresql+psycopg://", "postgresql://") + "/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name_db}" ALLOW_CONNECTIONS false')
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name_db,))
            while conn.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = %s", (name_db,)).fetchone()[0]:
                time.sleep(0.01)
        try:
            with pytest.raises(DatabaseError) as refused:
                store.set_job_status(name, "reco", 2, 0, "running")
            assert "\n" not in str(refused.value) and "not currently accepting connections" in str(refused.value)
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'ALTER DATABASE "{name_db}" ALLOW_CONNECTIONS true')


def test_a_reason_quoting_a_secret_is_masked_on_both_paths(any_store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECALSTATE_INFLUX_TOKEN", "tok-9f8e7d6c5b4a")
    name = campaign(any_store)
    why = "held: curl -H 'Authorization: Token tok-9f8e7d6c5b4a' failed"
    for run, request in ((1, str(uuid.uuid4())), (2, None)):
        any_store.set_job_status(name, "reco", run, 0, "failed", reason=why, request_id=request)
    reasons = [h.reason for h in any_store.history(name, limit=None) if h.entity == "job" and h.to_status == "failed"]
    assert reasons == ["held: curl -H 'Authorization: Token [secret]' failed"] * 2
