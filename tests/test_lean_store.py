"""The lean store's first three steps (bench/lean.py, issue 14) keep every audit reader's answer.

A campaign driven through the public API (every kind of audit row, free text that line protocol must escape)
is copied; the copy gets the lean audit (strings as ids behind the view ``audit``, integer microsecond
timestamps, the partial job index). Both then answer the same: the audit rows, ``history()``, the exported line
protocol; and both go on accepting the same writes through the unchanged API (the view's trigger interns new
texts), including a prune that deletes through the view.

The one-round-trip transition prototypes (bench/lean_tx.py) are held to what the API writes, on SQLite and on
a real PostgreSQL: the same outcomes and refusals, job rows and audit rows. And PostgreSQL connections in
steady use go to work without a ping round trip, while a dropped or rested one is still found and replaced.
"""

from __future__ import annotations

import itertools
import shutil
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from test_export import NASTY, file_export, make_campaign

from bench import lean, lean_tx
from ecalstate import JobUpdate, RunSpec, Store
from ecalstate import db as db_module
from ecalstate.db import TS_FORMAT
from ecalstate.retention import prune
from ecalstate.statemachine import TransitionNotAllowed

SAME_QUERIES = [s for s in lean.STEPS if s.same_queries]


def fixed_clock(store: Store, start: datetime) -> None:
    """A clock that ticks 1.000123 s per write, so both copies write the same times (microseconds included)."""
    ticks = itertools.count()
    store.clock = lambda: (start + timedelta(seconds=1.000123) * next(ticks)).strftime(TS_FORMAT)  # type: ignore


