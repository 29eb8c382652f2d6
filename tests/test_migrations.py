"""Schema migrations, on both engines, from a database made by the first release with data in it.

tests/data holds that release's schema (per engine) and the rows its own store wrote
(make_v1_fixture.py regenerates them from git). Every row must survive an upgrade, and the
upgraded database must keep working: old request ids still replay, old jobs still move.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from ecalstate import JobUpdate, RunSpec, SchemaError, Store, migrations
from ecalstate.clock import to_micros
from ecalstate.db import Database, DatabaseError, Tx
from ecalstate.export import read_batch
from ecalstate.migrations import Step, upgrade_database
from ecalstate.tables import SCHEMA_VERSION

DATA = Path(__file__).parent / "data"
_INSERT = re.compile(r"^INSERT INTO (\w+) \(([^)]*)\)")


def v1_columns() -> dict[str, list[str]]:
    """Table -> columns of the first release, as its dump lists them."""
    out: dict[str, list[str]] = {}
    for line in (DATA / "data_v1.sql").read_text(encoding="utf-8").splitlines():
        m = _INSERT.match(line)
        if m:
            out.setdefault(m.group(1), [c.strip() for c in m.group(2).split(",")])
    return out


def v1_row_counts() -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in (DATA / "data_v1.sql").read_text(encoding="utf-8").splitlines():
        m = _INSERT.match(line)
        if m:
            counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    return counts


def load_v1(url: str, version: int = 1) -> None:
    """Create a frozen release's schema (the first one's unless ``version``) in the empty database ``url`` and load
    its rows."""
    data = (DATA / f"data_v{version}.sql").read_text(encoding="utf-8")
    if "://" not in url:
        with sqlite3.connect(url) as conn:
            conn.executescript((DATA / f"schema_v{version}.sqlite.sql").read_text() + data)
        return
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as conn:
        conn.execute((DATA / f"schema_v{version}.postgresql.sql").read_text())
        conn.execute(data)
        for table in ("campaign", "task", "rtype", "run", "task_instance", "job", "audit"):
            conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT MAX(id) FROM {table}))")


#: first-release columns a later schema dropped (7: an instance's progress is its jobs' newest change)
DROPPED = {"task_instance": "progress_at"}


def snapshot(url: str, after_upgrade: bool = False) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every first-release column (those the upgrade kept, ``after_upgrade``), sorted, per table."""
    db = Database(url)
    try:
        with db.tx(write=False) as tx:
            return {t: sorted(tuple(r) for r in tx.all(
                        f"SELECT {', '.join(c for c in cols if not after_upgrade or DROPPED.get(t) != c)} FROM {t}"))
                    for t, cols in v1_columns().items()}
    finally:
        db.close()


def upgraded(rows: dict[str, list[tuple[Any, ...]]]) -> dict[str, list[tuple[Any, ...]]]:
    """The same rows, with the schema version moved on, (schema 6) the jobs' times as integer microseconds and
    (schema 7) the dropped columns gone."""
    columns = v1_columns()
    times = [i for i, c in enumerate(columns["job"]) if c.endswith("_at")]
    jobs = [tuple(to_micros(v) if i in times and v is not None else v for i, v in enumerate(r))
            for r in rows["job"]]
    out = {**rows, "meta": [("schema_version", str(SCHEMA_VERSION))], "job": sorted(jobs)}
    for table, column in DROPPED.items():
        gone = columns[table].index(column)
        out[table] = sorted(r[:gone] + r[gone + 1:] for r in rows[table])
    return out


@pytest.fixture
def v1_url(db_url: str) -> str:
    load_v1(db_url)
    return db_url


def test_the_frozen_release_is_version_1_and_is_refused_until_upgraded(v1_url: str) -> None:
    with pytest.raises(SchemaError, match=r"schema version 1; run `ecalstate db upgrade` first"):
        Store.open(v1_url)
    db = Database(v1_url)
    try:
        assert db.schema_version() == 1
        assert [s.version for s in migrations.pending(1)] == list(range(2, SCHEMA_VERSION + 1))
    finally:
        db.close()


