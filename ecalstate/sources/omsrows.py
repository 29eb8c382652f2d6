"""What an OMS row may hold: every attribute the run source reads is checked here, in one place.

OMS is trusted for nothing. A value of the wrong type (a boolean or a fraction where an integer goes, text
where a number goes), out of its range, a time that is no time (``23:60``), NaN or Infinity (bare literals
that Python's JSON reader accepts but JSON does not have) makes its row *rejected*: the row parser returns
a :class:`~ecalstate.sources.Rejected` with the reason instead of a typed row, and the source skips and
reports it. Attributes of known OMS names have their own type; any other attribute a mapping reads must be a
plain value (text, a finite number, a boolean, or a list of those).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional

from ..limits import INT64_MAX
from . import SourceError

#: the longest text kept from an OMS attribute
TEXT_MAX = 1000
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:?\d{2})?")


class Bad(Exception):
    """Why a value cannot be taken (the message names no attribute: :func:`checked` adds it)."""


@dataclass(frozen=True)
class NotFinite:
    """A NaN or Infinity literal in an answer, kept apart so that no float NaN exists to slip through."""

    text: str

    def __str__(self) -> str:
        return self.text


def document(text: str, where: str) -> Any:
    """An answer's JSON, with NaN, Infinity and numbers too large for a float as :class:`NotFinite`."""

    def finite(literal: str) -> Any:
        value = float(literal)
        return value if math.isfinite(value) else NotFinite(literal)

    try:
        return json.loads(text, parse_constant=NotFinite, parse_float=finite)
    except ValueError:  # not JSON, or an integer of more than 4,300 digits
        raise SourceError(f"OMS answered {where} with something that is not JSON") from None


def shown(value: Any) -> str:
    """A value as a reason quotes it: JSON, control characters escaped, at most 60 characters."""
    text = value.text if isinstance(value, NotFinite) else json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


Check = Callable[[Any], Any]


def integer(low: int) -> Check:
    def check(value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise Bad("not an integer")
        if not low <= value <= INT64_MAX:
            raise Bad(f"out of range ({low} to {INT64_MAX})")
        return value

    return check


def number(low: Optional[float] = None) -> Check:
    def check(value: Any) -> float:
        if isinstance(value, NotFinite):
            raise Bad("not a finite number")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise Bad("not a number")
        if low is not None and value < low:
            raise Bad(f"below {low:g}")
        return value

    return check


def moment(value: Any) -> Optional[str]:
    """An ISO 8601 date and time (OMS: ``2026-06-01T12:00:00Z``) that exists; empty text is no time."""
    if value == "":
        return None
    if not isinstance(value, str) or not _TIME.fullmatch(value):
        raise Bad("not a time (expected YYYY-MM-DDTHH:MM:SSZ)")
    try:
        datetime.fromisoformat(value)
    except ValueError as err:
        raise Bad(f"not a time ({err})") from None
    return value


def flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Bad("not a boolean")
    return value


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise Bad("not text")
    if len(value) > TEXT_MAX:
        raise Bad(f"longer than {TEXT_MAX} characters")
    return value


def names(value: Any) -> Any:
    """A list of names (OMS's ``components``), or their comma-separated text."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        text(",".join(value))
        return value
    if isinstance(value, str):
        return text(value)
    raise Bad("not a list of names")


def plain(value: Any) -> Any:
    """An attribute of a name the source does not know: a plain value, or a list of plain values."""
    if isinstance(value, list):
        if any(isinstance(v, (list, dict)) for v in value):
            raise Bad("a list of lists or objects, not a value")
        return [plain(v) for v in value]
    if isinstance(value, dict):
        raise Bad("an object, not a value")
    if isinstance(value, str):
        return text(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return integer(-INT64_MAX - 1)(value)
    return number()(value)


#: OMS run attributes of known names, by type (an absent or null attribute is always fine)
RUN_ATTRIBUTES: dict[str, Check] = {
    "run_number": integer(1), "fill_number": integer(0), "start_time": moment, "end_time": moment,
    "recorded_lumi": number(0), "delivered_lumi": number(0), "init_lumi": number(0), "end_lumi": number(0),
    "last_lumisection_number": integer(0), "duration": integer(0), "stable_beam": flag, "energy": number(0),
    "b_field": number(), "hlt_key": text, "l1_key": text, "l1_hlt_mode": text, "l1_hlt_mode_stripped": text,
    "components": names, "sequence": text, "cmssw_version": text, "fill_type_runtime": text,
}
FILL_ATTRIBUTES: dict[str, Check] = {"fill_number": integer(1), "start_time": moment, "end_time": moment}


def checked(attrs: dict[str, Any], name: str, check: Check, required: bool = False) -> Any:
    """``attrs[name]`` through ``check``; :class:`Bad` naming the attribute and quoting the value."""
    value = attrs.get(name)
    if value is None:
        if required:
            raise Bad(f"{name} null: missing")
        return None
    try:
        return check(value)
    except Bad as bad:
        raise Bad(f"{name} {shown(value)}: {bad}") from None


def in_order(attrs: dict[str, Any], start: str, end: str) -> None:
    """A row does not end before it starts."""
    if attrs.get(start) and attrs.get(end) and _utc(attrs[end]) < _utc(attrs[start]):
        raise Bad(f"{end} {shown(attrs[end])}: before {start} {shown(attrs[start])}")


def _utc(value: str) -> datetime:
    moment_ = datetime.fromisoformat(value)
    return moment_ if moment_.tzinfo else moment_.replace(tzinfo=timezone.utc)


def attributes(item: Any) -> Optional[dict[str, Any]]:
    """A JSON:API item's attributes, or None when the item has none."""
    attrs = item.get("attributes") if isinstance(item, dict) else None
    return attrs if isinstance(attrs, dict) else None


@dataclass(frozen=True)
class OmsFill:
    """An OMS fills row, checked."""

    number: int
    start_time: Optional[str]
    end_time: Optional[str]
