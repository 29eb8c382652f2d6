"""Skipping runs (issue 12, item 2): shifters skip runs every day (bad data quality, ECAL out of the run).

``skipped`` needs a reason, is green in health, is nothing to do for the tasks downstream (they skip the
run too instead of waiting or showing blocked), is never claimed, and ``reprocess`` undoes it.
"""

from __future__ import annotations

import pytest

from cli_support import as_json, build_chain, invoke, ok
from ecalstate import Invalid, Store
from ecalstate.statemachine import TransitionNotAllowed


def test_skip_needs_a_reason_and_cascades_downstream(chain: Store) -> None:
    with pytest.raises(Invalid, match="reason is required"):
        chain.set_status("prompt", "reco", [1], "skipped", reason=" ")
    result = chain.set_status("prompt", "reco", [1], "skipped", reason="ECAL not in the run")
    assert [(c.key, c.outcome) for c in result.changes] == [
        ("reco run 1", "changed"), ("calib run 1", "changed"), ("plots run 1", "changed")]
    assert {chain.instance("prompt", t, 1).status for t in ("reco", "calib", "plots")} == {"skipped"}
    reasons = [(r.task, r.reason) for r in chain.history("prompt", run=1) if r.to_status == "skipped"]
    assert reasons == [("reco", "ECAL not in the run"), ("calib", "ECAL not in the run (cascade)"),
                       ("plots", "ECAL not in the run (cascade)")]


def test_a_skipped_run_is_never_claimed_and_health_stays_green(chain: Store) -> None:
    chain.set_status("prompt", "reco", [1, 2], "skipped", reason="bad data quality")
    assert sorted(c.run_number for c in chain.claim("prompt", "reco")) == [3, 4]
    assert chain.claim("prompt", "calib") == []  # nothing to do for run 1 and 2, runs 3 and 4 wait for reco
    health = chain.health("prompt")
    assert health.ok and health.blocked == []
    assert chain.overview("prompt").totals["reco"]["skipped"] == 2


def test_a_failed_run_can_be_given_up_and_health_turns_green(chain: Store) -> None:
    from drive import drive_instance
    from ecalstate import TaskStatus

    drive_instance(chain, "prompt", "reco", 1, TaskStatus.FAILED)
    assert [b[2] for b in chain.health("prompt").blocked] == [1]  # calib is blocked by the failure
    chain.set_status("prompt", "reco", [1], "skipped", reason="unrecoverable: raw data lost")
    assert chain.health("prompt").blocked == [] and chain.health("prompt").ok
    assert chain.instance("prompt", "calib", 1).status == "skipped"


def test_unskip_makes_the_run_eligible_again(chain: Store) -> None:
    chain.set_status("prompt", "reco", [1], "skipped", reason="looked bad")
    chain.reprocess("prompt", "reco", runs=[1], downstream=True, reason="DQM says it is fine after all")
    assert {chain.instance("prompt", t, 1).status for t in ("reco", "calib", "plots")} == {"reprocess"}
    assert [c.run_number for c in chain.claim("prompt", "reco", limit=1)] == [1]


@pytest.mark.parametrize("start", ["processing", "done", "merged"])
def test_skip_is_refused_where_work_exists(chain: Store, start: str) -> None:
    from drive import drive_instance
    from ecalstate import TaskStatus

    drive_instance(chain, "prompt", "reco", 1, TaskStatus(start), partner=2)
    with pytest.raises(TransitionNotAllowed, match=f"transition {start} -> skipped not allowed"):
        chain.set_status("prompt", "reco", [1], "skipped", reason="too late")
    assert chain.instance("prompt", "reco", 1).status == start


def test_cli_set_skipped(tmp_path) -> None:
    db = str(tmp_path / "state.db")
    build_chain(db)
    dry = ok(db, "set", "-c", "prompt", "--task", "reco", "--runs", "2", "skipped", "--reason", "ECAL out",
             "--dry-run")
    assert "would change" in dry.stdout and as_json(db, "status", "-c", "prompt")["totals"]["reco"]["skipped"] == 0
    ok(db, "set", "-c", "prompt", "--task", "reco", "--runs", "2", "skipped", "--reason", "ECAL out")
    data = as_json(db, "status", "-c", "prompt")
    assert {r["run_number"]: r["statuses"]["plots"] for r in data["rows"]}[2] == "skipped"
    assert invoke(db, "health", "-c", "prompt").exit_code == 0
    missing_reason = invoke(db, "set", "-c", "prompt", "--task", "reco", "--runs", "3", "skipped")
    assert missing_reason.exit_code == 2