def test_upgrade_keeps_every_row_and_the_store_works_on_the_old_data(v1_url: str) -> None:
    before = snapshot(v1_url)
    assert {t: len(rows) for t, rows in before.items()} == v1_row_counts()
    # what the stored progress mark said of processing instances: their jobs' newest change says the same
    db = Database(v1_url)
    with db.tx(write=False) as tx:
        progress = tx.all("SELECT c.name, t.name, r.run_number, COALESCE(ti.progress_at, ti.updated_at)"
                          " FROM task_instance ti JOIN campaign c ON c.id = ti.campaign_id JOIN task t"
                          " ON t.id = ti.task_id JOIN run r ON r.id = ti.run_id WHERE ti.status = 'processing'"
                          " AND ti.progress_at IS NOT NULL ORDER BY 1, 2, 3")
    db.close()
    assert progress

    result = upgrade_database(v1_url)
    assert (result.from_version, result.to_version) == (1, SCHEMA_VERSION)
    assert [a.split(":")[0] for a in result.applied] == [str(v) for v in range(2, SCHEMA_VERSION + 1)]
    assert snapshot(v1_url, after_upgrade=True) == upgraded(before)
    assert upgrade_database(v1_url).applied == []

    with Store.open(v1_url, actor="after-upgrade") as store:
        stuck = [(s.campaign, s.task, s.run_number, s.since) for s in store.health(stuck_after=0).stuck]
        assert [s for s in stuck if s[:3] in {p[:3] for p in progress}] == progress
        with store.db.tx(write=False) as tx:
            assert tx.all("SELECT name, settings FROM campaign ORDER BY name") == [
                ("prompt", "{}"), ("rereco-2023", "{}")]
            assert tx.all("SELECT DISTINCT tag_rtypes FROM run") == [(None,)]  # rtypes never changed: the tag
            # step 5: run sources start without a cursor and no fill is known to have ended
            assert tx.all("SELECT * FROM run_source") == tx.all("SELECT * FROM fill_end") == []
        store.close_fill("prompt", 8000, "operator: beam dumped")
        assert store.fill_ended("prompt", 8000) and not store.fill_ended("prompt", 8002)
        assert store.fill_ended("prompt", 8001)  # a run of a later fill (8002) exists
        # an idempotency record written by the first release still replays its outcome
        replay = store.claim("prompt", "reco", group_by="fill", request_id="claim-1")
        assert [(c.run_number, c.merged) for c in replay] == [(356002, [356001]), (356004, [356003])]
        overview = store.overview("prompt")
        assert overview.totals["reco"]["processing"] == 2
        old_history = len(store.history("prompt", limit=None))
        # the workflow goes on where the first release left it
        leader = next(r.run_number for r in overview.rows if r.statuses["reco"] == "processing")
        generation = store.instance("prompt", "reco", leader).generation
        store.create_jobs("prompt", "reco", leader, [0, 1])
        result_jobs = store.update_jobs("prompt", "reco", [JobUpdate(leader, 0, "done"), JobUpdate(leader, 1, "done")])
        assert [c.outcome for c in result_jobs.changes][-1] == "changed"
        assert store.instance("prompt", "reco", leader).status == "done"
        assert store.instance("prompt", "reco", leader).generation == generation
        store.inject_runs("prompt", [RunSpec(356010, 8003, {"class": "Collisions", "nevents": 4000})])
        store.create_campaign("new-after-upgrade")
        history = store.history("prompt", limit=None)
        assert len(history) > old_history
        assert [h.id for h in history] == sorted(h.id for h in history)
        assert history[0].actor == "jenkins-prompt-42"  # the first release's rows are all still there


def test_init_on_a_first_release_database_upgrades_it(v1_url: str) -> None:
    before = snapshot(v1_url)
    with Store.open(v1_url, create=True) as store:
        assert store.db.schema_version() == SCHEMA_VERSION
    assert snapshot(v1_url, after_upgrade=True) == upgraded(before)


