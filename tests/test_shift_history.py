"""The hand-over history is never cut without a word (issue 23, item 1): ``history`` says how many rows it shows of
how many matched and how to see the rest, filters by kind and status, and hides the stages' heartbeats unless asked;
the web view's history page does the same (in Chromium too)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import as_json, build_chain, invoke, ok, process
from test_web import Served, audit_rows, browser, build, serve, shown, wait_for  # noqa: F401 (browser: a fixture)

from ecalstate import RunSpec, Store

BEATS = 14


def beat(db: str, count: int = BEATS) -> None:
    """``count`` heartbeats of the handler stages, as every Jenkins build leaves them."""
    with Store.open(db, actor="jenkins-reco") as store:
        for i in range(count):
            store.heartbeat("prompt", "reco", ("submit", "check", "resubmit")[i % 3], True, f"beat {i}")


@pytest.fixture
def night(tmp_path: Path) -> str:
    """reco: runs 1 and 2 done, run 3 failed beyond its retries; an operator reprocesses run 3; the stages beat."""
    db = str(tmp_path / "state.db")
    build_chain(db)
    process(db, "reco", done=[1, 2], failed=[3])
    with Store.open(db, actor="alice-on-shift") as store:
        store.reprocess("prompt", "reco", runs=[3], reason="new conditions")
    beat(db)
    return db


def transitions(db: str, *kinds: str) -> list[Any]:
    with Store.open(db, read_only=True) as store:
        return [a for a in store.history("prompt", limit=None, transitions_only=True)
                if not kinds or a.entity in kinds]


def test_a_cut_history_says_how_many_of_how_many_and_how_to_see_the_rest(night: str) -> None:
    total = len(transitions(night, "task", "job"))
    assert total > 10
    cut = ok(night, "history", "-c", "prompt", "--limit", "5")
    assert len(cut.stdout.strip().splitlines()) == 1 + 5  # the header and the 5 newest
    assert cut.stderr.strip().splitlines()[-1] == (
        f"showing the last 5 of {total} transitions; --limit N or --all for more, --since/--until for a time span;"
        f" {BEATS} heartbeats hidden (--heartbeats shows them)")
    whole = ok(night, "history", "-c", "prompt", "--all")
    assert len(whole.stdout.strip().splitlines()) == 1 + total
    assert whole.stderr.strip() == (f"showing all {total} transitions; {BEATS} heartbeats hidden"
                                    " (--heartbeats shows them)")
    assert ok(night, "history", "-c", "prompt", "--since", "1h").stderr.strip().startswith(
        f"showing all {total} transitions")
    # JSON keeps its shape (a list of rows) and every row says how many matched
    rows = as_json(night, "history", "-c", "prompt", "--limit", "5")
    assert len(rows) == 5 and {r["total"] for r in rows} == {total}
    assert [r["id"] for r in rows] == [a.id for a in transitions(night, "task", "job")[-5:]]
    nothing = ok(night, "history", "-c", "prompt", "--until", "1h")
    assert nothing.stdout.strip() == "no history" and nothing.stderr.strip() == "no transitions match"
    one = ok(night, "history", "-c", "prompt", "--kind", "task", "--status", "failed")
    assert one.stderr.strip() == "showing the only transition"


def test_heartbeats_are_hidden_unless_asked_and_kinds_filter(night: str) -> None:
    plain = as_json(night, "history", "-c", "prompt", "--all")
    assert plain and {r["entity"] for r in plain} == {"task", "job"}
    beats = as_json(night, "history", "-c", "prompt", "--all", "--heartbeats")
    assert sum(r["entity"] == "handler" for r in beats) == BEATS and len(beats) == len(plain) + BEATS
    text = ok(night, "history", "-c", "prompt", "--all", "--heartbeats")
    assert text.stderr.strip() == f"showing all {len(beats)} rows"
    only = as_json(night, "history", "-c", "prompt", "--kind", "handler", "--all")
    assert len(only) == BEATS and {r["to_status"] for r in only} == {"ok"}
    jobs = as_json(night, "history", "-c", "prompt", "--kind", "job", "--all")
    assert jobs and {r["entity"] for r in jobs} == {"job"}
    both = as_json(night, "history", "-c", "prompt", "--kind", "task,handler", "--all")
    assert {r["entity"] for r in both} == {"task", "handler"}
    assert as_json(night, "history", "-c", "prompt", "--kind", "task", "--kind", "handler", "--all") == both
    failed = as_json(night, "history", "-c", "prompt", "--kind", "job", "--status", "failed", "--all")
    assert failed and {(r["entity"], r["to_status"]) for r in failed} == {("job", "failed")}
    assert [(r["run_number"], r["to_status"]) for r in as_json(
        night, "history", "-c", "prompt", "--kind", "task", "--status", "failed")] == [(3, "failed")]
    # the old spelling still works
    assert as_json(night, "history", "-c", "prompt", "--entity", "job", "--all") == jobs
    bad = invoke(night, "history", "-c", "prompt", "--kind", "heartbeat")
    assert bad.exit_code == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "unknown kind 'heartbeat' (valid: task, job, handler, attention)" in bad.stderr


# ------------------------------------------------------------------------------------------------ the web view


@pytest.fixture
def served_night(tmp_path: Path) -> Iterator[Served]:
    db = str(tmp_path / "state.db")
    build(db, tmp_path / "jobs")
    beat(db)
    yield from serve(db)


def test_the_web_history_hides_heartbeats_unless_asked_and_filters_kinds(served_night: Served) -> None:
    view = served_night
    kept = transitions(view.db, "task", "job")
    status, _, html = view.get("/history?c=prompt")
    rows = audit_rows(html)
    assert status == 200 and len(rows) == len(kept) and {r[3] for r in rows} == {"task", "job"}
    assert f"showing 1 to {len(kept)} of {len(kept)} transitions, newest first; page 1 of 1 (task, job)." in html
    assert f"{BEATS} heartbeats hidden: show them</a>" in html
    assert 'href="/history?c=prompt&amp;kind=task&amp;kind=job&amp;kind=handler"' in html
    everything = audit_rows(view.get("/history?c=prompt&kind=task&kind=job&kind=handler")[2])
    assert len(everything) == len(kept) + BEATS and sum(r[3] == "handler" for r in everything) == BEATS
    jobs = view.get("/history?c=prompt&kind=job&limit=3")[2]
    total_jobs = len(transitions(view.db, "job"))
    assert {r[3] for r in audit_rows(jobs)} == {"job"} and len(audit_rows(jobs)) == 3
    assert f"showing 1 to 3 of {total_jobs} transitions" in jobs and "heartbeats hidden" not in jobs
    assert 'rel="next" href="/history?page=2&amp;c=prompt&amp;kind=job&amp;limit=3"' in jobs  # the filter pages on
    failed = audit_rows(view.get("/history?c=prompt&kind=job&status=failed")[2])
    assert failed and {(r[3], r[9]) for r in failed} == {("job", "failed")}
    status, _, html = view.get("/history?c=prompt&kind=heartbeat")
    assert status == 400 and "unknown kind &#39;heartbeat&#39; (valid: task, job, handler, attention)" in html


def test_browser_history_shows_heartbeats_only_when_asked(browser: Any, served_night: Served) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By

    browser.get(served_night.url.rstrip("/") + "/history?c=prompt&hours=8")
    entities = "return [...document.querySelectorAll('table.audit tbody tr')].map(r => r.cells[3].innerText);"
    assert set(browser.execute_script(entities)) == {"task", "job"}
    assert browser.find_element(By.CSS_SELECTOR, 'input[name="kind"][value="task"]').is_selected()
    beats = browser.find_element(By.CSS_SELECTOR, 'input[name="kind"][value="handler"]')
    assert not beats.is_selected()
    assert f"{BEATS} heartbeats hidden" in shown(browser, "p.meta")
    beats.click()
    browser.find_element(By.CSS_SELECTOR, 'form.filters button[type="submit"]').click()
    assert wait_for(lambda: "kind=handler" in browser.current_url)
    assert browser.execute_script(entities).count("handler") == BEATS
    browser.find_element(By.CSS_SELECTOR, 'input[name="kind"][value="task"]').click()
    browser.find_element(By.CSS_SELECTOR, 'input[name="kind"][value="handler"]').click()
    browser.find_element(By.CSS_SELECTOR, 'form.filters button[type="submit"]').click()
    assert wait_for(lambda: "kind=handler" not in browser.current_url)
    assert set(browser.execute_script(entities)) == {"job"}


def test_a_time_window_reads_only_its_rows_and_counts_them(db_url: str) -> None:
    """The window bounds the ids it reads by the table's integer times (the view's text times are made row by row:
    a window alone read the whole audit): the same rows and counts as before, on both engines, for the store's time
    format and a plain ISO time."""
    with Store.open(db_url, actor="setup", create=True) as store:
        store.create_campaign("prompt")
        store.add_task("prompt", "reco")
        store.update_rtype("prompt", "all", add=["reco"])
        for hour, run in ((8, 1), (10, 2), (11, 3), (12, 4)):
            store.clock = lambda h=hour: f"2026-12-01T{h:02d}:00:00.000000Z"  # type: ignore[method-assign]
            store.inject_runs("prompt", [RunSpec(run, 1)])
        for since, until, runs in (("2026-12-01T09:00:00.000000Z", None, [2, 3, 4]),
                                   ("2026-12-01T10:30:00+00:00", None, [3, 4]),
                                   ("2026-12-01T10:00:00.000000Z", None, [2, 3, 4]),
                                   (None, "2026-12-01T10:00:00.000000Z", [1]),
                                   ("2026-12-01T09:00:00.000000Z", "2026-12-01T11:30:00.000000Z", [2, 3]),
                                   ("2026-12-01T13:00:00.000000Z", None, []),
                                   (None, "2026-12-01T07:00:00.000000Z", [])):
            rows = store.history("prompt", limit=None, since=since, until=until)
            assert sorted(a.run_number for a in rows) == runs, (since, until)
            assert store.history_counts("prompt", since=since, until=until)["task"] == len(runs)


def test_a_count_past_its_cap_says_at_least(night: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counting a year of audit costs time: the CLI counts the newest rows up to a cap and says so."""
    import ecalstate.cli.runs as runs

    monkeypatch.setattr(runs, "COUNT_CAP", 20)  # the newest 21 rows: the 14 heartbeats and 7 transitions
    cut = ok(night, "history", "-c", "prompt", "--limit", "3")
    assert cut.stderr.strip() == ("showing the last 3 of at least 7 (counting stops at 20 rows) transitions; --limit"
                                  " N or --all for more, --since/--until for a time span; at least 14 heartbeats hidden"
                                  " (--heartbeats shows them)"), cut.stderr
    total = len(transitions(night, "task", "job"))
    assert {r["total"] for r in as_json(night, "history", "-c", "prompt", "--limit", "3")} == {total}  # exact
    assert ok(night, "history", "-c", "prompt", "--all").stderr.startswith(f"showing all {total} transitions")
