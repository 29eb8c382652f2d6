"""Static reports: the processing overview as one HTML file, readable without Grafana; the shift's hand-over as
plain text or Markdown (the library gathers it, :mod:`ecalstate.shiftreport`; here it is only written out)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Optional

import click

from ..clock import human_time
from .app import App, pass_app
from .fmt import printable
from .options import campaign_option, silent_after_option, stuck_after_option
from .parse import INT64_FROM_1
from .when import MOMENT

if TYPE_CHECKING:
    from ..results import InstanceDeadline
    from ..shiftreport import Part, ShiftReport


@click.group()
def report() -> None:
    """Write static reports of a campaign.

    \b
    Example:
        ecalstate report html -c prompt --out overview.html
        ecalstate report shift -c prompt --since 8h --format markdown
    """


@report.command("html")
@campaign_option
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, writable=True), metavar="FILE",
              help="Where to write the page (replaced atomically).")
@stuck_after_option
@silent_after_option
@click.option("--failures", type=INT64_FROM_1, default=20, show_default=True, metavar="N",
              help="How many recent failures to list.")
@click.option("--since", type=MOMENT, default="24h", show_default=True, metavar="TIME",
              help="List the operator actions from this time: 8h (ago), 2d, or 2026-12-01T06:00 (UTC).")
@click.option("--until", type=MOMENT, metavar="TIME", help="... and before this time (same forms as --since).")
@pass_app
def report_html(app: App, campaign: str, out: str, stuck_after: float, silent_after: float, failures: int,
                since: str, until: Optional[str]) -> None:
    """Write one self-contained HTML page: status matrix, failures, operator actions, health.

    Each matrix cell names its status in text and colour; its tooltip gives the generation, the
    last change and its reason. No external assets: the file can be archived by Jenkins or mailed.

    \b
    Example:
        ecalstate report html -c prompt --out public/prompt.html --stuck-after 12h
        ecalstate report html -c prompt --out shift.html --since 2026-12-01T06:00 --until 2026-12-01T14:00
    """
    from ..report import render_html

    page = render_html(app.reader(), campaign, stuck_after, silent_after, failures, since, until)
    tmp = f"{out}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(page)
        os.replace(tmp, out)
    except OSError as err:
        raise click.ClickException(f"cannot write {out}: {err.strerror or err}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    app.emit({"out": out, "bytes": len(page.encode())}, f"wrote {out}")


@report.command("shift")
@campaign_option
@click.option("--since", type=MOMENT, default="8h", show_default=True, metavar="TIME",
              help="The shift's start: 8h (ago), 2d, or 2026-12-01T06:00 (UTC).")
@click.option("--until", type=MOMENT, metavar="TIME", help="The shift's end (same forms as --since; default: now).")
@click.option("--format", "fmt", type=click.Choice(["text", "markdown"]), default="text", show_default=True,
              help="Plain text for a terminal or a log, or Markdown for an e-log or a chat.")
@click.option("--limit", type=INT64_FROM_1, default=20, show_default=True, metavar="N",
              help="At most N lines per section (the newest; each cut section says how to list the rest).")
@stuck_after_option
@silent_after_option
@pass_app
def report_shift(app: App, campaign: str, since: str, until: Optional[str], fmt: str, limit: int, stuck_after: float,
                 silent_after: float) -> None:
    """Write the shift's hand-over (text or Markdown): what happened, what needs action.

    From --since to --until (default: now). Sections: the runs that arrived (ended, skipped with the reason, or
    activating no task and why) and the fills that ended; what was
    processed (one line per fill group, with the version that made it);
    what failed and what became of it (recovered by a retry, failed for
    good, reprocessed or skipped by whom and why) and what it blocks; the
    operator actions with who and why; handler stages that failed, are
    silent, or were killed after a claim; what needs action now (the
    problems and warnings of ecalstate health, each with its command); the
    deadlines at risk, missed and done late, and the window's latency.
    Only reads. --json gives the same as one object.

    \b
    Example:
        ecalstate report shift -c prompt --since 8h
        ecalstate report shift -c prompt --since 2026-12-01T22:00 --until 2026-12-02T06:00 --format markdown
    """
    from ..shiftreport import shift_report

    if until is not None and until <= since:
        raise click.UsageError("--until must come after --since")
    given = click.get_current_context().get_parameter_source("stuck_after") == click.core.ParameterSource.COMMANDLINE
    found = shift_report(app.reader(), campaign, since, until, limit=limit, stuck_after=stuck_after if given else None,
                         silent_after=silent_after)
    app.emit(found, lambda: click.echo(render_shift(found, markdown=fmt == "markdown"), nl=False))


#: what Markdown would read as markup in stored text: each is written escaped (no link, image, HTML or code span)
_MARKUP = re.compile(r"([\\`*_{}\[\]<>#|~])")


class _Style:
    """How a line is written: plain text (indented) or Markdown (headings, bullets, code spans, escaped text)."""

    def __init__(self, markdown: bool) -> None:
        self.markdown = markdown

    def stored(self, value: Any) -> str:
        """Text that came from the store (reasons, actors, names): inert on a terminal, and no markup in Markdown."""
        text = printable(str(value))
        return _MARKUP.sub(r"\\\1", text) if self.markdown else text

    def code(self, command: str) -> str:
        command = printable(command)
        return f"`` {command} ``" if "`" in command else f"`{command}`"

    def section(self, title: str, count: Optional[int], lines: Sequence[tuple[str, str]]) -> list[str]:
        """A section: its title (with its count), then its lines (``para`` or ``item``); "none" when it has none."""
        if not self.markdown:
            if not lines:
                return [f"{title}: none", ""]
            return [title if count is None else f"{title} ({count})", *(f"  {text}" for _, text in lines), ""]
        out = [f"## {title}" if count is None or not lines else f"## {title} ({count})", ""]
        if not lines:
            return [*out, "none", ""]
        for i, (kind, text) in enumerate(lines):
            if kind == "para":
                out += [text, ""]
            else:
                out.append(f"- {text}")
                if i + 1 == len(lines) or lines[i + 1][0] != "item":
                    out.append("")
        return out


def render_shift(report: ShiftReport, markdown: bool = False) -> str:
    """The hand-over as plain text or Markdown: a header, then each section (capped ones say how to see the rest)."""
    style = _Style(markdown)
    window = f"{human_time(report.since)} to {human_time(report.until)} (UTC)"
    name = style.stored(report.campaign)
    out = ([f"# Shift report for campaign {name}", "", f"{window}; made {human_time(report.made_at)} by ecalstate", ""]
           if markdown else [f"Shift report for campaign {name}: {window}",
                             f"made {human_time(report.made_at)} by ecalstate", ""])
    for title, count, lines in _sections(report, style):
        out += style.section(title, count, lines)
    return "\n".join(out).rstrip("\n") + "\n"


Lines = list[tuple[str, str]]


def _items(part: Part[Any], say: Callable[[Any], str], style: _Style) -> Lines:
    """A part's items as lines, and a last one saying how many were left out and how to list them."""
    lines = [("item", say(item)) for item in part.items]
    if part.left_out:
        see = f", see {style.code(part.more)}" if part.more else ""
        lines.append(("para", f"and {part.left_out} more{see}"))
    return lines


