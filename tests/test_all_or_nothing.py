"""Files the store writes beside the database agree with it, whatever happens (issue 20, item 7).

* ``init`` adds its tables only to a new, an empty or an ecalstate SQLite file, never to another program's;
* a file export that fails part-way (a real full disk) or is killed (SIGKILL, a real process) between its write
  and its cursor's commit never leaves lines the next export writes again, nor loses any;
* ``db prune --archive`` killed at every point between its archive write and its commit never duplicates
  (nor loses) an archived row;
* every number of ``ecalstate export`` has a documented upper bound.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import invoke, ok
from test_export import make_campaign

from ecalstate import Store
from ecalstate.appendfile import batch, settle
from ecalstate.clock import utcnow
from ecalstate.db import Database
from ecalstate.errors import EcalStateError
from ecalstate.export import ExportError, FileTarget, RetryPolicy, export
from ecalstate.limits import MAX_EXPORT_RETRIES, MAX_EXPORT_TIMEOUT, MAX_RETRY_BASE, MAX_WATCH_INTERVAL
from ecalstate.retention import prune

# --------------------------------------------------------------------------------------------- init


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def foreign_database(path: Path) -> None:
    """Another program's SQLite file (a browser's history, say), in rollback-journal mode as SQLite makes it."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE moz_places (id INTEGER PRIMARY KEY, url TEXT)")
    conn.execute("CREATE VIEW recent AS SELECT url FROM moz_places")
    conn.execute("INSERT INTO moz_places (url) VALUES ('https://cms.cern')")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("args", [["init"], ["campaign", "create", "prompt"]])
def test_init_refuses_another_programs_sqlite_file_and_writes_nothing(tmp_path: Path, args: list[str]) -> None:
    folder = tmp_path / "db"
    folder.mkdir()
    path = folder / "places.sqlite"
    foreign_database(path)
    before = digest(folder)
    result = invoke(str(path), *args)
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"Error: {path} is another program's database (it holds moz_places, recent): ecalstate adds its tables "
        "only to a new file, an empty one or its own; give another --db"]
    assert digest(folder) == before  # not a byte changed, no -wal or -journal left
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT url FROM moz_places").fetchall() == [("https://cms.cern",)]
    conn.close()


