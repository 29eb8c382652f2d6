"""The shift's hand-over: what happened to a campaign in a time window, and what still needs action.

``ecalstate report html`` is a page to look at; a shift log wants text to paste. :func:`shift_report` gathers the
facts of a window into one typed result (:class:`ShiftReport`), which the command line renders as plain text or
Markdown (``ecalstate report shift``):

- the runs that arrived (or ended) in the window, each with the tasks it activated, or why none (a run type's
  clause it fails, still being taken), or the skip that took it out; the fills that ended, who said so and why;
- what was processed: one line per group of a grouped task ("fill 9001: phisym-calib 2.1 from runs ..."), one line
  per task run by run, each with the version that made it (the claim's record);
- what failed (job attempts, instances) and what became of it: recovered by a retry or a reprocessing, failed for
  good, waiting for a resubmit, reprocessed or skipped by an operator (who, why); what is blocked by it now;
- the operator actions (set, reprocess, skip, ...: every transition of an instance that names no generation),
  who and why, a cascade told with the action that caused it;
- handler stages: those that failed (their heartbeats), those silent now, and those killed after a claim (jobs
  made in the claim's transaction, submitted later by another build, after the unsubmitted threshold, or not yet);
- what needs action now, from the attention model (:func:`~ecalstate.attention.attention`), with its commands;
- deadlines: instances at risk or past their deadline now, those done late in the window, and the latency table of
  the window.

Every section is capped (``limit`` items, the newest) and says how many it left out and the command that lists them
all: a year's window on a big campaign is still a page. The report only reads; its window's audit rows are read by
id range and integer columns (the partial indexes of instance rows where one instance is looked up).
"""

from __future__ import annotations

import json
import shlex
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Optional, TypeVar

from .attention import HANDLERS_KEY, HandlerInfo, attention
from .auditlog import TASK_ROWS, made_and_done, texts_of, vocab_id
from .base import CASCADE, campaign_id, loads
from .catalog import campaign_settings
from .clock import from_micros, parse_time, to_micros
from .db import Tx
from .errors import Invalid
from .latency import LatencyRow, latency_table
from .limits import chunks
from .monitoring import SILENT_AFTER, UNSUBMITTED_AFTER
from .queries import run_spans
from .results import AT_RISK, DONE_LATE, MISSED, BlockedInstance, FillEnd, InstanceDeadline
from .store import Store

T = TypeVar("T")

#: items per section unless asked otherwise
LIMIT = 20
#: the spans of a run set written out in one line (the rest counted)
RUN_SPANS = 10
#: the grouping rules whose instances are groups of runs (one line per group)
GROUPED = ("fill", "lumi", "era")

_TASK, _JOB, _HANDLER = vocab_id("task"), vocab_id("job"), vocab_id("handler")
_PROCESSING, _DONE, _FAILED, _MERGED = (vocab_id(s) for s in ("processing", "done", "failed", "merged"))
_ERROR = vocab_id("error")
_US = 1_000_000
#: seconds by which audit times may disagree with the order of ids (overlapping write transactions: ids are handed out
#: as rows are inserted, a transaction's time when it begins); the window's id range is widened by it
SLACK = 600


# ------------------------------------------------------------------ the result


@dataclass(frozen=True)
class Part(Generic[T]):
    """A section's items (at most the report's limit, the newest), how many there were, and the command that lists
    them all."""

    items: list[T]
    total: int
    more: str = ""

    @property
    def left_out(self) -> int:
        return self.total - len(self.items)


@dataclass(frozen=True)
class RunArrival:
    """A run that arrived in the window (or ended in it, having arrived before), and what it came to."""

    run_number: int
    fill: Optional[int]
    arrived_at: str
    ended_at: Optional[str]
    #: still being taken (its tasks start once a sync sees it ended)
    ongoing: bool
    #: the tasks it has an instance of
    tasks: list[str]
    #: every one of its instances is skipped: the skip's reason and who gave it
    skipped: Optional[str] = None
    skipped_by: Optional[str] = None
    #: it has no instance: why (a run type's clause it fails, the task added later)
    no_task: str = ""
    #: False: it arrived before the window and ended in it
    arrived_in_window: bool = True


