"""InfluxDB line protocol: escaping and formatting, deterministic to the byte.

The rules are those the InfluxDB parser applies (checked against the real 1.6.7
server, see tests/test_lineprotocol.py):

- measurement: comma and space are escaped with a backslash;
- tag keys, tag values and field keys: comma, equals sign and space are escaped;
  any other backslash is kept literally. A backslash just before one of those
  characters or at the very end, and any control character (newline...), cannot
  be written at all: :func:`escape_key` refuses them (``ValueError``) and
  :func:`safe_key` rewrites free-text names so they never reach it;
- string field values: inside double quotes, backslash and double quote are
  escaped; newlines are written as they are (InfluxDB reads them back unchanged);
- integers carry the ``i`` suffix, floats use Python's shortest repr (finite only),
  booleans are ``true``/``false``.

Tags are written sorted by key (InfluxDB's canonical order), fields in the order given.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from datetime import datetime, timezone
from functools import lru_cache
from typing import Optional, Union

FieldValue = Union[str, int, float, bool]

_KEY_SPECIALS = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
_MEASUREMENT_SPECIALS = str.maketrans({",": r"\,", " ": r"\ "})
_STRING_SPECIALS = str.maketrans({"\\": "\\\\", '"': '\\"'})
# what the parser would read as an escape, or as the end of the line
_UNWRITABLE = re.compile(r"[\x00-\x1f\x7f]|\\(?=[,= ]|$)")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\\]")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _check(text: str, what: str) -> None:
    if not text:
        raise ValueError(f"empty {what}: line protocol has no way to write it")
    if _UNWRITABLE.search(text):
        raise ValueError(f"{what} {text!r} cannot be written in line protocol "
                         "(control character, or backslash before , = space or at the end)")


@lru_cache(maxsize=65536)
def escape_key(text: str, what: str = "tag or field key") -> str:
    """A tag key, tag value or field key, escaped; ``ValueError`` if line protocol cannot carry it.

    Cached: the same names (tag keys, task names, campaigns, run numbers) come back on every line."""
    _check(text, what)
    return text.translate(_KEY_SPECIALS)


@lru_cache(maxsize=256)
def escape_measurement(text: str) -> str:
    _check(text, "measurement")
    return text.translate(_MEASUREMENT_SPECIALS)


def safe_key(text: str) -> str:
    """A free-text name made writable: control characters and backslashes become ``_``."""
    return _UNSAFE.sub("_", text)


def quote(text: str) -> str:
    """A string field value: quoted, backslash and double quote escaped, everything else verbatim."""
    return '"' + text.translate(_STRING_SPECIALS) + '"'


def field_value(value: FieldValue) -> Optional[str]:
    """The line-protocol form of a field value; ``None`` for a float line protocol cannot carry (NaN, inf)."""
    kind = type(value)
    if kind is str:
        return quote(value)  # type: ignore[arg-type]
    if kind is int:
        return f"{value}i"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    if isinstance(value, str):
        return quote(value)
    raise TypeError(f"unsupported field value type {type(value).__name__}")


def line(
    measurement: str,
    tags: Iterable[tuple[str, str]],
    fields: Iterable[tuple[str, FieldValue]],
    timestamp_ns: int,
) -> str:
    """One point. Empty tag values are left out (line protocol has none); at least one field is required."""
    head = escape_measurement(measurement)
    for key, value in sorted(tags):
        if value != "":
            head += "," + escape_key(key, "tag key") + "=" + escape_key(value, "tag value")
    parts = []
    for key, val in fields:
        text = field_value(val)
        if text is not None:
            parts.append(escape_key(key, "field key") + "=" + text)
    if not parts:
        raise ValueError(f"point of {measurement!r} has no field")
    return f"{head} {','.join(parts)} {timestamp_ns}"


@lru_cache(maxsize=4096)
def timestamp_ns(ts: str) -> int:
    """Nanoseconds since the epoch of a store timestamp (``YYYY-MM-DDTHH:MM:SS.ffffffZ``, UTC)."""
    moment = datetime.fromisoformat(ts)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    delta = moment - _EPOCH
    return ((delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds) * 1000
