#!/usr/bin/env python3
"""Monitoring plot of one fill: the inter-calibration map (eta ring x phi) as a PNG.

Blue below 1, red above, white at 1 (range 1 +- 3 sigma of the true spread).
Written with the standard library's zlib, so it runs on worker nodes without matplotlib.
"""

from __future__ import annotations

import argparse

import ecaljob

SCALE = 6  # pixels per crystal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--constants", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    try:
        rows = ecaljob.read_csv(args.constants)
    except OSError as err:
        ecaljob.fail(f"cannot read constants {args.constants}: {err.strerror}")
    ic = {(int(r["ieta"]), int(r["iphi"])): float(r["ic"]) for r in rows}
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
