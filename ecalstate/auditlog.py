"""The audit's storage (schema 6): each text once, times as integers, and the view ``audit`` that hides both.

A year of audit rows repeats a few hundred texts millions of times (entity, task, statuses, actor, identity,
reason). ``audit_log`` keeps them as ids of ``string`` rows and its time as integer microseconds since 1970
(8 bytes instead of 27). The view ``audit`` gives readers the old columns, texts and time format, so every query
and the export output stay what they were. Writers insert into ``audit_log`` (``base.AUDIT_SQL``) with ids they
resolve once: a ``string`` row is never deleted, so an id seen committed can be cached for the database's life.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Optional


from .db import Tx
from .limits import chunks
from .outputs import gathered_outputs
from .results import MadeBy
from .statemachine import JobStatus, TaskStatus
from .tables import TABLES

#: texts at fixed ids 1..n, in every database: SQL (a partial index, a row-level policy) can name them
VOCABULARY: tuple[str, ...] = (
    "", "task", "job", "handler", *(s.value for s in TaskStatus),
    *(s.value for s in JobStatus if s.value not in {t.value for t in TaskStatus}), "ok", "error",
)
#: the audit's text columns, stored as ``string`` ids
INTERNED = ("entity", "task", "from_status", "to_status", "actor", "identity", "reason")
#: every column, in the order of the old table (and of the view)
COLUMNS = ("id", "ts", "campaign_id", "entity", "instance_id", "job_pk", "task", "run_number", "jid", "generation",
           "from_status", "to_status", "actor", "identity", "reason", "request_id", "detail")

#: the store's time text of an integer microsecond count ``{c}``, per engine
TS_TEXT = {
    "sqlite": "strftime('%Y-%m-%dT%H:%M:%S', {c} / 1000000, 'unixepoch') || printf('.%06dZ', {c} % 1000000)",
    "postgresql": ("to_char(timestamp '1970-01-01' + {c} * interval '1 microsecond',"
                   " 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"),
}
#: the integer microseconds of one of the store's time texts ``{c}`` (the migration's conversion), per engine
_TS_MICROS = {
    "sqlite": "(CAST(strftime('%s', substr({c}, 1, 19)) AS INTEGER) * 1000000 + CAST(substr({c}, 21, 6) AS INTEGER))",
    "postgresql": "CAST(extract(epoch FROM CAST(substr({c}, 1, 26) AS timestamp)) * 1000000 AS bigint)",
}


#: the detail of a job's creation row whose fields are still the job's own (``job.fields``): stored once; a
#: writer that changes a job's fields first copies them into the row (:data:`KEEP_CREATION_FIELDS`)
SAME_AS_JOB = "="
#: run before a job's fields change (params: its fields until now, its id), and before a job row is deleted
KEEP_CREATION_FIELDS = ("UPDATE audit_log SET detail = NULLIF(?, '{}') WHERE job_pk = ?"
                        f" AND detail = '{SAME_AS_JOB}'")


#: an audit row's detail as readers see it (``a``: the ``audit_log`` row): a creation row's fields from its job
DETAIL = (f"CASE WHEN a.detail = '{SAME_AS_JOB}' THEN (SELECT NULLIF(j.fields, '{{}}') FROM job j"
          " WHERE j.id = a.job_pk) ELSE a.detail END")


def vocab_id(text: str) -> int:
    """The fixed id of a vocabulary text (a status, an entity)."""
    return VOCABULARY.index(text) + 1


#: the rows of a job's retries (failed -> idle): its attempts are counted from them. A reader must repeat this
#: condition word for word to use the partial index of these rows (``ix_audit_retry``)
RETRY_ROWS = f"from_status = {vocab_id('failed')} AND to_status = {vocab_id('idle')}"
#: the rows of task instances (``ix_audit_task``: the last reason of an instance)
TASK_ROWS = f"entity = {vocab_id('task')}"
#: an instance's claims (which open its generations: their detail says what made each) and results
_MADE_AND_DONE = (f"SELECT instance_id, generation, to_status, detail FROM audit_log WHERE {TASK_ROWS} AND to_status IN"
                  f" ({vocab_id('processing')}, {vocab_id('done')}) AND instance_id IN ({{marks}}) ORDER BY id")


def made_and_done(tx: Tx, iids: Sequence[int]) -> tuple[dict[tuple[int, int], MadeBy], dict[int, int]]:
    """For these instances, from their audit rows (the partial index of instance rows): what made each generation
    ((instance id, generation) -> :class:`MadeBy`, as its claim recorded it; none recorded, left out), and the
    generation each was last done in (its outputs are that generation's)."""
    made: dict[tuple[int, int], MadeBy] = {}
    done: dict[int, int] = {}
    for chunk in chunks(sorted(set(iids))):
        for iid, generation, status, detail in tx.all(_MADE_AND_DONE.format(marks=",".join("?" * len(chunk))), chunk):
            if status == vocab_id("done"):
                done[iid] = generation
                continue
            found = MadeBy.from_detail(json.loads(detail)) if detail else None
            if found is not None:
                made[(iid, generation)] = found
            else:
                made.pop((iid, generation), None)
    return made, done


#: the audit's indexes: partial, of the rows their readers look for (an index of every row was a tenth of a year's
#: file, read only for these); "detail = '='" rows are found when a job's fields change
INDEXES = (
    ("ix_audit_retry", f"CREATE INDEX ix_audit_retry ON audit_log (instance_id, job_pk) WHERE {RETRY_ROWS}"),
    ("ix_audit_task", f"CREATE INDEX ix_audit_task ON audit_log (instance_id) WHERE {TASK_ROWS}"),
    ("ix_audit_job_fields", f"CREATE INDEX ix_audit_job_fields ON audit_log (job_pk) WHERE detail = '{SAME_AS_JOB}'"),
)


def _engine(tx: Tx) -> str:
    return "sqlite" if tx.is_sqlite else "postgresql"


def _text_of(column: str) -> str:
    return f"(SELECT s.text FROM string s WHERE s.id = a.{column})"


def _match(tx: Tx, value: str) -> str:
    """The condition finding ``value`` in ``string`` through its unique index (PostgreSQL's indexes a digest)."""
    return f"s.text = {value}" if tx.is_sqlite else f"md5(s.text) = md5({value}) AND s.text = {value}"


def view_sql(tx: Tx) -> str:
    """The view ``audit``: the old table's columns, in its order, with texts and text times."""
    columns = []
    for col in COLUMNS:
        if col in INTERNED:
            columns.append(f"{_text_of(col)} AS {col}")
        elif col == "ts":
            columns.append(TS_TEXT[_engine(tx)].format(c="a.ts") + " AS ts")
        elif col == "detail":
            columns.append(f"{DETAIL} AS detail")
        else:
            columns.append(f"a.{col} AS {col}")
    return f"CREATE VIEW audit AS SELECT {', '.join(columns)} FROM audit_log a"


def install(tx: Tx) -> None:
    """What ``create_all`` cannot make: the unique index of ``string``, the vocabulary at its ids, the view, the
    audit's partial indexes."""
    key = "text" if tx.is_sqlite else "md5(text)"
    for name, sql in (("ux_string_text", f"CREATE UNIQUE INDEX ux_string_text ON string ({key})"), *INDEXES,
                      ("audit", view_sql(tx))):
        if not tx.exists(name):
            tx.run(sql)
    present = {r[0] for r in tx.all("SELECT id FROM string WHERE id <= ?", (len(VOCABULARY),))}
    missing = [(i, text) for i, text in enumerate(VOCABULARY, 1) if i not in present]
    if missing:
        tx.many("INSERT INTO string (id, text) VALUES (?, ?)", missing)
        if not tx.is_sqlite:  # explicit ids do not move the serial column's sequence
            tx.run("SELECT setval(pg_get_serial_sequence('string', 'id'), (SELECT MAX(id) FROM string))")


def text_id(tx: Tx, text: str, known: dict[str, int], learned: dict[str, int]) -> int:
    """The id of ``text`` in ``string``, inserted when new.

    ``known``: ids seen committed (the database's cache); ``learned``: ids this transaction found or made, which
    join ``known`` only once it commits (an id made by a transaction that rolls back may go to another text).
    """
    found = known.get(text) or learned.get(text)
    if found is not None:
        return found
    row = tx.one(f"SELECT s.id FROM string s WHERE {_match(tx, '?')}", (text,) if tx.is_sqlite else (text, text))
    if row is None:
        conflict = "" if tx.is_sqlite else " ON CONFLICT DO NOTHING"  # SQLite: the write lock is ours alone
        row = tx.one(f"INSERT INTO string (text) VALUES (?){conflict} RETURNING id", (text,))
        if row is None:  # PostgreSQL: another transaction committed the same text meanwhile
            row = tx.one(f"SELECT s.id FROM string s WHERE {_match(tx, '?')}", (text, text))
    learned[text] = int(row[0])
    return learned[text]


def texts_of(tx: Tx, ids: set[int], known: dict[int, str]) -> dict[int, str]:
    """``known`` (a cache of id -> text, kept by the caller: an id's text never changes) with ``ids`` added."""
    missing = sorted(i for i in ids if i not in known)
    for chunk in chunks(missing):
        known.update(tx.all(f"SELECT id, text FROM string WHERE id IN ({','.join('?' * len(chunk))})", chunk))
    return known


def high_water(tx: Tx) -> int:
    """The newest audit id below which every row is committed (where the exporter may read up to).

    SQLite has one writer at a time, so committed ids always form a prefix. PostgreSQL hands out ids before
    commit: the transactions inserting audit rows right now are waited for, after which every id up to the
    maximum is either committed or never will be. With ``ecalstate db roles`` a function does it without any
    lock (a reader may not lock the table, and must not hold writers up); without, a share lock for this
    transaction's short life."""
    if not tx.is_sqlite:
        if tx.scalar("SELECT to_regprocedure('ecalstate_audit_high_water()') IS NOT NULL"):
            return int(tx.scalar("SELECT ecalstate_audit_high_water()"))
        tx.run("LOCK TABLE audit_log IN SHARE MODE")
    return int(tx.scalar("SELECT MAX(id) FROM audit_log") or 0)


def vocabulary_ids() -> dict[str, int]:
    """The cache a database starts with: the fixed vocabulary."""
    return {text: i for i, text in enumerate(VOCABULARY, 1)}


# --------------------------------------------------------------------------------------------- migration


def _sequence_of(tx: Tx, table: str) -> Optional[int]:
    """The last id handed out for ``table`` (AUTOINCREMENT's or the serial sequence's), None when none was."""
    if tx.is_sqlite:
        value = tx.scalar("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,))
        return None if value is None else int(value)
    name = tx.scalar("SELECT pg_get_serial_sequence(?, 'id')", (table,))
    row = tx.one(f"SELECT last_value, is_called FROM {name}")
    return int(row[0]) if row[1] else None


def _set_sequence(tx: Tx, table: str, value: int) -> None:
    if tx.is_sqlite:
        if tx.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = ?", (value, table)) == 0:
            tx.run("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, value))
    else:
        tx.run("SELECT setval(pg_get_serial_sequence(?, 'id'), ?)", (table, value))


def migrate(tx: Tx) -> None:
    """Schema 5 -> 6: the wide ``audit`` table becomes ``audit_log`` + ``string`` behind the view ``audit``.

    Ids are kept, and so is the id sequence (AUTOINCREMENT never hands out an id again, even of pruned rows):
    export and notification cursors stay valid. One transaction: a failure leaves version 5 untouched.
    """
    _job_times(tx)
    tx.run("ALTER TABLE audit RENAME TO audit_v5")
    tx.run("DROP INDEX IF EXISTS ix_audit_instance")  # index names are global: the new table's takes it
    for table in ("string", "audit_log"):
        tx.create_table(TABLES[table])
    install(tx)
    union = " UNION ".join(f"SELECT {c} AS t FROM audit_v5 WHERE {c} IS NOT NULL" for c in INTERNED)
    tx.run(f"INSERT INTO string (text) SELECT t FROM ({union}) u WHERE t NOT IN (SELECT text FROM string) ORDER BY t")
    copied = []
    for col in COLUMNS:
        if col in INTERNED:
            copied.append(f"(SELECT s.id FROM string s WHERE {_match(tx, 'o.' + col)})")
        elif col == "ts":
            copied.append(_TS_MICROS[_engine(tx)].format(c="o.ts"))
        else:
            copied.append(f"o.{col}")
    tx.run(f"INSERT INTO audit_log ({', '.join(COLUMNS)}) SELECT {', '.join(copied)} FROM audit_v5 o ORDER BY o.id")
    last = _sequence_of(tx, "audit_v5")
    top = tx.scalar("SELECT MAX(id) FROM audit_log")
    if last is not None or top is not None:
        _set_sequence(tx, "audit_log", max(last or 0, int(top or 0)))
    tx.run("DROP TABLE audit_v5")
    # a job's creation fields, kept in its creation row and in the job, are kept once while the job has them
    tx.run(f"UPDATE audit_log SET detail = '{SAME_AS_JOB}' WHERE from_status IS NULL AND entity = {vocab_id('job')}"
           " AND detail IS NOT NULL AND detail = (SELECT j.fields FROM job j WHERE j.id = audit_log.job_pk)")
    tx.run("DROP INDEX IF EXISTS ix_job_status")  # read by nothing: health and stages start from the instances
    _derive_outputs(tx)


#: the job columns that become integer microseconds
_JOB_TIMES = ("created_at", "updated_at", "started_at", "finished_at")


def _job_times(tx: Tx) -> None:
    """``job``'s four times from text to integer microseconds (PostgreSQL in place; SQLite, whose column types
    decide what a value becomes, by a new table: ids kept)."""
    micros = _TS_MICROS[_engine(tx)]
    if not tx.is_sqlite:
        for col in _JOB_TIMES:
            tx.run(f"ALTER TABLE job ALTER COLUMN {col} TYPE bigint USING {micros.format(c=col)}")
        return
    columns = [c[1] for c in tx.all("PRAGMA table_info(job)")]
    tx.run("ALTER TABLE job RENAME TO job_v5")
    tx.create_table(TABLES["job"])
    values = [micros.format(c=c) if c in _JOB_TIMES else c for c in columns]
    tx.run(f"INSERT INTO job ({', '.join(columns)}) SELECT {', '.join(values)} FROM job_v5 ORDER BY id")
    tx.run("DROP TABLE job_v5")


def _derive_outputs(tx: Tx) -> None:
    """Done instances whose outputs are what their jobs give read them from the jobs from now on ('')."""
    done = tx.all("SELECT id, generation, outputs FROM task_instance WHERE status = 'done' AND outputs <> ''")
    same = [(iid,) for iid, gen, text in done if text == gathered_outputs(tx, iid, gen)]
    tx.many("UPDATE task_instance SET outputs = '' WHERE id = ?", same)
