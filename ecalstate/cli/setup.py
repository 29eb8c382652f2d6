"""Setting a campaign up: schema, campaigns, tasks, run types."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional, TypeVar

import click

from ..catalog import check_name
from ..results import DEADLINE_FROM, LATE_RUNS, TaskInfo
from ..secrets import redact_url
from .app import App, pass_app
from .fmt import echo_table
from .options import campaign_option, multi_option
from .parse import DURATION, DURATION_OR_NEVER, INT64_FROM_0, KEY_VALUE, format_duration

#: an option not given (None is a value: "never")
UNSET: Any = "unset"

F = TypeVar("F", bound=Callable[..., Any])


def deadline_options(f: F) -> F:
    """The options of a task's deadline and cadence (``task add`` and ``task update``)."""
    for option in reversed([
        click.option("--deadline", type=DURATION, metavar="DURATION",
                     help="Done at most this long after its run (or fill) ended, e.g. 48h (0: none)."),
        click.option("--deadline-from", type=click.Choice(DEADLINE_FROM),
                     help="What the deadline counts from: the run's end (its end_time), or its fill's end (the beam"
                          " dump; for tasks grouped by fill). Default run-end."),
        click.option("--warn-before", type=DURATION, metavar="DURATION",
                     help="At risk this long before the deadline (default: a quarter of it)."),
        click.option("--cadence", type=DURATION, metavar="DURATION",
                     help="A done instance at least this often, e.g. 4d (0: none): each gap is flagged."),
    ]):
        f = option(f)
    return f


def kind_text(info: TaskInfo) -> Optional[str]:
    """How a task is claimed, when not as usual: ``in run order`` (ordered), ``gate: approved by an expert``."""
    return "in run order" if info.ordered else "gate: approved by an expert" if info.gate else None


def deadline_text(info: TaskInfo) -> Optional[str]:
    """``48h from fill-end, warn 12h before`` (None: no deadline)."""
    if info.deadline is None:
        return None
    return (f"{format_duration(info.deadline)} from {info.deadline_from}, warn "
            f"{format_duration(info.warn_before or 0)} before")


@click.command()
@pass_app
def init(app: App) -> None:
    """Create or upgrade the database schema. Idempotent.

    \b
    Example:
        ecalstate --db state.db init
    """
    store = app.store(create=True)
    url, version = redact_url(store.db.url), store.db.schema_version()  # a URL's password is never printed
    app.emit({"db": url, "schema_version": version}, f"database ready: {url} (schema {version})")


@click.group()
def campaign() -> None:
    """Create and list campaigns; their policies.

    \b
    Example:
        ecalstate campaign create prompt --kind prompt
    """


@campaign.command("create")
@click.argument("name")
@click.option("--kind", type=click.Choice(["prompt", "reprocessing"]), default="prompt", show_default=True,
              help="prompt: runs arrive as data is taken; reprocessing: injected all at once.")
@click.option("--description", default="", metavar="TEXT", help="Free text.")
@pass_app
def campaign_create(app: App, name: str, kind: str, description: str) -> None:
    """Create campaign NAME with its default run type `all`.

    The database is created when missing (as `ecalstate init` would), but
    only for a valid name.

    \b
    Example:
        ecalstate campaign create rereco-2024 --kind reprocessing --description "2024 rereco"
    """
    check_name("campaign", name)  # before the database file is created: a refusal writes nothing
    info = app.store(create=True).create_campaign(name, kind, description)
    app.emit(info, f"created campaign {info.name} ({info.kind})")


@campaign.command("list")
@pass_app
def campaign_list(app: App) -> None:
    """List every campaign.

    \b
    Example:
        ecalstate campaign list
    """
    campaigns = app.reader().list_campaigns()
    app.emit(campaigns, lambda: echo_table(
        ["name", "kind", "created", "description"],
        [(c.name, c.kind, c.created_at, c.description) for c in campaigns], "no campaigns"))


@campaign.command("update")
@campaign_option
@click.option("--flag-open-fills-after", type=DURATION_OR_NEVER, metavar="DURATION|never",
              help="A fill not ended this long after its last run ended is a problem (default 6h).")
@click.option("--close-fills-after", type=DURATION_OR_NEVER, metavar="DURATION|never",
              help="Close such a fill, as ecalstate, this long after its last run ended (default never).")
