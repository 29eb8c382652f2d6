"""History that answers shift questions (issue 13, item 3): what happened on my shift, to these runs, by whom."""

from __future__ import annotations

from datetime import datetime, timezone

import re

import pytest

from cli_support import as_json, build_chain, invoke, ok, process
from ecalstate import Store
from ecalstate.cli.when import parse_moment
from ecalstate.queries import run_spans


def test_moments_are_durations_ago_or_utc_times() -> None:
    now = datetime(2026, 12, 1, 14, 0, tzinfo=timezone.utc)
    assert parse_moment("8h", now) == "2026-12-01T06:00:00.000000Z"
    assert parse_moment("1h30m", now) == "2026-12-01T12:30:00.000000Z"
    assert parse_moment("2026-12-01T06:00") == "2026-12-01T06:00:00.000000Z"
    assert parse_moment("2026-12-01T07:00+01:00") == "2026-12-01T06:00:00.000000Z"
    with pytest.raises(ValueError, match="invalid time 'yesterday'"):
        parse_moment("yesterday")


def test_run_sets_become_spans() -> None:
    assert run_spans([390018, 390016, 390017, 390020]) == [(390016, 390018), (390020, 390020)]


@pytest.fixture
def shift(tmp_path) -> str:
    """reco: runs 1 and 2 done by 'jenkins-reco', run 3 failed; an operator reprocesses run 3 later."""
    db = str(tmp_path / "state.db")
    build_chain(db)
    process(db, "reco", done=[1, 2], failed=[3])
    with Store.open(db, actor="alice-on-shift") as store:
        store.reprocess("prompt", "reco", runs=[3], reason="new conditions")
    return db


def test_history_by_run_set_status_and_actor(shift: str) -> None:
    rows = as_json(shift, "history", "-c", "prompt", "--runs", "2-3", "--status", "failed", "--entity", "task")
    assert [(r["run_number"], r["to_status"]) for r in rows] == [(3, "failed")]
    mine = as_json(shift, "history", "-c", "prompt", "--actor", "alice-on-shift")
    assert [(r["run_number"], r["to_status"], r["reason"]) for r in mine] == [(3, "reprocess", "new conditions")]
    import os
    import pwd

    me = pwd.getpwuid(os.geteuid()).pw_name
    assert len(as_json(shift, "history", "-c", "prompt", "--actor", me, "--limit", "1000")) == len(
        as_json(shift, "history", "-c", "prompt", "--limit", "1000"))  # every row was written by this account


def test_history_time_window(shift: str) -> None:
    everything = as_json(shift, "history", "-c", "prompt", "--limit", "1000")
    cut = everything[len(everything) // 2]["ts"]
    later = as_json(shift, "history", "-c", "prompt", "--since", cut, "--limit", "1000")
    earlier = as_json(shift, "history", "-c", "prompt", "--until", cut, "--limit", "1000")
    assert later and earlier and len(later) + len(earlier) == len(everything)
    assert all(r["ts"] >= cut for r in later) and all(r["ts"] < cut for r in earlier)
    assert len(as_json(shift, "history", "-c", "prompt", "--since", "1h", "--limit", "1000")) == len(everything)
    assert as_json(shift, "history", "-c", "prompt", "--until", "1h") == []


def test_bad_history_filters_are_one_line(shift: str) -> None:
    result = invoke(shift, "history", "-c", "prompt", "--since", "last tuesday")
    assert result.exit_code == 2 and "invalid time 'last tuesday'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_status_watch_redraws_what_another_process_changed(tmp_path) -> None:
    """``status --watch``: the view refreshes by itself; Ctrl-C ends it cleanly (exit 0)."""
    import signal
    import subprocess
    import threading
    import time

    from cli_support import ECALSTATE

    db = str(tmp_path / "state.db")
    build_chain(db)
    proc = subprocess.Popen([ECALSTATE, "--db", db, "status", "-c", "prompt", "--task", "reco", "--watch", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()

    def wait_for(pattern: str) -> None:
        deadline = time.monotonic() + 20
        while not any(re.search(pattern, line) for line in lines):
            assert time.monotonic() < deadline, f"{pattern!r} never shown: {lines[-10:]}"
            time.sleep(0.05)

    try:
        wait_for(r"^1\s+10\s+new")
        with Store.open(db, actor="another-process") as store:
            store.claim("prompt", "reco", limit=1)
        wait_for(r"^1\s+10\s+processing")
        frames = sum("Ctrl-C to stop" in line for line in lines)
        assert frames >= 2 and any("every 0.2s" in line for line in lines)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
    assert proc.returncode == 0, proc.stderr.read()
    assert invoke(db, "--json", "status", "-c", "prompt", "--watch", "1").exit_code == 2


def test_field_only_changes_show_on_request(shift: str) -> None:
    ok(shift, "job", "set", "-c", "prompt", "--task", "reco", "--run", "1", "--job", "0", "done",
       "--field", "plot=/eos/www/1.png")
    plain = as_json(shift, "history", "-c", "prompt", "--runs", "1", "--entity", "job")
    full = as_json(shift, "history", "-c", "prompt", "--runs", "1", "--entity", "job", "--fields")
    assert all(r["from_status"] != r["to_status"] for r in plain)
    shown = {r["id"] for r in plain}  # (rows carry the total of their query: compared by id)
    assert [(r["from_status"], r["to_status"]) for r in full if r["id"] not in shown] == [("done", "done")]
