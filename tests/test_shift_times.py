"""Times for people (issue 23, item 5): human output shows seconds, ``--json`` keeps the stored microseconds."""

from __future__ import annotations

import re
from pathlib import Path

from cli_support import as_json, build_chain, invoke, ok, process
from test_web import build, serve

from ecalstate import Store
from ecalstate.clock import human_time

MICROS = re.compile(r"\d\d:\d\d:\d\d\.\d{6}Z")
SECONDS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def test_a_store_time_is_cut_to_the_second_and_anything_else_is_left_alone() -> None:
    assert human_time("2026-12-06T18:00:20.999999Z") == "2026-12-06T18:00:20Z"  # cut: --since it includes the row
    assert human_time("2026-12-06T18:00:20Z") == "2026-12-06T18:00:20Z"
    for value in (None, 3, "done", "at 2026-12-06T18:00:20.236543Z", "2026-12-06T18:00:20.236543"):
        assert human_time(value) == value


def test_human_output_shows_seconds_and_json_keeps_microseconds(tmp_path: Path) -> None:
    db = str(tmp_path / "state.db")
    build_chain(db)
    process(db, "reco", done=[1], failed=[2])
    with Store.open(db, actor="jenkins") as store:
        store.heartbeat("prompt", "reco", "check", False, "schedd unreachable")  # health lists it, with its time
    for args in (["history", "--all", "--heartbeats"], ["job", "list", "--task", "reco"], ["health"]):
        text = invoke(db, *args, "-c", "prompt")
        assert text.exit_code in (0, 1) and not MICROS.search(text.stdout), (args, text.stdout)
        assert SECONDS.search(text.stdout), (args, text.stdout)
    rows = as_json(db, "history", "-c", "prompt", "--all")
    assert rows and all(MICROS.fullmatch(r["ts"][11:]) for r in rows)
    jobs = as_json(db, "job", "list", "-c", "prompt", "--task", "reco")
    assert jobs and all(MICROS.search(j["updated_at"]) for j in jobs)
    # the time shown is a valid --since that includes the row it was read from
    newest = ok(db, "history", "-c", "prompt", "--limit", "1").stdout.splitlines()[1].split()[0]
    assert as_json(db, "history", "-c", "prompt", "--since", newest)[-1]["id"] == rows[-1]["id"]
    html = tmp_path / "overview.html"
    ok(db, "report", "html", "-c", "prompt", "--out", str(html))
    assert not MICROS.search(html.read_text()) and SECONDS.search(html.read_text())


def test_the_web_view_shows_seconds(tmp_path: Path) -> None:
    db = str(tmp_path / "state.db")
    build(db, tmp_path / "jobs")
    for view in serve(db):
        for path in ("/grid?c=prompt", "/instance?c=prompt&task=reco&run=1", "/history?c=prompt",
                     "/log?c=prompt&task=reco&run=1&job=1"):
            status, _, html = view.get(path)
            assert status == 200 and not MICROS.search(html), (path, MICROS.findall(html)[:3])
        assert SECONDS.search(view.get("/history?c=prompt")[2])
        assert SECONDS.search(view.get("/instance?c=prompt&task=reco&run=1")[2])
        assert SECONDS.search(view.get("/grid?c=prompt")[2])  # the health banner: run 2 stuck since ...
