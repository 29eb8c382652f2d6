"""What the PhiSym job payloads share: a synthetic ECAL barrel, the job report, CSV files, a PNG canvas.

Standard library only: payloads run wherever the batch system puts them (here,
the HTCondor pool's Debian 13 python3, without numpy or matplotlib).

The detector: N_ETA rings of N_PHI crystals. Each crystal has a true response
(deterministic, a few per cent around 1); the phi-symmetry method assumes every
crystal of a ring sees the same energy flux, so the inter-calibration constant of
a crystal is its ring's mean energy sum divided by its own.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import struct
import sys
import zlib
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn, Optional

N_ETA = 20
N_PHI = 72
TRUE_SPREAD = 0.05


def crystals() -> list[tuple[int, int]]:
    return [(ieta, iphi) for ieta in range(1, N_ETA + 1) for iphi in range(1, N_PHI + 1)]


def true_response() -> dict[tuple[int, int], float]:
    """The synthetic detector's response per crystal (what a perfect calibration would undo)."""
    rng = random.Random("ecal-truth")
    return {c: max(0.5, rng.gauss(1.0, TRUE_SPREAD)) for c in crystals()}


def report(fields: Optional[dict[str, Any]] = None, error: Optional[str] = None) -> None:
    """Leave the JSON report that the check stage reads (``ECALSTATE_REPORT``); print it otherwise."""
    data: dict[str, Any] = {"fields": fields or {}}
    if error:
        data["error"] = error
    path = os.environ.get("ECALSTATE_REPORT")
    if not path:
        print(json.dumps(data, sort_keys=True))
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as handle:
        json.dump(data, handle, sort_keys=True)
    os.replace(tmp, path)


def fail(message: str, code: int = 1) -> NoReturn:
    """Report an error and exit non-zero (check marks the job failed with this message)."""
    report(error=message)
    print(message, file=sys.stderr)
    sys.exit(code)


def attempt() -> int:
    return int(os.environ.get("ECALSTATE_ATTEMPT", "1"))


def write_csv(path: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as handle:
        handle.write(",".join(header) + "\n")
        for row in rows:
            handle.write(",".join(str(v) for v in row) + "\n")
    os.replace(tmp, path)


def read_rows(path: str, columns: Sequence[str] = ()) -> list[tuple[int, dict[str, str]]]:
    """The rows of a CSV file with their line numbers (blank lines left out), so a bad value can be pointed at.

    Raises ValueError when the file has no header, lacks one of ``columns``, or a row has too few or too many
    fields (a truncated copy, a stray comma).
    """
    with open(path) as handle:
        lines = [(number, line.rstrip("\n").split(",")) for number, line in enumerate(handle, 1) if line.strip()]
    if not lines:
        raise ValueError("no header")
    header = lines[0][1]
    for name in columns:
        if name not in header:
            raise ValueError(f"no column {name}")
    for number, fields in lines[1:]:
        if len(fields) != len(header):
            raise ValueError(f"line {number}: {len(fields)} fields, not {len(header)}")
    return [(number, dict(zip(header, fields, strict=True))) for number, fields in lines[1:]]


def read_csv(path: str) -> list[dict[str, str]]:
    return [row for _, row in read_rows(path)]


def load_constants(path: str) -> dict[tuple[int, int], float]:
    """The constants per crystal; ValueError names the first line that is not a barrel crystal's constant."""
    barrel = set(crystals())
    constants: dict[tuple[int, int], float] = {}
    for line, row in read_rows(path, ("ieta", "iphi", "ic")):
        ieta, iphi = (_integer(row, name, line) for name in ("ieta", "iphi"))
        try:
            value = float(row["ic"])
        except ValueError:
            raise ValueError(f"line {line}: ic {row['ic']!r} is not a number") from None
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"line {line}: ic {row['ic']!r} is not a finite positive number")
        if (ieta, iphi) not in barrel:
            raise ValueError(f"line {line}: crystal ({ieta}, {iphi}) is not in the barrel")
        if (ieta, iphi) in constants:
            raise ValueError(f"line {line}: crystal ({ieta}, {iphi}) twice")
        constants[(ieta, iphi)] = value
    if not constants:
        raise ValueError("no constants")
    return constants


def read_constants(path: str) -> dict[tuple[int, int], float]:
    """:func:`load_constants`, or the job fails with one line saying why (unreadable, or which line is bad)."""
    try:
        return load_constants(path)
    except OSError as err:
        fail(f"cannot read constants {path}: {err.strerror}")
    except ValueError as err:
        fail(f"bad constants {path}: {err}")


def _integer(row: dict[str, str], name: str, line: int) -> int:
    try:
        return int(row[name])
    except ValueError:
        raise ValueError(f"line {line}: {name} {row[name]!r} is not an integer") from None


class ArgumentParser(argparse.ArgumentParser):
    """A payload's argument parser: a bad argument is the job's reported failure, said in one line."""

    def error(self, message: str) -> NoReturn:
        fail(f"{self.prog}: {message}", 2)


RGB = tuple[int, int, int]
WHITE: RGB = (255, 255, 255)