def _sections(report: ShiftReport, s: _Style) -> list[tuple[str, Optional[int], Lines]]:
    from ..shiftreport import run_set

    def t(value: Optional[str]) -> str:
        return "-" if value is None else str(human_time(value))

    def fill(value: Optional[int]) -> str:
        return "" if value is None else f" (fill {value})"

    def runs_word(runs: Sequence[int]) -> str:
        return f"run{'s' if len(runs) > 1 else ''} {run_set(runs)}"

    def arrival(r: Any) -> str:
        when = (f"arrived {t(r.arrived_at)}" + (f", ended {t(r.ended_at)}" if r.ended_at else "")
                if r.arrived_in_window else f"ended {t(r.ended_at)} (arrived {t(r.arrived_at)})")
        if r.ongoing:
            what = "still being taken"
        elif r.skipped is not None:
            what = f"skipped: {s.stored(r.skipped)} ({s.stored(r.skipped_by)})"
        elif r.tasks:
            what = "tasks " + ", ".join(s.stored(x) for x in r.tasks)
        else:
            what = f"no task: {s.stored(r.no_task or 'no run type activates its tasks')}"
        return f"run {r.run_number}{fill(r.fill)}: {when}; {what}"

    runs: Lines = []
    if report.runs.total:
        arrived, fills = report.arrived_runs, report.arrived_fills
        fills_said = f" (fill{'s' if len(fills) > 1 else ''} {run_set(fills)})" if fills else ""
        ended = report.runs.total - len(arrived)
        runs.append(("para", f"{len(arrived)} run{'s' if len(arrived) != 1 else ''} arrived"
                             + (f": {run_set(arrived)}{fills_said}" if arrived else "")
                             + (f"; {ended} that arrived before ended" if ended else "")))
    runs += _items(report.runs, arrival, s)

    def fill_end(f: Any) -> str:
        dumped = f", beam dumped {t(f.dumped_at)}" if f.dumped_at else ""
        return f"fill {f.fill} ended {t(f.ended_at)}{dumped}: {s.stored(f.reason)} ({s.stored(f.actor)})"

    def processed(p: Any) -> str:
        made = f"{s.stored(p.task)} {s.stored(p.version)}" if p.version else f"{s.stored(p.task)} (no version)"
        if p.grouped:
            generation = f", generation {p.generation}" if p.generation and p.generation > 1 else ""
            where = f"fill {p.fill}: {made} from" if p.fill is not None else f"{made}: one group of"
            return f"{where} {runs_word(p.runs)}{generation}, done {t(p.done_at)}"
        made = f"{s.stored(p.task)} {s.stored(p.version)}" if p.version else s.stored(p.task)
        count = f"{len(p.runs)} run{'s' if len(p.runs) > 1 else ''}"
        return f"{made}: {count} done ({run_set(p.runs)}), the last {t(p.done_at)}"

    def failure(f: Any) -> str:
        tried = (f"{f.attempts} failed attempt{'s' if f.attempts > 1 else ''}, last" if f.attempts else "failed")
        return (f"{s.stored(f.task)} run {f.run_number}: {tried} {t(f.last_at)}: {s.stored(f.reason)}"
                f" -> {s.stored(f.how)}")

    def blocked(b: Any) -> str:
        return (f"{s.stored(b.task)} run {b.run_number} blocked: its upstream {s.stored(b.upstream)} failed"
                f" (since {t(b.since)})")

    def action(a: Any) -> str:
        who = s.stored(a.actor) + (f" [{s.stored(a.identity)}]" if a.identity else "")
        line = (f"{t(a.at)} {who}: {s.stored(a.task)} {a.from_status} -> {a.to_status}, {runs_word(a.runs)}:"
                f" {s.stored(a.reason)}")
        for c in a.cascade:
            line += f"; cascade: {s.stored(c.task)} {c.from_status} -> {c.to_status}, {runs_word(c.runs)}"
        return line

    def stage(e: Any) -> str:
        name = f"{s.stored(e.task)} {s.stored(e.stage)}"
        if e.kind == "silent":
            return f"{name} silent: its last heartbeat {t(e.at)}" + (f" ({s.stored(e.message)})" if e.message else "")
        if e.kind == "killed":
            claimed = f"{name} claimed run {e.run_number} at {t(e.at)} ({s.stored(e.actor)})"
            if e.submitted_at is None:
                return (f"{claimed}; its jobs are not submitted yet: the stage was killed or failed after its claim,"
                        " or is still submitting")
            return (f"{claimed}, which was killed or failed after its claim; its jobs were submitted"
                    f" {t(e.submitted_at)} by {s.stored(e.submitted_by)}")
        times = "once," if e.count == 1 else f"{e.count} times, last"
        return f"{name} failed {times} {t(e.at)} ({s.stored(e.actor)}): {s.stored(e.message)}"

    def needs(n: Any) -> str:
        return (f"{n.level}: {s.stored(n.message)} (since {t(n.since)}); resolve: "
                + (s.code(n.command) if s.markdown else printable(n.command)))

    failures = _items(report.failures, failure, s) + _items(report.blocked, blocked, s)
    deadlines = _deadline_lines(report, s, t, fill)
    return [
        ("Runs arrived", report.runs.total, runs),
        ("Fills ended", report.fills.total, _items(report.fills, fill_end, s)),
        ("Processed", report.processed.total, _items(report.processed, processed, s)),
        ("Failures and their fate", report.failures.total, failures),
        ("Operator actions", report.actions.total, _items(report.actions, action, s)),
        ("Stages", report.stages.total, _items(report.stages, stage, s)),
        ("Needs action now", report.needs_action.total, _items(report.needs_action, needs, s)),
        ("Deadlines", None, deadlines),
    ]


