"""Plain-text layout for the commands: aligned tables and status colours.

Colours go through :func:`click.style`; :func:`click.echo` drops them when
stdout is not a terminal, so pipes and Jenkins logs get plain text.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import Any

import click
from click.globals import resolve_color_default

from ..clock import human_time

#: terminal colour per task and job status
STATUS_COLOURS: dict[str, str] = {
    "new": "white",
    "idle": "white",
    "processing": "blue",
    "running": "blue",
    "done": "green",
    "failed": "red",
    "merged": "cyan",
    "skipped": "magenta",
    "reprocess": "yellow",
}


#: what stored text must never send raw to a terminal: C0 and C1 controls, DEL, and the bidirectional
#: overrides that reorder what a reader sees ("Trojan source"); tab and newline too, since a cell is one line
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


class Styled(str):
    """Text this module coloured itself: the only text allowed to reach the terminal with escape sequences."""


def printable(text: str) -> str:
    """Stored text (a reason from a job's stderr, an actor, a field) made inert for a terminal.

    Each control character shows as its Python escape (``\\x1b``, ``\\n``), so an escape sequence planted in a
    reason can neither move the cursor, retitle the window nor hide the lines around it.
    """
    if isinstance(text, Styled):
        return text
    return _CONTROLS.sub(lambda m: ascii(m.group())[1:-1], text)


def printable_lines(text: str) -> str:
    """A job's log made inert line by line: its newlines stay, every other control character shows escaped."""
    return "\n".join(printable(line) for line in text.split("\n"))


def colours_shown() -> bool:
    """Whether :func:`click.echo` keeps colours on stdout (a terminal, or colour forced), asked as echo asks it."""
    return not click.utils.should_strip_ansi(sys.stdout, resolve_color_default())


def styled(status: str, text: str | None = None) -> str:
    """``text`` (default: the status itself) in the status' colour."""
    colour = STATUS_COLOURS.get(status)
    shown = printable(status if text is None else text)
    return Styled(click.style(shown, fg=colour, bold=True if status == "failed" else None) if colour else shown)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces (colours allowed); ``None`` shows as ``-``, a store time to the
    second (:func:`~ecalstate.clock.human_time`).

    Cells are :func:`printable`: only :class:`Styled` cells keep their escape sequences.
    """
    cells = [[_cell(v) for v in row] for row in [headers, *rows]]
    widths = [max(visible_len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(pad(c, w) for c, w in zip(r, widths)).rstrip() for r in cells)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, Styled) else printable(str(human_time(value)))


def visible_len(text: str) -> int:
    """Length as shown: colour codes take no room."""
    return len(click.unstyle(text)) if "\x1b" in text else len(text)


def pad(text: str, width: int) -> str:
    """Left-align ``text`` (possibly styled) in ``width`` columns."""
    return text + " " * (width - visible_len(text))


def echo_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], empty: str) -> None:
    """Print a table, or ``empty`` when there are no rows."""
    click.echo(table(headers, rows) if rows else empty)
