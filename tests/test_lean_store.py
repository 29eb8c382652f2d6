"""The lean store's first three steps (bench/lean.py, issue 14) keep every audit reader's answer.

A campaign driven through the public API (every kind of audit row, free text that line protocol must escape)
is copied; the copy gets the lean audit (strings as ids behind the view ``audit``, integer microsecond
timestamps, the partial job index). Both then answer the same: the audit rows, ``history()``, the exported line
protocol; and both go on accepting the same writes through the unchanged API (the view's trigger interns new
texts), including a prune that deletes through the view.
"""

from __future__ import annotations

import itertools
import shutil
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from test_export import NASTY, file_export, make_campaign

from bench import lean
from ecalstate import JobUpdate, Store
from ecalstate.db import TS_FORMAT
from ecalstate.retention import prune

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
