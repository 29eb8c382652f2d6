"""The attention model (issue 22): every unfinished task instance progresses or waits for a named reason, since a
known time, with the command that resolves it.

The catalogue is data, checked like the transition tables; each reason the model computes is made to appear on a
real database, must name its command, and that command (run through the real command line where it is an
``ecalstate`` one) must clear it. What needs action is recorded as audit rows, once per instance, reason and level,
also when several processes record at once.
"""

from __future__ import annotations

import multiprocessing
import shlex
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

import pytest
from cli_support import as_json, invoke, ok

from ecalstate import RunSpec, Store
from ecalstate.attention import (CATALOGUE, CODES, DOC_COMMAND, LEVELS, HandlerInfo, Policies, attention,
                                 note_handler, observe, policies, record, recorded, set_policies)
from ecalstate.attention import document as attention_document
from ecalstate.errors import Conflict, Invalid
from ecalstate.results import BatchRecord

C = "prompt"
TS = "%Y-%m-%dT%H:%M:%S.%fZ"
RECO, CALIB = "python3 handlers/reco.py", "python3 handlers/calib.py"


def later(hours: float) -> Callable[[], str]:
    """A clock ``hours`` ahead of now."""
    return lambda: (datetime.now(timezone.utc) + timedelta(hours=hours)).strftime(TS)


# ------------------------------------------------------------------ the catalogue


def test_every_code_has_a_policy_and_a_command() -> None:
    names = {"campaign": "C", "task": "T", "run": 1, "fill": 2, "upstream": "U", "leader": 3, "member": 4,
             "handler": "python3 h.py", "stage": "submit", "source": "P"}
    assert len(CATALOGUE) == len(CODES)
    for code in CODES:
        assert code.level in LEVELS and code.level != "problem" or code.problem_after == 0, code
        assert code.problem_after is None or code.problem_after >= 0, code
        fields = {f for _, f, _, _ in string.Formatter().parse(code.command) if f}
        assert fields and fields <= set(names), code
        command = code.command.format(**names)
        assert command.startswith(("ecalstate ", "python3 ")) and "{" not in command, code
        assert code.waits_for, code
    # every reason has its test below
    assert {c.code for c in CODES} == set(SCENARIOS)


def test_the_reason_catalogue_in_the_docs_is_the_codes() -> None:
    """docs/attention.md is rendered from CODES: a reason added without regenerating it fails here."""
    doc = Path(__file__).resolve().parent.parent / "docs" / "attention.md"
    assert doc.read_text() == attention_document(), f"docs/attention.md is stale; regenerate it with:\n{DOC_COMMAND}"
    assert all(f"| `{c.code}` |" in doc.read_text() for c in CODES)


def test_policies_are_kept_per_campaign_and_checked(sqlite_url: str) -> None:
    with Store.open(sqlite_url, actor="tester", create=True) as store:
        store.create_campaign(C)
        store.add_task(C, "calib")
        assert policies(store, C) == Policies()
        set_policies(store, C, {"fill-open": 3600, "upstream": 2 * 86400}, close_fills_after=86400)
        set_policies(store, C, late_runs="regroup", task="calib")
        got = policies(store, C)
        assert got.problem_after("fill-open") == 3600 and got.problem_after("upstream") == 2 * 86400
        assert got.problem_after("failed") == 0 and got.close_fills_after == 86400
        assert got.late_runs_of("calib") == "regroup" and got.late_runs_of("other") == "flag"
        for bad in ({"after": {"no-such": 1}}, {"after": {"stuck": -1}}, {"late_runs": "drop"},
                    {"late_runs": "regroup", "task": "nope"}):
            with pytest.raises((Invalid, Exception)):
                set_policies(store, C, **bad)  # type: ignore[arg-type]
        assert policies(store, C) == got