def _deadline_lines(report: ShiftReport, s: _Style, t: Callable[[Optional[str]], str],
                    fill: Callable[[Optional[int]], str]) -> Lines:
    """Missed and at risk now, done late in the window, then the window's latency per task."""

    def due(label: str) -> Callable[[InstanceDeadline], str]:
        def say(d: InstanceDeadline) -> str:
            since = (d.reference_kind or "").replace("-", " ")
            head = f"{label}: {s.stored(d.task)} run {d.run_number}{fill(d.fill)}: due {t(d.deadline)}"
            if d.done_at is not None and d.latency_s is not None:
                return f"{head}, done {t(d.done_at)} ({_hours(d.latency_s)} after its {since})"
            return f"{head}, {since} {t(d.reference)}"
        return say

    lines = (_items(report.deadlines.missed, due("missed"), s) + _items(report.deadlines.at_risk, due("at risk"), s)
             + _items(report.deadlines.done_late, due("done late"), s))
    for row in report.deadlines.latency:
        if not row.count:
            lines.append(("item", f"latency: {s.stored(row.task)}: none done"))
            continue
        within = "" if row.within is None else f", {round(row.within * 100)}% within"
        missed = f", {row.open_missed} open past the deadline" if row.open_missed else ""
        spread = f"p50 {_hours(row.p50_s)}, p95 {_hours(row.p95_s)}, max {_hours(row.max_s)}"
        lines.append(("item", f"latency: {s.stored(row.task)}: {row.count} done, {spread}{within}{missed}"))
    return lines


def _hours(seconds: Optional[float]) -> str:
    return "-" if seconds is None else f"{seconds / 3600:.1f} h"
