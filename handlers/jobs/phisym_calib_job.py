#!/usr/bin/env python3
"""PhiSym calibration of one fill: inter-calibration constants from the per-crystal energy sums.

IC(crystal) = mean energy sum of its eta ring / its own energy sum. Writes the
constants as CSV and reports their spread and the closure against the synthetic
truth (how far IC x response is from flat: the statistical precision).
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict

import ecaljob


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inputs", nargs="+", required=True, help="Energy-sum files of every run of the fill.")
    parser.add_argument("--out", required=True)
    parser.add_argument("--fill", type=int)
    parser.add_argument("--global-tag", default="", help="The conditions the fit starts from (recorded).")
    args = parser.parse_args()
    sums: dict[tuple[int, int], float] = defaultdict(float)
    hits = 0
    for path in args.inputs:
        try:
            rows = ecaljob.read_csv(path)
        except OSError as err:
            ecaljob.fail(f"cannot read energy sums {path}: {err.strerror}")
        for row in rows:
            sums[(int(row["ieta"]), int(row["iphi"]))] += float(row["sum_et"])
            hits += int(row["hits"])
    rings: dict[int, list[float]] = defaultdict(list)
    for (ieta, _), value in sums.items():
        rings[ieta].append(value)
    ring_mean = {ieta: sum(v) / len(v) for ieta, v in rings.items()}
    constants = {c: (ring_mean[c[0]] / v if v > 0 else 1.0) for c, v in sums.items()}
    response = ecaljob.true_response()
    closure = [constants[c] * response[c] for c in constants]
    mean_closure = sum(closure) / len(closure)
    ecaljob.write_csv(args.out, ("ieta", "iphi", "ic"),
                      ((ieta, iphi, f"{constants[(ieta, iphi)]:.6f}") for ieta, iphi in sorted(constants)))
    ecaljob.report({
        "output": args.out,
        "fill": args.fill,
        "global_tag": args.global_tag,
        "crystals": len(constants),
        "hits": hits,
        "ic_rms": round(_rms([c - 1.0 for c in constants.values()]), 6),
        "closure_rms": round(_rms([c / mean_closure - 1.0 for c in closure]), 6),
    })


def _rms(values: list[float]) -> float:
    return math.sqrt(sum(v * v for v in values) / len(values)) if values else 0.0


if __name__ == "__main__":
    main()
