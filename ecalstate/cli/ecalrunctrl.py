"""``ecalrunctrl.py``: the original's campaign and run-type command line, over the ecalstate store.

As the original's documentation calls it::

    ecalrunctrl.py --db ecal_prompt_v1 create --campaign prompt
    ecalrunctrl.py --db ecal_prompt_v1 rtype-update --campaign prompt --add phisym-reco phisym-calib --type=all
    ecalrunctrl.py --db ecal_prompt_v1 rtype-create --campaign prompt --type cosmics --add timing-reco
    ecalrunctrl.py --db ecal_prompt_v1 rtype-list --campaign prompt

Each command makes the calls ``ecalstate campaign create``, ``ecalstate rtype create|update|list`` make; a
command or option of the original that ecalstate does otherwise is answered with the ``ecalstate`` command to
use (docs/migration.md has the table).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NoReturn, Optional, TypeVar

import click

from ..compat.runtypes import Activation, activate_tasks
from .fmt import echo_table
from .original import DB_HELP, Original, OriginalGroup, db_password_refused, main_of

PROG = "ecalrunctrl.py"
F = TypeVar("F", bound=Callable[..., Any])
UPDATE = "ecalstate --db DB rtype update -c CAMPAIGN NAME"


def campaign_option(f: F) -> F:
    return click.option("-c", "--campaign", metavar="NAME", help="The campaign (or -c NAME before the command).")(f)


def tasks_option(required: bool, help: str) -> Callable[[F], F]:
    return click.option("--add", "tasks", multiple=True, required=required, metavar="TASK [TASK ...]", help=help)


@click.group(cls=OriginalGroup, invoke_without_command=True,
             rest="ecalstate does the rest: runs with 'ecalstate run inject' or 'run sync', statuses with "
                  "'ecalstate set' and 'ecalstate reprocess'",
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--db", envvar="ECALSTATE_DB", metavar="NAME|PATH|URL", callback=db_password_refused, help=DB_HELP)
@campaign_option
@click.pass_context
def runctrl(ctx: click.Context, db: Optional[str], campaign: Optional[str]) -> None:
    """Campaigns and run types, as the original's ecalrunctrl.py set them up.

    A task runs on a run once a run type that matches the run activates it: `rtype-update --add` activates
    tasks (declaring those the campaign lacks) for the runs injected from then on.

    \b
    Example:
        ecalrunctrl.py --db ecal_prompt_v1 create --campaign prompt
        ecalrunctrl.py --db ecal_prompt_v1 rtype-update --campaign prompt --add task1 task2 --type=all
    """
    ctx.obj = Original(db, campaign)
    if ctx.invoked_subcommand is None:
        raise click.UsageError("give a command: create, rtype-create, rtype-update or rtype-list", ctx)


@runctrl.command("create", instead="ecalstate --db DB campaign create NAME [--kind prompt|reprocessing] "
                                   "[--description TEXT]")
@campaign_option
@click.pass_obj
def create(original: Original, campaign: Optional[str]) -> None:
    """Create the campaign with its run type `all` (every run); the store is created when missing."""
    name = original.campaign_for(campaign)
    with original.store(create=True, campaign=name) as store:
        info = store.create_campaign(name)
    click.echo(f"created campaign {info.name} ({info.kind}) with run type all (every run)")


@runctrl.command("rtype-create", variadic=("--add",), instead="ecalstate --db DB rtype create -c CAMPAIGN NAME "
                 "[--filter EXPR] [--task TASK]",
                 elsewhere={"--filter": "ecalstate --db DB rtype create -c CAMPAIGN NAME --filter EXPR"})
@campaign_option
@click.option("--type", "rtype", required=True, metavar="NAME", help="The run type to create.")
@tasks_option(False, "Tasks it activates (declared when the campaign has none by that name).")
@click.pass_obj
def rtype_create(original: Original, campaign: Optional[str], rtype: str, tasks: Sequence[str]) -> None:
    """Create a run type matching every run; 'ecalstate rtype update --filter' gives it a filter."""
    name = original.campaign_for(campaign)
    with original.store() as store:
        report(activate_tasks(store, name, rtype, tasks, create=True))


@runctrl.command("rtype-update", variadic=("--add",), instead=f"{UPDATE} [--add TASK] [--remove TASK] "
                 "[--filter EXPR] [--backfill]",
                 elsewhere={"--remove": f"{UPDATE} --remove TASK", "--filter": f"{UPDATE} --filter EXPR",
                            "--backfill": f"{UPDATE} --add TASK --backfill"})
@campaign_option
@tasks_option(True, "Tasks to activate (declared when the campaign has none by that name).")
@click.option("--type", "rtype", default="all", show_default=True, metavar="NAME", help="The run type.")
@click.pass_obj
def rtype_update(original: Original, campaign: Optional[str], tasks: Sequence[str], rtype: str) -> None:
    """Activate tasks for a run type: the runs injected from now on get them."""
    name = original.campaign_for(campaign)
    with original.store() as store:
        report(activate_tasks(store, name, rtype, tasks))


@runctrl.command("rtype-list", instead="ecalstate --db DB rtype list -c CAMPAIGN")
@campaign_option
@click.pass_obj
def rtype_list(original: Original, campaign: Optional[str]) -> None:
    """List the run types of the campaign (of every campaign without one), their filters and tasks."""
    name = campaign or original.campaign
    with original.store(read_only=True) as store:
        campaigns = [name] if name else [c.name for c in store.list_campaigns()]
        rows: list[tuple[Optional[str], ...]] = [(c, r.name, r.filter or "(every run)", ",".join(r.tasks) or None)
                                                 for c in campaigns for r in store.list_rtypes(c)]
    headers = ["campaign", "run type", "filter", "tasks"]
    if name:  # one campaign: no column for it
        headers, rows = headers[1:], [r[1:] for r in rows]
    echo_table(headers, rows, "no run types")


def report(done: Activation) -> None:
    """What activate_tasks did, one line each, with the ecalstate commands that refine it."""
    for task in done.declared:
        click.echo(f"declared task {task} in campaign {done.campaign} (no dependencies: 'ecalstate task update "
                   f"-c {done.campaign} {task} --depends-on ... --max-retries N' sets them)")
    if done.created:
        click.echo(f"created run type {done.rtype} (every run) activating {', '.join(done.added) or 'no task'}")
    elif done.added:
        click.echo(f"run type {done.rtype}: added {', '.join(done.added)}; runs injected from now on get them "
                   f"('ecalstate rtype update -c {done.campaign} {done.rtype} --add TASK --backfill' gives them to "
                   "the runs already there)")
    else:
        click.echo(f"run type {done.rtype} activates them already: nothing changed")


def main(argv: Optional[Sequence[str]] = None) -> NoReturn:
    """The console script ``ecalrunctrl.py``."""
    main_of(runctrl, PROG, argv)
