"""The web view reads the attention model (issue 22): a "needs action" page (problems first, then warnings, each
with its command as text to copy and a link to its instance), grid cells marked with their reason, the health
banner's items as links. Served by the real ``ecalstate serve`` and read in headless Chromium."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from cli_support import ECALSTATE
from test_web import browser, build, no_alert, serve, shown, wait_for  # noqa: F401 (the browser fixture)

C = "prompt"


def test_needs_action_lists_problems_first_with_commands_and_links(tmp_path: Path) -> None:
    db = str(tmp_path / "state.db")
    build(db, tmp_path / "jobs")  # reco 1 failed, reco 2 stuck for 7 h, calib 1 blocked
    for view in serve(db):
        status, _, html = view.get(f"/attention?c={C}")
        assert status == 200 and "2 problems, 1 warning" in html
        rows = re.findall(r'<tr data-level="(\w+)" data-reason="([\w-]+)" data-task="(\w+)" data-run="(\d+)">', html)
        assert rows == [("problem", "failed", "reco", "1"), ("problem", "stuck", "reco", "2"),
                        ("warning", "blocked", "calib", "1")]
        commands = re.findall(r'<code class="command">([^<]*)</code>', html)
        assert commands[0] == f'ecalstate reprocess -c {C} --task reco --runs 1 --reason &#34;...&#34;'
        assert commands[2] == commands[0]  # the blocked calib is resolved by reprocessing its failed upstream
        assert f'href="/instance?c={C}&amp;task=calib&amp;run=1"' in html
        grid = view.get(f"/grid?c={C}")[2]
        cell = re.search(r'<td class="s-processing stuck" data-task="reco" data-run="2"[^>]*>', grid)
        assert cell and 'data-reason="stuck" data-level="problem"' in cell.group(0)
        assert "to resolve: ecalstate reprocess -c prompt --task reco --runs 2" in cell.group(0)
        assert view.get(f"/attention?c={C}&all=2")[0] == 400


def test_browser_goes_from_the_grid_to_what_needs_action_and_follows_it_live(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    db = str(tmp_path / "state.db")
    build(db, tmp_path / "jobs")
    for view in serve(db):
        browser.get(view.url)
        browser.find_element(By.LINK_TEXT, "needs action").click()
        assert wait_for(lambda: "/attention" in browser.current_url)
        browser.execute_script("window.notReloaded = true;")
        rows = browser.find_elements(By.CSS_SELECTOR, "table.attention tr[data-level]")
        levels = [e.get_attribute("data-level") for e in rows]
        assert levels == ["problem", "problem", "warning"]
        command = browser.find_element(By.CSS_SELECTOR, 'tr[data-reason="stuck"] code.command').text
        assert command == f'ecalstate reprocess -c {C} --task reco --runs 2 --reason "..."'
        # the operator resolves the failure in another process: the page follows without a reload
        done = subprocess.run([ECALSTATE, "--db", db, "--actor", "shifter", "set", "-c", C, "--task", "reco", "--runs",
                               "1", "skipped", "--reason", "raw data lost"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert wait_for(lambda: shown(browser, 'tr[data-reason="failed"]', "data-run") is None)
        assert shown(browser, 'tr[data-reason="blocked"]', "data-run") is None  # calib 1 was skipped with it
        assert browser.execute_script("return window.notReloaded === true;")
        browser.find_element(By.CSS_SELECTOR, 'tr[data-reason="stuck"] a').click()
        assert wait_for(lambda: "/instance" in browser.current_url)
        assert "stuck" in shown(browser, "#waits") and command in shown(browser, "#waits")
        assert no_alert(browser)