@click.option("--late-runs", type=click.Choice(LATE_RUNS), help="A run that comes after its fill was processed: "
              "flag it (a problem naming the command), or regroup the fill at once (reprocessed with the run in it).")
@click.option("--task", "late_task", metavar="TASK", help="--late-runs for this task only.")
@click.option("--problem-after", "after", type=KEY_VALUE, multiple=True, metavar="CODE=DURATION|never",
              help="After how long a reason is a problem (codes: ecalstate campaign policies). Repeatable.")
@pass_app
def campaign_update(app: App, campaign: str, flag_open_fills_after: Any, close_fills_after: Any,
                    late_runs: Optional[str], late_task: Optional[str], after: tuple[tuple[str, Any], ...]) -> None:
    """Change a campaign's policies: how long each waiting reason may last.

    Every task instance that is neither done nor skipped progresses, or waits
    for a named reason (ecalstate health lists them with the command that
    resolves each); a reason becomes a problem after its policy's time. The
    policies that act: closing fills left open (audited, actor ecalstate)
    and regrouping a fill when a late run comes (the fill's group is
    reprocessed with the run in it, audited with the reason), done by the
    next submit stage or health that sees it.

    \b
    Example:
        ecalstate campaign update -c prompt --flag-open-fills-after 6h --close-fills-after 24h
        ecalstate campaign update -c prompt --late-runs regroup --task phisym-calib
        ecalstate campaign update -c prompt --problem-after group-incomplete=4h --problem-after upstream=2d
    """
    from ..attention import KEEP, set_policies

    given = click.get_current_context().get_parameter_source
    if given("flag_open_fills_after") != click.core.ParameterSource.COMMANDLINE:
        flag_open_fills_after = UNSET
    if given("close_fills_after") != click.core.ParameterSource.COMMANDLINE:
        close_fills_after = UNSET
    times: dict[str, Optional[float]] = {}
    for code, value in after:
        times[code] = DURATION_OR_NEVER.convert(str(value), None, None)
    if flag_open_fills_after is not UNSET:
        times["fill-open"] = flag_open_fills_after
    if late_task is not None and late_runs is None:
        raise click.UsageError("--task goes with --late-runs")
    if not times and close_fills_after is UNSET and late_runs is None:
        raise click.UsageError("nothing to change: give a policy (see --help); ecalstate campaign policies shows them")
    result = set_policies(app.store(), campaign, times or None,
                          KEEP if close_fills_after is UNSET else close_fills_after, late_runs, late_task)
    emit_policies(app, campaign, result)


@campaign.command("policies")
@campaign_option
@pass_app
def campaign_policies(app: App, campaign: str) -> None:
    """A campaign's policies: each waiting reason, its level, after how long it is a problem, and its command.

    \b
    Example:
        ecalstate campaign policies -c prompt
    """
    from ..attention import policies

    emit_policies(app, campaign, policies(app.reader(), campaign))


def emit_policies(app: App, campaign: str, result: Any) -> None:
    late = ", ".join(f"{t}: {m}" for t, m in sorted(result.late_runs_by_task.items()))
    close = "never" if result.close_fills_after is None else f"after {format_duration(result.close_fills_after)}"

    def text() -> None:
        click.echo(f"campaign {campaign}: fills left open closed by ecalstate: {close}; late runs: {result.late_runs}"
                   + (f" ({late})" if late else ""))
        echo_table(["reason", "level", "problem after", "resolved by"],
                   [(code, level, "never" if after is None else format_duration(after), command)
                    for code, level, after, command in result.effective()], "")

    app.emit({"campaign": campaign, **result.to_dict(),
              "reasons": [{"code": c, "level": lv, "problem_after": a, "command": cmd}
                          for c, lv, a, cmd in result.effective()]}, text)


@click.group()
def task() -> None:
    """Declare tasks, their dependencies and retry limits.

    \b
    Example:
        ecalstate task add -c prompt calib --depends-on reco --max-retries 2
    """


@task.command("add")
@campaign_option
@click.argument("name")
@multi_option("--depends-on", help="Task this one waits for (must exist).", metavar="TASK")
@click.option("--max-retries", type=INT64_FROM_0, default=3, show_default=True,
              help="Resubmissions allowed for a failed job.")
@click.option("--inputs-from", metavar="CAMPAIGN",
              help="The --depends-on tasks are CAMPAIGN's: a test campaign's task on production's inputs (read only).")
