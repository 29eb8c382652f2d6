"""Tables, engine and transactions.

SQLModel declares the schema; hot paths run plain parameterised SQL through
:class:`Tx`. On SQLite every connection gets WAL, ``synchronous=NORMAL``, a
10 s busy timeout and foreign keys, and every write transaction starts with
``BEGIN IMMEDIATE`` so that the reads deciding a write see the state the write
lands on. Any SQLAlchemy URL works; PostgreSQL is the multi-host engine.
"""

from __future__ import annotations

import logging
import os
import re
import select
import sqlite3
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timedelta, timezone
from functools import lru_cache, partial
from typing import Any, NoReturn, Optional, Protocol

from sqlalchemy import BigInteger, Column, Index, Integer, Table, UniqueConstraint, event, exc
from sqlalchemy.engine import URL, Connection, Dialect, Engine, make_url
from sqlalchemy.schema import CreateIndex, CreateTable
from sqlmodel import Field, SQLModel, create_engine

from .errors import EcalStateError, NotFound, SchemaError
from .limits import int64_range
from .paths import Mount, network_mount
from .secrets import check_private_path, read_secret_file, redact_url, url_secret_refusal

#: bumped with every schema change; ``ecalstate.migrations`` knows how to reach it
SCHEMA_VERSION = 7


#: the one text format of every timestamp column (UTC, microseconds): its text order is its time order
TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_STORE_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\Z")


#: the last time :func:`to_micros` converted, and its value: a write converts its one time more than once
_last_converted = ("", 0)
#: the second :func:`utcnow` last formatted, and its text
_clock_second = (-1, "")


def utcnow() -> str:
    """UTC time with microseconds, in the one text format every table uses. Every write transaction reads it:
    a second's text is made once and the microseconds appended (a fifth of ``isoformat``'s cost), and
    :func:`to_micros` is told the value, which the transaction asks next."""
    global _clock_second, _last_converted
    micros = time.time_ns() // 1000
    second, fraction = divmod(micros, 1_000_000)
    made, prefix = _clock_second  # tuples read and replaced whole: safe between threads
    if second != made:
        prefix = datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        _clock_second = (second, prefix)
    text = f"{prefix}.{fraction:06d}Z"
    _last_converted = (text, micros)
    return text


_EPOCH = datetime(1970, 1, 1)
_MICROSECOND = timedelta(microseconds=1)


def to_micros(ts: str) -> int:
    """Integer microseconds since 1970 of a time in the store's format (``2026-12-01T05:00:00.000001Z``): how the
    big tables (``audit_log``, ``job``) keep their times, 8 bytes instead of 27. (``fromisoformat``: 30 times
    ``strptime``'s speed, and every write transaction converts its time.)"""
    global _last_converted
    last, value = _last_converted  # one tuple, read and replaced whole: safe between threads
    if ts == last:
        return value
    if not _STORE_TIME.match(ts):
        raise ValueError(f"not a time in the store's format: {ts!r}")
    value = (datetime.fromisoformat(ts[:-1]) - _EPOCH) // _MICROSECOND
    _last_converted = (ts, value)
    return value


def from_micros(micros: int) -> str:
    """The store's time text of integer microseconds since 1970."""
    seconds, rest = divmod(micros, 1_000_000)
    return datetime.fromtimestamp(seconds, timezone.utc).replace(microsecond=rest).strftime(TS_FORMAT)


def optional_text(micros: Optional[int]) -> Optional[str]:
    return None if micros is None else from_micros(micros)


class Meta(SQLModel, table=True):
    __tablename__ = "meta"
    key: str = Field(primary_key=True)
    value: str


class Campaign(SQLModel, table=True):
    __tablename__ = "campaign"
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(unique=True)
    kind: str = "prompt"
    description: str = ""
    settings: str = Field(default="{}", sa_column_kwargs={"server_default": "{}"})
    created_at: str


