"""The one clock: every time the store, its wings and the command line read goes through here.

Times are kept in one text format (UTC, microseconds; its text order is its time order) and, in the big tables,
as integer microseconds since 1970. :func:`utcnow` is this host's clock; a :class:`~ecalstate.store.Store` reads
it through its ``clock`` (which tests replace), and so does everything that asks "what time is it" for the store:
monitoring's cutoffs, retention, the export's bookmarks, the command line's relative times, reports.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

#: the one text format of every timestamp column (UTC, microseconds): its text order is its time order
TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_STORE_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\Z")


#: the last time :func:`to_micros` converted, and its value: a write converts its one time more than once
_last_converted = ("", 0)
#: the second :func:`utcnow` last formatted, and its text
_clock_second = (-1, "")


def utcnow() -> str:
    """UTC time with microseconds, in the one text format every table uses. Every write transaction reads it:
    a second's text is made once and the microseconds appended (a fifth of ``isoformat``'s cost), and
    :func:`to_micros` is told the value, which the transaction asks next."""
    global _clock_second, _last_converted
    micros = time.time_ns() // 1000
    second, fraction = divmod(micros, 1_000_000)
    made, prefix = _clock_second  # tuples read and replaced whole: safe between threads
    if second != made:
        prefix = datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        _clock_second = (second, prefix)
    text = f"{prefix}.{fraction:06d}Z"
    _last_converted = (text, micros)
    return text


_EPOCH = datetime(1970, 1, 1)
_MICROSECOND = timedelta(microseconds=1)


def to_micros(ts: str) -> int:
    """Integer microseconds since 1970 of a time in the store's format (``2026-12-01T05:00:00.000001Z``): how the
    big tables (``audit_log``, ``job``) keep their times, 8 bytes instead of 27. (``fromisoformat``: 30 times
    ``strptime``'s speed, and every write transaction converts its time.)"""
    global _last_converted
    last, value = _last_converted  # one tuple, read and replaced whole: safe between threads
    if ts == last:
        return value
    if not _STORE_TIME.match(ts):
        raise ValueError(f"not a time in the store's format: {ts!r}")
    value = (datetime.fromisoformat(ts[:-1]) - _EPOCH) // _MICROSECOND
    _last_converted = (ts, value)
    return value


def from_micros(micros: int) -> str:
    """The store's time text of integer microseconds since 1970."""
    seconds, rest = divmod(micros, 1_000_000)
    return datetime.fromtimestamp(seconds, timezone.utc).replace(microsecond=rest).strftime(TS_FORMAT)


def parse_time(value: Any) -> Optional[str]:
    """A date and time as a run source writes one (ISO 8601: ``2026-06-01T12:00:00Z``, an offset, fractions; no
    zone is UTC) in the store's format; None when ``value`` is not one. Deadlines count from such times."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    try:
        utc = moment.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        return None
    return utc.strftime(TS_FORMAT) if 1970 <= utc.year <= 9999 else None


def as_datetime(ts: str) -> datetime:
    """A time in the store's format as an aware UTC datetime."""
    return datetime.strptime(ts, TS_FORMAT).replace(tzinfo=timezone.utc)


def now() -> datetime:
    """This host's clock (:func:`utcnow`) as an aware UTC datetime: "8h ago" on the command line counts from it."""
    return as_datetime(utcnow())


def parse_moment(value: Any) -> Optional[str]:
    """An ISO 8601 time as a run source writes it (``2026-06-14T00:25:00Z``, an offset, or the store's own format)
    in the store's format; None when it is not a time (absent, empty, garbled)."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime(TS_FORMAT)


def seconds_between(earlier: str, later: str) -> float:
    """Seconds from ``earlier`` to ``later`` (store times; negative when ``later`` comes first)."""
    return (to_micros(later) - to_micros(earlier)) / 1e6


def optional_text(micros: Optional[int]) -> Optional[str]:
    return None if micros is None else from_micros(micros)


# --------------------------------------------------------------------------------- times for people
# The store keeps microseconds (text order is time order, the export needs them), a shifter reads seconds. Human
# output (tables, the web view, the HTML report) goes through :func:`human_time`; ``--json`` keeps the stored value.

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
