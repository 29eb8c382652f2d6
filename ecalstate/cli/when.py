"""Points in time on the command line: ``--since 8h`` (ago) or ``--since 2026-12-01T06:00`` (UTC)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Optional

import click

from .. import clock
from .parse import parse_duration

#: the store's time format (UTC, microseconds): text order is time order
STORE_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def parse_moment(text: str, now: Optional[datetime] = None) -> str:
    """A duration ago (``90m``, ``8h``, ``2d``) or a date/time (ISO 8601; without a zone it is UTC), as store text."""
    value = text.strip()
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        try:
            seconds = parse_duration(value)
        except ValueError:
            raise ValueError(f"invalid time {text!r}: expected a duration ago (8h, 2d) or a date/time "
                             "(2026-12-01T06:00, UTC unless it names its zone)") from None
        moment = (now or clock.now()) - timedelta(seconds=seconds)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime(STORE_FORMAT)


class Moment(click.ParamType):
    """A click type for :func:`parse_moment`."""

    name = "time"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> str:
        try:
            return parse_moment(str(value))
        except (ValueError, OverflowError) as err:
            self.fail(str(err) if isinstance(err, ValueError) else f"invalid time {value!r}: out of range", param, ctx)


MOMENT = Moment()
