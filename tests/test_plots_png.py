"""The phisym-plots PNG reads as an ECAL physicist's map (issue 23, item 8).

The payload runs as a real process on real CSV files; the test decodes its PNG with the standard library
(zlib and the five row filters, written here from the PNG specification) and reads the picture as a person
would: finds the map's frame, the colour bar beside it, the labels printed with the payload's font, and checks
that each crystal's colour is the bar's colour at its constant.
"""

from __future__ import annotations

import csv
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import pytest
from handler_support import settle

from ecalstate import RunSpec, Store
from ecalstate.backends.local import LocalBackend

REPO = Path(__file__).resolve().parent.parent
PAYLOAD = REPO / "handlers" / "jobs" / "phisym_plots_job.py"
sys.path.insert(0, str(REPO / "handlers"))
sys.path.insert(0, str(REPO / "handlers" / "jobs"))

import ecaljob  # noqa: E402
from phisym_calib import PhiSymCalib  # noqa: E402
from phisym_plots import PhiSymPlots  # noqa: E402
from phisym_reco import PhiSymReco  # noqa: E402

RGB = tuple[int, int, int]
TEXT_SCALE = 2  # the payload prints every label at twice the font's size
TITLE = "PhiSym IC, fill 9001, runs 380001-380003"
MISSING = (7, 33)  # a crystal without a constant
OVER = (3, 3)  # a crystal above the bar's range


