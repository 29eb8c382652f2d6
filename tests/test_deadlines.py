"""Deadlines (issue 22): the rule, the claims' order, and what the store says of each instance, on the real store.

Every time is the store's clock (``store.clock``), which these tests move; runs end when their ``end_time`` says.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecalstate import JobUpdate, RunSpec, Store
from ecalstate.clock import TS_FORMAT, to_micros
from ecalstate.deadlines import (LIVE_PRIORITY_BASE, MISSED_PRIORITY, NO_DEADLINE_PRIORITY, judge, job_priority,
                                 priority_now, urgency)
from ecalstate.errors import Invalid
from ecalstate.results import AT_RISK, DONE, DONE_LATE, MISSED, NO_END_TIME, ON_TIME, TaskSettings

C = "prompt"
T0 = datetime(2026, 6, 1, tzinfo=timezone.utc)
H = 3600
S = 1_000_000


def at(hours: float) -> str:
    """The store time ``hours`` after T0."""
    return (T0 + timedelta(hours=hours)).strftime(TS_FORMAT)


def iso(hours: float) -> str:
    """An end time as OMS writes it."""
    return (T0 + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")


class Clock:
    """The store's clock, moved by the test."""

    def __init__(self, store: Store, hours: float = 0) -> None:
        self.hours = hours
        store.clock = self  # type: ignore[method-assign]

    def __call__(self) -> str:
        return at(self.hours)


def run(number: int, fill: Optional[int], end: Optional[float]) -> RunSpec:
    return RunSpec(number, fill, {} if end is None else {"end_time": iso(end)})


def finish(store: Store, task: str, clock: Clock, hours: float, group_by: Optional[str] = None) -> list[int]:
    """At ``hours``, claim every group of ``task`` and complete its one job; the leaders, in claim order."""
    clock.hours = hours
    claims = store.claim(C, task, group_by=group_by)
    for claim in claims:
        store.create_jobs(C, task, claim.run_number, [0])
        store.update_jobs(C, task, [JobUpdate(claim.run_number, 0, "done")])
    return [c.run_number for c in claims]


# ------------------------------------------------------------------ the rule, as a property

RANK = {ON_TIME: 0, AT_RISK: 1, MISSED: 2}


@given(deadline=st.integers(1, 30 * 24 * H), margin=st.floats(0, 1), reference=st.integers(0, 10**9),
       times=st.lists(st.integers(-10**7, 10**7), min_size=2, max_size=20))
def test_warnings_precede_misses_by_the_margin(deadline: int, margin: float, reference: int,
                                               times: list[int]) -> None:
    """Unfinished, an instance is on time, then at risk from exactly ``warn_before`` ahead of its deadline, then
    missed from the deadline on, never back; done by the deadline is done, after it done late."""
    warn = int(deadline * margin)
    rules = TaskSettings(deadline=deadline, warn_before=warn)
    ref = reference * S
    due = ref + deadline * S
    states = []
    for offset in sorted(times):
        now = due + offset * S
        got = judge(ref, rules, None, now)
        assert (got.deadline, got.warn_at) == (due, due - warn * S)
        assert got.state == (MISSED if now >= due else AT_RISK if now >= due - warn * S else ON_TIME)
        states.append(RANK[got.state])
        if got.state == MISSED and warn:  # every miss was at risk for the whole margin before it
            assert judge(ref, rules, None, due - warn * S).state == AT_RISK
            assert judge(ref, rules, None, due - warn * S - 1).state == ON_TIME
        done = judge(ref, rules, now, now)
        assert done.state == (DONE if now <= due else DONE_LATE) and done.latency == now - ref
    assert states == sorted(states)
    assert judge(None, rules, None, ref).state == NO_END_TIME


