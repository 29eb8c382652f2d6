"""Groups are claimed only complete (fill, luminosity, era), and reprocessed whole (issue 12, items 1 and 3).

On the real store (SQLite file and PostgreSQL): the completeness check runs inside the claim's transaction.
"""

from __future__ import annotations

from typing import Any

import pytest

from cli_support import as_json, invoke
from drive import only
from ecalstate import JobUpdate, RunSpec, Store
from ecalstate.errors import Invalid
from ecalstate.sources import SourceBatch, SourceRun
from ecalstate.sources.store import RunSources

C = "prompt"


@pytest.fixture
def fills(store: Store) -> Store:
    """reco -> calib -> plots; fill 10: runs 1-3, fill 11: runs 4-5, fill 12: run 6 (so fills 10 and 11 ended)."""
    store.create_campaign(C)
    store.add_task(C, "reco", max_retries=2)
    store.add_task(C, "calib", depends_on=["reco"], max_retries=1)
    store.add_task(C, "plots", depends_on=["calib"], max_retries=0)
    store.update_rtype(C, "all", add=["reco", "calib", "plots"])
    store.inject_runs(C, [RunSpec(1, 10), RunSpec(2, 10), RunSpec(3, 10), RunSpec(4, 11), RunSpec(5, 11),
                          RunSpec(6, 12)])
    return store


def reco_and(store: Store, task: str, runs: list[RunSpec]) -> Store:
    """Campaign ``prompt`` with reco -> ``task`` on every run of ``runs``."""
    store.create_campaign(C)
    store.add_task(C, "reco")
    store.add_task(C, task, depends_on=["reco"])
    store.update_rtype(C, "all", add=["reco", task])
    store.inject_runs(C, runs)
    return store


def finish(store: Store, task: str, *runs: int, group: Any = None) -> None:
    """Claim ``runs`` (one group each, or as ``group``) and complete their one job."""
    claims = store.claim(C, task, group_by=group) if group else [
        c for run in runs for c in store.claim(C, task, group_by=only(run))]
    for claim in claims:
        store.create_jobs(C, task, claim.run_number, [0])
        store.update_jobs(C, task, [JobUpdate(claim.run_number, 0, "done")])


def statuses(store: Store, task: str) -> dict[int, str]:
    return {r["run_number"]: r["status"] for r in store.list_runs(C, task=task)}


def groups(store: Store, task: str, **how: Any) -> list[list[int]]:
    return [c.runs for c in store.claim(C, task, **how)]


def waits(store: Store, task: str, **how: Any) -> list[str]:
    return [str(w) for w in store.plan(C, task, **how).waiting]


def test_a_fill_is_claimed_once_it_ended_and_every_run_is_done_upstream(fills: Store) -> None:
    s = fills
    finish(s, "reco", 1)
    finish(s, "reco", 3)
    s.claim(C, "reco", group_by=only(2))  # run 2's reconstruction is still being processed (or retried)
    finish(s, "reco", 4)
    assert waits(s, "calib", group_by="fill") == ["fill 10 waits: run 2 reco processing",
                                                   "fill 11 waits: run 5 reco new"]
    assert groups(s, "calib", group_by="fill") == []  # the partial fill 10 (runs 1 and 3) is not claimed
    assert set(statuses(s, "calib").values()) == {"new"}
    s.create_jobs(C, "reco", 2, [0])
    s.update_jobs(C, "reco", [JobUpdate(2, 0, "done")])
    finish(s, "reco", 5, 6)
    # fill 12 has not ended (no later fill, nothing recorded): only fill 10 and 11, each from all its runs
    assert waits(s, "calib", group_by="fill") == ["fill 12 waits: fill not ended"]
    assert groups(s, "calib", group_by="fill") == [[1, 2, 3], [4, 5]]
    assert s.close_fill(C, 12, "beam dumped, the source was late")
    assert groups(s, "calib", group_by="fill") == [[6]]
    assert statuses(s, "calib") == {1: "merged", 2: "merged", 3: "processing", 4: "merged", 5: "processing",
                                    6: "processing"}


def test_skipped_runs_are_left_out_and_a_fill_of_skipped_runs_makes_no_group(fills: Store) -> None:
    s = fills
    finish(s, "reco", 1, 3, 6)
    s.set_status(C, "reco", [2, 4, 5], "skipped", reason="ECAL out of the run")  # cascades to calib and plots
    assert statuses(s, "calib")[2] == "skipped"
    assert s.close_fill(C, 12, "dumped")
    assert s.plan(C, "calib", group_by="fill").waiting == []
    assert groups(s, "calib", group_by="fill") == [[1, 3], [6]]  # fill 11 (all skipped): nothing to do


def test_a_run_still_being_taken_keeps_its_fill_waiting(fills: Store) -> None:
    s = fills
    RunSources(s).apply_sync(C, "file", SourceBatch([SourceRun(RunSpec(7, 12), ongoing=True)], {12: "operator"}, 7))
    finish(s, "reco", 6)
    assert waits(s, "calib", group_by="fill") == ["fill 12 waits: run 7 still being taken"]
    RunSources(s).apply_sync(C, "file", SourceBatch([SourceRun(RunSpec(7, 12))], {}, 7))
    finish(s, "reco", 7)
    assert groups(s, "calib", group_by="fill") == [[6, 7]]


