"""An instance's outputs, seen (issue 25 item 8): ``ecalstate outputs`` (text and ``--json``) and the web view's
instance page list each run's current outputs (a merged run's through its group leader) with the version that made
them, and the page links the PNG map, served only from that instance's ``plots``, inside the work folder, read
through the job files' safe opener. Real jobs on the local backend; the page in headless Chromium."""

from __future__ import annotations

import html
import json
import struct
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import test_web
from cli_support import as_json, invoke, ok
from handler_support import make_campaign, settle
from test_web import Served, no_alert, serve, shown, wait_for

from ecalstate import RunSpec, Store
from ecalstate.backends import JobSpec
from ecalstate.backends.local import LocalBackend
from ecalstate.handler import TaskHandler
from ecalstate.results import Claim

PAYLOAD = r'''#!/bin/sh
printf 'ieta,iphi,ic\n' > sums.csv
ecalstate-job output sums.csv
case "$2" in
  good) cp "$1" map.png; ecalstate-job plot map.png ;;
  outside) ecalstate-job plot /etc/passwd ;;
  link) ln -s /etc/passwd evil.png; ecalstate-job plot evil.png ;;
  notpng) ecalstate-job plot "$(pwd)/stdout" ;;
  huge) cp "$1" big.png; truncate -s 20M big.png; ecalstate-job plot big.png ;;
  pipe) mkfifo pipe.png; ecalstate-job plot pipe.png ;;
  dotdot) printf '{"fields": {"plots": "%s/../../../../../../../../../etc/passwd"}}' "$(pwd)" > report.json ;;
esac
'''
#: run -> (fill, what its plots job does); run 8's fill has not ended: it waits, with no outputs
RUNS = {1: (10, "good"), 2: (10, "good"), 3: (11, "outside"), 4: (12, "link"), 5: (13, "notpng"), 6: (14, "huge"),
        7: (15, "dotdot"), 9: (17, "pipe"), 8: (18, "good")}