def test_init_still_takes_an_empty_file_its_own_and_an_interrupted_init(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    ok(str(empty), "init")
    ok(str(empty), "init")  # its own: idempotent
    assert "database ready" in ok(str(empty), "init").stdout
    interrupted = tmp_path / "half.db"
    ok(str(interrupted), "init")
    conn = sqlite3.connect(interrupted)
    conn.execute("DELETE FROM meta")  # the tables were made, the version not yet written
    conn.commit()
    conn.close()
    ok(str(interrupted), "init")
    ok(str(interrupted), "campaign", "create", "prompt")


# ----------------------------------------------------------------------------------- export: numbers


@pytest.mark.parametrize(("option", "value", "bound"), [
    ("--retries", str(MAX_EXPORT_RETRIES + 1), str(MAX_EXPORT_RETRIES)),
    ("--retries", "1000000000", str(MAX_EXPORT_RETRIES)),
    ("--retry-base", "1e308", str(MAX_RETRY_BASE)),
    ("--timeout", "1e308", str(MAX_EXPORT_TIMEOUT)),
    ("--watch", "1e308", str(MAX_WATCH_INTERVAL)),
])
def test_every_number_of_export_has_an_upper_bound(tmp_path: Path, option: str, value: str, bound: str) -> None:
    db = str(tmp_path / "s.db")
    ok(db, "init")
    out = tmp_path / "out.lp"
    result = invoke(db, "export", "--out", str(out), option, value)
    assert result.exit_code == 2 and "Traceback" not in result.stderr, (result.stderr, result.exception)
    assert len(result.stderr.strip().splitlines()) == 1 and option in result.stderr and bound in result.stderr
    assert not out.exists()
    help_text = " ".join(ok(db, "export", "--help").stdout.split())
    assert f"{option.split('-', 2)[-1]}" in help_text and bound in help_text  # the bound is documented


# ------------------------------------------------------------------- export file and prune archive


def history(path: Path) -> None:
    """A campaign through everything the exporter carries (rows of one to three lines), a request id, and an
    export cursor at the newest row, so that prune may take every old row."""
    with Store.open(str(path), actor="t", create=True) as store:
        make_campaign(store)
        store.claim("prompt", "reco", request_id="req-1")
        with store.db.tx() as tx:
            top = tx.scalar("SELECT MAX(id) FROM audit")
            tx.run("INSERT INTO export_cursor (target, audit_id, updated_at) VALUES ('influx', ?, ?)", (top, utcnow()))


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "state.db"
    history(path)
    return path


def file_export(db: Path, out: Path, batch_size: int = 60) -> None:
    with Store.open(str(db)) as store:
        export(store, FileTarget(str(out)), batch_size=batch_size, retry=RetryPolicy(retries=0))


def archive_prune(db: Path, archive: Path) -> None:
    database = Database(str(db))
    try:
        prune(database, "2999-01-01", archive=str(archive), chunk=100)
    finally:
        database.close()


def table_rows(db: Path) -> dict[str, set[Any]]:
    conn = sqlite3.connect(db)
    try:
        return {t: {r[0] for r in conn.execute(f"SELECT {k} FROM {t}")} for t, k in (("audit_log", "id"), ("job", "id"),
                                                                                      ("request", "request_id"))}
    finally:
        conn.close()


@pytest.fixture(scope="module")
def expected(template: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What an export and a prune that nothing interrupts write: the file, the archive, the rows left."""
    folder = tmp_path_factory.mktemp("expected")
    shutil.copy(template, folder / "export.db")
    file_export(folder / "export.db", folder / "state.lp")
    shutil.copy(template, folder / "prune.db")
    archive_prune(folder / "prune.db", folder / "archive.jsonl")
    lines = (folder / "archive.jsonl").read_text().splitlines()
    assert Counter(json.loads(line)["table"] for line in lines) == {"audit": 203, "job": 3, "request": 1}
    return {"lp": (folder / "state.lp").read_bytes(), "archive": (folder / "archive.jsonl").read_bytes(),
            "rows": table_rows(folder / "prune.db")}


def killed_at(point: int, half: bool, action: Any) -> bool:
    """Run ``action`` in a forked process that SIGKILLs itself at its ``point``-th file-system call (open, write,
    fsync, ftruncate, close, unlink: before the call, or in the middle of a write with ``half``); False when the
    action ended before that point."""
    pid = os.fork()
    if pid == 0:  # the child: count the calls, die at the chosen one
        try:
            calls = 0

            def wrap(name: str) -> Any:
                real = getattr(os, name)

                def call(*args: Any, **kw: Any) -> Any:
                    nonlocal calls
                    calls += 1
                    if calls == point:
                        if half and name == "write":
                            real(args[0], bytes(args[1])[:max(1, len(args[1]) // 2)])
                        os.kill(os.getpid(), signal.SIGKILL)
                    return real(*args, **kw)
                return call

            for name in ("open", "write", "fsync", "ftruncate", "close", "unlink"):
                setattr(os, name, wrap(name))
            action()
        except BaseException:
            os._exit(3)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.WEXITSTATUS(status) == 0, "the action failed by itself"
    return False


def sweep(tmp_path: Path, template: Path, run: Any, check: Any) -> int:
    """Kill ``run(db)`` at every file-system call (before it, and within each write), let it run again to the end,
    and ``check(db)``; returns how many kills it took."""
    kills = 0
    for half in (False, True):
        for point in range(1, 1000):
            case = tmp_path / f"{point}-{half}"
            case.mkdir()
            db = case / "state.db"
            shutil.copy(template, db)
            died = killed_at(point, half, lambda: run(db))
            run(db)
            check(db)
            if not died:
                break
            kills += 1
            shutil.rmtree(case)
    return kills


@pytest.mark.slow
def test_a_file_export_killed_anywhere_writes_each_line_once(template: Path, expected: dict[str, Any],
                                                              tmp_path: Path) -> None:
    def check(db: Path) -> None:
        assert (db.parent / "state.lp").read_bytes() == expected["lp"]
        assert not (db.parent / "state.lp.pending").exists()

    kills = sweep(tmp_path, template, lambda db: file_export(db, db.parent / "state.lp"), check)
    assert kills > 40  # five batches of about a dozen calls each, and their writes cut in the middle


@pytest.mark.slow
def test_prune_archive_killed_anywhere_archives_each_row_once(template: Path, expected: dict[str, Any],
                                                               tmp_path: Path) -> None:
    def check(db: Path) -> None:
        assert (db.parent / "archive.jsonl").read_bytes() == expected["archive"]
        assert table_rows(db) == expected["rows"]

    kills = sweep(tmp_path, template, lambda db: archive_prune(db, db.parent / "archive.jsonl"), check)
    assert kills > 40


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs: a real file system that runs full (needs root, as in CI)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True,
                          check=False)
    if done.returncode != 0:
        from servers_plugin import skip_or_fail
        skip_or_fail(f"cannot mount a small tmpfs (root needed): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def full_disk_sweep(disk: Path, tmp_path: Path, template: Path, name: str, run: Any, check: Any) -> set[str]:
    """Run ``run(db, file)`` with ``file`` on a disk with 0, 1, 2... pages free until it succeeds, so that the disk
    runs full at every step of every batch (the note, the lines); each time free the disk, run again to the end
    and ``check(db, file)``. Returns the errors seen."""
    page = os.statvfs(disk).f_frsize
    errors = set()
    for free in range(0, 200):
        for old in disk.iterdir():
            old.unlink()
        db = tmp_path / f"{free}.db"
        shutil.copy(template, db)
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (os.statvfs(disk).f_bavail * page - free * page))
        try:
            run(db, disk / name)
        except (EcalStateError, OSError) as err:
            errors.add(f"{type(err).__name__}: {err}")
            done = False
        else:
            done = True
        filler.unlink()
        run(db, disk / name)
        check(db, disk / name)
        if done:
            return errors
    raise AssertionError("never succeeded")


def check_export(expected: dict[str, Any]) -> Any:
    def check(db: Path, out: Path) -> None:
        assert out.read_bytes() == expected["lp"]
        assert not Path(str(out) + ".pending").exists()
    return check


def check_archive(expected: dict[str, Any]) -> Any:
    def check(db: Path, archive: Path) -> None:
        assert archive.read_bytes() == expected["archive"]
        assert table_rows(db) == expected["rows"]
        assert not Path(str(archive) + ".pending").exists()
    return check


def test_a_file_export_on_a_full_disk_writes_each_line_once(small_disk: Path, tmp_path: Path, template: Path,
                                                             expected: dict[str, Any]) -> None:
    def small_batches(db: Path, out: Path) -> None:  # about 1 kB each: the disk runs full at most of them
        file_export(db, out, batch_size=7)

    errors = full_disk_sweep(small_disk, tmp_path, template, "state.lp", small_batches, check_export(expected))
    assert any("No space left on device" in e and "points were acknowledged" in e for e in errors), errors


def test_prune_archive_on_a_full_disk_archives_each_row_once(small_disk: Path, tmp_path: Path, template: Path,
                                                              expected: dict[str, Any]) -> None:
    errors = full_disk_sweep(small_disk, tmp_path, template, "archive.jsonl", archive_prune, check_archive(expected))
    assert any("No space left on device" in e for e in errors), errors


@pytest.mark.parametrize("action", ["export", "prune"])
def test_a_commit_the_full_disk_refuses_takes_the_lines_back(small_disk: Path, tmp_path: Path, template: Path,
                                                             expected: dict[str, Any], action: str) -> None:
    """The file takes the lines, then the database's disk cannot take the commit: the lines go again."""
    db = small_disk / "state.db"
    shutil.copy(template, db)
    holder = sqlite3.connect(db)  # keeps the -wal and -shm files there: the commit is what needs new pages
    holder.execute("SELECT COUNT(*) FROM audit_log").fetchone()
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize))
    run, name, check = ((file_export, "state.lp", check_export(expected)) if action == "export"
                        else (archive_prune, "archive.jsonl", check_archive(expected)))
    out = tmp_path / name
    with pytest.raises(EcalStateError, match="database or disk is full"):
        run(db, out)
    assert out.read_bytes() == b"" and not Path(str(out) + ".pending").exists()
    filler.unlink()
    holder.close()
    run(db, out)
    check(db, out)


