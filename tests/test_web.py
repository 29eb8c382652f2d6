"""``ecalstate serve`` (issue 13, item 1): the live read-only web view, served by the real command in a subprocess,
read over HTTP and in headless Chromium driven by Selenium (Debian's chromium-driver)."""

from __future__ import annotations

import hashlib
import re
import os
import select
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

import pytest
from cli_support import ECALSTATE

from ecalstate import RunSpec, Store
from ecalstate.db import DatabaseError
from ecalstate.errors import Invalid
from ecalstate.web import forbid_writes

XSS = "<script>alert(1)</script>"
TS = "%Y-%m-%dT%H:%M:%S.%fZ"


def build(db: str, work: Path, runs: int = 7) -> None:
    """Campaign ``prompt``, reco -> calib; reco run 1 failed (job 1 held, reason and stderr carry markup),
    run 2 processing and stuck (set up 7 h ago), calib run 1 blocked; runs 1..``runs`` in fills of three."""
    with Store.open(db, actor="setup", create=True) as store:
        store.clock = lambda: (datetime.now(timezone.utc) - timedelta(hours=7)).strftime(TS)  # type: ignore[method-assign]
        store.create_campaign("prompt")
        store.add_task("prompt", "reco", max_retries=0)
        store.add_task("prompt", "calib", depends_on=["reco"])
        store.update_rtype("prompt", "all", add=["reco", "calib"])
        store.inject_runs("prompt", [RunSpec(n, 10 + n // 3, {"class": "Collisions"}) for n in range(1, runs + 1)])
        store.claim("prompt", "reco", limit=2)
        for run in (1, 2):
            store.create_jobs("prompt", "reco", run, [0, 1])
            for jid in (0, 1):
                folder = work / "jobs" / "prompt" / "reco" / str(run) / "g1" / f"j{jid}.a1"  # the backends' layout
                folder.mkdir(parents=True)
                (folder / "stdout").write_text(f"run {run} job {jid} starting\n")
                (folder / "stderr").write_text(f"Traceback: {XSS} & boom in run {run}\n")
                store.set_job_status("prompt", "reco", run, jid, "running", {"logs": str(folder)},
                                     batch_id=f"{run}00.{jid}")
        store.set_job_status("prompt", "reco", 1, 0, "done")
        store.set_job_status("prompt", "reco", 1, 1, "failed", reason=f"{XSS} held: memory")
        store.complete_instances("prompt", "reco")


@dataclass
class Served:
    url: str
    db: str
    proc: subprocess.Popen[str]

    def get(self, path: str, host: Optional[str] = None) -> tuple[int, dict[str, str], str]:
        request = urllib.request.Request(self.url.rstrip("/") + path, headers={"Host": host} if host else {})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, dict(answer.headers), answer.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read().decode()


def start(db: Optional[str], *args: str, env: Optional[dict[str, str]] = None) -> tuple[subprocess.Popen[str], str]:
    """``ecalstate serve`` on a free port (``db`` None: from ECALSTATE_DB); (process, the first line it printed)."""
    where = [] if db is None else ["--db", db]
    proc = subprocess.Popen([ECALSTATE, *where, "serve", "--port", "0", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    assert proc.stderr is not None
    ready, _, _ = select.select([proc.stderr], [], [], 60)
    line = proc.stderr.readline().strip() if ready else ""
    return proc, line


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def serve(db: Optional[str], *args: str, env: Optional[dict[str, str]] = None) -> Iterator[Served]:
    proc, line = start(db, "-c", "prompt", "--refresh", "0.3s", *args, env=env)
    try:
        assert line.startswith("serving http://127.0.0.1:") and "(read-only)" in line, line
        yield Served(line.split()[1], db or "", proc)
    finally:
        stop(proc)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    db = str(tmp_path / "state.db")
    build(db, tmp_path / "jobs")
    yield from serve(db)


def cells(html: str) -> list[tuple[str, str, str]]:
    """(task, run, status) of every grid cell, in page order."""
    import re

    return re.findall(r'data-task="([^"]+)" data-run="(\d+)" data-status="(\w+)"', html)


# ----------------------------------------------------------------------------------------------- HTTP


def test_grid_pages_newest_runs_first_and_filters(tmp_path: Path) -> None:
    db = str(tmp_path / "state.db")
    build(db, tmp_path / "jobs", runs=450)
    for view in serve(db):
        status, headers, html = view.get("/grid?c=prompt")
        assert status == 200 and "450 runs match; page 1 of 3, newest first" in html
        runs = [int(r) for t, r, _ in cells(html) if t == "reco"]
        assert runs == list(range(450, 250, -1))  # a page of 200, newest first
        assert 'rel="next" href="/grid?page=2&amp;c=prompt"' in html
        assert [int(r) for t, r, _ in cells(view.get("/grid?c=prompt&page=3")[2]) if t == "reco"] == \
            list(range(50, 0, -1))
        failed = view.get("/grid?c=prompt&status=failed")[2]
        assert cells(failed) == [("reco", "1", "failed"), ("calib", "1", "new")]
        assert 'class="s-new blocked"' in failed and "new*" in failed  # calib 1 waits on a failed reco
        banner = re.search(r'<section class="health bad" id="health">(.*?)</section>', html, re.S)
        assert banner and re.sub(r"\s+", " ", banner.group(1)).count("2 problems, 1 warning") == 1
        # each item of the banner links to its instance: the failed reco, the stuck one, the blocked calib
        assert re.findall(r'href="/instance\?c=prompt&amp;task=(\w+)&amp;run=(\d+)"', banner.group(1)) == [
            ("reco", "1"), ("reco", "2"), ("calib", "1")]
        ranged = view.get("/grid?c=prompt&first=2&last=4&task=reco")[2]
        assert cells(ranged) == [("reco", "4", "new"), ("reco", "3", "new"), ("reco", "2", "processing")]
        assert '<td class="info">11</td><td class="info">all</td>' in ranged  # fill and run type of run 4
        assert '<td class="s-processing stuck" data-task="reco" data-run="2"' in ranged  # no job progress for 7 h
        assert "proc!</a>" in ranged
        assert headers["content-security-policy"].startswith("default-src 'self'")


def test_instance_page_shows_jobs_reasons_and_escaped_logs(served: Served) -> None:
    status, _, html = served.get("/instance?c=prompt&task=reco&run=1")
    assert status == 200 and 'id="instance-status">failed' in html
    assert XSS not in html  # stored text is data, never markup
    assert "job 1 failed: &lt;script&gt;alert(1)&lt;/script&gt; held: memory" in html
    assert "<pre>Traceback: &lt;script&gt;alert(1)&lt;/script&gt; &amp; boom in run 1" in html
    assert "<td>100.1</td>" in html and "generation 1 (current)" in html
    log = served.get("/log?c=prompt&task=reco&run=1&job=0&stream=stdout")[2]
    assert "run 1 job 0 starting" in log and "attempt 1 of generation 1" in log
    history = served.get("/history?c=prompt&task=reco&run=1")[2]
    assert "1 of 2 jobs failed beyond 0 retries" in history and XSS not in history


def test_history_of_the_last_hours_names_actor_and_reason(served: Served) -> None:
    assert "0 transitions" in served.get("/history?c=prompt&hours=6")[2]  # the setup ran 7 h ago
    done = subprocess.run([ECALSTATE, "--db", served.db, "--actor", "alice", "set", "-c", "prompt", "--task", "reco",
                           "--runs", "4", "skipped", "--reason", "ECAL off in run 4"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    shift = served.get("/history?c=prompt&hours=6")[2]
    assert "<td>alice</td>" in shift and "ECAL off in run 4</td>" in shift and "held: memory" not in shift
    assert "held: memory" in served.get("/history?c=prompt&hours=8")[2]


def test_bad_requests_get_one_clear_answer(served: Served) -> None:
    status, _, html = served.get("/grid?c=nope")
    assert status == 404 and "unknown campaign &#39;nope&#39;" in html
    status, _, html = served.get("/grid?c=prompt&first=abc")
    assert status == 400 and "invalid parameter &#39;first&#39;" in html
    assert served.get("/log?c=prompt&task=reco&run=7&job=0")[2].count("no jobs for job 0 of run 7") == 1
    assert served.get("/grid?c=prompt", host="attacker.example")[0] == 400  # DNS rebinding: foreign Host refused
    post = urllib.request.Request(served.url + "grid?c=prompt", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(post, timeout=30)
    assert refused.value.code == 405


def audit_rows(html: str) -> list[tuple[str, ...]]:
    """The cells of every row of a page's audit table, in page order."""
    import re

    return [tuple(re.findall(r"<td[^>]*>(.*?)</td>", row, re.S))
            for row in re.findall(r'<tr><td class="ts">.*?</tr>', html, re.S)]


def test_history_comes_in_capped_pages(tmp_path: Path) -> None:
    """The whole audit in one request grew with the audit (18 MB, 3 s on 20,000 runs): a page holds at most
    HISTORY_PAGE_MAX rows, and links page through the rest; a limit over it, or a page past the end, is a 400."""
    from ecalstate.web.app import HISTORY_PAGE_MAX

    db = str(tmp_path / "state.db")
    build(db, tmp_path / "jobs", runs=450)
    with Store.open(db, read_only=True) as store:
        total = len(store.history("prompt", limit=None, transitions_only=True))
    assert 900 < total < 1200
    for view in serve(db):
        status, _, html = view.get("/history?c=prompt&limit=1000000000")
        assert status == 400 and len(audit_rows(html)) == 0
        assert f"invalid parameter &#39;limit&#39; 1000000000: at most {HISTORY_PAGE_MAX} rows a page" in html
        pages = [view.get(f"/history?c=prompt&limit=400&page={n}") for n in (1, 2, 3)]
        assert [p[0] for p in pages] == [200, 200, 200]
        rows = [audit_rows(p[2]) for p in pages]
        assert [len(r) for r in rows] == [400, 400, total - 800]
        assert f"showing 1 to 400 of {total} transitions, newest first; page 1 of 3" in pages[0][2]
        assert f"showing 801 to {total} of {total} transitions, newest first; page 3 of 3" in pages[2][2]
        assert 'rel="next" href="/history?page=2&amp;c=prompt&amp;limit=400"' in pages[0][2]
        assert 'rel="prev" href="/history?page=2&amp;c=prompt&amp;limit=400"' in pages[2][2]
        assert 'rel="next"' not in pages[2][2] and 'rel="prev"' not in pages[0][2]
        whole = audit_rows(view.get(f"/history?c=prompt&limit={HISTORY_PAGE_MAX}")[2])
        assert rows[0] + rows[1] + rows[2][:len(whole) - 800] == whole  # one history, no row twice or lost
        assert len(audit_rows(view.get("/history?c=prompt")[2])) == 500  # the default page
        status, _, html = view.get("/history?c=prompt&limit=400&page=4")
        assert status == 400 and f"page 4 is past the end: {total} transitions make 3 pages of 400" in html
        assert view.get("/history?c=prompt&hours=1&page=2")[0] == 400  # nothing in the last hour: one empty page
        assert view.get("/history?c=prompt&hours=1")[0] == 200


def test_a_bad_status_a_bad_number_or_a_page_past_the_end_is_a_400(served: Served) -> None:
    for path, message in [
        ("/grid?c=prompt&status=bogus", "unknown task instance status &#39;bogus&#39; (valid: new, processing"),
        ("/history?c=prompt&status=bogus", "unknown status &#39;bogus&#39; (valid: new, processing, done, failed, "
                                           "merged, reprocess, skipped, idle, running)"),
        ("/history?c=prompt&page=0", "invalid parameter &#39;page&#39; 0: expected an integer from 1"),
        ("/history?c=prompt&page=x", "invalid parameter &#39;page&#39; &#39;x&#39;"),
        ("/history?c=prompt&limit=-5", "invalid parameter &#39;limit&#39; -5"),
        ("/grid?c=prompt&page=2", "page 2 is past the end: 7 runs make 1 page of 200"),
    ]:
        status, _, html = served.get(path)
        assert status == 400, (path, status)
        assert message in html and html.count('<p class="error"') == 1 and "Traceback" not in html, (path, html)
    failed = audit_rows(served.get("/history?c=prompt&status=failed")[2])
    assert failed and {row[9] for row in failed} == {"failed"}  # the "to" column
    assert 'value="failed" selected' in served.get("/history?c=prompt&status=failed")[2]


def test_a_damaged_database_is_a_clear_503(tmp_path: Path) -> None:
    db = str(tmp_path / "state.db")
    build(db, tmp_path / "jobs")
    for view in serve(db):
        assert view.get("/grid?c=prompt")[0] == 200
        Path(db).write_bytes(b"not a database, overwritten by mistake " * 200)
        status, _, html = view.get("/grid?c=prompt")
        assert status == 503 and "is damaged or not a database" in html and "Traceback" not in html


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_serving_leaves_the_database_unchanged(tmp_path: Path) -> None:
    folder = tmp_path / "db"
    folder.mkdir()
    db = str(folder / "state.db")
    build(db, tmp_path / "jobs")
    before = digest(folder)
    for view in serve(db):
        for path in ("/grid?c=prompt", "/instance?c=prompt&task=reco&run=1", "/history?c=prompt&hours=8",
                     "/api/last?c=prompt", "/"):
            assert view.get(path)[0] == 200
    assert view.proc.returncode == 0  # SIGTERM: a clean stop that closes the store
    assert digest(folder) == before


def test_the_view_cannot_write_even_with_query_only_lifted(tmp_path: Path) -> None:
    db = str(tmp_path / "state.db")
    build(db, tmp_path / "jobs")
    lift = "PRAGMA query_only=OFF"
    write = "UPDATE campaign SET description = 'written'"
    with Store.open(db, read_only=True) as unguarded:  # the read-only open alone: a PRAGMA lifts it
        with unguarded.db.tx(write=False) as tx:
            tx.execute(lift)
            assert tx.execute(write) == 1
            tx.conn.rollback()
    with Store.open(db, read_only=True) as store:
        forbid_writes(store)
        for sql in (lift, write, "ATTACH DATABASE ':memory:' AS other", "PRAGMA journal_mode=DELETE"):
            with pytest.raises(DatabaseError, match="not authorized"):
                with store.db.tx(write=False) as tx:
                    tx.execute(sql)
        assert store.overview("prompt").rows  # reads still work
    with Store.open(db) as writable, pytest.raises(Invalid, match="read-only"):
        forbid_writes(writable)


def test_serve_refuses_a_taken_port_and_a_missing_database(tmp_path: Path) -> None:
    db = str(tmp_path / "state.db")
    build(db, tmp_path / "jobs")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        done = subprocess.run([ECALSTATE, "--db", db, "serve", "--port", port], capture_output=True, text=True,
                              timeout=60)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in done.stderr
    missing = subprocess.run([ECALSTATE, "--db", str(tmp_path / "none.db"), "serve"], capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "Traceback" not in missing.stderr


def test_grid_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    build(pg_url, tmp_path / "jobs")
    for view in serve(None, env={"ECALSTATE_DB": pg_url}):
        html = view.get("/grid?c=prompt")[2]
        assert ("reco", "1", "failed") in cells(html) and ("reco", "2", "processing") in cells(html)
        assert "job 1 failed" in view.get("/instance?c=prompt&task=reco&run=1")[2]
    with Store.open(pg_url, read_only=True) as store:
        forbid_writes(store)
        with pytest.raises(DatabaseError, match="read-only transaction"):
            with store.db.tx(write=False) as tx:
                tx.execute("UPDATE campaign SET description = 'written'")


def test_without_a_campaign_the_home_page_lists_them(tmp_path: Path) -> None:
    db = str(tmp_path / "state.db")
    build(db, tmp_path / "jobs")
    proc, line = start(db)
    try:
        html = Served(line.split()[1], db, proc).get("/")[2]
        assert '<a href="/grid?c=prompt">prompt</a>' in html and "2 problems, 1 warning" in html
    finally:
        stop(proc)


# -------------------------------------------------------------------------------------------- browser


@pytest.fixture
def browser(chromium: str, chromedriver: str, tmp_path: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--window-size=1280,900",
                f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def no_alert(driver: Any) -> bool:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        driver.switch_to.alert
    except NoAlertPresentException:
        return True
    return False


def shown(driver: Any, selector: str, attribute: str = "innerText") -> Any:
    """An element's text (or attribute) read in one step in the page: the live region may be swapped between
    two WebDriver calls (a found element then goes stale); None when no element matches."""
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]);"
        " return e ? (arguments[1] === 'innerText' ? e.innerText : e.getAttribute(arguments[1])) : null;",
        selector, attribute)


def wait_for(condition: Any, seconds: float = 20.0) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def test_browser_clicks_from_the_grid_to_a_failed_jobs_log(browser: Any, served: Served) -> None:
    from selenium.webdriver.common.by import By

    browser.get(served.url)  # / leads to the campaign's grid
    cell = browser.find_element(By.CSS_SELECTOR, 'td[data-task="reco"][data-run="1"]')
    assert cell.text == "FAIL" and cell.value_of_css_property("background-color") == "rgba(220, 38, 38, 1)"
    cell.find_element(By.TAG_NAME, "a").click()
    assert wait_for(lambda: "/instance" in browser.current_url)
    tail = browser.find_element(By.CSS_SELECTOR, 'section.tail[data-job="1"]')
    assert f"job 1 failed: {XSS} held: memory" in tail.text  # the markup shows as text ...
    assert no_alert(browser)  # ... and never ran
    tail.find_element(By.LINK_TEXT, "stderr").click()
    assert wait_for(lambda: "/log" in browser.current_url)
    assert browser.find_element(By.ID, "log").text == f"Traceback: {XSS} & boom in run 1"
    assert no_alert(browser)


def test_browser_shows_another_process_transition_without_reload(browser: Any, served: Served) -> None:
    from selenium.webdriver.common.by import By

    browser.get(served.url.rstrip("/") + "/grid?c=prompt")
    browser.execute_script("window.notReloaded = true;")
    status = 'td[data-task="reco"][data-run="5"]'
    assert browser.find_element(By.CSS_SELECTOR, status).get_attribute("data-status") == "new"
    done = subprocess.run([ECALSTATE, "--db", served.db, "--actor", "shifter", "set", "-c", "prompt", "--task",
                           "reco", "--runs", "5", "skipped", "--reason", "detector off"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert wait_for(lambda: shown(browser, status, "data-status") == "skipped")
    assert shown(browser, status) == "skip"
    assert browser.execute_script("return window.notReloaded === true;")
    assert browser.find_element(By.ID, "live-status").text == "live"


def test_browser_instance_page_follows_its_jobs_live(browser: Any, served: Served) -> None:
    from selenium.webdriver.common.by import By

    browser.get(served.url.rstrip("/") + "/instance?c=prompt&task=reco&run=2")
    browser.execute_script("window.notReloaded = true;")
    assert browser.find_element(By.ID, "instance-status").text == "processing"
    done = subprocess.run([ECALSTATE, "--db", served.db, "--actor", "condor-check", "job", "set", "-c", "prompt",
                           "--task", "reco", "--run", "2", "--job", "0", "failed", "--reason", "held: disk quota"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    job = 'tr[data-job="0"][data-generation="1"]'
    assert wait_for(lambda: "held: disk quota" in (shown(browser, job) or ""))
    assert "failed" in shown(browser, job)
    assert shown(browser, "#instance-status") == "processing"  # job 1 still runs
    tail = shown(browser, 'section.tail[data-job="0"]')
    assert "Traceback: <script>alert(1)</script> & boom in run 2" in tail and no_alert(browser)
    assert browser.execute_script("return window.notReloaded === true;")
