"""The static HTML overview: what Grafana's processing overview shows, readable without Grafana.

One self-contained page (inline CSS, no scripts, no external assets), so it can
be archived by Jenkins, mailed, or opened from a file system: the run x task
matrix (each cell's status as colour and as text, with a tooltip saying its
generation, last change and reason; blocked and stuck marks), totals per task
and status, the most recent failures from the audit trail, the operator actions
of the period, and the health report. Every stored text is HTML-escaped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from html import escape
from typing import Any, Optional

from .auditlog import TASK_ROWS
from .clock import human_time
from .monitoring import SILENT_AFTER, STUCK_AFTER
from .queries import run_spans
from .results import Health, Overview
from .statemachine import TaskStatus
from .store import Store

#: cell colour per task status (also the legend); "missing" is a task not active for the run
COLOURS: dict[str, str] = {
    "new": "#cbd5e1",
    "processing": "#3b82f6",
    "done": "#16a34a",
    "failed": "#dc2626",
    "merged": "#14b8a6",
    "reprocess": "#f59e0b",
    "skipped": "#a3a3a3",
    "missing": "#ffffff",
}
#: statuses whose colour is dark enough to need white text
DARK = ("processing", "done", "failed", "merged")

#: per task instance, what its tooltip says besides the status: generation, last change, the last transition's reason
CELLS_SQL = f"""
SELECT t.name, r.run_number, ti.generation, ti.updated_at,
       (SELECT s.text FROM string s WHERE s.id = (SELECT a.reason FROM audit_log a
        WHERE a.instance_id = ti.id AND a.{TASK_ROWS} ORDER BY a.id DESC LIMIT 1))
FROM task_instance ti JOIN run r ON r.id = ti.run_id JOIN task t ON t.id = ti.task_id
JOIN campaign c ON c.id = r.campaign_id
WHERE c.name = ?
"""

#: what operators did by hand: set/reprocess/skip write task rows without a generation (claims and completions
#: always name the generation they act on); a handler rolling back its own failed submit goes through the same
#: operator call, so it is listed too, under the handler's actor
ACTIONS_SQL = """
SELECT a.ts, a.actor, a.identity, a.task, a.from_status, a.to_status, a.reason, a.run_number
FROM audit a JOIN campaign c ON c.id = a.campaign_id
WHERE c.name = ? AND a.entity = 'task' AND a.generation IS NULL
  AND a.to_status IN ('done', 'failed', 'reprocess', 'skipped')
"""

FAILURES_SQL = """
SELECT a.ts, a.entity, a.task, a.run_number, a.jid, a.from_status, a.actor, a.reason
FROM audit a JOIN campaign c ON c.id = a.campaign_id
WHERE c.name = ? AND a.to_status IN ('failed', 'error')
ORDER BY a.id DESC LIMIT ?
"""

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #111827; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 24px 0 8px; }
.meta { color: #4b5563; margin: 0 0 12px; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 10px; color: #fff; font-weight: 600; }
.ok { background: #047857; } .bad { background: #b91c1c; }
table { border-collapse: collapse; }
th, td { padding: 2px 8px; text-align: left; border: 1px solid #e5e7eb; }
th { background: #f3f4f6; white-space: nowrap; }
td:first-child { white-space: nowrap; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
table.matrix td { min-width: 64px; height: 20px; padding: 0 4px; text-align: center; font-size: 12px;
                  font-weight: 600; color: #111827; white-space: nowrap; }
table.matrix tbody th { background: none; font-weight: 400; text-align: right; font-variant-numeric: tabular-nums; }
.legend span { display: inline-block; margin-right: 12px; }
.legend i { display: inline-block; width: 14px; height: 14px; vertical-align: -2px; margin-right: 4px;
            border: 1px solid #9ca3af; }
"""


