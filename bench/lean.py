"""The lean store, prototyped on SQLite as plain SQL: each step's bytes, measured on a simulated year (issue 14).

A migration from the current schema in cumulative steps, each a list of SQL statements; :func:`measure` applies
them one by one to a copy of a database, VACUUMs, and records the file size and every table's and index's bytes
(SQLite's ``dbstat``), so each step's gain is measured, not guessed:

1. ``strings``: the audit's repeated texts (entity, task, statuses, actor, identity, reason) move to one
   ``string`` table; ``audit_log`` keeps their small integer ids. A view named ``audit`` gives back the old
   columns and texts, so every reader's SQL stays what it is, and an ``INSTEAD OF INSERT`` trigger interns the
   texts of rows inserted through the view (the store's AUDIT_SQL, unchanged).
2. ``timestamps``: ``audit_log.ts`` as integer microseconds since 1970 (8 bytes instead of 27); the view renders
   the store's text format (``2025-01-01T00:00:00.000000Z``), whose order is the integers' order.
3. ``indexes``: ``ix_job_status`` (every job, read only for idle jobs without a batch id, by health) becomes
   a partial index of those jobs alone.
4. ``job times``: the four job timestamps as integer microseconds too (what a reader of ``job`` would have to
   convert; measured to show what it would bring).
5. ``outputs``: ``task_instance.outputs`` (the jobs' output fields gathered, comma-joined: a copy of what the
   current generation's jobs hold) left empty: derived when read instead (measured to show what it would bring).
6. ``creation detail``: the fields a job is created with are written twice, in ``job.fields`` and in the detail
   of its creation audit row; kept once (measured to show what it would bring).
7. ``retry index``: ``ix_audit_instance`` (every audit row) is read only to count a job's retries (its
   failed -> idle rows: the exporter's attempts, the notifier's); a partial index of those rows alone, named by
   the vocabulary's fixed ids (statuses and entities take ids 1..n), would serve them if they read ``audit_log``.

Steps 1-3 keep every query and the export output as they are (tests/test_lean_store.py compares them on a store
driven through the API); 4-7 would change readers of ``job``, ``task_instance`` and the exporter, and are
measured only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, Optional

from ecalstate import Store
from ecalstate.base import AUDIT_SQL
from ecalstate.export import ROWS_SQL
from ecalstate.statemachine import JobStatus, TaskStatus

from .common import median_ms, row

#: the store's text time of an integer microsecond count (SQLite)
TS_TEXT = "strftime('%Y-%m-%dT%H:%M:%S', {c} / 1000000, 'unixepoch') || printf('.%06dZ', {c} % 1000000)"
#: the integer microsecond count of one of the store's text times (SQLite)
TS_MICROS = "(CAST(strftime('%s', substr({c}, 1, 19)) AS INTEGER) * 1000000 + CAST(substr({c}, 21, 6) AS INTEGER))"

#: the audit's text columns that move to ``string`` (nullable ones: from_status)
INTERNED = ("entity", "task", "from_status", "to_status", "actor", "identity", "reason")
#: the vocabulary, at fixed ids 1..n (a partial index can name them): entities, then every status
VOCABULARY = ("task", "job", "handler", *(s.value for s in TaskStatus),
              *(s.value for s in JobStatus if s.value not in {t.value for t in TaskStatus}), "ok", "error")
COLUMNS = ("id", "ts", "campaign_id", "entity", "instance_id", "job_pk", "task", "run_number", "jid", "generation",
           "from_status", "to_status", "actor", "identity", "reason", "request_id", "detail")

AUDIT_LOG = """
CREATE TABLE audit_log (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  ts {ts_type} NOT NULL,
  campaign_id INTEGER NOT NULL REFERENCES campaign (id),
  entity INTEGER NOT NULL REFERENCES string (id),
  instance_id INTEGER,
  job_pk INTEGER,
  task INTEGER NOT NULL REFERENCES string (id),
  run_number INTEGER,
  jid INTEGER,
  generation INTEGER,
  from_status INTEGER REFERENCES string (id),
  to_status INTEGER NOT NULL REFERENCES string (id),
  actor INTEGER NOT NULL REFERENCES string (id),
  identity INTEGER NOT NULL REFERENCES string (id),
  reason INTEGER NOT NULL REFERENCES string (id),
  request_id VARCHAR,
  detail VARCHAR
)"""


def _text(column: str) -> str:
    return f"(SELECT s.text FROM string s WHERE s.id = a.{column})"


def _id(value: str) -> str:
    return f"(SELECT s.id FROM string s WHERE s.text = {value})"


def view_sql(integer_ts: bool) -> str:
    """The view ``audit``: the old columns, in the old order, with their texts."""
    cols = []
    for col in COLUMNS:
        if col in INTERNED:
            cols.append(f"{_text(col)} AS {col}")
        elif col == "ts" and integer_ts:
            cols.append(TS_TEXT.format(c="a.ts") + " AS ts")
        else:
            cols.append(f"a.{col} AS {col}")
    return "CREATE VIEW audit AS SELECT " + ", ".join(cols) + " FROM audit_log a"


def triggers_sql(integer_ts: bool) -> list[str]:
    """Inserts and deletes through the view: the writers' AUDIT_SQL and retention's chunked DELETE unchanged."""
    values = ", ".join(f"(NEW.{c})" for c in INTERNED)
    target = []
    for col in COLUMNS:
        if col in INTERNED:
            target.append(_id(f"NEW.{col}"))
        elif col == "ts" and integer_ts:
            target.append(TS_MICROS.format(c="NEW.ts"))
        else:
            target.append(f"NEW.{col}")
    return [
        ("CREATE TRIGGER audit_insert INSTEAD OF INSERT ON audit BEGIN"
         f" INSERT OR IGNORE INTO string (text) VALUES {values};"  # a NULL from_status is skipped (NOT NULL)
         f" INSERT INTO audit_log ({', '.join(COLUMNS)}) VALUES ({', '.join(target)}); END"),
        "CREATE TRIGGER audit_delete INSTEAD OF DELETE ON audit BEGIN DELETE FROM audit_log WHERE id = OLD.id; END",
    ]


def strings_step(integer_ts: bool) -> list[str]:
    """Move the audit table's rows into ``audit_log`` + ``string``, behind the view ``audit``."""
    ts = TS_MICROS.format(c="o.ts") if integer_ts else "o.ts"
    union = " UNION ".join(f"SELECT {c} FROM old_audit WHERE {c} IS NOT NULL" for c in INTERNED)
    copied = ", ".join(_id(f"o.{c}") if c in INTERNED else (ts if c == "ts" else f"o.{c}") for c in COLUMNS)
    return [
        "ALTER TABLE audit RENAME TO old_audit",
        "DROP INDEX IF EXISTS ix_audit_instance",
        "CREATE TABLE string (id INTEGER PRIMARY KEY, text VARCHAR NOT NULL UNIQUE)",
        "INSERT INTO string (id, text) VALUES " + ", ".join(f"({i}, '{w}')" for i, w in enumerate(VOCABULARY, 1)),
        f"INSERT OR IGNORE INTO string (text) SELECT * FROM ({union}) ORDER BY 1",
        AUDIT_LOG.format(ts_type="INTEGER" if integer_ts else "VARCHAR"),
        f"INSERT INTO audit_log ({', '.join(COLUMNS)}) SELECT {copied} FROM old_audit o ORDER BY o.id",
        "DROP TABLE old_audit",
        "CREATE INDEX ix_audit_instance ON audit_log (instance_id)",
        view_sql(integer_ts),
        *triggers_sql(integer_ts),
    ]