def test_a_newer_schema_is_refused_clearly(store: Store) -> None:
    url = store.db.url
    with store.db.tx() as tx:
        tx.run("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(SchemaError, match=r"schema version 99, newer than this ecalstate .*upgrade ecalstate"):
        Store.open(url)
    with pytest.raises(SchemaError, match="newer than this ecalstate"):
        upgrade_database(url)


def test_no_schema_at_all_is_not_upgraded(db_url: str) -> None:
    if "://" not in db_url:
        sqlite3.connect(db_url).close()  # an empty SQLite file
    with pytest.raises(SchemaError, match="no ecalstate schema; create it with `ecalstate init`"):
        upgrade_database(db_url)


def test_a_failing_step_leaves_the_database_as_it_was(v1_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def half_done(tx: Tx) -> None:
        tx.run("ALTER TABLE campaign ADD COLUMN settings VARCHAR NOT NULL DEFAULT '{}'")
        tx.run("INSERT INTO no_such_table VALUES (1)")

    monkeypatch.setattr(migrations, "STEPS", (Step(2, "fails halfway", half_done),))
    before = snapshot(v1_url)
    with pytest.raises(DatabaseError):
        upgrade_database(v1_url)
    db = Database(v1_url)
    try:
        assert db.schema_version() == 1
        with db.tx(write=False) as tx:
            assert "settings" not in [d[0] for d in tx.run("SELECT * FROM campaign").description]
    finally:
        db.close()
    assert snapshot(v1_url) == before


def test_two_upgraders_at_once_apply_each_step_once(v1_url: str) -> None:
    results: list[Any] = []
    start = threading.Barrier(2)

    def run() -> None:
        start.wait()
        try:
            results.append(upgrade_database(v1_url))
        except Exception as err:  # collected and asserted below
            results.append(err)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(not isinstance(r, Exception) for r in results), results
    # each step applied by exactly one of them (they may take turns, step by step)
    applied = sorted(step for r in results for step in r.applied)
    assert [a.split(":")[0] for a in applied] == [str(v) for v in range(2, SCHEMA_VERSION + 1)]


def test_schema_5_upgraded_gives_every_reader_the_same_audit(db_url: str) -> None:
    """Schema 6 moves the audit's texts to ``string`` and its times to integers: the frozen schema-5 database
    (made by commit d673d2e, pruned, with long, non-ASCII and escaped texts) must give back exactly the history
    and the exporter's lines that release gave (tests/data/expected_v5.json), and go on numbering after them."""
    load_v1(db_url, version=5)
    expected = json.loads((DATA / "expected_v5.json").read_text(encoding="utf-8"))
    result = upgrade_database(db_url)
    assert (result.from_version, result.to_version) == (5, SCHEMA_VERSION)
    with Store.open(db_url, actor="after-upgrade") as store:
        # (rows later gained "fields", what an annotation recorded, and "made_by", what made a claim's generation: not
        # in the frozen release's output)
        assert [{k: v for k, v in dataclasses.asdict(h).items() if k not in ("fields", "made_by")}
                for h in store.history(limit=None)] == expected["history"]
        assert [list(line) for line in read_batch(store.db, 0, 10**9, 10**6)[0]] == expected["lines"]
        with store.db.tx(write=False) as tx:
            assert tx.scalar("SELECT COUNT(*) FROM string") == len(set(tx.all("SELECT text FROM string")))
        top = max(h["id"] for h in expected["history"])
        store.reprocess("rereco-2023", "reco", runs=[360001], reason="after the upgrade")
        newest = store.history(limit=1)[0]
        assert newest.id > top and newest.ts > expected["history"][-1]["ts"]
        assert (newest.actor, newest.reason, newest.to_status) == ("after-upgrade", "after the upgrade", "reprocess")


def test_an_upgrade_killed_midway_leaves_schema_5_whole_and_the_next_one_finishes(db_url: str) -> None:
    """``ecalstate db upgrade`` of a big schema-5 database SIGKILLed while it copies the audit (a Jenkins build
    aborted, a node rebooted): the database is still version 5, every row as it was, readable by 5's readers;
    the next upgrade goes through."""
    load_v1(db_url, version=5)
    db = Database(db_url)
    try:
        with db.tx() as tx:  # about 150,000 audit rows: the copy takes seconds, long enough to be cut
            for _ in range(12):
                tx.run("INSERT INTO audit (ts, campaign_id, entity, instance_id, job_pk, task, run_number, jid,"
                       " generation, from_status, to_status, actor, identity, reason, request_id, detail)"
                       " SELECT ts, campaign_id, entity, instance_id, job_pk, task, run_number, jid, generation,"
                       " from_status, to_status, actor, identity, reason, request_id, detail FROM audit")
            rows = tx.scalar("SELECT COUNT(*) FROM audit")
    finally:
        db.close()
    assert rows > 100_000
    before = snapshot_v5(db_url)
    script = "import sys; from ecalstate.migrations import upgrade_database; upgrade_database(sys.argv[1])"
    assert not copying(db_url)
    upgrader = subprocess.Popen([sys.executable, "-c", script, db_url])
    deadline = time.monotonic() + 60
    while not copying(db_url):  # killed in the middle of the step: while it copies the audit's rows
        assert upgrader.poll() is None and time.monotonic() < deadline, "the copy was never seen under way"
        time.sleep(0.005)
    upgrader.send_signal(signal.SIGKILL)
    upgrader.wait()
    db = Database(db_url)
    try:
        assert db.schema_version() == 5
    finally:
        db.close()
    assert snapshot_v5(db_url) == before
    assert upgrade_database(db_url).to_version == SCHEMA_VERSION
    with Store.open(db_url) as store:
        assert len(store.history(limit=None)) == rows


def copying(url: str) -> bool:
    """Whether an upgrade is copying the audit into ``audit_log`` right now (SQLite: its write-ahead log holds a
    few MB of it; PostgreSQL: the statement runs)."""
    if "://" not in url:
        return os.path.exists(url + "-wal") and os.path.getsize(url + "-wal") > 4_000_000
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        return bool(conn.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()"
                                 " AND state = 'active' AND query LIKE 'INSERT INTO audit_log%'").fetchone()[0])


def snapshot_v5(url: str) -> dict[str, Any]:
    """Counts and a digest of every row of the schema-5 tables, read as 5's readers read them."""
    db = Database(url)
    try:
        with db.tx(write=False) as tx:
            tables = [r[0] for r in tx.all(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'" if tx.is_sqlite
                else "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")]
            return {t: (tx.scalar(f"SELECT COUNT(*) FROM {t}"), hash(tuple(sorted(map(tuple, tx.all(
                f"SELECT * FROM {t}")), key=repr)))) for t in sorted(tables)}
    finally:
        db.close()


def test_schema_8_keeps_when_runs_and_fills_ended(db_url: str) -> None:
    """Step 8 gives tasks their settings ('{}'), and copies what old rows already say of when a run ended (its
    metadata's end_time, in any ISO 8601 form) and when OMS saw a fill dumped (the words of its reason)."""
    load_v1(db_url, version=5)
    db = Database(db_url)
    try:
        with db.tx() as tx:
            tx.run("UPDATE run SET meta = ? WHERE run_number = 356001",
                   ('{"class": "Collisions", "end_time": "2026-06-01T14:00:00+02:00"}',))
            tx.run("UPDATE run SET meta = ? WHERE run_number = 356002", ('{"end_time": "not a time"}',))
            tx.run("INSERT INTO fill_end (campaign_id, fill, ended_at, reason, actor) VALUES"
                   " (1, 8002, '2026-12-01T06:00:00.000000Z', 'OMS: fill ended (beam dumped) at 2026-06-02T03:00:00Z',"
                   " 'oms')")
    finally:
        db.close()
    assert upgrade_database(db_url).to_version == SCHEMA_VERSION
    with Store.open(db_url) as store, store.db.tx(write=False) as tx:
        assert {r[0] for r in tx.all("SELECT settings FROM task")} == {"{}"}
        ended = dict(tx.all("SELECT run_number, ended_at FROM run WHERE campaign_id = 1"))
        assert ended[356001] == "2026-06-01T12:00:00.000000Z"
        assert ended[356002] is None and ended[356003] is None  # not a time; no end time
        assert tx.all("SELECT fill, dumped_at FROM fill_end ORDER BY fill") == [
            (8001, None), (8002, "2026-06-02T03:00:00.000000Z")]  # an operator's close says no time
