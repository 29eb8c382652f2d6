"""The static HTML overview: content, escaping, self-containment, and what real headless Chromium shows."""

from __future__ import annotations

import re
import struct
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import build_chain, process

from ecalstate import Store
from ecalstate.report import COLOURS, render_html


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


def test_page_content(page_store: Store) -> None:
    page = render_html(page_store, "prompt", stuck_after=0)
    assert "<thead><tr><th>run</th><th>fill</th><th>reco</th><th>calib</th><th>plots</th></tr></thead>" in page
    rows = re.findall(r"<tr><th>(\d+)</th><th>(\d*)</th>((?:<td class=\"s-\w+\">[*!]?</td>){3})</tr>", page)
    assert [(run, fill) for run, fill, _ in rows] == [("1", "10"), ("2", "10"), ("3", "11"), ("4", "11")]
    matrix = {(task, int(run)): cell for run, _, cells in rows
              for task, cell in zip(["reco", "calib", "plots"], re.findall(r'"s-(\w+)">([*!]?)<', cells))}
    assert matrix[("reco", 3)] == ("failed", "") and matrix[("reco", 1)] == ("done", "")
    assert matrix[("calib", 3)] == ("new", "*") and matrix[("calib", 1)] == ("failed", "")
    assert matrix[("plots", 1)] == ("new", "*")  # its upstream calib failed
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; bad &amp; late" in page
    failures = page.split("<h2>Recent failures")[1].split("<h2>")[0]
    assert failures.count("<tr>") == 1 + 4  # header, calib run 1, reco run 3 (the task, its job's two failures)
    assert "unhealthy: 0 stuck, 0 silent, 0 failing, 2 blocked" in page
    assert not re.search(r"(src|href)=|<script|<link|@import|url\(|https?://", page)  # self-contained


def test_page_of_an_empty_campaign(tmp_path: Path) -> None:
    with Store.open(str(tmp_path / "s.db"), create=True) as store:
        store.create_campaign("empty")
        page = render_html(store, "empty")
    assert "no runs or no tasks yet" in page and "no failures recorded" in page and "healthy" in page


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
