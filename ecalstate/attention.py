"""The attention model: nothing waits silently.

Every task instance that is neither done nor skipped is either progressing, or it waits for a named reason, since
a known time, with the exact command that resolves it. Each reason's code has a policy (:data:`CATALOGUE`, a
campaign may change it): how long it may last before it is a problem. One computation, :func:`attention`, read by
every surface: ``ecalstate health`` (exit 1 on a problem), the web view's "needs action" page and grid marks, the
notifications, the handler stages and the export.

It reuses what the core knows: monitoring's health (stuck, failed, blocked, unsubmitted, retrying instances, silent
stages) and the claims' plan (why a group waits: its fill has not ended, a run of it is not ready, or it came late
to a group already processed). What a handler groups by is only known to the handler: each stage notes it in the
campaign's settings (:func:`note_handler`), where the campaign's policies live too (:class:`Policies`).

Where a policy says so, :func:`apply_policies` acts, audited under the actor ``ecalstate``: it closes a fill that
stayed open too long after its last run ended, and it reprocesses the group of a fill a late run belongs to.

What needs action (warnings and problems) is recorded as it changes (:func:`record`): an audit row per instance,
reason and level, which the exporter turns into ``attention`` points and the notifier tells once.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Optional

from .base import Ctx, campaign_id
from .catalog import campaign_settings, fill_last_ends, set_campaign_setting
from .claims import GROUPINGS, LUMI_KEY, Cause, Waiting, grouping
from .clock import human_time, seconds_between
from .errors import Conflict, Invalid, NotFound
from .inputs import input_waits
from .limits import MAX_DURATION, MAX_DURATION_TEXT
from .monitoring import (SILENT_AFTER, STUCK_AFTER, UNSUBMITTED_AFTER, changed_at, leader_failed, read_mark,
                         unfinished_instances, upstream_skipped, write_mark)
from .results import AT_RISK, LATE_RUNS, MISSED, Health, TaskSettings
from .store import Store

#: a reason's levels, least first: ``info`` (waiting as expected), ``warning`` (someone should look), ``problem``
#: (it lasted too long, or cannot resolve itself: ``health`` exits 1)
LEVELS = ("info", "warning", "problem")
#: the actor of what a policy does (closing a fill, regrouping a late run)
POLICY_ACTOR = "ecalstate"
#: the campaign settings' keys this module keeps: the policies, and what each task's handler groups by
POLICY_KEY = "attention"
HANDLERS_KEY = "handlers"
#: the entity of the audit rows that record what needs action (exported as ``attention`` points)
ENTITY = "attention"
#: the level of an audit row that says a reason is gone
CLEAR = "clear"


@dataclass(frozen=True)
class Code:
    """One kind of reason, as data: what it waits for, its default policy and the command that resolves it.

    ``level`` is its level while it lasts less than ``problem_after`` seconds (None: it never becomes a problem by
    itself; 0: a problem at once). ``command`` is a template filled in with the instance's names: ``{campaign}``,
    ``{task}``, ``{run}``, ``{fill}``, ``{upstream}``, ``{leader}``, ``{member}``, ``{handler}`` (the command line of
    the task's handler), ``{stage}`` and ``{source}`` (the campaign a task takes its inputs from).
    """

    code: str
    waits_for: str
    level: str
    problem_after: Optional[float]
    command: str


#: the reasons, their default policies and their commands; a test checks each has both
CODES = (
    Code("upstream", "an upstream task", "info", None, "{handler} -c {campaign} {stage}"),
    Code("fill-open", "its fill to end", "info", 6 * 3600,
         'ecalstate run close-fill -c {campaign} --fill {fill} --reason "..."'),
    Code("group-incomplete", "the rest of its group", "info", 12 * 3600,
         'ecalstate set -c {campaign} --task {task} --runs {member} skipped --reason "..."'),
    Code("late-member", "its group, already processed without it (a late run)", "problem", 0,
         'ecalstate reprocess -c {campaign} --task {task} --fill {fill} --downstream --reason "..."'),
    Code("failed", "an operator: it failed with no retry left", "problem", 0,
         'ecalstate reprocess -c {campaign} --task {task} --runs {run} --reason "..."'),
    Code("blocked", "an upstream task that failed for the run", "warning", None,
         'ecalstate reprocess -c {campaign} --task {upstream} --runs {run} --reason "..."'),
    Code("no-upstream", "an upstream task that will never run for the run (skipped)", "problem", 0,
         'ecalstate set -c {campaign} --task {task} --runs {run} skipped --reason "..."'),
    Code("stuck", "job progress that does not come (stuck)", "warning", STUCK_AFTER,
         'ecalstate reprocess -c {campaign} --task {task} --runs {run} --reason "..."'),
    Code("unsubmitted", "its jobs to be submitted (a submit stage was killed)", "warning", UNSUBMITTED_AFTER,
         "{handler} -c {campaign} submit"),
    Code("retrying", "a resubmit of its failed jobs", "info", None, "{handler} -c {campaign} resubmit"),
    Code("leader-failed", "its group leader, which failed", "problem", 0,
         'ecalstate reprocess -c {campaign} --task {task} --runs {leader} --reason "..."'),
    Code("deadline-risk", "its deadline, which is near", "warning", None, "{handler} -c {campaign} {stage}"),
    Code("deadline-missed", "its deadline, which passed", "problem", 0, "{handler} -c {campaign} {stage}"),
    Code("cadence-gap", "the task's cadence (nothing done for too long)", "warning", None,
         "{handler} -c {campaign} {stage}"),
    Code("ordered", "an earlier run of its task (an ordered task is claimed in run order)", "info", 12 * 3600,
         'ecalstate set -c {campaign} --task {task} --runs {member} skipped --reason "..."'),
    Code("approval", "an expert's approval (a gate)", "warning", 12 * 3600,
         'ecalstate approve -c {campaign} --task {task} --runs {run} --reason "..."'),
    Code("inputs", "an input task of another campaign (read only: that campaign's processing)", "info", None,
         "ecalstate status -c {source} --task {upstream} --runs {run}"),
)
CATALOGUE: dict[str, Code] = {c.code: c for c in CODES}

#: the command that regenerates docs/attention.md (a test fails when the file is stale)
DOC_COMMAND = "python -c 'from ecalstate.attention import document; print(document(), end=\"\")' > docs/attention.md"


def document() -> str:
    """docs/attention.md: the reason catalogue rendered from :data:`CODES`, so what a shifter reads is what
    ``health`` applies."""
    lines = [
        "# Why a task instance waits: the reason catalogue",
        "",
        "Generated from `CODES` in `ecalstate/attention.py` (do not edit by hand):",
        "",
        f"    {DOC_COMMAND}",
        "",
        "Every task instance that is neither done nor skipped is either progressing or waits for one of these",
        "reasons. `ecalstate health` prints each problem and warning with its command (`--all`: the expected waits",
        "too; `--json`: `needs_action`), the web view's attention page and grid show them, the notifications tell",
        "each once, and the export writes them as `attention` points. A reason's level rises to `problem` once it",
        "has lasted longer than its campaign's policy (`ecalstate campaign update -c C --problem-after",
        "CODE=DURATION|never`); `health` exits 1 on any problem.",
        "",
        "| reason | waits for | level | a problem after | the command that resolves it |",
        "| --- | --- | --- | --- | --- |",
    ]
    for c in CODES:
        after = "never by itself" if c.problem_after is None else (
            "at once" if c.problem_after == 0 else _duration(c.problem_after))
        lines.append(f"| `{c.code}` | {c.waits_for} | {c.level} | {after} | `{c.command.replace('|', '&#124;')}` |")
    lines += ["", "In a command, `{handler}` is the command line of the task's workflow script (as its stages noted",
              "it), `{stage}` the stage that moves the instance on, `{upstream}` the task it waits for, `{member}` the",
              "run that holds its group back, `{source}` the campaign a task takes its inputs from."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ results


@dataclass(frozen=True)
class Reason:
    """Why an instance waits: the code, its level now, since when, what it waits for (naming the instance) and the
    exact command that resolves it."""

    code: str
    level: str
    since: str
    message: str
    command: str

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "level": self.level, "since": self.since, "message": self.message,
                "command": self.command}


@dataclass(frozen=True)
class InstanceAttention:
    """A task instance neither done nor skipped: progressing (no reason), or its reasons, the worst first."""

    campaign: str
    task: str
    run_number: int
    status: str
    fill: Optional[int] = None
    reasons: tuple[Reason, ...] = ()

    @property
    def progressing(self) -> bool:
        return not self.reasons

    @property
    def level(self) -> Optional[str]:
        """The worst level of its reasons (None while it progresses)."""
        return self.reasons[0].level if self.reasons else None

    def to_dict(self) -> dict[str, Any]:
        return {"campaign": self.campaign, "task": self.task, "run_number": self.run_number, "status": self.status,
                "fill": self.fill, "level": self.level, "reasons": [r.to_dict() for r in self.reasons]}


@dataclass(frozen=True)
class Action:
    """What a policy does now: close a fill (``task`` None) or regroup a task's fill (a late run came)."""

    campaign: str
    kind: str
    fill: int
    task: Optional[str]
    reason: str


@dataclass
class Attention:
    """The computation's result: every instance that needs attention (all unfinished ones when asked), the health
    it was made from (handler stages), and what the policies would do now."""

    items: list[InstanceAttention]
    health: Health
    actions: list[Action] = field(default_factory=list)
    #: the store's time it was computed at, and the audit's newest id before (how fresh it is, for :func:`record`)
    at: str = ""
    upto: int = 0

    def reasons(self, level: Optional[str] = None) -> list[tuple[InstanceAttention, Reason]]:
        """(instance, reason) pairs, worst first; only those of ``level`` when given."""
        pairs = [(i, r) for i in self.items for r in i.reasons if level is None or r.level == level]
        return sorted(pairs, key=lambda p: (_RANK[p[1].level], p[0].campaign, p[0].task, p[0].run_number))

    @property
    def problems(self) -> list[tuple[InstanceAttention, Reason]]:
        return self.reasons("problem")

    @property
    def warnings(self) -> list[tuple[InstanceAttention, Reason]]:
        return self.reasons("warning")

    @property
    def ok(self) -> bool:
        """No problem: nothing waits too long or for ever, no handler stage silent or failing."""
        return not (self.problems or self.health.silent or self.health.failing)

    def counts(self) -> dict[str, int]:
        """Reasons per level."""
        out = dict.fromkeys(LEVELS, 0)
        for _, reason in self.reasons():
            out[reason.level] += 1
        return out

    def by_instance(self) -> dict[tuple[str, str, int], InstanceAttention]:
        """(campaign, task, run) -> its entry."""
        return {(i.campaign, i.task, i.run_number): i for i in self.items}


# ------------------------------------------------------------------ policies


@dataclass(frozen=True)
class Policies:
    """A campaign's policies: per code, after how long it is a problem (overriding :data:`CATALOGUE`), after how
    long an open fill is closed by ecalstate (None: never), and what a late run gets (per task, or the default)."""

    after: Mapping[str, Optional[float]] = field(default_factory=dict)
    close_fills_after: Optional[float] = None
    late_runs: str = "flag"
    late_runs_by_task: Mapping[str, str] = field(default_factory=dict)

    def problem_after(self, code: str) -> Optional[float]:
        return self.after[code] if code in self.after else CATALOGUE[code].problem_after

    def late_runs_of(self, task: str) -> str:
        return self.late_runs_by_task.get(task, self.late_runs)

    def to_dict(self) -> dict[str, Any]:
        return {"after": dict(self.after), "close_fills_after": self.close_fills_after, "late_runs": self.late_runs,
                "late_runs_by_task": dict(self.late_runs_by_task)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policies:
        after = {k: (None if v is None else float(v)) for k, v in dict(data.get("after") or {}).items()
                 if k in CATALOGUE}
        close = data.get("close_fills_after")
        return cls(after, None if close is None else float(close), str(data.get("late_runs") or "flag"),
                   dict(data.get("late_runs_by_task") or {}))

    def effective(self) -> list[tuple[str, str, Optional[float], str]]:
        """Every code with its level, after how long it is a problem here, and its command template."""
        return [(c.code, c.level, self.problem_after(c.code), c.command) for c in CODES]


def _check_seconds(value: Optional[float], what: str) -> None:
    if value is not None and not 0 <= value <= MAX_DURATION:
        raise Invalid(f"invalid {what} {value}: must be >= 0 and {MAX_DURATION_TEXT}")


#: "leave this policy as it is" (None means "never")
KEEP: Any = object()


def policies(store: Store, campaign: str) -> Policies:
    """The campaign's policies (the catalogue's defaults where it sets none)."""
    with store.db.tx(write=False) as tx:
        return Policies.from_dict(campaign_settings(tx, campaign_id(tx, campaign)).get(POLICY_KEY) or {})


def set_policies(
    store: Store, campaign: str, after: Optional[Mapping[str, Optional[float]]] = None,
    close_fills_after: Any = KEEP, late_runs: Optional[str] = None, task: Optional[str] = None,
) -> Policies:
    """Change a campaign's policies: ``after`` (code -> seconds, None: never a problem by itself), the fills closed
    after ``close_fills_after`` seconds (None: never), what ``late_runs`` get (for ``task`` only when given)."""
    for code, seconds in (after or {}).items():
        if code not in CATALOGUE:
            raise Invalid(f"unknown reason {code!r} (valid: {', '.join(CATALOGUE)})")
        _check_seconds(seconds, f"time for {code}")
    if close_fills_after is not KEEP:
        _check_seconds(close_fills_after, "time to close fills after")
    if late_runs is not None and late_runs not in LATE_RUNS:
        raise Invalid(f"invalid late runs policy {late_runs!r} (valid: {', '.join(LATE_RUNS)})")
    if task is not None and late_runs is None:
        raise Invalid("a task's own policy is what its late runs get: give late_runs with the task")

    def body(ctx: Ctx) -> Policies:
        cid = campaign_id(ctx.tx, campaign)
        if task is not None and task not in _task_names(ctx, cid):
            raise NotFound(f"unknown task {task!r} in campaign {campaign!r}")
        now = Policies.from_dict(campaign_settings(ctx.tx, cid).get(POLICY_KEY) or {})
        by_task = dict(now.late_runs_by_task)
        if task is not None and late_runs is not None:
            by_task[task] = late_runs
        new = Policies({**now.after, **(after or {})},
                       now.close_fills_after if close_fills_after is KEEP else close_fills_after,
                       late_runs if late_runs is not None and task is None else now.late_runs, by_task)
        set_campaign_setting(ctx, cid, POLICY_KEY, new.to_dict())
        return new

    return store.write("attention.policies", body)


def _task_names(ctx: Ctx, cid: int) -> set[str]:
    return {r[0] for r in ctx.tx.all("SELECT name FROM task WHERE campaign_id = ?", (cid,))}


# ------------------------------------------------------------------ what the handlers group by


@dataclass(frozen=True)
class HandlerInfo:
    """What a task's handler told the store: how it groups runs, and the command line that runs its stages."""

    group_by: Optional[str] = None
    lumi_target: Optional[float] = None
    lumi_key: str = LUMI_KEY
    script: Optional[str] = None

    def command(self, task: str) -> str:
        return f"python3 {self.script}" if self.script else f"python3 <the {task} handler>"

    def to_dict(self) -> dict[str, Any]:
        return {"group_by": self.group_by, "lumi_target": self.lumi_target, "lumi_key": self.lumi_key,
                "script": self.script}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HandlerInfo:
        by = data.get("group_by")
        target = data.get("lumi_target")
        return cls(by if by in GROUPINGS else None, None if target is None else float(target),
                   str(data.get("lumi_key") or LUMI_KEY), data.get("script") or None)


def script_of(path: Optional[str]) -> Optional[str]:
    """A handler's file as the command in a reason names it: relative to here when below it (Jenkins' workspace)."""
    if not path:
        return None
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def note_handler(store: Store, campaign: str, task: str, info: HandlerInfo) -> None:
    """Remember what ``task``'s handler groups by and how its stages are run (a write only when it changed)."""
    with store.db.tx(write=False) as tx:
        known = campaign_settings(tx, campaign_id(tx, campaign)).get(HANDLERS_KEY) or {}
    if known.get(task) == info.to_dict():
        return

    def body(ctx: Ctx) -> None:
        cid = campaign_id(ctx.tx, campaign)
        handlers = dict(campaign_settings(ctx.tx, cid).get(HANDLERS_KEY) or {})
        handlers[task] = info.to_dict()
        set_campaign_setting(ctx, cid, HANDLERS_KEY, handlers)

    store.write("attention.handler", body)


# ------------------------------------------------------------------ the computation


@dataclass
class _Campaign:
    """What one campaign's computation reads once."""

    name: str
    cid: int
    policies: Policies
    handlers: dict[str, HandlerInfo]
    now: str
    commands: dict[str, str] = field(default_factory=dict)

    def handler(self, task: str) -> str:
        command = self.commands.get(task)
        if command is None:
            command = self.commands[task] = self.handlers.get(task, HandlerInfo()).command(task)
        return command

    def reason(self, code: str, since: str, message: str, **names: Any) -> Reason:
        """A reason of ``code`` with its level now (its policy against its age) and its command filled in."""
        kind = CATALOGUE[code]
        after = self.policies.problem_after(code)
        late = after is not None and seconds_between(since, self.now) >= after
        if "handler" not in names:
            names["handler"] = self.handler(names.get("task", ""))
        return Reason(code, "problem" if late else kind.level, since, message,
                      kind.command.format_map(_Names({"campaign": self.name, "stage": "submit", **names})))


class _Names(dict[str, Any]):
    """A command's names; one the reason does not know is left empty."""

    def __missing__(self, key: str) -> str:
        return ""


#: a level's rank, worst first when sorted by it
_RANK = {level: -i for i, level in enumerate(LEVELS)}


class _Items:
    """Reasons gathered per instance, each code once: (task, run) -> [status, fill, {code: reason}]."""

    def __init__(self, campaign: str) -> None:
        self.campaign = campaign
        self.found: dict[tuple[str, int], list[Any]] = {}

    def add(self, task: str, run: int, status: str, reason: Reason, fill: Optional[int] = None) -> None:
        entry = self.found.get((task, run))
        if entry is None:
            self.found[(task, run)] = [status, fill, {reason.code: reason}]
            return
        entry[2].setdefault(reason.code, reason)
        if fill is not None:
            entry[1] = fill

    def note(self, task: str, run: int, status: str, fill: Optional[int]) -> None:
        """An unfinished instance, whether it waits or progresses (its status as read now)."""
        entry = self.found.get((task, run))
        if entry is None:
            self.found[(task, run)] = [status, fill, {}]
        else:
            entry[0], entry[1] = status, fill if fill is not None else entry[1]

    def waits(self, task: str, run: int) -> bool:
        entry = self.found.get((task, run))
        return entry is not None and bool(entry[2])

    def items(self) -> list[InstanceAttention]:
        out = []
        for (task, run), (status, fill, found) in self.found.items():
            reasons = tuple(found.values()) if len(found) < 2 else tuple(
                sorted(found.values(), key=lambda r: (_RANK[r.level], r.code)))
            out.append(InstanceAttention(self.campaign, task, run, status, fill, reasons))
        return out


def attention(
    store: Store,
    campaign: Optional[str] = None,
    *,
    tasks: Optional[Sequence[str]] = None,
    runs: Optional[Sequence[int]] = None,
    everything: bool = False,
    stuck_after: Optional[float] = None,
    silent_after: float = SILENT_AFTER,
    health: Optional[Health] = None,
) -> Attention:
    """Why each unfinished task instance waits (of ``campaign``, or every campaign), from a few queries.

    By default the instances that wait for a reason of their own are listed: those waiting only for an upstream
    task that is itself progressing (most of a campaign not processed yet) are left out, unless the campaign gives
    that reason a policy. ``everything`` lists every unfinished instance, the progressing ones too; ``runs`` does
    for those runs (a page of the grid); ``tasks`` keeps those tasks. ``stuck_after`` overrides the policy of
    ``stuck`` (``health --stuck-after``); ``health`` is the core's report when the caller has read it already.
    """
    upto = _newest_audit(store)
    now = store.clock()
    with store.db.tx(write=False) as tx:
        names = [campaign] if campaign is not None else [
            r[0] for r in tx.all("SELECT name FROM campaign ORDER BY name")]
        scopes = []
        for name in names:
            cid = campaign_id(tx, name)
            settings = campaign_settings(tx, cid)
            handlers = {t: HandlerInfo.from_dict(d) for t, d in dict(settings.get(HANDLERS_KEY) or {}).items()}
            scopes.append(_Campaign(name, cid, Policies.from_dict(settings.get(POLICY_KEY) or {}), handlers, now))
    if stuck_after is not None:  # health --stuck-after: how long without progress is a problem, here
        for scope in scopes:
            scope.policies = replace(scope.policies, after={**scope.policies.after, "stuck": stuck_after})
    stuck = stuck_after if stuck_after is not None else (
        scopes[0].policies.problem_after("stuck") if len(scopes) == 1 else None)
    report = health if health is not None else store.health(
        campaign, STUCK_AFTER if stuck is None else stuck, silent_after,
        _unsubmitted_after(scopes[0].policies) if len(scopes) == 1 else UNSUBMITTED_AFTER)
    items: list[InstanceAttention] = []
    actions: list[Action] = []
    for scope in scopes:
        found = _Items(scope.name)
        _from_health(scope, report, found)
        _from_store(store, scope, found, runs, everything)
        _from_deadlines(store, scope, found, runs)
        _from_kinds(store, scope, found)
        actions += _from_plans(store, scope, found, tasks)
        wanted = None if tasks is None else set(tasks)
        items += [i for i in found.items() if wanted is None or i.task in wanted]
    items.sort(key=lambda i: (i.campaign, i.task, i.run_number))
    return Attention(items, report, actions, now, upto)


def pending_actions(store: Store, campaign: str, tasks: Optional[Sequence[str]] = None) -> list[Action]:
    """What the campaign's policies would do now for ``tasks`` (all: None): the grouped tasks' plans only, without
    the rest of the computation (a submit stage asks this before claiming)."""
    with store.db.tx(write=False) as tx:
        cid = campaign_id(tx, campaign)
        settings = campaign_settings(tx, cid)
    scope = _Campaign(campaign, cid, Policies.from_dict(settings.get(POLICY_KEY) or {}),
                      {t: HandlerInfo.from_dict(d) for t, d in dict(settings.get(HANDLERS_KEY) or {}).items()},
                      store.clock())
    if scope.policies.close_fills_after is None and "regroup" not in (
            scope.policies.late_runs, *scope.policies.late_runs_by_task.values()):
        return []  # no policy acts: nothing to read
    return _from_plans(store, scope, _Items(campaign), tasks)


def _unsubmitted_after(policy: Policies) -> float:
    after = policy.problem_after("unsubmitted")
    return UNSUBMITTED_AFTER if after is None else after


def _newest_audit(store: Store) -> int:
    with store.db.tx(write=False) as tx:
        return int(tx.scalar("SELECT COALESCE(MAX(id), 0) FROM audit_log") or 0)


def _from_health(scope: _Campaign, health: Health, found: _Items) -> None:
    """Stuck, unsubmitted, failed, retrying and blocked instances, as the core's health found them."""
    mine = scope.name
    for s in health.stuck:
        if s.campaign == mine:
            found.add(s.task, s.run_number, "processing", scope.reason(
                "stuck", s.since, f"{s.task} run {s.run_number} is stuck: processing without job progress since"
                f" {human_time(s.since)} ({s.jobs} jobs)", task=s.task, run=s.run_number))
    for s in health.unsubmitted:
        if s.campaign == mine:
            found.add(s.task, s.run_number, "processing", scope.reason(
                "unsubmitted", s.since, f"{s.task} run {s.run_number} has {s.jobs} jobs never submitted since"
                f" {human_time(s.since)} (a killed submit stage)", task=s.task, run=s.run_number))
    for s in health.failed:
        if s.campaign == mine:
            said = (f"failed with no retry left ({s.jobs} failed jobs)" if s.jobs else
                    "failed without a job (rejected at its gate, or set failed by hand)")
            found.add(s.task, s.run_number, "failed", scope.reason(
                "failed", s.since, f"{s.task} run {s.run_number} {said}", task=s.task, run=s.run_number))
    for s in health.retrying:
        if s.campaign == mine:
            found.add(s.task, s.run_number, "processing", scope.reason(
                "retrying", s.since, f"{s.task} run {s.run_number} waits for a resubmit of {s.jobs} failed jobs",
                task=s.task, run=s.run_number, stage="resubmit"))
    for b in health.blocked_by:
        if b.campaign == mine:
            found.add(b.task, b.run_number, b.status, scope.reason(
                "blocked", b.since, f"{b.task} run {b.run_number} is blocked: its upstream task {b.upstream} failed"
                " for the run", task=b.task, run=b.run_number, upstream=b.upstream))


def _from_store(store: Store, scope: _Campaign, found: _Items, runs: Optional[Sequence[int]],
                everything: bool) -> None:
    """Merged runs of a failed leader, instances under a skipped upstream task and, when asked, every unfinished
    instance with the upstream task it waits for."""
    scan = everything or runs is not None or scope.policies.problem_after("upstream") is not None
    with store.db.tx(write=False) as tx:
        lost = leader_failed(tx, scope.cid)
        orphans = upstream_skipped(tx, scope.cid)
        rows = unfinished_instances(tx, scope.cid, None if everything else runs) if scan else []
        inputs = input_waits(tx, scope.cid)
    for task, run, fill, leader, since in lost:
        found.add(task, run, "merged", scope.reason(
            "leader-failed", since, f"{task} run {run} was merged into run {leader}, whose {task} failed: the run is"
            " lost with its group", task=task, run=run, leader=leader), fill)
    for task, run, upstream, since in orphans:
        found.add(task, run, "new", scope.reason(
            "no-upstream", since, f"{task} run {run} can never run: its upstream task {upstream} is skipped for the"
            " run", task=task, run=run, upstream=upstream))
    for task, run, fill, status, changed, _leader, leader_status, waiting in rows:
        found.note(task, run, status, fill)
        if waiting is None or found.waits(task, run):
            continue
        upstream, _, state = str(waiting).partition(" ")
        if state == "missing":
            found.add(task, run, status, scope.reason(
                "no-upstream", changed, f"{task} run {run} can never run: its upstream task {upstream} has no"
                " instance for the run", task=task, run=run, upstream=upstream))
        elif state not in ("failed", "skipped", "merged into a failed run"):
            stage = "check" if state in ("processing", "merged into a processing run") else "submit"
            found.add(task, run, status, scope.reason(
                "upstream", changed, f"{task} run {run} waits for its upstream task {upstream} ({state})",
                task=task, run=run, upstream=upstream, handler=scope.handler(upstream), stage=stage))
    listed = everything or scope.policies.problem_after("inputs") is not None
    for task, run, status, waiting, changed in inputs:
        where, _, state = waiting.partition(" ")
        source, _, upstream = where.partition("/")
        if state in ("missing", "skipped"):  # no cascade crosses campaigns: it would wait for ever
            found.add(task, run, status, scope.reason(
                "no-upstream", changed, f"{task} run {run} can never run: its input task {upstream} of campaign"
                f" {source} is {'skipped' if state == 'skipped' else 'not there'} for the run", task=task, run=run,
                upstream=where))
        elif listed or (runs is not None and run in runs):
            found.add(task, run, status, scope.reason(
                "inputs", changed, f"{task} run {run} waits for its input task {upstream} of campaign {source}"
                f" ({state})", task=task, run=run, upstream=upstream, source=source))


#: the stage that moves an unfinished instance on, by its status (a failed one has its own reason)
_NEXT_STAGE = {"new": "submit", "reprocess": "submit", "processing": "check"}


def _from_deadlines(store: Store, scope: _Campaign, found: _Items, runs: Optional[Sequence[int]]) -> None:
    """Instances at risk of missing their task's deadline or past it (``Store.deadlines``; a merged run follows its
    leader, which carries the reason), and tasks whose cadence has a gap (``Store.cadence_gaps``: on the task's
    newest unfinished instance, else its run 0, the task as a whole)."""
    for due in store.deadlines(scope.name, runs=runs, now=scope.now, finished=False, states=(AT_RISK, MISSED)):
        if due.leader_run is not None or due.status not in _NEXT_STAGE:
            continue
        task, run = due.task, due.run_number
        names = {"task": task, "run": run, "stage": _NEXT_STAGE[due.status]}
        when = f"{human_time(due.deadline)}, {due.reference_kind} {human_time(due.reference)}"
        if due.state == MISSED:
            found.add(task, run, due.status, scope.reason(
                "deadline-missed", due.deadline or scope.now, f"{task} run {run} missed its deadline ({when})",
                **names), due.fill)
        else:
            found.add(task, run, due.status, scope.reason(
                "deadline-risk", due.warn_at or scope.now, f"{task} run {run} is at risk of missing its deadline"
                f" ({when})", **names), due.fill)
    for gap in store.cadence_gaps(scope.name, now=scope.now):
        with store.db.tx(write=False) as tx:
            row = tx.one("SELECT r.run_number, ti.status, r.fill FROM task_instance ti JOIN run r ON r.id = ti.run_id"
                         " JOIN task t ON t.id = ti.task_id WHERE t.campaign_id = ? AND t.name = ?"
                         " AND ti.status IN ('new', 'reprocess', 'processing') ORDER BY r.run_number DESC LIMIT 1",
                         (scope.cid, gap.task))
        run, status, fill = row if row is not None else (0, "new", None)
        last = f"its last done {human_time(gap.last_done)}" if gap.last_done else "never done"
        found.add(gap.task, run, status, scope.reason(
            "cadence-gap", gap.since, f"{gap.task} run {run}: the task must be done every {_duration(gap.cadence_s)},"
            f" {last}" + ("" if row is not None else " (no run waits for it: run 0 is the task as a whole)"),
            task=gap.task, run=run, stage=_NEXT_STAGE.get(status, "submit")), fill)


def _from_kinds(store: Store, scope: _Campaign, found: _Items) -> None:
    """Runs held back by their task's kind: an ordered task's runs that wait for an earlier one (as the claims' plan
    says, with the task's handler's grouping), a gate's instances awaiting an expert's approval; each waits since
    it became ready (:meth:`~ecalstate.claims.Claims.ready_since`)."""
    with store.db.tx(write=False) as tx:
        kinds = [(name, TaskSettings.from_json(text)) for name, text in
                 tx.all("SELECT name, settings FROM task WHERE campaign_id = ? ORDER BY name", (scope.cid,))]
    for task, settings in kinds:
        if not (settings.ordered or settings.gate):
            continue
        eligible = {e.run_number: e for e in store.eligible(scope.name, task)}
        held: dict[int, Optional[Cause]]
        if settings.gate:
            held = dict.fromkeys(eligible)
        else:
            info = scope.handlers.get(task, HandlerInfo())
            plan = store.plan(scope.name, task, grouping(info.group_by, info.lumi_target, info.lumi_key))
            held = {run: cause for w in plan.waiting for cause in w.causes if cause.kind == "ordered"
                    for run in w.runs if run in eligible}
        since = store.ready_since(scope.name, task, list(held)) if held else {}
        for run, cause in held.items():
            member = eligible[run]
            when = since.get(run) or scope.now
            if cause is None:
                reason = scope.reason("approval", when, f"{task} run {run} awaits an expert's approval (a gate)",
                                      task=task, run=run)
            else:
                reason = scope.reason("ordered", when, f"{task} run {run} waits for run {cause.run} ({cause.status}):"
                                      " an ordered task is claimed in run order", task=task, run=run, member=cause.run)
            found.add(task, run, member.status, reason, member.fill)


def _from_plans(store: Store, scope: _Campaign, found: _Items, tasks: Optional[Sequence[str]]) -> list[Action]:
    """Why the groups of the tasks grouped by fill, lumi or era wait, as the claims' plan says; what the policies
    do about it."""
    actions: list[Action] = []
    closing: dict[int, Action] = {}
    for task, info in sorted(scope.handlers.items()):
        if info.group_by in (None, "run") or (tasks is not None and task not in tasks):
            continue
        try:
            plan = store.plan(scope.name, task, grouping(info.group_by, info.lumi_target, info.lumi_key))
        except (NotFound, Invalid):  # a task removed, or a grouping this version does not know
            continue
        if not plan.waiting:
            continue
        eligible = {e.run_number: e for e in store.eligible(scope.name, task)}
        fills = sorted({e.fill for e in eligible.values() if e.fill is not None})
        with store.db.tx(write=False) as tx:
            ends = fill_last_ends(tx, scope.cid, fills) if fills else {}
            since = changed_at(tx, scope.cid, task, [r for w in plan.waiting for r in w.runs])
        for waiting in plan.waiting:
            for run in waiting.runs:
                member = eligible.get(run)
                if member is None:
                    continue
                for reason in _group_reasons(scope, task, run, member.fill, since.get(run, scope.now), waiting, ends):
                    found.add(task, run, member.status, reason, member.fill)
            actions += _policy_actions(scope, task, waiting, eligible, ends, closing)
    return actions


def _group_reasons(scope: _Campaign, task: str, run: int, fill: Optional[int], since: str, waiting: Waiting,
                   ends: Mapping[int, Optional[str]]) -> list[Reason]:
    """The reasons of one eligible run of a waiting group (``since``: its instance's last change)."""
    out = []
    processed = [c for c in waiting.causes if c.kind == "processed"]
    if processed and fill is not None:
        first = processed[-1]
        policy = scope.policies.late_runs_of(task)
        then = " (the campaign's policy regroups it at the next submit stage)" if policy == "regroup" else ""
        out.append(scope.reason(
            "late-member", since, f"{task} run {run} came late: fill {fill} was processed without it (run {first.run}"
            f" {first.status}){then}", task=task, run=run, fill=fill))
    for cause in waiting.causes:
        if cause.kind == "fill-open" and fill is not None and not processed:
            end = ends.get(fill)
            taken = end is None
            out.append(scope.reason(
                "fill-open", end or scope.now,
                f"{task} run {run} waits for fill {fill} to end" + (" (a run of it is still being taken)" if taken
                                                                    else f" (its last run ended {human_time(end)})"),
                task=task, run=run, fill=fill))
    others = [c for c in waiting.causes if c.kind in ("upstream", "ongoing", "claiming", "era-open")]
    if others and not processed:
        member = next((c.run for c in others if c.run is not None), run)
        out.append(scope.reason(
            "group-incomplete", since, f"{task} run {run} waits for the rest of its group ({waiting.group}): "
            + "; ".join(c.text for c in others), task=task, run=run, fill=fill or "", member=member))
    return out


def _policy_actions(scope: _Campaign, task: str, waiting: Waiting, eligible: Mapping[int, Any],
                    ends: Mapping[int, Optional[str]], closing: dict[int, Action]) -> list[Action]:
    """What the campaign's policies do about a waiting group: close its fill, or regroup it."""
    out: list[Action] = []
    fills = {eligible[r].fill for r in waiting.runs if r in eligible and eligible[r].fill is not None}
    for fill in sorted(fills):
        kinds = {c.kind for c in waiting.causes}
        if "processed" in kinds:
            if scope.policies.late_runs_of(task) == "regroup":
                late = ", ".join(str(r) for r in waiting.runs)
                out.append(Action(scope.name, "regroup", fill, task, f"late run {late} of fill {fill}: regrouped by the"
                                  " campaign's policy (late runs: regroup)"))
            continue
        after, end = scope.policies.close_fills_after, ends.get(fill)
        if "fill-open" in kinds and after is not None and end is not None and fill not in closing \
                and seconds_between(end, scope.now) >= after:
            closing[fill] = Action(scope.name, "close-fill", fill, None,
                                   "closed by the campaign's policy: the fill's last run ended"
                                   f" {human_time(end)}, nothing since for {_duration(after)} (close fills after"
                                   f" {_duration(after)})")
            out.append(closing[fill])
    return out


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


# ------------------------------------------------------------------ policies acting


def apply_policies(store: Store, actions: Iterable[Action]) -> list[Action]:
    """Do what the policies say (close fills, regroup late runs), audited under :data:`POLICY_ACTOR`; the actions
    done. A regroup waits while the fill's group is being processed (never aborted); a fill closed meanwhile is
    not closed again."""
    acting = Store(store.db, actor=POLICY_ACTOR)
    acting.clock = store.clock  # type: ignore[method-assign]  # the caller's clock (tests move it)
    done = []
    for action in actions:
        try:
            if action.kind == "close-fill":
                if acting.close_fill(action.campaign, action.fill, action.reason):
                    done.append(action)
            elif action.task is not None:
                result = acting.reprocess(action.campaign, action.task, fill=action.fill, downstream=True,
                                          reason=action.reason, only_from=("done", "failed", "merged"))
                if result.changed:
                    done.append(action)
        except Conflict:  # being processed, or changed meanwhile: the next look decides again
            continue
    return done


# ------------------------------------------------------------------ recording what needs action


def _ledger_key(campaign: str) -> str:
    return f"attention:{campaign}"


def recorded(store: Store, campaign: str) -> dict[str, dict[str, list[Any]]]:
    """What was last recorded as needing action in ``campaign``: task -> "run:code" -> [level, since]."""
    with store.db.tx(write=False) as tx:
        campaign_id(tx, campaign)
        state = _read_ledger(read_mark(tx, _ledger_key(campaign)))
    return {task: dict(entry.get("told") or {}) for task, entry in state.items()}


def _read_ledger(text: Optional[str]) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        data = {}
    return data if isinstance(data, dict) else {}


def record(store: Store, campaign: str, result: Attention, tasks: Optional[Sequence[str]] = None) -> int:
    """Record what changed in what needs action (warnings and problems) of ``campaign``'s ``tasks`` (all: None): one
    audit row per instance, reason and level that appeared, changed level or cleared, in one transaction. A
    result older than what another caller recorded is not recorded (it would undo a fresher one). The rows
    written."""
    now_told: dict[str, dict[str, list[Any]]] = defaultdict(dict)
    details: dict[tuple[str, str], tuple[Reason, InstanceAttention]] = {}
    for item, reason in result.reasons():
        if item.campaign != campaign or reason.level == "info" or (tasks is not None and item.task not in tasks):
            continue
        key = f"{item.run_number}:{reason.code}"
        now_told[item.task][key] = [reason.level, reason.since]
        details[(item.task, key)] = (reason, item)
    with store.db.tx(write=False) as tx:
        cid = campaign_id(tx, campaign)
        state = _read_ledger(read_mark(tx, _ledger_key(campaign)))
        all_tasks = {r[0] for r in tx.all("SELECT name FROM task WHERE campaign_id = ?", (cid,))}
    scope = set(tasks) if tasks is not None else all_tasks | set(state)
    if all(_same(state.get(t, {}).get("told") or {}, now_told.get(t, {})) for t in scope):
        return 0

    def body(ctx: Ctx) -> int:
        cid = campaign_id(ctx.tx, campaign)
        ctx.tx.serialize("attention", cid)
        state = _read_ledger(read_mark(ctx.tx, _ledger_key(campaign)))
        written = 0
        for task in sorted(scope):
            entry = state.get(task) or {}
            if (int(entry.get("upto") or 0), str(entry.get("at") or "")) > (result.upto, result.at):
                continue  # another caller recorded from fresher data
            old: dict[str, list[Any]] = dict(entry.get("told") or {})
            new = now_told.get(task, {})
            for key in sorted(set(old) | set(new), key=_by_run):
                before, after = old.get(key), new.get(key)
                if before is not None and after is not None and before[0] == after[0]:
                    continue
                run, _, code = key.partition(":")
                if after is None:
                    detail: dict[str, Any] = {"code": code, "since": before[1] if before else ""}
                else:
                    reason, item = details[(task, key)]
                    detail = {"code": code, "since": reason.since, "message": reason.message,
                              "command": reason.command, "fill": item.fill}
                ctx.audit(cid, ENTITY, task, CLEAR if after is None else after[0],
                          from_status=None if before is None else before[0], run_number=int(run), reason=code,
                          detail=detail)
                written += 1
            if new:
                state[task] = {"upto": result.upto, "at": result.at, "told": new}
            else:
                state.pop(task, None)
        write_mark(ctx, _ledger_key(campaign), json.dumps(state, sort_keys=True) if state else None)
        return written

    return store.write("attention.record", body)


def _same(old: Mapping[str, list[Any]], new: Mapping[str, list[Any]]) -> bool:
    return set(old) == set(new) and all(old[k][0] == new[k][0] for k in old)


def _by_run(key: str) -> tuple[int, str]:
    run, _, code = key.partition(":")
    return int(run), code


def observe(
    store: Store, campaign: Optional[str] = None, *, tasks: Optional[Sequence[str]] = None,
    stuck_after: Optional[float] = None, silent_after: float = SILENT_AFTER,
) -> Attention:
    """Look, act, record: compute the attention, do what the policies say (then look again), and record what needs
    action. What a writer runs (the handler stages, ``notify send``); ``health`` only looks and acts."""
    result = attention(store, campaign, tasks=tasks, stuck_after=stuck_after, silent_after=silent_after)
    if result.actions and apply_policies(store, result.actions):
        result = attention(store, campaign, tasks=tasks, stuck_after=stuck_after, silent_after=silent_after)
    for name in sorted({c.name for c in store.list_campaigns()} if campaign is None else {campaign}):
        record(store, name, result, tasks)
    return result


def describe(item: InstanceAttention, reason: Reason) -> str:
    """One line for people: the level, the message and the command."""
    return f"{reason.level}: {reason.message} (since {human_time(reason.since)}); resolve: {reason.command}"


__all__ = ["CATALOGUE", "CODES", "DOC_COMMAND", "LEVELS", "Action", "Attention", "Code", "HandlerInfo",
           "InstanceAttention", "Policies", "Reason", "apply_policies", "attention", "describe", "document", "note_handler", "observe",
           "pending_actions", "policies", "record", "recorded", "set_policies", "script_of"]
