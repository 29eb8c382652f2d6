"""The bounds every input is held to, in one place: what the databases can store, what one call may ask for.

Run numbers, fills, job ids and counts are stored as SQLite INTEGER and PostgreSQL BIGINT:
signed 64-bit. A larger number would reach the driver and fail there with a traceback, so
it is refused when it is parsed, by :func:`check_int64`, which every option and file reader uses.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from .errors import Invalid

T = TypeVar("T")

INT64_MIN = -(2**63)
#: values one statement binds at most (``IN (...)`` lists): SQLite's compiled-in limit may be as low as 999
SQL_CHUNK = 500
INT64_MAX = 2**63 - 1
#: jobs one ``create_jobs`` call may create (one transaction holds the write lock while it inserts them)
MAX_JOBS_PER_CALL = 100_000
#: the longest duration or age accepted (``--stuck-after``, ``db prune --before 90d``): 100 years, in seconds
MAX_DURATION = 100 * 36525 * 864  # 100 * 365.25 days * 86400 s, kept an integer
MAX_DURATION_TEXT = f"at most 100 years ({MAX_DURATION} s)"
#: retries of one export request while the server is unreachable: with waits capped at MAX_RETRY_BASE, 100 retries
#: wait at most 50 minutes before the export reports the outage (and the next one resumes where it stopped)
MAX_EXPORT_RETRIES = 100
#: the first wait between two tries, seconds: the cap of every wait (a larger first wait would not be waited)
MAX_RETRY_BASE = 30
#: the timeout of one request to InfluxDB, seconds: an hour
MAX_EXPORT_TIMEOUT = 3600
#: the longest pause of ``export --watch``, seconds: a day (rarer exports are a cron job's work)
MAX_WATCH_INTERVAL = 86400


def int64_range(low: int = INT64_MIN) -> str:
    """How messages state the accepted range."""
    return f"an integer from {low} to {INT64_MAX}"


def check_int64(value: Any, what: str, low: int = INT64_MIN) -> int:
    """``value`` as an int in [``low``, INT64_MAX], or :class:`Invalid` naming ``what`` and the range.

    Accepts ints and their decimal text; refuses bools, fractions and other text.
    """
    try:
        number = int(str(value).strip()) if not isinstance(value, (bool, float)) else None
    except ValueError:
        number = None
    if number is None:
        raise Invalid(f"invalid {what} {value!r}: expected {int64_range(low)}")
    if not low <= number <= INT64_MAX:
        raise Invalid(f"invalid {what} {number}: expected {int64_range(low)}")
    return number


def chunks(items: Sequence[T], size: int = SQL_CHUNK) -> Iterator[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size`` (the one way a long list is cut into statements)."""
    for start in range(0, len(items), size):
        yield items[start:start + size]
