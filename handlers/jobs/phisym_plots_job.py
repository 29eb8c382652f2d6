#!/usr/bin/env python3
"""Monitoring plot of one fill: the inter-calibration map (iphi across, ieta up) as a PNG.

Drawn as an ECAL map is read: a title naming the fill and its runs, both axes with ticks and labels,
and a colour bar beside the map with its scale printed. Blue below 1, white at 1, red above, on a
fixed range of 1 +- 3 sigma of the true spread (so the maps of two fills compare at a glance); a
constant beyond it takes the bar's end colour, a crystal without a constant is grey. Written with the
standard library's zlib, so it runs on worker nodes without matplotlib.
"""

from __future__ import annotations

import argparse

import ecaljob

SCALE = 8  # pixels per crystal
TEXT = 2  # pixels per dot of the font
MARGIN = 12
TICK = 5  # tick length
PAD = 4  # between a tick and its label
BAR_GAP, BAR_W = 24, 16  # the colour bar: its distance from the map, its width
SPAN = 3 * ecaljob.TRUE_SPREAD
LOW, HIGH = 1 - SPAN, 1 + SPAN
BAR_LABELS = [round(LOW + i * SPAN / 3, 2) for i in range(7)]  # 0.85, 0.90, ..., 1.15
IETA_TICKS = [1, 5, 10, 15, 20]
IPHI_TICKS = [1, 10, 20, 30, 40, 50, 60, 70]
INK: ecaljob.RGB = (20, 20, 20)
NO_CONSTANT: ecaljob.RGB = (170, 170, 170)


def run_list(text: str) -> list[int]:
    """``--runs``: comma-separated run numbers."""
    runs = []
    for part in text.split(","):
        if not part.strip().isdigit():
            raise argparse.ArgumentTypeError(f"{part.strip()!r} is not a run number")
        runs.append(int(part))
    return runs


def title(fill: int | None, runs: list[int]) -> str:
    """``PhiSym IC, fill 9001, runs 380001-380003`` (consecutive runs as a range, the others listed)."""
    spans: list[list[int]] = []
    for run in sorted(set(runs)):
        if spans and run == spans[-1][-1] + 1:
            spans[-1].append(run)
        else:
            spans.append([run])
    parts = ["PhiSym IC"]
    if fill is not None:
        parts.append(f"fill {fill}")
    if runs:
        ranges = ",".join(f"{s[0]}-{s[-1]}" if len(s) > 1 else str(s[0]) for s in spans)
        parts.append(f"run{'s' if len(set(runs)) > 1 else ''} {ranges}")
    return ", ".join(parts)


def draw(ic: dict[tuple[int, int], float], heading: str) -> ecaljob.Canvas:
    """The map, its axes, the colour bar and the title on a white canvas."""
    text_h = ecaljob.GLYPH_H * TEXT
    map_w, map_h = ecaljob.N_PHI * SCALE, ecaljob.N_ETA * SCALE
    ieta_label_w = max(_width(str(t)) for t in IETA_TICKS)
    map_x = MARGIN + text_h + 2 * PAD + ieta_label_w + PAD + TICK + 1
    map_y = MARGIN + text_h + 10 + 1
    bar_x = map_x + map_w + 1 + BAR_GAP + 1
    bar_label_x = bar_x + BAR_W + 1 + TICK + PAD
    title_x = max(map_x + map_w / 2, MARGIN + _width(heading) / 2)  # centred on the map, unless it is wider
    width = max(bar_label_x + max(_width(f"{v:.2f}") for v in BAR_LABELS) + MARGIN,
                round(title_x + _width(heading) / 2) + MARGIN)
    ticks_y = map_y + map_h + 1 + TICK + PAD
    height = ticks_y + 2 * text_h + 6 + MARGIN
    canvas = ecaljob.Canvas(width, height)

    _label(canvas, heading, title_x, MARGIN + text_h / 2)
    for ieta in range(1, ecaljob.N_ETA + 1):
        y = map_y + (ecaljob.N_ETA - ieta) * SCALE
        for iphi in range(1, ecaljob.N_PHI + 1):
            value = ic.get((ieta, iphi))
            rgb = NO_CONSTANT if value is None else ecaljob.colour(value, LOW, HIGH)
            canvas.rect(map_x + (iphi - 1) * SCALE, y, SCALE, SCALE, rgb)
    canvas.box(map_x, map_y, map_w, map_h, INK)

    # iphi across the bottom, ieta up the left side: ticks at the crystals' centres
    for iphi in IPHI_TICKS:
        centre = map_x + (iphi - 1) * SCALE + SCALE // 2
        canvas.rect(centre - 1, map_y + map_h + 1, 2, TICK, INK)
        _label(canvas, str(iphi), centre, ticks_y + 7 * TEXT / 2)
    _label(canvas, "iφ", map_x + map_w / 2, ticks_y + text_h + 6 + text_h / 2)
    for ieta in IETA_TICKS:
        centre = map_y + (ecaljob.N_ETA - ieta) * SCALE + SCALE // 2
        canvas.rect(map_x - 1 - TICK, centre - 1, TICK, 2, INK)
        _label(canvas, str(ieta), map_x - 1 - TICK - PAD, centre, right=True)
    _label(canvas, "iη", MARGIN + text_h / 2, map_y + map_h / 2, vertical=True)

    # the colour bar: its top row is HIGH, its bottom row LOW, each label at its value's row
    for row in range(map_h):
        canvas.rect(bar_x, map_y + row, BAR_W, 1, ecaljob.colour(HIGH - row / (map_h - 1) * (HIGH - LOW), LOW, HIGH))
    canvas.box(bar_x, map_y, BAR_W, map_h, INK)
    for value in BAR_LABELS:
        row = map_y + round((HIGH - value) / (HIGH - LOW) * (map_h - 1))
        canvas.rect(bar_x + BAR_W + 1, row, TICK, 1, INK)
        _label(canvas, f"{value:.2f}", bar_label_x, row + 0.5, left=True)
    return canvas


def _width(text: str) -> int:
    first, last, _, _ = ecaljob.ink(text)
    return (last - first + 1) * TEXT


def _label(canvas: ecaljob.Canvas, text: str, x: float, y: float, right: bool = False, left: bool = False,
           vertical: bool = False) -> None:
    """Print ``text`` with its ink centred on (x, y), or its ink's right (left) edge at x."""
    first, last, top, bottom = ecaljob.ink(text)
    across = (first, last + 1)
    down = (top, bottom + 1)
    if vertical:  # a quarter turn to the left: columns become rows, counted from the end
        columns = len(ecaljob.text_mask(text)[0])
        across, down = down, (columns - last - 1, columns - first)
    if right:
        left_x = x - across[1] * TEXT
    elif left:
        left_x = x - across[0] * TEXT
    else:
        left_x = x - (across[0] + across[1]) * TEXT / 2
    canvas.text(round(left_x), round(y - (down[0] + down[1]) * TEXT / 2), text, INK, TEXT, vertical)


def main() -> None:
    parser = ecaljob.ArgumentParser(description=__doc__)
    parser.add_argument("--constants", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--fill", type=int, help="The LHC fill of the constants (named in the title).")
    parser.add_argument("--runs", type=run_list, default=[], help="Their runs, comma-separated (in the title).")
    args = parser.parse_args()
    ic = ecaljob.read_constants(args.constants)
    draw(ic, title(args.fill, args.runs)).save(args.out)
    ecaljob.report({"plots": args.out, "crystals": len(ic)})


if __name__ == "__main__":
    main()