@dataclass(frozen=True)
class Processed:
    """A group done in the window (``grouped``: one instance's group, its fill's), or a task's runs done one by one
    (``grouped`` False: every run of the task done in the window); with the version that made it."""

    task: str
    fill: Optional[int]
    runs: list[int]
    version: Optional[str]
    done_at: str
    generation: Optional[int]
    grouped: bool


@dataclass(frozen=True)
class Failure:
    """An instance whose jobs (or itself) failed in the window, and its fate: ``recovered``, ``failed`` (for good,
    or aborted), ``waiting`` (for a resubmit), ``retrying``, ``reprocess``, ``skipped``, ``merged``; ``how`` says it
    in words (who, why, which attempt)."""

    task: str
    run_number: int
    fill: Optional[int]
    attempts: int
    last_at: str
    reason: str
    fate: str
    how: str


@dataclass(frozen=True)
class Cascade:
    """What an operator action did to the dependent tasks (the same call, the same reason)."""

    task: str
    from_status: str
    to_status: str
    runs: list[int]


@dataclass(frozen=True)
class OperatorAction:
    """One operator call on one task (set, reprocess, skip...): when, who (label and authenticated identity), the
    transition, its runs, why, and what it cascaded to."""

    at: str
    actor: str
    identity: str
    task: str
    from_status: str
    to_status: str
    runs: list[int]
    reason: str
    cascade: list[Cascade] = field(default_factory=list)


@dataclass(frozen=True)
class StageEvent:
    """A handler stage that ``failed`` (its heartbeats in the window: how often, the last time and message), is
    ``silent`` now (its last heartbeat), or was ``killed`` after a claim (the run it claimed, when and by whom; when
    and by whom its jobs were submitted, None: not yet)."""

    kind: str
    task: str
    stage: str
    at: str
    actor: str
    message: str = ""
    count: int = 1
    run_number: Optional[int] = None
    submitted_at: Optional[str] = None
    submitted_by: Optional[str] = None


@dataclass(frozen=True)
class NeedsAction:
    """A reason of the attention model at warning or problem level, with the command that resolves it."""

    level: str
    code: str
    task: str
    run_number: int
    fill: Optional[int]
    since: str
    message: str
    command: str


@dataclass(frozen=True)
class DeadlineReport:
    """Instances at risk or past their deadline now, those done late in the window, and the window's latency."""

    at_risk: Part[InstanceDeadline]
    missed: Part[InstanceDeadline]
    done_late: Part[InstanceDeadline]
    latency: list[LatencyRow]


@dataclass(frozen=True)
class ShiftReport:
    """What happened to ``campaign`` from ``since`` to ``until`` (store times), and what needs action at ``made_at``."""

    campaign: str
    since: str
    until: str
    made_at: str
    runs: Part[RunArrival]
    fills: Part[FillEnd]
    processed: Part[Processed]
    failures: Part[Failure]
    blocked: Part[BlockedInstance]
    actions: Part[OperatorAction]
    stages: Part[StageEvent]
    needs_action: Part[NeedsAction]
    deadlines: DeadlineReport
    #: every run that arrived in the window (``runs`` lists the newest), and their fills
    arrived_runs: list[int] = field(default_factory=list)
    arrived_fills: list[int] = field(default_factory=list)


# ------------------------------------------------------------------ gathering