def timestamps_step() -> list[str]:
    """From text to integer microseconds, on a database that step 1 made lean (view and triggers replaced)."""
    return [
        "DROP VIEW audit",
        "ALTER TABLE audit_log RENAME TO old_log",
        "DROP INDEX IF EXISTS ix_audit_instance",
        AUDIT_LOG.format(ts_type="INTEGER"),
        (f"INSERT INTO audit_log SELECT id, {TS_MICROS.format(c='ts')}, "
         + ", ".join(COLUMNS[2:]) + " FROM old_log ORDER BY id"),
        "DROP TABLE old_log",
        "CREATE INDEX ix_audit_instance ON audit_log (instance_id)",
        view_sql(True),
        *triggers_sql(True),
    ]


INDEX_STEP = [
    "DROP INDEX IF EXISTS ix_job_status",
    "CREATE INDEX ix_job_to_submit ON job (updated_at) WHERE status = 'idle' AND batch_id IS NULL",
]
JOB_TIMES_STEP = [
    f"UPDATE job SET {c} = {TS_MICROS.format(c=c)} WHERE {c} IS NOT NULL"
    for c in ("created_at", "updated_at", "started_at", "finished_at")
]
OUTPUTS_STEP = ["UPDATE task_instance SET outputs = '{}'"]
RETRY_INDEX_STEP = [
    "DROP INDEX ix_audit_instance",
    (f"CREATE INDEX ix_audit_retry ON audit_log (instance_id, job_pk)"
     f" WHERE from_status = {VOCABULARY.index('failed') + 1} AND to_status = {VOCABULARY.index('idle') + 1}"),
]
CREATION_DETAIL_STEP = ["UPDATE audit_log SET detail = NULL WHERE from_status IS NULL AND entity = " + _id("'job'")]