def test_a_second_writer_neither_settles_nor_joins_a_live_batch(tmp_path: Path) -> None:
    """Two exports of one file at once (a --watch and a manual one): the second is refused while the first's batch
    waits for its commit, instead of cutting its lines or writing the same ones again."""
    path = tmp_path / "state.lp"
    db = tmp_path / "state.db"
    history(db)
    with batch(str(path)) as first:
        first.write(b"a\n", {"cursor": 1})
        with pytest.raises(BlockingIOError, match="another writer is at work"):
            settle(str(path), lambda note: False)
        with pytest.raises(ExportError, match="another writer is at work") as refused:
            file_export(db, path)
        assert not refused.value.permanent  # a --watch goes on, and tries again
        with pytest.raises(OSError, match="another writer is at work"):
            with batch(str(path)) as second:
                second.write(b"b\n", {"cursor": 2})
        assert path.read_bytes() == b"a\n"
    assert path.read_bytes() == b"a\n" and sorted(p.name for p in tmp_path.iterdir()) == ["state.db", "state.lp"]


def test_a_note_that_is_not_ours_keeps_the_lines_and_runs_nothing(tmp_path: Path, template: Path,
                                                                  expected: dict[str, Any]) -> None:
    """A note another version wrote, or someone planted, never cuts lines nor reaches the SQL."""
    db = tmp_path / "state.db"
    shutil.copy(template, db)
    archive = tmp_path / "archive.jsonl"
    before = b'{"row": {}, "table": "elsewhere"}\n'
    archive.write_bytes(before)
    info = archive.stat()
    for planted in ({"table": "audit_log; DROP TABLE audit_log --", "line": "{}"}, {"table": "job"}, {}):
        Path(f"{archive}.pending").write_text(json.dumps({"size": 0, "dev": info.st_dev, "ino": info.st_ino,
                                                          "note": planted}))
        archive_prune(db, archive)
        assert archive.read_bytes() == before + expected["archive"]
        assert not Path(f"{archive}.pending").exists()
    assert table_rows(db) == expected["rows"]