@given(deadlines=st.lists(st.one_of(st.none(), st.integers(-100 * 24 * 60, 100 * 24 * 60)), min_size=2, max_size=30))
def test_job_priorities_follow_deadlines(deadlines: list[Optional[int]]) -> None:
    """HTCondor's priority: the earlier a live deadline, the higher; every live one above every missed one, which is
    above no deadline (0, HTCondor's default)."""
    now = at(0)
    ranked = [(m, job_priority(None if m is None else at(m / 60), now)) for m in deadlines]
    for minutes, prio in ranked:
        if minutes is None:
            assert prio == NO_DEADLINE_PRIORITY
        elif minutes <= 0:
            assert prio == MISSED_PRIORITY
        else:
            assert MISSED_PRIORITY < prio < LIVE_PRIORITY_BASE
    live = sorted((m, p) for m, p in ranked if m is not None and m > 0)
    assert [p for _, p in live] == sorted((p for _, p in live), reverse=True)


# ------------------------------------------------------------------ claims in deadline order, on the real store

@pytest.fixture
def clock(store: Store) -> Clock:
    """The store's clock, at T0 before anything is written (the store's time never goes back)."""
    return Clock(store, 0)


@pytest.fixture
def prompt(store: Store, clock: Clock) -> Iterator[Store]:
    store.create_campaign(C)
    store.add_task(C, "reco", deadline=48 * H, warn_before=12 * H)
    store.update_rtype(C, "all", add=["reco"])
    yield store


ENDS = st.lists(st.one_of(st.none(), st.integers(0, 200)), min_size=1, max_size=12)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ends=ENDS, now=st.integers(0, 300))
def test_claims_take_what_can_make_it_first_then_missed_then_no_end_time(store: Store, ends: list[Optional[int]],
                                                                           now: int) -> None:
    """One run at a time (the push-down of a claim's limit into SQL), runs injected in run order with any end
    times: what can still make its 48 h deadline, earliest first; then what missed, earliest first; then runs
    without an end time, by number."""
    base = 1000 * len(store.list_campaigns())  # each example later than the last: the store's time never goes back
    campaign = f"c{base}"
    clock = Clock(store, base)
    store.create_campaign(campaign)
    store.add_task(campaign, "reco", deadline=48 * H)
    store.update_rtype(campaign, "all", add=["reco"])
    store.inject_runs(campaign, [run(100 + i, None, None if end is None else base + end) for i, end in enumerate(ends)])
    clock.hours = base + now
    taken = []
    while claimed := store.claim(campaign, "reco", limit=1):
        taken.append(claimed[0].run_number)
    rules = TaskSettings(deadline=48 * H)
    expected = sorted(range(100, 100 + len(ends)), key=lambda n: (
        urgency(None if ends[n - 100] is None else at(base + ends[n - 100]), rules, at(base + now)), n))
    assert taken == expected
    classes = [0 if e is not None and e + 48 > now else 1 if e is not None else 2 for e in
               (ends[n - 100] for n in taken)]
    assert classes == sorted(classes)


def test_fill_groups_go_by_their_fills_end_and_run_order_stays_available(prompt: Store, clock: Clock) -> None:
    """A fill-end deadline orders whole fills: fill 20 dumped earlier than fill 10 (as OMS says) is claimed first;
    a fill whose deadline passed goes after. ``order="run"`` is the order before deadlines."""
    store = prompt
    store.add_task(C, "calib", depends_on=["reco"], deadline=48 * H, deadline_from="fill-end")
    store.update_rtype(C, "all", add=["calib"])
    store.inject_runs(C, [run(1, 10, 1), run(2, 10, 2), run(3, 20, 3), run(4, 30, 4), run(5, 40, 5)])
    clock.hours = 6
    with store.db.tx() as tx:  # what a run source records: fills 10, 20 and 30 dumped
        tx.run("INSERT INTO fill_end (campaign_id, fill, ended_at, reason, actor, dumped_at) SELECT id, f, ?, 'OMS',"
               " 'oms', d FROM campaign, (SELECT 10 AS f, ? AS d UNION ALL SELECT 20, ? UNION ALL SELECT 30, ?) x",
               (at(6), at(5.5), at(3.5), at(-50)))
    finish(store, "reco", clock, 6)
    plan = store.plan(C, "calib", group_by="fill")
    assert [g[-1].run_number for g in plan.groups] == [3, 2, 4]  # 20 (3.5 h), 10 (5.5 h), then 30: missed
    assert [str(w) for w in plan.waiting] == ["fill 40 waits: fill not ended"]
    assert [g[-1].run_number for g in store.plan(C, "calib", group_by="fill", order="run").groups] == [2, 3, 4]
    assert [c.runs for c in store.claim(C, "calib", group_by="fill")] == [[3], [1, 2], [4]]


