"""Times for people: the store keeps microseconds (text order is time order, the export needs them), a shifter
reads seconds. Human output (tables, the web view, the HTML report) goes through :func:`human_time`; ``--json``
keeps the stored value."""

from __future__ import annotations

import re
from typing import Any

#: a time as the store writes it: ``2026-12-06T18:00:20.236543Z``
STORE_TIME = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.\d{1,6}Z")


def human_time(value: Any) -> Any:
    """A store time cut to the second (``2026-12-06T18:00:20Z``: still a valid ``--since``, which includes the row
    shown); any other value unchanged. Cut, never rounded: a row is never shown in a later second than it was."""
    if isinstance(value, str):
        found = STORE_TIME.fullmatch(value)
        if found:
            return found.group(1) + "Z"
    return value
