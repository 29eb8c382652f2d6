"""Batch jobs of task instances: create, list, set a status with result fields."""

from __future__ import annotations

import json
from typing import Any, Optional

import click

from ..limits import MAX_JOBS_PER_CALL
from ..statemachine import JobStatus
from .app import App, pass_app
from .fmt import echo_table, printable, printable_lines, styled
from .options import campaign_option, request_id_option, runs_option, task_option
from .parse import INT64, INT64_FROM_0, KEY_VALUE, pairs_to_dict

JOB_STATUSES = [s.value for s in JobStatus]


@click.group()
def job() -> None:
    """Batch jobs of a task instance (one claimed run of a task).

    \b
    Example:
        ecalstate job list -c prompt --task reco --run 356001
    """


@job.command("create")
@campaign_option
@task_option()
@click.option("--run", "run_number", type=INT64, required=True, metavar="N", help="The claimed (processing) run.")
@click.option("--count", type=click.IntRange(1, MAX_JOBS_PER_CALL), required=True, metavar="N",
              help=f"How many jobs (at most {MAX_JOBS_PER_CALL:,} per call).")
@click.option("--first", type=INT64_FROM_0, default=0, show_default=True, metavar="ID",
              help="Id of the first job; the others follow.")
@request_id_option
@pass_app
def job_create(
    app: App, campaign: str, task: str, run_number: int, count: int, first: int, request_id: Optional[str]
) -> None:
    """Create idle jobs in the current generation of a processing run.

    Handlers do this through the library; the command serves shell-driven
    workflows and demos.

    \b
    Example:
        ecalstate job create -c prompt --task reco --run 356001 --count 10
    """
    jids = list(range(first, first + count))
    app.store().create_jobs(campaign, task, run_number, jids, request_id=request_id)
    app.emit({"created": jids}, f"created jobs {first}-{jids[-1]} for {task} run {run_number}")


@job.command("list")
@campaign_option
@task_option()
@click.option("--run", "run_number", type=INT64, metavar="N", help="Only this run's jobs.")
@click.option("--status", type=click.Choice(JOB_STATUSES), help="Only jobs with this status.")
@click.option("--all-generations", is_flag=True, help="Include the jobs of earlier generations.")
@pass_app
def job_list(
    app: App, campaign: str, task: str, run_number: Optional[int], status: Optional[str], all_generations: bool
) -> None:
    """List the jobs of a task (current generation unless --all-generations).

    \b
    Example:
        ecalstate job list -c prompt --task reco --status failed
    """
    store = app.reader()
    owner = None if run_number is None else store.jobs_run(campaign, task, run_number)
    jobs = store.list_jobs(campaign, task, owner, status, all_generations)
    merged_note(run_number, owner)
    app.emit(jobs, lambda: echo_table(
        ["run", "job", "generation", "status", "attempts", "batch id", "started", "updated", "fields"],
        [(j.run_number, j.jid, j.generation, styled(j.status), j.attempts,
          j.batch_id or ("not submitted yet" if j.status == "idle" else None), j.started, j.updated_at,
          json.dumps(j.fields, sort_keys=True) if j.fields else None) for j in jobs],
        "no jobs"))


@job.command("set")
@campaign_option
@task_option()
@click.option("--run", "run_number", type=INT64, required=True, metavar="N", help="Run of the job.")
@click.option("--job", "jid", type=INT64, required=True, metavar="ID", help="Job id within the run.")
@click.argument("status", type=click.Choice(JOB_STATUSES), metavar="STATUS")
@click.option("--field", "fields", type=KEY_VALUE, multiple=True, metavar="KEY=VALUE",
              help="Result field (output path, plot URL, number); JSON scalars when they parse, else text. Repeatable.")
