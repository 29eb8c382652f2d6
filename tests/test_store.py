"""The typed API's behaviour on a real database (SQLite file and PostgreSQL): every refusal writes nothing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from drive import audit_count, drive_instance, only, snapshot, start_jobs

from ecalstate import (
    Conflict,
    EcalStateError,
    Invalid,
    JobUpdate,
    NotFound,
    Refused,
    RunSpec,
    Store,
    TaskStatus,
    TransitionNotAllowed,
)
from ecalstate.filters import parse_filter, parse_runs
from ecalstate.statemachine import UnknownStatus

T = TaskStatus


def refused_and_unchanged(store: Store, call: Callable[[], Any], error: type[Exception], match: str) -> Exception:
    """``call`` raises ``error`` (message matching ``match``) and leaves every table as it was."""
    before = snapshot(store)
    with pytest.raises(error, match=match) as caught:
        call()
    assert snapshot(store) == before
    return caught.value


def statuses(store: Store, task: str, campaign: str = "prompt") -> dict[int, str]:
    return {r["run_number"]: r["status"] for r in store.list_runs(campaign, task=task)}


def finish(store: Store, task: str, run: int, jids: tuple[int, ...] = (0,), status: str = "done") -> None:
    """Claim ``run`` alone, create its jobs and move them all to ``status``."""
    start_jobs(store, "prompt", task, run, jids)
    store.update_jobs("prompt", task, [JobUpdate(run, j, status) for j in jids])


# --- campaigns --------------------------------------------------------------------------------------

def test_campaigns_are_created_listed_and_unique(store: Store) -> None:
    store.create_campaign("prompt", description="2024 prompt")
    store.create_campaign("rereco-2023", kind="reprocessing")
    assert [(c.name, c.kind, c.description) for c in store.list_campaigns()] == [
        ("prompt", "prompt", "2024 prompt"), ("rereco-2023", "reprocessing", "")]
    assert [r.name for r in store.list_rtypes("prompt")] == ["all"]
    refused_and_unchanged(store, lambda: store.create_campaign("prompt"), Invalid, "campaign 'prompt' already exists")
    refused_and_unchanged(store, lambda: store.create_campaign("bad name"), Invalid, "invalid campaign name")
    refused_and_unchanged(store, lambda: store.create_campaign("x", kind="weekly"), Invalid, "invalid campaign kind")


@pytest.mark.parametrize("call", [
    pytest.param(lambda s: s.list_tasks("nope"), id="list_tasks"),
    pytest.param(lambda s: s.add_task("nope", "reco"), id="add_task"),
    pytest.param(lambda s: s.inject_runs("nope", [RunSpec(1)]), id="inject_runs"),
    pytest.param(lambda s: s.claim("nope", "reco"), id="claim"),
    pytest.param(lambda s: s.set_status("nope", "reco", [1], "done", reason="x"), id="set_status"),
    pytest.param(lambda s: s.health("nope"), id="health"),
])
def test_unknown_campaign_is_not_found(chain: Store, call: Callable[[Store], Any]) -> None:
    refused_and_unchanged(chain, lambda: call(chain), NotFound, "unknown campaign 'nope'")


@pytest.mark.parametrize("call", [
    pytest.param(lambda s: s.claim("prompt", "fit"), id="claim"),
    pytest.param(lambda s: s.create_jobs("prompt", "fit", 1, [0]), id="create_jobs"),
    pytest.param(lambda s: s.update_jobs("prompt", "fit", [JobUpdate(1, 0, "done")]), id="update_jobs"),
    pytest.param(lambda s: s.reprocess("prompt", "fit", runs=[1], reason="x"), id="reprocess"),
    pytest.param(lambda s: s.update_rtype("prompt", "all", add=["fit"]), id="update_rtype"),
    pytest.param(lambda s: s.heartbeat("prompt", "fit", "check"), id="heartbeat"),
])
def test_unknown_task_is_not_found(chain: Store, call: Callable[[Store], Any]) -> None:
    refused_and_unchanged(chain, lambda: call(chain), NotFound, "unknown task 'fit' in campaign 'prompt'")


# --- tasks ----------------------------------------------------------------------------------------------

def test_tasks_and_dependencies(chain: Store) -> None:
    assert [(t.name, t.depends_on, t.max_retries) for t in chain.list_tasks("prompt")] == [
        ("reco", [], 2), ("calib", ["reco"], 1), ("plots", ["calib"], 0)]
    s = chain
    refused_and_unchanged(s, lambda: s.add_task("prompt", "reco"), Invalid, "task 'reco' already exists")
    refused_and_unchanged(s, lambda: s.add_task("prompt", "fit", depends_on=["nope"]), NotFound, "unknown task 'nope'")
    refused_and_unchanged(s, lambda: s.add_task("prompt", "fit", depends_on=["fit"]), Invalid,
                          "cannot depend on itself")
    refused_and_unchanged(s, lambda: s.add_task("prompt", "fit", max_retries=-1), Invalid, "invalid max retries")
    refused_and_unchanged(s, lambda: s.update_task("prompt", "reco", depends_on=["plots"]), Invalid,
                          "task 'reco' cannot depend on 'plots': that closes a dependency cycle")
    refused_and_unchanged(s, lambda: s.update_task("prompt", "calib", depends_on=["calib"]), Invalid, "closes a dep")
    refused_and_unchanged(s, lambda: s.update_task("prompt", "calib", depends_on=["nope"]), NotFound, "unknown task")
    info = s.update_task("prompt", "plots", depends_on=["reco", "calib"], max_retries=5)
    assert (info.depends_on, info.max_retries) == (["reco", "calib"], 5)
    assert s.list_tasks("prompt")[2].depends_on == ["reco", "calib"]


# --- the filter language ------------------------------------------------------------------------------

@pytest.mark.parametrize(("expr", "record", "expected"), [
    pytest.param("class=Collisions", {"class": "Collisions"}, True, id="= text"),
    pytest.param("class=Collisions", {"class": "Cosmics"}, False, id="= text mismatch"),
    pytest.param("class!=Cosmics", {"class": "Collisions"}, True, id="!= text"),
    pytest.param("nevents>=1000", {"nevents": 1000}, True, id=">= equal"),
    pytest.param("nevents>=1000", {"nevents": 999}, False, id=">= below"),
    pytest.param("nevents>1000", {"nevents": 1000}, False, id="> equal"),
    pytest.param("nevents<=5", {"nevents": 5}, True, id="<= equal"),
    pytest.param("nevents<5", {"nevents": 4.5}, True, id="< float"),
    pytest.param("nevents>9", {"nevents": 10}, True, id="numeric, not text order (10 > 9)"),
    pytest.param("nevents>9", {"nevents": "10"}, True, id="numeric strings compare as numbers"),
    pytest.param("era>Run2022A", {"era": "Run2022B"}, True, id="text order"),
    pytest.param("era<9", {"era": "Run2022B"}, False, id="text vs number compares as text"),
    pytest.param("lumi=1e3", {"lumi": 1000}, True, id="numeric equality across notations"),
    pytest.param("global=true", {"global": True}, True, id="boolean metadata"),
    pytest.param("nevents>=1", {"class": "Collisions"}, False, id="missing key fails the clause"),
    pytest.param("class!=Cosmics", {}, False, id="missing key fails != too"),
    pytest.param("nevents>=1", {"nevents": None}, False, id="null value fails"),
    pytest.param("class=Collisions, nevents>=1000", {"class": "Collisions", "nevents": 10}, False, id="AND"),
    pytest.param("", {}, True, id="empty filter matches every run"),
])
def test_filter_operators(expr: str, record: dict[str, Any], expected: bool) -> None:
    assert parse_filter(expr).matches(record) is expected


@pytest.mark.parametrize("expr", ["class", "=Collisions", "class=", "1class=x", "class=x,,nevents>1", "class~x"])
def test_invalid_filters_are_refused(store: Store, expr: str) -> None:
    store.create_campaign("prompt")
    refused_and_unchanged(store, lambda: store.create_rtype("prompt", "coll", filter=expr), Invalid,
                          "invalid filter clause")


def test_run_types_activate_tasks_on_matching_runs_and_backfill(store: Store) -> None:
    store.create_campaign("prompt")
    store.add_task("prompt", "reco")
    store.add_task("prompt", "zee", depends_on=["reco"])
    store.create_rtype("prompt", "coll", filter="class=Collisions,nevents>=1000", tasks=["zee"])
    store.update_rtype("prompt", "all", add=["reco"])
    result = store.inject_runs("prompt", [
        RunSpec(1, 7, {"class": "Collisions", "nevents": 5000}),
        RunSpec(2, 7, {"class": "Collisions", "nevents": 10}),
        RunSpec(3, 8, {"class": "Cosmics", "nevents": 5000}),
    ])
    assert (result.new, result.existing, result.instances) == ([1, 2, 3], [], 4)
    assert statuses(store, "reco") == {1: "new", 2: "new", 3: "new"}
    assert statuses(store, "zee") == {1: "new"}
    assert {r["run_number"]: r["rtypes"] for r in store.list_runs("prompt")} == {1: ["all", "coll"], 2: ["all"],
                                                                                  3: ["all"]}
    # a task added later applies to later runs only, unless backfilled
    store.add_task("prompt", "plots", depends_on=["reco"])
    assert store.update_rtype("prompt", "coll", add=["plots"]).instances == 0
    assert statuses(store, "plots") == {}
    before = audit_count(store)
    changed = store.update_rtype("prompt", "coll", filter="class=Collisions,nevents>=10", backfill=True)
    assert changed.instances == 3  # plots 1 and 2, zee 2
    assert statuses(store, "plots") == {1: "new", 2: "new"} and statuses(store, "zee") == {1: "new", 2: "new"}
    assert [r["rtypes"] for r in store.list_runs("prompt")] == [["all", "coll"], ["all", "coll"], ["all"]]
    assert audit_count(store) == before + 3
    assert {r.reason for r in store.history("prompt", limit=3)} == {"backfill"}
    assert store.update_rtype("prompt", "coll", backfill=True).instances == 0
    assert store.update_rtype("prompt", "coll", remove=["plots"]).instances == 0
    assert [(r.name, r.filter, r.tasks) for r in store.list_rtypes("prompt")] == [
        ("all", "", ["reco"]), ("coll", "class=Collisions,nevents>=10", ["zee"])]
    refused_and_unchanged(store, lambda: store.create_rtype("prompt", "coll"), Invalid, "already exists")
    refused_and_unchanged(store, lambda: store.update_rtype("prompt", "nope"), NotFound, "unknown run type 'nope'")
    refused_and_unchanged(store, lambda: store.update_rtype("prompt", "coll", add=["reco"], remove=["reco"]),
                          Invalid, "both added and removed")


# --- injection ----------------------------------------------------------------------------------------

def test_injection_is_idempotent(chain: Store) -> None:
    before = snapshot(chain)
    again = chain.inject_runs("prompt", [RunSpec(2, 10), RunSpec(1, 10)])
    assert (again.new, again.existing, again.instances) == ([], [1, 2], 0)
    assert snapshot(chain) == before
    mixed = chain.inject_runs("prompt", [RunSpec(5, 12, {"era": "C"}), RunSpec(4, 11)])
    assert (mixed.new, mixed.existing, mixed.instances) == ([5], [4], 3)
    assert chain.list_runs("prompt")[-1] == {"run_number": 5, "fill": 12, "meta": {"era": "C"}, "rtypes": ["all"],
                                            "injected_at": chain.list_runs("prompt")[-1]["injected_at"]}


@pytest.mark.parametrize(("spec", "match"), [
    pytest.param(RunSpec(0), "invalid run number 0", id="zero"),
    pytest.param(RunSpec(-5), "invalid run number -5", id="negative"),
    pytest.param(RunSpec("abc"), "invalid run number 'abc'", id="text"),  # type: ignore[arg-type]
    pytest.param(RunSpec(1.5), "invalid run number 1.5", id="float"),  # type: ignore[arg-type]
    pytest.param(RunSpec(7, "ten"), "invalid fill 'ten' for run 7", id="text fill"),  # type: ignore[arg-type]
    pytest.param(RunSpec(7, 2.5), "invalid fill 2.5", id="float fill"),  # type: ignore[arg-type]
    pytest.param(RunSpec(7, -1), "invalid fill -1", id="negative fill"),
    pytest.param(RunSpec(7, 1, {"when": object()}), "not JSON-serialisable", id="metadata"),
])
def test_bad_runs_are_refused_and_nothing_is_written(chain: Store, spec: RunSpec, match: str) -> None:
    refused_and_unchanged(chain, lambda: chain.inject_runs("prompt", [RunSpec(6, 12), spec]), Invalid, match)


def test_a_run_given_twice_with_different_values_is_refused(chain: Store) -> None:
    refused_and_unchanged(chain, lambda: chain.inject_runs("prompt", [RunSpec(6, 12), RunSpec(6, 13)]), Invalid,
                          "run 6 is given twice with different values")


def test_run_sets() -> None:
    assert parse_runs("356001-356003,356200") == [356001, 356002, 356003, 356200]
    assert parse_runs(["5", "3,4"]) == [3, 4, 5]
    for bad in ("0", "5-3", "a", "1,,2", "-4"):
        with pytest.raises(Invalid):
            parse_runs(bad)


# --- claims -----------------------------------------------------------------------------------------------

def test_claims_take_eligible_runs_in_order_up_to_the_limit(chain: Store) -> None:
    claims = chain.claim("prompt", "reco", limit=2)
    assert [(c.run_number, c.generation, c.merged, c.fill) for c in claims] == [(1, 1, [], 10), (2, 1, [], 10)]
    assert statuses(chain, "reco") == {1: "processing", 2: "processing", 3: "new", 4: "new"}
    assert [c.run_number for c in chain.claim("prompt", "reco")] == [3, 4]
    assert chain.claim("prompt", "reco") == []
    refused_and_unchanged(chain, lambda: chain.claim("prompt", "reco", limit=0), Invalid, "invalid limit 0")
    refused_and_unchanged(chain, lambda: chain.claim("prompt", "reco", group_by="week"), Invalid, "unknown grouping")


def test_grouping_by_fill_newest_run_leads(chain: Store) -> None:
    chain.inject_runs("prompt", [RunSpec(5), RunSpec(6, 11)])
    chain.close_fill("prompt", 11, "beam dumped")  # fill 10 ended when fill 11 started
    claims = chain.claim("prompt", "reco", group_by="fill")
    assert [(c.run_number, c.merged, c.runs) for c in claims] == [
        (2, [1], [1, 2]), (5, [], [5]), (6, [3, 4], [3, 4, 6])]
    assert statuses(chain, "reco") == {1: "merged", 2: "processing", 3: "merged", 4: "merged", 5: "processing",
                                       6: "processing"}
    assert [chain.instance("prompt", "reco", r).leader_run for r in (1, 2, 3, 4, 6)] == [2, None, 6, 6, None]
    assert chain.instance("prompt", "reco", 1).generation == 0 and chain.instance("prompt", "reco", 2).generation == 1


def test_dependencies_gate_eligibility_and_a_merged_run_is_done_when_its_leader_is(chain: Store) -> None:
    assert chain.claim("prompt", "calib") == []
    assert chain.eligible("prompt", "calib") == []
    chain.claim("prompt", "reco", group_by=only(1, 2))  # run 2 leads, run 1 merged
    assert chain.claim("prompt", "calib") == []  # the leader is not done yet
    start_jobs(chain, "prompt", "reco", 3, [0])
    chain.create_jobs("prompt", "reco", 2, [0, 1])
    chain.update_jobs("prompt", "reco", [JobUpdate(2, 0, "done"), JobUpdate(2, 1, "done"), JobUpdate(3, 0, "done")])
    assert statuses(chain, "reco") == {1: "merged", 2: "done", 3: "done", 4: "new"}
    assert [e.run_number for e in chain.eligible("prompt", "calib")] == [1, 2, 3]
    assert [c.run_number for c in chain.claim("prompt", "calib", limit=2)] == [1, 2]
    assert chain.claim("prompt", "plots") == []


# --- jobs -----------------------------------------------------------------------------------------------

def test_jobs_are_created_in_bulk(chain: Store) -> None:
    s = chain
    refused_and_unchanged(s, lambda: s.create_jobs("prompt", "reco", 1, [0]), Invalid, "is new, not processing")
    drive_instance(s, "prompt", "reco", 1, T.PROCESSING)
    assert s.create_jobs("prompt", "reco", 1, range(2000), fields=[{"lumi": i} for i in range(2000)]) == 2000
    jobs = s.list_jobs("prompt", "reco", run=1)
    assert len(jobs) == 2000 and {j.status for j in jobs} == {"idle"} and jobs[7].fields == {"lumi": 7}
    assert {(j.generation, j.attempts, j.version) for j in jobs} == {(1, 1, 1)}
    refused_and_unchanged(s, lambda: s.create_jobs("prompt", "reco", 1, [5, 2001]), Invalid, "job.s. 5 already exist")
    refused_and_unchanged(s, lambda: s.create_jobs("prompt", "reco", 1, [3000, 3000]), Invalid, "duplicate job ids")
    refused_and_unchanged(s, lambda: s.create_jobs("prompt", "reco", 1, [-1]), Invalid, "invalid job id -1")
    refused_and_unchanged(s, lambda: s.create_jobs("prompt", "reco", 1, []), Invalid, "no job ids")
    refused_and_unchanged(s, lambda: s.create_jobs("prompt", "reco", 9, [0]), NotFound, "no instance for run 9")
    refused_and_unchanged(s, lambda: s.create_jobs("prompt", "reco", 1, [4000], fields=[]), Invalid, "field sets")


def test_jobs_of_a_claim_that_was_aborted_and_claimed_again_are_refused(chain: Store) -> None:
    first = chain.claim("prompt", "reco", group_by=only(1))[0]
    chain.reprocess("prompt", "reco", runs=[1], reason="operator abort")
    second = chain.claim("prompt", "reco", group_by=only(1))[0]
    assert (first.generation, second.generation) == (1, 2)
    refused_and_unchanged(chain, lambda: chain.create_jobs("prompt", "reco", 1, [0], generation=first.generation),
                          Conflict, "reco run 1 was claimed again .generation 2.; the claim of generation 1 is over")
    assert chain.create_jobs("prompt", "reco", 1, [0], generation=second.generation) == 1


def test_bulk_job_updates_report_per_outcome_counts(chain: Store) -> None:
    start_jobs(chain, "prompt", "reco", 1, range(5))
    before = snapshot(chain)
    updates = [
        JobUpdate(1, 0, "running"), JobUpdate(1, 1, "running"),  # changed
        JobUpdate(1, 2, "idle"),  # unchanged
        JobUpdate(1, 9, "done"),  # refused: no such job
        JobUpdate(1, 3, "running", fields={"host": "b1"}, batch_id="42.3"),
    ]
    plan = chain.update_jobs("prompt", "reco", updates, dry_run=True)
    assert snapshot(chain) == before
    result = chain.update_jobs("prompt", "reco", updates)
    assert result.counts() == plan.counts() == {"changed": 3, "unchanged": 1, "refused": 1}
    assert result.changes == plan.changes and plan.dry_run and not result.dry_run
    assert [(c.key, c.reason) for c in result.refused] == [("reco run 1 job 9", "no such job")]
    job3 = chain.list_jobs("prompt", "reco", run=1)[3]
    assert (job3.status, job3.fields, job3.batch_id, job3.started_at is not None) == ("running", {"host": "b1"}, "42.3",
                                                                                      True)
    # an illegal transition is refused per job, the legal ones in the same call are applied
    second = chain.update_jobs("prompt", "reco", [JobUpdate(1, 0, "done"), JobUpdate(1, 4, "idle"),
                                                  JobUpdate(1, 2, "done")])
    assert second.counts() == {"changed": 2, "unchanged": 1, "refused": 0}
    third = chain.update_jobs("prompt", "reco", [JobUpdate(1, 0, "running")])
    assert [(c.outcome, c.reason) for c in third.changes] == [("refused", "not in the job table")]
    with pytest.raises(UnknownStatus):
        chain.update_jobs("prompt", "reco", [JobUpdate(1, 1, "finished")])
    refused_and_unchanged(chain, lambda: chain.update_jobs("prompt", "reco", [JobUpdate(1, 1, "done")] * 2), Invalid,
                          "appears twice")


def test_instance_is_done_when_all_jobs_are_done_with_outputs_gathered(chain: Store) -> None:
    start_jobs(chain, "prompt", "reco", 1, [0, 1])
    chain.set_job_status("prompt", "reco", 1, 1, "done", fields={"output": "/eos/b.root", "plots": "p1.png"})
    assert chain.instance("prompt", "reco", 1).status == "processing"
    before = audit_count(chain)
    result = chain.update_jobs("prompt", "reco", [JobUpdate(1, 0, "done", fields={"output": "/eos/a.root"})])
    assert [(c.entity, c.current, c.requested, c.outcome) for c in result.changes] == [
        ("job", "idle", "done", "changed"), ("task", "processing", "done", "changed")]
    assert audit_count(chain) == before + 2
    info = chain.instance("prompt", "reco", 1)
    assert (info.status, info.outputs) == ("done", {"output": "/eos/a.root,/eos/b.root", "plots": "p1.png"})


def test_instance_fails_only_when_nothing_is_left_running(chain: Store) -> None:
    chain.update_task("prompt", "reco", max_retries=0)
    start_jobs(chain, "prompt", "reco", 1, [0, 1, 2])
    chain.update_jobs("prompt", "reco", [JobUpdate(1, 0, "failed"), JobUpdate(1, 1, "running")])
    assert chain.instance("prompt", "reco", 1).status == "processing"
    chain.set_job_status("prompt", "reco", 1, 1, "done")
    assert chain.instance("prompt", "reco", 1).status == "processing"  # job 2 still idle
    chain.set_job_status("prompt", "reco", 1, 2, "done")
    assert chain.instance("prompt", "reco", 1).status == "failed"
    assert chain.history("prompt", task="reco", run=1, limit=1)[0].reason == "1 of 3 jobs failed beyond 0 retries"


def test_a_failure_within_retries_does_not_fail_the_instance(chain: Store) -> None:
    start_jobs(chain, "prompt", "reco", 1, [0, 1])
    chain.update_jobs("prompt", "reco", [JobUpdate(1, 0, "failed"), JobUpdate(1, 1, "done")])
    assert chain.instance("prompt", "reco", 1).status == "processing"
    chain.update_jobs("prompt", "reco", [JobUpdate(1, 0, "idle")])
    chain.update_jobs("prompt", "reco", [JobUpdate(1, 0, "done")])
    assert chain.instance("prompt", "reco", 1).status == "done"
    assert chain.list_jobs("prompt", "reco", run=1)[0].attempts == 2


def test_complete_instances_sweeps_processing_instances(chain: Store) -> None:
    finish(chain, "reco", 1)
    assert chain.complete_instances("prompt", "reco").changes == []
    assert statuses(chain, "reco")[1] == "done"


# --- operator transitions and reprocessing ---------------------------------------------------------------

def test_set_is_all_or_nothing_and_dry_run_matches(chain: Store) -> None:
    drive_instance(chain, "prompt", "reco", 1, T.PROCESSING)
    drive_instance(chain, "prompt", "reco", 2, T.PROCESSING)
    before = snapshot(chain)
    plan = chain.set_status("prompt", "reco", [1, 2, 3], "failed", reason="bad calib", dry_run=True)
    assert plan.counts() == {"changed": 2, "unchanged": 0, "refused": 1} and snapshot(chain) == before
    err = refused_and_unchanged(chain, lambda: chain.set_status("prompt", "reco", [1, 2, 3], "failed", reason="x"),
                                TransitionNotAllowed, "reco run 3: transition new -> failed not allowed")
    assert isinstance(err, Refused) and err.result == plan.__class__(plan.changes)
    refused_and_unchanged(chain, lambda: chain.set_status("prompt", "reco", [1, 99], "failed", reason="x"), Refused,
                          "reco run 99: None -> failed: no such task instance")
    refused_and_unchanged(chain, lambda: chain.set_status("prompt", "reco", [1], "failed", reason=" "), Invalid,
                          "a reason is required")
    refused_and_unchanged(chain, lambda: chain.set_status("prompt", "reco", [1], "finished", reason="x"),
                          UnknownStatus, "unknown task instance status 'finished'")
    plan = chain.set_status("prompt", "reco", [1, 2], "failed", reason="bad calib", dry_run=True)
    real = chain.set_status("prompt", "reco", [1, 2], "failed", reason="bad calib")
    assert real.changes == plan.changes and real.counts() == {"changed": 2, "unchanged": 0, "refused": 0}
    assert statuses(chain, "reco") == {1: "failed", 2: "failed", 3: "new", 4: "new"}
    again = chain.set_status("prompt", "reco", [1], "failed", reason="bad calib")
    assert again.counts() == {"changed": 0, "unchanged": 1, "refused": 0}


def test_reprocess_by_runs_and_failed_opens_a_new_generation(chain: Store) -> None:
    finish(chain, "reco", 1, jids=(0, 1))
    finish(chain, "reco", 2)
    chain.set_status("prompt", "reco", [2], "reprocess", reason="wrong tag")
    drive_instance(chain, "prompt", "reco", 3, T.FAILED)
    assert statuses(chain, "reco") == {1: "done", 2: "reprocess", 3: "failed", 4: "new"}
    result = chain.reprocess("prompt", "reco", failed=True, runs=[1], reason="new conditions")
    assert sorted((c.key, c.current, c.outcome) for c in result.changes) == [
        ("reco run 1", "done", "changed"), ("reco run 3", "failed", "changed")]
    claims = chain.claim("prompt", "reco", limit=1)
    assert [(c.run_number, c.generation) for c in claims] == [(1, 2)]
    assert chain.list_jobs("prompt", "reco", run=1) == []
    chain.create_jobs("prompt", "reco", 1, [0])
    assert [(j.generation, j.jid, j.status) for j in chain.list_jobs("prompt", "reco", run=1, all_generations=True)] \
        == [(1, 0, "done"), (1, 1, "done"), (2, 0, "idle")]
    assert [(j.generation, j.jid) for j in chain.list_jobs("prompt", "reco", run=1)] == [(2, 0)]
    # an old generation's job is still addressable, and its change does not complete the new generation
    refused = chain.update_jobs("prompt", "reco", [JobUpdate(1, 1, "idle", generation=1)])
    assert refused.refused[0].reason == "not in the job table"
    history = [(r.from_status, r.to_status) for r in chain.history("prompt", task="reco", run=1, limit=None)
               if r.entity == "task"]
    assert history == [(None, "new"), ("new", "processing"), ("processing", "done"), ("done", "reprocess"),
                       ("reprocess", "processing")]
    refused_and_unchanged(chain, lambda: chain.reprocess("prompt", "reco", reason="x"), Invalid, "nothing selected")


def test_reprocess_downstream_cascades_and_leaders_take_their_merged_runs(chain: Store) -> None:
    chain.close_fill("prompt", 11, "beam dumped")
    chain.claim("prompt", "reco", group_by="fill")  # 2 leads 1, 4 leads 3
    for run in (2, 4):
        chain.create_jobs("prompt", "reco", run, [0])
        chain.set_job_status("prompt", "reco", run, 0, "done")
    finish(chain, "calib", 1)
    finish(chain, "calib", 2)
    finish(chain, "plots", 1)
    assert statuses(chain, "calib") == {1: "done", 2: "done", 3: "new", 4: "new"}
    before = snapshot(chain)
    plan = chain.reprocess("prompt", "reco", runs=[2], downstream=True, reason="bad tag", dry_run=True)
    assert snapshot(chain) == before
    result = chain.reprocess("prompt", "reco", runs=[2], downstream=True, reason="bad tag")
    assert result.changes == plan.changes
    assert sorted((c.key, c.current, c.outcome, c.reason) for c in result.changes) == [
        ("calib run 1", "done", "changed", "cascade"),
        ("calib run 2", "done", "changed", "cascade"),
        ("plots run 1", "done", "changed", "cascade"),
        ("plots run 2", "new", "unchanged", "not processed yet"),
        ("reco run 1", "merged", "changed", "cascade"),
        ("reco run 2", "done", "changed", ""),
    ]
    assert statuses(chain, "reco") == {1: "reprocess", 2: "reprocess", 3: "merged", 4: "done"}
    assert chain.instance("prompt", "reco", 1).leader_run is None
    cascade = chain.history("prompt", limit=5)
    assert {r.reason for r in cascade} == {"bad tag", "bad tag (cascade)"}
    # without --downstream only the task and its merged runs move
    only_reco = chain.reprocess("prompt", "reco", runs=[4], reason="bad tag")
    assert sorted(c.key for c in only_reco.changes) == ["reco run 3", "reco run 4"]
    assert statuses(chain, "calib") == {1: "reprocess", 2: "reprocess", 3: "new", 4: "new"}


def test_a_refused_reprocess_writes_nothing(chain: Store) -> None:
    finish(chain, "reco", 1)
    refused_and_unchanged(chain, lambda: chain.reprocess("prompt", "reco", runs=[1, 3], reason="x"),
                          TransitionNotAllowed, "reco run 3: transition new -> reprocess not allowed")
    assert chain.reprocess("prompt", "reco", runs=[1, 3], reason="x", dry_run=True).counts() == {
        "changed": 1, "unchanged": 0, "refused": 1}


# --- request ids --------------------------------------------------------------------------------------------

def test_request_id_replay_returns_the_first_outcome_and_writes_nothing(chain: Store) -> None:
    chain.close_fill("prompt", 11, "beam dumped")
    first = chain.claim("prompt", "reco", limit=2, group_by="fill", request_id="build-17")
    assert [c.runs for c in first] == [[1, 2], [3, 4]]
    chain.inject_runs("prompt", [RunSpec(5, 12)])
    before = snapshot(chain)
    assert chain.claim("prompt", "reco", limit=2, group_by="fill", request_id="build-17") == first
    assert snapshot(chain) == before
    chain.create_jobs("prompt", "reco", 2, [0, 1], request_id="build-17-jobs")
    assert chain.create_jobs("prompt", "reco", 2, [0, 1], request_id="build-17-jobs") == 2
    change = chain.set_job_status("prompt", "reco", 2, 0, "running", request_id="check-1")
    before = snapshot(chain)
    assert chain.set_job_status("prompt", "reco", 2, 0, "running", request_id="check-1") == change
    bulk = chain.update_jobs("prompt", "reco", [JobUpdate(2, 0, "done"), JobUpdate(2, 1, "done")], request_id="c2")
    assert chain.update_jobs("prompt", "reco", [JobUpdate(2, 0, "done"), JobUpdate(2, 1, "done")],
                             request_id="c2") == bulk
    assert bulk.changed == 3
    op = chain.reprocess("prompt", "reco", runs=[2], reason="x", request_id="op-1")
    assert chain.reprocess("prompt", "reco", runs=[2], reason="x", request_id="op-1") == op
    injected = chain.inject_runs("prompt", [RunSpec(6, 12)], request_id="inj-1")
    assert chain.inject_runs("prompt", [RunSpec(6, 12)], request_id="inj-1") == injected
    refused_and_unchanged(chain, lambda: chain.claim("prompt", "reco", request_id="op-1"), Conflict,
                          "request id 'op-1' was already used for a reprocess call")
    refused_and_unchanged(chain, lambda: chain.claim("prompt", "reco", request_id=" "), Invalid, "must not be blank")


def test_a_refused_call_does_not_burn_its_request_id(chain: Store) -> None:
    with pytest.raises(TransitionNotAllowed):
        chain.set_status("prompt", "reco", [1], "done", reason="x", request_id="r1")
    drive_instance(chain, "prompt", "reco", 1, T.PROCESSING)
    assert chain.set_status("prompt", "reco", [1], "done", reason="x", request_id="r1").changed == 1


# --- history, overview, health ---------------------------------------------------------------------------------

def test_history_is_complete_ordered_and_filterable(chain: Store) -> None:
    finish(chain, "reco", 1)
    rows = chain.history("prompt", limit=None)
    assert [r.id for r in rows] == sorted(r.id for r in rows) and len(rows) == audit_count(chain)
    assert [(r.entity, r.from_status, r.to_status) for r in chain.history("prompt", task="reco", run=1, limit=None)] \
        == [("task", None, "new"), ("task", "new", "processing"), ("job", None, "idle"), ("job", "idle", "done"),
            ("task", "processing", "done")]
    last = chain.history("prompt", limit=2)
    assert last == rows[-2:]
    assert all(r.ts.endswith("Z") and len(r.ts) == 27 and r.actor == "tester" for r in rows)
    assert [r.jid for r in chain.history("prompt", entity="job", limit=None)] == [0, 0]
    refused_and_unchanged(chain, lambda: chain.history("prompt", task="nope"), NotFound, "unknown task")


def test_overview_matrix(chain: Store) -> None:
    finish(chain, "reco", 1)
    drive_instance(chain, "prompt", "reco", 2, T.FAILED)
    view = chain.overview("prompt")
    assert view.tasks == ["reco", "calib", "plots"]
    assert [(r.run_number, r.fill, r.statuses) for r in view.rows][:2] == [
        (1, 10, {"reco": "done", "calib": "new", "plots": "new"}),
        (2, 10, {"reco": "failed", "calib": "new", "plots": "new"})]
    assert view.totals["reco"] == {"new": 2, "processing": 0, "done": 1, "failed": 1, "merged": 0, "reprocess": 0,
                                   "skipped": 0}
    assert view.blocked == [("calib", 2)]
    narrow = chain.overview("prompt", tasks=["calib"], runs=[1, 2])
    assert [r.statuses for r in narrow.rows] == [{"calib": "new"}, {"calib": "new"}]


def test_health_stuck_is_null_safe(chain: Store) -> None:
    drive_instance(chain, "prompt", "reco", 1, T.PROCESSING)  # claimed, never got jobs
    start_jobs(chain, "prompt", "reco", 2, [0, 1])  # jobs that never started
    assert chain.health("prompt", stuck_after=3600).stuck == []
    health = chain.health("prompt", stuck_after=0)
    assert [(s.task, s.run_number, s.jobs) for s in health.stuck] == [("reco", 1, 0), ("reco", 2, 2)]
    assert not health.ok
    assert chain.overview("prompt", stuck_after=0).stuck == [("reco", 1), ("reco", 2)]


def test_an_instance_progresses_when_any_of_its_current_jobs_changes(chain: Store) -> None:
    """Progress is the current generation's newest job change (schema 7 stores no mark): an old change of one job
    does not make the instance stuck while another changed since; once none did, ``since`` is the newest."""
    start_jobs(chain, "prompt", "reco", 2, [0, 1])
    base = datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(days=1)  # after every audit row so far

    def at(hours: int) -> str:
        return (base + timedelta(hours=hours)).isoformat(timespec="microseconds") + "Z"

    times = iter([at(0), at(2)])
    chain.clock = lambda: next(times)  # type: ignore[method-assign]
    chain.set_job_status("prompt", "reco", 2, 0, "running")
    chain.set_job_status("prompt", "reco", 2, 1, "running")  # two hours later
    chain.clock = lambda: at(3)  # type: ignore[method-assign]
    assert chain.health("prompt", stuck_after=2 * 3600).stuck == []  # job 1 changed an hour ago
    stuck = chain.health("prompt", stuck_after=1800).stuck
    assert [(s.run_number, s.since, s.jobs) for s in stuck] == [(2, at(2), 2)]


def test_health_silent_and_failing_handlers(chain: Store) -> None:
    assert chain.health("prompt").ok
    chain.heartbeat("prompt", "reco", "submit")
    chain.heartbeat("prompt", "reco", "check", ok=False, message="schedd unreachable")
    assert audit_count(chain) == 12  # heartbeats are audited as 'handler', not as transitions
    health = chain.health("prompt", silent_after=3600)
    assert health.silent == [] and [(f.stage, f.message) for f in health.failing] == [("check", "schedd unreachable")]
    silent = chain.health("prompt", silent_after=0)
    assert [(s.task, s.stage) for s in silent.silent] == [("reco", "check"), ("reco", "submit")]
    chain.heartbeat("prompt", "reco", "check")
    assert chain.health("prompt", silent_after=3600).ok
    refused_and_unchanged(chain, lambda: chain.heartbeat("prompt", "reco", "deploy"), Invalid, "unknown stage")
    assert [r.entity for r in chain.history("prompt", limit=3)] == ["handler"] * 3


def test_health_blocked_downstream_of_a_failed_upstream(chain: Store) -> None:
    drive_instance(chain, "prompt", "reco", 3, T.FAILED)
    chain.claim("prompt", "reco", group_by=only(1, 2))
    chain.set_status("prompt", "reco", [2], "failed", reason="x")  # run 1 is merged into a failed leader
    health = chain.health("prompt", stuck_after=3600)
    assert health.blocked == [("prompt", "calib", 1), ("prompt", "calib", 2), ("prompt", "calib", 3)]
    assert not health.ok
    chain.reprocess("prompt", "reco", failed=True, reason="retry")
    assert chain.health("prompt").blocked == []


def test_errors_are_library_errors(chain: Store) -> None:
    for call in (lambda: chain.list_jobs("prompt", "reco", status="finished"),
                 lambda: chain.list_runs("prompt", status="done"),
                 lambda: chain.instance("prompt", "reco", 99)):
        with pytest.raises(EcalStateError):
            call()


@pytest.mark.parametrize("name", ["time", "campaign", "run_number", "fill", "rtype", "Time"])
def test_task_names_reserved_by_the_run_measurement_are_refused(store: Store, name: str) -> None:
    store.create_campaign("prompt")
    with pytest.raises(Invalid, match="reserved"):
        store.add_task("prompt", name)
    assert store.list_tasks("prompt") == []
