"""Line protocol escaping: exact bytes, and what the real InfluxDB 1.6.7 reads back."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecalstate.lineprotocol import escape_key, escape_measurement, field_value, line, quote, safe_key, timestamp_ns

#: names with everything line protocol escapes, and what it must leave alone
NAMES = [
    "plain", "with space", "comma,here", "equals=sign", 'double"quote', "back\\slash", "a\\\\b", "=,= ,",
    "ünïcødé", "☃ snow", "phisym-reco", "task.v2:+x", "\\x", "ends with quote\"", "trailing space ",
]
#: free text for string fields: the above plus newlines, CR, tabs, trailing backslashes, empty
TEXTS = NAMES + ["line1\nline2", "crlf\r\n", "tab\there", "trailing\\", "\\", "", '\\"', "\n", "x\\\ny", "\x01ctl"]


def test_exact_escapes() -> None:
    assert escape_key("a b,c=d") == r"a\ b\,c\=d"
    assert escape_key('q"u\\ote') == 'q"u\\ote'  # quotes and inner backslashes stay literal in keys
    assert escape_measurement("m x,y=z") == r"m\ x\,y=z"
    assert quote('say "hi" \\ bye\n') == '"say \\"hi\\" \\\\ bye\n"'
    assert line("job", [("task", "b c"), ("campaign", "p")], [("status", "done"), ("n", 3), ("ok", True)], 7) == (
        'job,campaign=p,task=b\\ c status="done",n=3i,ok=true 7')


@pytest.mark.parametrize("bad", ["", "new\nline", "cr\r", "tab\t", "end\\", "before\\,comma", "b\\ s", "b\\=e"])
def test_unwritable_keys_are_refused_and_made_safe(bad: str) -> None:
    with pytest.raises(ValueError):
        escape_key(bad)
    if bad:
        escape_key(safe_key(bad))


def test_field_values() -> None:
    assert [field_value(v) for v in (True, False, 0, -12, 1.5, 1e300, "x")] == [
        "true", "false", "0i", "-12i", "1.5", "1e+300", '"x"']
    assert field_value(float("nan")) is None and field_value(float("inf")) is None
    assert line("m", [("t", "")], [("a", float("nan")), ("b", 1)], 1) == "m b=1i 1"  # empty tag, NaN: left out
    with pytest.raises(ValueError):
        line("m", [], [("a", float("nan"))], 1)
    with pytest.raises(TypeError):
        field_value([1])  # type: ignore[arg-type]


def test_timestamps_are_exact_nanoseconds() -> None:
    assert timestamp_ns("1970-01-01T00:00:00.000001Z") == 1000
    ts = "2024-05-06T07:08:09.123456Z"
    expected = int(datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc).timestamp()) * 10**9 + 123456000
    assert timestamp_ns(ts) == expected


# ------------------------------------------------------------------------ the real server


def write(influx: Any, db: str, lines: list[str]) -> None:
    influx.write("\n".join(lines), db, precision="ns")


def series_rows(influx: Any, db: str, query: str) -> list[dict[str, Any]]:
    out = []
    for result in influx.query(query, db=db, epoch="ns")["results"]:
        for series in result.get("series", []):
            for values in series["values"]:
                out.append({"name": series["name"], **series.get("tags", {}), **dict(zip(series["columns"], values))})
    return out


def round_trip(influx: Any, names: list[str], texts: list[str]) -> None:
    """Tag keys, tag values, field keys, string values and measurement names come back exactly."""
    db = "lp_" + uuid.uuid4().hex[:10]
    influx.create_database(db)
    lines = []
    for i, name in enumerate(names):
        lines.append(line("tags", [("t", name), ("k", "x")], [("i", i)], i + 1))
        lines.append(line("fieldkeys", [("k", "x")], [(name, i)], i + 1))
        lines.append(line("tagkeys", [(name, "v")], [("i", i)], i + 1))
        lines.append(line("m " + name, [], [("i", i)], i + 1))
    for i, text in enumerate(texts):
        lines.append(line("strings", [("k", "x")], [("s", text), ("i", i)], i + 1))
    write(influx, db, lines)

    tags = {r["i"]: r["t"] for r in series_rows(influx, db, 'SELECT i, t FROM "tags"')}
    assert [tags[i] for i in range(len(names))] == names
    keys = {r["fieldKey"] for r in series_rows(influx, db, 'SHOW FIELD KEYS FROM "fieldkeys"')}
    assert keys == set(names)
    tag_keys = {r["tagKey"] for r in series_rows(influx, db, 'SHOW TAG KEYS FROM "tagkeys"')}
    assert tag_keys == set(names)
    measurements = {r["name"] for r in series_rows(influx, db, "SHOW MEASUREMENTS")}
    assert {"m " + n for n in names} <= measurements
    strings = {r["i"]: r["s"] for r in series_rows(influx, db, 'SELECT s, i FROM "strings"')}
    assert [strings[i] for i in range(len(texts))] == texts


def test_escaping_round_trips_through_influxdb(influx: Any) -> None:
    round_trip(influx, NAMES, TEXTS)


writable = st.text(min_size=1, max_size=30).filter(
    lambda s: _writable(s))


def _writable(text: str) -> bool:
    try:
        escape_key(text)
    except ValueError:
        return False
    return True


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(writable, min_size=1, max_size=10, unique=True),
       texts=st.lists(st.text(max_size=40), min_size=1, max_size=10))
def test_any_writable_name_and_any_text_round_trip(influx: Any, names: list[str], texts: list[str]) -> None:
    round_trip(influx, names, texts)
