"""Cells and rows that say what they mean (issue 23, item 4): an empty cell says whether its run is still being taken,
no run type activates the task for it (and why), or the task came after the run; a job's old failure reason is
labelled with its attempt; the "started" column is filled on both backends; jobs not submitted yet say so; the
legend says what each label means."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cli_support import as_json, ok
from test_web import serve

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