#: A 5 x 9 bitmap font: rows 0-6 stand on the baseline, rows 7-8 are descenders; ``#`` is ink.
#: Just the characters the plots print: digits, a few letters, punctuation, and iη / iφ for the axes.
GLYPH_W, GLYPH_H = 5, 9
FONT = {ch: rows.split() for ch, rows in {
    " ": "", "0": ".###. #...# #..## #.#.# ##..# #...# .###.", "1": "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.",
    "2": ".###. #...# ....# ...#. ..#.. .#... #####", "3": "##### ...#. ..#.. ...#. ....# #...# .###.",
    "4": "...#. ..##. .#.#. #..#. ##### ...#. ...#.", "5": "##### #.... ####. ....# ....# #...# .###.",
    "6": "..##. .#... #.... ####. #...# #...# .###.", "7": "##### ....# ...#. ..#.. .#... .#... .#...",
    "8": ".###. #...# #...# .###. #...# #...# .###.", "9": ".###. #...# #...# .#### ....# ...#. .##..",
    ".": "..... ..... ..... ..... ..... .##.. .##..", ",": "..... ..... ..... ..... ..... .##.. .##.. ..#.. .#...",
    "-": "..... ..... ..... .###.", ":": "..... .##.. .##.. ..... .##.. .##..",
    "C": ".###. #...# #.... #.... #.... #...# .###.", "I": ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",
    "P": "####. #...# #...# ####. #.... #.... #....", "S": ".#### #.... #.... .###. ....# ....# ####.",
    "f": "..##. .#..# .#... ###.. .#... .#... .#...", "h": "#.... #.... #.##. ##..# #...# #...# #...#",
    "i": "..#.. ..... .##.. ..#.. ..#.. ..#.. .###.", "l": ".##.. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",
    "m": "..... ..... ##.#. #.#.# #.#.# #...# #...#", "n": "..... ..... #.##. ##..# #...# #...# #...#",
    "r": "..... ..... #.##. ##..# #.... #.... #....", "s": "..... ..... .#### #.... .###. ....# ####.",
    "u": "..... ..... #...# #...# #...# #..## .##.#", "y": "..... ..... #...# #...# #...# #..## .##.# ....# .###.",
    "η": "..... ..... ##.#. .##.# .#..# .#..# .#..# ....# ....#",
    "φ": "..#.. ..#.. .###. #.#.# #.#.# #.#.# .###. ..#.. ..#..",
}.items()}


def text_mask(text: str) -> list[str]:
    """``text`` in the bitmap font at one pixel per dot: GLYPH_H rows of ``#`` (ink) and ``.``, one dot between
    characters. Raises ValueError for a character the font lacks (a label the plots never meant to print)."""
    missing = sorted(set(text) - set(FONT))
    if missing:
        raise ValueError(f"no glyph for {''.join(missing)!r}")
    blank = "." * GLYPH_W
    return [".".join((FONT[ch][row] if row < len(FONT[ch]) else blank) for ch in text) for row in range(GLYPH_H)]


def ink(text: str) -> tuple[int, int, int, int]:
    """The first and last inked column and row of ``text`` at one pixel per dot (to centre or align a label)."""
    mask = text_mask(text)
    cols = [x for x in range(len(mask[0])) if any(row[x] == "#" for row in mask)] or [0]
    rows = [y for y, row in enumerate(mask) if "#" in row] or [0]
    return cols[0], cols[-1], rows[0], rows[-1]


class Canvas:
    """An RGB picture drawn with rectangles and the bitmap font, written as a PNG."""

    def __init__(self, width: int, height: int, background: RGB = WHITE) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(bytes(background) * (width * height))

    def rect(self, x: int, y: int, w: int, h: int, rgb: RGB) -> None:
        """Fill a rectangle (clipped to the picture)."""
        x0, x1 = max(0, x), min(self.width, x + w)
        for row in range(max(0, y), min(self.height, y + h)):
            if x1 > x0:
                start = (row * self.width + x0) * 3
                self.pixels[start:start + (x1 - x0) * 3] = bytes(rgb) * (x1 - x0)

    def box(self, x: int, y: int, w: int, h: int, rgb: RGB) -> None:
        """A one-pixel outline just around the w x h area at (x, y)."""
        self.rect(x - 1, y - 1, w + 2, 1, rgb)
        self.rect(x - 1, y + h, w + 2, 1, rgb)
        self.rect(x - 1, y, 1, h, rgb)
        self.rect(x + w, y, 1, h, rgb)

    def text(self, x: int, y: int, text: str, rgb: RGB, scale: int = 1, vertical: bool = False) -> None:
        """Print ``text`` with its box's top left corner at (x, y), each dot scale x scale pixels; ``vertical``
        turns it a quarter to the left (reading upwards, as a y axis's name)."""
        mask = text_mask(text)
        if vertical:
            mask = ["".join(row[len(mask[0]) - 1 - i] for row in mask) for i in range(len(mask[0]))]
        for j, row in enumerate(mask):
            for i, dot in enumerate(row):
                if dot == "#":
                    self.rect(x + i * scale, y + j * scale, scale, scale, rgb)

    def png(self) -> bytes:
        """The picture as an 8-bit RGB PNG (no filter: the rows repeat, which zlib finds by itself)."""
        stride = self.width * 3
        raw = b"".join(b"\x00" + self.pixels[y * stride:(y + 1) * stride] for y in range(self.height))

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9))
                + chunk(b"IEND", b""))

    def save(self, path: str) -> None:
        """Write the PNG whole or not at all (a reader never sees half a picture)."""
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as handle:
            handle.write(self.png())
        os.replace(tmp, path)


def colour(value: float, low: float, high: float) -> RGB:
    """Blue (low) -> white (middle) -> red (high)."""
    x = min(1.0, max(0.0, (value - low) / (high - low)))
    if x < 0.5:
        t = x / 0.5
        return int(40 + 215 * t), int(70 + 185 * t), 255
    t = (x - 0.5) / 0.5
    return 255, int(255 - 200 * t), int(255 - 215 * t)