@deadline_options
@click.option("--ordered", is_flag=True, help="Claim its instances strictly in run order, one run (or group) in flight"
              " at a time; a run waits until every earlier one is done or skipped (a conditions upload).")
@click.option("--gate", is_flag=True, help="A manual gate: no jobs; an expert approves or rejects its instances"
              " (ecalstate approve|reject); never claimed by a handler.")
@pass_app
def task_add(app: App, campaign: str, name: str, depends_on: list[str], max_retries: int, inputs_from: Optional[str],
             deadline: Optional[float], deadline_from: Optional[str], warn_before: Optional[float],
             cadence: Optional[float], ordered: bool, gate: bool) -> None:
    """Declare task NAME in a campaign.

    A task runs on a run once every task it depends on is done for that run.
    With --inputs-from, those tasks are another campaign's: the instance of
    run R waits until they are done there for R, and a workflow's outputs()
    reads their outputs there; nothing of that campaign is written (copy its
    runs with `ecalstate run inject --from-campaign`; docs/workflows.md).
    Activate it for runs with `ecalstate rtype update --add`. With a deadline,
    claims take what can still make its deadline first, earliest first, then
    what already missed it, then runs without an end time (a policy: Tier-0
    has gone past the missed runs, it still waits for the others); HTCondor
    jobs get a priority from it (docs/htcondor.md), and `ecalstate latency`
    reports it.

    \b
    Example:
        ecalstate task add -c prompt reco --max-retries 3
        ecalstate task add -c prompt calib --depends-on reco --deadline 48h --deadline-from fill-end --warn-before 12h
        ecalstate task add -c prompt trigger-calib --cadence 4d
        ecalstate task add -c test-timing timing --depends-on phisym-reco --inputs-from prompt
        ecalstate task add -c prompt phisym-upload --depends-on phisym-validate --ordered
        ecalstate task add -c prompt signoff --depends-on phisym-calib --gate
    """
    info = app.store().add_task(campaign, name, depends_on, max_retries, deadline, deadline_from, warn_before,
                                cadence, inputs_from, ordered, gate)
    extra = [f"depends on {', '.join(depends_text(info))}"] if info.depends_on else []
    extra += [f"claimed {kind_text(info)}" if info.ordered else str(kind_text(info))] if kind_text(info) else []
    extra += [f"deadline {deadline_text(info)}"] if info.deadline else []
    extra += [f"cadence {format_duration(info.cadence)}"] if info.cadence else []
    app.emit(info, f"added task {info.name}" + (f" ({'; '.join(extra)})" if extra else ""))


@task.command("update")
@campaign_option
@click.argument("name")
@multi_option("--depends-on", help="Replace the dependencies with these tasks.", metavar="TASK")
@click.option("--no-depends", is_flag=True, help="Remove every dependency.")
@click.option("--max-retries", type=INT64_FROM_0, help="New retry limit.")
@deadline_options
@click.option("--ordered/--not-ordered", default=None, help="Claimed strictly in run order, or not (see task add).")
@click.option("--gate/--not-gate", default=None, help="A manual gate approved by an expert, or not (see task add).")
@pass_app
def task_update(
    app: App, campaign: str, name: str, depends_on: list[str], no_depends: bool, max_retries: Optional[int],
    deadline: Optional[float], deadline_from: Optional[str], warn_before: Optional[float], cadence: Optional[float],
    ordered: Optional[bool], gate: Optional[bool],
) -> None:
    """Change the dependencies, retry limit, deadline or cadence of task NAME; cycles are refused.

    \b
    Example:
        ecalstate task update -c prompt calib --depends-on reco,ped --max-retries 5
        ecalstate task update -c prompt calib --deadline 48h --deadline-from fill-end --warn-before 12h
        ecalstate task update -c prompt calib --deadline 0          # no deadline any more
    """
    if no_depends and depends_on:
        raise click.UsageError("--no-depends and --depends-on exclude each other")
    deps = [] if no_depends else (depends_on or None)
    if deps is None and (max_retries, deadline, deadline_from, warn_before, cadence, ordered, gate) == (None,) * 7:
        raise click.UsageError("nothing to change: give --depends-on, --no-depends, --max-retries, --deadline,"
                               " --deadline-from, --warn-before, --cadence, --ordered/--not-ordered or"
                               " --gate/--not-gate")
    info = app.store().update_task(campaign, name, deps, max_retries, deadline, deadline_from, warn_before, cadence,
                                   ordered, gate)
    app.emit(info, f"updated task {info.name}: depends on {', '.join(depends_text(info)) or 'nothing'}, "
                   f"max retries {info.max_retries}, deadline {deadline_text(info) or 'none'}, cadence "
                   f"{format_duration(info.cadence) if info.cadence else 'none'}"
                   + (f", {kind_text(info)}" if kind_text(info) else ""))


