"""The static HTML overview: content, escaping, self-containment, and what real headless Chromium shows."""

from __future__ import annotations

import re
import struct
import subprocess
import zlib
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from cli_support import build_chain, invoke, ok, process

from ecalstate import RunSpec, Store
from ecalstate.clock import human_time
from ecalstate.report import COLOURS, render_html

HOSTILE = '"><script>alert(1)</script><td title="x\' onmouseover=\'alert(2)'


@pytest.fixture
def page_store(tmp_path: Path) -> Iterator[Store]:
    """prompt: reco done for runs 1, 2 and 4, failed for run 3 (so calib run 3 is blocked); calib claimed for run 1."""
    db = str(tmp_path / "state.db")
    build_chain(db)
    process(db, "reco", done=[1, 2, 4], failed=[3])
    store = Store.open(db, actor="shifter")
    store.claim("prompt", "calib", limit=1)
    store.set_status("prompt", "calib", [1], "failed", reason="<script>alert(1)</script> bad & late")
    yield store
    store.close()


class Parsed(HTMLParser):
    """Every tag and attribute of a page, the matrix cells (class, title, text) and the text of each table."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.attrs: set[str] = set()
        self.cells: list[tuple[str, str, str]] = []
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None
        self._td: tuple[str, str] = ("", "")
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attrs.update(name for name, _ in attrs)
        values = {k: v or "" for k, v in attrs}
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell, self._td = [], (values.get("class", ""), values.get("title", ""))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            text = "".join(self._cell)
            self.tables[-1][-1].append(text)
            if tag == "td" and self._td[0].startswith("s-"):
                self.cells.append((self._td[0][2:], self._td[1], text))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def section(page: str, title: str) -> str:
    return page.split(f"<h2>{title}")[1].split("<h2>")[0]


def test_page_content(page_store: Store) -> None:
    page = render_html(page_store, "prompt", stuck_after=0)
    assert "<thead><tr><th>run</th><th>fill</th><th>reco</th><th>calib</th><th>plots</th></tr></thead>" in page
    rows = re.findall(r"<tr><th>(\d+)</th><th>(\d*)</th>((?:<td class=\"s-\w+\"[^>]*>[^<]*</td>){3})</tr>", page)
    assert [(run, fill) for run, fill, _ in rows] == [("1", "10"), ("2", "10"), ("3", "11"), ("4", "11")]
    matrix = {(task, int(run)): cell for run, _, cells in rows
              for task, cell in zip(["reco", "calib", "plots"], re.findall(r'"s-(\w+)"[^>]*>([^<]*)<', cells))}
    assert matrix[("reco", 3)] == ("failed", "failed") and matrix[("reco", 1)] == ("done", "done")
    assert matrix[("calib", 3)] == ("new", "new *") and matrix[("calib", 1)] == ("failed", "failed")
    assert matrix[("plots", 1)] == ("new", "new *")  # its upstream calib failed
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; bad &amp; late" in page
    failures = page.split("<h2>Recent failures")[1].split("<h2>")[0]
    assert failures.count("<tr>") == 1 + 4  # header, calib run 1, reco run 3 (the task, its job's two failures)
    assert "unhealthy: 0 stuck, 0 silent, 0 failing, 2 blocked, 2 failed</span>" in page  # calib 1, reco 3
    assert not re.search(r"(src|href)=|<script|<link|@import|url\(|https?://", page)  # self-contained


def test_page_of_an_empty_campaign(tmp_path: Path) -> None:
    with Store.open(str(tmp_path / "s.db"), create=True) as store:
        store.create_campaign("empty")
        page = render_html(store, "empty")
    assert "no runs or no tasks yet" in page and "no failures recorded" in page and "healthy" in page


def test_cells_say_their_status_in_text_and_tooltip(page_store: Store) -> None:
    page = Parsed(render_html(page_store, "prompt"))
    assert len(page.cells) == 12
    for status, title, text in page.cells:  # not colour only: the word is in the cell and starts its tooltip
        assert text.split(" ")[0] == status and f": {status}; " in title, (status, title, text)
    titles = {title.split(":")[0]: title for _, title, _ in page.cells}
    calib1, reco3 = page_store.instance("prompt", "calib", 1), page_store.instance("prompt", "reco", 3)
    assert titles["calib run 1"] == (f"calib run 1: failed; generation {calib1.generation}; last change "
                                     f"{human_time(calib1.updated_at)}; reason: <script>alert(1)</script> bad & late")
    assert titles["reco run 3"] == (f"reco run 3: failed; generation {reco3.generation}; last change "
                                    f"{human_time(reco3.updated_at)}; reason: 1 of 1 jobs failed beyond 1 retries")
    assert titles["calib run 3"].startswith("calib run 3: new; not claimed yet; last change ")
    assert titles["calib run 3"].endswith("; blocked: an upstream task failed")


def test_jobs_left_unsubmitted_are_in_badge_and_health(tmp_path: Path) -> None:
    """A build killed after its claim: an hour later its jobs, never submitted, make the page unhealthy."""
    with Store.open(str(tmp_path / "s.db"), actor="jenkins", create=True) as store:
        store.clock = lambda: "2000-01-01T00:00:00.000000Z"  # type: ignore[method-assign]
        store.create_campaign("prompt")
        store.add_task("prompt", "reco")
        store.update_rtype("prompt", "all", add=["reco"])
        store.inject_runs("prompt", [RunSpec(7, 1)])
        store.claim("prompt", "reco", 1, None, jobs=lambda claim: [(0, {}), (1, {})])
        store.clock = type(store).clock.__get__(store)  # type: ignore[method-assign]
        page = render_html(store, "prompt", stuck_after=40 * 365 * 86400, silent_after=40 * 365 * 86400)
    assert "unhealthy: 0 stuck, 0 silent, 0 failing, 0 blocked, 1 unsubmitted" in page
    health = Parsed(section(page, "Health")).tables[0]
    assert health[0] == ["campaign", "task", "run", "since", "jobs"] and len(health) == 2
    assert health[1][:3] == ["prompt", "reco", "7"] and health[1][3] == "2000-01-01T00:00:00Z"
    assert health[1][4] == "2"


def test_failed_jobs_waiting_for_a_retry_are_counted_apart(tmp_path: Path) -> None:
    db = str(tmp_path / "state.db")
    build_chain(db)
    with Store.open(db, actor="jenkins") as store:
        store.claim("prompt", "reco", limit=1)
        store.create_jobs("prompt", "reco", 1, [0, 1])
        store.set_job_status("prompt", "reco", 1, 0, "failed")  # attempt 1 of 2: the next resubmit retries it
        page = render_html(store, "prompt")
    assert '<span class="badge ok">healthy</span>' in page
    assert "1 failed job(s) of 1 instance(s) wait for a retry (resubmit)" in section(page, "Health")


def test_legend_shows_every_status_with_its_colour(page_store: Store) -> None:
    page = render_html(page_store, "prompt")
    legend = page.split('<p class="legend">')[1].split("</p>")[0]
    for status in ("new", "processing", "done", "failed", "merged", "reprocess", "skipped"):
        assert f'<i style="background:{COLOURS[status]}"></i>{status}</span>' in legend, status
    assert COLOURS["skipped"] == "#a3a3a3"  # grey, as in the CLI and the dashboard


def operator_day(db: str) -> dict[str, str]:
    """reco: runs 1, 2 done and 3 failed by the handler; then alice acts by hand. Returns each action's time."""
    build_chain(db)
    process(db, "reco", done=[1, 2], failed=[3])  # run 4 stays processing: claimed, no jobs
    times = {}
    with Store.open(db, actor="alice") as store:
        for name, call in [
            ("abort", lambda: store.set_status("prompt", "reco", [4], "failed", reason="hung, aborted")),
            ("skip", lambda: store.set_status("prompt", "reco", [3], "skipped", reason="bad DQ")),
            ("redo", lambda: store.reprocess("prompt", "reco", runs=[1, 2], reason="new conditions")),
        ]:
            call()
            times[name] = store.history("prompt", limit=1)[0].ts
    return times


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_operator_actions_of_the_period(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    db = str(tmp_path / "state.db") if engine == "sqlite" else request.getfixturevalue("pg_url")
    times = operator_day(db)
    shown = {name: human_time(ts) for name, ts in times.items()}  # the page shows seconds (issue 23 item 5)
    with Store.open(db) as store:
        identity = store.history("prompt", limit=1)[0].identity
        whole = render_html(store, "prompt")
        later = render_html(store, "prompt", since=times["skip"])
        before = render_html(store, "prompt", until=times["skip"])
    actions = Parsed(section(whole, "Operator actions")).tables[0]
    assert actions == [
        ["time", "actor", "identity", "task", "transition", "runs", "reason"],
        [shown["abort"], "alice", identity, "reco", "processing -> failed", "4", "hung, aborted"],
        [shown["skip"], "alice", identity, "reco", "failed -> skipped", "3", "bad DQ"],
        [shown["skip"], "alice", identity, "calib", "new -> skipped", "3", "bad DQ (cascade)"],
        [shown["skip"], "alice", identity, "plots", "new -> skipped", "3", "bad DQ (cascade)"],
        [shown["redo"], "alice", identity, "reco", "done -> reprocess", "1-2", "new conditions"],
    ]  # claims, job updates and the handler's own completions (actor setup) are not operator actions
    assert [row[5] for row in Parsed(section(later, "Operator actions")).tables[0][1:]] == ["3", "3", "3", "1-2"]
    assert [row[4] for row in Parsed(section(before, "Operator actions")).tables[0][1:]] == ["processing -> failed"]
    assert f"<h2>Operator actions from {human_time(times['skip'])}" in later


def test_operator_actions_none_in_the_period(page_store: Store) -> None:
    page = render_html(page_store, "prompt", since="2999-01-01T00:00:00.000000Z")
    assert "no operator actions in this period" in section(page, "Operator actions")


def test_hostile_text_stays_text(tmp_path: Path) -> None:
    db = str(tmp_path / "state.db")
    build_chain(db)
    with Store.open(db, actor=HOSTILE) as store:
        store.set_status("prompt", "reco", [1], "skipped", reason=HOSTILE)
        page = render_html(store, "prompt")
    parsed = Parsed(page)
    assert parsed.tags <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "span", "i",
                           "table", "thead", "tbody", "tr", "th", "td"}
    assert not any(a.startswith("on") for a in parsed.attrs) and "<script>" not in page
    titles = [title for status, title, _ in parsed.cells if title.startswith("reco run 1:")]
    assert titles[0].endswith(f"; reason: {HOSTILE}")  # the whole reason, back as text after parsing
    action = Parsed(section(page, "Operator actions")).tables[0][1]
    assert (action[1], action[6]) == (HOSTILE, HOSTILE)


