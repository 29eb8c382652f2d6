"""Engine, connections and transactions: the one place that knows a SQLite file from a PostgreSQL server.

Hot paths run plain parameterised SQL through :class:`Tx`. On SQLite every connection gets WAL,
``synchronous=NORMAL``, a 10 s busy timeout and foreign keys, and every write transaction starts with
``BEGIN IMMEDIATE`` so that the reads deciding a write see the state the write lands on. Any SQLAlchemy URL
works; PostgreSQL is the multi-host engine. The tables are :mod:`ecalstate.tables`; creating, installing and
upgrading them is :mod:`ecalstate.schema`.
"""

from __future__ import annotations

import logging
import os
import select
import sqlite3
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any, NoReturn, Optional, Protocol

from sqlalchemy import Table, event, exc
from sqlalchemy.engine import URL, Connection, Dialect, Engine, make_url
from sqlalchemy.schema import CreateIndex, CreateTable
from sqlmodel import create_engine

from .dialect import SQLITE, dialect_of
from .errors import EcalStateError, NotFound, SchemaError
from .limits import int64_range
from .paths import Mount, network_mount
from .secrets import check_private_path, read_secret_file, redact_url, url_secret_refusal


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
        #: what this engine can do, and its SQL for it (:mod:`ecalstate.dialect`)
        self.sql = dialect_of(dialect.name)
        self.is_sqlite = self.sql is SQLITE
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
        return self.sql.lock(alias)

    def skip_locked(self, alias: str) -> str:
        """Row-lock clause of a claim: the rows another claimer holds are left to it, not waited for."""
        return self.sql.skip_locked(alias)

    def lock_rows(self, table: str, ids: Sequence[int]) -> None:
        """Lock rows of ``table`` by id until commit (in id order), where rows are locked at all."""
        sql = self.sql.lock_rows_sql(table, len(ids))
        if sql and ids:
            self.all(sql, sorted(ids))

    def session_role(self) -> Optional[str]:
        """The role the server authenticated for this session (None where there are no roles)."""
        return self.scalar("SELECT session_user") if self.sql.roles else None

    def serialize(self, scope: str, key: object = "") -> None:
        """Wait for, then hold until commit, the lock named (``scope``, ``key``).

        For a read-then-insert where no row exists yet to lock: PostgreSQL transactions taking the
        same name run one after the other (a transaction-level advisory lock; its next statement
        sees what the previous holder committed). SQLite write transactions always do.
        """
        sql = self.sql.serialize_sql()
        if sql:
            self.run(sql, (scope, str(key)))

    def run(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        """Run a statement on a cursor of its own, and give it: its rows stay readable while others run."""
        cursor = self._dbapi_conn.cursor()
        cursor.execute(self._fmt(sql), tuple(params))
        return cursor

    def exists(self, name: str) -> bool:
        """Whether a table, view, index or (PostgreSQL) function ``name`` exists, in the main schema on SQLite, the
        search path elsewhere. What is there is never made again, so that a role that owns nothing (a writer
        running ``ecalstate init``) finds nothing to do instead of a refusal."""
        sql = self.sql.exists_sql()
        return bool(self.scalar(sql, (name,) * sql.count("?")))

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


_READS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_TRANSACTION,
          getattr(sqlite3, "SQLITE_RECURSIVE", 33)}
#: pragmas that only read, with the table they name (SQLAlchemy's table checks)
_READ_PRAGMAS = {"table_info", "table_xinfo", "index_list", "index_info", "foreign_key_list"}


