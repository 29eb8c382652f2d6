"""The bounds of the library itself (the CLI cases live in test_cli_errors.py): 64-bit integers,
durations, jobs per call, the filter language's typos and comparisons, read-only PostgreSQL sessions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cli_support import build_chain, dump

from ecalstate import Store
from ecalstate.cli.parse import parse_duration
from ecalstate.clock import utcnow
from ecalstate.db import DatabaseError
from ecalstate.errors import Invalid
from ecalstate.filters import parse_filter
from ecalstate.limits import INT64_MAX, MAX_DURATION, MAX_JOBS_PER_CALL, check_int64
from ecalstate.monitoring import cutoff


@pytest.mark.parametrize(("value", "low", "expected"), [
    (INT64_MAX, 1, INT64_MAX),
    (str(INT64_MAX), 1, INT64_MAX),
    (" 7 ", 1, 7),
    (0, 0, 0),
    (-(2**63), -(2**63), -(2**63)),
], ids=["max", "max-as-text", "text-with-blanks", "zero-from-0", "min"])
def test_check_int64_accepts_what_the_database_holds(value: Any, low: int, expected: int) -> None:
    assert check_int64(value, "run number", low) == expected


@pytest.mark.parametrize(("value", "low", "message"), [
    (2**63, 1, f"invalid run number {2**63}: expected an integer from 1 to {INT64_MAX}"),
    (-(2**63) - 1, -(2**63), f"invalid run number {-(2**63) - 1}: expected an integer from"),
    (0, 1, "invalid run number 0: expected an integer from 1"),
    (True, 0, "invalid run number True"),
    (7.0, 0, "invalid run number 7.0"),
    ("7x", 0, "invalid run number '7x'"),
], ids=["2^63", "below-min", "below-low", "bool", "float", "text"])
def test_check_int64_refuses_with_the_range(value: Any, low: int, message: str) -> None:
    with pytest.raises(Invalid, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        check_int64(value, "run number", low)


def test_durations_are_bounded_at_100_years() -> None:
    assert parse_duration(f"{MAX_DURATION}") == MAX_DURATION
    assert parse_duration("5200w") == 5200 * 7 * 86400
    with pytest.raises(ValueError, match=r"at most 100 years \(3155760000 s\)"):
        parse_duration("5218w")
    with pytest.raises(Invalid, match="at most 100 years"):
        cutoff(MAX_DURATION + 1, utcnow())
    assert cutoff(MAX_DURATION, utcnow()) < "1927"


@pytest.fixture
def chain(tmp_path: Path) -> str:
    db = str(tmp_path / "state.db")
    build_chain(db)
    with Store.open(db, actor="setup") as store:
        store.claim("prompt", "reco")
    return db


def test_job_creation_is_bounded_per_call_and_refused_before_any_work(chain: str) -> None:
    before = dump(chain)
    with Store.open(chain) as store:
        with pytest.raises(Invalid, match=f"{MAX_JOBS_PER_CALL + 1} jobs in one creation: at most 100000 per call"):
            store.create_jobs("prompt", "reco", 1, range(MAX_JOBS_PER_CALL + 1))
        with pytest.raises(Invalid, match=f"invalid job id {2**63}: expected an integer from 0 to {INT64_MAX}"):
            store.create_jobs("prompt", "reco", 1, [INT64_MAX, 2**63])
    assert dump(chain) == before


def test_a_number_beyond_64_bits_from_a_library_caller_is_one_clean_error(chain: str) -> None:
    """Where no parser stands between a caller and the driver, the store still refuses in one line."""
    with Store.open(chain, read_only=True) as store:
        with pytest.raises(DatabaseError, match=f"a number is out of range for .*: expected an integer from "
                                                f"-9223372036854775808 to {INT64_MAX}"):
            store.list_jobs("prompt", "reco", run=2**64)


@pytest.mark.parametrize(("text", "message"), [
    ("class==Collisions", "invalid filter clause 'class==Collisions': '=' after the operator '=' at position 7"),
    ("nevents>>3", "'>' after the operator '>' at position 9"),
    ("nevents>=<3", "'<' after the operator '>=' at position 10"),
    ("class=Cosmics, lumi!==2", "invalid filter clause 'lumi!==2': '=' after the operator '!=' at position 22"),
], ids=["double-equals", "double-greater", "greater-equal-less", "second-clause"])
def test_filter_operator_typos_are_refused_with_their_position(text: str, message: str) -> None:
    with pytest.raises(Invalid, match=message.replace("(", r"\(")):
        parse_filter(text)


@pytest.mark.parametrize(("text", "record", "matches"), [
    ("nevents>=1000", {"nevents": "unknown"}, False),
    ("nevents<1000", {"nevents": "unknown"}, False),
    ("nevents>=1000", {"nevents": "5000"}, True),
    ("nevents!=1000", {"nevents": "unknown"}, True),
    ("era>=Run2024C", {"era": "Run2024D"}, True),
    ("era>=Run2024C", {"era": "Run2024B"}, False),
    ("era<Run2024C", {"era": 5}, True),
], ids=["number-vs-text-never-greater", "number-vs-text-never-less", "numeric-text-is-a-number",
        "not-equal-compares-text", "text-orders-as-text", "text-orders-as-text-below", "text-value-orders-as-text"])
def test_ordering_with_a_number_needs_a_number(text: str, record: dict[str, Any], matches: bool) -> None:
    assert parse_filter(text).matches(record) is matches


def test_a_read_only_postgresql_store_refuses_writes(pg_url: str) -> None:
    with Store.open(pg_url, actor="setup", create=True) as store:
        store.create_campaign("prompt")
    with Store.open(pg_url, read_only=True) as reader:
        assert [c.name for c in reader.list_campaigns()] == ["prompt"]
        with pytest.raises(DatabaseError, match="read-only transaction"):
            reader.create_campaign("other")
    with Store.open(pg_url) as store:
        assert [c.name for c in store.list_campaigns()] == ["prompt"]


@pytest.mark.parametrize(("text", "ecal_in", "ecal_out"), [
    ("ecal=1", True, False), ("ecal=true", True, False), ("ecal=yes", True, False),
    ("ecal=0", False, True), ("ecal!=1", False, True), ("ecal=false", False, True),
], ids=lambda v: v if isinstance(v, str) else None)
def test_flags_from_oms_match_the_usual_spellings(text: str, ecal_in: bool, ecal_out: bool) -> None:
    """OMS flags are stored as JSON booleans; shifters write ecal=1 as often as ecal=true."""
    rule = parse_filter(text)
    assert (rule.matches({"ecal": True}), rule.matches({"ecal": False})) == (ecal_in, ecal_out)
