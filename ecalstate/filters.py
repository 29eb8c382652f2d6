"""The run-type filter language and run-set parsing.

A filter is clauses joined by commas (AND): ``class=Collisions,nevents>=1000``.
Operators: ``=`` ``!=`` ``>=`` ``<=`` ``>`` ``<``. A value starting with an
operator character (``class==Collisions``, ``nevents>>3``) is a typo and refused,
naming its position. ``=`` and ``!=`` compare as numbers when both sides are
numbers, else as text. ``>`` ``>=`` ``<`` ``<=`` with a number compare numbers
only: a run whose value is not a number fails the clause (``nevents>=1000`` never
matches ``nevents=unknown``); with a text value they compare text (``era>=Run2024C``).
A flag stored as true/false (from OMS: ``ecal``, ``global``) equals ``1``,
``true`` or ``yes``, and ``0``, ``false`` or ``no``. A run lacking the key fails
the clause. The empty filter matches every run.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import Invalid
from .limits import INT64_MAX, int64_range

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "!=": operator.ne,
    ">=": operator.ge,
    "<=": operator.le,
    "=": operator.eq,
    ">": operator.gt,
    "<": operator.lt,
}
#: how a filter may spell a flag's value
_FLAG_WORDS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
_CLAUSE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*(!=|>=|<=|=|>|<)\s*(.*?)\s*$")


@dataclass(frozen=True)
class Clause:
    key: str
    op: str
    value: str

    def matches(self, record: Mapping[str, Any]) -> bool:
        if self.key not in record or record[self.key] is None:
            return False
        flag = _FLAG_WORDS.get(self.value.strip().lower())
        if isinstance(record[self.key], bool) and flag is not None and self.op in ("=", "!="):
            return _OPS[self.op](record[self.key], flag)
        left, right = _coerce(record[self.key]), _coerce(self.value)
        if isinstance(left, float) != isinstance(right, float):
            if isinstance(right, float) and self.op not in ("=", "!="):
                return False  # a numeric comparison needs a number
            left, right = str(record[self.key]), self.value
        try:
            return _OPS[self.op](left, right)
        except TypeError:
            return False


def _coerce(value: Any) -> Any:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        return text


@dataclass(frozen=True)
class RunFilter:
    text: str
    clauses: tuple[Clause, ...]

    def matches(self, record: Mapping[str, Any]) -> bool:
        return all(c.matches(record) for c in self.clauses)


def parse_filter(text: str | None) -> RunFilter:
    """Parse a filter expression, or raise :class:`Invalid` naming the bad clause."""
    text = (text or "").strip()
    clauses = []
    start = 0  # where the clause starts in ``text``, for positions in messages
    if text:
        for part in text.split(","):
            found = _CLAUSE.match(part)
            if not found or not found.group(3):
                raise Invalid(
                    f"invalid filter clause {part.strip()!r}: expected KEY OP VALUE with OP one of = != >= <= > <"
                )
            if found.group(3)[0] in "=!<>":
                raise Invalid(
                    f"invalid filter clause {part.strip()!r}: {found.group(3)[0]!r} after the operator "
                    f"{found.group(2)!r} at position {start + found.start(3) + 1} (operators: = != >= <= > <)"
                )
            clauses.append(Clause(found.group(1), found.group(2), found.group(3)))
            start += len(part) + 1
    return RunFilter(text, tuple(clauses))


_MAX_RANGE = 1_000_000


def parse_runs(spec: str | Iterable[str] | int) -> list[int]:
    """``356001-356100,356200`` (or repeated values) as a sorted list of distinct run numbers."""
    if isinstance(spec, int):
        parts = [str(spec)]
    elif isinstance(spec, str):
        parts = spec.split(",")
    else:
        parts = [p for item in spec for p in str(item).split(",")]
    runs: set[int] = set()
    for raw in parts:
        part = raw.strip()
        if not part:
            raise Invalid(f"invalid run set {','.join(parts)!r}: empty element")
        lo_txt, sep, hi_txt = part.partition("-")
        try:
            lo = int(lo_txt)
            hi = int(hi_txt) if sep else lo
        except ValueError:
            raise Invalid(f"invalid run set element {part!r}: expected N or N-M with integers") from None
        if lo <= 0 or hi <= 0:
            raise Invalid(f"invalid run set element {part!r}: run numbers are > 0")
        if hi > INT64_MAX or lo > INT64_MAX:
            raise Invalid(f"invalid run set element {part!r}: {max(lo, hi)} is out of range: expected"
                          f" {int64_range(1)}")
        if hi < lo:
            raise Invalid(f"invalid run range {part!r}: end before start")
        if hi - lo >= _MAX_RANGE:
            raise Invalid(f"run range {part!r} is larger than {_MAX_RANGE} runs")
        runs.update(range(lo, hi + 1))
    return sorted(runs)


def split_multi(values: Iterable[str]) -> list[str]:
    """Multi-valued options: repetition and comma lists, blanks dropped, order kept, no duplicates."""
    out: list[str] = []
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if item and item not in out:
                out.append(item)
    return out
