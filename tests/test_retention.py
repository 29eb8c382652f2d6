"""Retention on both engines: what prune removes, what it must keep, the archive, and db stats.

The history is made by the store itself in two phases separated by a real cut-off time;
the export cursor is what a registered export target would have stored.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from ecalstate import Invalid, JobUpdate, RunSpec, Store
from ecalstate.clock import utcnow
from ecalstate.tables import SCHEMA_VERSION
from ecalstate.errors import StorageError
from ecalstate.retention import parse_before, prune, stats

TABLES = ("audit", "job", "request")


def rows(store: Store, table: str) -> dict[Any, dict[str, Any]]:
    """Every row of ``table`` by key."""
    key = "request_id" if table == "request" else "id"
    with store.db.tx(write=False) as tx:
        cursor = tx.run(f"SELECT * FROM {table}")
        cols = [d[0] for d in cursor.description]
        return {r[cols.index(key)]: dict(zip(cols, r)) for r in cursor.fetchall()}


def set_cursor(store: Store, target: str, audit_id: int) -> None:
    with store.db.tx() as tx:
        tx.run("DELETE FROM export_cursor WHERE target = ?", (target,))
        tx.run("INSERT INTO export_cursor (target, audit_id, updated_at) VALUES (?,?,?)", (target, audit_id, utcnow()))


def max_audit(store: Store) -> int:
    with store.db.tx(write=False) as tx:
        return int(tx.scalar("SELECT MAX(id) FROM audit"))


@pytest.fixture
def aged(chain: Store) -> tuple[Store, str]:
    """(store, cut-off): a history before the cut-off and more after it.

    Before: reco runs 1-4 claimed; run 1 done with 3 jobs, reprocessed and claimed again
    (generation 2, jobs created); run 2's jobs half done, one failed, one running (live);
    a request id and a heartbeat. After: run 2's failed job retried, run 3 jobs, new request id.
    """
    s = chain
    s.claim("prompt", "reco", request_id="old-claim")
    s.create_jobs("prompt", "reco", 1, [0, 1, 2], fields=[{"output": f"/eos/r1_{j}"} for j in range(3)])
    s.update_jobs("prompt", "reco", [JobUpdate(1, j, "done") for j in range(3)])
    s.reprocess("prompt", "reco", runs=[1], reason="bad alignment")
    s.claim("prompt", "reco", limit=1)
    s.create_jobs("prompt", "reco", 1, [0, 1])
    s.create_jobs("prompt", "reco", 2, [0, 1, 2])
    s.update_jobs("prompt", "reco", [JobUpdate(2, 0, "done"), JobUpdate(2, 1, "failed", fields={"log": "held"}),
                                     JobUpdate(2, 2, "running", fields={"node": "b7"})])
    s.heartbeat("prompt", "reco", "submit")
    cutoff = utcnow()
    s.update_jobs("prompt", "reco", [JobUpdate(2, 1, "idle", reason="retry")])
    s.create_jobs("prompt", "reco", 3, [0])
    s.set_job_status("prompt", "reco", 3, 0, "running", request_id="new-job")
    return s, cutoff


def test_parse_before_accepts_dates_datetimes_and_ages() -> None:
    assert parse_before("2024-05-01") == "2024-05-01T00:00:00.000000Z"
    assert parse_before("2024-05-01T12:30:00+02:00") == "2024-05-01T10:30:00.000000Z"
    assert parse_before("2024-05-01T12:30:00.5Z") == "2024-05-01T12:30:00.500000Z"
    now = datetime(2024, 5, 31, 8, 0, tzinfo=timezone.utc)
    assert parse_before("30d", now) == "2024-05-01T08:00:00.000000Z"
    assert parse_before("2w", now) == "2024-05-17T08:00:00.000000Z"
    for bad in ("", "yesterday", "2024-13-01", "30y"):
        with pytest.raises(Invalid, match="invalid date"):
            parse_before(bad)


def test_dry_run_counts_exactly_what_prune_removes_and_writes_nothing(aged: tuple[Store, str]) -> None:
    store, cutoff = aged
    set_cursor(store, "influx", max_audit(store))
    before = {t: rows(store, t) for t in TABLES}
    plan = prune(store.db, cutoff, dry_run=True)
    assert {t: rows(store, t) for t in TABLES} == before
    done = prune(store.db, cutoff, chunk=3)  # small chunks: many transactions, same outcome
    after = {t: rows(store, t) for t in TABLES}
    assert (plan.audit, plan.jobs, plan.requests) == (done.audit, done.jobs, done.requests)
    assert (done.audit, done.jobs, done.requests) == tuple(len(before[t]) - len(after[t]) for t in TABLES)
    assert done.audit > 0 and done.jobs == 3 and done.requests == 1
    assert prune(store.db, cutoff, dry_run=True).audit == 0  # nothing left to prune


def test_rows_the_exporter_has_not_sent_are_never_pruned(aged: tuple[Store, str]) -> None:
    store, cutoff = aged
    old = {i for i, r in rows(store, "audit").items() if r["ts"] < cutoff}
    floor = sorted(old)[len(old) // 2]
    set_cursor(store, "influx", max_audit(store))
    set_cursor(store, "victoria", floor)  # the slowest target decides
    result = prune(store.db, cutoff)
    left = set(rows(store, "audit"))
    assert result.export_floor == floor
    assert {i for i in old if i > floor} <= left
    assert result.unexported_kept == len({i for i in old if i > floor})
    assert old - left and all(i <= floor for i in old - left)


def test_a_job_that_can_still_move_keeps_its_history(aged: tuple[Store, str]) -> None:
    store, cutoff = aged
    set_cursor(store, "influx", max_audit(store))
    with_old_rows = {r["job_pk"] for r in rows(store, "audit").values() if r["entity"] == "job" and r["ts"] < cutoff}
    live = {r["id"] for r in rows(store, "job").values() if r["status"] in ("idle", "running")} & with_old_rows
    prune(store.db, cutoff)
    kept = {r["job_pk"] for r in rows(store, "audit").values() if r["entity"] == "job" and r["ts"] < cutoff}
    assert len(live) == 4 and kept == live  # run 1 generation 2 (jobs 0, 1), run 2 jobs 1 (retried) and 2
    # run 2 job 1: failed before the cut-off, retried after it; its whole story is still there
    story = [(h.from_status, h.to_status) for h in store.history("prompt", run=2, limit=None) if h.jid == 1]
    assert story == [(None, "idle"), ("idle", "failed"), ("failed", "idle")]


def test_only_finished_older_generations_lose_their_jobs(aged: tuple[Store, str]) -> None:
    store, cutoff = aged
    result = prune(store.db, cutoff)
    assert result.jobs == 3
    gens = sorted((j.run_number, j.generation, j.jid) for j in store.list_jobs("prompt", "reco", all_generations=True))
    assert gens == [(1, 2, 0), (1, 2, 1), (2, 1, 0), (2, 1, 1), (2, 1, 2), (3, 1, 0)]
    assert store.instance("prompt", "reco", 1).status == "processing"  # task state is never pruned


def test_without_export_targets_nothing_is_held_back(aged: tuple[Store, str]) -> None:
    store, cutoff = aged
    unregistered = prune(store.db, cutoff, dry_run=True)
    assert unregistered.export_floor is None and unregistered.unexported_kept == 0
    set_cursor(store, "influx", max_audit(store))
    fully_exported = prune(store.db, cutoff, dry_run=True)
    assert unregistered.audit == fully_exported.audit > 0


def test_archive_holds_exactly_the_removed_rows(aged: tuple[Store, str], tmp_path: Path) -> None:
    store, cutoff = aged
    set_cursor(store, "influx", max_audit(store))
    before = {t: rows(store, t) for t in TABLES}
    archive = tmp_path / "pruned.jsonl"
    result = prune(store.db, cutoff, archive=str(archive), chunk=4)
    after = {t: rows(store, t) for t in TABLES}
    archived: dict[str, dict[Any, dict[str, Any]]] = {t: {} for t in TABLES}
    for line in archive.read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        key = "request_id" if item["table"] == "request" else "id"
        assert item["row"][key] not in archived[item["table"]], "a row archived twice"
        archived[item["table"]][item["row"][key]] = item["row"]
    for t in TABLES:
        assert archived[t] == {k: v for k, v in before[t].items() if k not in after[t]}
    assert sum(len(a) for a in archived.values()) == result.audit + result.jobs + result.requests
    # a second prune appends nothing new (and the file is appended to, not replaced)
    prune(store.db, cutoff, archive=str(archive))
    assert len(archive.read_text().splitlines()) == result.audit + result.jobs + result.requests


def test_an_unwritable_archive_removes_nothing(aged: tuple[Store, str], tmp_path: Path) -> None:
    store, cutoff = aged
    before = {t: rows(store, t) for t in TABLES}
    with pytest.raises(StorageError, match="cannot write the archive .*: No such file or directory$"):
        prune(store.db, cutoff, archive=str(tmp_path / "missing" / "a.jsonl"))
    assert {t: rows(store, t) for t in TABLES} == before


def test_stats_count_rows_and_measure_the_file(store: Store) -> None:
    store.create_campaign("c")
    store.add_task("c", "reco")
    store.add_task("c", "plots", depends_on=["reco"])
    store.update_rtype("c", "all", add=["reco", "plots"])
    store.inject_runs("c", [RunSpec(n, n // 10) for n in range(1, 101)])
    for claim in store.claim("c", "reco", limit=10):
        store.create_jobs("c", "reco", claim.run_number, list(range(5)))
    got = stats(store.db)
    assert got.schema_version == SCHEMA_VERSION
    assert got.rows["campaign"] == 1 and got.rows["task"] == 2 and got.rows["run"] == 100
    assert got.rows["task_instance"] == 200 and got.rows["job"] == 50
    assert got.rows["audit"] == 200 + 10 + 50  # instances created, claims, jobs created
    assert got.rows["rtype"] == 1 and got.rows["rtype_task"] == 2 and got.rows["task_dep"] == 1
    if got.engine == "sqlite":
        path = store.db.url.removeprefix("sqlite:///")
        assert got.size_bytes == os.path.getsize(path) > 0
        assert got.wal_bytes == os.path.getsize(path + "-wal")
        assert got.free_bytes == 0
    else:
        assert got.engine == "postgresql" and got.wal_bytes is None
        assert got.table_bytes["audit"] > 0 and got.size_bytes > sum(got.table_bytes.values())
