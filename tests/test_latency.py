"""``ecalstate latency`` and the deadline options of ``task add/update`` on a real SQLite file (issue 22)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cli_support import as_json, dump, invoke, ok
from test_export import make_campaign

from ecalstate import RunSpec, Store
from ecalstate.latency import latency_table, nearest_rank


@pytest.fixture
def db(tmp_path: Path) -> str:
    """prompt: reco must be done 1 h after its run ended, calib 1 h after its fill; half the runs ended 2 h ago."""
    path = str(tmp_path / "state.db")
    with Store.open(path, create=True) as store:
        make_campaign(store, deadlines=True)
    return path


def test_the_table_per_task_and_per_week(db: str) -> None:
    rows = {r["task"]: r for r in as_json(db, "latency", "-c", "prompt")}
    assert set(rows) == {"reco", "calib"}  # plots has no deadline
    reco = rows["reco"]
    assert reco["count"] == 12 and reco["within"] == 0.5 and reco["open_missed"] == 0
    assert 600 <= reco["p50_s"] < 700 and 7200 <= reco["p95_s"] <= reco["max_s"] < 7300
    with Store.open(db) as store:
        assert [r.__dict__ for r in latency_table(store, "prompt")] == sorted(rows.values(), key=lambda r: r["task"])
    text = ok(db, "latency", "-c", "prompt").stdout
    assert text.splitlines()[0].split() == ["task", "done", "p50", "p95", "max", "within", "deadline", "missed,",
                                             "open"]
    assert "reco   12    10m  2h00m  2h00m  50%" in text
    weeks = as_json(db, "latency", "-c", "prompt", "--task", "reco", "--by", "week")
    assert [(w["task"], w["count"], w["open_missed"]) for w in weeks] == [("reco", 12, None)]
    assert "week of" in ok(db, "latency", "-c", "prompt", "--by", "week").stdout


def test_a_window_and_what_is_still_open(db: str) -> None:
    """Instances done before the window are left out; open ones stay (calib's failed fill group: not done yet)."""
    assert [(r["task"], r["count"], r["open_missed"]) for r in as_json(
        db, "latency", "-c", "prompt", "--since", "2999-01-01")] == [("calib", 0, 0)]
    with Store.open(db) as store:  # a run that ended 3 h ago and is not done: missed, still open
        ended = (datetime.now(timezone.utc) - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
        store.inject_runs("prompt", [RunSpec(357000, 9000, {"class": "Collisions", "end_time": ended})])
        store.create_campaign("quiet")
    rows = {r["task"]: r for r in as_json(db, "latency", "-c", "prompt", "--since", "2999-01-01")}
    assert (rows["reco"]["count"], rows["reco"]["open_missed"], rows["reco"]["p50_s"]) == (0, 1, None)
    assert ok(db, "latency", "-c", "quiet", "--since", "2999-01-01").stdout.strip() == (
        "no instance of a task with a deadline done since 2999-01-01T00:00:00.000000Z")


def test_bad_input_is_one_line_and_writes_nothing(db: str) -> None:
    before = dump(db)
    for args, code, message in [
        (["latency", "-c", "prompt", "--by", "month"], 2, "'month' is not one of 'task', 'week'"),
        (["latency", "-c", "prompt", "--since", "soon"], 2, "invalid time 'soon'"),
        (["latency", "-c", "prompt", "--task", "nope"], 1, "unknown task 'nope' in campaign 'prompt'"),
        (["latency", "-c", "nope"], 1, "unknown campaign 'nope'"),
        (["task", "add", "-c", "prompt", "x", "--deadline", "soon"], 2, "invalid duration 'soon'"),
        (["task", "add", "-c", "prompt", "x", "--deadline", "1h", "--warn-before", "2h"], 1,
         "the warning margin (7200 s) is longer than the deadline (3600 s)"),
        (["task", "add", "-c", "prompt", "x", "--warn-before", "2h"], 1, "needs a deadline"),
        (["task", "update", "-c", "prompt", "reco", "--deadline-from", "dawn"], 2, "'dawn' is not one of"),
    ]:
        result = invoke(db, *args)
        assert result.exit_code == code, (args, result.output)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.output
    assert dump(db) == before


def test_task_options_set_show_and_clear_a_deadline(db: str) -> None:
    ok(db, "task", "add", "-c", "prompt", "trigger", "--cadence", "4d")
    out = ok(db, "task", "update", "-c", "prompt", "calib", "--deadline", "48h", "--warn-before", "12h").stdout
    assert out.strip() == ("updated task calib: depends on reco, max retries 0, deadline 2d from fill-end, warn 12h"
                           " before, cadence none")
    listed = {t["name"]: t for t in as_json(db, "task", "list", "-c", "prompt")}
    assert (listed["calib"]["deadline"], listed["calib"]["deadline_from"], listed["calib"]["warn_before"]) == (
        172800, "fill-end", 43200)
    assert listed["trigger"]["cadence"] == 4 * 86400 and listed["trigger"]["deadline"] is None
    assert "2d from fill-end, warn 12h before" in ok(db, "task", "list", "-c", "prompt").stdout
    ok(db, "task", "update", "-c", "prompt", "calib", "--deadline", "0")
    assert as_json(db, "task", "list", "-c", "prompt")[1]["deadline"] is None


def test_percentiles_are_influxql_nearest_rank() -> None:
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert [nearest_rank(values, p) for p in (5, 10, 50, 95, 100)] == [None, 1.0, 3.0, 5.0, 5.0]
    assert nearest_rank([], 50) is None and nearest_rank([7.0], 50) == 7.0


def test_one_row_per_instance(db: str) -> None:
    with Store.open(db) as store:  # a run without an end time: no deadline, and it says why
        store.inject_runs("prompt", [RunSpec(357001, 9001, {"class": "Collisions"})])
    rows = as_json(db, "latency", "-c", "prompt", "--task", "reco", "--instances")
    by_run = {r["run_number"]: r for r in rows}
    assert len(rows) == 13 and by_run[357001]["state"] == "no-end-time"
    assert (by_run[356000]["state"], by_run[356001]["state"]) == ("done-late", "done")  # ended 2 h / 10 min ago
    assert by_run[356000]["reference_kind"] == "run-end" and by_run[356000]["latency_s"] > 7200
    text = ok(db, "latency", "-c", "prompt", "--task", "reco", "--instances").stdout
    assert "no-end-time: run 357001 has no end time" in text and "done-late" in text
