"""Parsers the commands share: durations and KEY=VALUE pairs (as click types), run files.

Bad option values are usage errors (exit 2) that name the option and the
accepted form; a bad run file is a refusal (exit 1) naming the bad record.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from typing import Any, Optional

import click

from ..catalog import check_run
from ..errors import Invalid
from ..limits import INT64_MAX, INT64_MIN, MAX_DURATION, MAX_DURATION_TEXT, int64_range
from ..results import RunSpec

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``6h``, ``2d``, ``1w``, combinations like ``1h30m``, or plain seconds; at most 100 years."""
    value = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        seconds = float(value)
    elif not value or _PART.sub("", value):
        raise ValueError(f"invalid duration {text!r}: expected e.g. 90s, 30m, 6h, 2d or 1h30m")
    else:
        seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(value))
    if seconds > MAX_DURATION:
        raise ValueError(f"invalid duration {text!r}: {MAX_DURATION_TEXT}")
    return seconds


def parse_scalar(text: str) -> Any:
    """A JSON scalar when ``text`` is one (``3``, ``2.5``, ``true``, ``null``, ``"x"``), else the text itself."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if value is None or isinstance(value, (bool, int, float, str)) else text


def parse_key_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with a non-empty key; the value goes through :func:`parse_scalar`."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"invalid {text!r}: expected KEY=VALUE")
    return key.strip(), parse_scalar(value)


class Duration(click.ParamType):
    """A click type for :func:`parse_duration`, giving seconds."""

    name = "duration"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError as err:
            self.fail(str(err), param, ctx)


class OptionalDuration(Duration):
    """A :class:`Duration`, or ``never`` (None): how long a policy waits, when it acts at all."""

    name = "duration|never"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Optional[float]:  # type: ignore[override]
        if value is None or str(value).strip().lower() == "never":
            return None
        return super().convert(value, param, ctx)


class Int64(click.ParamType):
    """A click type for the integers the database stores (run numbers, fills, job ids, counts): signed 64-bit.

    ``low`` raises the lower bound (0 for job ids); a number out of range is a usage error naming the range.
    """

    name = "integer"

    def __init__(self, low: int = INT64_MIN) -> None:
        self.low = low

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> int:
        number = click.INT.convert(value, param, ctx)
        if not self.low <= number <= INT64_MAX:
            self.fail(f"{number} is out of range: expected {int64_range(self.low)}", param, ctx)
        return int(number)


class KeyValue(click.ParamType):
    """A click type for :func:`parse_key_value`, giving a (key, value) pair."""

    name = "key=value"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> tuple[str, Any]:
        if isinstance(value, tuple):
            return value
        try:
            return parse_key_value(str(value))
        except ValueError as err:
            self.fail(str(err), param, ctx)


DURATION = Duration()
DURATION_OR_NEVER = OptionalDuration()
KEY_VALUE = KeyValue()
#: any integer the database stores; the ones below for ids and counts that start at 0 or 1
INT64 = Int64()
INT64_FROM_0 = Int64(0)
INT64_FROM_1 = Int64(1)


def pairs_to_dict(pairs: tuple[tuple[str, Any], ...], what: str) -> dict[str, Any]:
    """Repeated ``--meta``/``--field`` pairs as a dict; a key given twice is a usage error."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise click.UsageError(f"{what} {key!r} given twice")
        out[key] = value
    return out


def format_duration(seconds: float) -> str:
    """The largest whole unit that fits: 21600 -> ``6h``, 90 -> ``90s``, 5400 -> ``90m``."""
    for unit, size in sorted(_UNITS.items(), key=lambda u: -u[1]):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def read_runs(path: str) -> list[RunSpec]:
    """Runs from a ``.json`` file (a list of objects) or a ``.csv`` file with a header.

    ``run_number`` and ``fill`` are the run's own; every other key is metadata.
    The whole file is checked before anything is injected; the first bad
    record is reported with its line (CSV) or record index (JSON).
    """
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".json", ".csv"):
        raise Invalid(f"{path}: unknown run file type {suffix or '(none)'!r}: expected .json or .csv")
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as err:
        raise Invalid(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
    records = _json_records(path, text) if suffix == ".json" else _csv_records(path, text)
    return [_spec(where, record) for where, record in records]


def _json_records(path: str, text: str) -> list[tuple[str, dict[str, Any]]]:
    try:
        data = json.loads(text)
    except ValueError as err:
        raise Invalid(f"{path}: invalid JSON: {err}") from None
    if not isinstance(data, list):
        raise Invalid(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    out = []
    for index, record in enumerate(data, 1):
        if not isinstance(record, dict):
            raise Invalid(f"{path} record {index}: expected an object, got {json.dumps(record)[:60]}")
        out.append((f"{path} record {index}", record))
    return out


def _csv_records(path: str, text: str) -> list[tuple[str, dict[str, Any]]]:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header or "run_number" not in [h.strip() for h in header]:
        raise Invalid(f"{path} line 1: expected a header with a run_number column")
    names = [h.strip() for h in header]
    if "" in names or len(set(names)) != len(names):
        raise Invalid(f"{path} line 1: column names must be non-empty and distinct")
    out = []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        where = f"{path} line {reader.line_num}"
        if len(row) != len(names):
            raise Invalid(f"{where}: {len(row)} fields, the header has {len(names)}")
        out.append((where, {k: parse_scalar(v.strip()) for k, v in zip(names, row) if v.strip()}))
    return out


def _spec(where: str, record: dict[str, Any]) -> RunSpec:
    if "run_number" not in record:
        raise Invalid(f"{where}: no run_number")
    meta = {k: v for k, v in record.items() if k not in ("run_number", "fill")}
    try:
        number, fill = check_run(_whole(record["run_number"]), _whole(record.get("fill")))
    except Invalid as err:
        raise Invalid(f"{where}: {err}") from None
    return RunSpec(number, fill, meta)


def _whole(value: Any) -> Any:
    """Refuse 3.5 as a run number or fill instead of truncating it to 3 (whole floats pass)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (float, bool)):
        return repr(value)
    return value
