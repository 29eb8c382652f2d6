"""The PhiSym workflow chain (reco -> calib per fill -> plots per fill) on the local backend."""

from __future__ import annotations

import csv
import struct
import sys
from pathlib import Path

import pytest
from handler_support import settle

from ecalstate import RunSpec, Store
from ecalstate.backends.local import LocalBackend
from ecalstate.handler import TaskHandler

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "handlers"))

from phisym_calib import PhiSymCalib  # noqa: E402
from phisym_plots import PhiSymPlots  # noqa: E402
from phisym_reco import PhiSymReco  # noqa: E402

C = "prompt"
TASKS = ("phisym-reco", "phisym-calib", "phisym-plots")


@pytest.fixture
def chain(tmp_path: Path, sqlite_url: str) -> tuple[TaskHandler, TaskHandler, TaskHandler]:
    store = Store.open(sqlite_url, actor="tester", create=True)
    store.create_campaign(C)
    store.add_task(C, "phisym-reco", max_retries=1)
    store.add_task(C, "phisym-calib", depends_on=["phisym-reco"], max_retries=0)
    store.add_task(C, "phisym-plots", depends_on=["phisym-calib"], max_retries=0)
    store.update_rtype(C, "all", add=list(TASKS))
    # fill 10: runs 1, 2; fill 11: runs 3, 4 (run 3 fails for good: two failures, one retry)
    store.inject_runs(C, [RunSpec(1, 10, {"nevents": 20000}), RunSpec(2, 10, {"nevents": 60000}),
                          RunSpec(3, 11, {"nevents": 20000, "inject_failure": 2}), RunSpec(4, 11, {"nevents": 20000})])
    backend = LocalBackend(tmp_path / "work", slots=2)
    yield PhiSymReco(store, backend), PhiSymCalib(store, backend), PhiSymPlots(store, backend)
    store.close()


def statuses(store: Store) -> dict[int, tuple[str, ...]]:
    return {row.run_number: tuple(row.statuses[t] for t in TASKS) for row in store.overview(C).rows}


def run_to_rest(handler: TaskHandler) -> None:
    """What successive Jenkins builds do: submit, check, resubmit, until nothing moves."""
    handler.submit(C)
    settle(handler, C)
    while handler.resubmit(C).counts:
        settle(handler, C)