def test_a_task_without_a_deadline_is_claimed_in_run_order(store: Store, clock: Clock) -> None:
    store.create_campaign(C)
    store.add_task(C, "reco")
    store.update_rtype(C, "all", add=["reco"])
    store.inject_runs(C, [run(3, None, 1), run(1, None, 9), run(2, None, None)])
    assert [c.run_number for c in store.claim(C, "reco", limit=2)] == [1, 2]
    with pytest.raises(Invalid, match="unknown claim order 'fifo'"):
        store.claim(C, "reco", order="fifo")


# ------------------------------------------------------------------ what the store says of each instance

def test_deadlines_of_instances_from_new_to_done_late(prompt: Store, clock: Clock) -> None:
    store = prompt
    store.inject_runs(C, [run(1, 10, 0), run(2, 10, 10), run(3, 11, None)])
    clock.hours = 20
    states = {d.run_number: d for d in store.deadlines(C)}
    assert {r: d.state for r, d in states.items()} == {1: ON_TIME, 2: ON_TIME, 3: NO_END_TIME}
    assert states[3].why == "run 3 has no end time" and states[3].deadline is None
    assert (states[1].reference, states[1].deadline, states[1].warn_at) == (at(0), at(48), at(36))
    clock.hours = 40
    assert {d.run_number: d.state for d in store.deadlines(C)} == {1: AT_RISK, 2: ON_TIME, 3: NO_END_TIME}
    assert finish(store, "reco", clock, 45) == [1, 2, 3]  # can make it, earliest first, then no end time
    done = {d.run_number: d for d in store.deadlines(C)}
    assert (done[1].state, round(done[1].latency_s or 0), (done[1].done_at or "")[:19]) == (DONE, 45 * H, at(45)[:19])
    assert done[3].state == NO_END_TIME and done[3].done_at is not None and done[3].latency_s is None
    # reprocessed and done again a week later: the first done time stands (Tier-0 took that one)
    store.reprocess(C, "reco", runs=[1], reason="new conditions")
    finish(store, "reco", clock, 200)
    assert round(next(d for d in store.deadlines(C) if d.run_number == 1).latency_s or 0) == 45 * H
    store.inject_runs(C, [run(4, 12, 190)])
    assert [(d.run_number, d.state) for d in store.deadlines(C, finished=False)] == [(4, ON_TIME)]
    assert [d.run_number for d in store.deadlines(C, since=at(100))] == [4]  # the others first done before


def test_a_late_run_is_done_late_and_missed_while_open(prompt: Store, clock: Clock) -> None:
    store = prompt
    store.inject_runs(C, [run(1, 10, 0), run(2, 10, 1)])
    clock.hours = 47
    assert [c.run_number for c in store.claim(C, "reco", limit=1)] == [1]
    clock.hours = 50
    got = {d.run_number: d.state for d in store.deadlines(C)}
    assert got == {1: MISSED, 2: MISSED}  # processing or new: both open past the deadline
    store.create_jobs(C, "reco", 1, [0])
    store.update_jobs(C, "reco", [JobUpdate(1, 0, "done")])
    late = store.deadlines(C, runs=[1])
    assert [(d.run_number, d.state, round(d.latency_s or 0)) for d in late] == [(1, DONE_LATE, 50 * H)]


