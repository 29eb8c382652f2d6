"""What operators do by hand: set a status, reprocess; what experts do: approve or reject a gate's instances.
Validated, audited, all or nothing."""

from __future__ import annotations

from typing import Optional

import click

from ..results import BulkResult
from ..statemachine import OPERATOR_TARGETS
from .app import App, pass_app
from .fmt import printable, styled
from .parse import INT64_FROM_0
from .options import (
    campaign_option,
    dry_run_option,
    reason_option,
    request_id_option,
    runs_option,
    task_option,
)


@click.command("set")
@campaign_option
@task_option()
@runs_option(required=True)
@click.argument("status", type=click.Choice([s.value for s in OPERATOR_TARGETS]), metavar="STATUS")
@reason_option
@dry_run_option
@request_id_option
@pass_app
def set_status(
    app: App, campaign: str, task: str, runs: list[int], status: str, reason: str, dry_run: bool,
    request_id: Optional[str],
) -> None:
    """Set the STATUS (done, failed, reprocess or skipped) of a task for a set of runs.

    Every change goes through the transition table. One refused transition refuses the whole request and nothing is
    written; --dry-run prints the plan with per-outcome counts. Setting reprocess also
    reprocesses the runs merged into a reprocessed leader.

    skipped (from new, reprocess or failed; the reason is kept) means nothing
    to do: the tasks that depend on this one skip the run too and health
    stays green. "set ... reprocess" undoes it.

    \b
    Example:
        ecalstate set -c prompt --task reco --runs 356001-356010 failed --reason "bad calibration input" --dry-run
        ecalstate set -c prompt --task reco --runs 356042 skipped --reason "ECAL not in the run"
    """
    result = app.store().set_status(campaign, task, runs, status, reason, dry_run, request_id)
    emit_bulk(app, result)


@click.command()
@campaign_option
@task_option()
@runs_option(help="Reprocess these runs, e.g. 356001-356100,356200.")
@click.option("--fill", type=INT64_FROM_0, metavar="F", help="Reprocess the task's groups of this LHC fill (every run "
              "of it processed for the task): the next claim groups the fill again, with its runs not processed yet.")
@click.option("--failed", is_flag=True, help="Reprocess every failed run of the task.")
@click.option("--version-not", metavar="VERSION",
              help="Only the done or failed runs whose results another version of the workflow made (or none "
                   "recorded): every such run of the task, or of --runs / --failed.")
@click.option("--downstream", is_flag=True, help="Also reprocess the tasks that depend on this one, for the same runs.")
@reason_option
@dry_run_option
@request_id_option
@pass_app
def reprocess(
    app: App, campaign: str, task: str, runs: Optional[list[int]], fill: Optional[int], failed: bool,
    version_not: Optional[str],
    downstream: bool, reason: str, dry_run: bool, request_id: Optional[str],
) -> None:
    """Mark runs of a task for reprocessing.

    The next claim opens a new job generation; history is kept. Runs merged into a reprocessed leader follow it; with
    --downstream the dependent tasks follow too (those not processed yet stay). A skipped run brought back brings
    back what its skip cascaded to. --fill takes in a late run: the fill's groups are made again with it.

    --version-not VERSION takes the runs whose current results were made by
    another version of the task's handler (its "version", recorded with each
    claim) or by none recorded; the others are listed as unchanged.

    \b
    Example:
        ecalstate reprocess -c prompt --task reco --failed --downstream --reason "fixed GT" --dry-run
        ecalstate reprocess -c prompt --task calib --runs 356001-356050 --reason "new tag"
        ecalstate reprocess -c prompt --task phisym-calib --fill 9301 --downstream --reason "late run 390112"
        ecalstate reprocess -c prompt --task calib --version-not 2.1 --downstream --reason "calib 2.1" --dry-run
    """
    if runs is None and not failed and fill is None and version_not is None:
        raise click.UsageError("give --runs, --fill, --failed or --version-not")
    result = app.store().reprocess(campaign, task, runs, failed, downstream, reason, dry_run, request_id, fill=fill,
                                   version_not=version_not)
    if fill is not None and not result.changes:
        raise click.ClickException(f"nothing to reprocess: task {task} has no instance processed for fill {fill}")
    emit_bulk(app, result)


def _gate_command(verb: str, summary: str, example: str) -> click.Command:
    """``approve`` or ``reject``: the same options, one store call each."""

    @campaign_option
    @task_option(help="The gate task.")
    @runs_option(required=True, help="The runs decided, e.g. 380001-380003.")
    @reason_option
    @dry_run_option
    @request_id_option
    @pass_app
    def command(app: App, campaign: str, task: str, runs: list[int], reason: str, dry_run: bool,
                request_id: Optional[str]) -> None:
        store = app.store()
        decide = store.approve if verb == "approve" else store.reject
        emit_bulk(app, decide(campaign, task, runs, reason, dry_run, request_id))

    blocked = (" The tasks that depend on the gate are blocked for a rejected run until the gate is reprocessed"
               " (ecalstate reprocess) and approved." if verb == "reject" else "")
    command.__doc__ = f"""{summary}

    A gate is a task without jobs (`task add --gate`): its instance for a run
    awaits an expert's approval once every task it depends on is done for the
    run (`ecalstate health` lists them with this command). Each decided run
    moves new -> processing -> {"done" if verb == "approve" else "failed"}, audited with the reason under
    the actor (--actor, ECALSTATE_ACTOR, else user@host). All or nothing: a
    run not awaiting approval refuses the request and nothing is written.{blocked}

    \b
    Example:
        {example}
    """
    return click.command(verb)(command)


approve = _gate_command(
    "approve", "Approve a gate task's instances for a set of runs, with a reason (an expert's act).",
    'ecalstate approve -c prompt --task phisym-signoff --runs 380001-380003 --reason "maps look fine"')
reject = _gate_command(
    "reject", "Reject a gate task's instances for a set of runs, with a reason (an expert's act).",
    'ecalstate reject -c prompt --task phisym-signoff --runs 380005 --reason "ieta 17 off by 30%"')


def emit_bulk(app: App, result: BulkResult) -> None:
    """Every change with its outcome, then the counts; a dry run with refusals exits 1."""
    verb = "would change" if result.dry_run else "changed"

    def text() -> None:
        if result.dry_run:
            click.echo("dry run: nothing written")
        width = max([len(c.key) for c in result.changes] + [0])
        for c in result.changes:
            outcome = verb if c.outcome == "changed" else c.outcome
            move = (f"stays {printable(c.current or '-')}" if c.outcome == "unchanged"
                    else f"{printable(c.current or '-')} -> {styled(c.requested)}")
            click.echo(f"{outcome:<12}  {printable(c.key):<{width}}  {move}"
                       + (f"  ({printable(c.reason)})" if c.reason else ""))
        click.echo(f"{verb} {result.changed}, unchanged {result.unchanged}, refused {len(result.refused)}")

    app.emit(result, text)
    if result.dry_run and result.refused:
        click.echo(f"dry run: {len(result.refused)} of {len(result.changes)} transitions would be refused;"
                   " the real run would write nothing", err=True)
        raise click.exceptions.Exit(1)
