"""Reusable options, so every command spells the same flag the same way."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional, TypeVar

import click

from ..errors import EcalStateError
from ..filters import parse_runs, split_multi
from .parse import DURATION

F = TypeVar("F", bound=Callable[..., Any])


def _complete_campaign(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion of campaign names, read from the database of ``--db`` (nothing when it cannot be read)."""
    from ..store import Store

    db = ctx.find_root().params.get("db")
    if not isinstance(db, str):
        return []
    try:
        with Store.open(db, read_only=True) as store:
            names = [c.name for c in store.list_campaigns()]
    except EcalStateError:
        return []
    return [n for n in names if n.startswith(incomplete)]


def _campaign(required: bool, help: str) -> Callable[[F], F]:
    return click.option("-c", "--campaign", envvar="ECALSTATE_CAMPAIGN", required=required, metavar="NAME",
                        shell_complete=_complete_campaign, help=help + " (env ECALSTATE_CAMPAIGN).")


def campaign_option(f: F) -> F:
    return _campaign(True, "Campaign")(f)


def optional_campaign_option(f: F) -> F:
    """For commands that look at every campaign unless one is named (``health``)."""
    return _campaign(False, "Campaign; all campaigns when omitted")(f)


def task_option(required: bool = True, help: str = "Task name.") -> Callable[[F], F]:
    return click.option("-t", "--task", required=required, metavar="TASK", help=help)


def _runs(ctx: click.Context, param: click.Parameter, value: Optional[str]) -> Optional[list[int]]:
    if value is None:
        return None
    try:
        return parse_runs(value)
    except EcalStateError as err:
        raise click.BadParameter(str(err)) from None


def runs_option(required: bool = False, help: str = "Run set, e.g. 356001-356100,356200.") -> Callable[[F], F]:
    return click.option("--runs", "runs", required=required, metavar="SET", callback=_runs, help=help)


def _multi(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> list[str]:
    return split_multi(value)


def multi_option(*decls: str, help: str, metavar: str = "NAME") -> Callable[[F], F]:
    """A repeatable option that also takes comma lists: ``--add a --add b,c``."""
    return click.option(*decls, multiple=True, callback=_multi, metavar=metavar,
                        help=help + " Repeatable; comma lists accepted.")


def reason_option(f: F) -> F:
    return click.option("--reason", required=True, metavar="TEXT", help="Why (kept in the audit).")(f)


def dry_run_option(f: F) -> F:
    return click.option("--dry-run", is_flag=True, help="Print what would change; write nothing.")(f)


def request_id_option(f: F) -> F:
    return click.option("--request-id", metavar="ID",
                        help="Idempotency key: replaying the same id returns the first outcome.")(f)


def stuck_after_option(f: F) -> F:
    return click.option("--stuck-after", type=DURATION, default="6h", show_default=True, metavar="DURATION",
                        help="A processing instance is stuck after this long without job progress (30m, 6h, 2d).")(f)


def silent_after_option(f: F) -> F:
    return click.option("--silent-after", type=DURATION, default="2h", show_default=True, metavar="DURATION",
                        help="A handler stage is silent after this long without a heartbeat (30m, 6h, 2d).")(f)