def test_a_fill_end_deadline_counts_from_the_dump_else_the_last_run(prompt: Store, clock: Clock) -> None:
    """Merged runs carry their group's; an open fill has no deadline yet; a recorded dump wins over the runs."""
    store = prompt
    store.add_task(C, "calib", depends_on=["reco"], deadline=48 * H, deadline_from="fill-end")
    store.update_rtype(C, "all", add=["calib"])
    store.inject_runs(C, [run(1, 10, 1), run(2, 10, 2), run(3, 11, 3)])
    clock.hours = 4
    calib = {d.run_number: d for d in store.deadlines(C, "calib")}
    assert calib[1].reference == calib[2].reference == at(2)  # fill 10 ended: a later fill has a run
    assert calib[3].state == NO_END_TIME and calib[3].why == "run 3: fill 11 has not ended"
    store.close_fill(C, 11, "operator: beam dumped")
    assert next(d for d in store.deadlines(C, "calib") if d.run_number == 3).reference == at(3)
    finish(store, "reco", clock, 5)
    finish(store, "calib", clock, 6, group_by="fill")
    calib = {d.run_number: d for d in store.deadlines(C, "calib")}
    assert (calib[1].status, calib[1].leader_run, calib[1].state, round(calib[1].latency_s or 0)) == (
        "merged", 2, DONE, 4 * H)
    assert calib[2].latency_s == calib[1].latency_s and calib[2].reference_kind == "fill-end"


def test_a_source_records_the_dump_time(prompt: Store, clock: Clock) -> None:
    """The OMS source's dump time is kept (``fill_end.dumped_at``), also for a fill closed before without one."""
    from ecalstate.sources import SourceBatch, SourceRun
    from ecalstate.sources.store import RunSources

    store = prompt
    store.add_task(C, "calib", deadline=10 * H, deadline_from="fill-end")
    store.update_rtype(C, "all", add=["calib"])
    sources = RunSources(store)
    sources.apply_sync(C, "oms", SourceBatch([SourceRun(run(1, 10, 1)), SourceRun(run(2, 11, 2))],
                                             {10: "OMS: a later fill (11) started"}, 2))
    assert next(d for d in store.deadlines(C, "calib") if d.run_number == 1).reference == at(1)
    sources.apply_sync(C, "oms", SourceBatch([], {10: "OMS: fill ended (beam dumped) at x", 11: "OMS: dumped"}, 2,
                                             fills_dumped={10: iso(1.5), 11: iso(2.5)}))
    assert [(f.fill, f.dumped_at) for f in store.ended_fills(C)] == [(10, at(1.5)), (11, at(2.5))]
    assert {d.run_number: d.reference for d in store.deadlines(C, "calib")} == {1: at(1.5), 2: at(2.5)}


def test_cadence_gaps_one_per_gap(store: Store, clock: Clock) -> None:
    store.create_campaign(C)
    store.add_task(C, "trigger", cadence=4 * 24 * H)
    store.add_task(C, "reco")
    store.update_rtype(C, "all", add=["trigger", "reco"])
    store.inject_runs(C, [run(1, None, 0), run(2, None, 1)])
    clock.hours = 95
    assert store.cadence_gaps(C) == []
    clock.hours = 97  # never done since the task was declared (at 0) four days ago
    assert [(g.task, g.last_done, g.since) for g in store.cadence_gaps(C)] == [("trigger", None, at(96))]
    finish(store, "trigger", clock, 100)
    assert store.cadence_gaps(C) == []
    clock.hours = 100 + 96.01
    gaps = store.cadence_gaps(C)
    assert [(g.task, g.cadence_s, g.since[:19]) for g in gaps] == [("trigger", 4 * 24 * H, at(196)[:19])]
    assert gaps[0].last_done is not None and to_micros(gaps[0].last_done) - to_micros(at(100)) < S