def shift_report(
    store: Store, campaign: str, since: str, until: Optional[str] = None, *, limit: int = LIMIT,
    stuck_after: Optional[float] = None, silent_after: float = SILENT_AFTER,
) -> ShiftReport:
    """The hand-over of ``campaign`` for the window ``since`` (included) to ``until`` (excluded; None: now, the
    store's clock), each section at most ``limit`` items. ``stuck_after``/``silent_after``: as ``health`` takes
    them. Only reads."""
    if limit < 1:
        raise Invalid(f"invalid limit {limit}: expected an integer >= 1")
    made_at = store.clock()
    start, end = _moment(since, "since"), _moment(until or made_at, "until")
    if end <= start:
        raise Invalid(f"the window is empty: until ({end}) must come after since ({start})")
    with store.db.tx(write=False) as tx:
        window = _Window.read(tx, campaign_id(tx, campaign), campaign, start, end, until is None)
        runs, arrived = window.runs(store, limit)
        processed = window.processed(limit)
        failures = window.failures(store, limit)
        actions = window.actions(limit)
        killed = window.killed()
        failed = window.failed_heartbeats()
    fills = [f for f in store.ended_fills(campaign) if start <= f.ended_at < end]
    seen = attention(store, campaign, stuck_after=stuck_after, silent_after=silent_after)
    silent = [StageEvent("silent", h.task, h.stage, h.last_at, "", h.message)
              for h in seen.health.silent if h.campaign == campaign]
    stages = silent + sorted(killed + failed, key=lambda s: s.at, reverse=True)  # what is silent now, then newest
    needs = [NeedsAction(r.level, r.code, i.task, i.run_number, i.fill, r.since, r.message, r.command)
             for i, r in seen.reasons() if r.level != "info"]  # problems first
    blocked = [b for b in seen.health.blocked_by if b.campaign == campaign]
    health = f"ecalstate health -c {shlex.quote(campaign)}"
    return ShiftReport(
        campaign, start, end, made_at, runs, _part(fills, limit, window.report(len(fills))),
        processed, failures, _part(blocked, limit, health, newest=False), actions,
        _part(stages, limit, window.history("--kind handler"), newest=False),
        _part(needs, limit, health, newest=False), _deadlines(store, campaign, start, end, limit),
        [r for r, _ in arrived], sorted({f for _, f in arrived if f is not None}))


def _moment(value: str, what: str) -> str:
    moment = parse_time(value)
    if moment is None:
        raise Invalid(f"invalid time for {what} {value!r}: expected the store's format, e.g. 2026-12-01T06:00:00Z")
    return moment


def _part(items: Sequence[T], limit: int, more: str, newest: bool = True) -> Part[T]:
    """``limit`` of ``items``: the last ones (``newest``: they come oldest first), else the first ones (they come
    most urgent first)."""
    return Part(list(items[-limit:] if newest else items[:limit]), len(items), more)


def run_set(runs: Iterable[int], spans: int = RUN_SPANS) -> str:
    """Runs as a run set (``380001-380003,380007``), at most ``spans`` spans written out, the rest counted."""
    found = run_spans(list(runs))
    shown = ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in found[:spans])
    rest = sum(b - a + 1 for a, b in found[spans:])
    return f"{shown},... and {rest} more" if rest else shown


def _deadlines(store: Store, campaign: str, since: str, until: str, limit: int) -> DeadlineReport:
    """At risk and missed now (a merged run is told by its leader), done late in the window, the window's latency."""
    open_ = [d for d in store.deadlines(campaign, finished=False, states=(AT_RISK, MISSED)) if d.leader_run is None]
    late = [d for d in store.deadlines(campaign, since=since) if d.state == DONE_LATE and d.leader_run is None
            and d.done_at is not None and d.done_at < until]
    late.sort(key=lambda d: d.done_at or "")
    more = f"ecalstate latency -c {shlex.quote(campaign)} --instances"
    return DeadlineReport(_part([d for d in open_ if d.state == AT_RISK], limit, more, newest=False),
                          _part([d for d in open_ if d.state == MISSED], limit, more, newest=False),
                          _part(late, limit, more), latency_table(store, campaign, since=since))


