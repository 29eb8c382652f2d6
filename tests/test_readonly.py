"""Reads never change a file: read commands and ``Store.open(read_only=True)``.

A read leaves the database byte-identical, switches no file to WAL, writes no header into an
empty file and leaves no -wal/-shm where there were none. It works on a read-only folder
(a read-only bind mount, which root cannot write through either) and for another Unix user
who may read but not write the file and its folder (a shifter reading the service's database).
"""

from __future__ import annotations

import os
import pwd
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cli_support import build_chain, invoke, process
from servers_plugin import skip_or_fail

from ecalstate import Store
from ecalstate.db import DatabaseError

#: every command that only reads, with what its output must show
READS = [
    pytest.param(["status", "-c", "prompt"], "campaign prompt: 4 runs x 3 tasks", id="status"),
    pytest.param(["run", "list", "-c", "prompt", "--task", "reco"], "failed", id="run-list"),
    pytest.param(["job", "list", "-c", "prompt", "--task", "reco"], "done", id="job-list"),
    pytest.param(["history", "-c", "prompt", "--run", "3"], "failed", id="history"),
    pytest.param(["health", "-c", "prompt"], "blocked", id="health"),
    pytest.param(["task", "list", "-c", "prompt"], "calib", id="task-list"),
    pytest.param(["campaign", "list"], "prompt", id="campaign-list"),
    pytest.param(["rtype", "list", "-c", "prompt"], "reco,calib,plots", id="rtype-list"),
    pytest.param(["db", "stats"], "task_instance", id="db-stats"),
]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> str:
    """reco: run 1 done, 3 failed (so calib run 3 is blocked), 2 and 4 processing; WAL mode, checkpointed."""
    db = str(tmp_path_factory.mktemp("template") / "state.db")
    build_chain(db)
    process(db, "reco", done=[1], failed=[3])
    return db


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of the folder with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def journal_mode(db: str) -> str:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        conn.close()


def check_read(db: str, args: list[str], expect: str) -> None:
    result = invoke(db, *args)
    assert result.exit_code in (0, 1) and expect in result.stdout, (result.exit_code, result.stdout, result.stderr)
    assert "Error" not in result.stderr, result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


@pytest.mark.parametrize(("args", "expect"), READS)
def test_a_read_leaves_the_folder_byte_identical(template: str, tmp_path: Path, args: list[str], expect: str) -> None:
    db = str(tmp_path / "state.db")
    shutil.copy(template, db)
    before = snapshot(tmp_path)

    check_read(db, args, expect)

    assert snapshot(tmp_path) == before  # no -wal/-shm left, the database unchanged


@pytest.mark.parametrize(("args", "expect"), READS)
def test_a_read_keeps_a_rollback_journal_database_out_of_wal(
    template: str, tmp_path: Path, args: list[str], expect: str
) -> None:
    db = str(tmp_path / "state.db")
    shutil.copy(template, db)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()
    before = snapshot(tmp_path)

    check_read(db, args, expect)

    assert journal_mode(db) == "delete"
    assert snapshot(tmp_path) == before


def test_a_write_still_puts_an_ecalstate_database_in_wal(template: str, tmp_path: Path) -> None:
    db = str(tmp_path / "state.db")
    shutil.copy(template, db)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()

    result = invoke(db, "set", "-c", "prompt", "--task", "reco", "--runs", "2", "done", "--reason", "checked")

    assert result.exit_code == 0, result.stderr
    assert journal_mode(db) == "wal"


def test_the_read_only_store_refuses_writes_and_changes_nothing(template: str, tmp_path: Path) -> None:
    db = str(tmp_path / "state.db")
    shutil.copy(template, db)
    before = snapshot(tmp_path)

    with Store.open(db, read_only=True) as store:
        assert [c.name for c in store.list_campaigns()] == ["prompt"]
        with pytest.raises(DatabaseError, match="attempt to write a readonly database"):
            store.create_campaign("other")
        with pytest.raises(DatabaseError, match="readonly"):
            store.set_status("prompt", "reco", [2], "done", "x")

    assert snapshot(tmp_path) == before


