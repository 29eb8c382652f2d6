"""Refusals that say what to do (issue 23, item 3): a late run of a processed group names the group's leader and the
command; a missing database says where it looked and points at --db/ECALSTATE_DB first; ``serve`` refuses an
unknown campaign before it listens."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import ECALSTATE, dump, invoke, ok

from ecalstate import RunSpec, Store

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def late(tmp_path: Path) -> str:
    """reco -> calib by fill: fill 10 (runs 1, 2) calibrated by the group led by run 2, then run 4 of fill 10 comes
    late (fill 11 started meanwhile, so fill 10 had ended)."""
    db = str(tmp_path / "state.db")
    with Store.open(db, actor="setup", create=True) as store:
        store.create_campaign("prompt")
        store.add_task("prompt", "reco")
        store.add_task("prompt", "calib", depends_on=["reco"])
        store.update_rtype("prompt", "all", add=["reco", "calib"])
        store.inject_runs("prompt", [RunSpec(1, 10), RunSpec(2, 10), RunSpec(3, 11)])
        store.claim("prompt", "reco")
        for run in (1, 2, 3):
            store.create_jobs("prompt", "reco", run, [0])
            store.set_job_status("prompt", "reco", run, 0, "done")
        assert [(c.run_number, c.merged) for c in store.claim("prompt", "calib", group_by="fill")] == [(2, [1])]
        store.create_jobs("prompt", "calib", 2, [0])
        store.set_job_status("prompt", "calib", 2, 0, "done")
        store.inject_runs("prompt", [RunSpec(4, 10)])
        store.claim("prompt", "reco")
        store.create_jobs("prompt", "reco", 4, [0])
        store.set_job_status("prompt", "reco", 4, 0, "done")
    return db


def test_reprocessing_a_late_run_names_its_groups_leader_and_the_command(late: str) -> None:
    command = 'ecalstate reprocess -c prompt --task calib --runs 2 --reason "..."'
    before = dump(late)
    refused = invoke(late, "reprocess", "-c", "prompt", "--task", "calib", "--runs", "4", "--reason", "late run")
    assert refused.exit_code == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "calib run 4 is new: not processed yet" in refused.stderr
    assert "fill 10 was processed without it, in the group led by run 2 (done)" in refused.stderr
    assert f"to process it with its fill, reprocess the group: {command}" in refused.stderr
    assert dump(late) == before
    plan = invoke(late, "reprocess", "-c", "prompt", "--task", "calib", "--runs", "4", "--reason", "x", "--dry-run")
    assert plan.exit_code == 1 and command in plan.stdout and "not in the task table" not in plan.stdout
    # a run nobody processed yet, outside any processed group: said so, no group named
    alone = invoke(late, "reprocess", "-c", "prompt", "--task", "calib", "--runs", "3", "--reason", "x")
    assert alone.exit_code == 1 and "calib run 3 is new: not processed yet; its next claim processes it" in \
        alone.stderr and "group" not in alone.stderr
    # and the advice works: the group's next claim takes the late run with it
    ok(late, "reprocess", "-c", "prompt", "--task", "calib", "--runs", "2", "--reason", "take run 4 in")
    with Store.open(late) as store:
        claims = store.claim("prompt", "calib", group_by="fill")
    assert [(c.run_number, sorted(c.merged)) for c in claims] == [(4, [1, 2])]


def run_in(folder: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ECALSTATE_")}
    return subprocess.run(args, cwd=folder, capture_output=True, text=True, timeout=120, env={**clean, **(env or {})})


def test_a_missing_database_says_where_it_looked_and_points_at_db_first(tmp_path: Path) -> None:
    here = tmp_path / "somewhere"
    here.mkdir()
    default = run_in(here, ECALSTATE, "status", "-c", "prompt")
    assert default.returncode == 1 and len(default.stderr.strip().splitlines()) == 1, default.stderr
    line = default.stderr.strip()
    assert f"no database at ./ecalstate.db (that is {here}/ecalstate.db; neither --db nor ECALSTATE_DB is set)" in line
    assert line.index("--db") < line.index("ecalstate init") and line.index("ECALSTATE_DB") < line.index("init")
    named = run_in(here, ECALSTATE, "status", "-c", "prompt", env={"ECALSTATE_DB": str(tmp_path / "prod.db")})
    assert named.returncode == 1 and f"no database at {tmp_path}/prod.db (from ECALSTATE_DB)" in named.stderr
    given = run_in(here, ECALSTATE, "--db", "prod.db", "status", "-c", "prompt")
    assert given.returncode == 1 and f"no database at prod.db (that is {here}/prod.db; from --db)" in given.stderr
    # a workflow script says the same, and nothing was created anywhere
    handler = run_in(here, sys.executable, str(REPO / "handlers" / "phisym_reco.py"), "-c", "prompt", "check")
    assert handler.returncode == 1 and f"no database at ./ecalstate.db (that is {here}/ecalstate.db)" in \
        handler.stderr and "--db or ECALSTATE_DB" in handler.stderr, handler.stderr
    assert list(here.iterdir()) == []


def test_serve_refuses_an_unknown_campaign_before_it_listens(tmp_path: Path) -> None:
    db = str(tmp_path / "state.db")
    with Store.open(db, create=True) as store:
        store.create_campaign("prompt")
        store.create_campaign("rereco-2026")
    proc = subprocess.run([ECALSTATE, "--db", db, "serve", "-c", "promt", "--port", "0"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1 and "serving" not in proc.stderr
    assert proc.stderr.strip() == ("Error: unknown campaign 'promt' (did you mean prompt? campaigns: prompt, "
                                   "rereco-2026)")
