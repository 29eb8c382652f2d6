"""Logs from the tool (issue 13, item 2): a failed job's stderr one command away, any attempt, bounded, inert."""

from __future__ import annotations

from pathlib import Path

import pytest
from handler_support import Probe, make_campaign, marker, probe_on, settle

from cli_support import as_json, invoke, ok
from ecalstate.logs import attempt_folder, read_tail


@pytest.fixture
def probe(tmp_path: Path) -> Probe:
    handler = probe_on(str(tmp_path / "state.db"), tmp_path)
    yield handler
    handler.store.close()


def test_job_logs_show_each_attempt_of_a_failed_job(probe: Probe) -> None:
    store, work = probe.store, probe.backend.workdir
    make_campaign(store, [7], retries=2, meta={"jobs": 2})
    work.mkdir(parents=True)
    marker(work, 7, 1).touch()
    probe.submit("prompt")
    settle(probe)
    marker(work, 7, 1).unlink()
    probe.resubmit("prompt")
    settle(probe)
    assert store.instance("prompt", "probe", 7).status == "done"
    db = store.db.url
    first = ok(db, "job", "logs", "-c", "prompt", "--task", "probe", "--run", "7", "--job", "1", "--attempt", "1",
               "--stderr").stdout
    assert "==> run 7 job 1 attempt 1 stderr:" in first and "input marked broken" in first
    latest = as_json(db, "job", "logs", "-c", "prompt", "--task", "probe", "--run", "7", "--job", "1", "--stderr")
    assert [(x["attempt"], x["exists"], x["text"]) for x in latest] == [(2, True, "")]
    both = as_json(db, "job", "logs", "-c", "prompt", "--task", "probe", "--run", "7")
    assert [(x["jid"], x["stream"]) for x in both] == [(0, "stdout"), (1, "stdout")]
    bad = invoke(db, "job", "logs", "-c", "prompt", "--task", "probe", "--run", "7", "--job", "1", "--attempt", "3")
    assert bad.exit_code == 1 and "attempts 1-2, not 3" in bad.stderr
    missing = invoke(db, "job", "logs", "-c", "prompt", "--task", "probe", "--run", "8")
    assert missing.exit_code == 1 and "no instance for run 8" in missing.stderr


def test_tail_is_bounded_and_tolerates_any_bytes(tmp_path: Path) -> None:
    folder = tmp_path / "w" / "jobs" / "prompt" / "reco" / "1" / "g1" / "j3.a1"
    folder.mkdir(parents=True)
    (folder / "stderr").write_bytes(b"".join(b"line %d\n" % i for i in range(100_000)) + b"bad \xff byte\n")
    text, cut = read_tail(folder, "stderr", lines=3)
    assert cut and text == "line 99998\nline 99999\nbad \ufffd byte\n"
    text, cut = read_tail(folder, "stderr", max_bytes=1024)
    assert cut and len(text) <= 1024 and text.endswith("bad \ufffd byte\n") and text.startswith("line ")
    assert attempt_folder("/w/jobs/prompt/reco/1/g1/j3.a2", 1) == Path("/w/jobs/prompt/reco/1/g1/j3.a1")


def test_escape_sequences_in_a_log_reach_the_terminal_escaped(probe: Probe, tmp_path: Path) -> None:
    store = probe.store
    make_campaign(store, [9], meta={"jobs": 1})
    store.claim("prompt", "probe")
    store.create_jobs("prompt", "probe", 9, [0])
    folder = tmp_path / "work" / "jobs" / "prompt" / "probe" / "9" / "g1" / "j0.a1"
    folder.mkdir(parents=True)
    (folder / "stdout").write_text("ok\n\x1b]0;pwned\x07\x1b[2Jcleared\n")
    store.set_job_status("prompt", "probe", 9, 0, "running", {"logs": str(folder)})
    out = ok(store.db.url, "job", "logs", "-c", "prompt", "--task", "probe", "--run", "9", color=True).stdout
    assert "\x1b" not in out and "\x07" not in out
    assert "ok\n\\x1b]0;pwned\\x07\\x1b[2Jcleared" in out
