"""Issue 25 item 5: a test campaign runs a new task on production's inputs, and never writes production.

Campaign ``prompt`` reconstructs runs (``reco``; fill 10's runs grouped, run 1 merged into run 2); campaign ``test``
declares ``timing --depends-on reco --inputs-from prompt``, grouped by fill, and copies prompt's runs. Its instance
of run R is eligible once prompt's ``reco`` is done for R (merged: its leader); its workflow's ``outputs()`` reads
prompt's files; ``submit --dry-run`` lists the jobs with their arguments; prompt's rows and audit stay as they were,
on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ecalstate import RunSpec, Store
from ecalstate.backends import JobSpec
from ecalstate.backends.local import LocalBackend
from ecalstate.handler import TaskHandler
from ecalstate.results import Claim

P, T = "prompt", "test"
#: what a timing job runs: the files it was given, reported back as a field
SCRIPT = 'ecalstate-job field inputs "$*" && ecalstate-job number n "$#"'


class Timing(TaskHandler):
    task = "timing"
    group_by = "fill"

    def jobs(self, campaign: str, claim: Claim) -> list[JobSpec]:
        files = self.outputs(campaign, "reco", claim.runs)
        return [JobSpec(i, "sh", ["-c", SCRIPT, "timing", *files[i::2]]) for i in range(2)]


def campaign_rows(store: Store, name: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row that belongs to campaign ``name``: its own, its tasks' and instances' and jobs', its audit."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with store.db.tx(write=False) as tx:
        cid = tx.scalar("SELECT id FROM campaign WHERE name = ?", (name,))
        out["campaign"] = [tuple(r) for r in tx.all("SELECT * FROM campaign WHERE id = ?", (cid,))]
        for table in ("audit_log", "fill_end", "heartbeat", "rtype", "run", "run_source", "task", "task_instance"):
            out[table] = sorted(tuple(r) for r in tx.all(f"SELECT * FROM {table} WHERE campaign_id = ?", (cid,)))
        mine = "SELECT id FROM task WHERE campaign_id = ?"
        out["task_dep"] = sorted(tuple(r) for r in tx.all(f"SELECT * FROM task_dep WHERE task_id IN ({mine})", (cid,)))
        out["rtype_task"] = sorted(tuple(r) for r in tx.all(
            f"SELECT * FROM rtype_task WHERE task_id IN ({mine})", (cid,)))
        out["job"] = sorted(tuple(r) for r in tx.all(
            "SELECT * FROM job WHERE instance_id IN (SELECT id FROM task_instance WHERE campaign_id = ?)", (cid,)))
    return out


def production(store: Store, files: Path) -> None:
    """prompt: reco done for fill 10 (run 1 merged into run 2) and run 4, processing for run 3, new for 5 and 6."""
    store.create_campaign(P)
    store.add_task(P, "reco")
    store.update_rtype(P, "all", add=["reco"])
    store.inject_runs(P, [RunSpec(1, 10, {"era": "A"}), RunSpec(2, 10), RunSpec(3, 11), RunSpec(4, 12),
                          RunSpec(5, 12), RunSpec(6, 13)])
    store.close_fill(P, 10, "beam dumped")
    (leader,) = store.claim(P, "reco", limit=1, group_by="fill")
    for claim in [leader, *store.claim(P, "reco", limit=2)]:  # fill 10, then runs 3 and 4
        store.create_jobs(P, "reco", claim.run_number, [0, 1])
        for jid in (0, 1):
            path = files / f"reco_{claim.run_number}_{jid}.csv"
            path.write_text("ieta,iphi,hits,sum_et\n")
            if claim.run_number != 3:
                store.set_job_status(P, "reco", claim.run_number, jid, "done", fields={"output": str(path)})


ECALSTATE = str(Path(sys.executable).parent / "ecalstate")


def ecal(*args: str, db: str) -> subprocess.CompletedProcess[str]:
    """The command line, as an expert runs it."""
    return subprocess.run([ECALSTATE, "--db", db, *args], capture_output=True, text=True, timeout=60)


def test_a_test_campaign_runs_on_prompts_inputs_and_never_writes_prompt(db_url: str, tmp_path: Path) -> None:
    with Store.open(db_url, actor="expert", create=True) as store:
        production(store, tmp_path)
        before = campaign_rows(store, P)
    for args in (["campaign", "create", T, "--kind", "reprocessing"],
                 ["task", "add", "-c", T, "timing", "--depends-on", "reco", "--inputs-from", P],
                 ["rtype", "update", "-c", T, "all", "--add", "timing"]):
        assert ecal(*args, db=db_url).returncode == 0
    copied = ecal("run", "inject", "-c", T, "--from-campaign", P, db=db_url)
    assert copied.stdout.strip() == f"copied 6 new runs from campaign {P} (6 task instances); 0 already present"
    listed = ecal("--json", "task", "list", "-c", T, db=db_url)
    assert json.loads(listed.stdout)[0] == {"name": "timing", "depends_on": ["reco"], "max_retries": 3,
                                                 "deadline": None, "deadline_from": None, "warn_before": None,
                                                 "cadence": None, "inputs_from": P, "ordered": False,
                                                 "gate": False}
    assert "prompt/reco" in ecal("task", "list", "-c", T, db=db_url).stdout

    with Store.open(db_url, actor="expert") as store:
        # the runs and their metadata came along, and fill 10's end (fills 11 and 12 follow from the later runs)
        assert [(r["run_number"], r["fill"], r["meta"]) for r in store.list_runs(T)] == [
            (1, 10, {"era": "A"}), (2, 10, {}), (3, 11, {}), (4, 12, {}), (5, 12, {}), (6, 13, {})]
        assert [(f.fill, f.reason) for f in store.ended_fills(T)] == [(10, f"ended in campaign {P}: beam dumped")]
        # eligible as prompt's reco is: fill 10 (run 1 merged into the done run 2) and run 4, whose fill waits for
        # run 5 (its reco not even started there); runs 3 and 6 are not
        assert [e.run_number for e in store.eligible(T, "timing")] == [1, 2, 4]
        plan = store.plan(T, "timing", "fill")
        assert [[e.run_number for e in g] for g in plan.groups] == [[1, 2]]
        assert [str(w) for w in plan.waiting] == ["fill 12 waits: run 5 prompt/reco new"]

    # the dry run shows the jobs and their arguments: prompt's files
    handler_env = {**os.environ, "ECALSTATE_DB": db_url, "ECALSTATE_WORKDIR": str(tmp_path / "work")}
    script = tmp_path / "timing.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                      "from test_inputs_from import Timing\nTiming.main()\n")
    dry = subprocess.run([sys.executable, str(script), "-c", T, "submit", "--dry-run"], capture_output=True, text=True,
                         env=handler_env, timeout=60)
    assert dry.returncode == 0, dry.stderr
    files = [str(tmp_path / f"reco_2_{j}.csv") for j in (0, 1)]
    assert dry.stdout.splitlines() == [
        f"{T} timing submit: would claim 1, would merge 1, waiting 1 (runs 2) [dry run]; fill 12 waits: run 5"
        " prompt/reco new",
        f"  run 2 job 0: sh -c '{SCRIPT}' timing {files[0]}",
        f"  run 2 job 1: sh -c '{SCRIPT}' timing {files[1]}"]

    with Store.open(db_url, actor="jenkins") as store:
        handler = Timing(store, LocalBackend(tmp_path / "work", slots=2))
        assert handler.submit(T).counts == {"claimed": 1, "merged": 1, "jobs submitted": 2}
        assert inputs_read(handler, 2) == [files[0], files[1]]
        assert campaign_rows(store, P) == before  # the test campaign's submit and check wrote nothing of prompt
        # prompt's run 3 finishes: the test campaign's fill 11 follows at its next submit
        with Store.open(db_url, actor="prompt-jenkins") as prompt:
            for jid in (0, 1):
                prompt.set_job_status(P, "reco", 3, jid, "done", fields={"output": f"/eos/reco_3_{jid}.csv"})
            before = campaign_rows(prompt, P)
        assert [[e.run_number for e in g] for g in store.plan(T, "timing", "fill").groups] == [[3]]
        handler.submit(T)
        assert inputs_read(handler, 3) == ["/eos/reco_3_0.csv", "/eos/reco_3_1.csv"]
        # a reprocessing of the test campaign stays in it
        store.reprocess(T, "timing", runs=[2], reason="try the new fit", downstream=True)
        assert campaign_rows(store, P) == before


def inputs_read(handler: TaskHandler, run: int) -> list[str]:
    """Check until the test campaign's instance of ``run`` is done; the files its jobs were given."""
    for _ in range(200):
        if handler.store.instance(T, "timing", run).status != "processing":
            break
        handler.check(T)
        time.sleep(0.05)
    assert handler.store.instance(T, "timing", run).status == "done"
    jobs = handler.store.list_jobs(T, "timing", run=run)
    assert [j.fields["n"] for j in jobs] == [1, 1]
    return [j.fields["inputs"] for j in jobs]


@pytest.mark.parametrize(("args", "message"), [
    (["timing", "--depends-on", "reco", "--inputs-from", T], "names the task's own campaign 'test'"),
    (["timing", "--depends-on", "reco", "--inputs-from", "nowhere"], "nowhere"),
    (["timing", "--depends-on", "calib", "--inputs-from", P], "calib"),
    (["timing", "--inputs-from", P], "--inputs-from prompt needs --depends-on"),
])
def test_inputs_from_refusals_are_one_line_and_write_nothing(sqlite_url: str, tmp_path: Path, args: list[str],
                                                             message: str) -> None:
    with Store.open(sqlite_url, actor="expert", create=True) as store:
        production(store, tmp_path)
        store.create_campaign(T)
    result = ecal("task", "add", "-c", T, *args, db=sqlite_url)
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    with Store.open(sqlite_url) as store:
        assert store.list_tasks(T) == []