@dataclass
class _Window:
    """The window's audit rows, read by id range (``lo``..``hi``) and integer columns, in one read transaction."""

    tx: Tx
    cid: int
    campaign: str
    since: str
    until: str
    open_ended: bool
    lo: int
    hi: int
    texts: dict[int, str] = field(default_factory=dict)

    @classmethod
    def read(cls, tx: Tx, cid: int, campaign: str, since: str, until: str, open_ended: bool) -> _Window:
        """The window's id range, found from its ends inwards: a recent window on a year's audit reads only its own
        rows. Ids follow times but for transactions that overlap, so the range is widened by :data:`SLACK` on each
        side (every read also bounds the times)."""
        before = tx.scalar("SELECT id FROM audit_log WHERE ts < ? ORDER BY id DESC LIMIT 1",
                           (to_micros(since) - SLACK * _US,))
        lo = int(before or 0) + 1
        after = tx.scalar("SELECT id FROM audit_log WHERE id >= ? AND ts >= ? ORDER BY id LIMIT 1",
                          (lo, to_micros(until) + SLACK * _US))
        hi = int(after) - 1 if after is not None else int(tx.scalar("SELECT MAX(id) FROM audit_log") or 0)
        return cls(tx, cid, campaign, since, until, open_ended, lo, hi)

    # --- helpers -------------------------------------------------------------------------------------------------

    @staticmethod
    def where(alias: str = "a") -> str:
        """The window's rows of ``audit_log`` as ``alias``; its parameters are :attr:`params`."""
        return f"{alias}.id BETWEEN ? AND ? AND {alias}.campaign_id = ? AND {alias}.ts >= ? AND {alias}.ts < ?"

    @property
    def params(self) -> list[Any]:
        return [self.lo, self.hi, self.cid, to_micros(self.since), to_micros(self.until)]

    def text(self, ids: Iterable[Optional[int]]) -> dict[int, str]:
        """The texts of these ``string`` ids (cached for the report)."""
        return texts_of(self.tx, {i for i in ids if i is not None}, self.texts)

    def history(self, filters: str) -> str:
        """The ``ecalstate history`` command listing this window's rows of ``filters``."""
        until = "" if self.open_ended else f" --until {self.until}"
        return f"ecalstate history -c {shlex.quote(self.campaign)} --since {self.since}{until} {filters} --all"

    def report(self, limit: int) -> str:
        """This report's command with a larger ``limit`` (what has no listing of its own: the fills that ended)."""
        until = "" if self.open_ended else f" --until {self.until}"
        return f"ecalstate report shift -c {shlex.quote(self.campaign)} --since {self.since}{until} --limit {limit}"

    def fills_of(self, runs: Iterable[int]) -> dict[int, Optional[int]]:
        out: dict[int, Optional[int]] = {}
        for chunk in chunks(sorted(set(runs))):
            out.update(self.tx.all(f"SELECT run_number, fill FROM run WHERE campaign_id = ? AND run_number IN"
                                   f" ({','.join('?' * len(chunk))})", (self.cid, *chunk)))
        return out

    def last_task_row(self, iid: int) -> Optional[tuple[Any, ...]]:
        """An instance's newest row (ts, actor, to status, reason, generation), texts resolved."""
        row = self.tx.one(f"SELECT a.ts, a.actor, a.to_status, a.reason, a.generation FROM audit_log a WHERE a.id ="
                          f" (SELECT MAX(b.id) FROM audit_log b WHERE b.instance_id = ? AND b.{TASK_ROWS})", (iid,))
        if row is None:
            return None
        texts = self.text(row[1:4])
        return from_micros(row[0]), texts[row[1]], texts[row[2]], texts[row[3]], row[4]

    # --- runs ----------------------------------------------------------------------------------------------------

    def runs(self, store: Store, limit: int) -> tuple[Part[RunArrival], list[tuple[int, Optional[int]]]]:
        """The runs that arrived or ended in the window (the newest ``limit``), and (run, fill) of those arrived."""
        rows = self.tx.all(
            "SELECT run_number, fill, injected_at, ended_at FROM run WHERE campaign_id = ? AND ((injected_at >= ? AND"
            " injected_at < ?) OR (ended_at >= ? AND ended_at < ?)) ORDER BY run_number",
            (self.cid, self.since, self.until, self.since, self.until))
        shown = rows[-limit:]
        numbers = [r[0] for r in shown]
        meta: dict[int, dict[str, Any]] = {}
        instances: dict[int, list[tuple[str, str, int]]] = defaultdict(list)
        for chunk in chunks(numbers):
            marks = ",".join("?" * len(chunk))
            meta.update((r[0], loads(r[1])) for r in self.tx.all(
                f"SELECT run_number, meta FROM run WHERE campaign_id = ? AND run_number IN ({marks})",
                (self.cid, *chunk)))
            for run, task, status, iid in self.tx.all(
                    "SELECT r.run_number, t.name, ti.status, ti.id FROM task_instance ti JOIN run r ON r.id = ti.run_id"
                    f" JOIN task t ON t.id = ti.task_id WHERE r.campaign_id = ? AND r.run_number IN ({marks})"
                    " ORDER BY t.name", (self.cid, *chunk)):
                instances[run].append((task, status, iid))
        bare = [n for n in numbers if not instances[n] and not meta[n].get("ongoing")]
        notes = store.overview(self.campaign, runs=bare).notes if bare else {}
        items = []
        for run, fill, arrived, ended in shown:
            mine = instances[run]
            skipped = why = None
            if mine and all(status == "skipped" for _, status, _ in mine):
                skipped, why = self.skip_of([iid for _, _, iid in mine])
            items.append(RunArrival(run, fill, arrived, ended, meta[run].get("ongoing") is True,
                                    [task for task, _, _ in mine], skipped, why, notes.get(run, ""),
                                    self.since <= arrived < self.until))
        arrived = [(r[0], r[1]) for r in rows if self.since <= r[2] < self.until]
        return Part(items, len(rows), f"ecalstate run list -c {shlex.quote(self.campaign)}"), arrived

    def skip_of(self, iids: Sequence[int]) -> tuple[Optional[str], Optional[str]]:
        """(reason, actor) of the skip of a run's instances: an instance's own skip before one cascaded to it."""
        found = [row for row in (self.last_task_row(i) for i in iids) if row is not None]
        for _, actor, _, reason, _ in sorted(found, key=lambda r: r[3].endswith(CASCADE)):
            return reason, actor
        return None, None

    # --- processed -----------------------------------------------------------------------------------------------

    def processed(self, limit: int) -> Part[Processed]:
        """Done rows of the handlers (a completion names its generation; an operator's ``set done`` does not)."""
        rows = self.tx.all(f"SELECT a.id, a.ts, a.instance_id, a.generation, a.run_number, a.task FROM audit_log a"
                           f" WHERE {self.where()} AND a.entity = {_TASK} AND a.to_status = {_DONE}"
                           " AND a.generation IS NOT NULL ORDER BY a.id", self.params)
        names = self.text(r[5] for r in rows)
        made, _ = made_and_done(self.tx, [r[2] for r in rows])
        version = {key: m.version for key, m in made.items()}
        grouped = self.grouped_tasks()
        groups: list[tuple[int, Processed]] = []
        singles: dict[str, list[tuple[int, int, str, Optional[str]]]] = defaultdict(list)
        fills = self.fills_of(r[4] for r in rows)
        for aid, ts, iid, generation, run, task_id in rows:
            task = names[task_id]
            if task in grouped:
                members = self.members(iid, generation, aid)
                groups.append((aid, Processed(task, fills.get(run), [*members, run], version.get((iid, generation)),
                                              from_micros(ts), generation, True)))
            else:
                singles[task].append((aid, run, from_micros(ts), version.get((iid, generation))))
        items = groups + [(done[-1][0], Processed(
            task, None, sorted({r for _, r, _, _ in done}), ", ".join(sorted({v for *_, v in done if v})) or None,
            done[-1][2], None, False)) for task, done in singles.items()]
        items.sort(key=lambda item: item[0])
        kept = sorted(items[-limit:], key=lambda item: (item[1].task, item[0]))
        return Part([p for _, p in kept], len(items), self.history("--kind task --status done"))

    def grouped_tasks(self) -> set[str]:
        """Tasks whose instances are groups of runs: their handler said so, or one of them holds merged runs."""
        noted = dict(campaign_settings(self.tx, self.cid).get(HANDLERS_KEY) or {})
        out = {task for task, info in noted.items() if HandlerInfo.from_dict(info).group_by in GROUPED}
        out.update(r[0] for r in self.tx.all(
            "SELECT DISTINCT t.name FROM task_instance ti JOIN task t ON t.id = ti.task_id"
            " WHERE ti.campaign_id = ? AND ti.status = 'merged'", (self.cid,)))
        return out

    def members(self, iid: int, generation: int, done_id: int) -> list[int]:
        """The runs merged into an instance's group when it was claimed for ``generation`` (the rows of the claim's
        transaction, before the next group it claimed)."""
        claim = self.tx.one(f"SELECT a.id, a.ts FROM audit_log a WHERE a.instance_id = ? AND a.{TASK_ROWS}"
                            f" AND a.to_status = {_PROCESSING} AND a.generation = ? ORDER BY a.id DESC LIMIT 1",
                            (iid, generation))
        if claim is None:
            return []
        out = []
        for status, run in self.tx.all(f"SELECT a.to_status, a.run_number FROM audit_log a WHERE a.id > ? AND a.id < ?"
                                       f" AND a.ts = ? AND a.{TASK_ROWS} ORDER BY a.id", (claim[0], done_id, claim[1])):
            if status == _PROCESSING:
                break
            if status == _MERGED:
                out.append(run)
        return sorted(out)

    # --- failures ------------------------------------------------------------------------------------------------

    def failures(self, store: Store, limit: int) -> Part[Failure]:
        groups = self.tx.all(
            f"SELECT a.instance_id, SUM(CASE WHEN a.entity = {_JOB} THEN 1 ELSE 0 END), MIN(a.id),"
            f" COALESCE(MAX(CASE WHEN a.entity = {_JOB} THEN a.id END), MAX(a.id))"
            f" FROM audit_log a WHERE {self.where()} AND a.to_status = {_FAILED} AND a.entity IN ({_TASK}, {_JOB})"
            f" AND (a.from_status IS NULL OR a.from_status <> {_FAILED}) GROUP BY a.instance_id ORDER BY MAX(a.id)",
            self.params)
        retries = {t.name: t.max_retries for t in store.list_tasks(self.campaign)}
        items = [self.failure(store, iid, int(attempts), first, last, retries)
                 for iid, attempts, first, last in groups[-limit:]]
        return Part(items, len(groups), self.history("--status failed"))

    def failure(self, store: Store, iid: int, attempts: int, first: int, last: int,
                retries: dict[str, int]) -> Failure:
        """One failed instance of the window and its fate, from its rows since its first failure and its jobs now;
        ``last``: its last job failure (whose reason says what went wrong), else its own."""
        row = self.tx.one("SELECT a.ts, a.task, a.run_number, a.reason, a.generation, a.entity FROM audit_log a"
                          " WHERE a.id = ?", (last,))
        texts = self.text([row[1], row[3]])
        task, run, fgen = texts[row[1]], int(row[2]), row[4]
        failed_jids = {r[0] for r in self.tx.all(
            f"SELECT DISTINCT a.jid FROM audit_log a WHERE a.instance_id = ? AND a.id BETWEEN ? AND ?"
            f" AND a.entity = {_JOB} AND a.to_status = {_FAILED}", (iid, first, last))}
        ops = []  # what operators did to it since (their rows name no generation)
        for ts, actor, status, reason in self.tx.all(
                "SELECT a.ts, a.actor, a.to_status, a.reason FROM audit_log a WHERE a.instance_id = ?"
                f" AND a.{TASK_ROWS} AND a.id >= ? AND a.generation IS NULL ORDER BY a.id", (iid, first)):
            said = self.text([actor, status, reason])
            ops.append((from_micros(ts), said[actor], said[status], said[reason]))
        info = store.instance(self.campaign, task, run)
        jobs = store.list_jobs(self.campaign, task, run=run)
        fate, how = _fate(info.status, info.generation, fgen, ops, [j for j in jobs if j.jid in failed_jids],
                          retries.get(task, 0), info.leader_run)
        return Failure(task, run, info.fill, attempts, from_micros(row[0]), texts[row[3]], fate, how)

    # --- operator actions ----------------------------------------------------------------------------------------

    def actions(self, limit: int) -> Part[OperatorAction]:
        """Instance transitions that name no generation (set, reprocess, skip...), one per call and task."""
        calls = self.tx.all(
            f"SELECT MIN(a.id), MAX(a.id), a.ts, a.actor, a.identity, a.task, a.from_status, a.to_status, a.reason"
            f" FROM audit_log a WHERE {self.where()} AND a.{TASK_ROWS} AND a.generation IS NULL"
            " AND a.from_status IS NOT NULL GROUP BY a.ts, a.actor, a.identity, a.task, a.from_status, a.to_status,"
            " a.reason ORDER BY MIN(a.id)", self.params)
        texts = self.text(v for c in calls for v in c[3:9])
        own: list[tuple[Any, ...]] = []
        cascades: dict[tuple[Any, ...], list[tuple[Any, ...]]] = defaultdict(list)
        for call in calls:
            reason = texts[call[8]]
            if reason.endswith(CASCADE):
                cascades[(call[2], call[3], call[4], reason[:-len(CASCADE)])].append(call)
            else:
                own.append(call)
        kept = own[-limit:]
        items = []
        for low, high, ts, actor, identity, task, before, after, reason in kept:
            key = (ts, actor, identity, texts[reason])
            follows = [Cascade(texts[c[5]], texts[c[6]], texts[c[7]], self.call_runs(c)) for c in cascades.pop(key, [])]
            items.append(OperatorAction(from_micros(ts), texts[actor], texts[identity], texts[task], texts[before],
                                        texts[after], self.call_runs((low, high, ts, actor, identity, task, before,
                                                                      after, reason)), texts[reason], follows))
        return Part(items, len(own), self.history("--kind task"))

    def call_runs(self, call: Sequence[Any]) -> list[int]:
        low, high, ts, actor, identity, task, before, after, reason = call
        return sorted(r[0] for r in self.tx.all(
            f"SELECT a.run_number FROM audit_log a WHERE a.id BETWEEN ? AND ? AND a.ts = ? AND a.actor = ?"
            f" AND a.identity = ? AND a.task = ? AND a.from_status = ? AND a.to_status = ? AND a.reason = ?"
            f" AND a.{TASK_ROWS} AND a.generation IS NULL", (low, high, ts, actor, identity, task, before, after,
                                                              reason)))

    # --- stages --------------------------------------------------------------------------------------------------

    def failed_heartbeats(self) -> list[StageEvent]:
        """The stages' error heartbeats of the window, one event per task, stage and message."""
        rows = self.tx.all("SELECT a.task, a.detail, a.reason, COUNT(*), MAX(a.id) FROM audit_log a"
                           f" WHERE {self.where()} AND a.entity = {_HANDLER} AND a.to_status = {_ERROR}"
                           " GROUP BY a.task, a.detail, a.reason ORDER BY MAX(a.id)", self.params)
        out = []
        for task, detail, reason, count, last in rows:
            ts, actor = self.tx.one("SELECT ts, actor FROM audit_log WHERE id = ?", (last,))
            texts = self.text([task, reason, actor])
            stage = str(_detail(detail).get("stage") or "")
            out.append(StageEvent("failed", texts[task], stage, from_micros(ts), texts[actor], texts[reason],
                                  int(count)))
        return out

    def killed(self) -> list[StageEvent]:
        """Claims of the window whose jobs were made in the claim's transaction (a handler's submit) but not
        submitted by the stage that claimed them: their first batch record came from another actor, or after the
        unsubmitted threshold (``monitoring.UNSUBMITTED_AFTER``), or has not come and the jobs have no batch id yet
        (an instance claimed again or aborted before its submit is no stage's loss)."""
        rows = self.tx.all(
            f"SELECT c.ts, c.task, c.run_number, c.actor, b.ts, b.actor FROM audit_log c JOIN ("
            f" SELECT j.instance_id AS iid, j.generation AS gen, MIN(CASE WHEN j.from_status IS NULL THEN j.ts END)"
            f" AS made, MIN(CASE WHEN j.from_status = j.to_status THEN j.id END) AS noted FROM audit_log j"
            f" WHERE j.id >= ? AND j.campaign_id = ? AND j.entity = {_JOB}"
            f" AND (j.from_status IS NULL OR j.from_status = j.to_status) GROUP BY j.instance_id, j.generation) n"
            f" ON n.iid = c.instance_id AND n.gen = c.generation AND n.made = c.ts"
            f" LEFT JOIN audit_log b ON b.id = n.noted"
            f" WHERE {self.where('c')} AND c.{TASK_ROWS} AND c.to_status = {_PROCESSING}"
            f" AND c.generation IS NOT NULL AND (b.actor <> c.actor OR b.ts - c.ts > ? OR (b.id IS NULL AND EXISTS ("
            f"SELECT 1 FROM job x WHERE x.instance_id = c.instance_id AND x.generation = c.generation"
            f" AND x.batch_id IS NULL)))"
            f" ORDER BY c.id", (self.lo, self.cid, *self.params, int(UNSUBMITTED_AFTER * _US)))
        texts = self.text(v for r in rows for v in (r[1], r[3], r[5]))
        return [StageEvent("killed", texts[task], "submit", from_micros(ts), texts[actor], run_number=run,
                           submitted_at=None if noted is None else from_micros(noted),
                           submitted_by=None if by is None else texts[by])
                for ts, task, run, actor, noted, by in rows]


