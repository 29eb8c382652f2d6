#!/usr/bin/env python3
"""Monitoring plot of one fill: the inter-calibration map (eta ring x phi) as a PNG.

Blue below 1, red above, white at 1 (range 1 +- 3 sigma of the true spread).
Written with the standard library's zlib, so it runs on worker nodes without matplotlib.
"""

from __future__ import annotations

import math

import ecaljob

SCALE = 6  # pixels per crystal


def load_constants(path: str) -> dict[tuple[int, int], float]:
    """The constants per crystal; ValueError names the first line that is not a barrel crystal's constant."""
    barrel = set(ecaljob.crystals())
    constants: dict[tuple[int, int], float] = {}
    for line, row in ecaljob.read_rows(path, ("ieta", "iphi", "ic")):
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


def _integer(row: dict[str, str], name: str, line: int) -> int:
    try:
        return int(row[name])
    except ValueError:
        raise ValueError(f"line {line}: {name} {row[name]!r} is not an integer") from None


def main() -> None:
    parser = ecaljob.ArgumentParser(description=__doc__)
    parser.add_argument("--constants", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    try:
        ic = load_constants(args.constants)
    except OSError as err:
        ecaljob.fail(f"cannot read constants {args.constants}: {err.strerror}")
    except ValueError as err:
        ecaljob.fail(f"bad constants {args.constants}: {err}")
    span = 3 * ecaljob.TRUE_SPREAD
    pixels = []
    for ieta in range(ecaljob.N_ETA, 0, -1):
        line = [ecaljob.colour(ic.get((ieta, iphi), 1.0), 1 - span, 1 + span)
                for iphi in range(1, ecaljob.N_PHI + 1) for _ in range(SCALE)]
        pixels.extend([line] * SCALE)
    ecaljob.write_png(args.out, pixels)
    ecaljob.report({"plots": args.out, "crystals": len(ic)})


if __name__ == "__main__":
    main()