@pytest.mark.parametrize("member", [1, 3])
@pytest.mark.parametrize("downstream", [False, True])
def test_reprocessing_any_member_reprocesses_the_whole_group(fills: Store, member: int, downstream: bool) -> None:
    s = fills
    finish(s, "reco", 1, 2, 3, 4, 5)
    finish(s, "calib", group="fill")  # fill 10 led by run 3, fill 11 by run 5
    finish(s, "plots", group="fill")
    assert statuses(s, "calib") == {1: "merged", 2: "merged", 3: "done", 4: "merged", 5: "done", 6: "new"}
    task = "reco" if downstream else "calib"
    result = s.reprocess(C, task, runs=[member], downstream=downstream, reason="bad alignment")
    assert statuses(s, "calib") == {1: "reprocess", 2: "reprocess", 3: "reprocess", 4: "merged", 5: "done",
                                    6: "new"}
    assert statuses(s, "plots") == ({1: "reprocess", 2: "reprocess", 3: "reprocess", 4: "merged", 5: "done",
                                     6: "new"} if downstream else {1: "merged", 2: "merged", 3: "done",
                                                                   4: "merged", 5: "done", 6: "new"})
    assert sum(c.outcome == "changed" for c in result.changes) == (7 if downstream else 3)
    if downstream:  # the fill waits for the member's reconstruction, then is one group again
        assert waits(s, "calib", group_by="fill") == [f"fill 10 waits: run {member} reco reprocess"]
        assert groups(s, "calib", group_by="fill") == []
        finish(s, "reco", member)
    assert groups(s, "calib", group_by="fill") == [[1, 2, 3]]


def test_luminosity_groups_reach_the_target_and_the_remainder_closes_with_its_fill(store: Store) -> None:
    lumi = {1: 0.4, 2: 0.7, 3: 0.2, 4: 0.3, 5: 0.6, 6: 1.5, 7: 0.1}
    fill = {1: 20, 2: 20, 3: 20, 4: 20, 5: 20, 6: 21, 7: 21}
    s = reco_and(store, "zee", [RunSpec(r, fill[r], {"lumi": v, "era": "Run2026C"}) for r, v in lumi.items()])
    finish(s, "reco", 1, 2, 3, 5, 6, 7)
    # fill 20: 1+2 reach 1.0; then 3 waits for run 4's reconstruction; fill 21: 6 alone reaches it, 7 waits
    assert waits(s, "zee", group_by="lumi", lumi_target=1.0) == [
        "lumi group of fill 20 from run 3 waits: run 4 reco new (0.2 of 1 lumi)",
        "lumi group of fill 21 from run 7 waits: fill not ended (0.1 of 1 lumi)"]
    assert groups(s, "zee", group_by="lumi", lumi_target=1.0) == [[1, 2], [6]]
    finish(s, "reco", 4)
    assert groups(s, "zee", group_by="lumi", lumi_target=1.0) == [[3, 4, 5]]  # 0.2 + 0.3 + 0.6
    assert s.close_fill(C, 21, "dumped")
    assert groups(s, "zee", group_by="lumi", lumi_target=1.0) == [[7]]  # below target: its fill ended
    assert statuses(s, "zee") == {1: "merged", 2: "processing", 3: "merged", 4: "merged", 5: "processing",
                                  6: "processing", 7: "processing"}


def test_era_groups_close_when_a_later_era_starts(store: Store) -> None:
    s = reco_and(store, "legacy", [RunSpec(r, 30 + r, {"era": "Run2026C"}) for r in (1, 2, 3)])
    finish(s, "reco", 1, 2, 3)
    assert waits(s, "legacy", group_by="era") == ["era Run2026C waits: era not ended (no run of a later era yet)"]
    s.inject_runs(C, [RunSpec(4, 40, {"era": "Run2026D"})])
    assert groups(s, "legacy", group_by="era") == [[1, 2, 3]]
    assert groups(s, "legacy", group_by="era") == []


def test_grouping_arguments_are_checked(fills: Store) -> None:
    for how, match in (({"group_by": "lumi"}, "needs a luminosity target"),
                       ({"group_by": "lumi", "lumi_target": 0}, "needs a luminosity target"),
                       ({"group_by": "fill", "lumi_target": 1.0}, "lumi only"),
                       ({"group_by": "week"}, "unknown grouping 'week'")):
        with pytest.raises(Invalid, match=match):
            fills.claim(C, "reco", **how)
    assert set(statuses(fills, "reco").values()) == {"new"}


def test_claim_group_by_lumi_and_era_on_the_command_line(sqlite_url: str) -> None:
    with Store.open(sqlite_url, actor="tester", create=True) as store:
        reco_and(store, "zee", [RunSpec(r, 40, {"lumi": 0.5, "era": "Run2026C"}) for r in (1, 2, 3)])
        finish(store, "reco", 1, 2, 3)
    claims = as_json(sqlite_url, "claim", "-c", C, "--task", "zee", "--group-by", "lumi", "--lumi-target", "1")
    assert [(c["leader"], c["merged"]) for c in claims] == [(2, [1])]  # run 3 waits: fill 40 has not ended
    assert as_json(sqlite_url, "claim", "-c", C, "--task", "zee", "--group-by", "era") == []
    bad = invoke(sqlite_url, "claim", "-c", C, "--task", "zee", "--group-by", "lumi", "--lumi-target", "0")
    assert bad.exit_code == 2 and "--lumi-target" in bad.stderr