class Task(SQLModel, table=True):
    __tablename__ = "task"
    __table_args__ = (UniqueConstraint("campaign_id", "name"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    campaign_id: int = Field(foreign_key="campaign.id")
    name: str
    max_retries: int = 3
    created_at: str


class TaskDep(SQLModel, table=True):
    __tablename__ = "task_dep"
    task_id: int = Field(foreign_key="task.id", primary_key=True)
    depends_on_id: int = Field(foreign_key="task.id", primary_key=True)


class RunType(SQLModel, table=True):
    __tablename__ = "rtype"
    __table_args__ = (UniqueConstraint("campaign_id", "name"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    campaign_id: int = Field(foreign_key="campaign.id")
    name: str
    filter: str = ""


class RunTypeTask(SQLModel, table=True):
    __tablename__ = "rtype_task"
    rtype_id: int = Field(foreign_key="rtype.id", primary_key=True)
    task_id: int = Field(foreign_key="task.id", primary_key=True)


class Run(SQLModel, table=True):
    __tablename__ = "run"
    __table_args__ = (UniqueConstraint("campaign_id", "run_number"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    campaign_id: int = Field(foreign_key="campaign.id")
    run_number: int
    fill: Optional[int] = None
    meta: str = "{}"
    rtypes: str = ""
    #: the run types the exporter tags the run's points with, kept when a backfill changes ``rtypes`` (NULL:
    #: ``rtypes`` never changed): a series is defined by its tags, which must not change once exported
    tag_rtypes: Optional[str] = None
    injected_at: str


class TaskInstance(SQLModel, table=True):
    __tablename__ = "task_instance"
    __table_args__ = (
        UniqueConstraint("task_id", "run_id"),
        Index("ix_ti_campaign_task_status", "campaign_id", "task_id", "status"),
        Index("ix_ti_run", "run_id"),
    )
    id: Optional[int] = Field(default=None, primary_key=True)
    campaign_id: int = Field(foreign_key="campaign.id")
    task_id: int = Field(foreign_key="task.id")
    run_id: int = Field(foreign_key="run.id")
    status: str
    version: int = 1
    generation: int = 0
    leader_id: Optional[int] = Field(default=None, foreign_key="task_instance.id")
    #: the jobs' output fields gathered when the instance is done; ``''``: those of its current generation's jobs,
    #: read when asked (``jobs.instance_outputs``) instead of a copy of every path (schema 6)
    outputs: str = "{}"
    created_at: str
    updated_at: str


def _micros_column(nullable: bool = False) -> Any:
    return Field(default=None, sa_column=Column(BigInteger, nullable=nullable))


class Job(SQLModel, table=True):
    __tablename__ = "job"
    __table_args__ = (
        UniqueConstraint("instance_id", "generation", "jid"),
    )
    id: Optional[int] = Field(default=None, primary_key=True)
    instance_id: int = Field(foreign_key="task_instance.id")
    generation: int
    jid: int
    status: str
    version: int = 1
    attempts: int = 1
    batch_id: Optional[str] = None
    fields: str = "{}"
    #: times as integer microseconds since 1970 (schema 6: two million jobs a year); readers convert them
    created_at: int = _micros_column()
    updated_at: int = _micros_column()
    started_at: Optional[int] = _micros_column(nullable=True)
    finished_at: Optional[int] = _micros_column(nullable=True)


class AuditLog(SQLModel, table=True):
    """One row per accepted transition (and per handler heartbeat); its id is the export cursor.

    Lean (schema 6): the repeated texts are ids of :class:`String` rows and the time is integer microseconds
    since 1970 (UTC). Readers use the view ``audit`` (``ecalstate.auditlog``), which gives the texts and the
    store's time format back; writers insert here through ``base.AUDIT_SQL``, with ids they resolved (no foreign
    keys to ``string``: seven lookups per row would cost more than the row, and ``string`` rows are never deleted).
    """

    __tablename__ = "audit_log"
    #: its indexes are partial ones, of the rows their readers look for (``auditlog.install``)
    __table_args__ = ({"sqlite_autoincrement": True},)
    id: Optional[int] = Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    ts: int = _micros_column()
    campaign_id: int = Field(foreign_key="campaign.id")
    entity: int
    instance_id: Optional[int] = None
    job_pk: Optional[int] = None
    task: int
    run_number: Optional[int] = None
    jid: Optional[int] = None
    generation: Optional[int] = None
    from_status: Optional[int] = None
    to_status: int
    actor: int
    #: who really acted, as authenticated (OS user@host, Jenkins' build tag, PostgreSQL role); ``actor`` is a label
    identity: int
    reason: int
    request_id: Optional[str] = None
    detail: Optional[str] = None


class String(SQLModel, table=True):
    """The audit's texts, each once: entities, statuses, task names, actors, identities, reasons.

    Never deleted (an id, once committed, means its text for ever), so ids can be cached by writers. The unique
    index is the engine's own (``ecalstate.auditlog``): PostgreSQL indexes a digest, a reason may be long.
    """

    __tablename__ = "string"
    id: Optional[int] = Field(default=None, primary_key=True)
    text: str


class Request(SQLModel, table=True):
    """Outcome of a mutating call made with a request id: a replay returns it unchanged."""

    __tablename__ = "request"
    request_id: str = Field(primary_key=True)
    kind: str
    outcome: str
    created_at: str


class ExportCursor(SQLModel, table=True):
    __tablename__ = "export_cursor"
    target: str = Field(primary_key=True)
    audit_id: int = 0
    updated_at: str


class Heartbeat(SQLModel, table=True):
    __tablename__ = "heartbeat"
    campaign_id: int = Field(foreign_key="campaign.id", primary_key=True)
    task: str = Field(primary_key=True)
    stage: str = Field(primary_key=True)
    last_at: str
    actor: str
    ok: bool = True
    message: str = ""


class RunSourceCursor(SQLModel, table=True):
    """Where a run source (OMS, a file) left off for a campaign: a re-sync reads on from here."""

    __tablename__ = "run_source"
    campaign_id: int = Field(foreign_key="campaign.id", primary_key=True)
    source: str = Field(primary_key=True)
    last_run: int = 0
    updated_at: str


class FillEnd(SQLModel, table=True):
    """A fill known to have ended (a later fill started, the source saw the beam dump, or an operator closed it):
    grouping by fill waits for this before it treats a fill's runs as complete."""

    __tablename__ = "fill_end"
    campaign_id: int = Field(foreign_key="campaign.id", primary_key=True)
    fill: int = Field(primary_key=True)
    ended_at: str
    reason: str
    actor: str


class DatabaseError(EcalStateError):
    """The database refused an operation (locked, read-only, unreachable, corrupt)."""


def normalise_url(db: str) -> str:
    """A plain path becomes an absolute ``sqlite:///`` URL; URLs pass unchanged."""
    if "://" in db:
        return db
    return "sqlite:///" + os.path.abspath(os.path.expanduser(db))


def sqlite_path(url: str) -> Optional[str]:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    return parsed.database or ":memory:"


def _on_sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")  # a setting of this connection; WAL is set once the schema is known
    cur.close()


def _on_sqlite_begin(conn: Connection) -> None:
    immediate = conn.get_execution_options().get("ecal_write", False)
    conn.connection.dbapi_connection.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")  # type: ignore[union-attr]


def _read_only_connection(path: str) -> sqlite3.Connection:
    """A connection that never changes the file at ``path``, nor leaves files beside it that were not there.

    No -wal file (no writer active): when the file and its folder are writable, a read-write connection with
    ``query_only`` (SQLite removes the -wal/-shm it made when it closes; a ``mode=ro`` one would leave them).
    Otherwise ``mode=ro``; a WAL database in a folder the reader cannot write, with no -shm to share, cannot be
    opened that way, and is read as ``immutable`` (no locks: safe while no writer starts during the read).
    """
    uri = "file:" + urllib.parse.quote(path)
    folder = os.path.dirname(path) or "."
    if not os.path.exists(path + "-wal") and os.access(path, os.W_OK) and os.access(folder, os.W_OK):
        conn = sqlite3.connect(uri + "?mode=rw", uri=True, timeout=10, check_same_thread=False)
        conn.execute("PRAGMA query_only=ON")
        return conn
    conn = sqlite3.connect(uri + "?mode=ro", uri=True, timeout=10, check_same_thread=False)
    try:
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError as err:
        conn.close()
        # a read-only file system says CANTOPEN, a folder the user cannot write READONLY_CANTINIT
        if not getattr(err, "sqlite_errorname", "").startswith(("SQLITE_CANTOPEN", "SQLITE_READONLY")):
            raise
        if os.path.exists(path + "-wal"):  # commits in the log that only its shared-memory index makes readable
            raise DatabaseError(f"cannot read {path} read-only: its write-ahead log {path}-wal has no shared-memory "
                                "file (-shm) and this user cannot create one; opening it once with write access "
                                "recovers it") from None
        conn = sqlite3.connect(uri + "?mode=ro&immutable=1", uri=True, timeout=10, check_same_thread=False)
    return conn


def make_engine(url: str, password: Optional[str] = None, read_only: bool = False) -> Engine:
    """An engine with the SQLite discipline applied (or a plain one for other engines).

    ``read_only``: SQLite connections from :func:`_read_only_connection`; PostgreSQL sessions that refuse writes.

    The password (``password``, else :func:`configured_password`) joins the URL only inside the engine: it is
    never part of a text that could be printed. Without one, libpq reads its own password file, which must then
    be private (:func:`libpq_password_file`).
    """
    path = sqlite_path(url)
    if path is not None:
        if read_only and path != ":memory:":
            engine = create_engine(url, creator=partial(_read_only_connection, path))
        else:
            engine = create_engine(url, connect_args={"timeout": 10})
        event.listen(engine, "connect", _on_sqlite_connect)
        event.listen(engine, "begin", _on_sqlite_begin)
        return engine
    target = make_url(url)
    secret = password if password is not None else configured_password()
    if secret is not None:
        target = target.set(password=secret)
    elif target.get_backend_name() == "postgresql" and not os.environ.get("PGPASSWORD"):
        check_private_path(libpq_password_file(target), "the PostgreSQL password file")
    if read_only and target.get_backend_name() == "postgresql":
        engine = create_engine(target, connect_args={"options": "-c default_transaction_read_only=on"})
    else:
        engine = create_engine(target)
    event.listen(engine, "checkout", partial(_ping_if_doubtful, engine.dialect))
    event.listen(engine, "checkin", _checked_in)
    return engine


#: seconds a pooled server connection may rest before it is pinged at its next use (a network cut leaves no
#: trace on the socket); one in steady use is pinged only when its socket has something to read (a server that
#: closed it, restarted or terminated its backend, has sent the end of the stream): a ping is a round trip per
#: transaction, 1 of about 9 of a job transition on PostgreSQL
PING_IDLE_AFTER = 10.0


def _checked_in(_dbapi_conn: Any, record: Any) -> None:
    record.info["ecal_idle_since"] = time.monotonic()


def _ping_if_doubtful(dialect: Any, dbapi_conn: Any, record: Any, _proxy: Any) -> None:
    """SQLAlchemy's pre-ping, for connections that rested or whose server spoke unasked: a dead one is replaced
    (the pool retries the checkout with a new connection)."""
    since = record.info.get("ecal_idle_since")
    if since is None:  # new: just connected
        return
    fileno = getattr(dbapi_conn, "fileno", None)
    rested = time.monotonic() - since >= PING_IDLE_AFTER
    if not rested and fileno is not None and not select.select([fileno()], [], [], 0)[0]:
        return
    try:
        dialect.do_ping(dbapi_conn)
    except dialect.loaded_dbapi.Error as err:
        raise exc.DisconnectionError(first_line(err)) from err


#: where a database password comes from (never the command line): a file, else a variable, else the driver's own
#: sources (libpq reads ``~/.pgpass``, ``PGPASSFILE``, ``PGPASSWORD`` and service files by itself)
PASSWORD_FILE_ENV = "ECALSTATE_DB_PASSWORD_FILE"
PASSWORD_ENV = "ECALSTATE_DB_PASSWORD"


def configured_password() -> Optional[str]:
    """The password from ``ECALSTATE_DB_PASSWORD_FILE`` (first line; a file only its owner may read) or
    ``ECALSTATE_DB_PASSWORD``; None: the driver's own sources."""
    path = os.environ.get(PASSWORD_FILE_ENV, "").strip()
    if path:
        return read_secret_file(path, f"the database password file ({PASSWORD_FILE_ENV})")
    return os.environ.get(PASSWORD_ENV) or None


def libpq_password_file(url: URL) -> str:
    """The password file libpq reads for ``url`` when it is given no password: ``passfile``, ``PGPASSFILE`` or
    ``~/.pgpass``."""
    given = url.query.get("passfile")
    return str(given if isinstance(given, str) else os.environ.get("PGPASSFILE") or "~/.pgpass")


def _as_written(sql: str) -> str:
    return sql


@lru_cache(maxsize=4096)
def _to_format_style(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


def _execute_converted(cursor: Any, sql: str, params: Sequence[Any]) -> Any:
    cursor.execute(_to_format_style(sql), tuple(params))
    return cursor


class Cursor(Protocol):
    """What :meth:`Tx.run` gives on every engine: the driver's DB-API cursor."""

    @property
    def rowcount(self) -> int: ...

    @property
    def description(self) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Tx:
    """One transaction on one connection: plain SQL with ``?`` placeholders on every engine.

    Every statement goes straight to the driver's cursor (rows are plain tuples): the hot paths run several
    statements per transition, and SQLAlchemy's per-statement result machinery cost more than the statements
    themselves. ``conn`` is the connection under the transaction: the driver's own on SQLite, SQLAlchemy's on
    other engines; code that works on both uses the methods here.
    """

    def __init__(self, conn: Any, dbapi_conn: Any, dialect: Dialect, write: bool) -> None:
        self.conn = conn
        self.write = write
        self.dialect = dialect
        self.is_sqlite = dialect.name == "sqlite"
        self._fmt = _as_written if dialect.paramstyle == "qmark" else _to_format_style
        self._dbapi_conn = dbapi_conn
        self._new_cursor()

    def _new_cursor(self) -> None:
        self._cursor = self._dbapi_conn.cursor()
        #: run a statement on the transaction's cursor, and give the cursor: the driver's own ``execute`` where the
        #: SQL is written for it (SQLite), else through the placeholder conversion
        self._cursor_for: Callable[[str, Sequence[Any]], Any] = (
            self._cursor.execute if self._fmt is _as_written else partial(_execute_converted, self._cursor))

    def release(self) -> None:
        """Let go of the last statement, whose unread rows would keep a SQLite read snapshot open on a connection
        kept for the next transaction (no checkpoint could then finish: the -wal would grow as long as the
        process lives)."""
        self._cursor.close()
        self._new_cursor()

    def close(self) -> None:
        """Close the cursor, then the connection (a SQLite file's, kept with its :class:`Tx` by its thread): a
        statement the cursor still holds (a failed one an error's traceback keeps alive) would leave the file's
        connection open, its -wal and -shm files behind, until the garbage collector finds it."""
        self._cursor.close()
        self._dbapi_conn.close()

    def lock(self, alias: str) -> str:
        """Row-lock clause for reads that decide a write: none on SQLite (the transaction holds the lock)."""
        return "" if self.is_sqlite else f" FOR UPDATE OF {alias}"

    def serialize(self, scope: str, key: object = "") -> None:
        """Wait for, then hold until commit, the lock named (``scope``, ``key``).

        For a read-then-insert where no row exists yet to lock: PostgreSQL transactions taking the
        same name run one after the other (a transaction-level advisory lock; its next statement
        sees what the previous holder committed). SQLite write transactions always do.
        """
        if not self.is_sqlite:
            self.run("SELECT pg_advisory_xact_lock(hashtext(?), hashtext(?))", (scope, str(key)))

    def run(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        """Run a statement on a cursor of its own, and give it: its rows stay readable while others run."""
        cursor = self._dbapi_conn.cursor()
        cursor.execute(self._fmt(sql), tuple(params))
        return cursor

    def exists(self, name: str) -> bool:
        """Whether a table, view, index or (PostgreSQL) function ``name`` exists, in the main schema on SQLite, the
        search path elsewhere. What is there is never made again, so that a role that owns nothing (a writer
        running ``ecalstate init``) finds nothing to do instead of a refusal."""
        if self.is_sqlite:
            return self.scalar("SELECT COUNT(*) FROM sqlite_master WHERE name = ?", (name,)) > 0
        return bool(self.scalar("SELECT to_regclass(?) IS NOT NULL OR to_regproc(?) IS NOT NULL", (name, name)))

    def create_table(self, table: Table) -> None:
        """Create ``table`` and its indexes, in this transaction, unless it exists (a migration step's DDL)."""
        if self.exists(table.name):
            return
        self._cursor.execute(str(CreateTable(table).compile(dialect=self.dialect)))
        for index in table.indexes:
            self._cursor.execute(str(CreateIndex(index).compile(dialect=self.dialect)))

    def script(self, sql: str) -> None:
        """Several statements without parameters, in this transaction (DDL and grants)."""
        self._cursor.execute(sql)

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        """``executemany``; the number of rows it changed (-1 when the driver cannot tell)."""
        if not rows:
            return 0
        self._cursor.executemany(self._fmt(sql), [tuple(r) for r in rows])
        return int(self._cursor.rowcount)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a write; the number of rows it changed (for compare-and-set)."""
        return int(self._cursor_for(sql, params).rowcount)

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Every row, as the driver's plain tuples."""
        return list(self._cursor_for(sql, params).fetchall())

    #: reads of 100,000s of rows: plain tuples, no Row objects (what :meth:`all` gives too)
    tuples = all

    def one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._cursor_for(sql, params).fetchone()

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self._cursor_for(sql, params).fetchone()
        return None if row is None else row[0]


class _FileTx:
    """:meth:`Database.tx` on a SQLite file: the thread's connection, BEGIN and COMMIT issued by hand. A class
    rather than a generator: a job transition is tens of microseconds, and two generator-based context managers
    cost several of them."""

    __slots__ = ("db", "write", "tx")

    def __init__(self, db: Database, write: bool) -> None:
        self.db = db
        self.write = write

    def __enter__(self) -> Tx:
        db = self.db
        try:
            tx = self.tx = db._checkout()
            try:
                tx._cursor.execute("BEGIN IMMEDIATE" if self.write else "BEGIN")
            except BaseException:
                db._checkin(tx)
                raise
        except Exception as err:
            db._raise_clean(err)
        tx.write = self.write
        return tx

    def __exit__(self, kind: Optional[type[BaseException]], err: Optional[BaseException], trace: Any) -> None:
        db, tx = self.db, self.tx
        raw = tx._dbapi_conn
        try:
            if err is None and raw.in_transaction:
                try:
                    # on the transaction's cursor, which resets its last statement first: unread rows of it would
                    # keep a read snapshot open on the kept connection (see Tx.release)
                    tx._cursor.execute("COMMIT")
                except BaseException:
                    tx.release()
                    raw.rollback()
                    raise
            else:
                # an error (KeyboardInterrupt too: nothing of it is written), or a transaction already ended inside
                # (the driver's rollback; SQLite's own after some errors): nothing to commit
                tx.release()
                raw.rollback()
        except Exception as failed:  # the commit's or the rollback's own error
            db._raise_clean(failed)
        finally:
            db._checkin(tx)  # a connection still in a transaction (its rollback failed) is closed, not reused
        if isinstance(err, Exception):  # the body's: a database error leaves as a clean one, anything else as it is
            db._raise_clean(err)


#: how many times this process is a fork's child: a connection opened before a fork is never used after it
_forks = 0


def _forked() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_forked)


class _Idle:
    """A thread's idle SQLite connections of one :class:`Database` (each in the :class:`Tx` that runs its
    transactions, made once with its cursor), and the (fork, count of :meth:`Database.close` calls) they
    belong to."""

    __slots__ = ("conns", "owner", "__weakref__")

    def __init__(self, owner: tuple[int, int]) -> None:
        self.conns: list[Tx] = []
        self.owner = owner


class Database:
    """An engine plus the transaction discipline; opens, creates and version-checks the schema.

    SQLite transactions run on driver connections kept per thread (opened through the engine, with its
    set-up; never shared by threads, never used by a forked child nor after :meth:`close`), with BEGIN and
    COMMIT issued by hand: SQLAlchemy's pool checkout, begin and commit cost more than a transition's SQL.
    """

    def __init__(
        self, url: str, create: bool = False, check_version: bool = True, allow_network_fs: bool = False,
        read_only: bool = False,
    ) -> None:
        """``read_only``: never change the database (see :func:`_read_only_connection`); writes are refused."""
        self.url = normalise_url(url)
        if read_only and create:
            raise ValueError("a read-only database cannot be created")
        self.read_only = read_only
        #: ids of the audit's texts seen committed (``ecalstate.auditlog``; a text's id never changes)
        self.audit_texts: dict[str, int] = {}
        #: and the other way round, for readers of ``audit_log`` (the exporter)
        self.audit_strings: dict[int, str] = {}
        refusal = url_secret_refusal(self.url)  # the password lives in the engine only, never in ``url``
        if refusal is not None:
            raise DatabaseError(refusal)
        try:
            path = sqlite_path(self.url)
            if path is not None and path != ":memory:":
                check_sqlite_path(path, create, allow_network_fs, given=None if "://" in url else url)
            self.engine = make_engine(self.url, None, read_only)
        except (exc.ArgumentError, ValueError, ImportError) as err:  # bad URL, unknown dialect, missing driver
            raise DatabaseError(f"cannot use database URL {redact(self.url)}: {first_line(err)}") from None
        self.is_sqlite = path is not None
        #: per thread, its idle connections (SQLite files; other engines go through SQLAlchemy's pool)
        self._local: Optional[threading.local] = None if path in (None, ":memory:") else threading.local()
        self._idle_lists: weakref.WeakSet[_Idle] = weakref.WeakSet()  # a thread's goes when the thread ends
        self._idle_lists_lock = threading.Lock()
        self._closes = 0
        if create:
            self.create_schema()
        elif check_version:
            self.check_schema()
        if self.is_sqlite and not read_only and path != ":memory:":
            self._use_wal()

    def _use_wal(self) -> None:
        """Switch the file to WAL (it stays so), only once it is known to be ours: another program's file,
        an empty or a damaged one is refused above unchanged."""
        tx = self._checkout()  # the connection this thread's transactions use: it knows the mode at once
        raw = tx.conn
        try:
            if raw.execute("PRAGMA journal_mode").fetchone()[0] != "wal":  # outside a transaction, as it must
                raw.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as err:
            if getattr(err, "sqlite_errorname", "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
                return  # another process holds the file: the next open switches it, writes work meanwhile
            raise self._error(err) from err
        finally:
            self._checkin(tx)

    def close(self) -> None:
        """Close every connection (every thread's SQLite ones too): the file may then be removed or replaced.
        The database stays usable: a later transaction opens a new connection; the text ids it cached were the
        old file's, so they go too."""
        self._closes += 1
        self.audit_texts.clear()
        self.audit_strings.clear()
        with self._idle_lists_lock:
            idles = list(self._idle_lists)
        for idle in idles:
            while idle.conns:
                idle.conns.pop().close()
        self.engine.dispose()

    def _checkout(self) -> Tx:
        """An idle connection of this thread, else a new one (set up by the engine, then out of its pool)."""
        local: Any = self._local
        owner = (_forks, self._closes)
        idle = getattr(local, "idle", None)
        if idle is None or idle.owner != owner:  # new thread, forked child or closed since: none to reuse
            idle = local.idle = _Idle(owner)
            with self._idle_lists_lock:
                self._idle_lists.add(idle)
        if idle.conns:
            return idle.conns.pop()
        pooled = self.engine.raw_connection()
        conn: sqlite3.Connection = pooled.driver_connection  # type: ignore[assignment]
        pooled.detach()
        return Tx(conn, conn, self.engine.dialect, True)

    def _checkin(self, tx: Tx) -> None:
        local: Any = self._local
        idle = local.idle
        conn = tx._dbapi_conn
        if conn.in_transaction or idle.owner != (_forks, self._closes):  # a failed rollback, or closed
            tx.close()
        else:
            idle.conns.append(tx)

    def tx(self, write: bool = True) -> AbstractContextManager[Tx]:
        """A transaction: ``BEGIN IMMEDIATE`` when writing on SQLite; database errors become clean ones.

        A transaction opened inside another on the same thread runs on a connection of its own (as with a pool).
        """
        return _FileTx(self, write) if self._local is not None else self._pooled_tx(write)

    @contextmanager
    def _pooled_tx(self, write: bool) -> Iterator[Tx]:
        """:meth:`tx` through SQLAlchemy's pool (PostgreSQL, and SQLite's ``:memory:``)."""
        with self._clean_errors():
            with self.engine.connect() as conn:
                if write:
                    conn.execution_options(ecal_write=True)
                with conn.begin():
                    yield Tx(conn, conn.connection.dbapi_connection, self.engine.dialect, write)

    @contextmanager
    def statement(self) -> Iterator[Tx]:
        """A pooled PostgreSQL connection in autocommit: each statement is its own transaction, one round trip (the
        one-statement job transition, ``ecalstate.pgjobs``). The driver's connection, without SQLAlchemy's
        Connection around it: a third of the call's time on a quiet machine went to it."""
        with self._clean_errors():
            raw = self.engine.raw_connection()  # the pool's checkout: a doubtful connection is pinged first
            try:
                driver: Any = raw.driver_connection
                driver.autocommit = True
                try:
                    yield Tx(raw, driver, self.engine.dialect, True)
                finally:
                    if not driver.closed:
                        driver.autocommit = False
            except self.engine.dialect.loaded_dbapi.Error as err:
                if self.engine.dialect.is_disconnect(err, raw, None):
                    raw.invalidate(err)  # never handed out again
                raise
            finally:
                raw.close()  # back to the pool

    @contextmanager
    def _clean_errors(self) -> Iterator[None]:
        """Database errors raised inside, by SQLAlchemy or the driver, as one clean :class:`DatabaseError`."""
        try:
            yield
        except Exception as err:
            self._raise_clean(err)

    def _raise_clean(self, err: Exception) -> NoReturn:
        """Raise the clean error of a database error (:meth:`_clean`), anything else as it is."""
        clean = self._clean(err)
        if clean is None:
            raise err
        raise clean from err

    def _clean(self, err: BaseException) -> Optional[DatabaseError]:
        """The clean error of a database error (None: not one, raise it as it is)."""
        if isinstance(err, exc.DBAPIError):
            return self._error(err.orig or err)
        if isinstance(err, self.engine.dialect.loaded_dbapi.Error):  # raised through Tx's driver cursor
            return self._error(err)
        if isinstance(err, UnicodeDecodeError) and self.is_sqlite:  # SQLite's own message quotes garbled schema text
            return self._error(err)
        if isinstance(err, OverflowError):  # a library caller passed an integer beyond 64 bits
            return DatabaseError(f"a number is out of range for {redact(self.url)}: expected {int64_range()}")
        return None

    def _error(self, err: BaseException) -> DatabaseError:
        """A driver error as one line; a damaged file or one that is not a database is named so."""
        name = getattr(err, "sqlite_errorname", "")
        text = first_line(err)
        if isinstance(err, UnicodeDecodeError) or name in ("SQLITE_CORRUPT", "SQLITE_NOTADB") \
                or text.startswith("malformed database schema"):
            detail = "its schema is not readable text" if isinstance(err, UnicodeDecodeError) else text
            return DatabaseError(f"database {redact(self.url)} is damaged or not a database: {detail}")
        return DatabaseError(f"database error on {redact(self.url)}: {text}")

    def create_schema(self) -> None:
        """Create the tables of a new database, or upgrade an older one (``ecalstate init`` is idempotent).

        A SQLite file without a schema version gets the tables only when it holds nothing that is not ours (a new
        or empty file, or an ``init`` cut short): another program's database is refused, unchanged."""
        found = self.schema_version()
        if found is None and self.is_sqlite:
            self._refuse_foreign()
        if found is not None and found < SCHEMA_VERSION:
            from .migrations import upgrade

            upgrade(self)
        try:
            SQLModel.metadata.create_all(self.engine)
        except exc.DBAPIError as err:
            raise DatabaseError(f"cannot create the schema in {redact(self.url)}: {first_line(err.orig)}") from err
        from .auditlog import install

        with self.tx() as tx:
            install(tx)
            found = tx.scalar("SELECT value FROM meta WHERE key = 'schema_version'")
            if found is None:
                tx.run("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        self.check_schema()

    def _refuse_foreign(self) -> None:
        """Refuse a SQLite file that holds tables or views of another program."""
        ours = {*SQLModel.metadata.tables, "audit"}  # the view ``audit`` over ``audit_log`` (ecalstate.auditlog)
        with self.tx(write=False) as tx:
            names = [r[0] for r in tx.all("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')"
                                          " AND name NOT LIKE 'sqlite!_%' ESCAPE '!' ORDER BY name")]
        foreign = [n for n in names if n not in ours]
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise SchemaError(f"{sqlite_path(self.url)} is another program's database (it holds {shown}): ecalstate "
                              "adds its tables only to a new file, an empty one or its own; give another --db")

    def schema_version(self) -> Optional[int]:
        """The stored version; None when there is no ``meta`` table (an unreachable database raises)."""
        with self.tx(write=False) as tx:
            if not tx.exists("meta"):
                return None
            value = tx.scalar("SELECT value FROM meta WHERE key = 'schema_version'")
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            raise SchemaError(f"{redact(self.url)} has an unreadable schema version {str(value)[:40]!r}: not an "
                              "ecalstate database, or a damaged one") from None

    def check_schema(self) -> None:
        version = self.schema_version()
        if version is None:
            raise SchemaError(f"{redact(self.url)} holds no ecalstate schema; create it with `ecalstate init`")
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"{redact(self.url)} has schema version {version}, newer than this ecalstate "
                f"(knows up to {SCHEMA_VERSION}); upgrade ecalstate"
            )
        if version < SCHEMA_VERSION:
            raise SchemaError(
                f"{redact(self.url)} has schema version {version}; run `ecalstate db upgrade` first"
            )


def check_sqlite_path(path: str, create: bool, allow_network_fs: bool = False, given: Optional[str] = None) -> None:
    """Refuse what SQLite cannot use safely, before it creates anything: a network or FUSE mount among them.

    ``given``: the path as the caller spelled it (``./ecalstate.db``), for messages."""
    if os.path.isdir(path):
        raise DatabaseError(f"{path} is a directory, not a database file")
    new = not os.path.exists(path)
    if new:
        parent = os.path.dirname(path) or "."
        if not create:
            raise NotFound(no_database(given or path))
        if not os.path.isdir(parent):
            raise DatabaseError(f"cannot create {path}: folder {parent} does not exist")
        if not os.access(parent, os.W_OK):
            raise DatabaseError(f"cannot create {path}: folder {parent} is not writable")
    mount = network_mount(path)
    if mount is not None:
        refuse_network_fs(path, mount, allow_network_fs)
    if new:
        create_private_file(path)


def no_database(given: str, source: str = "") -> str:
    """Where a database was looked for and not found, and what to do: name the right one first (a forgotten
    ``ECALSTATE_DB`` must not lead to an empty store in the current folder), create one only then."""
    path = os.path.abspath(os.path.expanduser(given))
    where = "; ".join(p for p in ("" if path == given else f"that is {path}", source) if p)
    return (f"no database at {given}" + (f" ({where})" if where else "")
            + ": name yours with --db or ECALSTATE_DB, or create a new one there with `ecalstate init`")


def refuse_network_fs(path: str, mount: Mount, allow_network_fs: bool) -> None:
    """Refuse a SQLite file on a network or FUSE mount, unless allowed (then warn)."""
    where = f"{path} is on {mount.network_kind} ({mount.fstype} mounted at {mount.mount_point})"
    if not allow_network_fs:
        raise DatabaseError(
            f"{where}: SQLite needs a local disk (several hosts writing one file corrupt it); share the state "
            "through PostgreSQL (--db postgresql+psycopg://USER@HOST/DBNAME) or use a local path "
            "(--allow-network-fs overrides, at your own risk)"
        )
    logging.getLogger("ecalstate").warning("warning: %s; SQLite used anyway (--allow-network-fs): "
                                           "never write it from more than one host", where)


#: environment variable naming the Unix group that may also read and write a new SQLite database (mode 0660)
DB_GROUP_ENV = "ECALSTATE_DB_GROUP"


def create_private_file(path: str) -> None:
    """Create an empty SQLite file readable by its owner only (0600), or by a configured group (0660), whatever
    the umask. SQLite gives its -wal and -shm files the database file's mode, so they stay private too."""
    group = os.environ.get(DB_GROUP_ENV, "").strip()
    gid = None
    if group:
        import grp

        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise DatabaseError(f"{DB_GROUP_ENV}={group}: no such group") from None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # created meanwhile by another process: its mode stands
        return
    except OSError as err:
        raise DatabaseError(f"cannot create {path}: {err.strerror}") from None
    try:
        if gid is not None:
            os.fchown(fd, -1, gid)
        os.fchmod(fd, 0o660 if gid is not None else 0o600)
    finally:
        os.close(fd)


#: the URL for messages and logs (one redaction for every URL: :func:`ecalstate.secrets.redact_url`)
redact = redact_url


def first_line(err: object) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