def test_campaign_update_and_policies_on_the_command_line(sqlite_url: str) -> None:
    with Store.open(sqlite_url, actor="tester", create=True) as store:
        store.create_campaign(C)
    out = ok(sqlite_url, "campaign", "update", "-c", C, "--flag-open-fills-after", "3h", "--close-fills-after",
             "1d", "--problem-after", "group-incomplete=never").stdout
    assert "fills left open closed by ecalstate: after 1d; late runs: flag" in out
    shown = as_json(sqlite_url, "campaign", "policies", "-c", C)
    by_code = {r["code"]: r for r in shown["reasons"]}
    assert by_code["fill-open"]["problem_after"] == 3 * 3600 and by_code["group-incomplete"]["problem_after"] is None
    assert by_code["fill-open"]["command"] == 'ecalstate run close-fill -c {campaign} --fill {fill} --reason "..."'
    for args in (["--problem-after", "nope=1h"], ["--problem-after", "stuck=soon"], ["--task", "x"], []):
        result = invoke(sqlite_url, "campaign", "update", "-c", C, *args)
        assert result.exit_code in (1, 2) and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr
    assert as_json(sqlite_url, "campaign", "policies", "-c", C) == shown  # nothing written


# ------------------------------------------------------------------ every reason: it appears, it names its command,
# the command clears it


@pytest.fixture
def world(sqlite_url: str) -> Iterator[Store]:
    yield from make_world(sqlite_url)


@pytest.fixture
def world_on(db_url: str) -> Iterator[Store]:
    """:func:`world` on each engine."""
    yield from make_world(db_url)


def cli_url(store: Store) -> str:
    """What ``--db`` names for ``store`` (a SQLite path, or the PostgreSQL URL)."""
    return store.db.url.removeprefix("sqlite:///")