def _detail(text: Optional[str]) -> dict[str, Any]:
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _fate(status: str, generation: int, failed_generation: Optional[int], ops: Sequence[tuple[str, str, str, str]],
          failed_jobs: Sequence[Any], retries: int, leader: Optional[int]) -> tuple[str, str]:
    """(fate, how) of an instance that failed: from its status now, the operators' rows since, and its failed jobs."""
    last = ops[-1] if ops else None
    by = f" by {last[1]}: {last[3]}" if last else ""
    again = failed_generation is not None and generation > failed_generation
    if status == "skipped":
        return "skipped", f"skipped{by}"
    if status == "done":
        if again:
            return "recovered", (f"recovered: reprocessed{by}, done in generation {generation}" if last else
                                 f"recovered: claimed again and done in generation {generation}")
        attempt = max((j.attempts for j in failed_jobs), default=0)
        return "recovered", f"recovered by a retry: attempt {attempt} done" if attempt > 1 else "recovered: done"
    if status == "failed":
        if last is not None and last[2] == "failed":
            return "failed", f"aborted{by}"
        return "failed", "failed for good: no retry left"
    if status in ("reprocess", "new"):
        return "reprocess", f"reprocessed{by}; waits for its submit" if last else "to be claimed again"
    if status == "merged":
        return "merged", f"merged into run {leader}'s group" if leader is not None else "merged into a group"
    if again:
        return "retrying", f"reprocessed{by}; processing again (generation {generation})" if last else \
            f"claimed again: processing (generation {generation})"
    waiting = [j for j in failed_jobs if j.status == "failed"]
    if waiting:
        attempt = max(j.attempts for j in waiting)
        return "waiting", f"waits for a resubmit (attempt {attempt} of {retries + 1} failed)"
    attempt = max((j.attempts for j in failed_jobs), default=0)
    states = sorted({j.status for j in failed_jobs})
    return "retrying", f"retrying: attempt {attempt} {'/'.join(states)}" if attempt else "processing"


__all__ = ["LIMIT", "Cascade", "DeadlineReport", "Failure", "NeedsAction", "OperatorAction", "Part", "Processed",
           "RunArrival", "ShiftReport", "StageEvent", "run_set", "shift_report"]
