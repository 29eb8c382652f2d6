"""``Database.tx`` on real SQLite files: rollback, per-thread and per-process connections, close, errors.

SQLite transactions run on a driver connection kept per thread (and per process): these tests hold that
connection to what the pooled one gave (the same PRAGMAs, clean rollback, one-line errors), and check that no
connection crosses a thread, a fork or a ``close()``. A TEMP table marks a connection: only it can see it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

from ecalstate.db import Database, DatabaseError
from ecalstate.schema import open_database

MARKS = "SELECT COUNT(*) FROM sqlite_temp_master WHERE name = 'mark'"


@pytest.fixture
def db(tmp_path: Path) -> Any:
    database = open_database(str(tmp_path / "state.db"), create=True)
    yield database
    database.close()


def meta(db: Database, key: str) -> Any:
    with db.tx(write=False) as tx:
        return tx.scalar("SELECT value FROM meta WHERE key = ?", (key,))


def mark(db: Database) -> None:
    """Mark the calling thread's connection (a TEMP table lives in its connection only)."""
    with db.tx() as tx:
        tx.script("CREATE TEMP TABLE mark (x)")


def marked(db: Database) -> int:
    with db.tx(write=False) as tx:
        return int(tx.scalar(MARKS))


def in_thread(body: Callable[[], Any]) -> Any:
    got: list[Any] = []
    worker = threading.Thread(target=lambda: got.append(body()))
    worker.start()
    worker.join(30)
    return got[0]


def fd_targets() -> list[str]:
    folder = "/proc/self/fd"
    targets = []
    for name in os.listdir(folder):
        try:
            targets.append(os.readlink(os.path.join(folder, name)))
        except OSError:  # the listing's own descriptor, closed meanwhile
            pass
    return targets


def test_a_transaction_ended_inside_by_the_driver_leaves_cleanly(db: Database) -> None:
    """Rolled back at the driver inside the block (or by SQLite itself after some errors): nothing to commit, no
    error at the end, nothing written, and the connection serves the next transaction."""
    mark(db)
    with db.tx() as tx:
        tx.execute("INSERT INTO meta (key, value) VALUES ('k', 'v')")
        tx.conn.rollback()
    assert meta(db, "k") is None
    assert marked(db) == 1


@pytest.mark.parametrize("ending", ["commit", "error"])
def test_a_kept_connection_holds_no_read_open(db: Database, tmp_path: Path, ending: str) -> None:
    """A read that fetched one row of several, its transaction over (committed, or ended by an error): the
    thread's connection, kept for the next transaction, must not keep that statement's snapshot, or no checkpoint
    of the file could finish (its -wal would grow for as long as the process lives)."""
    with db.tx() as tx:
        tx.many("INSERT INTO meta (key, value) VALUES (?, 'v')", [(f"k{i}",) for i in range(5)])
    with pytest.raises(ValueError) if ending == "error" else contextlib.nullcontext():
        with db.tx(write=False) as tx:
            assert tx.one("SELECT key FROM meta ORDER BY key") == ("k0",)
            if ending == "error":
                raise ValueError("the caller's own error")
    del tx
    other = sqlite3.connect(tmp_path / "state.db")
    try:
        other.execute("INSERT INTO meta (key, value) VALUES ('x', 'y')")
        other.commit()
        busy, _, _ = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        other.close()
    assert busy == 0
    assert os.path.getsize(tmp_path / "state.db-wal") == 0


@pytest.mark.parametrize("error", [ValueError("boom"), KeyboardInterrupt()], ids=["exception", "keyboard-interrupt"])
def test_a_transaction_that_raises_writes_nothing_and_the_error_goes_on(db: Database, error: BaseException) -> None:
    mark(db)
    with pytest.raises(type(error)):
        with db.tx() as tx:
            tx.execute("INSERT INTO meta (key, value) VALUES ('k', 'v')")
            raise error
    assert meta(db, "k") is None
    assert marked(db) == 1  # rolled back, the thread's connection is kept
    with db.tx() as tx:  # and usable: no transaction was left open on it
        tx.execute("INSERT INTO meta (key, value) VALUES ('k', 'w')")
    assert meta(db, "k") == "w"


def test_a_commit_the_database_refuses_is_one_clean_error_and_writes_nothing(db: Database) -> None:
    """The body went through but COMMIT fails (a deferred foreign key): rolled back, one line, the connection kept
    clean; a database error in the body is one line too."""
    mark(db)
    with pytest.raises(DatabaseError, match="FOREIGN KEY constraint failed$"):
        with db.tx() as tx:
            tx.script("PRAGMA defer_foreign_keys=ON")
            tx.execute("INSERT INTO meta (key, value) VALUES ('k', 'v')")
            tx.execute("INSERT INTO task (campaign_id, name, max_retries, created_at) VALUES (999, 't', 1, 'x')")
    with pytest.raises(DatabaseError, match="UNIQUE constraint failed: meta.key$"):
        with db.tx() as tx:
            tx.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '0')")
    assert meta(db, "k") is None and marked(db) == 1
    with db.tx() as tx:
        tx.execute("INSERT INTO meta (key, value) VALUES ('k', 'w')")
    assert meta(db, "k") == "w"


def test_every_connection_gets_the_store_discipline(db: Database) -> None:
    def pragmas() -> tuple[Any, ...]:
        with db.tx(write=False) as tx:
            tx.scalar("SELECT COUNT(*) FROM meta")  # a connection opened before the switch to WAL sees it here
            return tuple(tx.scalar(f"PRAGMA {p}") for p in ("busy_timeout", "foreign_keys", "synchronous",
                                                              "journal_mode"))

    expected = (10000, 1, 1, "wal")  # synchronous 1 is NORMAL
    assert pragmas() == expected
    assert in_thread(pragmas) == expected