def test_report_cli_period_and_bad_time(tmp_path: Path) -> None:
    db, out = str(tmp_path / "state.db"), tmp_path / "page.html"
    times = operator_day(db)
    ok(db, "report", "html", "-c", "prompt", "--out", str(out), "--since", times["redo"])
    rows = Parsed(section(out.read_text(), "Operator actions")).tables[0][1:]
    assert [row[4] for row in rows] == ["done -> reprocess"]
    ok(db, "report", "html", "-c", "prompt", "--out", str(out))  # default: the last 24 hours
    assert len(Parsed(section(out.read_text(), "Operator actions")).tables[0]) == 1 + 5
    bad = invoke(db, "report", "html", "-c", "prompt", "--out", str(tmp_path / "x.html"), "--since", "yesterday")
    assert bad.exit_code == 2 and "invalid time 'yesterday'" in bad.stderr
    assert not (tmp_path / "x.html").exists()


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB bytes) of an 8-bit RGB or RGBA PNG, no interlacing."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, corner = prev[i], (prev[i - bpp] if i >= bpp else 0)
            if kind == 1:
                line[i] = (line[i] + left) & 255
            elif kind == 2:
                line[i] = (line[i] + up) & 255
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 255
        prev = line
        rows.append(bytes(line) if bpp == 3 else bytes(b for j in range(0, stride, 4) for b in line[j:j + 3]))
    return width, height, rows


