"""``ecalstate db upgrade|prune|stats`` through the real command line, on both engines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_support import as_json, invoke, ok
from test_migrations import load_v1

from ecalstate import JobUpdate, RunSpec, Store
from ecalstate.db import normalise_url
from ecalstate.secrets import redact_url
from ecalstate.clock import utcnow
from ecalstate.tables import SCHEMA_VERSION


def test_an_old_database_is_refused_until_db_upgrade(db_url: str) -> None:
    load_v1(db_url)
    refused = invoke(db_url, "status", "-c", "prompt")
    assert refused.exit_code == 1
    assert refused.stderr.strip().splitlines() == [
        f"Error: {redact_url(normalise_url(db_url))} has schema version 1; run `ecalstate db upgrade` first"]

    first = ok(db_url, "db", "upgrade").stdout
    assert "applied 2: campaign.settings" in first and f"schema 1 -> {SCHEMA_VERSION}" in first
    assert ok(db_url, "db", "upgrade").stdout.strip() == f"schema {SCHEMA_VERSION} is current: nothing to do"
    assert as_json(db_url, "db", "upgrade")["applied"] == []
    assert "356004" in ok(db_url, "status", "-c", "prompt").stdout


def test_db_upgrade_on_nothing_is_a_clean_refusal(tmp_path: Path) -> None:
    missing = invoke(str(tmp_path / "none.db"), "db", "upgrade")
    assert missing.exit_code == 1 and "no database at" in missing.stderr
    assert not (tmp_path / "none.db").exists()


@pytest.fixture
def history(db_url: str) -> tuple[str, str]:
    """(db, cut-off): a campaign whose first jobs finished before the cut-off; one export target."""
    with Store.open(db_url, actor="tester", create=True) as store:
        store.create_campaign("prompt")
        store.add_task("prompt", "reco")
        store.update_rtype("prompt", "all", add=["reco"])
        store.inject_runs("prompt", [RunSpec(n, 1) for n in (1, 2, 3)])
        store.claim("prompt", "reco", request_id="r-1")
        store.create_jobs("prompt", "reco", 1, [0, 1])
        store.update_jobs("prompt", "reco", [JobUpdate(1, 0, "done"), JobUpdate(1, 1, "done")])
        cutoff = utcnow()
        store.create_jobs("prompt", "reco", 2, [0])
        with store.db.tx() as tx:
            top = tx.scalar("SELECT MAX(id) FROM audit")
            tx.run("INSERT INTO export_cursor (target, audit_id, updated_at) VALUES ('influx', ?, ?)", (top - 3, cutoff))
    return db_url, cutoff


def test_prune_dry_run_then_prune_with_archive(history: tuple[str, str], tmp_path: Path) -> None:
    db, cutoff = history
    before = as_json(db, "db", "stats")["rows"]
    plan = as_json(db, "db", "prune", "--before", cutoff, "--dry-run", "--archive", str(tmp_path / "unused.jsonl"))
    # the cursor leaves the 3 newest rows unsent: 2 from before the cut-off, 1 after it
    assert plan["dry_run"] is True and plan["audit"] > 0 and plan["unexported_kept"] == 2
    assert not (tmp_path / "unused.jsonl").exists()  # a dry run writes no archive either
    assert as_json(db, "db", "stats")["rows"] == before

    text = ok(db, "db", "prune", "--before", cutoff, "--dry-run").stdout
    assert f"would remove (older than {cutoff}): {plan['audit']} audit rows, 0 jobs" in text
    assert "kept 2 old audit rows the exporter has not sent yet" in text

    archive = tmp_path / "pruned.jsonl"
    done = as_json(db, "db", "prune", "--before", cutoff, "--archive", str(archive), "--vacuum")
    assert {k: done[k] for k in ("audit", "jobs", "requests")} == {k: plan[k] for k in ("audit", "jobs", "requests")}
    after = as_json(db, "db", "stats")["rows"]
    assert before["audit"] - after["audit"] == done["audit"]
    assert before["request"] - after["request"] == done["requests"] == 1
    lines = [json.loads(line) for line in archive.read_text().splitlines()]
    assert len(lines) == done["audit"] + done["jobs"] + done["requests"]
    assert {item["table"] for item in lines} == {"audit", "request"}


@pytest.mark.parametrize(("args", "code", "message"), [
    (("db", "prune"), 2, "Missing option '--before'"),
    (("db", "prune", "--before", "last tuesday"), 1, "invalid date 'last tuesday'"),
    (("db", "frobnicate"), 2, "No such command 'frobnicate'"),
])
def test_bad_input_is_one_clear_line(history: tuple[str, str], args: tuple[str, ...], code: int,
                                     message: str) -> None:
    db, _ = history
    before = as_json(db, "db", "stats")["rows"]
    result = invoke(db, *args)
    assert result.exit_code == code and message in result.stderr
    assert "Traceback" not in result.stderr
    assert as_json(db, "db", "stats")["rows"] == before


def test_stats_text_and_json(history: tuple[str, str]) -> None:
    db, _ = history
    data = as_json(db, "db", "stats")
    assert data["rows"]["job"] == 3 and data["rows"]["run"] == 3 and data["rows"]["export_cursor"] == 1
    assert data["schema_version"] == SCHEMA_VERSION and data["size_bytes"] > 0
    text = ok(db, "db", "stats").stdout
    assert any(line.split()[:2] == ["job", "3"] for line in text.splitlines())
    assert f"{data['engine']}, schema {SCHEMA_VERSION}: database " in text


def test_every_db_command_documents_an_example() -> None:
    for args in (("db", "--help"), ("db", "upgrade", "--help"), ("db", "prune", "--help"), ("db", "stats", "--help")):
        assert "Example:" in ok("unused.db", *args).stdout