class Png:
    """A decoded 8-bit RGB PNG: size and pixels."""

    def __init__(self, path: Path) -> None:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        pos, idat, kinds = 8, b"", []
        while pos < len(data):
            (length,) = struct.unpack(">I", data[pos:pos + 4])
            kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
            (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
            assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, kind
            kinds.append(kind)
            if kind == b"IHDR":
                self.width, self.height, depth, ctype, comp, filt, interlace = struct.unpack(">IIBBBBB", body)
                assert (depth, ctype, comp, filt, interlace) == (8, 2, 0, 0, 0)  # 8-bit RGB, not interlaced
            elif kind == b"IDAT":
                idat += body
            pos += 12 + length
        assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds
        raw = zlib.decompress(idat)
        stride = self.width * 3
        assert len(raw) == self.height * (stride + 1)
        self.rows: list[bytearray] = []
        prev = bytearray(stride)
        for y in range(self.height):
            kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
            for i in range(stride):
                a = line[i - 3] if i >= 3 else 0
                b, c = prev[i], (prev[i - 3] if i >= 3 else 0)
                if kind == 1:
                    line[i] = (line[i] + a) & 0xFF
                elif kind == 2:
                    line[i] = (line[i] + b) & 0xFF
                elif kind == 3:
                    line[i] = (line[i] + (a + b) // 2) & 0xFF
                elif kind == 4:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
                else:
                    assert kind == 0, f"row {y}: filter {kind}"
            self.rows.append(line)
            prev = line
        self.mask = ["".join("#" if max(line[x * 3:x * 3 + 3]) < 100 else "." for x in range(self.width))
                     for line in self.rows]

    def px(self, x: int, y: int) -> RGB:
        r, g, b = self.rows[y][x * 3:x * 3 + 3]
        return r, g, b

    def dark(self, x: int, y: int) -> bool:
        return self.mask[y][x] == "#"


def glyphs(text: str, vertical: bool = False) -> list[str]:
    """``text`` in the payload's font at the labels' size; ``vertical`` turns it to read upwards."""
    rows = ["".join(ch * TEXT_SCALE for ch in row) for row in ecaljob.text_mask(text) for _ in range(TEXT_SCALE)]
    if vertical:
        rows = ["".join(row[len(rows[0]) - 1 - i] for row in rows) for i in range(len(rows[0]))]
    return rows


def find(png: Png, text: str, vertical: bool = False) -> list[tuple[float, float]]:
    """The centres of every place where ``text`` is printed (its ink, exactly, on a light background)."""
    rows = glyphs(text, vertical)
    inked = [i for i, row in enumerate(rows) if "#" in row]
    cols = [j for j in range(len(rows[0])) if any(row[j] == "#" for row in rows)]
    found = []
    for y in range(png.height - len(rows) + 1):
        x = png.mask[y].find(rows[0])
        while x >= 0:
            if all(png.mask[y + k][x:x + len(rows[k])] == rows[k] for k in range(1, len(rows))):
                found.append((x + (cols[0] + cols[-1]) / 2, y + (inked[0] + inked[-1]) / 2))
            x = png.mask[y].find(rows[0], x + 1)
    return found


def one(png: Png, text: str, vertical: bool = False, near: Optional[tuple[float, float]] = None,
        within: float = 1e9) -> tuple[float, float]:
    """Where ``text`` is printed (the one place, or the one place near ``near``)."""
    places = [p for p in find(png, text, vertical)
              if near is None or (abs(p[0] - near[0]) <= within and abs(p[1] - near[1]) <= within)]
    assert len(places) == 1, f"{text!r} printed at {places}"
    return places[0]


class Map:
    """The map's frame and cells, and the colour bar beside it, found in the picture."""

    def __init__(self, png: Png) -> None:
        self.png = png
        # the frame's top edge: the first long dark line (no text is that long)
        self.top = next(y for y, row in enumerate(png.mask) if "#" * 300 in row)
        self.left = png.mask[self.top].index("#" * 300)
        self.right = self.left + len(png.mask[self.top][self.left:].split(".")[0]) - 1
        self.bottom = self.top + 1
        while png.dark(self.left, self.bottom + 1):
            self.bottom += 1
        assert png.dark(self.right, self.bottom) and png.dark((self.left + self.right) // 2, self.bottom)
        width, height = self.right - self.left - 1, self.bottom - self.top - 1
        self.cell = width // ecaljob.N_PHI
        assert width == self.cell * ecaljob.N_PHI and height == self.cell * ecaljob.N_ETA  # square crystals
        # the colour bar: the next framed box to the right, at the map's middle height
        middle = (self.top + self.bottom) // 2
        self.bar_left = png.mask[middle].index("#", self.right + 1)
        self.bar_right = png.mask[middle].index("#", self.bar_left + 2)
        self.bar_x = (self.bar_left + self.bar_right) // 2
        self.bar_top = max(y for y in range(middle) if png.dark(self.bar_x, y))
        self.bar_bottom = min(y for y in range(middle, png.height) if png.dark(self.bar_x, y))
        self.bar = [png.px(self.bar_x, y) for y in range(self.bar_top + 1, self.bar_bottom)]

    def centre(self, ieta: int, iphi: int) -> tuple[int, int]:
        """The pixel at the centre of a crystal's cell: iphi left to right, ieta bottom to top."""
        half = self.cell // 2
        return (self.left + 1 + (iphi - 1) * self.cell + half,
                self.top + 1 + (ecaljob.N_ETA - ieta) * self.cell + half)

    def cell_colours(self, ieta: int, iphi: int) -> set[RGB]:
        x, y = self.centre(ieta, iphi)
        half = self.cell // 2
        span = range(-half, self.cell - half)
        return {self.png.px(x + i, y + j) for i in span for j in span}

    def bar_row(self, colour: RGB) -> int:
        """The bar's row (image y) whose colour is nearest to ``colour``."""
        i = min(range(len(self.bar)), key=lambda k: distance(self.bar[k], colour))
        return self.bar_top + 1 + i

    def label(self, text: str) -> tuple[float, float]:
        """A label printed beside the colour bar."""
        return one(self.png, text, near=(self.bar_right + 30, (self.bar_top + self.bar_bottom) / 2),
                   within=max(40, (self.bar_bottom - self.bar_top)))


def distance(a: RGB, b: RGB) -> int:
    return sum(abs(x - y) for x, y in zip(a, b))


def constant(ieta: int, iphi: int) -> float:
    """A pattern of constants across the bar's whole range (0.85 - 1.15), no two neighbours alike."""
    return round(0.86 + 0.28 * (((ieta * 37 + iphi * 11) % 29) / 28), 6)


def write_constants(path: Path, skip: Sequence[tuple[int, int]] = (), extra: Sequence[str] = ()) -> None:
    with open(path, "w") as handle:
        handle.write("ieta,iphi,ic\n")
        for ieta, iphi in ecaljob.crystals():
            if (ieta, iphi) in skip:
                continue
            value = 1.4 if (ieta, iphi) == OVER else constant(ieta, iphi)
            handle.write(f"{ieta},{iphi},{value:.6f}\n")
        handle.writelines(line + "\n" for line in extra)


def plot(tmp_path: Path, constants: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path / "out" / "map.png"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECALSTATE")}
    env["ECALSTATE_REPORT"] = str(tmp_path / "report.json")
    result = subprocess.run([sys.executable, str(PAYLOAD), "--constants", str(constants), "--out", str(out), *args],
                            capture_output=True, text=True, env=env, timeout=60)
    return result, out


@pytest.fixture(scope="module")
def demo_map(tmp_path_factory: pytest.TempPathFactory) -> Map:
    tmp = tmp_path_factory.mktemp("map")
    write_constants(tmp / "ic.csv", skip=[MISSING])
    result, out = plot(tmp, tmp / "ic.csv", "--fill", "9001", "--runs", "380002,380001,380003")
    assert result.returncode == 0, result.stderr
    return Map(Png(out))


def test_the_png_is_a_small_rgb_picture_of_the_expected_size(demo_map: Map) -> None:
    png = demo_map.png
    assert (png.width, png.height) == (756, 265)
    assert demo_map.cell == 8  # 8 px per crystal: the labels are legible beside it
    assert png.px(0, 0) == png.px(png.width - 1, png.height - 1) == (255, 255, 255)  # white background
    # every corner of the frame, the map inside it, the bar beside it, all inside the picture
    assert 0 < demo_map.left < demo_map.right < demo_map.bar_left < demo_map.bar_right < png.width - 1
    assert demo_map.bar_top == demo_map.top and demo_map.bar_bottom == demo_map.bottom


def test_each_crystal_has_the_colour_bars_colour_for_its_constant(demo_map: Map) -> None:
    top, bottom = demo_map.label("1.15"), demo_map.label("0.85")
    middle = demo_map.label("1.00")
    assert bottom[1] > middle[1] > top[1] and abs(middle[1] - (top[1] + bottom[1]) / 2) <= 1
    per_pixel = (1.15 - 0.85) / (bottom[1] - top[1])

    def read_off(colour: RGB) -> float:
        return 1.15 - (demo_map.bar_row(colour) - top[1]) * per_pixel

    for ieta, iphi in ecaljob.crystals():
        if (ieta, iphi) in (MISSING, OVER):
            continue
        colours = demo_map.cell_colours(ieta, iphi)
        assert len(colours) == 1, (ieta, iphi, colours)  # one colour fills the whole cell
        (colour,) = colours
        assert abs(read_off(colour) - constant(ieta, iphi)) <= 2.5 * per_pixel, (ieta, iphi, colour)
    # above the range: the bar's top colour; no constant: grey, which the bar never shows
    assert demo_map.cell_colours(*OVER) == {demo_map.bar[0]}
    (grey,) = demo_map.cell_colours(*MISSING)
    assert grey[0] == grey[1] == grey[2] and min(distance(grey, c) for c in demo_map.bar) > 60


def test_the_colour_bar_runs_monotonically_from_blue_to_red(demo_map: Map) -> None:
    palette = [ecaljob.colour(i / 1000, 0, 1) for i in range(1001)]
    # where on the palette each row of the bar is, from its bottom to its top
    place = [min(range(1001), key=lambda i: distance(palette[i], c)) for c in reversed(demo_map.bar)]
    assert all(distance(palette[p], c) <= 3 for p, c in zip(place, reversed(demo_map.bar)))
    assert place == sorted(place) and len(set(place)) > 0.9 * len(place)  # steadily up, no flat stretch
    assert place[0] < 10 and place[-1] > 990  # blue at 0.85, red at 1.15
    assert demo_map.bar[0][0] == 255 and demo_map.bar[0][2] < 60 and demo_map.bar[-1][2] == 255


def test_title_axes_and_ticks_are_printed_where_they_belong(demo_map: Map) -> None:
    png, m = demo_map.png, demo_map
    title = one(png, TITLE)
    assert title[1] < m.top and abs(title[0] - (m.left + m.right) / 2) <= 6  # above the map, centred on it
    # iphi: 1, 10, ..., 70 under their columns; its name under the ticks
    for iphi in (1, 10, 20, 30, 40, 50, 60, 70):
        x, y = one(png, str(iphi), near=(m.centre(1, iphi)[0], m.bottom + 15), within=15)
        assert abs(x - m.centre(1, iphi)[0]) <= 1 and m.bottom < y < m.bottom + 30
        assert png.dark(m.centre(1, iphi)[0], m.bottom + 2)  # a tick below the frame
    name = one(png, "iφ")
    assert m.bottom + 25 < name[1] < png.height and abs(name[0] - (m.left + m.right) / 2) <= 6
    # ieta: 1, 5, ..., 20 left of their rows, 20 at the top; its name, reading upwards, left of them
    for ieta in (1, 5, 10, 15, 20):
        x, y = one(png, str(ieta), near=(m.left - 20, m.centre(ieta, 1)[1]), within=20)
        assert abs(y - m.centre(ieta, 1)[1]) <= 1 and x < m.left
        assert png.dark(m.left - 2, m.centre(ieta, 1)[1])
    name = one(png, "iη", vertical=True)
    assert name[0] < m.left - 25 and abs(name[1] - (m.top + m.bottom) / 2) <= 6


def test_the_title_names_the_fill_and_its_runs(tmp_path: Path) -> None:
    write_constants(tmp_path / "ic.csv")
    cases = {("--fill", "9002", "--runs", "380008,380006,380007,380010"):
             "PhiSym IC, fill 9002, runs 380006-380008,380010",
             ("--runs", "17"): "PhiSym IC, run 17",
             # a title wider than the map widens the picture: every run stays named
             ("--fill", "9003", "--runs", ",".join(str(380001 + 2 * i) for i in range(12))):
             "PhiSym IC, fill 9003, runs " + ",".join(str(380001 + 2 * i) for i in range(12)),
             (): "PhiSym IC"}
    for args, title in cases.items():
        result, out = plot(tmp_path, tmp_path / "ic.csv", *args)
        assert result.returncode == 0, result.stderr
        png = Png(out)
        x, y = one(png, title)
        assert y < Map(png).top


@pytest.mark.parametrize("content, expected", [
    ("ieta,iphi,ic\n1,1,abc\n", "line 2: ic 'abc' is not a number"),
    ("ieta,iphi,ic\n1,1,nan\n", "line 2: ic 'nan' is not a finite positive number"),
    ("ieta,iphi,ic\n1,1,-1.0\n", "line 2: ic '-1.0' is not a finite positive number"),
    ("ieta,iphi,ic\n21,1,1.0\n", "line 2: crystal (21, 1) is not in the barrel"),
    ("ieta,iphi,ic\n1,x,1.0\n", "line 2: iphi 'x' is not an integer"),
    ("ieta,iphi,ic\n1,1,1.0\n1,1,1.1\n", "line 3: crystal (1, 1) twice"),
    ("ieta,iphi\n1,1\n", "no column ic"),
    ("ieta,iphi,ic\n1,1\n", "line 2: 2 fields, not 3"),
    ("ieta,iphi,ic\n1,1,1.0,7\n", "line 2: 4 fields, not 3"),
    ("", "no header"),
    ("ieta,iphi,ic\n", "no constants"),
])
def test_bad_constants_make_no_plot_and_say_why_in_one_line(tmp_path: Path, content: str, expected: str) -> None:
    (tmp_path / "ic.csv").write_text(content)
    result, out = plot(tmp_path, tmp_path / "ic.csv")
    assert result.returncode == 1 and not out.exists() and not out.parent.exists()
    assert result.stderr == f"bad constants {tmp_path / 'ic.csv'}: {expected}\n"
    assert expected in (tmp_path / "report.json").read_text()  # the check stage reads it as the job's failure


@pytest.mark.parametrize("args, expected", [
    (["--bogus", "x"], "unrecognized arguments: --bogus x"),
    (["--runs", "380001,abc"], "--runs: 'abc' is not a run number"),
    (["--fill", "x"], "--fill: invalid int value: 'x'"),
    (["--constants", "/nonexistent/ic.csv"], "cannot read constants /nonexistent/ic.csv: No such file or directory"),
])
def test_bad_arguments_make_no_plot_and_say_why_in_one_line(tmp_path: Path, args: list[str], expected: str) -> None:
    write_constants(tmp_path / "ic.csv")
    result, out = plot(tmp_path, tmp_path / "ic.csv", *args)
    assert result.returncode != 0 and not out.exists()
    assert len(result.stderr.splitlines()) == 1 and expected in result.stderr and "Traceback" not in result.stderr


def test_the_chain_plots_each_fill_with_its_runs_in_the_title(tmp_path: Path) -> None:
    """The handler tells the payload its fill and runs: the real chain, reco -> calib -> plots, on one fill."""
    with Store.open(str(tmp_path / "state.db"), actor="tester", create=True) as store:
        store.create_campaign("prompt")
        tasks = ["phisym-reco", "phisym-calib", "phisym-plots"]
        for task, upstream in zip(tasks, [None, *tasks]):
            store.add_task("prompt", task, depends_on=[upstream] if upstream else (), max_retries=0)
        store.update_rtype("prompt", "all", add=tasks)
        # fill 10 ends when run 4 of fill 11 starts
        store.inject_runs("prompt", [RunSpec(1, 10, {"nevents": 5000}), RunSpec(2, 10, {"nevents": 5000}),
                                     RunSpec(3, 10, {"nevents": 5000}), RunSpec(4, 11, {"nevents": 5000})])
        store.set_status("prompt", "phisym-reco", [2], "skipped", reason="ECAL partly off")
        backend = LocalBackend(tmp_path / "work", slots=2)
        for workflow in (PhiSymReco, PhiSymCalib, PhiSymPlots):
            handler = workflow(store, backend)
            handler.submit("prompt")
            settle(handler, "prompt")
        png = Png(Path(store.instance("prompt", "phisym-plots", 3).outputs["plots"]))
        rows = list(csv.DictReader(open(store.instance("prompt", "phisym-calib", 3).outputs["output"])))
    assert one(png, "PhiSym IC, fill 10, runs 1,3")[1] < Map(png).top
    assert len(rows) == ecaljob.N_ETA * ecaljob.N_PHI