def _authorize(action: int, arg1: Optional[str], arg2: Optional[str], *_: Optional[str]) -> int:
    if action in _READS or (action == sqlite3.SQLITE_PRAGMA and arg1 in _READ_PRAGMAS):
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def _reads_only(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.set_authorizer(_authorize)


@dataclass(frozen=True)
class DiskUsage:
    """Bytes a database takes (SQLite: its file, WAL and free pages; PostgreSQL: the database and each table)."""

    engine: str
    size_bytes: int
    wal_bytes: Optional[int] = None
    free_bytes: Optional[int] = None
    table_bytes: dict[str, int] = field(default_factory=dict)


class Database:
    """An engine plus the transaction discipline.

    SQLite transactions run on driver connections kept per thread (opened through the engine, with its
    set-up; never shared by threads, never used by a forked child nor after :meth:`close`), with BEGIN and
    COMMIT issued by hand: SQLAlchemy's pool checkout, begin and commit cost more than a transition's SQL.
    """

    def __init__(
        self, url: str, create: bool = False, allow_network_fs: bool = False, read_only: bool = False,
    ) -> None:
        """Connect to ``url`` (nothing is read yet): ``create`` may make a missing SQLite file, ``read_only``
        never changes the database (see :func:`_read_only_connection`; writes are refused). The schema is
        :mod:`ecalstate.schema`'s: open through :func:`ecalstate.schema.open_database` to have it checked."""
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
            raise DatabaseError(f"cannot use database URL {redact_url(self.url)}: {first_line(err)}") from None
        self.is_sqlite = path is not None
        #: what this engine can do, and its SQL for it (:mod:`ecalstate.dialect`)
        self.sql = dialect_of(self.engine.dialect.name)
        #: per thread, its idle connections (SQLite files; other engines go through SQLAlchemy's pool)
        self._local: Optional[threading.local] = None if path in (None, ":memory:") else threading.local()
        self._idle_lists: weakref.WeakSet[_Idle] = weakref.WeakSet()  # a thread's goes when the thread ends
        self._idle_lists_lock = threading.Lock()
        self._closes = 0

    def forbid_writes(self) -> None:
        """Make this process unable to write through a read-only database, beyond opening it so: on SQLite an
        authorizer on every connection refuses any statement but a read (no PRAGMA can lift it, unlike
        ``query_only``); PostgreSQL sessions of a read-only database start with ``default_transaction_read_only``."""
        if self.is_sqlite:
            event.listen(self.engine, "connect", _reads_only)
            self.close()  # connections opened before the guard are not reused

    def disk_usage(self, tables: Sequence[str]) -> DiskUsage:
        """What the database takes on disk; on PostgreSQL also each of ``tables`` (with its indexes)."""
        path = sqlite_path(self.url)
        with self.tx(write=False) as tx:
            if path is not None:
                free = int(tx.scalar("PRAGMA freelist_count")) * int(tx.scalar("PRAGMA page_size"))
            else:
                size = int(tx.scalar("SELECT pg_database_size(current_database())"))
                table_bytes = {n: int(tx.scalar("SELECT pg_total_relation_size(?::regclass)", (n,))) for n in tables}
        if path is None:
            return DiskUsage("postgresql", size, table_bytes=table_bytes)
        wal = path + "-wal"
        return DiskUsage("sqlite", os.path.getsize(path), os.path.getsize(wal) if os.path.exists(wal) else 0, free)

    def vacuum(self) -> None:
        """Give the space of deleted rows back to the file system. VACUUM cannot run inside a transaction, so it
        goes through the driver connection in autocommit mode; on SQLite the WAL is checkpointed and truncated
        as well."""
        raw = self.engine.raw_connection()
        try:
            conn: Any = raw.driver_connection
            if self.is_sqlite:
                conn.execute("VACUUM")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            else:
                conn.rollback()
                conn.autocommit = True
                try:
                    conn.execute("VACUUM")
                finally:
                    conn.autocommit = False
        finally:
            raw.close()

    def use_wal(self) -> None:
        """Switch a SQLite file to WAL (it stays so; other engines: nothing to do), once it is known to be ours
        (:func:`ecalstate.schema.open_database`): another program's file, an empty or a damaged one stays as it
        was."""
        if self._local is None or self.read_only:
            return
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
            return DatabaseError(f"a number is out of range for {redact_url(self.url)}: expected {int64_range()}")
        return None

    def _error(self, err: BaseException) -> DatabaseError:
        """A driver error as one line; a damaged file or one that is not a database is named so."""
        name = getattr(err, "sqlite_errorname", "")
        text = first_line(err)
        if isinstance(err, UnicodeDecodeError) or name in ("SQLITE_CORRUPT", "SQLITE_NOTADB") \
                or text.startswith("malformed database schema"):
            detail = "its schema is not readable text" if isinstance(err, UnicodeDecodeError) else text
            return DatabaseError(f"database {redact_url(self.url)} is damaged or not a database: {detail}")
        return DatabaseError(f"database error on {redact_url(self.url)}: {text}")

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
            raise SchemaError(f"{redact_url(self.url)} has an unreadable schema version {str(value)[:40]!r}: not an "
                              "ecalstate database, or a damaged one") from None

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


def first_line(err: object) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
