"""The roles hold under raw SQL (issue 20, item 1): real logins, plain statements, the server refuses.

A handler's login (writer) could move done runs to reprocess or skipped, jobs back to idle and runs to other fills
with plain UPDATEs, and nothing was audited. Now every status change below admin follows the transition table,
an operator's transitions need the operator, and each change must have its audit row when its transaction commits.
Each attack leaves every state table as it was and no change without its audit row; the store's own paths still
work for the least role that should use them.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cli_support import build_chain, invoke
from roles_support import accepted, connected, deploy, raw_url, snapshot, unaudited
from sqlalchemy.engine import make_url

from ecalstate import JobUpdate, RunSpec, Store
from ecalstate.auditlog import vocab_id
from ecalstate.export import FileTarget, export
from ecalstate.results import BatchRecord
from ecalstate.sources import SourceBatch, SourceRun
from ecalstate.sources.store import RunSources

pytestmark = pytest.mark.postgres


@pytest.fixture
def site(pg_url: str) -> dict[str, str]:
    """The chain campaign processed as far as the attacks need, the roles applied; logins by kind, and "setup"
    (the server's superuser, which made the schema)."""
    build_chain(pg_url)
    with Store.open(pg_url, actor="setup") as store:
        store.claim("prompt", "reco")
        for run, status in ((1, "done"), (2, "running"), (3, "failed")):
            store.create_jobs("prompt", "reco", run, [0], fields=[{"out": f"/eos/{run}"}])
            store.set_job_status("prompt", "reco", run, 0, status)
        store.set_job_status("prompt", "reco", 3, 0, "idle")  # reco allows 1 retry: attempt 2, failed again
        store.set_job_status("prompt", "reco", 3, 0, "failed")
    return {**deploy(pg_url), "setup": pg_url}


#: the identity an audit row of this session records: the store's (``StoreBase.identity``), ending in the login
SESSION_IDENTITY = "'raw sql db:' || session_user"


def _audit_row(conn: Any, entity: str, iid: int, to: str, frm: str, job_pk: Any = None,
               identity: str = SESSION_IDENTITY) -> None:
    """The audit row a raw-SQL writer would add beside its change (texts by their ids, made first as the store
    makes them)."""
    [identity_id] = conn.execute(f"SELECT ecalstate_text_id({identity})").fetchone()
    conn.execute(
        "INSERT INTO audit_log (ts, campaign_id, entity, instance_id, job_pk, task, run_number, from_status,"
        " to_status, actor, identity, reason) SELECT 1, ti.campaign_id, %s, ti.id, %s, (SELECT id FROM string"
        " WHERE text = 'reco'), r.run_number, %s, %s, 1, %s, 1 FROM task_instance ti JOIN run r ON r.id = ti.run_id"
        " WHERE ti.id = %s", (vocab_id(entity), job_pk, vocab_id(frm), vocab_id(to), identity_id, iid))


def _one(url: str, sql: str) -> Any:
    with connected(url) as conn:
        return conn.execute(sql).fetchone()[0]  # type: ignore[index]


def _instance(url: str, status: str) -> int:
    return int(_one(url, f"SELECT ti.id FROM task_instance ti JOIN task t ON t.id = ti.task_id WHERE t.name = 'reco'"
                         f" AND ti.status = '{status}' ORDER BY ti.id LIMIT 1"))


#: (role, what it tries, the statements of one transaction, what the refusal says)
ATTACKS: list[tuple[str, str, Callable[[Any, str], None], str]] = [
    ("writer", "done run to reprocess", lambda c, u: c.execute(
        "UPDATE task_instance SET status = 'reprocess' WHERE status = 'done'"), "an operator's transition"),
    ("writer", "new run to skipped", lambda c, u: c.execute(
        "UPDATE task_instance SET status = 'skipped' WHERE status = 'new'"), "an operator's transition"),
    ("writer", "done run to reprocess, audited", lambda c, u: (
        c.execute(f"UPDATE task_instance SET status = 'reprocess' WHERE id = {_instance(u, 'done')}"),
        _audit_row(c, "task", _instance(u, "done"), "reprocess", "done")), "an operator's transition"),
    ("writer", "done job back to idle", lambda c, u: c.execute(
        "UPDATE job SET status = 'idle' WHERE status = 'done'"), "not in the job table"),
    ("operator", "done job back to idle", lambda c, u: c.execute(
        "UPDATE job SET status = 'idle' WHERE status = 'done'"), "not in the job table"),
    ("writer", "a run's fill changed", lambda c, u: c.execute(
        "UPDATE run SET fill = fill + 1 WHERE run_number = 1"), "while it is being taken"),
    ("writer", "an ended run's end time changed (a deadline moved)", lambda c, u: c.execute(
        "UPDATE run SET ended_at = '2000-01-01T00:00:00.000000Z' WHERE run_number = 1"), "while it is being taken"),
    ("writer", "a run's exported run types changed", lambda c, u: c.execute(
        "UPDATE run SET tag_rtypes = 'other'"), "run types it is exported with"),
    ("writer", "processing run to failed, unaudited", lambda c, u: c.execute(
        "UPDATE task_instance SET status = 'failed' WHERE status = 'processing'"), "without its audit row"),
    ("operator", "done run to reprocess, unaudited", lambda c, u: c.execute(
        "UPDATE task_instance SET status = 'reprocess' WHERE status = 'done'"), "without its audit row"),
    ("writer", "running job to done, unaudited", lambda c, u: c.execute(
        "UPDATE job SET status = 'done' WHERE status = 'running'"), "without its audit row"),
    ("writer", "an audited change and an unaudited one", lambda c, u: (
        c.execute(f"UPDATE task_instance SET status = 'failed' WHERE id = {_instance(u, 'processing')}"),
        _audit_row(c, "task", _instance(u, "processing"), "failed", "processing"),
        c.execute("UPDATE job SET status = 'done' WHERE status = 'running'")), "without its audit row"),
    ("writer", "a job's attempts reset", lambda c, u: c.execute(
        "UPDATE job SET attempts = 1 WHERE attempts = 2"), "attempts"),
    ("writer", "a job retried beyond its task's retries", lambda c, u: (
        c.execute("UPDATE job SET status = 'idle', attempts = attempts + 1 WHERE status = 'failed'"),
        _audit_row(c, "job", _instance(u, "processing"), "idle", "failed",
                   _one(u, "SELECT id FROM job WHERE status = 'failed'"))), "retries exhausted"),
    ("writer", "a run claimed again without its jobs' generation", lambda c, u: c.execute(
        "UPDATE task_instance SET generation = generation + 5 WHERE status = 'processing'"), "generation"),
    ("writer", "a run merged into another without a transition", lambda c, u: c.execute(
        "UPDATE task_instance SET leader_id = id - 1 WHERE status = 'processing' AND id > 1"), "leader"),
    ("writer", "a done instance created", lambda c, u: c.execute(
        "INSERT INTO task_instance (campaign_id, task_id, run_id, status, version, generation, outputs, created_at,"
        " updated_at) SELECT 1, id, (SELECT MAX(id) FROM run), 'done', 1, 0, '{}', 't', 't' FROM task"
        " WHERE name = 'reco'"), "created new"),
    ("writer", "a done job created", lambda c, u: c.execute(
        "INSERT INTO job (instance_id, generation, jid, status, version, attempts, fields, created_at, updated_at)"
        " SELECT instance_id, generation, 7, 'done', 1, 1, '{}', 1, 1 FROM job WHERE status = 'running'"),
     "created idle"),
    ("writer", "the one-statement job transition told that done may go back to idle", lambda c, u: c.execute(
        "SELECT * FROM ecalstate_set_job('prompt', 'reco', 1, 0, NULL, 'idle', 'done,running,failed', 'me',"
        " 'me db:' || session_user, '', NULL, NULL, NULL, NULL, 1, true)"),
     "row-level security"),  # (its audit row is refused first: the audit takes only the job table's moves)
    ("writer", "an audit row with a chosen id", lambda c, u: c.execute(
        "INSERT INTO audit_log (id, ts, campaign_id, entity, task, to_status, actor, identity, reason)"
        " VALUES (1000000, 1, 1, 3, 1, 1, 1, 1, 1)"), "permission denied"),
    ("writer", "a job's creation fields rewritten in the audit", lambda c, u: c.execute(
        "UPDATE audit_log SET detail = '{\"out\": \"forged\"}' WHERE detail = '='"), "row-level security"),
    ("writer", "an operator's transition written into the audit", lambda c, u: _audit_row(
        c, "task", _instance(u, "done"), "reprocess", "done"), "row-level security"),
    ("writer", "an audited change naming another login as who made it", lambda c, u: (
        c.execute(f"UPDATE task_instance SET status = 'failed' WHERE id = {_instance(u, 'processing')}"),
        _audit_row(c, "task", _instance(u, "processing"), "failed", "processing",
                   identity="'alice@lxplus db:alice'")), "row-level security"),
    ("writer", "a table locked against every writer", lambda c, u: c.execute(
        "LOCK TABLE job IN ACCESS EXCLUSIVE MODE"), "permission denied"),
]


@pytest.mark.parametrize("role, attack, statements, refusal", ATTACKS, ids=[f"{a[0]}: {a[1]}" for a in ATTACKS])
def test_raw_sql_below_admin_changes_nothing_unaudited(site: dict[str, str], role: str, attack: str,
                                                      statements: Callable[[Any, str], None], refusal: str) -> None:
    before = snapshot(site["setup"])
    with connected(site[role]) as conn:
        with pytest.raises(psycopg.Error) as refused:
            statements(conn, site["setup"])
            conn.commit()  # the deferred audit check speaks here
    assert refusal in str(refused.value), str(refused.value)
    assert snapshot(site["setup"]) == before
    assert unaudited(site["setup"]) == []


def test_a_raw_transition_with_its_audit_row_is_accepted(site: dict[str, str]) -> None:
    """The guard asks for the audit row, not for the store's own code: a handler's raw, audited move passes."""
    iid = _instance(site["setup"], "processing")
    with connected(site["writer"]) as conn:
        conn.execute(f"UPDATE task_instance SET status = 'failed' WHERE id = {iid}")
        _audit_row(conn, "task", iid, "failed", "processing")
    assert _one(site["setup"], f"SELECT status FROM task_instance WHERE id = {iid}") == "failed"
    assert unaudited(site["setup"]) == []


def test_only_an_operator_decides_a_gate(site: dict[str, str]) -> None:
    """Approving or rejecting a gate's instance is an expert's act (issue 24 part 3): a handler's login can do it
    neither through the store, the command line nor raw SQL with its audit row; an operator's login can."""
    with Store.open(site["setup"], actor="setup") as store:
        store.add_task("prompt", "signoff", depends_on=["reco"], gate=True)
        store.update_rtype("prompt", "all", add=["signoff"], backfill=True)  # run 1's reco is done: it awaits
    gate = int(_one(site["setup"], "SELECT ti.id FROM task_instance ti JOIN task t ON t.id = ti.task_id"
                                   " JOIN run r ON r.id = ti.run_id WHERE t.name = 'signoff' AND r.run_number = 1"))
    before = snapshot(site["setup"])
    with connected(site["writer"]) as conn:
        with pytest.raises(psycopg.Error) as refused:
            conn.execute(f"UPDATE task_instance SET status = 'processing', generation = 1 WHERE id = {gate}")
            _audit_row(conn, "task", gate, "processing", "new")
            conn.commit()
    assert "decides a gate" in str(refused.value), str(refused.value)
    for verb in ("approve", "reject"):
        result = invoke(site["writer"], verb, "-c", "prompt", "--task", "signoff", "--runs", "1", "--reason", "mine")
        assert result.exit_code == 1 and "Traceback" not in result.stderr, result.output
        assert len(result.stderr.strip().splitlines()) == 1 and "decides a gate" in result.stderr, result.stderr
    assert snapshot(site["setup"]) == before
    assert invoke(site["operator"], "approve", "-c", "prompt", "--task", "signoff", "--runs", "1", "--reason",
                  "constants look right").exit_code == 0
    assert _one(site["setup"], f"SELECT status FROM task_instance WHERE id = {gate}") == "done"
    assert unaudited(site["setup"]) == []


def test_a_refusal_reaches_the_command_line_as_one_line(site: dict[str, str]) -> None:
    """The store's user sees the guard's refusal as one clean line: a writer skipping a failed run through the
    command line (the instance's row is refused before its audit row is written)."""
    result = invoke(site["writer"], "set", "-c", "prompt", "--task", "reco", "--runs", "3", "skipped", "--reason",
                    "not mine to skip")
    assert result.exit_code == 1, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert "an operator's transition" in result.stderr, result.stderr
    assert _one(site["setup"], "SELECT COUNT(*) FROM task_instance WHERE status = 'skipped'") == 0


def test_the_store_works_for_the_least_role_that_should_use_it(site: dict[str, str], tmp_path: Path) -> None:
    """Handlers (writer): run sync with a run still being taken, injection, claims by run and by fill (merged
    runs), jobs created with fields, batch ids with fields, transitions through the one-statement path and the
    generic one (fields: the creation row keeps the old ones), a retry, completion, heartbeats, a fill closed, a
    claim rolled back. Operators: skip, reprocess downstream, a run type backfilled. Readers: export. Every change
    is audited."""
    writer = Store.open(site["writer"], actor="jenkins")
    operator = Store.open(site["operator"], actor="shift")
    try:
        source = SourceBatch([SourceRun(RunSpec(5, 12, {"class": "Collisions"}), ongoing=True)], last_run=5)
        assert RunSources(writer).apply_sync("prompt", "file", source).ongoing == [5]
        ended = SourceBatch([SourceRun(RunSpec(5, 12, {"class": "Collisions", "nevents": 10}))], last_run=5)
        assert RunSources(writer).apply_sync("prompt", "file", ended).ended == [5]
        writer.inject_runs("prompt", [RunSpec(6, 13)])
        writer.close_fill("prompt", 12, "beam dumped")
        [claim] = writer.claim("prompt", "reco", limit=1)  # run 5 or 6
        run = claim.run_number
        writer.create_jobs("prompt", "reco", run, [0, 1], fields=[{"out": "a"}, {"out": "b"}],
                           generation=claim.generation)
        assert writer.record_batch_ids("prompt", "reco", run, claim.generation,
                                       [BatchRecord(0, 1, "7.0", {"logs": "/l/0"})]) == 1
        writer.set_job_status("prompt", "reco", run, 0, "running")  # one statement (ecalstate_set_job)
        writer.set_job_status("prompt", "reco", run, 0, "done", fields={"out": "c"})  # the generic path
        writer.update_jobs("prompt", "reco", [JobUpdate(run, 1, "failed", reason="exit 1")])
        writer.set_job_status("prompt", "reco", run, 1, "idle")  # a retry
        writer.update_jobs("prompt", "reco", [JobUpdate(run, 1, "done", fields={"out": "d"})])
        writer.set_job_status("prompt", "reco", 2, 0, "done")  # decides its instance in the same statement
        writer.heartbeat("prompt", "reco", "check")
        assert writer.instance("prompt", "reco", run).status == "done"
        assert writer.instance("prompt", "reco", 2).status == "done"
        [group] = writer.claim("prompt", "calib", group_by="fill", limit=1)  # fill 10: run 2 leads, run 1 merged
        assert (group.run_number, group.merged) == (2, [1])
        [single] = writer.claim("prompt", "reco", limit=1)  # the other new run, rolled back by its submit stage
        writer.reprocess("prompt", "reco", runs=[single.run_number], reason="submit failed",
                         generation=single.generation)
        operator.set_status("prompt", "reco", [3], "skipped", reason="ECAL off")
        operator.reprocess("prompt", "reco", runs=[1], downstream=True, reason="new alignment")
        operator.create_rtype("prompt", "physics", filter="class=Collisions")
        operator.update_rtype("prompt", "physics", add=["reco"], backfill=True)
        assert operator.instance("prompt", "reco", 1).status == "reprocess"
        assert operator.instance("prompt", "calib", 1).status == "reprocess"
    finally:
        writer.close()
        operator.close()
    with Store.open(site["reader"]) as reader:
        assert export(reader, FileTarget(str(tmp_path / "out.lp"))).points > 0
    assert unaudited(site["setup"]) == []


def test_running_the_printed_roles_again_upgrades_a_deployment_of_the_previous_release(site: dict[str, str],
                                                                                     tmp_path: Path) -> None:
    """Existing deployments get the guards by running the roles again (here as the docs say: the printed SQL
    through psql). The previous release's state: table-wide UPDATE rights, a reader's bookmark table it could lock,
    and the high-water function that took a SHARE lock as the admin."""
    prefix = make_url(site["writer"]).username.rsplit("_", 2)[0]  # type: ignore[union-attr]
    with connected(site["setup"], autocommit=True) as conn:
        conn.execute(f"GRANT UPDATE ON run, task_instance, job TO {prefix}_writer")
        conn.execute(f"GRANT INSERT, UPDATE, DELETE ON export_cursor TO {prefix}_reader")
        conn.execute("CREATE OR REPLACE FUNCTION ecalstate_audit_high_water() RETURNS bigint LANGUAGE plpgsql"
                     " SECURITY DEFINER SET search_path = public AS $$ BEGIN LOCK TABLE audit_log IN SHARE MODE;"
                     " RETURN COALESCE((SELECT MAX(id) FROM audit_log), 0); END $$")
    printed = invoke(site["setup"], "db", "roles", "--prefix", prefix)
    assert printed.exit_code == 0, printed.output
    (tmp_path / "roles.sql").write_text(printed.stdout)
    psql = subprocess.run(["psql", "-v", "ON_ERROR_STOP=1", "-q", "-f", str(tmp_path / "roles.sql"),
                           raw_url(site["setup"])], capture_output=True, text=True, timeout=120, check=False)
    assert psql.returncode == 0, psql.stderr
    before = snapshot(site["setup"])
    with connected(site["writer"]) as conn, pytest.raises(psycopg.Error, match="an operator's transition"):
        conn.execute("UPDATE task_instance SET status = 'reprocess' WHERE status = 'done'")
    with connected(site["reader"]) as reader, Store.open(site["writer"]) as writer:
        reader.execute("SELECT ecalstate_audit_high_water()")  # and the reader keeps its transaction open
        assert not accepted(reader, "LOCK TABLE export_cursor IN SHARE MODE")
        beating = threading.Thread(target=writer.heartbeat, args=("prompt", "reco", "check"))
        beating.start()
        beating.join(10)
        held_up = beating.is_alive()
        reader.rollback()
        beating.join(30)
    assert not held_up
    assert not _one(site["setup"], "SELECT prosecdef FROM pg_proc WHERE proname = 'ecalstate_audit_high_water'")
    assert len(snapshot(site["setup"])["audit_log"]) == len(before["audit_log"]) + 1

