"""PostgreSQL roles (issue 11, item 7) with real logins: each does its job and is refused the rest.

``ecalstate db roles --apply`` makes the four group roles; logins that belong to them then run the real
command line: a shifter (reader) reads and exports, a handler (writer) claims and moves jobs but cannot
reprocess a finished run or touch the set-up, an operator can, and only the admin prunes.
Roles are cluster-wide, so each test uses its own prefix.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cli_support import build_chain, invoke
from sqlalchemy.engine import make_url

from ecalstate import Store


def _as(url: str, user: str) -> str:
    return make_url(url).set(username=user).render_as_string(hide_password=False)


@pytest.fixture
def deployment(pg_url: str) -> dict[str, Any]:
    """A chain campaign on PostgreSQL, the roles applied, and one login per role."""
    build_chain(pg_url)
    prefix = "t" + uuid.uuid4().hex[:8]
    applied = invoke(pg_url, "db", "roles", "--apply", "--prefix", prefix)
    assert applied.exit_code == 0, applied.output
    assert invoke(pg_url, "db", "roles", "--apply", "--prefix", prefix).exit_code == 0  # idempotent
    admin = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    logins = {}
    with psycopg.connect(admin, autocommit=True) as conn:
        for kind in ("reader", "writer", "operator", "admin"):
            login = f"{prefix}_{kind}_login"
            conn.execute(f"CREATE ROLE {login} LOGIN IN ROLE {prefix}_{kind}")
            logins[kind] = _as(pg_url, login)
    return logins


def _refused(result: Any) -> None:
    assert result.exit_code == 1, result.output
    refusals = ("permission denied", "row-level security", "ecalstate guard")
    assert any(w in result.stderr for w in refusals), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_reader_reads_and_exports_but_writes_no_state(deployment: dict[str, Any], tmp_path: Path) -> None:
    db = deployment["reader"]
    assert invoke(db, "status", "-c", "prompt").exit_code == 0
    assert invoke(db, "history", "-c", "prompt").exit_code == 0
    out = tmp_path / "state.lp"
    exported = invoke(db, "export", "--out", str(out))
    assert exported.exit_code == 0, exported.output
    assert "run,campaign=prompt" in out.read_text()
    _refused(invoke(db, "run", "inject", "-c", "prompt", "--run", "99", "--fill", "12"))
    _refused(invoke(db, "claim", "-c", "prompt", "--task", "reco"))
    with Store.open(deployment["admin"]) as store:
        assert [r["run_number"] for r in store.list_runs("prompt")] == [1, 2, 3, 4]
        assert store.overview("prompt").totals["reco"].get("processing", 0) == 0


def test_writer_runs_handlers_but_cannot_reprocess_finished_work(deployment: dict[str, Any]) -> None:
    db = deployment["writer"]
    init = invoke(db, "init")  # a Jenkins stage's idempotent init: the schema is there, nothing to make
    assert init.exit_code == 0, init.stderr
    assert invoke(db, "claim", "-c", "prompt", "--task", "reco", "--limit", "1").exit_code == 0
    assert invoke(db, "job", "create", "-c", "prompt", "--task", "reco", "--run", "1", "--count", "1").exit_code == 0
    assert invoke(db, "job", "set", "-c", "prompt", "--task", "reco", "--run", "1", "--job", "0", "done").exit_code == 0
    assert invoke(db, "run", "inject", "-c", "prompt", "--run", "5", "--fill", "12").exit_code == 0
    _refused(invoke(db, "reprocess", "-c", "prompt", "--task", "reco", "--runs", "1", "--reason", "again"))
    _refused(invoke(db, "task", "add", "-c", "prompt", "extra"))
    _refused(invoke(db, "db", "prune", "--before", "2100-01-01"))
    with Store.open(deployment["admin"]) as store:
        assert store.instance("prompt", "reco", 1).status == "done"
        assert [t.name for t in store.list_tasks("prompt")] == ["reco", "calib", "plots"]
    # the audit is append-only: its rows, and the texts they point to (one text rewritten would rewrite every row
    # naming it)
    for sql in ("UPDATE audit_log SET reason = 1", "DELETE FROM audit_log", "UPDATE string SET text = 'rewritten'",
                "DELETE FROM string"):
        with psycopg.connect(make_url(db).set(drivername="postgresql").render_as_string(hide_password=False)) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)


def test_operator_reprocesses_and_sets_up_but_does_not_prune(deployment: dict[str, Any]) -> None:
    invoke(deployment["writer"], "claim", "-c", "prompt", "--task", "reco", "--limit", "1")
    invoke(deployment["writer"], "job", "create", "-c", "prompt", "--task", "reco", "--run", "1", "--count", "1")
    invoke(deployment["writer"], "job", "set", "-c", "prompt", "--task", "reco", "--run", "1", "--job", "0", "done")
    db = deployment["operator"]
    result = invoke(db, "reprocess", "-c", "prompt", "--task", "reco", "--runs", "1", "--reason", "new alignment")
    assert result.exit_code == 0, result.output
    assert invoke(db, "task", "add", "-c", "prompt", "extra").exit_code == 0
    _refused(invoke(db, "db", "prune", "--before", "2100-01-01"))
    admin = invoke(deployment["admin"], "db", "prune", "--before", "2000-01-01")
    assert admin.exit_code == 0, admin.output


def test_every_table_has_its_grants() -> None:
    """A table added to the schema without a line in roles.py would be unreadable by every role but the admin."""
    from ecalstate.tables import SQLModel
    from ecalstate.roles import TABLES

    assert sorted(TABLES) == sorted(SQLModel.metadata.tables)


def test_writer_syncs_runs_and_records_ended_fills(deployment: dict[str, Any], tmp_path: Path) -> None:
    runs = tmp_path / "runs.json"
    runs.write_text('[{"run_number": 6, "fill": 12, "end_time": "2026-12-01T03:00:00Z"},'
                    ' {"run_number": 7, "fill": 13, "end_time": "2026-12-01T04:00:00Z"}]')
    result = invoke(deployment["writer"], "run", "sync", "-c", "prompt", "--source", "file", "--path", str(runs))
    assert result.exit_code == 0, result.output
    with Store.open(deployment["admin"]) as store:
        assert store.fill_ended("prompt", 12)


def test_roles_are_refused_on_sqlite(tmp_path: Path) -> None:
    db = str(tmp_path / "state.db")
    build_chain(db)
    result = invoke(db, "db", "roles", "--apply")
    assert result.exit_code == 1 and "PostgreSQL only" in result.stderr
    assert invoke(db, "db", "roles", "--prefix", "bad-name").exit_code == 1
