"""``ecalstate serve`` on 10,000 runs x 20 tasks: first paint of the grid and update latency.

Run ``python -m bench web``. The real command serves the database that ``bench.cli`` builds. Figures:
the server's response time for the grid page (one page of 200 runs, newest first) and for the poll that
open pages send; in headless Chromium (Debian's chromium and chromium-driver, when installed) the first
contentful paint of the grid and the latency from a transition committed by another client to the
changed cell in the open page (polling interval beside it: the latency is at most about one interval).
"""

from __future__ import annotations

import os
import select
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from bench.cli import ECALSTATE, RUNS, TASKS, build_status_db
from bench.common import row

REFRESH = 0.5  # seconds between an open page's polls, for this measurement
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@contextmanager
def served(db: str) -> Iterator[str]:
    """The URL of ``ecalstate serve`` on ``db`` (a free loopback port), stopped afterwards."""
    proc = subprocess.Popen([ECALSTATE, "--db", db, "serve", "-c", "bench", "--port", "0", "--refresh",
                             f"{REFRESH}s"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        ready, _, _ = select.select([proc.stderr], [], [], 120)
        line = proc.stderr.readline() if ready else ""
        if not line.startswith("serving "):
            raise RuntimeError(f"ecalstate serve did not start: {line.strip()!r}")
        yield line.split()[1].rstrip("/")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def response_time(url: str, repeat: int) -> tuple[float, float]:
    """(first, median of the next ``repeat``) seconds to fetch ``url`` whole."""
    times = []
    for _ in range(repeat + 1):
        start = time.perf_counter()
        with urllib.request.urlopen(url, timeout=60) as answer:
            answer.read()
        times.append(time.perf_counter() - start)
    return times[0], statistics.median(times[1:])


def browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--window-size=1400,900",
                f"--user-data-dir={tempfile.mkdtemp(prefix='ecalstate-bench-chromium-')}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


PAINT = "return performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? null;"
WATCH = """
const cell = document.querySelector(arguments[0]);
window.changedAt = null;
new MutationObserver(() => {
  const now = document.querySelector(arguments[0]);
  if (window.changedAt === null && now && now.dataset.status === arguments[1])
    window.changedAt = performance.timeOrigin + performance.now();
}).observe(document.getElementById('live'), {childList: true, subtree: true});
return cell.dataset.status;
"""


def wait(probe: Callable[[], Any], what: str, seconds: float = 30) -> Any:
    """The first value of ``probe()`` that is not None, polled every 20 ms."""
    deadline = time.monotonic() + seconds
    while (value := probe()) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} within {seconds:g} s")
        time.sleep(0.02)
    return value


def browser_figures(url: str, db: str, repeat: int) -> tuple[float, float]:
    """(median first contentful paint, median update latency) in seconds, in headless Chromium."""
    from ecalstate import Store

    driver = browser()
    try:
        paints = []
        for _ in range(repeat):
            driver.get("about:blank")
            driver.get(url + "/grid?c=bench")
            paints.append(wait(lambda: driver.execute_script(PAINT), "first contentful paint") / 1000)
        latencies = []
        run, target = 300_000 + RUNS - 1, "reprocess"
        selector = f'td[data-task="task00"][data-run="{run}"]'
        with Store.open(db, actor="bench") as store:
            for _ in range(repeat):
                driver.execute_script(WATCH, selector, target)
                store.set_status("bench", "task00", [run], target, reason="bench web")
                committed = time.time() * 1000
                shown = wait(lambda: driver.execute_script("return window.changedAt;"), "the transition in the page")
                latencies.append((shown - committed) / 1000)
                target = "skipped" if target == "reprocess" else "reprocess"
        return statistics.median(paints), statistics.median(latencies)
    finally:
        driver.quit()


def run(repeat: int = 5) -> list[dict[str, Any]]:
    """Every figure of the web view, as rows {name, value, unit, anchor, ratio}."""
    one_second = {"name": "target 1 s", "value": 1.0}
    size = f"{RUNS} runs x {TASKS} tasks"
    with tempfile.TemporaryDirectory(prefix="ecalstate-bench-web-") as tmp:
        db = os.path.join(tmp, "big.db")
        build_status_db(db)
        with served(db) as url:
            first, grid = response_time(url + "/grid?c=bench", repeat)
            _, poll = response_time(url + "/api/last?c=bench", repeat * 4)
            poll *= 1000
            rows = [row(f"serve: grid page (200 runs) response, {size}, first request", first, "s", one_second),
                    row(f"serve: grid page (200 runs) response, {size}", grid, "s", one_second),
                    row("serve: poll of an open page (/api/last)", poll, "ms",
                        note=f"every {REFRESH:g} s per open page in this run (--refresh; default 2 s)")]
            if shutil.which(CHROMEDRIVER) and shutil.which(CHROMIUM):
                paint, latency = browser_figures(url, db, repeat)
                rows += [row(f"serve: first contentful paint of the grid in Chromium, {size}", paint, "s",
                             one_second),
                         row("serve: update latency, another client's transition to the open page", latency, "s",
                             {"name": f"--refresh {REFRESH:g} s", "value": REFRESH},
                             note="commit -> changed cell in the DOM, no reload")]
            else:
                rows.append(row("serve: browser figures", 0, "skipped", note="chromium or chromium-driver missing"))
    return rows