def render_html(
    store: Store,
    campaign: str,
    stuck_after: float = STUCK_AFTER,
    silent_after: float = SILENT_AFTER,
    failures: int = 20,
    since: Optional[str] = None,
    until: Optional[str] = None,
) -> str:
    """The whole page for ``campaign`` as one string (raises the store's errors for an unknown campaign).

    ``since``/``until`` (the store's UTC text times) bound the period whose operator actions are listed.
    """
    view = store.overview(campaign, stuck_after=stuck_after)
    report = store.health(campaign, stuck_after, silent_after)
    with store.db.tx(write=False) as tx:
        failed = tx.all(FAILURES_SQL, (campaign, failures))
        cells = {(task, run): (gen, changed, reason) for task, run, gen, changed, reason in tx.all(CELLS_SQL,
                                                                                                   (campaign,))}
        bounds = [(clause, value) for clause, value in (("a.ts >= ?", since), ("a.ts < ?", until)) if value]
        actions = tx.all(ACTIONS_SQL + "".join(f" AND {c}" for c, _ in bounds) + " ORDER BY a.id",
                         (campaign, *(v for _, v in bounds)))
    style = "".join(f"td.s-{s} {{ background: {c};{' color: #fff;' if s in DARK else ''} }}\n"
                    for s, c in COLOURS.items())
    period = " ".join(p for p in (since and f"from {human_time(since)}", until and f"until {human_time(until)}")
                      if p) or "(whole history)"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>ecalstate: {escape(campaign)}</title>",
        f"<style>{CSS}{style}</style></head><body>",
        f"<h1>Processing overview: {escape(campaign)}</h1>",
        f'<p class="meta">{len(view.rows)} runs x {len(view.tasks)} tasks; generated {human_time(store.clock())}'
        " by ecalstate. " + _health_badge(report) + "</p>",
        _matrix(view, cells),
        "<h2>Totals per task and status</h2>",
        _table(["status", *view.tasks], totals_rows(view), "no tasks"),
        f"<h2>Recent failures (last {failures})</h2>",
        _table(["time", "entity", "task", "run", "job", "from", "actor", "reason"], failed, "no failures recorded"),
        f"<h2>Operator actions {escape(period)}</h2>",
        _table(["time", "actor", "identity", "task", "transition", "runs", "reason"], action_rows(actions),
               "no operator actions in this period"),
        "<h2>Health</h2>",
        _health(report, stuck_after, silent_after),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _health_badge(report: Health) -> str:
    if report.ok:
        return '<span class="badge ok">healthy</span>'
    return (f'<span class="badge bad">unhealthy: {len(report.stuck)} stuck, {len(report.silent)} silent, '
            f"{len(report.failing)} failing, {len(report.blocked)} blocked"
            + (f", {len(report.unsubmitted)} unsubmitted" if report.unsubmitted else "")
            + (f", {len(report.failed)} failed" if report.failed else "") + "</span>")


def _legend() -> str:
    items = "".join(f'<span><i style="background:{c}"></i>{escape(s)}</span>' for s, c in COLOURS.items())
    return f'<p class="legend">{items}<span>* blocked</span><span>! stuck</span></p>'


def _matrix(view: Overview, info: dict[tuple[str, int], tuple[int, str, Optional[str]]]) -> str:
    """Rows are runs, columns tasks; each cell's class (and colour) and text are the instance's status."""
    if not view.rows or not view.tasks:
        return "<p>no runs or no tasks yet</p>"
    marks = cell_marks(view)
    out = [_legend(), '<table class="matrix"><thead><tr><th>run</th><th>fill</th>',
           "".join(f"<th>{escape(t)}</th>" for t in view.tasks), "</tr></thead><tbody>\n"]
    esc = lru_cache(maxsize=65536)(escape)  # task names, reasons and times repeat across 200,000 cells
    for row in view.rows:
        cells = "".join(_cell_html(task, row.run_number, row.statuses.get(task), marks.get((task, row.run_number)),
                                   info.get((task, row.run_number)), esc)
                        for task in view.tasks)
        fill = "" if row.fill is None else row.fill
        out.append(f"<tr><th>{row.run_number}</th><th>{fill}</th>{cells}</tr>\n")
    out.append("</tbody></table>")
    return "".join(out)


MARK_NOTES = {"*": "blocked: an upstream task failed", "!": "stuck: no job progress"}


def _cell_html(task: str, run: int, status: Optional[str], mark: Optional[str],
               info: Optional[tuple[int, str, Optional[str]]], esc: Callable[[str], str] = escape) -> str:
    """One matrix cell: the status as class and text (with its mark), and a tooltip saying why it is so.

    Every stored text is escaped on its own (``esc``); the rest is the store's statuses and numbers.
    """
    if status is None:
        return f'<td class="s-missing" title="{esc(task)} run {run}: not active for this run"></td>'
    parts = [f"{esc(task)} run {run}: {status}"]
    if info is not None:
        generation, changed, reason = info
        parts += [f"generation {generation}" if generation else "not claimed yet",
                  f"last change {esc(human_time(changed))}"]
        if reason:
            parts.append(f"reason: {esc(reason)}")
    if mark:
        parts.append(MARK_NOTES[mark])
    text = f"{status} {mark}" if mark else status
    return f'<td class="s-{status}" title="{"; ".join(parts)}">{text}</td>'


