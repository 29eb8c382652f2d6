#!/usr/bin/env python3
"""PhiSym reconstruction, one slice of a run: per-crystal hit counts and energy sums into a CSV file.

Synthetic stand-in for the CMSSW step (ZeroBias events of the AlCaPhiSym stream):
every crystal collects hits at a rate that depends only on its eta ring, each hit's
energy scaled by the crystal's true response. Deterministic per (run, slice).
"""

from __future__ import annotations

import argparse
import math
import random

import ecaljob

OCCUPANCY = 0.02  # hits per crystal per event


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", type=int, required=True)
    parser.add_argument("--job", type=int, required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--fail-attempts", type=int, default=0,
                        help="Simulate a transient failure (exit 3) in the first N attempts.")
    args = parser.parse_args()
    if ecaljob.attempt() <= args.fail_attempts:
        ecaljob.fail(f"injected transient failure (attempt {ecaljob.attempt()} of run {args.run} job {args.job})", 3)
    rng = random.Random(f"phisym-{args.run}-{args.job}")
    response = ecaljob.true_response()
    rows = []
    total = 0
    for ieta, iphi in ecaljob.crystals():
        mean = args.events * OCCUPANCY * (1.0 + 0.5 * math.cos(math.pi * ieta / ecaljob.N_ETA))
        hits = max(0, round(rng.gauss(mean, math.sqrt(mean))))
        energy = rng.gammavariate(hits, 1.0) * response[(ieta, iphi)] if hits else 0.0
        rows.append((ieta, iphi, hits, f"{energy:.4f}"))
        total += hits
    ecaljob.write_csv(args.out, ("ieta", "iphi", "hits", "sum_et"), rows)
    ecaljob.report({"output": args.out, "hits": total, "events": args.events})


if __name__ == "__main__":
    main()