def test_dependencies_gate_failed_upstream_blocks_and_reprocess_downstream_reruns(chain) -> None:
    reco, calib, plots = chain
    store = reco.store
    # nothing is eligible downstream while reco has not run
    assert calib.submit(C).counts == {} and plots.submit(C).counts == {}

    run_to_rest(reco)
    assert {r: s[0] for r, s in statuses(store).items()} == {1: "done", 2: "done", 3: "failed", 4: "done"}
    assert [len(store.list_jobs(C, "phisym-reco", run=r)) for r in (1, 2, 3, 4)] == [1, 2, 1, 1]

    run_to_rest(calib)
    run_to_rest(plots)
    assert statuses(store) == {
        1: ("done", "merged", "merged"), 2: ("done", "done", "done"),
        3: ("failed", "new", "new"), 4: ("done", "new", "new")}
    # run 3's failed reco blocks its calib, and fill 11 is never calibrated from run 4 alone: it waits, and says why
    assert calib.submit(C, dry_run=True).waiting == ["fill 11 waits: fill not ended; run 3 phisym-reco failed"]
    assert ("phisym-calib", 3) in store.overview(C).blocked
    assert not store.health(C).ok and (C, "phisym-calib", 3) in store.health(C).blocked

    # the calibration of fill 10 used both runs' sums; the plot is a real PNG
    ic = store.instance(C, "phisym-calib", 2).outputs["output"]
    rows = list(csv.DictReader(open(ic)))
    assert len(rows) == 20 * 72 and abs(sum(float(r["ic"]) for r in rows) / len(rows) - 1) < 0.01
    calib_job = store.list_jobs(C, "phisym-calib", run=2)[0]
    assert calib_job.fields["runs"] == "1,2" and calib_job.fields["hits"] > 0
    assert 0 < calib_job.fields["closure_rms"] < calib_job.fields["ic_rms"]  # calibrating improves uniformity
    png = Path(store.instance(C, "phisym-plots", 2).outputs["plots"])
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", head[16:24]) == (756, 265)  # map, axes, bar

    # reprocess the reco of run 1 (merged into fill 10's calibration) with --downstream: the whole group follows
    result = store.reprocess(C, "phisym-reco", runs=[1], downstream=True, reason="new tag")
    assert result.changed == 5
    assert statuses(store)[1] == ("reprocess", "reprocess", "reprocess")
    assert statuses(store)[2] == ("done", "reprocess", "reprocess")
    assert plots.submit(C).counts == {}  # gated again until the calibration is redone
    assert calib.submit(C).counts == {}  # fill 10 waits for run 1's reconstruction: never run 2 alone
    run_to_rest(reco)
    run_to_rest(calib)
    assert store.list_jobs(C, "phisym-calib", run=2)[-1].fields["runs"] == "1,2"
    run_to_rest(plots)
    assert statuses(store)[2] == ("done", "done", "done") and statuses(store)[1] == ("done", "merged", "merged")
    assert store.instance(C, "phisym-plots", 2).generation == 2
    assert "/phisym-plots/2/g2/" in store.instance(C, "phisym-plots", 2).outputs["plots"]
    assert png.exists()  # generation 1's outputs are kept

    # the failed run: the operator allows one more retry, and reprocesses it with --downstream
    store.update_task(C, "phisym-reco", max_retries=2)
    store.reprocess(C, "phisym-reco", runs=[3], downstream=True, reason="more retries for a flaky input")
    assert statuses(store)[3] == ("reprocess", "new", "new")
    store.close_fill(C, 11, "beam dumped")
    for handler in chain:
        run_to_rest(handler)
    assert statuses(store)[3] == ("done", "merged", "merged") and statuses(store)[4] == ("done", "done", "done")
    assert store.health(C).ok
    assert [(j.generation, j.attempts) for j in store.list_jobs(C, "phisym-reco", run=3)] == [(2, 3)]


def test_a_handler_groups_runs_by_luminosity_on_the_local_backend(tmp_path: Path, sqlite_url: str) -> None:
    class LumiCalib(PhiSymCalib):
        group_by = "lumi"
        lumi_target = 1.0

    store = Store.open(sqlite_url, actor="tester", create=True)
    store.create_campaign(C)
    store.add_task(C, "phisym-reco")
    store.add_task(C, "phisym-calib", depends_on=["phisym-reco"])
    store.update_rtype(C, "all", add=["phisym-reco", "phisym-calib"])
    lumi = {1: (10, 0.6), 2: (10, 0.6), 3: (10, 0.3), 4: (11, 0.2)}
    store.inject_runs(C, [RunSpec(r, f, {"nevents": 20000, "lumi": v}) for r, (f, v) in lumi.items()])
    backend = LocalBackend(tmp_path / "work", slots=2)
    reco, calib = PhiSymReco(store, backend), LumiCalib(store, backend)
    run_to_rest(reco)
    plan = calib.submit(C, dry_run=True)
    # 0.6 + 0.6 reach the target; run 3 closes below it with fill 10; fill 11 has not ended
    assert (plan.counts, plan.runs) == ({"would claim": 2, "would merge": 1, "waiting": 1}, [2, 3])
    assert plan.waiting == ["lumi group of fill 11 from run 4 waits: fill not ended (0.2 of 1 lumi)"]
    run_to_rest(calib)
    assert {r["run_number"]: r["status"] for r in store.list_runs(C, task="phisym-calib")} == {
        1: "merged", 2: "done", 3: "done", 4: "new"}
    assert [j.fields["runs"] for j in store.list_jobs(C, "phisym-calib")] == ["1,2", "3"]
    store.close()
