"""Helpers for the CLI tests: invoke the real command line on a real SQLite file, dump its content."""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from click.testing import CliRunner, Result

from ecalstate import RunSpec, Store
from ecalstate.cli import main

#: the installed console script, for subprocess runs
ECALSTATE = str(Path(sys.executable).parent / "ecalstate")


def invoke(db: str, *args: str, env: Optional[dict[str, str]] = None, color: bool = False) -> Result:
    """``ecalstate --db DB --actor tester ARGS`` in-process; exceptions are kept on the result, never raised."""
    runner = CliRunner(env={"ECALSTATE_CAMPAIGN": None, "ECALSTATE_DB": None, **(env or {})})
    return runner.invoke(main, ["--db", db, "--actor", "tester", *args], color=color, catch_exceptions=True,
                         prog_name="ecalstate")


def ok(db: str, *args: str, **kw: Any) -> Result:
    """Invoke and insist on success."""
    result = invoke(db, *args, **kw)
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr, result.exception)
    return result


def as_json(db: str, *args: str, **kw: Any) -> Any:
    return json.loads(ok(db, "--json", *args, **kw).stdout)


def dump(db: str) -> list[str]:
    """Every table's schema and rows (WAL included), to prove that nothing was written."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def build_chain(db: str) -> None:
    """Campaign ``prompt``: reco -> calib -> plots on every run, runs 1-4 in fills 10 and 11."""
    with Store.open(db, actor="setup", create=True) as store:
        store.create_campaign("prompt")
        store.add_task("prompt", "reco", max_retries=1)
        store.add_task("prompt", "calib", depends_on=["reco"])
        store.add_task("prompt", "plots", depends_on=["calib"])
        store.update_rtype("prompt", "all", add=["reco", "calib", "plots"])
        store.inject_runs("prompt", [RunSpec(1, 10), RunSpec(2, 10), RunSpec(3, 11), RunSpec(4, 11)])


def process(db: str, task: str, done: Sequence[int] = (), failed: Sequence[int] = ()) -> None:
    """Claim ``task`` for the runs and finish them: one job each, done or failed beyond its retries."""
    with Store.open(db, actor="setup") as store:
        store.claim("prompt", task)
        for run in [*done, *failed]:
            store.create_jobs("prompt", task, run, [0])
            store.set_job_status("prompt", task, run, 0, "done" if run in done else "failed")
        for run in failed:
            retries = next(t.max_retries for t in store.list_tasks("prompt") if t.name == task)
            for _ in range(retries):
                store.set_job_status("prompt", task, run, 0, "idle")
                store.set_job_status("prompt", task, run, 0, "failed")