def audit_rows(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT * FROM audit ORDER BY id").fetchall()
    conn.close()
    return rows


def more_writes(store: Store) -> None:
    """Texts the copy has not seen yet (new actor, reason, task, status pairs), a request id, a heartbeat."""
    store.actor = "operator ☃ " + NASTY
    store.add_task("prompt", "late", max_retries=0)
    store.update_rtype("prompt", "all", add=["late"], backfill=True)
    store.set_status("prompt", "late", [356000], "skipped", reason="new reason: " + NASTY, request_id="req-1")
    store.reprocess("prompt", "reco", runs=[356003], reason="another new reason")
    claims = store.claim("prompt", "reco")
    store.create_jobs("prompt", "reco", claims[0].run_number, [7], [{"output": "/eos/ü.root"}])
    store.update_jobs("prompt", "reco", [JobUpdate(claims[0].run_number, 7, "failed", reason="held ünï")])
    store.heartbeat("prompt", "late", "check", ok=False, message="silent " + NASTY)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """(current schema, lean copy) of one campaign made through the API."""
    wide, slim = tmp_path / "wide.db", tmp_path / "lean.db"
    with Store.open(str(wide), actor="jenkins ünï", create=True) as store:
        fixed_clock(store, datetime(2026, 3, 1, 12, 0, 0, 999_999, tzinfo=timezone.utc))
        make_campaign(store)
    shutil.copyfile(wide, slim)
    conn = sqlite3.connect(slim, isolation_level=None)
    for step in SAME_QUERIES:
        lean.apply(conn, step.sql)
    conn.close()
    return wide, slim


def test_lean_copy_answers_every_audit_reader_alike(pair: tuple[Path, Path], tmp_path: Path) -> None:
    wide, slim = pair
    with sqlite3.connect(slim) as conn:
        assert conn.execute("SELECT type FROM sqlite_master WHERE name = 'audit'").fetchone() == ("view",)
        assert conn.execute("SELECT typeof(ts) FROM audit_log LIMIT 1").fetchone() == ("integer",)
    conn.close()
    assert audit_rows(slim) == audit_rows(wide)
    with Store.open(str(wide)) as a, Store.open(str(slim)) as b:
        assert b.history("prompt", limit=None) == a.history("prompt", limit=None)
        assert b.history("prompt", task="reco", status="failed", limit=None) == \
            a.history("prompt", task="reco", status="failed", limit=None)
        file_export(a.db, tmp_path / "wide.lp")
        file_export(b.db, tmp_path / "lean.lp")
    assert (tmp_path / "lean.lp").read_bytes() == (tmp_path / "wide.lp").read_bytes()


def test_lean_copy_takes_the_same_writes_and_prunes(pair: tuple[Path, Path], tmp_path: Path) -> None:
    wide, slim = pair
    for path in (wide, slim):
        with Store.open(str(path), actor="jenkins ünï") as store:
            fixed_clock(store, datetime(2026, 3, 2, tzinfo=timezone.utc))
            more_writes(store)
    assert audit_rows(slim) == audit_rows(wide)
    with sqlite3.connect(slim) as conn:  # each text stored once
        assert conn.execute("SELECT COUNT(*) FROM string WHERE text = 'running'").fetchone() == (1,)
    conn.close()
    removed = []
    for path in (wide, slim):
        with Store.open(str(path)) as store:
            removed.append(prune(store.db, "2026-03-01T12:00:30Z").audit)
    assert removed[0] > 0 and removed[1] == removed[0]
    assert audit_rows(slim) == audit_rows(wide)


# --------------------------------------------------------------- the one-round-trip transition (bench/lean_tx.py)

STEPS_TRIED = ["running", "failed", "idle", "running", "failed", "idle", "running", "done"]


def test_lean_transition_writes_what_the_api_writes(db_url: str) -> None:
    """Run 1 moves through the API, run 2 through the prototype (one statement on PostgreSQL): the same
    outcomes and refusals, the same job rows and audit rows, and the prototype says 'decided' exactly when the
    API completed the instance."""
    with Store.open(db_url, actor="bench", create=True) as store:
        store.create_campaign("c")
        store.add_task("c", "reco", max_retries=1)
        store.update_rtype("c", "all", add=["reco"])
        store.inject_runs("c", [RunSpec(1, 1), RunSpec(2, 1)])
        for claim in store.claim("c", "reco"):
            store.create_jobs("c", "reco", claim.run_number, [0, 1])
        api, lean_side = [], []
        with raw_connection(db_url) as (conn, transition):
            for target in STEPS_TRIED:
                api.append(outcome(lambda to=target: store.set_job_status("c", "reco", 1, 0, to).outcome, 1))
                lean_side.append(outcome(lambda to=target: "changed" if transition(conn, "c", "reco", 2, 0, to,
                                                                                     "bench")[1] else "unchanged", 2))
            assert transition(conn, "c", "reco", 2, 1, "running", "bench")[2] is False
            decided = transition(conn, "c", "reco", 2, 1, "done", "bench")[2]
        store.set_job_status("c", "reco", 1, 1, "running")
        store.set_job_status("c", "reco", 1, 1, "done")
        assert api == lean_side
        assert any("(not in the job table)" in a for a in api) and any("(retries exhausted" in a for a in api)
        with store.db.tx(write=False) as tx:
            jobs = {run: tx.all("SELECT j.jid, j.status, j.version, j.attempts, j.batch_id, j.started_at IS NULL,"
                                " j.finished_at IS NULL FROM job j JOIN task_instance ti ON ti.id = j.instance_id"
                                " JOIN run r ON r.id = ti.run_id WHERE r.run_number = ? ORDER BY j.jid", (run,))
                    for run in (1, 2)}
            audit = {run: tx.all("SELECT entity, jid, generation, from_status, to_status, actor, reason FROM audit"
                                 " WHERE run_number = ? AND entity = 'job' ORDER BY id", (run,)) for run in (1, 2)}
            stamps = [r[0] for r in tx.all("SELECT ts FROM audit ORDER BY id")]
        assert jobs[1] == jobs[2] and audit[1] == audit[2]
        assert stamps == sorted(stamps)  # the store's order, whichever path wrote
        assert store.instance("c", "reco", 1).status == "failed" and decided is True


def outcome(call: Any, run: int) -> str:
    """What a call answered, or its refusal's message (run number left out)."""
    try:
        return str(call())
    except TransitionNotAllowed as err:
        return "refused: " + str(err).replace(f"run {run} ", "run N ")


@contextmanager
def raw_connection(url: str) -> Iterator[tuple[Any, Any]]:
    """The prototype's connection for ``url`` and its transition function."""
    if "://" not in url:
        conn = sqlite3.connect(url, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=10000")
        try:
            yield conn, lean_tx.sqlite_transition
        finally:
            conn.close()
        return
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as pg:
        yield pg, lean_tx.pg_transition


# ------------------------------------------------------------ PostgreSQL: no ping round trip per transaction


def test_postgres_connection_in_use_is_not_pinged_a_doubtful_one_is(pg_url: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A pooled connection back in use goes straight to work (a ping is a round trip per transaction: 1 of about
    9 of a job transition); one whose server dropped it, or one that rested longer than ``PING_IDLE_AFTER``, is
    pinged first, so that a dead connection is replaced, not failed."""
    with Store.open(pg_url, actor="t", create=True) as store:
        store.create_campaign("c")
        pings: list[int] = []
        dialect = store.db.engine.dialect
        real_ping = dialect.do_ping
        monkeypatch.setattr(dialect, "do_ping", lambda conn: pings.append(1) or real_ping(conn))
        for n in range(20):
            store.add_task("c", f"t{n}")
        assert pings == []
        with psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as admin:
            backend = backend_pid(store)
            admin.execute("SELECT pg_terminate_backend(%s)", (backend,))
            while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (backend,)).fetchone():
                time.sleep(0.01)
        store.add_task("c", "after_drop")  # found dead by its ping, replaced by a new connection
        assert pings == [1]
        monkeypatch.setattr(db_module, "PING_IDLE_AFTER", 0.0)  # every connection now counts as rested
        store.add_task("c", "after_rest")
        assert pings == [1, 1]
        assert {"after_drop", "after_rest"} <= {t.name for t in store.list_tasks("c")}


def backend_pid(store: Store) -> int:
    with store.db.tx(write=False) as tx:
        return int(tx.scalar("SELECT pg_backend_pid()"))


def test_lean_transition_two_last_jobs_finishing_together_decide_once(pg_url: str) -> None:
    """The two last jobs of an instance finish at the same moment, both transitions held up behind the
    instance's row lock: exactly one of them finds the instance decided (the tally must be a statement of its
    own, whose snapshot is taken after the wait)."""
    with Store.open(pg_url, actor="t", create=True) as store:
        store.create_campaign("c")
        store.add_task("c", "reco")
        store.update_rtype("c", "all", add=["reco"])
        store.inject_runs("c", [RunSpec(1, 1)])
        store.claim("c", "reco")
        store.create_jobs("c", "reco", 1, [0, 1])
        store.update_jobs("c", "reco", [JobUpdate(1, 0, "running"), JobUpdate(1, 1, "running")])
    raw = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(raw) as holder, psycopg.connect(raw, autocommit=True) as watcher:
        holder.execute("SELECT id FROM task_instance FOR UPDATE")  # the instance's row lock, held
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(finish, raw, jid) for jid in (0, 1)]
            deadline = time.monotonic() + 30
            while watcher.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                                  " AND datname = current_database()").fetchone()[0] < 2:
                assert time.monotonic() < deadline, "the two transitions never waited for the instance's lock"
                time.sleep(0.01)
            holder.rollback()  # both transitions are waiting, their CTE's snapshot taken: let them go
            decided = [f.result(timeout=30) for f in futures]
    assert sorted(decided) == [False, True]


def finish(url: str, jid: int) -> bool:
    with psycopg.connect(url) as conn:
        return lean_tx.pg_transition(conn, "c", "reco", 1, jid, "done", "t")[2]