@click.option("--batch-id", metavar="ID", help="Batch system id, e.g. an HTCondor cluster.proc.")
@click.option("--generation", type=INT64_FROM_0, metavar="G", help="Job generation (default: current).")
@click.option("--reason", default="", metavar="TEXT", help="Why (kept in the audit).")
@request_id_option
@pass_app
def job_set(
    app: App, campaign: str, task: str, run_number: int, jid: int, status: str, fields: tuple[tuple[str, Any], ...],
    batch_id: Optional[str], generation: Optional[int], reason: str, request_id: Optional[str],
) -> None:
    """Set the STATUS (idle, running, done or failed) of one job.

    The change is validated by the job table and the retry limit (failed ->
    idle only while attempts <= the task's max retries).

    When the change decides its task instance (all jobs done, or one failed
    beyond its retries) the instance completes in the same transaction.

    \b
    Example:
        ecalstate job set -c prompt --task reco --run 356001 --job 3 done --field output=/eos/reco_3.root --field nevents=5000
    """
    change = app.store().set_job_status(campaign, task, run_number, jid, status,
                                        pairs_to_dict(fields, "--field") or None, batch_id, reason, generation,
                                        request_id)
    app.emit(change, f"{change.outcome}: {change.key}: {change.current} -> {styled(change.requested)}")


@job.command("logs")
@campaign_option
@task_option()
@click.option("--run", "run_number", type=INT64, required=True, metavar="N", help="Run of the jobs.")
@click.option("--job", "jid", type=INT64_FROM_0, metavar="ID", help="Only this job (default: every job of the run).")
@click.option("--attempt", type=click.IntRange(min=1), metavar="N", help="This attempt (default: the latest).")
@click.option("--stderr", "stream", flag_value="stderr", default="stdout", help="Show stderr instead of stdout.")
@click.option("--tail", "lines", type=click.IntRange(min=0), metavar="N", help="Only the last N lines.")
@pass_app
def job_logs(app: App, campaign: str, task: str, run_number: int, jid: Optional[int], attempt: Optional[int],
             stream: str, lines: Optional[int]) -> None:
    """Show the stdout (or stderr) of a run's jobs, latest attempt unless --attempt.

    Read from the attempt folder each job recorded (its "logs" field); at most
    the last 64 KiB of each file. Control characters a job printed are shown
    escaped, never sent to the terminal.

    \b
    Example:
        ecalstate job logs -c prompt --task phisym-reco --run 390016 --job 2 --stderr --tail 20
    """
    from ..logs import job_logs as read_logs

    found = read_logs(app.reader(), campaign, task, run_number, jid, attempt, stream, lines)
    merged_note(run_number, found[0].run_number)

    def text() -> None:
        for log in found:
            state = f" ({printable(log.note)})" if log.note else "" if log.exists else " (not written yet)"
            cut = " (older lines left out)" if log.truncated else ""
            click.echo(f"==> run {log.run_number} job {log.jid} attempt {log.attempt} {log.stream}: "
                       f"{printable(log.path)}{state}{cut} <==")
            if log.text:
                click.echo(printable_lines(log.text.rstrip("\n")))

    app.emit(found, text)


def merged_note(run: Optional[int], owner: Optional[int]) -> None:
    """Say on stderr that a merged run's jobs are its group leader's (they are shown instead)."""
    if run is not None and owner is not None and owner != run:
        click.echo(f"run {run} is merged into run {owner}: its group's jobs are run {owner}'s", err=True)


@click.command("outputs")
@campaign_option
@task_option()
@runs_option(help="Only these runs, e.g. 356001-356100,356200 (default: every run of the task).")
@pass_app
def outputs(app: App, campaign: str, task: str, runs: Optional[list[int]]) -> None:
    """Each run's current outputs of a task, and the version that made them.

    One line per output file or plot (the jobs' "output" and "plots"
    fields); a run merged into a group shows its leader's ("from"). "gen"
    is the generation whose jobs made them (a run being reprocessed shows
    what its last done generation gave until the new one is done), "made by"
    the workflow's version and configuration its claim recorded. --json
    gives one object per run with its outputs as lists.

    \b
    Example:
        ecalstate outputs -c prompt --task phisym-plots
        ecalstate --json outputs -c prompt --task phisym-calib --runs 380001-380009
    """
    found = app.reader().outputs(campaign, task, runs)
    rows: list[tuple[Any, ...]] = []
    for o in found:
        head = (o.run_number, styled(o.status), o.from_run, o.generation, None if o.made_by is None else str(o.made_by))
        rows += [(*head, kind, path) for kind, path in o.paths()] or [(*head, None, None)]
    headers = ["run", "status", "from", "gen", "made by", "kind", "path"]
    app.emit([o.to_dict() for o in found],
             lambda: echo_table(headers, rows, f"no task instance of {task} for these runs"))
