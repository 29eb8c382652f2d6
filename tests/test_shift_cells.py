"""Cells and rows that say what they mean (issue 23, item 4): an empty cell says whether its run is still being taken,
no run type activates the task for it (and why), or the task came after the run; a job's old failure reason is
labelled with its attempt; the "started" column is filled on both backends; jobs not submitted yet say so; the
legend says what each label means."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typing import Any

from cli_support import as_json, ok
from test_web import browser, serve  # noqa: F401 (browser: a fixture)

from ecalstate import RunSpec, Store


@pytest.fixture
def gaps(tmp_path: Path) -> str:
    """reco and calib on collisions runs with ECAL in; run 1 a good collisions run, run 2 with ECAL out, run 3 a
    cosmics run, run 4 still being taken (from the file source), run 5 injected before plots was added to
    collisions (no backfill)."""
    db = str(tmp_path / "state.db")
    with Store.open(db, actor="setup", create=True) as store:
        store.create_campaign("prompt")
        for task in ("reco", "calib", "plots"):
            store.add_task("prompt", task)
        store.create_rtype("prompt", "collisions", "class=Collisions,ecal=true")
        store.update_rtype("prompt", "collisions", add=["reco", "calib"])
        good = {"class": "Collisions", "ecal": True}
        store.inject_runs("prompt", [RunSpec(5, 20, good)])
        store.update_rtype("prompt", "collisions", add=["plots"])
        store.inject_runs("prompt", [RunSpec(1, 21, good), RunSpec(2, 21, {"class": "Collisions", "ecal": False}),
                                     RunSpec(3, 21, {"class": "Cosmics", "ecal": True})])
    runs = tmp_path / "runs.json"
    runs.write_text('[{"run_number": 4, "fill": 21, "class": "Collisions", "ecal": true, "ongoing": true}]')
    ok(db, "run", "sync", "-c", "prompt", "--source", "file", "--path", str(runs))
    return db


def test_an_empty_cell_says_why(gaps: str) -> None:
    text = ok(gaps, "status", "-c", "prompt").stdout
    rows = {line.split()[0]: line for line in text.splitlines() if re.match(r"\d+ ", line)}
    assert re.match(r"1 +21 +new +new +new *$", rows["1"])
    assert re.match(r"2 +21 +n/a +n/a +n/a +no run type activates its tasks: collisions needs ecal=true"
                    r" \(the run has ecal=false\)$", rows["2"]), rows["2"]
    assert rows["3"].endswith("collisions needs class=Collisions (the run has class=Cosmics)"), rows["3"]
    assert re.match(r"4 +21 +ongoing +ongoing +ongoing +still being taken: its tasks start once a sync sees it"
                    r" ended$", rows["4"]), rows["4"]
    assert re.match(r"5 +20 +new +new +backfill\? +plots was added to collisions after the run came"
                    r" \(ecalstate rtype update -c prompt collisions --add plots --backfill\)$", rows["5"]), rows["5"]
    assert "ongoing: the run is still being taken; n/a: no run type activates the task for the run" in text
    view = as_json(gaps, "status", "-c", "prompt")
    assert view["gaps"] == [
        {"run_number": 2, "task": t, "kind": "inactive",
         "why": "no run type activates its tasks: collisions needs ecal=true (the run has ecal=false)"}
        for t in ("calib", "plots", "reco")] + [
        {"run_number": 3, "task": t, "kind": "inactive",
         "why": "no run type activates its tasks: collisions needs class=Collisions (the run has class=Cosmics)"}
        for t in ("calib", "plots", "reco")] + [
        {"run_number": 4, "task": t, "kind": "ongoing",
         "why": "still being taken: its tasks start once a sync sees it ended"} for t in ("calib", "plots", "reco")] + [
        {"run_number": 5, "task": "plots", "kind": "backfill",
         "why": "plots was added to collisions after the run came (ecalstate rtype update -c prompt collisions --add"
                " plots --backfill)"}]
    assert view["rows"][1] == {"run_number": 2, "fill": 21, "statuses": {}}  # the rows keep their shape


def test_the_grid_shows_why_a_cell_is_empty_and_a_legend_that_says_something(gaps: str) -> None:
    for view in serve(gaps):
        html = view.get("/grid?c=prompt")[2]
        cells = dict(((int(r), t), (k, why, text)) for t, r, k, why, text in re.findall(
            r'<td class="s-missing" data-task="([^"]+)" data-run="(\d+)" data-gap="(\w+)" title="([^"]*)">([^<]*)</td>',
            html))
        assert cells[(4, "reco")] == ("ongoing", "still being taken: its tasks start once a sync sees it ended",
                                      "ongoing")
        assert cells[(2, "calib")][0::2] == ("inactive", "n/a")
        assert "collisions needs ecal=true (the run has ecal=false)" in cells[(2, "calib")][1]
        assert cells[(5, "plots")][0::2] == ("backfill", "backfill?") and (1, "reco") not in cells
        legend = re.search(r'<p class="legend">(.*?)</p>', html, re.S).group(1)  # type: ignore[union-attr]
        assert "new = new" not in legend and "done = done" not in legend
        assert '<span class="s-processing">proc = processing</span>' in legend
        assert '<span class="s-failed">FAIL = failed</span>' in legend and '<span class="s-new">new</span>' in legend
        assert "ongoing = the run is still being taken" in legend and "n/a = no run type activates the task" in legend


# ------------------------------------------------------------------------------------------- jobs' rows


def test_a_jobs_old_failure_is_labelled_with_its_attempt(tmp_path: Path) -> None:
    db = str(tmp_path / "state.db")
    with Store.open(db, actor="setup", create=True) as store:
        store.create_campaign("prompt")
        store.add_task("prompt", "reco", max_retries=2)
        store.update_rtype("prompt", "all", add=["reco"])
        store.inject_runs("prompt", [RunSpec(1, 10)])
        store.claim("prompt", "reco")
        store.create_jobs("prompt", "reco", 1, [0, 1])
        for jid in (0, 1):
            store.set_job_status("prompt", "reco", 1, jid, "failed", reason="held: via condor_hold (by user htcjob)")
            store.set_job_status("prompt", "reco", 1, jid, "idle", reason="resubmitted")
        store.set_job_status("prompt", "reco", 1, 0, "done")
        store.set_job_status("prompt", "reco", 1, 1, "failed", reason="exit code 3: boom")
    for view in serve(db):
        html = view.get("/instance?c=prompt&task=reco&run=1")[2]
        rows = dict(re.findall(r'<tr data-job="(\d)" data-generation="1">(.*?)</tr>', html, re.S))
        assert ">done</td>" in rows["0"] and "<td>attempt 1 failed: held: via condor_hold (by user htcjob)</td>" \
            in rows["0"], rows["0"]
        assert ">failed</td>" in rows["1"] and "<td>attempt 2: exit code 3: boom</td>" in rows["1"], rows["1"]


def test_jobs_not_submitted_yet_say_so_and_recorded_fields_are_named(tmp_path: Path) -> None:
    """A build killed after its claim leaves jobs idle with no batch id: 'not submitted yet', not '-'; the next
    stage records their batch ids and folders (an annotation, idle -> idle): history says what it recorded."""
    from ecalstate.results import BatchRecord

    db = str(tmp_path / "state.db")
    with Store.open(db, actor="setup", create=True) as store:
        store.create_campaign("prompt")
        store.add_task("prompt", "reco")
        store.update_rtype("prompt", "all", add=["reco"])
        store.inject_runs("prompt", [RunSpec(1, 10)])
        store.claim("prompt", "reco")
        store.create_jobs("prompt", "reco", 1, [0, 1])
    listed = ok(db, "job", "list", "-c", "prompt", "--task", "reco").stdout
    assert [line.split()[5:8] for line in listed.splitlines()[1:]] == [["not", "submitted", "yet"]] * 2, listed
    for view in serve(db):
        assert view.get("/instance?c=prompt&task=reco&run=1")[2].count("<td>not submitted yet</td>") == 2
    with Store.open(db, actor="jenkins-reco") as store:
        store.record_batch_ids("prompt", "reco", 1, 1, [BatchRecord(0, 1, "4711.0", {"logs": "/work/j0.a1"})])
    listed = ok(db, "job", "list", "-c", "prompt", "--task", "reco").stdout.splitlines()
    assert "4711.0" in listed[1] and "not submitted yet" in listed[2]
    shown = ok(db, "history", "-c", "prompt", "--fields", "--kind", "job").stdout.splitlines()
    recorded = [line for line in shown if re.search(r" idle +idle ", line)]
    assert len(recorded) == 1 and recorded[0].rstrip().endswith("fields recorded: logs=/work/j0.a1  -"), recorded
    rows = as_json(db, "history", "-c", "prompt", "--fields", "--kind", "job")
    assert [r["fields"] for r in rows if r["from_status"] == r["to_status"]] == [{"logs": "/work/j0.a1"}]


def test_the_started_column_is_filled_for_a_job_that_finished_between_two_checks(tmp_path: Path) -> None:
    """On the local backend a short job goes idle -> done between two checks: it never was 'running' in the store,
    so its start was never recorded. The backend reports it (the runner's start), the check keeps it."""
    import time

    from handler_support import make_campaign, probe_on

    handler = probe_on(str(tmp_path / "state.db"), tmp_path)
    try:
        make_campaign(handler.store, [1], meta={"jobs": 2, "sleep": 0.3})
        before = time.time()
        handler.submit("prompt")
        folders = [Path(j.fields["logs"]) for j in handler.store.list_jobs("prompt", "probe")]
        deadline = time.monotonic() + 60
        while not all((f / "exit").exists() for f in folders):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert handler.check("prompt").counts.get("done") == 2
        jobs = handler.store.list_jobs("prompt", "probe")
    finally:
        handler.store.close()
    from datetime import datetime

    for job in jobs:
        assert job.status == "done" and job.started_at is None  # (the store saw no running: the backend says)
        started = datetime.fromisoformat(job.fields["started"].replace("Z", "+00:00")).timestamp()
        finished = datetime.fromisoformat(job.finished_at.replace("Z", "+00:00")).timestamp()  # type: ignore
        assert before <= started <= finished - 0.3
    db = str(tmp_path / "state.db")
    listed = ok(db, "job", "list", "-c", "prompt", "--task", "probe").stdout.splitlines()
    assert listed[0].split()[:8] == ["run", "job", "generation", "status", "attempts", "batch", "id", "started"]
    assert all(re.search(r" \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ  \d{4}-", line) for line in listed[1:]), listed
    for view in serve(db):
        html = view.get("/instance?c=prompt&task=probe&run=1")[2]
        started = re.findall(r'<td class="ts">([^<]*)</td><td class="ts">([^<]*)</td>', html)
        assert len(started) == 2 and all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", s) for s, _ in started)


def test_what_an_empty_cell_quotes_of_a_run_is_inert(tmp_path: Path) -> None:
    """The why of an empty cell quotes run metadata a run source wrote (OMS): shown inert on a terminal, as text in
    the grid."""
    db = str(tmp_path / "state.db")
    planted = '\x1b]0;owned\x07Cosmics"><script>alert(1)</script>'
    with Store.open(db, actor="setup", create=True) as store:
        store.create_campaign("prompt")
        store.add_task("prompt", "reco")
        store.create_rtype("prompt", "collisions", "class=Collisions")
        store.update_rtype("prompt", "collisions", add=["reco"])
        store.inject_runs("prompt", [RunSpec(1, 10, {"class": planted})])
    text = ok(db, "status", "-c", "prompt").stdout
    assert "\x1b" not in text and "\\x1b]0;owned\\x07Cosmics" in text
    for view in serve(db):
        html = view.get("/grid?c=prompt")[2]
        assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_browser_grid_names_empty_cells_and_the_instance_page_its_jobs_start(browser: Any, gaps: str) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By

    with Store.open(gaps, actor="setup") as store:
        store.claim("prompt", "reco", limit=1)
        store.create_jobs("prompt", "reco", 1, [0, 1])
        store.set_job_status("prompt", "reco", 1, 0, "running")
    for view in serve(gaps):
        browser.get(view.url.rstrip("/") + "/grid?c=prompt")
        ongoing = browser.find_element(By.CSS_SELECTOR, 'td[data-task="calib"][data-run="4"]')
        assert ongoing.text == "ongoing" and "still being taken" in ongoing.get_attribute("title")
        assert browser.find_element(By.CSS_SELECTOR, 'td[data-task="reco"][data-run="2"]').text == "n/a"
        assert "new = new" not in browser.find_element(By.CSS_SELECTOR, "p.legend").text
        browser.find_element(By.CSS_SELECTOR, 'td[data-task="reco"][data-run="1"] a').click()
        rows = browser.find_elements(By.CSS_SELECTOR, 'tr[data-job][data-generation="1"]')
        cells = [[td.text for td in row.find_elements(By.TAG_NAME, "td")] for row in rows]
        assert cells[0][1] == "running" and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", cells[0][5])
        assert cells[1][1] == "idle" and cells[1][3] == "not submitted yet" and cells[1][5] == ""