def test_a_read_only_store_cannot_be_created(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot be created"):
        Store.open(str(tmp_path / "new.db"), create=True, read_only=True)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def read_only_folder(template: str, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(the writable folder with the database, the same folder bind-mounted read-only)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        skip_or_fail("a read-only bind mount needs root")
    source, view = tmp_path / "src", tmp_path / "ro"
    source.mkdir()
    view.mkdir()
    shutil.copy(template, source / "state.db")
    done = subprocess.run(["mount", "--bind", "-o", "ro", str(source), str(view)], capture_output=True, text=True)
    if done.returncode != 0:
        skip_or_fail(f"cannot bind-mount read-only here: {done.stderr.strip()}")
    try:
        yield source, view
    finally:
        subprocess.run(["umount", str(view)], check=True)


@pytest.mark.parametrize(("args", "expect"), READS)
def test_reads_work_in_a_read_only_folder(read_only_folder: tuple[Path, Path], args: list[str], expect: str) -> None:
    source, view = read_only_folder
    before = snapshot(source)

    check_read(str(view / "state.db"), args, expect)

    assert snapshot(source) == before


def test_a_read_only_folder_sees_what_a_live_writer_committed(read_only_folder: tuple[Path, Path]) -> None:
    """While the service holds the database open (its -wal and -shm exist), a reader through the read-only
    folder sees the latest commit, still in the WAL, not the older main file."""
    source, view = read_only_folder
    with Store.open(str(source / "state.db"), actor="service") as service:
        service.set_status("prompt", "reco", [2], "done", "checked")
        with service.db.engine.connect() as held:  # the service is running: its connection keeps the WAL
            held.exec_driver_sql("SELECT 1").fetchall()
            assert (source / "state.db-wal").exists()
            with Store.open(str(view / "state.db"), read_only=True) as reader:
                assert reader.list_runs("prompt", "reco", "done")[-1]["run_number"] == 2

            result = invoke(str(view / "state.db"), "run", "list", "-c", "prompt", "--task", "reco", "--status", "done")
            assert result.exit_code == 0 and "\n2 " in result.stdout, result.stdout


def run_as(user: str, body: Callable[[], str]) -> str:
    """``body()`` in a forked child running as ``user`` (no exec: the venv in root's home is not theirs to run)."""
    account = pwd.getpwnam(user)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        os.close(read_end)
        try:
            os.setgroups([])
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
            out = body()
        except BaseException as err:  # everything the child meets is the test's result
            out = f"{type(err).__name__}: {err}"
        os.write(write_end, out.encode())
        os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()


@pytest.fixture
def service_folder() -> Iterator[Path]:
    """A folder another user can reach (pytest's own temp folders are private to root), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="ecalstate-service-"))
    os.chmod(folder, 0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


@pytest.mark.parametrize("live_writer", [False, True], ids=["idle-service", "service-writing"])
def test_another_user_reads_a_database_they_cannot_write(
    template: str, service_folder: Path, other_user: str, live_writer: bool
) -> None:
    """A shifter (another Unix account) may read the file and its folder but write neither."""
    folder = service_folder
    db = str(folder / "state.db")
    shutil.copy(template, db)
    os.chmod(db, 0o644)
    with Store.open(db, read_only=True) as warm:  # the child cannot import from root's home: load everything now
        warm.overview("prompt")

    def shifter_reads() -> str:
        writable = os.access(db, os.W_OK) or os.access(folder, os.W_OK)
        with Store.open(db, read_only=True) as store:
            rows = store.overview("prompt").rows
            try:
                store.create_campaign("mine")
                wrote = "wrote"
            except DatabaseError as err:
                wrote = str(err)
        return f"writable={writable} rows={len(rows)} {wrote}"

    if live_writer:
        with Store.open(db, actor="service") as service:
            service.set_status("prompt", "reco", [2], "done", "checked")
            with service.db.engine.connect() as held:
                held.exec_driver_sql("SELECT 1").fetchall()
                os.chmod(db + "-shm", 0o644)  # as SQLite gives it the database's mode
                os.chmod(db + "-wal", 0o644)
                outcome = run_as(other_user, shifter_reads)
    else:
        before = snapshot(folder)
        outcome = run_as(other_user, shifter_reads)
        assert snapshot(folder) == before

    assert outcome.startswith("writable=False rows=4 "), outcome
    assert "readonly database" in outcome, outcome


def test_a_crashed_writers_log_without_its_index_is_one_clear_line(read_only_folder: tuple[Path, Path]) -> None:
    """A writer killed with commits still in its -wal, and its -shm gone: a reader who cannot create the -shm
    cannot see those commits, and says so instead of showing the older state."""
    source, view = read_only_folder
    crash = ("import os, sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None);"
             " c.execute('PRAGMA wal_autocheckpoint=0'); c.execute(\"UPDATE campaign SET description = 'late'\");"
             " os._exit(0)")
    subprocess.run([sys.executable, "-c", crash, str(source / "state.db")], check=True)
    (source / "state.db-shm").unlink()
    before = snapshot(source)

    result = invoke(str(view / "state.db"), "campaign", "list")

    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"Error: cannot read {view}/state.db read-only: its write-ahead log {view}/state.db-wal has no shared-memory"
        " file (-shm) and this user cannot create one; opening it once with write access recovers it"]
    assert snapshot(source) == before
