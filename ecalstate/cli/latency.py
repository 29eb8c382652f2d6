"""How late a campaign's tasks were done against their deadlines: ``ecalstate latency``."""

from __future__ import annotations

from typing import Optional

import click

from ..clock import human_time
from ..latency import GROUPINGS, latency_table
from .app import App, pass_app
from .fmt import echo_table
from .options import campaign_option, task_option
from .when import MOMENT


def span(seconds: Optional[float]) -> Optional[str]:
    """A latency for people, to the minute: ``3d04h``, ``5h12m``, ``45m``, ``20s`` (a negative one: ``-5m``)."""
    if seconds is None:
        return None
    sign, value = ("-" if seconds < 0 else ""), abs(seconds)
    if value < 60:
        return f"{sign}{value:.0f}s"
    minutes = int(value // 60)
    days, hours, mins = minutes // 1440, minutes // 60 % 24, minutes % 60
    if days:
        return f"{sign}{days}d{hours:02d}h"
    return f"{sign}{hours}h{mins:02d}m" if hours else f"{sign}{mins}m"


def percent(share: Optional[float]) -> Optional[str]:
    return None if share is None else f"{100 * share:.0f}%"


@click.command()
@campaign_option
@task_option(required=False, help="Only this task (default: every task with a deadline).")
@click.option("--since", type=MOMENT, metavar="WHEN",
              help="Instances first done since then: a duration ago (30d) or a UTC date/time (default: all).")
@click.option("--by", type=click.Choice(GROUPINGS), default="task", show_default=True,
              help="One row per task, or per task and week (InfluxDB's weeks: from Thursdays, as Grafana's).")
@click.option("--instances", is_flag=True,
              help="One row per instance instead: its reference, deadline, first done time, latency and state"
                   " (on-time, at-risk, missed, done, done-late, no-end-time, and why).")
@pass_app
def latency(app: App, campaign: str, task: Optional[str], since: Optional[str], by: str, instances: bool) -> None:
    """Latency of tasks against their deadlines: p50, p95, max, share within.

    The latency of an instance is how long after its run (or fill) ended it
    was first done. Per task with a deadline (`task update --deadline 48h`):
    instances first done (a group counts once), their latency's p50, p95 and
    max, the share done by the deadline, and the instances still open past it.
    The same numbers as the Grafana panel computes from the export.

    \b
    Example:
        ecalstate latency -c prompt --since 30d
        ecalstate --json latency -c prompt --task phisym-calib --by week
        ecalstate latency -c prompt --task phisym-calib --instances
    """
    if instances:
        found = app.reader().deadlines(campaign, task, since=since)
        app.emit(found, lambda: echo_table(
            ["task", "run", "status", "counts from", "deadline", "done", "latency", "state"],
            [(d.task, d.run_number, d.status + (f" (in {d.leader_run})" if d.leader_run else ""),
              f"{d.reference_kind} {human_time(d.reference)}" if d.reference else None, human_time(d.deadline),
              human_time(d.done_at), span(d.latency_s), d.state + (f": {d.why}" if d.why else ""))
             for d in found], "no instance of a task with a deadline"))
        return
    rows = latency_table(app.reader(), campaign, task, since, by)
    headers = ["task", *(["week of"] if by == "week" else []), "done", "p50", "p95", "max", "within deadline",
               *(["missed, open"] if by == "task" else [])]
    app.emit(rows, lambda: echo_table(headers, [
        (r.task, *([r.week] if by == "week" else []), r.count, span(r.p50_s), span(r.p95_s), span(r.max_s),
         percent(r.within), *([r.open_missed] if by == "task" else [])) for r in rows],
        "no instance of a task with a deadline" + (f" done since {since}" if since else "")))