@dataclass(frozen=True)
class Step:
    name: str
    sql: Sequence[str]
    #: whether queries and export output stay as they are (steps 4, 5: measured only)
    same_queries: bool = True


STEPS = (
    Step("audit strings as ids (string table, view audit)", strings_step(False)),
    Step("audit timestamps as integer microseconds", timestamps_step()),
    Step("ix_job_status replaced by a partial index of jobs to submit", INDEX_STEP),
    Step("job timestamps as integer microseconds (readers would change)", JOB_TIMES_STEP, same_queries=False),
    Step("task_instance.outputs derived when read (readers would change)", OUTPUTS_STEP, same_queries=False),
    Step("job creation fields kept once, in job.fields (readers would change)", CREATION_DETAIL_STEP,
         same_queries=False),
    Step("ix_audit_instance limited to retry rows (failed -> idle; readers would change)", RETRY_INDEX_STEP,
         same_queries=False),
)


@dataclass
class Size:
    """A database's file size and the bytes of each of its tables and indexes."""

    step: str
    file_bytes: int
    objects: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def sizes(path: str, step: str, seconds: float = 0.0) -> Size:
    with closing(sqlite3.connect(path)) as conn:
        objects = {name: int(size) for name, size in conn.execute(
            "SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC")}
    return Size(step, os.path.getsize(path), objects, seconds)


def apply(conn: sqlite3.Connection, statements: Sequence[str]) -> None:
    """One step in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for sql in statements:
            conn.execute(sql)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def measure(source: str, work: str, steps: Sequence[Step] = STEPS,
            after: Optional[Callable[[int], None]] = None) -> list[Size]:
    """Copy ``source`` to ``work``, then apply ``steps`` cumulatively: the sizes before and after each.
    ``after(i)`` runs once step ``i`` is in (the connection closed meanwhile)."""
    shutil.copyfile(source, work)
    with closing(sqlite3.connect(work, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("VACUUM")
    out = [sizes(work, "current schema")]
    for i, step in enumerate(steps):
        t0 = time.perf_counter()
        with closing(sqlite3.connect(work, isolation_level=None)) as conn:
            apply(conn, step.sql)
            conn.execute("VACUUM")
        out.append(sizes(work, step.name, time.perf_counter() - t0))
        if after is not None:
            after(i)
    return out


def _insert_audit(path: str, count: int) -> Callable[[], None]:
    """``count`` audit rows through the store's AUDIT_SQL in one transaction, rolled back (sizes unchanged)."""
    rows = [("2025-12-31T23:59:59.000001Z", 1, "job", 1, 1, "t00", 380001, j, 1, "running", "done",
             "jenkins-ecal-prompt-t00", "", "", None, None) for j in range(count)]

    def call() -> None:
        with closing(sqlite3.connect(path, isolation_level=None)) as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(AUDIT_SQL, rows)
            conn.execute("ROLLBACK")
    return call