@task.command("list")
@campaign_option
@pass_app
def task_list(app: App, campaign: str) -> None:
    """List the tasks of a campaign with their dependencies, deadlines, cadences and how they are claimed.

    \b
    Example:
        ecalstate task list -c prompt
    """
    tasks = app.reader().list_tasks(campaign)
    kinds = any(kind_text(t) for t in tasks)  # the column only when a task is claimed otherwise than usual
    app.emit(tasks, lambda: echo_table(
        ["task", "depends on", "max retries", "deadline", "cadence"] + ["claimed"] * kinds,
        [(t.name, ",".join(depends_text(t)) or None, t.max_retries, deadline_text(t),
          format_duration(t.cadence) if t.cadence else None) + (kind_text(t),) * kinds for t in tasks], "no tasks"))


def depends_text(info: TaskInfo) -> list[str]:
    """A task's dependencies as listed: another campaign's named with it (``prompt/phisym-reco``)."""
    return [f"{info.inputs_from}/{d}" if info.inputs_from else d for d in info.depends_on]


@click.group()
def rtype() -> None:
    """Run types: filters on run metadata that activate tasks.

    \b
    Example:
        ecalstate rtype create -c prompt collisions --filter "class=Collisions,nevents>=1000"
    """


@rtype.command("create")
@campaign_option
@click.argument("name")
@click.option("--filter", "expr", default="", metavar="EXPR",
              help="Clauses KEY OP VALUE joined by commas (AND); OP is = != >= <= > <. > >= < <= with a number "
                   "match numbers only (a run whose value is text fails); with text they compare text. Empty: every "
                   "run.")
@multi_option("--task", "-t", help="Task this run type activates.", metavar="TASK")
@pass_app
def rtype_create(app: App, campaign: str, name: str, expr: str, task: list[str]) -> None:
    """Create run type NAME; runs injected later that match it get its tasks.

    \b
    Example:
        ecalstate rtype create -c prompt cosmics --filter "class=Cosmics" --task reco
    """
    info = app.store().create_rtype(campaign, name, expr, task)
    app.emit(info, f"created run type {info.name} (filter {info.filter or '(every run)'};"
                   f" tasks {', '.join(info.tasks) or 'none'})")


@rtype.command("update")
@campaign_option
@click.argument("name")
@multi_option("--add", help="Task to activate.", metavar="TASK")
@multi_option("--remove", help="Task to deactivate (existing instances stay).", metavar="TASK")
@click.option("--filter", "expr", default=None, metavar="EXPR", help="Replace the filter.")
@click.option("--backfill", is_flag=True, help="Also create instances for matching runs already injected.")
@pass_app
def rtype_update(
    app: App, campaign: str, name: str, add: list[str], remove: list[str], expr: Optional[str], backfill: bool
) -> None:
    """Change the tasks or filter of run type NAME.

    Without --backfill the change applies to runs injected later.

    \b
    Example:
        ecalstate rtype update -c prompt all --add reco,calib --backfill
    """
    result = app.store().update_rtype(campaign, name, add, remove, backfill, expr)
    app.emit(result, f"updated run type {result.rtype}: added {', '.join(result.added) or 'none'}, "
                     f"removed {', '.join(result.removed) or 'none'}; {result.instances} instances created")


@rtype.command("list")
@campaign_option
@pass_app
def rtype_list(app: App, campaign: str) -> None:
    """List the run types of a campaign with their filters and tasks.

    \b
    Example:
        ecalstate rtype list -c prompt
    """
    rtypes = app.reader().list_rtypes(campaign)
    app.emit(rtypes, lambda: echo_table(
        ["run type", "filter", "tasks"], [(r.name, r.filter or None, ",".join(r.tasks) or None) for r in rtypes],
        "no run types"))
