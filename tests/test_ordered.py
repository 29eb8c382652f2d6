"""Ordered tasks (issue 24, part 3): a conditions upload is claimed strictly in run order, as Tier-0 takes conditions.

A claim of an ordered task takes only the lowest run whose instance is not finished (done, skipped, or merged into a
done leader), and only when nothing of the task is in flight; a run without an instance is not waited for; grouped
(by fill), the fills are claimed in order; the claims' deadline order never reorders it. The property test runs
several submit stages in real processes on both engines with random skips and failures, and reads the order back
from the audit trail.
"""

from __future__ import annotations

import multiprocessing
import random
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from cli_support import as_json, invoke, ok
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecalstate import RunSpec, Store
from ecalstate.errors import Conflict, EcalStateError, Invalid

C = "prompt"


def ago(hours: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def upload(store: Store) -> Store:
    """calib -> upload (ordered) on runs 1-6: fills 10 (1, 2), 11 (3, 4), 12 (5, 6); calib done everywhere."""
    store.create_campaign(C)
    store.add_task(C, "calib")
    store.add_task(C, "upload", depends_on=["calib"], max_retries=0, ordered=True)
    store.update_rtype(C, "all", add=["calib", "upload"])
    store.inject_runs(C, [RunSpec(r, 10 + (r - 1) // 2) for r in range(1, 7)])
    finish(store, "calib", range(1, 7))
    return store


def finish(store: Store, task: str, runs: Any, status: str = "done", group_by: Any = None) -> list[int]:
    """Claim ``task`` (everything it may take now) and decide the claims of ``runs`` with one job each."""
    taken = []
    for claim in store.claim(C, task, group_by=group_by):
        taken.append(claim.run_number)
        if claim.run_number in runs:
            store.create_jobs(C, task, claim.run_number, [0])
            store.set_job_status(C, task, claim.run_number, 0, status)
    return taken


def statuses(store: Store, task: str = "upload") -> dict[int, str]:
    return {r["run_number"]: r["status"] for r in store.list_runs(C, task=task)}


def test_an_ordered_task_is_claimed_one_run_at_a_time_in_run_order(upload: Store) -> None:
    assert upload.list_tasks(C)[1].ordered and not upload.list_tasks(C)[0].ordered
    assert finish(upload, "upload", []) == [1]  # everything is eligible, the lowest run only
    assert upload.claim(C, "upload") == []  # run 1 in flight: nothing else
    upload.create_jobs(C, "upload", 1, [0])
    upload.set_job_status(C, "upload", 1, 0, "done")
    assert finish(upload, "upload", [2]) == [2]
    upload.set_status(C, "upload", [3], "skipped", reason="ECAL off")  # skipped: not waited for
    assert finish(upload, "upload", [4], status="failed") == [4]
    assert upload.claim(C, "upload") == []  # run 4 failed: run 5 waits for it
    plan = upload.plan(C, "upload")
    assert plan.groups == [] and [str(w) for w in plan.waiting] == [
        "run 5 waits: in run order after run 4 (failed)", "run 6 waits: in run order after run 4 (failed)"]
    assert [c.kind for w in plan.waiting for c in w.causes] == ["ordered", "ordered"]
    upload.reprocess(C, "upload", runs=[4], reason="retry the upload")
    assert finish(upload, "upload", [4]) == [4]
    assert finish(upload, "upload", [5]) == [5]
    assert statuses(upload) == {1: "done", 2: "done", 3: "skipped", 4: "done", 5: "done", 6: "new"}


def test_a_run_not_ready_upstream_holds_the_later_ones_and_a_run_without_an_instance_is_not_waited_for(
        upload: Store) -> None:
    upload.update_rtype(C, "all", filter="kind=physics")  # run 9 matches no run type: it has no instance at all
    upload.inject_runs(C, [RunSpec(r, 13, {"kind": "physics" if r != 9 else "cosmics"}) for r in (7, 8, 9, 10)])
    upload.set_status(C, "upload", range(1, 7), "skipped", reason="not this time")
    finish(upload, "calib", [8, 10])  # run 7's calibration is still processing
    assert upload.instance(C, "calib", 7).status == "processing"
    assert upload.claim(C, "upload") == []  # 7 is not ready upstream: 8 and 10 wait for it
    upload.create_jobs(C, "calib", 7, [0])
    upload.set_job_status(C, "calib", 7, 0, "done")
    assert finish(upload, "upload", [7]) == [7]
    assert finish(upload, "upload", [8]) == [8]
    assert finish(upload, "upload", [10]) == [10]  # run 9 has no upload instance: not waited for


def test_grouped_by_fill_the_fills_are_claimed_in_order(upload: Store) -> None:
    assert finish(upload, "upload", [], group_by="fill") == [2]  # fill 10, led by its last run
    assert upload.claim(C, "upload", group_by="fill") == []  # fill 10 in flight (run 1 merged into a processing run)
    upload.create_jobs(C, "upload", 2, [0])
    upload.set_job_status(C, "upload", 2, 0, "done")
    assert [(c.run_number, c.runs) for c in upload.claim(C, "upload", group_by="fill")] == [(4, [3, 4])]


def test_the_deadline_order_never_reorders_an_ordered_task(upload: Store) -> None:
    """With a deadline, a claim takes what can still make it first: run 1 missed it, run 2 has not. Ordered, run 1
    still goes first (and without ``ordered`` the deadline order would take run 2: the test can fail)."""
    upload.add_task(C, "free", depends_on=["calib"], deadline=3600)
    upload.update_rtype(C, "all", add=["free"], backfill=True)
    upload.update_task(C, "upload", deadline=3600)
    with upload.db.tx(write=True) as tx:  # run 1 ended 2 h ago (missed), the others 10 min ago
        tx.run("UPDATE run SET ended_at = ? WHERE run_number = 1", (ago(2).replace("Z", ".000000Z"),))
        tx.run("UPDATE run SET ended_at = ? WHERE run_number > 1", (ago(1 / 6).replace("Z", ".000000Z"),))
    assert [e.run_number for e in upload.eligible(C, "free")][:2] == [2, 3]  # the deadline order, unordered
    assert [c.run_number for c in upload.claim(C, "free", limit=1)] == [2]
    assert [c.run_number for c in upload.claim(C, "upload", limit=1)] == [1]


def test_a_gate_and_ordered_exclude_each_other_and_settings_are_kept(upload: Store) -> None:
    with pytest.raises(Invalid, match="ordered"):
        upload.update_task(C, "upload", gate=True)
    info = upload.update_task(C, "upload", deadline=7200, ordered=False)
    assert (info.ordered, info.deadline) == (False, 7200)
    info = upload.update_task(C, "upload", ordered=True)
    assert (info.ordered, info.deadline) == (True, 7200)  # the other settings stay


def test_task_options_on_the_command_line(sqlite_url: str) -> None:
    with Store.open(sqlite_url, actor="setup", create=True) as store:
        store.create_campaign(C)
    ok(sqlite_url, "task", "add", "-c", C, "calib")
    out = ok(sqlite_url, "task", "add", "-c", C, "upload", "--depends-on", "calib", "--ordered").stdout
    assert "claimed in run order" in out
    (upload,) = [t for t in as_json(sqlite_url, "task", "list", "-c", C) if t["name"] == "upload"]
    assert upload["ordered"] is True and upload["gate"] is False
    assert "in run order" in ok(sqlite_url, "task", "list", "-c", C).stdout
    ok(sqlite_url, "task", "update", "-c", C, "upload", "--not-ordered")
    (upload,) = [t for t in as_json(sqlite_url, "task", "list", "-c", C) if t["name"] == "upload"]
    assert upload["ordered"] is False
    refused = invoke(sqlite_url, "task", "add", "-c", C, "both", "--ordered", "--gate")
    assert refused.exit_code == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "Traceback" not in refused.stderr
    assert [t["name"] for t in as_json(sqlite_url, "task", "list", "-c", C)] == ["calib", "upload"]


# ------------------------------------------------------------------ the property: concurrent submit stages


def stage(url: str, worker: int, fates: dict[int, str], group_by: Any, barrier: Any, out: Any) -> None:
    """A submit stage looping until the task is finished: it claims one group at a time and decides it (done, or
    failed then skipped by the operator, as its fate says); now and then it skips a run not claimed yet."""
    rng = random.Random(worker)
    claims: list[list[int]] = []
    errors: list[str] = []
    with Store.open(url, actor=f"stage-{worker}") as store:
        barrier.wait()
        for _ in range(2000):
            try:
                left = store.list_runs(C, task="upload", status="new")
                if not left and not store.list_runs(C, task="upload", status="processing") and not \
                        store.list_runs(C, task="upload", status="failed"):
                    break
                if left and rng.random() < 0.1:  # an operator's skip, at any time
                    run = rng.choice(left)["run_number"]
                    try:
                        store.set_status(C, "upload", [run], "skipped", reason="operator")
                    except (Conflict, EcalStateError):
                        pass  # claimed meanwhile: not skippable any more
                for claim in store.claim(C, "upload", limit=1, group_by=group_by):
                    claims.append(claim.runs)
                    store.create_jobs(C, "upload", claim.run_number, [0], generation=claim.generation)
                    failed = fates[claim.run_number] == "fail"
                    store.set_job_status(C, "upload", claim.run_number, 0, "failed" if failed else "done")
                    if failed:
                        store.set_status(C, "upload", [claim.run_number], "skipped", reason="upload failed")
            except Exception as err:  # noqa: BLE001 - every error is a finding
                errors.append(f"{type(err).__name__}: {err}")
    out.put((worker, claims, errors))


def check_order(store: Store) -> list[int]:
    """Replay the task's audit rows in order: a claim (its leader's row, then the rows of the runs merged into it)
    takes runs above every run claimed before, while nothing is in flight and every earlier instance is finished;
    no run is claimed twice. The runs claimed, in order."""
    rows = [(r.run_number, r.to_status, r.reason) for r in store.history(C, task="upload", entity="task", limit=None)]
    state: dict[int, str] = {}
    leader: dict[int, int] = {}
    claimed: list[int] = []
    for i, (run, to, _) in enumerate(rows):
        assert run is not None
        if to == "processing":
            group = [run] + [r for r, t, why in rows[i + 1:i + 1 + len(rows)] if t == "merged"
                             and why == f"merged into run {run}"]
            assert not set(group) & set(claimed), f"runs {group} claimed twice"
            assert not claimed or min(group) > max(claimed), f"runs {group} claimed after run {max(claimed)}"
            assert "processing" not in state.values(), f"runs {group} claimed while another is in flight"
            finished = {r for r, s in state.items() if s in ("done", "skipped")
                        or (s == "merged" and state.get(leader[r]) == "done")}
            early = [r for r in state if r < min(group) and r not in finished]
            assert not early, f"runs {group} claimed before runs {early} finished"
            claimed += sorted(group)
            leader.update((r, run) for r in group if r != run)
        elif to == "merged":
            assert run in leader, f"run {run} merged outside a claim"
        state[run] = to
    return claimed


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(runs=st.integers(12, 40), fates=st.lists(st.sampled_from(["done", "done", "done", "fail", "skip"]),
                                                 min_size=40, max_size=40),
       by_fill=st.booleans(), stages=st.integers(2, 4))
def test_concurrent_submit_stages_claim_an_ordered_task_in_run_order_never_twice(
        engine_url: Any, runs: int, fates: list[str], by_fill: bool, stages: int) -> None:
    url = engine_url()
    fate = {r: fates[r - 1] for r in range(1, runs + 1)}
    with Store.open(url, actor="setup", create=True) as store:
        store.create_campaign(C)
        store.add_task(C, "upload", max_retries=0, ordered=True)
        store.update_rtype(C, "all", add=["upload"])
        store.inject_runs(C, [RunSpec(r, r // 3) for r in range(1, runs + 1)])
        store.close_fill(C, runs // 3, "the last fill ended")
        skipped = [r for r, f in fate.items() if f == "skip"]
        if skipped:
            store.set_status(C, "upload", skipped, "skipped", reason="before the stages start")
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(stages), ctx.Queue()
    procs = [ctx.Process(target=stage, args=(url, w, fate, "fill" if by_fill else None, barrier, out))
             for w in range(stages)]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=240) for _ in procs]
    for proc in procs:
        proc.join(60)
    assert [p.exitcode for p in procs] == [0] * stages
    assert [e for _, _, errors in results for e in errors] == []
    with Store.open(url) as store:
        claimed = check_order(store)
        final = statuses(store)
    told = sorted(r for _, claims, _ in results for group in claims for r in group)
    assert told == sorted(claimed) == sorted(set(claimed))  # what the stages were given is what the audit says
    assert set(final.values()) <= {"done", "skipped", "merged"}
    assert all(final[r] == "skipped" for r in skipped)
    assert not set(skipped) & set(claimed)


@pytest.fixture(params=["sqlite", "postgres"])
def engine_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A maker of fresh databases on one engine (hypothesis runs many examples in one test)."""
    made: list[str] = []
    server = request.getfixturevalue("postgres") if request.param == "postgres" else None

    def make() -> str:
        if server is None:
            return str(tmp_path_factory.mktemp("ordered") / "state.db")
        made.append(server.create_database())
        return made[-1]

    yield make
    for url in made:
        try:
            server.drop_database(url.rsplit("/", 1)[1])
        except Exception:  # noqa: BLE001 - a server already stopped
            pass
