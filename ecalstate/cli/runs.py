"""Runs and what happens to them: inject, list, the status overview, claims, history, health."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from collections.abc import Sequence
from typing import Any, Optional

import click

from ..claims import GROUPINGS
from ..clock import human_time
from ..filters import split_multi
from ..queries import COUNT_CAP, DEFAULT_KINDS, GAP_LABELS, GAP_LEGEND, HISTORY_KINDS
from ..report import cell_marks, health_sections, retry_note, totals_rows
from ..results import Health, Overview, RunSpec
from ..statemachine import JobStatus, TaskStatus
from .app import App, pass_app
from .fmt import colours_shown, echo_table, printable, styled, table
from .options import _runs as optional_runs
from .options import (
    campaign_option,
    multi_option,
    optional_campaign_option,
    request_id_option,
    runs_option,
    silent_after_option,
    stuck_after_option,
    task_option,
)
from .parse import INT64, INT64_FROM_1, KEY_VALUE, format_duration, pairs_to_dict, read_runs
from .progress import progress
from .when import MOMENT

TASK_STATUSES = [s.value for s in TaskStatus]
#: injections at least this long show a progress bar (on a terminal)
PROGRESS_FROM = 1000


@click.group()
def run() -> None:
    """Inject runs into a campaign and list them.

    \b
    Example:
        ecalstate run inject -c prompt --run 356001 --fill 8000 --meta class=Collisions
    """


@run.command("inject")
@campaign_option
@click.option("--run", "run_number", type=INT64, metavar="N", help="Run number (> 0).")
@click.option("--fill", type=INT64, metavar="F", help="LHC fill of --run.")
@click.option("--meta", type=KEY_VALUE, multiple=True, metavar="KEY=VALUE",
              help="Metadata of --run (values are JSON scalars when they parse, else text). Repeatable.")
@click.option("--file", "path", type=click.Path(dir_okay=False), metavar="FILE",
              help="runs.json (list of objects) or runs.csv (with a header): run_number, fill, other keys as metadata.")
@click.option("--from-campaign", "source", metavar="CAMPAIGN",
              help="Copy CAMPAIGN's runs (fills, metadata, the fills it knows ended); it is only read.")
@runs_option(help="With --from-campaign: only these runs, e.g. 356001-356100,356200 (default: all).")
@request_id_option
@pass_app
def run_inject(
    app: App, campaign: str, run_number: Optional[int], fill: Optional[int], meta: tuple[tuple[str, Any], ...],
    path: Optional[str], source: Optional[str], runs: Optional[list[int]], request_id: Optional[str],
) -> None:
    """Inject runs; every run type a run matches activates its tasks (status new).

    Runs already present are left as they are. A file is checked whole before
    anything is written: one bad record refuses the file, naming the record.
    --from-campaign copies another campaign's runs (a test campaign on
    production's runs; a run still being taken there waits for the next copy).

    \b
    Example:
        ecalstate run inject -c prompt --run 356001 --fill 8000 --meta class=Collisions --meta nevents=120000
        ecalstate run inject -c rereco-2024 --file runs.csv
        ecalstate run inject -c test-timing --from-campaign prompt --runs 390001-390100
    """
    if path is not None and (run_number is not None or fill is not None or meta):
        raise click.UsageError("--run, --fill and --meta go without --file; a file carries its own")
    if source is not None and (path is not None or run_number is not None or fill is not None or meta):
        raise click.UsageError("--run, --fill, --meta and --file go without --from-campaign; a campaign carries its"
                               " own runs")
    if runs is not None and source is None:
        raise click.UsageError("--runs goes with --from-campaign")
    if source is not None:
        result = app.store().copy_runs(campaign, source, runs)
        app.emit(result, f"copied {len(result.new)} new runs from campaign {source} ({result.instances} task"
                         f" instances); {len(result.existing)} already present")
        return
    if path is not None:
        specs = read_runs(path)
    elif run_number is not None:
        specs = [RunSpec(run_number, fill, pairs_to_dict(meta, "--meta"))]
    else:
        raise click.UsageError("give --run or --file, or --from-campaign CAMPAIGN")
    store = app.store()
    if len(specs) >= PROGRESS_FROM and sys.stderr.isatty():
        with click.progressbar(specs, label=f"checking {len(specs)} runs", file=sys.stderr) as bar:
            result = store.inject_runs(campaign, bar, request_id=request_id)
    else:
        result = store.inject_runs(campaign, specs, request_id=request_id)
    app.emit(result, f"injected {len(result.new)} new runs ({result.instances} task instances);"
                     f" {len(result.existing)} already present")


@run.command("sync")
@campaign_option
@click.option("--source", type=click.Choice(["oms", "file"]), required=True, help="Where the runs come from.")
@click.option("--path", type=click.Path(dir_okay=False), metavar="FILE",
              help="file: runs.json or runs.csv (ongoing=true, or a null end_time, marks a run still being taken).")
@click.option("--url", metavar="URL", help="oms: API base URL (default: env ECALSTATE_OMS_URL, else CERN's OMS). "
              "Credentials: env ECALSTATE_OMS_CLIENT_ID and ECALSTATE_OMS_CLIENT_SECRET_FILE.")
@click.option("--from-run", type=INT64_FROM_1, metavar="N", help="oms: read no run below N; required while the "
              "campaign has no cursor yet.")
@click.option("--mapping", type=click.Path(dir_okay=False), metavar="FILE",
              help="oms: JSON mapping of OMS attributes to run metadata (see docs/migration.md).")
@click.option("--max-runs", type=INT64_FROM_1, default=1000, show_default=True, metavar="N",
              help="oms: read at most N new runs per sync (the next sync goes on from there).")
@click.option("--timeout", type=click.FloatRange(1, 600), default=120.0, show_default=True,
              help="oms: seconds for the whole sync: every request (connect, redirects, the whole answer), retry "
              "and wait.")
@pass_app
def run_sync(
    app: App, campaign: str, source: str, path: Optional[str], url: Optional[str], from_run: Optional[int],
    mapping: Optional[str], max_runs: int, timeout: float,
) -> None:
    """Bring a campaign's runs up to date with a run source; safe to repeat.

    New runs are injected once. A run still being taken is recorded but
    activates no task until a later sync sees it ended (its metadata is then
    updated). Fills that ended (a later fill started, or OMS says the beam was
    dumped) are recorded for grouping by fill. A source that fails writes
    nothing; the cursor stays. A bad OMS row is skipped and named (a warning
    on stderr, "rejected" in --json); the cursor stays below a bad run, so it
    is read again until OMS fixes it.

    \b
    Example:
        export ECALSTATE_OMS_CLIENT_ID=ecal-automation ECALSTATE_OMS_CLIENT_SECRET_FILE=~/.oms-secret
        ecalstate run sync -c prompt --source oms --from-run 390000
        ecalstate run sync -c rereco-2024 --source file --path runs.csv
    """
    from ..sources.file import FileSource
    from ..sources.oms import oms_source
    from ..sources.sync import sync

    if (path is None) == (source == "file"):
        raise click.UsageError("--path goes with --source file, and only with it")
    if source == "file" and (url or from_run or mapping):
        raise click.UsageError("--url, --from-run and --mapping are for --source oms")
    runs = FileSource(read_runs(path)) if path is not None else oms_source(url, from_run, mapping, max_runs=max_runs,
                                                                           timeout=timeout)
    store = app.store()
    with progress(f"syncing the runs ({source})"):  # the source counts nothing: the bar says how long it takes
        result = sync(store, campaign, runs)
    for bad in result.rejected:
        click.echo(printable(f"warning: OMS {bad.resource} row {bad.number or '?'} skipped: {bad.reason}"), err=True)
    skipped = f"; {len(result.rejected)} bad OMS rows skipped" if result.rejected else ""
    app.emit(result, f"{source}: {len(result.new)} new runs, {len(result.ended)} ended since the last sync,"
                     f" {len(result.ongoing)} still ongoing, {len(result.existing)} already present;"
                     f" {result.instances} task instances; fills ended: "
                     f"{','.join(map(str, result.fills_ended)) or 'none'}; cursor at run {result.last_run}{skipped}")


@run.command("close-fill")
@campaign_option
@click.option("--fill", type=INT64, required=True, metavar="F", help="The LHC fill that ended.")
@click.option("--reason", required=True, metavar="TEXT", help="Why (recorded with your name).")
@pass_app
def run_close_fill(app: App, campaign: str, fill: int, reason: str) -> None:
    """Record that a fill ended, when no run source says so (the dump was missed).

    Grouping by fill waits for a fill to end before it treats the fill's runs
    as complete; closing a fill that is known to have ended changes nothing.

    \b
    Example:
        ecalstate run close-fill -c prompt --fill 9001 --reason "beam dumped at 03:10, OMS late"
    """
    closed = app.store().close_fill(campaign, fill, reason)
    app.emit({"fill": fill, "closed": closed},
             f"fill {fill} closed" if closed else f"fill {fill} was known to have ended already: nothing changed")


@run.command("list")
@campaign_option
@task_option(required=False, help="Show this task's status per run.")
@click.option("--status", type=click.Choice(TASK_STATUSES), help="Only runs whose --task has this status.")
@pass_app
def run_list(app: App, campaign: str, task: Optional[str], status: Optional[str]) -> None:
    """List the runs of a campaign, with a task's status when --task is given.

    \b
    Example:
        ecalstate run list -c prompt --task reco --status failed
    """
    if status is not None and task is None:
        raise click.UsageError("--status needs --task")
    runs = app.reader().list_runs(campaign, task, status)

    def text() -> None:
        headers = ["run", "fill", "run types"] + (["status", "generation"] if task else []) + ["metadata"]
        echo_table(headers, [
            [r["run_number"], r["fill"], ",".join(r["rtypes"]) or None]
            + ([styled(r["status"]), r["generation"]] if task else [])
            + [json.dumps(r["meta"], sort_keys=True) if r["meta"] else None]
            for r in runs
        ], "no runs")

    app.emit(runs, text)


@click.command()
@campaign_option
@multi_option("--task", "-t", help="Show only this task.", metavar="TASK")
@runs_option(help="Show only these runs, e.g. 356001-356100,356200.")
@stuck_after_option
@click.option("--watch", type=click.FloatRange(min=0.1), metavar="SECONDS",
              help="Redraw every SECONDS until Ctrl-C (a terminal view; not with --json).")
@pass_app
def status(app: App, campaign: str, task: list[str], runs: Optional[list[int]], stuck_after: float,
           watch: Optional[float]) -> None:
    """The run x task overview, with totals per task and status.

    A blocked instance (marked *) waits on an upstream task that failed for its
    run; a stuck one (marked !) is processing without job progress for
    --stuck-after. Colours show on a terminal only.

    \b
    Example:
        ecalstate status -c prompt
        ecalstate --json status -c prompt --task reco,calib --runs 356001-356100
        ecalstate status -c prompt --watch 10
    """
    if watch is None:
        view = app.reader().overview(campaign, task, runs, stuck_after)
        app.emit(overview_dict(view), lambda: click.echo(render_overview(view, stuck_after, colours_shown())))
        return
    if app.as_json:
        raise click.UsageError("--watch redraws a terminal view; scripts poll 'ecalstate --json status' instead")
    try:
        while True:
            view = app.reader().overview(campaign, task, runs, stuck_after)
            if colours_shown():
                click.clear()
            stamp = app.reader().clock()[:19].replace("T", " ") + " UTC"
            click.echo(f"--- {stamp}, every {format_duration(watch)}; Ctrl-C to stop ---")
            click.echo(render_overview(view, stuck_after, colours_shown()))
            time.sleep(watch)
    except KeyboardInterrupt:
        click.echo("")


def overview_dict(view: Overview) -> dict[str, Any]:
    """The overview for ``--json``: rows, totals per task and status, marks as objects."""
    return {
        "campaign": view.campaign,
        "tasks": view.tasks,
        "rows": [{"run_number": r.run_number, "fill": r.fill, "statuses": r.statuses} for r in view.rows],
        "totals": view.totals,
        "blocked": [{"task": t, "run_number": r} for t, r in view.blocked],
        "stuck": [{"task": t, "run_number": r} for t, r in view.stuck],
        "gaps": [{"run_number": r, "task": t, "kind": kind, "why": view.notes.get(r, "")}
                 for (t, r), kind in sorted(view.gaps.items(), key=lambda g: (g[0][1], g[0][0]))],
    }


def render_overview(view: Overview, stuck_after: float, colour: bool = False) -> str:
    """The matrix, then totals per status (rows) and task (columns), then the legend of marks."""
    if not view.rows or not view.tasks:
        return f"campaign {view.campaign}: {len(view.rows)} runs, {len(view.tasks)} tasks: nothing to show"
    run_w = max(len("run"), *(len(str(r.run_number)) for r in view.rows))
    fill_w = max(len("fill"), *(len(str(r.fill)) for r in view.rows))
    widths = [max(len(t), len("processing!")) for t in view.tasks]

    def cell(state: Optional[str], mark: str, width: int) -> str:
        text = "-" if state is None else state + mark
        return (styled(state, text) if colour and state else text) + " " * (width - len(text))

    gap_cells = [{kind: label.ljust(w) for kind, label in GAP_LABELS.items()} for w in widths]

    # 200,000 cells but few distinct ones: render each once, then look cells up by status
    plain = [{s: cell(s, "", w) for s in [None, *TASK_STATUSES]} for w in widths]
    marked: dict[int, dict[int, str]] = {}  # run -> column -> mark
    column = {t: i for i, t in enumerate(view.tasks)}
    for (task, run_number), sign in cell_marks(view).items():
        marked.setdefault(run_number, {})[column[task]] = sign
    lines = [f"campaign {view.campaign}: {len(view.rows)} runs x {len(view.tasks)} tasks", "",
             "  ".join(["run".ljust(run_w), "fill".ljust(fill_w)]
                       + [t.ljust(w) for t, w in zip(view.tasks, widths)]).rstrip()]
    for row in view.rows:
        statuses = row.statuses
        cells = [col[statuses.get(name)] for name, col in zip(view.tasks, plain)]
        for i, sign in marked.get(row.run_number, {}).items():
            cells[i] = cell(statuses.get(view.tasks[i]), sign, widths[i])
        note = view.notes.get(row.run_number)
        if note:
            cells = [gap_cells[i][view.gaps[(t, row.run_number)]] if (t, row.run_number) in view.gaps else c
                     for i, (t, c) in enumerate(zip(view.tasks, cells))] + [printable(note)]
        head = f"{str(row.run_number).ljust(run_w)}  {('-' if row.fill is None else str(row.fill)).ljust(fill_w)}  "
        lines.append((head + "  ".join(cells)).rstrip())
    lines += ["", table(["totals"] + view.tasks, totals_rows(view))]
    if view.blocked or view.stuck:
        lines += ["", (f"* blocked: an upstream task failed for the run;"
                       f" ! stuck: processing without job progress for {format_duration(stuck_after)}")]
    kinds = set(view.gaps.values())
    if kinds:
        lines += ["", "; ".join(f"{label}: {GAP_LEGEND[kind]}" for kind, label in GAP_LABELS.items() if kind in kinds)
                  + " (why: at the end of its row)"]
    return "\n".join(lines)


@click.command()
@campaign_option
@task_option()
@click.option("--limit", type=INT64_FROM_1, metavar="N", help="Claim at most N groups (default: all).")
@click.option("--group-by", type=click.Choice(GROUPINGS), default="run", show_default=True,
              help="fill: one group per ended fill; lumi: consecutive runs of a fill up to --lumi-target; era: one "
                   "group per ended era. The newest run leads, the others become merged.")
@click.option("--lumi-target", type=click.FloatRange(min=0, min_open=True), metavar="X",
              help="With --group-by lumi: the integrated luminosity (run metadata 'lumi') a group collects.")
@request_id_option
@pass_app
def claim(
    app: App, campaign: str, task: str, limit: Optional[int], group_by: str, lumi_target: Optional[float],
    request_id: Optional[str],
) -> None:
    """Claim eligible runs of a task for a submit stage.

    Eligible: new or reprocess, every upstream task done. One transaction:
    two builds claiming at once never get the same run. Each claim's leader
    run becomes processing (and owns the jobs of a new generation); runs
    grouped into it become merged. A group is claimed only complete: a fill
    once it ended (a later fill started, the source saw the dump, or run
    close-fill) and every run of it is done or skipped upstream (skipped
    runs are left out); a lumi group once its runs reach the target, or
    below it when its fill or era ended; an era once a run of a later era
    exists. Groups that wait are listed by a handler's submit --dry-run.

    \b
    Example:
        ecalstate --json claim -c prompt --task reco --limit 10
        ecalstate claim -c prompt --task calib --group-by fill
        ecalstate claim -c prompt --task zee-calib --group-by lumi --lumi-target 500
    """
    claims = app.store().claim(campaign, task, limit, group_by, request_id, lumi_target=lumi_target)
    app.emit(
        [{"task": c.task, "leader": c.run_number, "fill": c.fill, "generation": c.generation, "merged": c.merged,
          "runs": c.runs, "meta": c.meta} for c in claims],
        lambda: echo_table(["run", "fill", "generation", "merged"],
                           [(c.run_number, c.fill, c.generation, ",".join(map(str, c.merged)) or None) for c in claims],
                           f"nothing to claim for task {task}"),
    )


def _kinds(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> list[str]:
    kinds = split_multi(value)
    for kind in kinds:
        if kind not in HISTORY_KINDS:
            raise click.BadParameter(f"unknown kind {kind!r} (valid: {', '.join(HISTORY_KINDS)})")
    return kinds


@click.command()
@campaign_option
@task_option(required=False, help="Only this task's transitions.")
@click.option("--run", "--runs", "runs", metavar="SET", callback=optional_runs,
              help="Only these runs' transitions, e.g. 390016-390018,390020.")
@click.option("--kind", "kinds", multiple=True, callback=_kinds, metavar="KIND",
              help="Only these kinds of rows: task (instances), job, handler (the stages' heartbeats), attention "
                   "(what needed action, and when it cleared). Repeatable; comma lists accepted. Default: task and"
                   " job.")
@click.option("--entity", type=click.Choice(list(HISTORY_KINDS)), hidden=True, help="The old spelling of --kind.")
@click.option("--heartbeats", is_flag=True, help="Also show the handler stages' heartbeats (hidden by default).")
@click.option("--since", type=MOMENT, metavar="TIME", help="From this time: 8h (ago), 2d, or 2026-12-01T06:00 (UTC).")
@click.option("--until", type=MOMENT, metavar="TIME", help="Before this time (same forms as --since).")
@click.option("--actor", "by", metavar="NAME",
              help="Only what NAME did: the actor label, or the account of the identity (alice: alice@any-host).")
@click.option("--status",
              type=click.Choice(TASK_STATUSES + [s.value for s in JobStatus if s.value not in TASK_STATUSES]),
              help="Only transitions to this status.")
@click.option("--fields", is_flag=True,
              help="Also show field-only changes of jobs (status to the same status, e.g. a logs folder recorded).")
@click.option("--limit", type=INT64_FROM_1, default=50, show_default=True, metavar="N",
              help="Show the N most recent rows.")
@click.option("--all", "everything", is_flag=True, help="Show every matching row (no --limit).")
@pass_app
def history(
    app: App, campaign: str, task: Optional[str], runs: Optional[list[int]], kinds: list[str], entity: Optional[str],
    heartbeats: bool, since: Optional[str], until: Optional[str], by: Optional[str], status: Optional[str],
    fields: bool, limit: int, everything: bool,
) -> None:
    """The audit trail: who, when, from, to, why.

    Accepted transitions of task instances and jobs, oldest first; the
    handler stages' heartbeats only with --heartbeats (or --kind handler).
    A last line on stderr says how many rows matched and how to see those
    left out. "actor" is the label the caller chose (--actor, BUILD_TAG);
    "identity" is who it really was: the OS account at its host, the Jenkins
    build, and on PostgreSQL the database role the server authenticated.
    --json gives every row with "total", the number of rows that matched.

    \b
    Example:
        ecalstate history -c prompt --task reco --run 356001
        ecalstate history -c prompt --since 8h --status failed
        ecalstate history -c prompt --since 8h --kind job --all
        ecalstate history -c prompt --since 2026-12-01T06:00 --until 2026-12-01T14:00 --actor alice
    """
    chosen = kinds or ([entity] if entity else [])
    wanted = list(chosen or DEFAULT_KINDS) + (["handler"] if heartbeats and "handler" not in chosen else [])
    reader = app.reader()
    filters: dict[str, Any] = dict(runs=runs, since=since, until=until, actor=by, status=status,
                                   transitions_only=not fields)
    rows = reader.history(campaign, task, None, None if everything else limit, kinds=wanted, **filters)
    capped = not (everything or app.as_json)  # (a script gets the exact count)
    counts = reader.history_counts(campaign, task, cap=COUNT_CAP if capped else None, **filters)
    more = capped and sum(counts.values()) > COUNT_CAP  # only the newest rows were counted
    total = max(sum(counts[k] for k in wanted), len(rows) if more else 0)
    if app.as_json:
        app.emit([{**asdict(a), "total": total} for a in rows])
        return
    echo_table(["time", "actor", "identity", "entity", "task", "run", "job", "from", "to", "reason", "request"],
               [(a.ts, a.actor, a.identity or None, a.entity, a.task, a.run_number, a.jid, a.from_status,
                 styled(a.to_status), a.said or None, a.request_id) for a in rows], "no history")
    hidden = 0 if chosen or "handler" in wanted else counts["handler"]
    click.echo(history_footer(len(rows), total, "handler" in wanted, hidden, more), err=True)


def history_footer(shown: int, total: int, with_heartbeats: bool, hidden: int, more: bool = False) -> str:
    """What ``history`` showed of what matched, and how to see the rest: a cut list never looks whole. ``more``: the
    count stopped at :data:`COUNT_CAP` rows (``total`` and ``hidden`` are then at least)."""
    what = "rows" if with_heartbeats else "transitions"
    if shown < total or more:
        of = f"at least {min(total, COUNT_CAP)} (counting stops at {COUNT_CAP} rows)" if more else str(total)
        line = f"showing the last {shown} of {of} {what}; --limit N or --all for more, --since/--until for a time span"
    else:
        line = {0: f"no {what} match", 1: f"showing the only {what[:-1]}"}.get(total, f"showing all {total} {what}")
    if hidden:
        line += (f"; {'at least ' if more else ''}{hidden} heartbeat{'s' if hidden > 1 else ''} hidden"
                 " (--heartbeats shows them)")
    return line


@click.command()
@optional_campaign_option
@stuck_after_option
@silent_after_option
@click.option("--all", "everything", is_flag=True,
              help="Also list what waits as expected (info) and what progresses: every unfinished task instance.")
@pass_app
def health(app: App, campaign: Optional[str], stuck_after: float, silent_after: float, everything: bool) -> None:
    """Report what needs action: each waiting task instance with its command; exit 1 on any problem.

    Every task instance that is neither done nor skipped progresses, or waits
    for a named reason since a known time: an upstream task, its fill's end,
    the rest of its group, a late run of a group already processed, failed
    with no retry left, blocked by an upstream failure, stuck (no job
    progress), its group leader failed. Each reason has a policy (ecalstate
    campaign policies): how long it may last before it is a problem. Each
    problem is named with the exact command that resolves it; handler stages
    without a recent (successful) heartbeat are problems too.

    Exit code 1 when anything is a problem, so Jenkins or cron can alert. An
    instance whose jobs never started is judged by when it was claimed. Where
    a campaign's policy says so, health also closes a fill left open too long.
    --json adds "needs_action": every reason (code, level, since, command).

    \b
    Example:
        ecalstate health -c prompt --stuck-after 12h --silent-after 30m || notify-shifter
        ecalstate --json health -c prompt | jq '.needs_action[] | select(.level == "problem") | .command'
    """
    from ..attention import apply_policies, attention

    given = click.get_current_context().get_parameter_source("stuck_after") == click.core.ParameterSource.COMMANDLINE
    stuck = stuck_after if given else None

    def look(store: Any) -> Any:
        return attention(store, campaign, everything=everything, stuck_after=stuck, silent_after=silent_after)

    result = look(app.reader())
    done = []
    if result.actions:  # a policy acts: only then is the store opened for writing
        done = apply_policies(app.store(), result.actions)
        result = look(app.store())
    report = result.health
    app.emit({"ok": result.ok, **_health_dict(report), "needs_action": needs_action(result),
              "policies_acted": [a.reason for a in done]},
             lambda: click.echo(render_health(result, stuck_after, silent_after, [a.reason for a in done], everything)))
    if not result.ok:
        counts = result.counts()
        click.echo(f"unhealthy: {len(report.stuck)} stuck, {len(report.silent)} silent, {len(report.failing)} failing,"
                   f" {len(report.blocked)} blocked"
                   + (f", {len(report.unsubmitted)} unsubmitted" if report.unsubmitted else "")
                   + (f", {len(report.failed)} failed" if report.failed else "")
                   + f"; {_plural(counts['problem'], 'problem')}, {_plural(counts['warning'], 'warning')}", err=True)
        raise click.exceptions.Exit(1)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def needs_action(result: Any) -> list[dict[str, Any]]:
    """Every reason, worst first, as ``--json`` gives it."""
    return [{"campaign": i.campaign, "task": i.task, "run_number": i.run_number, "fill": i.fill, "status": i.status,
             **r.to_dict()} for i, r in result.reasons()]


def _health_dict(report: Health) -> dict[str, Any]:
    return {
        "stuck": [asdict(s) for s in report.stuck],
        "silent": [asdict(s) for s in report.silent],
        "failing": [asdict(s) for s in report.failing],
        "blocked": [{"campaign": c, "task": t, "run_number": r} for c, t, r in report.blocked],
        "unsubmitted": [asdict(s) for s in report.unsubmitted],
        "failed": [asdict(s) for s in report.failed],
        "retrying": [asdict(s) for s in report.retrying],
    }


def render_health(result: Any, stuck_after: float, silent_after: float, acted: Sequence[str] = (),
                  everything: bool = False) -> str:
    """What needs action, problems first, each with the command that resolves it; then the handler stages' sections;
    one line when all is well. Failed jobs waiting for a retry are counted apart (the next resubmit deals with
    them)."""
    report = result.health
    waiting = retry_note(report)
    out = [f"policy: {a}" for a in acted]
    shown = [(i, r) for i, r in result.reasons() if r.level != "info" or everything]
    if result.ok and not shown:
        return "\n".join(out + ["healthy: nothing stuck, silent, failing, blocked or failed"
                                + (f"; {waiting}" if waiting else "")])
    if not result.ok:
        out += [(f"stuck after {format_duration(stuck_after)} without job progress;"
                 f" silent after {format_duration(silent_after)} without a heartbeat"), ""]
    else:
        out += ["healthy: nothing is a problem" + (f"; {waiting}" if waiting else ""), ""]
    counts = result.counts()
    if shown:
        out.append(f"needs action: {_plural(counts['problem'], 'problem')}, {_plural(counts['warning'], 'warning')}"
                   + (f", {counts['info']} waiting as expected" if everything else ""))
        for item, reason in shown:
            out += [f"{reason.level:<8} {printable(reason.message)} [{reason.code}, since {human_time(reason.since)}]",
                    f"         $ {printable(reason.command)}"]
        out.append("")
    for title, headers, rows in health_sections(report):
        if title.startswith(("silent", "failing")):
            out += [f"{title}: {len(rows)}", table(headers, rows), ""]
    return "\n".join(out + ([waiting] if waiting and not result.ok else [])).rstrip()
