"""Manual gates (issue 24, part 3): a task with no jobs whose instances an expert approves or rejects, with a reason,
the audit naming who; "create, validate, upload" can then be three tasks of one workflow.

An instance of a gate awaits approval once it is eligible (its upstream tasks done); ``approve`` moves it new ->
processing -> done through the one writer, ``reject`` to failed (its downstream is blocked, and says so); all or
nothing, with dry runs; nothing ever claims a gate, a handler's submit included.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_support import dump, invoke, ok
from click.testing import CliRunner

from ecalstate import RunSpec, Store
from ecalstate.attention import attention
from ecalstate.backends.local import LocalBackend
from ecalstate.errors import Invalid, Refused
from ecalstate.handler import TaskHandler

C = "prompt"


@pytest.fixture
def gated(store: Store) -> Store:
    return make_gated(store)


def make_gated(store: Store) -> Store:
    """calib -> validate (a gate) -> upload on runs 1-3 (fill 10), calib done for runs 1 and 2."""
    store.create_campaign(C)
    store.add_task(C, "calib")
    store.add_task(C, "validate", depends_on=["calib"], gate=True)
    store.add_task(C, "upload", depends_on=["validate"])
    store.update_rtype(C, "all", add=["calib", "validate", "upload"])
    store.inject_runs(C, [RunSpec(r, 10) for r in (1, 2, 3)])
    for claim in store.claim(C, "calib"):
        store.create_jobs(C, "calib", claim.run_number, [0])
        if claim.run_number != 3:
            store.set_job_status(C, "calib", claim.run_number, 0, "done")
    return store


def status(store: Store, task: str, run: int) -> str:
    return store.instance(C, task, run).status


def test_an_expert_approves_and_rejects_and_the_audit_names_who(gated: Store) -> None:
    gated.actor = "alice"
    result = gated.approve(C, "validate", [1], reason="map looks fine")
    assert [(c.key, c.current, c.requested, c.outcome) for c in result.changes] == [
        ("validate run 1", "new", "done", "changed")]
    assert status(gated, "validate", 1) == "done"
    rows = [(a.from_status, a.to_status, a.actor, a.reason)
            for a in gated.history(C, task="validate", run=1, limit=None) if a.entity == "task"]
    assert rows[1:] == [("new", "processing", "alice", "approved: map looks fine"),
                        ("processing", "done", "alice", "approved: map looks fine")]
    assert all(a.identity for a in gated.history(C, task="validate", run=1, limit=None))
    assert [c.run_number for c in gated.claim(C, "upload")] == [1]  # downstream goes on
    gated.reject(C, "validate", [2], reason="constants of ieta 17 off by 30%")
    assert status(gated, "validate", 2) == "failed"
    blocked = attention(gated, C).by_instance()[(C, "upload", 2)].reasons
    assert [(r.code, r.command) for r in blocked] == [
        ("blocked", f'ecalstate reprocess -c {C} --task validate --runs 2 --reason "..."')]
    (rejected,) = attention(gated, C).by_instance()[(C, "validate", 2)].reasons
    assert (rejected.code, rejected.message) == (
        "failed", "validate run 2 failed without a job (rejected at its gate, or set failed by hand)")
    # approving what is done already changes nothing; reprocessing a rejection asks for approval again
    assert gated.approve(C, "validate", [1], reason="again").changes[0].outcome == "unchanged"
    gated.reprocess(C, "validate", runs=[2], reason="new constants")
    assert gated.approve(C, "validate", [2], reason="fixed").changed == 1
    assert status(gated, "validate", 2) == "done"


def test_all_or_nothing_and_dry_runs(gated: Store) -> None:
    before = gated.history(C, limit=None)
    with pytest.raises(Refused, match="validate run 3: .*calib is processing"):
        gated.approve(C, "validate", [1, 2, 3], reason="all of them")  # run 3's calibration is not done
    with pytest.raises(Refused, match="no such task instance"):
        gated.approve(C, "validate", [1, 4], reason="a run that does not exist")
    assert gated.history(C, limit=None) == before
    plan = gated.reject(C, "validate", [1, 2], reason="bad", dry_run=True)
    assert plan.dry_run and plan.changed == 2 and status(gated, "validate", 1) == "new"
    for bad in ({"reason": " "}, {"runs": []}):
        with pytest.raises(Invalid):
            gated.approve(C, "validate", **{"runs": [1], "reason": "ok", **bad})  # type: ignore[arg-type]
    with pytest.raises(Invalid, match="not a gate"):
        gated.approve(C, "calib", [3], reason="calib is not a gate")
    assert gated.history(C, limit=None) == before


def test_nothing_claims_a_gate(gated: Store) -> None:
    for call in (lambda: gated.claim(C, "validate"), lambda: gated.plan(C, "validate")):
        with pytest.raises(Invalid, match="is a gate"):
            call()
    assert status(gated, "validate", 1) == "new"


class Validate(TaskHandler):
    """A handler someone wrote for the gate task."""

    task = "validate"

    def jobs(self, campaign, claim):  # type: ignore[no-untyped-def]
        raise AssertionError("a gate's instance was claimed")


def test_a_handlers_submit_never_claims_a_gate(sqlite_url: str, tmp_path: Path) -> None:
    with Store.open(sqlite_url, actor="setup", create=True) as store:
        make_gated(store)
    result = CliRunner().invoke(Validate.cli(), ["-c", C, "--db", sqlite_url, "--workdir", str(tmp_path / "w"),
                                                 "submit"])
    assert result.exit_code == 1 and "is a gate" in result.stderr, (result.stdout, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    with Store.open(sqlite_url) as store:
        assert status(store, "validate", 1) == "new"
        handler = Validate(store, LocalBackend(tmp_path / "w2"))
        with pytest.raises(Exception, match="is a gate"):
            handler.submit(C)


def test_approve_and_reject_on_the_command_line(sqlite_url: str) -> None:
    with Store.open(sqlite_url, actor="setup", create=True) as store:
        make_gated(store)
    out = ok(sqlite_url, "--actor", "bob", "approve", "-c", C, "--task", "validate", "--runs", "1",
             "--reason", "map looks fine").stdout
    assert "changed" in out and "validate run 1" in out and "new -> done" in out
    ok(sqlite_url, "reject", "-c", C, "--task", "validate", "--runs", "2", "--reason", "ieta 17 off")
    with Store.open(sqlite_url) as store:
        assert (status(store, "validate", 1), status(store, "validate", 2)) == ("done", "failed")
        assert {a.actor for a in store.history(C, task="validate", run=1, limit=None) if a.to_status == "done"} == {
            "bob"}
    before = dump(sqlite_url)
    for args, code in ((["approve", "-c", C, "--task", "validate", "--runs", "3", "--reason", "x"], 1),
                       (["approve", "-c", C, "--task", "calib", "--runs", "3", "--reason", "x"], 1),
                       (["approve", "-c", C, "--task", "validate", "--runs", "9", "--reason", "x"], 1),
                       (["approve", "-c", C, "--task", "validate", "--runs", "3"], 2),
                       (["reject", "-c", C, "--task", "validate", "--reason", "x"], 2)):
        result = invoke(sqlite_url, *args)
        assert result.exit_code == code, (args, result.stdout, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr
    assert dump(sqlite_url) == before