def count_colour(rows: list[bytes], hex_colour: str, tolerance: int = 3) -> int:
    want = bytes.fromhex(hex_colour.lstrip("#"))
    count = 0
    for row in rows:
        for x in range(0, len(row), 3):
            if all(abs(row[x + k] - want[k]) <= tolerance for k in range(3)):
                count += 1
    return count


def chromium_args(chromium: str, profile: Path) -> list[str]:
    return [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--window-size=1200,800"]


def test_chromium_renders_the_matrix(chromium: str, page_store: Store, tmp_path: Path) -> None:
    html = tmp_path / "overview.html"
    html.write_text(render_html(page_store, "prompt"))
    shot = tmp_path / "overview.png"
    run = subprocess.run([*chromium_args(chromium, tmp_path / "profile-shot"), f"--screenshot={shot}",
                          html.as_uri()], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    width, height, rows = decode_png(shot.read_bytes())
    assert (width, height) == (1200, 800)
    cell = 56 * 18  # the CSS minimum of one matrix cell; the legend adds a 14 x 14 swatch per colour
    done, failed = count_colour(rows, COLOURS["done"]), count_colour(rows, COLOURS["failed"])
    assert done >= 3 * cell and failed >= 2 * cell, (done, failed)  # reco runs 1, 2, 4; reco 3 and calib 1
    assert 1.3 <= done / failed <= 1.7, (done, failed)  # three cells against two
    for absent in ("processing", "merged", "reprocess"):
        assert count_colour(rows, COLOURS[absent]) <= 14 * 14, absent  # the legend swatch only
    white = count_colour(rows, "#ffffff", tolerance=0)
    assert white < width * height * 0.97  # not a blank page

    dom = subprocess.run([*chromium_args(chromium, tmp_path / "profile-dom"), "--dump-dom", html.as_uri()],
                         capture_output=True, text=True, timeout=120, check=False)
    assert dom.returncode == 0, dom.stderr[-2000:]
    statuses = re.findall(r'<td class="s-(\w+)"', dom.stdout)
    assert sorted(statuses) == sorted(["done"] * 3 + ["failed"] * 2 + ["new"] * 7)