def action_rows(rows: Iterable[Sequence[Any]]) -> list[list[Any]]:
    """Operator audit rows, one line per action: rows of one call (same time, actor, task, transition, reason)
    are joined, their runs given as a run set (``1-3,7``)."""
    actions: list[list[Any]] = []
    runs: list[list[int]] = []
    for ts, actor, identity, task, from_status, to_status, reason, run in rows:
        line = [ts, actor, identity, task, f"{from_status} -> {to_status}", "", reason]
        if actions and actions[-1][:5] == line[:5] and actions[-1][6] == reason:
            runs[-1].append(run)
        else:
            actions.append(line)
            runs.append([run])
    for line, numbers in zip(actions, runs):
        line[5] = ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in run_spans(numbers))
    return actions


def cell_marks(view: Overview) -> dict[tuple[str, int], str]:
    """(task, run) -> ``*`` for a blocked instance, ``!`` for a stuck one."""
    marks = {(t, r): "*" for t, r in view.blocked}
    marks.update({(t, r): "!" for t, r in view.stuck})
    return marks


def totals_rows(view: Overview) -> list[list[Any]]:
    """Per status (then blocked and stuck), the count of each task: the totals under the matrix."""
    rows: list[list[Any]] = [[s.value] + [view.totals[t][s.value] for t in view.tasks] for s in TaskStatus]
    rows.append(["blocked *"] + [sum(1 for t, _ in view.blocked if t == task) for task in view.tasks])
    rows.append(["stuck !"] + [sum(1 for t, _ in view.stuck if t == task) for task in view.tasks])
    return rows


def health_sections(report: Health) -> list[tuple[str, list[str], list[tuple[Any, ...]]]]:
    """What is wrong, by kind: (title, column names, rows); kinds with nothing to report are left out.

    Shared by this page and ``ecalstate health``, so both say the same thing.
    """
    sections: list[tuple[str, list[str], list[tuple[Any, ...]]]] = [
        ("stuck: processing without job progress", ["campaign", "task", "run", "since", "jobs"],
         [(s.campaign, s.task, s.run_number, s.since, s.jobs) for s in report.stuck]),
        ("silent handler stages: no recent heartbeat", ["campaign", "task", "stage", "last heartbeat"],
         [(h.campaign, h.task, h.stage, h.last_at) for h in report.silent]),
        ("failing handler stages: the last run reported an error", ["campaign", "task", "stage", "last heartbeat",
                                                                     "message"],
         [(h.campaign, h.task, h.stage, h.last_at, h.message) for h in report.failing]),
        ("blocked: an upstream task failed for the run", ["campaign", "task", "run"], list(report.blocked)),
        ("unsubmitted: processing with jobs never submitted (a killed submit; the next submit stage sends them)",
         ["campaign", "task", "run", "since", "jobs"],
         [(s.campaign, s.task, s.run_number, s.since, s.jobs) for s in report.unsubmitted]),
        ("failed: will not be retried (reprocess, or skip with a reason)", ["campaign", "task", "run", "since",
                                                                            "failed jobs"],
         [(s.campaign, s.task, s.run_number, s.since, s.jobs) for s in report.failed]),
    ]
    return [section for section in sections if section[2]]


def retry_note(report: Health) -> str:
    """Failed jobs the next resubmit retries: counted apart from the problems (not red), or ""."""
    if not report.retrying:
        return ""
    jobs = sum(r.jobs for r in report.retrying)
    return f"{jobs} failed job(s) of {len(report.retrying)} instance(s) wait for a retry (resubmit)"


def _health(report: Health, stuck_after: float, silent_after: float) -> str:
    note = retry_note(report)
    note_html = f"<p>{escape(note)}</p>" if note else ""
    if report.ok:
        return "<p>Nothing stuck, silent, failing, blocked or failed.</p>" + note_html
    limits = (f"<p>Stuck after {stuck_after / 3600:g} h without job progress; silent after {silent_after / 3600:g} h"
              " without a heartbeat.</p>")
    return limits + "".join(f"<h3>{escape(title)} ({len(rows)})</h3>" + _table(headers, rows, "")
                            for title, headers, rows in health_sections(report)) + note_html


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], empty: str) -> str:
    body = "".join(
        "<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows
    )
    if not body:
        return f"<p>{escape(empty)}</p>"
    head = "".join(f"<th>{escape(str(h))}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f'<td class="n">{value}</td>'
    return f"<td>{'' if value is None else escape(str(human_time(value)))}</td>"