def _insert_direct(path: str, count: int) -> Callable[[], None]:
    """The same rows as :func:`_insert_audit`, written as the lean store's hot paths would: the texts resolved to
    ids once per transaction (inserted when new), integer times, straight into ``audit_log``; rolled back."""
    texts = {"entity": "job", "task": "t00", "from_status": "running", "to_status": "done",
             "actor": "jenkins-ecal-prompt-t00", "identity": "", "reason": ""}
    micros = 1767225599000001  # 2025-12-31T23:59:59.000001Z
    columns = ", ".join(COLUMNS[1:])

    def call() -> None:
        with closing(sqlite3.connect(path, isolation_level=None)) as conn:
            conn.execute("BEGIN IMMEDIATE")
            ids = {}
            for col, text in texts.items():
                conn.execute("INSERT OR IGNORE INTO string (text) VALUES (?)", (text,))
                ids[col] = conn.execute("SELECT id FROM string WHERE text = ?", (text,)).fetchone()[0]
            conn.executemany(
                f"INSERT INTO audit_log ({columns}) VALUES ({', '.join('?' * (len(COLUMNS) - 1))})",
                [(micros, 1, ids["entity"], 1, 1, ids["task"], 380001, j, 1, ids["from_status"], ids["to_status"],
                  ids["actor"], ids["identity"], ids["reason"], None, None) for j in range(count)])
            conn.execute("ROLLBACK")
    return call


def read_costs(wide: str, lean: str) -> list[dict[str, Any]]:
    """What the view costs the readers and the writers: the same calls on the current schema and the lean copy."""
    out = []
    with closing(sqlite3.connect(wide)) as conn:
        top = int(conn.execute("SELECT MAX(id) FROM audit").fetchone()[0])
    page = (top // 2, top // 2 + 5000, 5000)
    calls: list[tuple[str, Callable[[str], Callable[[], Any]]]] = [
        ("exporter page of 5,000 audit rows (ROWS_SQL)",
         lambda p: lambda: _read(p, ROWS_SQL, page)),
        ("history(), newest 100 rows of a campaign", lambda p: lambda: _history(p)),
        ("newest audit time, 1,000 reads (every write transaction makes one)", lambda p: lambda: _newest(p, 1000)),
        ("10,000 audit rows inserted through AUDIT_SQL (one transaction)", lambda p: _insert_audit(p, 10_000)),
    ]
    for name, make in calls:
        anchor = row(f"{name}: current schema", median_ms(make(wide), 5), "ms")
        out += [anchor, row(f"{name}: lean (view audit)", median_ms(make(lean), 5), "ms", anchor)]
    out.append(row("10,000 audit rows written straight into audit_log, texts resolved once (the lean hot path)",
                   median_ms(_insert_direct(lean, 10_000), 5), "ms", out[-2]))
    return out


def _read(path: str, sql: str, params: Sequence[Any]) -> list[Any]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql, params).fetchall()


def _newest(path: str, count: int) -> None:
    with closing(sqlite3.connect(path)) as conn:
        for _ in range(count):
            conn.execute("SELECT ts FROM audit ORDER BY id DESC LIMIT 1").fetchone()


def _history(path: str) -> list[Any]:
    with Store.open(path) as store:
        return store.history("prompt", limit=100)


def run(runs: int = 2000) -> list[dict[str, Any]]:
    """Each step's size on a simulated year (``runs`` x 20 tasks x 50 jobs), and the view's read and write costs."""
    from .simulate import simulate

    with tempfile.TemporaryDirectory(prefix="ecalstate-lean-", dir=os.environ.get("ECALSTATE_BENCH_DIR")) as tmp:
        source, work = os.path.join(tmp, "year.db"), os.path.join(tmp, "lean.db")
        simulate(source, runs, 20, 50)
        costs: list[dict[str, Any]] = []
        same = sum(s.same_queries for s in STEPS)
        found = measure(source, work, after=lambda i: costs.extend(read_costs(source, work)) if i == same - 1 else None)
    label = f"simulated year ({runs:,} runs x 20 tasks x 50 jobs)"
    base = row(f"{label}, current schema", found[0].file_bytes / 2**20, "MiB")
    out = [base]
    for size, step in zip(found[1:], STEPS):
        kind = "same queries" if step.same_queries else "measured only"
        out.append(row(f"{label}, + {step.name} [{kind}]", size.file_bytes / 2**20, "MiB", base))
    out.append(row(f"{label}: target (800 MiB for 2,000 runs, in proportion)", 800 * runs / 2000, "MiB", base))
    return out + costs


def main() -> None:
    parser = argparse.ArgumentParser(description="bytes of each lean-store step on a simulated year")
    parser.add_argument("--runs", type=int, default=200, help="runs of the simulated year (a full year: 2000)")
    for r in run(parser.parse_args().runs):
        ratio = "" if r["ratio"] is None else f"  x{r['ratio']:g}"
        print(f"{r['value']:10,.1f} {r['unit']:<4} {r['name']}{ratio}")


if __name__ == "__main__":
    main()