def test_settings_are_validated_and_kept(store: Store) -> None:
    store.create_campaign(C)
    info = store.add_task(C, "reco", deadline=48 * H)
    assert (info.deadline, info.deadline_from, info.warn_before, info.cadence) == (48 * H, "run-end", 12 * H, None)
    info = store.update_task(C, "reco", deadline_from="fill-end", warn_before=6 * H, cadence=H)
    assert (info.deadline, info.deadline_from, info.warn_before, info.cadence) == (48 * H, "fill-end", 6 * H, H)
    assert store.update_task(C, "reco", deadline=0).deadline is None
    assert store.list_tasks(C)[0].cadence == H
    for kwargs, message in [({"deadline": -1}, "invalid deadline -1"), ({"deadline_from": "dawn"}, "'dawn'"),
                            ({"warn_before": H}, "needs a deadline"), ({"cadence": float("nan")}, "invalid cadence"),
                            ({"deadline": H, "warn_before": 2 * H}, "longer than the deadline")]:
        with pytest.raises(Invalid, match=message):
            store.add_task(C, "calib", **kwargs)  # type: ignore[arg-type]
    with store.db.tx(write=False) as tx:  # nothing written by a refusal; a later ecalstate's keys are kept
        assert tx.all("SELECT name FROM task") == [("reco",)]
        tx_settings = tx.scalar("SELECT settings FROM task")
    assert tx_settings == '{"cadence": 3600}'
    with store.db.tx() as tx:
        tx.run("UPDATE task SET settings = '{\"cadence\": 3600, \"ordered\": true}'")
    store.update_task(C, "reco", deadline=H)
    with store.db.tx(write=False) as tx:
        assert '"ordered": true' in tx.scalar("SELECT settings FROM task")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ends=st.lists(st.one_of(st.none(), st.integers(0, 120)), min_size=1, max_size=10),
       now=st.integers(0, 160), claimed=st.integers(0, 10))
def test_asking_for_the_late_ones_gives_what_filtering_everything_gives(
        store: Store, clock: Clock, ends: list[Optional[int]], now: int, claimed: int) -> None:
    """``states=(at-risk, missed)`` (what the attention model asks, reading only runs ended long enough ago, in
    SQL) lists exactly the instances that the whole list has in those states, a run-end task and a fill-end one."""
    if not store.list_campaigns():
        store.create_campaign(C)
        store.add_task(C, "reco", deadline=48 * H, warn_before=12 * H)
        store.add_task(C, "calib", depends_on=["reco"], deadline=30 * H, deadline_from="fill-end")
        store.update_rtype(C, "all", add=["reco", "calib"])
    first = 1 + max((r["run_number"] for r in store.list_runs(C)), default=0)
    store.inject_runs(C, [run(first + i, 10 + i // 3, e) for i, e in enumerate(ends)])
    clock.hours = max(clock.hours, now)
    if claimed:
        store.claim(C, "reco", limit=claimed)
    everything = {(d.task, d.run_number, d.state) for d in store.deadlines(C, finished=False)}
    late = {(d.task, d.run_number, d.state) for d in store.deadlines(C, finished=False, states=(AT_RISK, MISSED))}
    assert late == {x for x in everything if x[2] in (AT_RISK, MISSED)}


@settings(max_examples=300, deadline=None)
@given(due=st.integers(min_value=0, max_value=200 * 365 * 86400), submitted=st.integers(min_value=-10**9, max_value=0),
       later=st.integers(min_value=0, max_value=10**9))
def test_a_queued_jobs_priority_now_is_what_a_submit_now_would_give(due: int, submitted: int, later: int) -> None:
    """A check re-reads a queued job's JobPrio: a live deadline that passed since the submit is the missed one;
    one still ahead (by more than the priority's minute) is left as it was; missed and none never change."""
    epoch = to_micros("2020-01-01T00:00:00.000000Z") // 1_000_000
    when = lambda s: datetime.fromtimestamp(epoch + s, timezone.utc).strftime(TS_FORMAT)  # noqa: E731
    deadline, at_submit, now = when(due), when(due + submitted), when(due + submitted + later)
    given_then, seconds_now = job_priority(deadline, at_submit), due + submitted + later
    if seconds_now >= due:
        assert priority_now(given_then, now) == MISSED_PRIORITY == job_priority(deadline, now)
    elif seconds_now < due - 60:
        assert priority_now(given_then, now) == given_then == job_priority(deadline, now)
    else:  # within the deadline's minute (a priority names its deadline to the minute): either
        assert priority_now(given_then, now) in (MISSED_PRIORITY, given_then)
    assert priority_now(MISSED_PRIORITY, now) == MISSED_PRIORITY
    assert priority_now(NO_DEADLINE_PRIORITY, now) == NO_DEADLINE_PRIORITY
