"""Every role x every table x INSERT/UPDATE/DELETE/TRUNCATE, as raw SQL through a real login (issue 20, item 1).

Each cell runs one plain statement, the kind anyone with a login can type into psql, in a transaction whose
deferred checks run at once (``SET CONSTRAINTS ALL IMMEDIATE``: the answer a commit would give), then rolls back,
so every cell sees the same database. The answers:

* ``ok``: rows changed; ``none``: accepted, but a row-level policy hid every row from the role (nothing changed);
* ``denied``: no privilege on the table or column; ``guard``: refused by the state guards (a transition outside
  the table or an operator's, a change without its audit row, a fill changed after the run ended...).

State changes below admin are never plain statements: an UPDATE or INSERT of an instance or a job without its audit
row is refused even where the transition itself would be allowed (the audited paths: tests/test_roles_guards.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from cli_support import build_chain
from roles_support import connected, deploy
from sqlalchemy.engine import make_url

from ecalstate import Store
from ecalstate.roles import KINDS, TABLES

pytestmark = pytest.mark.postgres

#: per table: the statement of each operation, and the answers of reader, writer, operator, admin
CELLS: dict[str, dict[str, tuple[str, str]]] = {
    "meta": {
        "INSERT": ("INSERT INTO meta (key, value) VALUES ('matrix', 'x')", "denied ok ok ok"),
        "UPDATE": ("UPDATE meta SET value = '1' WHERE key = 'schema_version'", "denied none none ok"),
        "DELETE": ("DELETE FROM meta WHERE key = 'schema_version'", "denied none none ok"),
    },
    "campaign": {
        "INSERT": ("INSERT INTO campaign (name, kind, description, settings, created_at)"
                   " VALUES ('matrix', 'prompt', '', '{{}}', 't')", "denied denied ok ok"),
        "UPDATE": ("UPDATE campaign SET description = 'x' WHERE id = {cid}", "denied denied ok ok"),
        "DELETE": ("DELETE FROM campaign WHERE name = 'spare'", "denied denied ok ok"),
    },
    "task": {
        "INSERT": ("INSERT INTO task (campaign_id, name, max_retries, created_at) VALUES ({cid}, 'matrix', 1, 't')",
                   "denied denied ok ok"),
        "UPDATE": ("UPDATE task SET max_retries = 9 WHERE id = {reco}", "denied denied ok ok"),
        "DELETE": ("DELETE FROM task WHERE id = {spare_task}", "denied denied ok ok"),
    },
    "task_dep": {
        "INSERT": ("INSERT INTO task_dep (task_id, depends_on_id) VALUES ({plots}, {reco})", "denied denied ok ok"),
        "UPDATE": ("UPDATE task_dep SET depends_on_id = depends_on_id", "denied denied ok ok"),
        "DELETE": ("DELETE FROM task_dep WHERE task_id = {plots}", "denied denied ok ok"),
    },
    "rtype": {
        "INSERT": ("INSERT INTO rtype (campaign_id, name, filter) VALUES ({cid}, 'matrix', '')", "denied denied ok ok"),
        "UPDATE": ("UPDATE rtype SET filter = '' WHERE campaign_id = {cid}", "denied denied ok ok"),
        "DELETE": ("DELETE FROM rtype WHERE id = {spare_rtype}", "denied denied ok ok"),
    },
    "rtype_task": {
        "INSERT": ("INSERT INTO rtype_task (rtype_id, task_id) VALUES ({spare_rtype}, {reco})", "denied denied ok ok"),
        "UPDATE": ("UPDATE rtype_task SET task_id = task_id", "denied denied ok ok"),
        "DELETE": ("DELETE FROM rtype_task WHERE task_id = {plots}", "denied denied ok ok"),
    },
    "run": {
        "INSERT": ("INSERT INTO run (campaign_id, run_number, fill, meta, rtypes, injected_at)"
                   " VALUES ({cid}, 99, 12, '{{}}', '', 't')", "denied ok ok ok"),
        "UPDATE": ("UPDATE run SET fill = 12 WHERE id = {run1}", "denied guard guard ok"),
        "DELETE": ("DELETE FROM run WHERE id = {spare_run}", "denied denied denied ok"),
    },
    "task_instance": {
        "INSERT": ("INSERT INTO task_instance (campaign_id, task_id, run_id, status, version, generation, outputs,"
                   " created_at, updated_at) VALUES ({cid}, {reco}, {spare_run}, 'new', 1, 0, '{{}}', 't', 't')",
                   "denied guard guard ok"),
        "UPDATE": ("UPDATE task_instance SET status = 'reprocess' WHERE id = {done_instance}",
                   "denied guard guard ok"),
        "DELETE": ("DELETE FROM task_instance WHERE id = {new_instance}", "denied denied denied ok"),
    },
    "job": {
        "INSERT": ("INSERT INTO job (instance_id, generation, jid, status, version, attempts, fields, created_at,"
                   " updated_at) VALUES ({running_instance}, {running_gen}, 9, 'idle', 1, 1, '{{}}', 1, 1)",
                   "denied guard guard ok"),
        "UPDATE": ("UPDATE job SET status = 'idle' WHERE id = {done_job}", "denied guard guard ok"),
        "DELETE": ("DELETE FROM job WHERE id = {done_job}", "denied denied denied ok"),
    },
    "audit_log": {
        # (a row names its login as who acted, as the store's rows do)
        "INSERT": ("INSERT INTO audit_log (ts, campaign_id, entity, task, to_status, actor, identity, reason)"
                   " SELECT 1, {cid}, {handler}, 1, 1, 1, id, 1 FROM string WHERE text = 'psql db:' || session_user",
                   "denied ok ok ok"),
        "UPDATE": ("UPDATE audit_log SET reason = 1", "denied denied denied ok"),
        "DELETE": ("DELETE FROM audit_log WHERE id = {last_audit}", "denied denied denied ok"),
    },
    "string": {
        "INSERT": ("INSERT INTO string (text) VALUES ('matrix')", "denied ok ok ok"),
        "UPDATE": ("UPDATE string SET text = 'rewritten' WHERE id = {spare_string}", "denied denied denied ok"),
        "DELETE": ("DELETE FROM string WHERE id = {spare_string}", "denied denied denied ok"),
    },
    "request": {
        "INSERT": ("INSERT INTO request (request_id, kind, outcome, created_at) VALUES ('matrix', 'k', '0', 't')",
                   "denied ok ok ok"),
        "UPDATE": ("UPDATE request SET outcome = '[]'", "denied denied denied ok"),
        "DELETE": ("DELETE FROM request", "denied denied denied ok"),
    },
    "heartbeat": {
        "INSERT": ("INSERT INTO heartbeat (campaign_id, task, stage, last_at, actor, ok, message)"
                   " VALUES ({cid}, 'reco', 'check', 't', 'a', true, '')", "denied ok ok ok"),
        "UPDATE": ("UPDATE heartbeat SET ok = false", "denied ok ok ok"),
        "DELETE": ("DELETE FROM heartbeat", "denied ok ok ok"),
    },
    "run_source": {
        "INSERT": ("INSERT INTO run_source (campaign_id, source, last_run, updated_at)"
                   " VALUES ({cid}, 'matrix', 0, 't')", "denied ok ok ok"),
        "UPDATE": ("UPDATE run_source SET last_run = 0", "denied ok ok ok"),
        "DELETE": ("DELETE FROM run_source", "denied denied denied ok"),
    },
    "fill_end": {
        "INSERT": ("INSERT INTO fill_end (campaign_id, fill, ended_at, reason, actor)"
                   " VALUES ({cid}, 11, 't', 'r', 'a')", "denied ok ok ok"),
        "UPDATE": ("UPDATE fill_end SET fill = 11", "denied denied denied ok"),
        "DELETE": ("DELETE FROM fill_end", "denied denied denied ok"),
    },
    "export_cursor": {
        "INSERT": ("INSERT INTO export_cursor (target, audit_id, updated_at) VALUES ('matrix', 0, 't')",
                   "ok ok ok ok"),
        # the notifier's bookmarks are the writer's: a reader moving them would silence or repeat notifications
        "UPDATE": ("UPDATE export_cursor SET audit_id = 0 WHERE target LIKE 'notify:%'", "none ok ok ok"),
        "DELETE": ("DELETE FROM export_cursor WHERE target LIKE 'notify:%'", "denied ok ok ok"),
    },
}
OPERATIONS = ("INSERT", "UPDATE", "DELETE", "TRUNCATE")


def _cells() -> Iterator[Any]:
    for table in TABLES:
        for op in OPERATIONS:
            if op == "TRUNCATE":
                sql, answers = f"TRUNCATE {table} CASCADE", "denied denied denied ok"
            else:
                sql, answers = CELLS[table][op]
            for kind, answer in zip(KINDS, answers.split()):
                yield pytest.param(kind, table, op, sql, answer, id=f"{kind}-{table}-{op}-{answer}")


def test_the_matrix_covers_every_table() -> None:
    assert sorted(CELLS) == sorted(TABLES)


@pytest.fixture(scope="module")
def world(postgres: Any) -> Iterator[tuple[dict[str, str], dict[str, Any]]]:
    """One deployment for the whole matrix: a processed chain campaign and a row of every kind, the logins, and the
    ids the statements name."""
    url = postgres.create_database()
    build_chain(url)
    with Store.open(url, actor="setup") as store:
        store.claim("prompt", "reco")
        store.create_jobs("prompt", "reco", 1, [0], request_id="matrix-request")
        store.set_job_status("prompt", "reco", 1, 0, "done")
        store.create_jobs("prompt", "reco", 2, [0])
        store.set_job_status("prompt", "reco", 2, 0, "running")
        store.heartbeat("prompt", "reco", "submit")
        store.add_task("prompt", "spare")
        store.create_rtype("prompt", "spare")
    with connected(url) as conn:
        conn.execute("INSERT INTO campaign (name, kind, description, settings, created_at)"
                     " VALUES ('spare', 'prompt', '', '{}', 't')")
        conn.execute("INSERT INTO run (campaign_id, run_number, fill, meta, rtypes, injected_at)"
                     " VALUES (1, 7, 12, '{}', '', 't')")
        conn.execute("INSERT INTO run_source (campaign_id, source, last_run, updated_at) VALUES (1, 'file', 4, 't')")
        conn.execute("INSERT INTO fill_end (campaign_id, fill, ended_at, reason, actor) VALUES (1, 10, 't', 'r', 'a')")
        conn.execute("INSERT INTO meta (key, value) VALUES ('notify.seen:prompt:chat', '{}')")
        conn.execute("INSERT INTO export_cursor (target, audit_id, updated_at)"
                     " VALUES ('file:x', 1, 't'), ('notify:prompt:chat', 1, 't')")
        conn.execute("INSERT INTO string (text) VALUES ('spare text')")

        def one(sql: str) -> Any:
            return conn.execute(sql).fetchone()[0]  # type: ignore[index]

        ids = {
            "cid": one("SELECT id FROM campaign WHERE name = 'prompt'"),
            "reco": one("SELECT id FROM task WHERE name = 'reco'"),
            "plots": one("SELECT id FROM task WHERE name = 'plots'"),
            "spare_task": one("SELECT id FROM task WHERE name = 'spare'"),
            "spare_rtype": one("SELECT id FROM rtype WHERE name = 'spare'"),
            "run1": one("SELECT id FROM run WHERE run_number = 1"),
            "spare_run": one("SELECT id FROM run WHERE run_number = 7"),
            "done_instance": one("SELECT id FROM task_instance WHERE status = 'done'"),
            "new_instance": one("SELECT ti.id FROM task_instance ti JOIN run r ON r.id = ti.run_id"
                                " WHERE r.run_number = 4 AND ti.task_id = (SELECT id FROM task WHERE name = 'plots')"),
            "running_instance": one("SELECT instance_id FROM job WHERE status = 'running'"),
            "running_gen": one("SELECT generation FROM job WHERE status = 'running'"),
            "done_job": one("SELECT id FROM job WHERE status = 'done'"),
            "handler": one("SELECT id FROM string WHERE text = 'handler'"),
            "last_audit": one("SELECT MAX(id) FROM audit_log"),
            "spare_string": one("SELECT id FROM string WHERE text = 'spare text'"),
        }
    logins = deploy(url)
    with connected(url) as conn:
        conn.execute("INSERT INTO string (text) SELECT 'psql db:' || login FROM unnest(%s::text[]) login",
                     ([make_url(u).username for u in logins.values()],))
    yield logins, ids
    postgres.drop_database(url.rsplit("/", 1)[1])


def _answer(login: str, sql: str) -> str:
    with connected(login) as conn:
        try:
            conn.execute("SET CONSTRAINTS ALL IMMEDIATE")  # the deferred audit check answers now, as a commit would
            cursor = conn.execute(sql)
            return "ok" if sql.startswith("TRUNCATE") or cursor.rowcount > 0 else "none"
        except psycopg.Error as err:
            text = str(err)
            if "ecalstate guard" in text:
                return "guard"
            if isinstance(err, psycopg.errors.InsufficientPrivilege) and "permission denied" in text:
                return "denied"
            return f"error: {type(err).__name__}: {text.splitlines()[0]}"
        finally:
            conn.rollback()


@pytest.mark.parametrize("kind, table, op, sql, answer", list(_cells()))
def test_each_role_gets_its_answer(world: tuple[dict[str, str], dict[str, Any]], kind: str, table: str, op: str,
                                   sql: str, answer: str) -> None:
    logins, ids = world
    assert _answer(logins[kind], sql.format(**ids)) == answer
