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
import sqlite3
from pathlib import Path

import pytest
from cli_support import invoke, ok

from ecalstate.limits import MAX_EXPORT_RETRIES, MAX_EXPORT_TIMEOUT, MAX_RETRY_BASE, MAX_WATCH_INTERVAL

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
