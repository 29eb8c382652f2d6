"""Bad input, one case per row: the right exit code, one clear stderr line, no traceback, nothing written.

Every case runs the real command line on a copy of one small campaign, or on
a broken database (missing, a directory, read-only, newer schema, unreachable),
and compares the database content (every table, WAL included) before and after.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest
from cli_support import ECALSTATE, build_chain, dump, invoke, process

from ecalstate import Store

SET = ["set", "-c", "prompt", "--task", "reco"]
INJECT = ["run", "inject", "-c", "prompt"]
JOB_SET = ["job", "set", "-c", "prompt", "--task", "reco", "--run", "1"]
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
TOO_BIG = str(2**63)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> str:
    """reco: run 1 done (one job), 3 failed, 2 and 4 processing; calib run 1 claimed with request id rq-claim."""
    db = str(tmp_path_factory.mktemp("template") / "state.db")
    build_chain(db)
    process(db, "reco", done=[1], failed=[3])
    with Store.open(db, actor="setup") as store:
        store.claim("prompt", "calib", request_id="rq-claim")
    return db


def case(name: str, args: list[str], code: int, expect: str, db: str = "copy", **files: str) -> object:
    return pytest.param(args, code, expect, db, files, id=name)


CASES = [
    # names that do not exist
    case("unknown-campaign", ["status", "-c", "nope"], 1, "unknown campaign 'nope'"),
    case("unknown-campaign-write", ["set", "-c", "nope", "--task", "reco", "--runs", "2", "done", "--reason", "x"], 1,
         "unknown campaign 'nope'"),
    case("unknown-task-claim", ["claim", "-c", "prompt", "--task", "nope"], 1, "unknown task 'nope'"),
    case("unknown-task-status", ["status", "-c", "prompt", "--task", "reco,nope"], 1, "unknown task 'nope'"),
    case("unknown-task-history", ["history", "-c", "prompt", "--task", "nope"], 1, "unknown task 'nope'"),
    case("unknown-rtype", ["rtype", "update", "-c", "prompt", "nope", "--add", "reco"], 1, "unknown run type 'nope'"),
    case("unknown-run", [*SET, "--runs", "99", "done", "--reason", "x"], 1, "reco run 99: None -> done: no such task"),
    case("unknown-job", [*JOB_SET, "--job", "7", "done"], 1, "no job 7 for task 'reco' run 1"),
    # transitions the tables refuse
    case("illegal-transition", [*SET, "--runs", "1", "failed", "--reason", "x"], 1,
         "reco run 1: transition done -> failed not allowed"),
    case("illegal-in-a-batch", [*SET, "--runs", "1-2", "failed", "--reason", "x"], 1,
         "1 of 2 transitions refused, nothing written"),
    case("reprocess-never-processed", ["reprocess", "-c", "prompt", "--task", "plots", "--runs", "2", "--reason", "x"],
         1, "plots run 2: transition new -> reprocess not allowed"),
    case("illegal-job-transition", [*JOB_SET, "--job", "0", "running"], 1, "done -> running"),
    case("jobs-for-unclaimed-run", ["job", "create", "-c", "prompt", "--task", "calib", "--run", "2", "--count", "2"],
         1, "calib run 2 is new, not processing"),
    # statuses
    case("status-not-set-by-hand", [*SET, "--runs", "2", "new", "--reason", "x"], 2,
         "Invalid value for 'STATUS': 'new' is not one of"),
    case("unknown-status", [*SET, "--runs", "2", "finished", "--reason", "x"], 2, "'finished' is not one of"),
    case("unknown-status-filter", ["run", "list", "-c", "prompt", "--task", "reco", "--status", "bogus"], 2,
         "'bogus' is not one of"),
    case("unknown-job-status", [*JOB_SET, "--job", "0", "finished"], 2, "'finished' is not one of"),
    # operator options
    case("missing-reason", [*SET, "--runs", "2", "done"], 2, "Missing option '--reason'"),
    case("blank-reason", [*SET, "--runs", "2", "done", "--reason", "  "], 1, "a reason is required"),
    case("missing-runs", [*SET, "done", "--reason", "x"], 2, "Missing option '--runs'"),
    case("reprocess-selects-nothing", ["reprocess", "-c", "prompt", "--task", "reco", "--reason", "x"], 2,
         "give --runs, --fill, --failed or --version-not"),
    case("missing-campaign", ["status"], 2, "Missing option '-c' / '--campaign'"),
    # run sets
    case("run-range-backwards", ["status", "-c", "prompt", "--runs", "5-3"], 2, "end before start"),
    case("run-set-text", ["status", "-c", "prompt", "--runs", "abc"], 2, "expected N or N-M"),
    case("run-set-empty-element", ["status", "-c", "prompt", "--runs", "1,,2"], 2, "empty element"),
    case("run-set-negative", [*SET, "--runs=-5", "done", "--reason", "x"], 2, "invalid run set element '-5'"),
    case("run-range-huge", ["status", "-c", "prompt", "--runs", "1-99999999"], 2, "larger than 1000000 runs"),
    # run injection
    case("inject-negative-run", [*INJECT, "--run", "-5"], 1, "invalid run number -5: run numbers are > 0"),
    case("inject-run-zero", [*INJECT, "--run", "0"], 1, "invalid run number 0"),
    case("inject-run-not-integer", [*INJECT, "--run", "12a"], 2, "'12a' is not a valid integer"),
    case("inject-negative-fill", [*INJECT, "--run", "7", "--fill", "-1"], 1, "invalid fill -1 for run 7"),
    case("inject-meta-without-equals", [*INJECT, "--run", "7", "--meta", "class"], 2, "expected KEY=VALUE"),
    case("inject-meta-twice", [*INJECT, "--run", "7", "--meta", "a=1", "--meta", "a=2"], 2, "--meta 'a' given twice"),
    case("inject-nothing", INJECT, 2, "give --run or --file"),
    case("inject-run-and-file", [*INJECT, "--run", "7", "--file", "{tmp}/ok.json"], 2, "without --file",
         **{"ok.json": '[{"run_number": 8}]'}),
    case("json-malformed", [*INJECT, "--file", "{tmp}/runs.json"], 1, "runs.json: invalid JSON: Expecting",
         **{"runs.json": '[{"run_number": 7},\n {"run_number": 8'}),
    case("json-not-a-list", [*INJECT, "--file", "{tmp}/runs.json"], 1, "expected a JSON list of objects, got dict",
         **{"runs.json": '{"run_number": 7}'}),
    case("json-record-not-object", [*INJECT, "--file", "{tmp}/runs.json"], 1, "runs.json record 2: expected an object",
         **{"runs.json": '[{"run_number": 7}, 8]'}),
    case("json-no-run-number", [*INJECT, "--file", "{tmp}/runs.json"], 1, "runs.json record 2: no run_number",
         **{"runs.json": '[{"run_number": 7}, {"fill": 3}]'}),
    case("json-bad-fill", [*INJECT, "--file", "{tmp}/runs.json"], 1, "runs.json record 1: invalid fill 'x' for run 7",
         **{"runs.json": '[{"run_number": 7, "fill": "x"}]'}),
    case("json-fractional-run", [*INJECT, "--file", "{tmp}/runs.json"], 1, "record 1: invalid run number '7.5'",
         **{"runs.json": '[{"run_number": 7.5}]'}),
    case("json-negative-run", [*INJECT, "--file", "{tmp}/runs.json"], 1, "runs.json record 2: invalid run number -8",
         **{"runs.json": '[{"run_number": 7}, {"run_number": -8}]'}),
    case("json-run-twice", [*INJECT, "--file", "{tmp}/runs.json"], 1, "run 7 is given twice with different values",
         **{"runs.json": '[{"run_number": 7, "fill": 1}, {"run_number": 7, "fill": 2}]'}),
    case("csv-no-run-number-column", [*INJECT, "--file", "{tmp}/runs.csv"], 1,
         "runs.csv line 1: expected a header with a run_number column", **{"runs.csv": "run,fill\n7,1\n"}),
    case("csv-extra-field", [*INJECT, "--file", "{tmp}/runs.csv"], 1, "runs.csv line 3: 3 fields, the header has 2",
         **{"runs.csv": "run_number,fill\n7,1\n8,1,x\n"}),
    case("csv-negative-run", [*INJECT, "--file", "{tmp}/runs.csv"], 1, "runs.csv line 4: invalid run number -9",
         **{"runs.csv": "run_number,fill\n7,1\n8,1\n-9,1\n"}),
    case("csv-text-run", [*INJECT, "--file", "{tmp}/runs.csv"], 1, "runs.csv line 3: invalid run number 'abc'",
         **{"runs.csv": "run_number\n7\nabc\n"}),
    case("csv-empty", [*INJECT, "--file", "{tmp}/runs.csv"], 1, "line 1: expected a header", **{"runs.csv": ""}),
    case("run-file-unknown-type", [*INJECT, "--file", "{tmp}/runs.txt"], 1, "unknown run file type '.txt'",
         **{"runs.txt": "7\n"}),
    case("run-file-missing", [*INJECT, "--file", "{tmp}/none.json"], 1, "cannot read"),
    # catalog
    case("bad-filter", ["rtype", "create", "-c", "prompt", "coll", "--filter", "class"], 1, "invalid filter clause"),
    case("bad-filter-operator", ["rtype", "update", "-c", "prompt", "all", "--filter", "nevents~5"], 1,
         "invalid filter clause 'nevents~5'"),
    case("rtype-add-and-remove", ["rtype", "update", "-c", "prompt", "all", "--add", "reco", "--remove", "reco"], 1,
         "both added and removed: reco"),
    case("task-unknown-dependency", ["task", "add", "-c", "prompt", "x", "--depends-on", "nope"], 1,
         "unknown task 'nope'"),
    case("task-duplicate", ["task", "add", "-c", "prompt", "reco"], 1, "task 'reco' already exists"),
    case("task-cycle", ["task", "update", "-c", "prompt", "reco", "--depends-on", "plots"], 1, "dependency cycle"),
    case("task-negative-retries", ["task", "add", "-c", "prompt", "x", "--max-retries", "-1"], 2,
         "-1 is out of range: expected an integer from 0 to"),
    case("task-update-nothing", ["task", "update", "-c", "prompt", "reco"], 2, "nothing to change"),
    case("campaign-duplicate", ["campaign", "create", "prompt"], 1, "campaign 'prompt' already exists"),
    case("campaign-bad-name", ["campaign", "create", "bad name!"], 1, "invalid campaign name 'bad name!'"),
    case("campaign-bad-kind", ["campaign", "create", "x", "--kind", "weekly"], 2, "'weekly' is not one of"),
    # claims, jobs, request ids, durations
    case("claim-limit-zero", ["claim", "-c", "prompt", "--task", "reco", "--limit", "0"], 2,
         "0 is out of range: expected an integer from 1"),
    case("claim-unknown-grouping", ["claim", "-c", "prompt", "--task", "reco", "--group-by", "week"], 2,
         "'week' is not one of"),
    case("claim-lumi-without-target", ["claim", "-c", "prompt", "--task", "reco", "--group-by", "lumi"], 1,
         "grouping by lumi needs a luminosity target > 0"),
    case("job-field-without-equals", [*JOB_SET, "--job", "0", "done", "--field", "output"], 2, "expected KEY=VALUE"),
    case("request-id-reused", [*SET, "--runs", "2", "done", "--reason", "x", "--request-id", "rq-claim"], 1,
         "request id 'rq-claim' was already used for a claim call"),
    case("request-id-blank", ["claim", "-c", "prompt", "--task", "reco", "--request-id", " "], 1,
         "request id must not be blank"),
    case("bad-duration", ["health", "--stuck-after", "5x"], 2, "invalid duration '5x'"),
    case("negative-duration", ["status", "-c", "prompt", "--stuck-after=-5m"], 2, "invalid duration '-5m'"),
    case("history-limit-zero", ["history", "-c", "prompt", "--limit", "0"], 2,
         "0 is out of range: expected an integer from 1"),
    case("status-filter-without-task", ["run", "list", "-c", "prompt", "--status", "failed"], 2,
         "--status needs --task"),
    case("report-out-folder-missing", ["report", "html", "-c", "prompt", "--out", "/nonexistent-dir/x.html"], 1,
         "cannot write /nonexistent-dir/x.html"),
    case("unknown-command", ["sett"], 2, "No such command 'sett'"),
    case("unknown-option", ["status", "-c", "prompt", "--bogus"], 2, "No such option '--bogus'"),
    # the database itself
    case("db-unreachable-path", ["status", "-c", "prompt"], 1, "no database at /nonexistent-dir/state.db",
         db="unreachable"),
    case("db-unreachable-path-init", ["init"], 1, "folder /nonexistent-dir does not exist", db="unreachable"),
    case("db-missing-read", ["status", "-c", "prompt"], 1,
         "name yours with --db or ECALSTATE_DB, or create a new one there with `ecalstate init`", db="missing"),
    case("db-missing-history", ["history", "-c", "prompt"], 1, "no database at", db="missing"),
    case("db-missing-health", ["health"], 1, "no database at", db="missing"),
    case("db-missing-bad-campaign", ["campaign", "create", "bad name!"], 1, "invalid campaign name", db="missing"),
    case("db-directory", ["status", "-c", "prompt"], 1, "is a directory, not a database file", db="dir"),
    case("db-directory-init", ["init"], 1, "is a directory, not a database file", db="dir"),
    case("db-read-only-set", [*SET, "--runs", "2", "done", "--reason", "x"], 1, "attempt to write a readonly database",
         db="readonly"),
    case("db-read-only-inject", [*INJECT, "--run", "50"], 1, "attempt to write a readonly database", db="readonly"),
    case("db-newer-schema-read", ["status", "-c", "prompt"], 1, "has schema version 999, newer than this ecalstate",
         db="newer"),
    case("db-newer-schema-claim", ["claim", "-c", "prompt", "--task", "reco"], 1, "schema version 999", db="newer"),
    case("db-newer-schema-init", ["init"], 1, "schema version 999", db="newer"),
    case("db-not-a-database", ["status", "-c", "prompt"], 1, "file is not a database", db="garbage"),
    case("db-server-unreachable", ["status", "-c", "prompt"], 1, "Connection refused",
         db="postgresql+psycopg://ecal@127.0.0.1:1/ecal"),  # a password in --db is refused before any connection
    case("db-unknown-dialect", ["status", "-c", "prompt"], 1, "cannot use database URL foo://bar", db="foo://bar"),
    # numbers the database cannot hold: SQLite INTEGER and PostgreSQL BIGINT are signed 64-bit
    *[case(f"int64-{name}", args, 2, f"{TOO_BIG} is out of range: expected an integer from {low} to {INT64_MAX}")
      for name, args, low in [
          ("inject-run", [*INJECT, "--run", TOO_BIG], INT64_MIN),
          ("inject-fill", [*INJECT, "--run", "7", "--fill", TOO_BIG], INT64_MIN),
          ("set-runs", [*SET, "--runs", TOO_BIG, "done", "--reason", "x"], 1),
          ("set-runs-range", [*SET, "--runs", f"1-{TOO_BIG}", "done", "--reason", "x"], 1),
          ("history-run", ["history", "-c", "prompt", "--run", TOO_BIG], 1),
          ("history-limit", ["history", "-c", "prompt", "--limit", TOO_BIG], 1),
          ("job-set-job", [*JOB_SET, "--job", TOO_BIG, "done"], INT64_MIN),
          ("job-set-run", ["job", "set", "-c", "prompt", "--task", "reco", "--run", TOO_BIG, "--job", "0", "done"],
           INT64_MIN),
          ("job-list-run", ["job", "list", "-c", "prompt", "--task", "reco", "--run", TOO_BIG], INT64_MIN),
          ("job-create-first", ["job", "create", "-c", "prompt", "--task", "reco", "--run", "2", "--count", "1",
                                "--first", TOO_BIG], 0),
          ("claim-limit", ["claim", "-c", "prompt", "--task", "reco", "--limit", TOO_BIG], 1),
          ("task-max-retries", ["task", "add", "-c", "prompt", "x", "--max-retries", TOO_BIG], 0),
          ("report-failures", ["report", "html", "-c", "prompt", "--out", "{tmp}/o.html", "--failures", TOO_BIG], 1),
      ]],
    case("int64-inject-run-negative", [*INJECT, "--run", f"-{TOO_BIG}1"], 2, f"-{TOO_BIG}1 is out of range"),
    case("int64-job-create-last", ["job", "create", "-c", "prompt", "--task", "reco", "--run", "2", "--count", "2",
                                   "--first", str(INT64_MAX)], 1,
         f"invalid job id {TOO_BIG}: expected an integer from 0 to {INT64_MAX}"),
    case("int64-json-run", [*INJECT, "--file", "{tmp}/runs.json"], 1,
         f"runs.json record 2: invalid run number {TOO_BIG}: expected an integer from 1 to {INT64_MAX}",
         **{"runs.json": f'[{{"run_number": 7}}, {{"run_number": {TOO_BIG}}}]'}),
    case("int64-json-fill", [*INJECT, "--file", "{tmp}/runs.json"], 1,
         f"runs.json record 1: invalid fill {TOO_BIG} for run 7: expected an integer from 0 to {INT64_MAX}",
         **{"runs.json": f'[{{"run_number": 7, "fill": {TOO_BIG}}}]'}),
    case("int64-csv-run", [*INJECT, "--file", "{tmp}/runs.csv"], 1,
         f"runs.csv line 3: invalid run number {TOO_BIG}: expected an integer from 1 to {INT64_MAX}",
         **{"runs.csv": f"run_number\n7\n{TOO_BIG}\n"}),
    # bounded work
    case("job-create-count-bounded", ["job", "create", "-c", "prompt", "--task", "reco", "--run", "2", "--count",
                                      "100000000"], 2, "100000000 is not in the range 1<=x<=100000"),
    case("duration-beyond-100-years", ["health", "--stuck-after", "999999999w"], 2,
         "invalid duration '999999999w': at most 100 years (3155760000 s)"),
    case("duration-beyond-100-years-silent", ["health", "--silent-after", "1" + "0" * 400], 2, "at most 100 years"),
    case("prune-before-beyond-100-years", ["db", "prune", "--before", "99999999999d"], 1,
         "invalid age '99999999999d': at most 100 years (36525 days)"),
    case("prune-before-year-1", ["db", "prune", "--before", "0001-01-01T00:00:00+05:00"], 1,
         "invalid date '0001-01-01T00:00:00+05:00'"),
    case("export-bad-ipv6-url", ["export", "--url", "http://[::1", "--bucket", "b", "--org", "o"], 1,
         "invalid URL"),
    # filter typos
    case("filter-double-equals", ["rtype", "create", "-c", "prompt", "coll", "--filter", "class==Collisions"], 1,
         "invalid filter clause 'class==Collisions': '=' after the operator '=' at position 7"),
    case("filter-double-greater", ["rtype", "create", "-c", "prompt", "big", "--filter", "class=C,nevents>>3"], 1,
         "invalid filter clause 'nevents>>3': '>' after the operator '>' at position 17"),
    case("filter-not-greater", ["rtype", "update", "-c", "prompt", "all", "--filter", "nevents=>3"], 1,
         "'>' after the operator '=' at position 9"),
    # damaged, foreign and empty files: refused, never changed (not even switched to WAL or given a header)
    case("db-flipped-bits-status", ["status", "-c", "prompt"], 1, "is damaged or not a database", db="flipped"),
    case("db-flipped-bits-set", [*SET, "--runs", "2", "done", "--reason", "x"], 1, "is damaged or not a database",
         db="flipped"),
    case("db-flipped-bits-init", ["init"], 1, "is damaged or not a database", db="flipped"),
    case("db-corrupt-pages", ["status", "-c", "prompt"], 1, "is damaged or not a database: database disk image is "
         "malformed", db="corrupt"),
    case("db-schema-version-not-a-number", ["status", "-c", "prompt"], 1, "has an unreadable schema version 'abc'",
         db="badversion"),
    case("db-schema-version-not-a-number-init", ["init"], 1, "unreadable schema version 'abc'", db="badversion"),
    case("db-empty-file-status", ["status", "-c", "prompt"], 1, "holds no ecalstate schema", db="empty"),
    case("db-empty-file-health", ["health"], 1, "holds no ecalstate schema", db="empty"),
    case("db-empty-file-set", [*SET, "--runs", "2", "done", "--reason", "x"], 1, "holds no ecalstate schema",
         db="empty"),
    case("db-foreign-status", ["status", "-c", "prompt"], 1, "holds no ecalstate schema", db="foreign"),
    case("db-foreign-campaign-list", ["campaign", "list"], 1, "holds no ecalstate schema", db="foreign"),
    case("db-foreign-history", ["history", "-c", "prompt"], 1, "holds no ecalstate schema", db="foreign"),
    case("db-foreign-set", [*SET, "--runs", "2", "done", "--reason", "x"], 1, "holds no ecalstate schema",
         db="foreign"),
]


@pytest.fixture
def prepared(request: pytest.FixtureRequest, template: str, tmp_path: Path) -> Iterator[tuple[str, Optional[str]]]:
    """(the --db value, the SQLite file whose content must not change, if any)."""
    kind = request.node.callspec.params["kind"]
    db = str(tmp_path / "state.db")
    if kind in ("copy", "readonly", "newer", "badversion", "flipped", "corrupt"):
        shutil.copy(template, db)
    if kind in ("newer", "badversion"):
        with sqlite3.connect(db) as conn:
            version = "999" if kind == "newer" else "abc"
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (version,))
        conn.close()
    if kind == "flipped":  # the high bit of the name of table meta in the schema: no longer UTF-8
        flip(db, b"tablemetameta", range(5, 9), 0x80)
    if kind == "corrupt":  # every b-tree page header after the first: not a page type
        data = bytearray(Path(db).read_bytes())
        size = int.from_bytes(data[16:18], "big")
        for start in range(size, len(data), size):
            data[start] = 0x77
        Path(db).write_bytes(bytes(data))
    if kind == "empty":
        Path(db).touch()
    if kind == "foreign":  # another program's database, in rollback-journal mode
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE readings (t TEXT, value REAL)")
            conn.execute("INSERT INTO readings VALUES ('2024-05-01', 1.5)")
        conn.close()
    immutable = False
    if kind == "readonly":
        if os.geteuid() == 0:  # root writes through file modes: make the file immutable instead
            immutable = subprocess.run(["chattr", "+i", db], capture_output=True, check=False).returncode == 0
            if not immutable:
                pytest.skip("running as root and chattr +i is not supported here")
        else:
            os.chmod(db, 0o444)
    if kind == "dir":
        os.mkdir(db)
    if kind == "garbage":
        Path(db).write_text("run_number,fill\n1,2\n")
    if kind == "unreachable":
        db = "/nonexistent-dir/state.db"
    if "://" in kind:
        db = kind
    try:
        kept = kind in ("copy", "readonly", "newer", "badversion", "flipped", "corrupt", "empty", "foreign")
        yield db, (str(tmp_path / "state.db") if kept else None)
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(tmp_path / "state.db")], check=True)


def flip(path: str, marker: bytes, offsets: range, mask: int) -> None:
    """Flip the ``mask`` bits of the bytes at ``offsets`` from the first ``marker`` in the file."""
    data = bytearray(Path(path).read_bytes())
    at = data.index(marker)
    for offset in offsets:
        data[at + offset] ^= mask
    Path(path).write_bytes(bytes(data))


@pytest.mark.parametrize(("args", "code", "expect", "kind", "files"), CASES)
def test_bad_input(
    prepared: tuple[str, Optional[str]], tmp_path: Path, args: list[str], code: int, expect: str, kind: str,
    files: dict[str, str],
) -> None:
    db, sqlite_file = prepared
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    readable = sqlite_file is not None and kind not in ("flipped", "corrupt")  # a damaged file is compared as bytes
    before = dump(sqlite_file) if sqlite_file and readable else None
    before_bytes = Path(sqlite_file).read_bytes() if sqlite_file else None
    listing = sorted(p.name for p in tmp_path.iterdir())

    result = invoke(db, *[a.replace("{tmp}", str(tmp_path)) for a in args])

    assert isinstance(result.exception, SystemExit), result.exception  # no unhandled exception
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert expect in lines[0]
    assert "Traceback" not in result.stderr and "s3cret" not in result.stderr
    assert result.stdout == ""
    if sqlite_file:
        assert not readable or dump(sqlite_file) == before
        assert Path(sqlite_file).read_bytes() == before_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # no database, journal or temp file created
    assert not os.path.exists("/nonexistent-dir")


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize(("args", "code", "expect"), [
    (["--db", "{db}", "set", "-c", "prompt", "--task", "reco", "--runs", "1", "failed", "--reason", "x"], 1,
     "reco run 1: transition done -> failed not allowed"),
    (["--db", "{db}", "status", "-c", "prompt", "--runs", "5-3"], 2, "end before start"),
    (["--db", "{tmp}/missing.db", "status", "-c", "prompt"], 1, "no database at"),
], ids=["refused", "usage", "missing-db"])
def test_bad_input_in_a_real_process(template: str, tmp_path: Path, args: list[str], code: int, expect: str) -> None:
    db = str(tmp_path / "state.db")
    shutil.copy(template, db)
    before = dump(db)
    proc = subprocess.run([ECALSTATE, *[a.format(db=db, tmp=tmp_path) for a in args]], capture_output=True, text=True,
                          env={**os.environ, "ECALSTATE_CAMPAIGN": ""}, timeout=60, check=False)
    assert proc.returncode == code
    assert proc.stderr.count("\n") == 1 and expect in proc.stderr and "Traceback" not in proc.stderr
    assert dump(db) == before and not (tmp_path / "missing.db").exists()
