"""The lean store (schema 6, issue 14): what it stores once must read back as if it were stored every time.

* The audit's texts live once in ``string``: an id a transaction made and then lost by rolling back must never
  be used for another text (writers cache ids), and two PostgreSQL writers interning the same new text at once
  get one id between them.
* A job's creation fields are kept once, in the job, while they are its fields: when the job's fields change
  (a report, a batch record) or the job row is pruned, the creation row gets its own copy first, so the history
  and the exported creation point keep the fields the job was created with.
* A done instance's outputs are read from its jobs instead of a copy of every path: reprocessing keeps the old
  outputs until the new generation is done.
And PostgreSQL connections in steady use go to work without a ping round trip, while a dropped or rested one is
still found and replaced.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from typing import Any

import psycopg
import pytest
from test_export import file_export

from ecalstate import JobUpdate, RunSpec, Store
from ecalstate import db as db_module
from ecalstate.auditlog import SAME_AS_JOB
from ecalstate.base import Ctx
from ecalstate.export import HISTORY_SQL
from ecalstate.monitoring import STAGES
from ecalstate.notify.settings import EVENTS_SQL
from ecalstate.report import CELLS_SQL
from ecalstate.results import BatchRecord
from ecalstate.retention import prune


def campaign(store: Store, runs: int = 1) -> None:
    store.create_campaign("c")
    store.add_task("c", "reco")
    store.update_rtype("c", "all", add=["reco"])
    store.inject_runs("c", [RunSpec(n, 1) for n in range(1, runs + 1)])


def creation_detail(store: Store, jid: int = 0) -> tuple[Any, Any]:
    """(what the creation row stores, what the view ``audit`` reads) for job ``jid`` of run 1."""
    with store.db.tx(write=False) as tx:
        raw = tx.scalar("SELECT detail FROM audit_log WHERE jid = ? AND from_status IS NULL AND job_pk IS NOT NULL"
                        " ORDER BY id DESC LIMIT 1", (jid,))
        shown = tx.scalar("SELECT detail FROM audit WHERE jid = ? AND from_status IS NULL AND entity = 'job'"
                          " ORDER BY id DESC LIMIT 1", (jid,))
    return raw, shown


def test_a_text_from_a_rolled_back_transaction_never_names_another(db_url: str) -> None:
    with Store.open(db_url, actor="a", create=True) as first, Store.open(db_url, actor="b") as second:
        campaign(first)

        def fails(ctx: Ctx) -> None:
            ctx.audit(1, "handler", "reco", "ok", reason="only in a transaction that rolls back")
            raise RuntimeError("stage killed")

        with pytest.raises(RuntimeError):
            first._write("test", None, fails)
        second.heartbeat("c", "reco", "submit", message="another text, committed")  # may take the lost id
        first.heartbeat("c", "reco", "check", message="only in a transaction that rolls back")
        reasons = [h.reason for h in first.history("c", limit=2, entity="handler")]
        assert reasons == ["another text, committed", "only in a transaction that rolls back"]


def test_postgres_writers_interning_one_new_text_together_share_one_id(pg_url: str) -> None:
    with Store.open(pg_url, actor="t", create=True) as store:
        campaign(store)
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def beat(n: int) -> None:
        try:
            with Store.open(pg_url, actor="same new actor") as mine:
                start.wait()
                mine.heartbeat("c", "reco", STAGES[n % len(STAGES)], message="same new reason")
        except BaseException as err:  # noqa: BLE001 (reported below)
            errors.append(err)

    threads = [threading.Thread(target=beat, args=(n,)) for n in range(4)]  # two writers per heartbeat row
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with Store.open(pg_url) as store:
        with store.db.tx(write=False) as tx:
            assert tx.all("SELECT COUNT(*) FROM string WHERE text IN ('same new actor', 'same new reason')"
                          " GROUP BY text") == [(1,), (1,)]
        assert {(h.actor, h.reason) for h in store.history("c", entity="handler")} == \
            {("same new actor", "same new reason")}


def test_creation_fields_are_kept_once_and_survive_every_change_of_the_job(db_url: str, tmp_path: Any) -> None:
    with Store.open(db_url, actor="t", create=True) as store:
        campaign(store)
        claim = store.claim("c", "reco")[0]
        store.create_jobs("c", "reco", 1, [0, 1, 2], fields=[{"output": "/eos/0.root"}, {"output": "/eos/1.root"},
                                                           {}])
        assert creation_detail(store, 0) == (SAME_AS_JOB, '{"output": "/eos/0.root"}')
        assert creation_detail(store, 2) == (None, None)
        lines_before = file_export(store, tmp_path / "before.lp")
        store.update_jobs("c", "reco", [JobUpdate(1, 0, "running", fields={"output": "/eos/0-final.root"}),
                                        JobUpdate(1, 2, "running", fields={"events": 7})])
        store.record_batch_ids("c", "reco", 1, claim.generation, [BatchRecord(1, 1, "9.1", {"logs": "/l/9.1"})])
        for jid, created in ((0, '{"output": "/eos/0.root"}'), (1, '{"output": "/eos/1.root"}'), (2, None)):
            assert creation_detail(store, jid) == (created, created)
        assert {j.jid: j.fields for j in store.list_jobs("c", "reco")} == {
            0: {"output": "/eos/0-final.root"}, 1: {"output": "/eos/1.root", "logs": "/l/9.1"}, 2: {"events": 7}}
        assert lines_before.points > 0
        first = (tmp_path / "before.lp").read_text().splitlines()
        file_export(store, tmp_path / "after.lp", full=True)
        assert (tmp_path / "after.lp").read_text().splitlines()[:len(first)] == first


def test_pruning_a_job_keeps_the_fields_of_its_creation_row(db_url: str) -> None:
    """A finished older generation's jobs are pruned while their audit rows are not exported yet (kept): the
    creation rows must still show the fields the jobs were created with."""
    with Store.open(db_url, actor="t", create=True) as store:
        campaign(store)
        store.claim("c", "reco")
        store.create_jobs("c", "reco", 1, [0], fields=[{"output": "/eos/gen1.root"}])
        store.set_job_status("c", "reco", 1, 0, "running")
        store.set_job_status("c", "reco", 1, 0, "done")
        store.reprocess("c", "reco", runs=[1], reason="new alignment")
        store.claim("c", "reco")
        with store.db.tx() as tx:  # an export target that has received nothing: no audit row may go
            tx.run("INSERT INTO export_cursor (target, audit_id, updated_at) VALUES ('influx', 0, '')")
        done = prune(store.db, "2999-01-01")
        assert (done.jobs, done.audit) == (1, 0)
        assert creation_detail(store, 0) == ('{"output": "/eos/gen1.root"}',) * 2


def test_done_outputs_are_read_from_the_jobs_and_kept_through_a_reprocess(db_url: str) -> None:
    with Store.open(db_url, actor="t", create=True) as store:
        campaign(store)
        store.claim("c", "reco")
        store.create_jobs("c", "reco", 1, [0, 1], fields=[{"output": "/eos/a0"}, {"output": "/eos/a1", "plots": "p"}])
        store.update_jobs("c", "reco", [JobUpdate(1, j, "done") for j in (0, 1)])
        with store.db.tx(write=False) as tx:
            assert tx.scalar("SELECT outputs FROM task_instance") == ""  # no copy of the paths
        assert store.instance("c", "reco", 1).outputs == {"output": "/eos/a0,/eos/a1", "plots": "p"}
        store.reprocess("c", "reco", runs=[1], reason="again")
        store.claim("c", "reco")
        store.create_jobs("c", "reco", 1, [0], fields=[{"output": "/eos/b0"}])
        assert store.instance("c", "reco", 1).outputs == {"output": "/eos/a0,/eos/a1", "plots": "p"}
        store.update_jobs("c", "reco", [JobUpdate(1, 0, "done")])
        assert store.instance("c", "reco", 1).outputs == {"output": "/eos/b0"}


@pytest.mark.parametrize("reader", ["export attempts", "notify retries", "report last reason"])
def test_every_reader_of_an_audit_index_uses_its_partial_index(tmp_path: Any, reader: str) -> None:
    """The audit's indexes hold only the rows their readers want (a full index was a tenth of a year's file): a
    reader that stopped repeating the index's condition word for word would scan millions of rows."""
    sql, params, index = {
        "export attempts": (HISTORY_SQL.format(marks="?,?"), (1, 2, 10), "ix_audit_retry"),
        "notify retries": (EVENTS_SQL, (1, 0, "x", 10), "ix_audit_retry"),
        "report last reason": (CELLS_SQL, ("c",), "ix_audit_task"),
    }[reader]
    with Store.open(str(tmp_path / "s.db"), create=True) as store:
        with store.db.tx(write=False) as tx:
            plan = " | ".join(str(r[-1]) for r in tx.all("EXPLAIN QUERY PLAN " + sql, params))
    assert f"INDEX {index}" in plan, plan
    assert "SCAN" not in plan, plan


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


def test_a_database_file_replaced_after_close_gets_no_stale_text_ids(tmp_path: Any) -> None:
    """``Database.close()`` lets the file be replaced (a restore from backup): the cached text ids were the old
    file's, and another file gives those ids to other texts."""
    other = tmp_path / "other.db"
    with Store.open(str(other), actor="bob", create=True) as store:
        campaign(store)  # "bob" takes the first id after the vocabulary; "reco" the next
    path = tmp_path / "s.db"
    with Store.open(str(path), actor="alice", create=True) as store:
        campaign(store)  # here "alice" takes that id
        store.db.close()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(str(path) + suffix):
                os.remove(str(path) + suffix)
        shutil.copyfile(other, path)  # the restored file: its id of "alice"'s is "bob"'s
        store.heartbeat("c", "reco", "submit", message="after the restore")
        assert store.history("c", limit=1)[0].actor == "alice"
