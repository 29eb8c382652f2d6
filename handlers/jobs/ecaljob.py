"""What the PhiSym job payloads share: a synthetic ECAL barrel, the job report, CSV files, a PNG writer.

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


class ArgumentParser(argparse.ArgumentParser):
    """A payload's argument parser: a bad argument is the job's reported failure, said in one line."""

    def error(self, message: str) -> NoReturn:
        fail(f"{self.prog}: {message}", 2)


def write_png(path: str, pixels: Sequence[Sequence[tuple[int, int, int]]]) -> None:
    """An 8-bit RGB PNG from rows of (r, g, b) pixels."""
    height, width = len(pixels), len(pixels[0])
    raw = b"".join(b"\x00" + bytes(v for px in row for v in px) for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9))
                     + chunk(b"IEND", b""))


def colour(value: float, low: float, high: float) -> tuple[int, int, int]:
    """Blue (low) -> white (middle) -> red (high)."""
    x = min(1.0, max(0.0, (value - low) / (high - low)))
    if x < 0.5:
        t = x / 0.5
        return int(40 + 215 * t), int(70 + 185 * t), 255
    t = (x - 0.5) / 0.5
    return 255, int(255 - 200 * t), int(255 - 215 * t)
