#!/usr/bin/env python3
"""Validation of one fill's inter-calibration constants before they are uploaded.

Refuses them (the job fails, its instance fails: the upload of the fill, and of every later fill, waits) unless
every barrel crystal has exactly one constant, finite and within [--ic-min, --ic-max]; the message names the
first crystal out of range and how many are. Reports the range and the spread found.
"""

from __future__ import annotations

import math

import ecaljob


def main() -> None:
    parser = ecaljob.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--constants", required=True)
    parser.add_argument("--fill", type=int)
    parser.add_argument("--ic-min", type=float, required=True)
    parser.add_argument("--ic-max", type=float, required=True)
    args = parser.parse_args()
    if not (0 < args.ic_min < 1 < args.ic_max and math.isfinite(args.ic_max)):
        ecaljob.fail(f"invalid range [{args.ic_min}, {args.ic_max}]: 0 < ic-min < 1 < ic-max")
    ic = ecaljob.read_constants(args.constants)
    missing = sorted(set(ecaljob.crystals()) - set(ic))
    if missing:
        ecaljob.fail(f"refused: {len(missing)} of {len(ecaljob.crystals())} crystals have no constant, e.g."
                     f" {missing[0]}")
    outside = sorted((c, v) for c, v in ic.items() if not args.ic_min <= v <= args.ic_max)
    if outside:
        (crystal, value), n = outside[0], len(outside)
        ecaljob.fail(f"refused: crystal {crystal} has ic {value:g}, outside [{args.ic_min:g}, {args.ic_max:g}]"
                     + (f" ({n} crystals out of range)" if n > 1 else ""))
    values = list(ic.values())
    mean = sum(values) / len(values)
    ecaljob.report({"validated": args.constants, "fill": args.fill, "crystals": len(values),
                    "ic_min": round(min(values), 6), "ic_max": round(max(values), 6),
                    "ic_rms": round(math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)), 6)})


if __name__ == "__main__":
    main()