def make_world(url: str) -> Iterator[Store]:
    """reco -> calib (grouped by fill, as its handler notes) -> plots; runs 1, 2 in fill 10, runs 3, 4 in fill 11
    (the last fill: not ended), their end times 7 h ago."""
    ended = (datetime.now(timezone.utc) - timedelta(hours=7)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with Store.open(url, actor="tester", create=True) as store:
        store.create_campaign(C)
        store.add_task(C, "reco", max_retries=1)
        store.add_task(C, "calib", depends_on=["reco"], max_retries=0)
        store.add_task(C, "plots", depends_on=["calib"], max_retries=0)
        store.update_rtype(C, "all", add=["reco", "calib", "plots"])
        store.inject_runs(C, [RunSpec(r, f, {"end_time": ended}) for r, f in ((1, 10), (2, 10), (3, 11), (4, 11))])
        note_handler(store, C, "reco", HandlerInfo(script="handlers/reco.py"))
        note_handler(store, C, "calib", HandlerInfo("fill", script="handlers/calib.py"))
        yield store


def finish(store: Store, task: str, runs: list[int], status: str = "done", group_by: Optional[str] = None) -> None:
    """Claim ``task`` for ``runs`` and decide them with one job each (failed: beyond its retries)."""
    claims = store.claim(C, task, group_by=group_by or (lambda rows: [[r] for r in rows if r.run_number in runs]))
    for claim in claims:
        store.create_jobs(C, task, claim.run_number, [0])
        retries = {t.name: t.max_retries for t in store.list_tasks(C)}[task]
        store.set_job_status(C, task, claim.run_number, 0, status)
        for _ in range(retries if status == "failed" else 0):
            store.set_job_status(C, task, claim.run_number, 0, "idle")
            store.set_job_status(C, task, claim.run_number, 0, "failed")


@dataclass
class Scenario:
    """A reason made to appear: on which instance, with which command, and how it is resolved (None: run the
    command itself)."""

    task: str
    run: int
    command: str
    level: str
    resolve: Optional[Callable[[Store], None]] = None
    everything: bool = False
    clock: Optional[Callable[[], str]] = None


def upstream(store: Store) -> Scenario:
    return Scenario("calib", 1, f"{RECO} -c {C} submit", "info", lambda s: finish(s, "reco", [1]), everything=True)


def fill_open(store: Store) -> Scenario:
    finish(store, "reco", [3, 4])
    return Scenario("calib", 3, f'ecalstate run close-fill -c {C} --fill 11 --reason "..."', "problem")


def group_incomplete(store: Store) -> Scenario:
    finish(store, "reco", [1])
    store.claim(C, "reco", group_by=lambda rows: [[r] for r in rows if r.run_number == 2])  # run 2: processing
    return Scenario("calib", 1, f'ecalstate set -c {C} --task calib --runs 2 skipped --reason "..."', "problem",
                    clock=later(13))


def late_member(store: Store) -> Scenario:
    finish(store, "reco", [1, 2])
    finish(store, "calib", [], group_by="fill")
    store.inject_runs(C, [RunSpec(5, 10)])
    finish(store, "reco", [5])
    return Scenario("calib", 5, f'ecalstate reprocess -c {C} --task calib --fill 10 --downstream --reason "..."',
                    "problem")


def failed(store: Store) -> Scenario:
    finish(store, "reco", [1], "failed")
    return Scenario("reco", 1, f'ecalstate reprocess -c {C} --task reco --runs 1 --reason "..."', "problem")


def blocked(store: Store) -> Scenario:
    finish(store, "reco", [1], "failed")
    return Scenario("calib", 1, f'ecalstate reprocess -c {C} --task reco --runs 1 --reason "..."', "warning")


def no_upstream(store: Store) -> Scenario:
    store.set_status(C, "reco", [1], "skipped", reason="ECAL out")
    store.set_status(C, "calib", [1], "reprocess", reason="by mistake")  # its upstream stays skipped
    return Scenario("calib", 1, f'ecalstate set -c {C} --task calib --runs 1 skipped --reason "..."', "problem")


def stuck(store: Store) -> Scenario:
    store.claim(C, "reco", group_by=lambda rows: [[r] for r in rows if r.run_number == 1])
    return Scenario("reco", 1, f'ecalstate reprocess -c {C} --task reco --runs 1 --reason "..."', "problem",
                    clock=later(7))


def unsubmitted(store: Store) -> Scenario:
    (claim,) = store.claim(C, "reco", group_by=lambda rows: [[r] for r in rows if r.run_number == 1])
    store.create_jobs(C, "reco", 1, [0])

    def submitted(s: Store) -> None:  # what the submit stage does with them
        s.record_batch_ids(C, "reco", 1, claim.generation, [BatchRecord(0, 1, "100.0")])
        s.set_job_status(C, "reco", 1, 0, "running")

    return Scenario("reco", 1, f"{RECO} -c {C} submit", "problem", submitted, clock=later(0.5))


def retrying(store: Store) -> Scenario:
    store.claim(C, "reco", group_by=lambda rows: [[r] for r in rows if r.run_number == 1])
    store.create_jobs(C, "reco", 1, [0, 1])
    store.set_job_status(C, "reco", 1, 0, "failed", reason="exit code 1")
    return Scenario("reco", 1, f"{RECO} -c {C} resubmit", "info",
                    lambda s: s.set_job_status(C, "reco", 1, 0, "idle"))


def leader_failed(store: Store) -> Scenario:
    finish(store, "reco", [1, 2])
    finish(store, "calib", [], "failed", group_by="fill")
    assert store.instance(C, "calib", 1).status == "merged"
    return Scenario("calib", 1, f'ecalstate reprocess -c {C} --task calib --runs 2 --reason "..."', "problem")


def deadline_missed(store: Store) -> Scenario:
    store.update_task(C, "reco", deadline=6 * 3600)  # the runs ended 7 h ago
    return Scenario("reco", 1, f"{RECO} -c {C} submit", "problem", lambda s: finish(s, "reco", [1]))


def deadline_risk(store: Store) -> Scenario:
    store.update_task(C, "reco", deadline=8 * 3600, warn_before=2 * 3600)  # at risk from 6 h after the end
    return Scenario("reco", 1, f"{RECO} -c {C} submit", "warning", lambda s: finish(s, "reco", [1]))


def deadline_missed_processing(store: Store) -> Scenario:
    """Claimed but not done in time: the stage that moves it on is check."""
    store.update_task(C, "reco", deadline=6 * 3600)
    store.claim(C, "reco", group_by=lambda rows: [[r] for r in rows if r.run_number == 2])
    store.create_jobs(C, "reco", 2, [0])

    def done(s: Store) -> None:
        s.set_job_status(C, "reco", 2, 0, "done")

    return Scenario("reco", 2, f"{RECO} -c {C} check", "problem", done)


def cadence_gap(store: Store) -> Scenario:
    store.update_task(C, "reco", cadence=3600)  # never done: a gap an hour after the task was declared
    return Scenario("reco", 4, f"{RECO} -c {C} submit", "warning", lambda s: finish(s, "reco", [1]),
                    clock=later(2))


def ordered(store: Store) -> Scenario:
    """reco claimed in run order: run 1 failed, run 2 waits for it; skipping run 1 lets it go."""
    store.update_task(C, "reco", ordered=True)
    finish(store, "reco", [1], "failed")
    return Scenario("reco", 2, f'ecalstate set -c {C} --task reco --runs 1 skipped --reason "..."', "info")


def approval(store: Store) -> Scenario:
    """A gate after reco: its run 1 awaits an expert's approval once reco is done for the run."""
    store.add_task(C, "signoff", depends_on=["reco"], gate=True)
    store.update_rtype(C, "all", add=["signoff"], backfill=True)
    finish(store, "reco", [1])
    return Scenario("signoff", 1, f'ecalstate approve -c {C} --task signoff --runs 1 --reason "..."', "warning")


def source_campaign(store: Store) -> None:
    """Campaign ``prod`` reconstructs runs 1-4; C's ``xtiming`` takes its inputs from prod's ``reco`` (read only)."""
    store.create_campaign("prod")
    store.add_task("prod", "reco")
    store.update_rtype("prod", "all", add=["reco"])
    store.inject_runs("prod", [RunSpec(r, f) for r, f in ((1, 10), (2, 10), (3, 11), (4, 11))])
    store.add_task(C, "xtiming", depends_on=["reco"], inputs_from="prod")
    store.update_rtype(C, "all", add=["xtiming"], backfill=True)


def prod_done(store: Store) -> None:
    [claim] = store.claim("prod", "reco", group_by=lambda rows: [[r] for r in rows if r.run_number == 1])
    store.create_jobs("prod", "reco", claim.run_number, [0])
    store.set_job_status("prod", "reco", claim.run_number, 0, "done")


def inputs(store: Store) -> Scenario:
    """xtiming's run 1 waits for prod's reco (new): named with the command that shows it there."""
    source_campaign(store)
    return Scenario("xtiming", 1, "ecalstate status -c prod --task reco --runs 1", "info", prod_done,
                    everything=True)


def no_upstream_inputs(store: Store) -> Scenario:
    """prod skips reco for run 1 (nothing cascades into C): xtiming's run 1 would wait for ever."""
    source_campaign(store)
    store.set_status("prod", "reco", [1], "skipped", reason="ECAL out")
    return Scenario("xtiming", 1, f'ecalstate set -c {C} --task xtiming --runs 1 skipped --reason "..."', "problem")


#: variants of a reason (``code:variant``): another way it appears
VARIANTS: dict[str, Callable[[Store], Scenario]] = {
    "deadline-missed:processing": deadline_missed_processing, "no-upstream:inputs": no_upstream_inputs}


SCENARIOS: dict[str, Callable[[Store], Scenario]] = {
    "ordered": ordered, "approval": approval, "inputs": inputs,
    "deadline-missed": deadline_missed, "deadline-risk": deadline_risk, "cadence-gap": cadence_gap,
    "upstream": upstream, "fill-open": fill_open, "group-incomplete": group_incomplete, "late-member": late_member,
    "failed": failed, "blocked": blocked, "no-upstream": no_upstream, "stuck": stuck, "unsubmitted": unsubmitted,
    "retrying": retrying, "leader-failed": leader_failed,
}


def reasons_of(store: Store, task: str, run: int, everything: bool = False) -> dict[str, Any]:
    found = attention(store, C, everything=everything).by_instance().get((C, task, run))
    return {} if found is None else {r.code: r for r in found.reasons}


@pytest.mark.parametrize("code", sorted(SCENARIOS) + sorted(VARIANTS))
def test_a_reason_appears_names_its_command_and_the_command_clears_it(world_on: Store, code: str) -> None:
    world = world_on
    scenario = (VARIANTS[code] if code in VARIANTS else SCENARIOS[code])(world)
    code = code.partition(":")[0]
    if scenario.clock is not None:
        world.clock = scenario.clock  # type: ignore[method-assign]
    reason = reasons_of(world, scenario.task, scenario.run, scenario.everything).get(code)
    assert reason is not None, attention(world, C, everything=True).items
    assert reason.command == scenario.command
    assert reason.level == scenario.level
    assert f"{scenario.task} run {scenario.run}" in reason.message and reason.since
    if scenario.resolve is None:  # an operator's command, run through the real command line
        result = invoke(cli_url(world), *shlex.split(
            scenario.command.removeprefix("ecalstate ").replace("...", f"resolve {code}")))
        assert result.exit_code == 0, (result.stdout, result.stderr)
    else:
        scenario.resolve(world)
    assert code not in reasons_of(world, scenario.task, scenario.run, scenario.everything)


def test_an_ordered_run_and_an_approval_wait_since_they_became_ready(world: Store) -> None:
    """Not since the run was injected: since its upstream task was done (an approval is a problem after 12 h of
    waiting for the expert, not 12 h after the run was taken)."""
    approval(world)
    world.update_task(C, "reco", ordered=True)
    world.clock = later(13)  # type: ignore[method-assign]
    finish(world, "reco", [2])  # 13 h later
    done_at = {r: world.instance(C, "reco", r).updated_at for r in (1, 2)}
    waiting = reasons_of(world, "signoff", 2)["approval"]
    assert waiting.since == done_at[2] and waiting.level == "warning"
    assert reasons_of(world, "signoff", 1)["approval"].level == "problem"  # waiting for 13 h
    world.claim(C, "reco", group_by=lambda rows: [[r] for r in rows if r.run_number == 3])  # run 3 in flight
    assert reasons_of(world, "reco", 4)["ordered"].message == (
        "reco run 4 waits for run 3 (processing): an ordered task is claimed in run order")


def test_a_reason_becomes_a_problem_when_it_lasts_longer_than_its_policy(world: Store) -> None:
    group_incomplete(world)
    assert reasons_of(world, "calib", 1)["group-incomplete"].level == "info"
    set_policies(world, C, {"group-incomplete": 0})
    assert reasons_of(world, "calib", 1)["group-incomplete"].level == "problem"
    set_policies(world, C, {"group-incomplete": None})  # never a problem by itself
    world.clock = later(1000)  # type: ignore[method-assign]
    assert reasons_of(world, "calib", 1)["group-incomplete"].level == "info"


def test_what_progresses_has_no_reason_and_done_or_skipped_is_not_listed(world: Store) -> None:
    finish(world, "reco", [1, 2])
    world.set_status(C, "reco", [3], "skipped", reason="ECAL out")
    result = attention(world, C, everything=True)
    items = result.by_instance()
    assert (C, "reco", 1) not in items and (C, "reco", 3) not in items and (C, "calib", 3) not in items
    assert items[(C, "calib", 1)].progressing  # fill 10 is complete: the next submit claims it
    assert items[(C, "reco", 4)].progressing  # claimable
    assert result.ok and result.counts()["problem"] == 0


def test_a_fill_open_too_long_is_closed_by_policy_as_ecalstate(world: Store) -> None:
    finish(world, "reco", [3, 4])
    set_policies(world, C, close_fills_after=6 * 3600)
    observe(world, C)
    assert attention(world, C, everything=True).by_instance()[(C, "calib", 3)].progressing
    (end,) = [f for f in world.ended_fills(C) if f.fill == 11]
    assert end.actor == "ecalstate" and end.reason.startswith("closed by the campaign's policy: the fill's last run")


def test_a_regroup_never_aborts_a_group_being_processed(world: Store) -> None:
    finish(world, "reco", [1, 2])
    (claim,) = world.claim(C, "calib", group_by="fill")  # fill 10 is being calibrated
    world.inject_runs(C, [RunSpec(5, 10)])
    finish(world, "reco", [5])
    set_policies(world, C, late_runs="regroup")
    with pytest.raises(Conflict, match="processing"):
        world.reprocess(C, "calib", fill=10, downstream=True, reason="x", only_from=("done", "failed", "merged"))
    observe(world, C)
    assert world.instance(C, "calib", 2).status == "processing"  # left alone; regrouped once it is done
    world.create_jobs(C, "calib", claim.run_number, [0])
    world.set_job_status(C, "calib", claim.run_number, 0, "done")
    observe(world, C)
    assert [world.instance(C, "calib", r).status for r in (1, 2, 5)] == ["reprocess", "reprocess", "new"]
    assert [c.runs for c in world.claim(C, "calib", group_by="fill")] == [[1, 2, 5]]


def test_reprocess_a_fill_takes_its_groups_and_leaves_new_runs_to_the_claim(world: Store) -> None:
    finish(world, "reco", [1, 2, 3, 4])
    finish(world, "calib", [], group_by="fill")  # fill 10 (fill 11 has not ended)
    world.inject_runs(C, [RunSpec(5, 10)])
    result = world.reprocess(C, "calib", fill=10, reason="late run 5", dry_run=True)
    assert sorted((c.key, c.outcome) for c in result.changes) == [("calib run 1", "changed"),
                                                                   ("calib run 2", "changed")]
    assert world.reprocess(C, "calib", fill=11, reason="nothing processed").changes == []
    refused = invoke(cli_url(world), "reprocess", "-c", C, "--task", "calib", "--fill",
                     "11", "--reason", "x")
    assert refused.exit_code == 1 and refused.stderr.strip() == (
        "Error: nothing to reprocess: task calib has no instance processed for fill 11")


def test_a_backfill_applies_the_skip_cascade(world: Store) -> None:
    world.set_status(C, "reco", [1], "skipped", reason="ECAL out")
    world.add_task(C, "monitor", depends_on=["plots"])
    world.add_task(C, "upload", depends_on=["monitor"])
    result = world.update_rtype(C, "all", add=["monitor", "upload"], backfill=True)
    assert result.instances == 8
    assert [world.instance(C, t, 1).status for t in ("monitor", "upload")] == ["skipped", "skipped"]
    assert world.instance(C, "monitor", 2).status == "new"
    assert not attention(world, C).reasons()
    # undoing the skip brings the backfilled chain back too: it was skipped by the cascade
    world.set_status(C, "reco", [1], "reprocess", reason="DQM: fine after all")
    assert {world.instance(C, t, 1).status for t in ("reco", "calib", "plots", "monitor", "upload")} == {"reprocess"}


def test_undoing_a_skip_leaves_an_operators_own_skip(world: Store) -> None:
    world.set_status(C, "plots", [1], "skipped", reason="no plots wanted")  # the operator's, not a cascade
    world.set_status(C, "reco", [1], "skipped", reason="ECAL out")
    world.set_status(C, "reco", [1], "reprocess", reason="fine after all")
    assert [world.instance(C, t, 1).status for t in ("reco", "calib", "plots")] == ["reprocess", "reprocess",
                                                                                   "skipped"]


# ------------------------------------------------------------------ recording what needs action


def attention_rows(store: Store) -> list[tuple[str, Optional[int], Optional[str], str, str]]:
    return [(a.task, a.run_number, a.from_status, a.to_status, a.reason)
            for a in store.history(C, kinds=["attention"], limit=None)]


def test_what_needs_action_is_recorded_once_per_instance_reason_and_level(world: Store) -> None:
    group_incomplete(world)
    finish(world, "reco", [3], "failed")
    observe(world, C)
    observe(world, C)
    assert attention_rows(world) == [("calib", 3, None, "warning", "blocked"), ("reco", 3, None, "problem", "failed")]
    world.clock = later(13)  # type: ignore[method-assign]
    observe(world, C)  # calib run 1 waited too long for the rest of its group, reco run 2 is stuck
    assert attention_rows(world)[2:] == [("calib", 1, None, "problem", "group-incomplete"),
                                         ("reco", 2, None, "problem", "stuck")]
    world.set_status(C, "reco", [3], "skipped", reason="raw data lost")
    observe(world, C)
    assert attention_rows(world)[-2:] == [("calib", 3, "warning", "clear", "blocked"),
                                          ("reco", 3, "problem", "clear", "failed")]
    assert {t: sorted(keys) for t, keys in recorded(world, C).items()} == {
        "calib": ["1:group-incomplete"], "reco": ["2:stuck"]}
    (row,) = [a for a in world.history(C, kinds=["attention"], limit=None) if a.to_status == "problem"
              and a.task == "calib"]
    assert row.fields and row.fields["command"] == f'ecalstate set -c {C} --task calib --runs 2 skipped --reason "..."'


def test_a_stale_result_never_undoes_a_fresher_one(world: Store) -> None:
    finish(world, "reco", [1, 3], "failed")
    stale = attention(world, C)
    world.set_status(C, "reco", [3], "skipped", reason="raw data lost")
    assert record(world, C, attention(world, C)) == 2  # reco run 1 failed, calib run 1 blocked
    assert record(world, C, stale) == 0  # computed before the skip, recorded after a fresher look: ignored
    assert {(t, r) for t, r, *_ in attention_rows(world)} == {("reco", 1), ("calib", 1)}


def _observe(url: str, barrier: Any) -> None:
    with Store.open(url, actor="proc") as store:
        barrier.wait()
        observe(store, C)


def test_concurrent_recorders_write_each_change_once(world: Store) -> None:
    finish(world, "reco", [1, 2, 3], "failed")
    url = cli_url(world)
    barrier = multiprocessing.get_context("fork").Barrier(6)
    procs = [multiprocessing.get_context("fork").Process(target=_observe, args=(url, barrier)) for _ in range(6)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    assert [p.exitcode for p in procs] == [0] * 6
    rows = attention_rows(world)
    assert sorted(rows) == sorted(set(rows)) and len(rows) == 6  # 3 failed, 3 blocked: each once


def test_health_json_lists_reasons_with_since_and_command(world: Store) -> None:
    finish(world, "reco", [1], "failed")
    url = cli_url(world)
    result = invoke(url, "--json", "health", "-c", C)
    assert result.exit_code == 1
    import json

    report = json.loads(result.stdout)
    first = report["needs_action"][0]
    assert {k: first[k] for k in ("task", "run_number", "code", "level")} == {
        "task": "reco", "run_number": 1, "code": "failed", "level": "problem"}
    assert first["command"] == f'ecalstate reprocess -c {C} --task reco --runs 1 --reason "..."' and first["since"]
    assert [f["run_number"] for f in report["failed"]] == [1] and report["ok"] is False  # today's fields stay
    assert result.stderr.strip() == "unhealthy: 0 stuck, 0 silent, 0 failing, 1 blocked, 1 failed; 1 problem, 1 warning"