def test_each_thread_has_its_own_connection_and_keeps_it(db: Database) -> None:
    mark(db)
    assert marked(db) == 1  # the main thread's next transaction: the same connection
    assert in_thread(lambda: marked(db)) == 0  # another thread: not the main thread's connection
    assert in_thread(lambda: (mark(db), marked(db))[1]) == 1
    assert marked(db) == 1


def test_a_read_inside_a_write_on_one_thread_sees_the_last_commit(db: Database) -> None:
    """What nesting did with the pool (a second connection), it still does."""
    with db.tx() as outer:
        outer.execute("INSERT INTO meta (key, value) VALUES ('k', 'v')")
        with db.tx(write=False) as inner:
            assert inner.scalar("SELECT COUNT(*) FROM meta WHERE key = 'k'") == 0
    assert meta(db, "k") == "v"


def test_close_closes_every_threads_connection_and_the_path_can_be_made_anew(db: Database, tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    with db.tx() as tx:
        tx.execute("INSERT INTO meta (key, value) VALUES ('old', '1')")
    release = threading.Event()
    used = threading.Event()

    def idle_user() -> None:  # a thread that used the database and still lives
        meta(db, "old")
        used.set()
        release.wait(30)

    worker = threading.Thread(target=idle_user)
    worker.start()
    try:
        used.wait(30)
        db.close()
        assert not [t for t in fd_targets() if t.startswith(path)]
    finally:
        release.set()
        worker.join(30)
    for name in (path, path + "-wal", path + "-shm"):
        if os.path.exists(name):
            os.remove(name)
    open_database(path, create=True).close()
    assert meta(db, "old") is None  # the new file, not the one deleted under an open connection
    with db.tx() as tx:
        tx.execute("INSERT INTO meta (key, value) VALUES ('new', '1')")
    assert Database(path).schema_version() is not None and meta(db, "new") == "1"


def child_marks(db: Database, out: Any) -> None:
    out.put(marked(db))


def test_a_forked_child_opens_its_own_connection(db: Database) -> None:
    mark(db)
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    child = context.Process(target=child_marks, args=(db, out))
    child.start()
    got = out.get(timeout=60)
    child.join(60)
    assert got == 0 and child.exitcode == 0
    assert marked(db) == 1  # the parent's connection lives on


def increment(db: Database, times: int) -> None:
    """``times`` compare-and-set increments of meta 'n' through the Database the parent made (inherited)."""
    for _ in range(times):
        with db.tx() as tx:
            value = tx.scalar("SELECT value FROM meta WHERE key = 'n'")
            changed = tx.execute("UPDATE meta SET value = ? WHERE key = 'n' AND value = ?",
                                 (str(int(value) + 1), value))
            if changed != 1:
                raise SystemExit(f"lost the compare-and-set at {value}")
    db.close()


def test_forked_writers_lose_no_update(db: Database) -> None:
    with db.tx() as tx:
        tx.execute("INSERT INTO meta (key, value) VALUES ('n', '0')")
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=increment, args=(db, 200)) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(300)
    assert [w.exitcode for w in workers] == [0] * 8
    assert meta(db, "n") == str(8 * 200)


def test_a_lock_held_beyond_the_busy_timeout_is_one_line(db: Database, tmp_path: Path) -> None:
    with db.tx(write=False) as tx:
        tx.execute("PRAGMA busy_timeout=200")  # this thread's connection, for the rest of the test
    holder = sqlite3.connect(str(tmp_path / "state.db"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(DatabaseError) as caught:
            with db.tx() as tx:
                tx.execute("INSERT INTO meta (key, value) VALUES ('k', 'v')")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert "database is locked" in str(caught.value) and "\n" not in str(caught.value)
    with db.tx() as tx:  # the lock is gone: the same connection writes
        tx.execute("INSERT INTO meta (key, value) VALUES ('k', 'v')")
    assert meta(db, "k") == "v"


def test_errors_of_a_read_only_database_and_of_bad_numbers_are_one_line(db: Database, tmp_path: Path) -> None:
    reader = Database(str(tmp_path / "state.db"), read_only=True)
    try:
        with pytest.raises(DatabaseError, match="readonly database") as caught:
            with reader.tx() as tx:
                tx.execute("INSERT INTO meta (key, value) VALUES ('k', 'v')")
        assert "\n" not in str(caught.value)
        with pytest.raises(DatabaseError, match="out of range"):
            with reader.tx(write=False) as tx:
                tx.scalar("SELECT ?", (2**70,))
        assert reader.schema_version() is not None  # the reader's connection is still usable
    finally:
        reader.close()
    assert meta(db, "k") is None


def test_run_gives_the_cursor_with_its_columns_and_row_count(db_url: str) -> None:
    """One interface on both engines: the driver's cursor."""
    db = open_database(db_url, create=True)
    with db.tx() as tx:
        assert tx.run("INSERT INTO meta (key, value) VALUES (?, ?)", ("k", "v")).rowcount == 1
        cursor = tx.run("SELECT key, value FROM meta WHERE key = ?", ("k",))
        assert [d[0] for d in cursor.description] == ["key", "value"]
        assert tx.scalar("SELECT COUNT(*) FROM meta") >= 2  # another statement meanwhile
        assert cursor.fetchall() == [("k", "v")]
        assert tx.exists("meta") and not tx.exists("no_such_table")
    db.close()
