"""``ecalautomation.py``: the original's job command line, answered with what ecalstate does instead.

Its one public call (an early script)::

    ecalautomation.py -c CAMPAIGN -w WORKFLOW --dataPeriod P wait --resubcmd "crab resubmit ..." \\
        --howManyAttempts 1 -s 0

``wait`` polled a task's jobs and resubmitted the failed ones by running a command of the caller's. ecalstate never
resubmits behind the store's back (a job resubmitted outside the store is one it cannot reconcile, nor count
against the task's retry limit), so the call is taken whole, its database name checked, and answered with one line
naming the handler stages and ``ecalstate`` commands that do it: exit 2, nothing written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn, Optional

import click

from ..compat.dbnames import resolve_dbname
from .original import DB_HELP, NotHonoured, Original, OriginalGroup, db_password_refused, main_of

PROG = "ecalautomation.py"


@click.group(cls=OriginalGroup, invoke_without_command=True,
             rest="ecalstate does the rest: a task's handler stages (python HANDLER.py submit|resubmit|check) and "
                  "'ecalstate job list' and 'ecalstate health'",
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--db", envvar="ECALSTATE_DB", metavar="NAME|PATH|URL", callback=db_password_refused, help=DB_HELP)
@click.option("-c", "--campaign", metavar="NAME", help="The campaign.")
@click.option("-w", "--workflow", metavar="TASK", help="The task (the original called it the workflow).")
@click.option("--dataPeriod", "period", metavar="PERIOD",
              help="The early scripts' data period (ecalstate keys work by run).")
@click.pass_context
def automation(ctx: click.Context, db: Optional[str], campaign: Optional[str], workflow: Optional[str],
               period: Optional[str]) -> None:
    """Jobs of a task, as the original's ecalautomation.py waited for them: ecalstate's handlers do it.

    \b
    Instead of 'wait', in Jenkins stages:
        python HANDLER.py --db DB -c CAMPAIGN check       # reconcile the jobs, finish the task
        python HANDLER.py --db DB -c CAMPAIGN resubmit    # failed jobs, within the task's retries
        ecalstate --db DB job list -c CAMPAIGN --task TASK
    """
    ctx.obj = (Original(db, campaign), workflow)
    if ctx.invoked_subcommand is None:
        raise click.UsageError("give a command: wait", ctx)


@automation.command("wait", instead="python HANDLER.py --db DB -c CAMPAIGN check|resubmit")
@click.option("--resubcmd", metavar="CMD", help="The command that resubmitted failed jobs (never run here).")
@click.option("--howManyAttempts", "attempts", type=int, metavar="N", help="Resubmissions allowed.")
@click.option("-s", "s", metavar="S", help="The original's -s (taken, not used).")
@click.pass_obj
def wait(obj: tuple[Original, Optional[str]], resubcmd: Optional[str], attempts: Optional[int],
         s: Optional[str]) -> None:
    """Wait for a task's jobs, resubmitting failed ones: not here; names the stages that do it."""
    original, workflow = obj
    if original.db:
        resolve_dbname(original.db)  # an unknown database name is said first, as every command says it
    db = f" --db {original.db}" if original.db else ""
    campaign = original.campaign or "CAMPAIGN"
    task = workflow or "TASK"
    raise NotHonoured(
        f"wait is not available in ecalstate (jobs are never resubmitted behind the store's back): the task's "
        f"handler checks and resubmits them in Jenkins stages, 'python HANDLER.py{db} -c {campaign} check' then "
        f"'... resubmit', within the task's retries ('ecalstate --db DB task update -c {campaign} {task} "
        f"--max-retries {attempts if attempts is not None else 'N'}'); 'ecalstate --db DB job list -c {campaign} "
        f"--task {task}' shows its jobs")


def main(argv: Optional[Sequence[str]] = None) -> NoReturn:
    """The console script ``ecalautomation.py``."""
    main_of(automation, PROG, argv)
