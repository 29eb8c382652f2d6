"""What the original's command lines (``ecalrunctrl.py``, ``ecalautomation.py``) share: its argparse syntax on click.

The original parsed with argparse: ``--add t1 t2 t3`` takes every value after one flag, ``--type=all`` and
``--type all`` are one option, ``-c/--campaign`` may stand before the command or after it. Those forms, and only
those, are accepted here: a flag that takes several values is given once (argparse kept the last one silently),
an option or command the original had and ecalstate does otherwise is answered with one line naming the
``ecalstate`` command that does it. Every refusal is one line on stderr: exit 2 for the command line, 1 for what
the store refused; nothing is written and no traceback is shown.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn, Optional

import click

from ..catalog import check_name
from ..errors import EcalStateError
from ..secrets import url_secret_refusal
from ..store import Store
from ..compat.dbnames import DATABASES_ENV, SYSTEM_FILE, resolve_dbname

DB_HELP = (f"The store: a database name of the databases file (${DATABASES_ENV}, else "
           f"~/.config/ecalstate/databases.conf, else {SYSTEM_FILE}: lines NAME = URL|PATH), a SQLite path or a "
           "URL without password (env ECALSTATE_DB).")


class NotHonoured(click.ClickException):
    """A well-formed call of the original that ecalstate does otherwise: one line naming what to use, exit 2."""

    exit_code = 2


class OriginalCommand(click.Command):
    """A command taking the original's forms.

    ``variadic``: options that take every value after them (argparse's ``nargs='+'``), given once.
    ``instead``: the ``ecalstate`` command that does what this one does, named for an option it does not know;
    ``elsewhere``: options the original may have had, each with the ``ecalstate`` command that does it.
    """

    def __init__(self, *args: Any, variadic: Sequence[str] = (), instead: str = "",
                 elsewhere: Optional[Mapping[str, str]] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.variadic = tuple(variadic)
        self.instead = instead
        self.elsewhere = dict(elsewhere or {})

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, spread(ctx, args, self.variadic))


def spread(ctx: click.Context, args: Sequence[str], variadic: Sequence[str]) -> list[str]:
    """``--add t1 t2`` as click's ``--add t1 --add t2``; ``--add=t1`` is one value, as argparse takes it."""
    out: list[str] = []
    seen: set[str] = set()
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            out += args[i:]
            break
        name, equals, value = arg.partition("=")
        if name not in variadic:
            out.append(arg)
            i += 1
            continue
        what = _noun(ctx, name)
        if name in seen:
            raise click.UsageError(f"give {name} once, followed by every {what} ({name} A B C)", ctx)
        seen.add(name)
        i += 1
        values = [value] if equals else []
        while not equals and i < len(args) and not args[i].startswith("-"):
            values.append(args[i])
            i += 1
        if not values or not all(values):
            raise click.UsageError(f"{name} needs at least one {what}", ctx)
        for item in values:
            out += [name, item]
    return out


def _noun(ctx: click.Context, name: str) -> str:
    for param in ctx.command.params:
        if isinstance(param, click.Option) and name in param.opts and param.metavar:
            return param.metavar.split()[0].lower()
    return "value"


class OriginalGroup(click.Group):
    """The script's commands; an unknown one is answered with the ones it has and where the rest is."""

    command_class = OriginalCommand

    def __init__(self, *args: Any, rest: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rest = rest

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[Optional[str], Optional[click.Command], list[str]]:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            known = ", ".join(self.list_commands(ctx))
            raise click.UsageError(f"no command {name!r} here ({known}); {self.rest}", ctx)
        return super().resolve_command(ctx, args)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # in the order the original documents them


class Original:
    """The options given before the command: the store (``--db``) and the campaign (``-c``)."""

    def __init__(self, db: Optional[str], campaign: Optional[str]) -> None:
        self.db = db
        self.campaign = campaign

    def campaign_for(self, given: Optional[str]) -> str:
        """The campaign, given before the command or after it (once)."""
        ctx = click.get_current_context(silent=True)
        if given and self.campaign and given != self.campaign:
            raise click.UsageError(f"two campaigns given ({self.campaign} before the command, {given} after it): "
                                   "give one", ctx)
        campaign = given or self.campaign
        if not campaign:
            raise click.UsageError("give the campaign: --campaign NAME (or -c NAME)", ctx)
        return campaign

    def store(self, create: bool = False, read_only: bool = False, campaign: Optional[str] = None) -> Store:
        """The store ``--db`` names; ``create`` makes it (a valid ``campaign`` name first: a refusal makes no file)."""
        if not self.db:
            raise click.UsageError("give --db NAME|PATH|URL (or set ECALSTATE_DB)",
                                   click.get_current_context(silent=True))
        target = resolve_dbname(self.db)
        if campaign is not None:
            check_name("campaign", campaign)
        return Store.open(target, create=create, read_only=read_only)


def db_password_refused(ctx: click.Context, param: click.Parameter, value: Optional[str]) -> Optional[str]:
    """``--db`` callback: a URL holding a password is a usage error, and the password is never repeated."""
    refusal = url_secret_refusal(value) if value else None
    if refusal is not None:
        raise click.BadParameter(refusal, ctx, param)
    return value


def main_of(group: click.Group, prog: str, argv: Optional[Sequence[str]] = None) -> NoReturn:
    """Run ``group`` as the console script ``prog``: every refusal one line on stderr, exit 2 or 1."""
    from .fmt import printable

    try:
        code = group.main(args=list(sys.argv[1:] if argv is None else argv), prog_name=prog, standalone_mode=False)
    except click.NoSuchOption as err:
        code, message = 2, _unknown_option(err)
    except click.UsageError as err:
        ctx = err.ctx
        head = f"{ctx.info_name}: " if ctx is not None and ctx.parent is not None else ""
        code, message = 2, f"{head}{err.format_message()} (see '{ctx.command_path if ctx else prog} --help')"
    except click.ClickException as err:
        code, message = err.exit_code, err.format_message()
    except EcalStateError as err:
        code, message = 1, printable(str(err))
    except click.Abort:
        code, message = 1, "aborted"
    else:
        sys.exit(code if isinstance(code, int) else 0)
    click.echo(f"{prog}: {message}", err=True)
    sys.exit(code)


def _unknown_option(err: click.NoSuchOption) -> str:
    command = err.ctx.command if err.ctx is not None else None
    name = err.option_name
    where = f"{err.ctx.info_name}: " if err.ctx is not None and err.ctx.parent is not None else ""
    if isinstance(command, OriginalCommand):
        instead = command.elsewhere.get(name, command.instead)
        if instead:
            return f"{where}no option {name} here; ecalstate does it: {instead}"
    return f"{where}no option {name} here (see '{err.ctx.command_path if err.ctx else ''} --help')"
