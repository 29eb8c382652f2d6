"""A merged run's jobs are its group leader's (issue 25, item 2): ``job logs`` and ``job list`` on a merged run
follow the group to its leader and say so, instead of "no jobs for run R"."""

from __future__ import annotations

from pathlib import Path

from handler_support import Probe, make_campaign, probe_on, settle

from cli_support import as_json, invoke, ok


class FillProbe(Probe):
    """The probe workflow grouping a fill's runs: the newest run leads, the others are merged into it."""

    group_by = "fill"


def test_logs_and_jobs_of_a_merged_run_are_its_leaders_and_say_so(tmp_path: Path) -> None:
    base = probe_on(str(tmp_path / "state.db"), tmp_path)
    probe = FillProbe(base.store, base.backend)
    probe.payload = base.payload
    store = probe.store
    try:
        make_campaign(store, [7, 8], meta={"jobs": 2})
        store.close_fill("prompt", 1, "beam dumped")
        probe.submit("prompt")
        settle(probe)
        assert store.instance("prompt", "probe", 7).leader_run == 8
        db = store.db.url
        listed = ok(db, "job", "list", "-c", "prompt", "--task", "probe", "--run", "7")
        assert "run 7 is merged into run 8" in listed.stderr
        jobs = as_json(db, "job", "list", "-c", "prompt", "--task", "probe", "--run", "7")
        assert sorted((j["run_number"], j["jid"]) for j in jobs) == [(8, 0), (8, 1)]
        logs = ok(db, "job", "logs", "-c", "prompt", "--task", "probe", "--run", "7", "--job", "1")
        assert "run 7 is merged into run 8" in logs.stderr and "==> run 8 job 1 attempt 1 stdout:" in logs.stdout
        # a run with no instance at all is still one clear line
        missing = invoke(db, "job", "logs", "-c", "prompt", "--task", "probe", "--run", "99")
        assert missing.exit_code == 1 and "no instance for run 99" in missing.stderr
    finally:
        store.close()