def png(width: int = 3, height: int = 2) -> bytes:
    """A small valid RGB PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes([200, 40, 40]) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


#: headless Chromium, as the web view's own tests drive it
browser = test_web.browser


class Mapped(TaskHandler):
    task = "probe"
    group_by = "fill"
    version = "3.0"
    config = {"global_tag": "GT_MAP"}
    script: Path
    picture: Path

    def jobs(self, campaign: str, claim: Claim) -> list[JobSpec]:
        return [JobSpec(0, str(self.script), [str(self.picture), str(claim.meta["mode"])])]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    tmp = tmp_path_factory.mktemp("outputs")
    db, work = str(tmp / "state.db"), tmp / "work"
    with Store.open(db, actor="tester", create=True) as store:
        make_campaign(store, [])
        store.inject_runs("prompt", [RunSpec(run, fill, {"mode": mode}) for run, (fill, mode) in RUNS.items()])
        handler = Mapped(store, LocalBackend(work, slots=2))
        handler.script = tmp / "payload" / "plots.sh"
        handler.script.parent.mkdir()
        handler.script.write_text(PAYLOAD)
        handler.script.chmod(0o755)
        handler.picture = tmp / "map.png"
        handler.picture.write_bytes(png())
        handler.submit("prompt")
        settle(handler)
    return db, work


def folder(work: Path, run: int) -> Path:
    return work / "jobs" / "prompt" / "probe" / str(run) / "g1" / "j0.a1"


def test_outputs_lists_each_runs_outputs_merged_runs_through_their_leader(built: tuple[str, Path]) -> None:
    db, work = built
    rows = as_json(db, "outputs", "-c", "prompt", "--task", "probe")
    by_run = {r["run_number"]: r for r in rows}
    made = {"version": "3.0", "config": {"global_tag": "GT_MAP"}}
    leader = folder(work, 2)
    assert by_run[1] == {"run_number": 1, "status": "merged", "from_run": 2, "generation": 1, "made_by": made,
                         "outputs": {"output": [f"{leader}/sums.csv"], "plots": [f"{leader}/map.png"]}}
    assert by_run[2] == {**by_run[1], "run_number": 2, "status": "done"}
    assert by_run[8] == {"run_number": 8, "status": "new", "from_run": 8, "generation": None, "made_by": None,
                         "outputs": {}}
    assert by_run[3]["outputs"]["plots"] == ["/etc/passwd"]  # listed as reported: serving it is another matter

    text = ok(db, "outputs", "-c", "prompt", "--task", "probe", "--runs", "1,8").stdout.splitlines()
    assert text[0].split() == ["run", "status", "from", "gen", "made", "by", "kind", "path"]
    assert [line.split() for line in text[1:]] == [
        ["1", "merged", "2", "1", "version", "3.0;", "global_tag=GT_MAP", "output", f"{leader}/sums.csv"],
        ["1", "merged", "2", "1", "version", "3.0;", "global_tag=GT_MAP", "plots", f"{leader}/map.png"],
        ["8", "new", "8", "-", "-", "-", "-"]]

    unknown = invoke(db, "outputs", "-c", "prompt", "--task", "nope")
    assert unknown.exit_code == 1 and unknown.stderr == "Error: unknown task 'nope' in campaign 'prompt'\n"
    missing = invoke(db, "outputs", "-c", "prompt", "--task", "probe", "--runs", "99")
    assert missing.exit_code == 0 and missing.stdout.strip() == "no task instance of probe for these runs"


def fetch(served: Served, path: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(served.url.rstrip("/") + path, timeout=30) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


@pytest.fixture
def view(built: tuple[str, Path]) -> Iterator[Served]:
    yield from serve(built[0])


def test_the_instance_page_lists_the_outputs_and_serves_only_that_instances_png(
        view: Served, built: tuple[str, Path]) -> None:
    _, work = built
    leader = folder(work, 2)
    status, _, page = fetch(view, "/instance?c=prompt&task=probe&run=1")
    text = page.decode()
    assert status == 200
    assert "outputs of run" in text and 'href="/instance?c=prompt&amp;task=probe&amp;run=2">2</a>' in text
    assert "made by version 3.0; global_tag=GT_MAP" in text
    assert f"{leader}/sums.csv" in text and f"{leader}/map.png" in text
    assert 'href="/plot?c=prompt&amp;task=probe&amp;run=1&amp;n=0"' in text

    status, headers, body = fetch(view, "/plot?c=prompt&task=probe&run=1&n=0")
    assert (status, headers["content-type"], body) == (200, "image/png", png())
    assert headers["x-content-type-options"] == "nosniff" and "default-src 'self'" in headers[
        "content-security-policy"]

    refused = {
        3: (400, "/etc/passwd is not inside the work folder"),
        4: (400, "jobs/prompt/probe/4/g1/j0.a1/evil.png is a symbolic link: not served"),
        5: (400, f"{folder(work, 5)}/stdout is not a PNG: not served"),
        6: (400, f"{folder(work, 6)}/big.png is larger than 16 MiB: not served"),
        7: (400, "is not inside the work folder"),
        9: (400, "jobs/prompt/probe/9/g1/j0.a1/pipe.png is a named pipe: not served"),  # and never waited on
    }
    for run, (code, said) in refused.items():
        status, _, body = fetch(view, f"/plot?c=prompt&task=probe&run={run}&n=0")
        assert status == code and said in html.unescape(body.decode()), (run, body.decode()[-500:])
        assert b"root:" not in body
        page = fetch(view, f"/instance?c=prompt&task=probe&run={run}")[2].decode()
        assert 'class="plot-link"' not in page and said in html.unescape(page)  # the page says why
    for query, code, said in (("run=2&n=1", 404, "task probe run 2 has no plot 1 (it has 1)"),
                              ("run=8&n=0", 404, "task probe run 8 has no plot 0 (it has 0)"),
                              ("run=2&n=-1", 400, "invalid parameter 'n'"),
                              ("run=99&n=0", 404, "task 'probe' has no instance for run 99")):
        status, _, body = fetch(view, f"/plot?c=prompt&task=probe&{query}")
        assert status == code and said in html.unescape(body.decode()), (query, body.decode()[-500:])
    status, _, page = fetch(view, "/instance?c=prompt&task=probe&run=8")
    assert status == 200 and "No outputs yet." in page.decode()


def test_the_browser_shows_the_map_on_the_instance_page(browser: Any, view: Served) -> None:
    from selenium.webdriver.common.by import By

    browser.get(view.url.rstrip("/") + "/instance?c=prompt&task=probe&run=1")
    assert wait_for(lambda: browser.execute_script(
        "const i = document.querySelector('img.plot'); return i && i.complete && i.naturalWidth;") == 3)
    assert "made by version 3.0" in shown(browser, "#outputs")
    browser.find_element(By.CSS_SELECTOR, "a.plot-link").click()
    assert wait_for(lambda: "/plot?" in browser.current_url)
    assert browser.execute_script("return document.contentType;") == "image/png"
    assert no_alert(browser)
    assert json.dumps(shown(browser, "body")) is not None
