"""The two state machines of ecalstate: task instances and jobs.

The transition tables are plain data. They are validated when this module is
imported (every status reachable from the initial one, terminal statuses have
no exits, no unknown names), so a bad edit fails at import, not at 3 a.m.
Every refusal is one typed error, :class:`TransitionNotAllowed`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from dataclasses import dataclass
from enum import Enum

from .errors import EcalStateError, Refused


class TaskStatus(str, Enum):
    """Status of a task instance: one (campaign, task, run)."""

    NEW = "new"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"
    MERGED = "merged"
    REPROCESS = "reprocess"
    SKIPPED = "skipped"

    def __str__(self) -> str:
        return self.value


class JobStatus(str, Enum):
    """Status of one batch job of a task instance."""

    IDLE = "idle"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Machine:
    """A transition table with its entry status, checked at construction."""

    entity: str
    statuses: type[Enum]
    initial: Enum
    table: Mapping[Enum, frozenset[Enum]]
    causes: Mapping[tuple[Enum, Enum], str]
    #: statuses declared final: they must have no exits, and every status without exits must be declared
    terminals: frozenset[Enum] = frozenset()
    #: what creates an entity in its initial status (documentation)
    entry: str = "created"

    def __post_init__(self) -> None:
        problems = validate(self)
        if problems:
            raise RuntimeError(f"invalid {self.entity} transition table: " + "; ".join(problems))

    def allowed(self, current: Enum) -> frozenset[Enum]:
        return self.table[current]

    def is_allowed(self, current: Enum, requested: Enum) -> bool:
        return requested in self.table[current]

    def check(self, current: Enum, requested: Enum, what: str = "") -> None:
        """Raise :class:`TransitionNotAllowed` unless ``current -> requested`` is in the table."""
        if requested not in self.table[current]:
            raise TransitionNotAllowed(self.entity, what, current, requested, self.table[current])

    def terminal(self) -> frozenset[Enum]:
        return self.terminals

    def pairs(self) -> list[tuple[Enum, Enum]]:
        """Every (from, to) pair of distinct statuses, allowed or not."""
        return [(a, b) for a in self.statuses for b in self.statuses if a != b]

    def parse(self, value: str | Enum) -> Enum:
        """The status named ``value``, or a clear error listing the valid names."""
        try:
            return self.statuses(value if isinstance(value, str) else value.value)
        except ValueError:
            names = ", ".join(s.value for s in self.statuses)
            raise UnknownStatus(f"unknown {self.entity} status {value!r} (valid: {names})") from None


def validate(machine: Machine) -> list[str]:
    """Return the problems of a table: unknown names, unreachable statuses, open terminals."""
    problems: list[str] = []
    members = set(machine.statuses)

    def known(status: object) -> bool:
        # isinstance, not membership: str-valued enums compare equal across classes (TaskStatus.DONE == JobStatus.DONE)
        return isinstance(status, machine.statuses)

    for source, targets in machine.table.items():
        if not known(source):
            problems.append(f"unknown status {source!r}")
        for target in targets:
            if not known(target):
                problems.append(f"unknown target {target!r} from {source}")
            if target == source:
                problems.append(f"self-transition {source} -> {target}")
    if not known(machine.initial):
        problems.append(f"unknown initial status {machine.initial!r}")
    missing = members - set(machine.table)
    if missing:
        problems.append("statuses without a row: " + ", ".join(sorted(str(s) for s in missing)))
    seen = {machine.initial}
    frontier = [machine.initial]
    while frontier:
        for nxt in machine.table.get(frontier.pop(), frozenset()):
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    unreachable = members - seen
    if unreachable:
        problems.append("unreachable: " + ", ".join(sorted(str(s) for s in unreachable)))
    for status in machine.terminals:
        if not known(status):
            problems.append(f"unknown terminal status {status!r}")
        elif machine.table.get(status):
            exits = ", ".join(sorted(str(t) for t in machine.table[status]))
            problems.append(f"terminal status {status} has exits: {exits}")
    dead_ends = sorted(str(s) for s, exits in machine.table.items() if not exits and s not in machine.terminals)
    if dead_ends:
        problems.append("statuses without exits not declared terminal: " + ", ".join(dead_ends))
    for pair in machine.causes:
        if pair[1] not in machine.table.get(pair[0], frozenset()):
            problems.append(f"cause documented for a refused pair {pair[0]} -> {pair[1]}")
    return problems


class UnknownStatus(EcalStateError):
    """A status name that is not in the table."""


class TransitionNotAllowed(Refused):
    """A transition refused by the table; names the entity, both statuses and what is allowed.

    ``result`` (a bulk call's per-item outcomes) is set when the refusal came from a bulk request.
    """

    def __init__(
        self,
        entity: str,
        what: str,
        current: Enum,
        requested: Enum,
        allowed: frozenset[Enum],
        reason: str = "",
        result: object = None,
    ) -> None:
        self.entity = entity
        self.what = what
        self.current = current
        self.requested = requested
        self.allowed = allowed
        allowed_txt = ", ".join(sorted(str(s.value) for s in allowed)) or "none: terminal"
        label = f"{entity} {what}".strip()
        detail = f" ({reason})" if reason else ""
        super().__init__(
            f"{label}: transition {current.value} -> {requested.value} not allowed{detail}; "
            f"allowed from {current.value}: {allowed_txt}",
            result,
        )


T = TaskStatus
J = JobStatus

TASK = Machine(
    entity="task instance",
    statuses=TaskStatus,
    initial=T.NEW,
    table={
        T.NEW: frozenset({T.PROCESSING, T.MERGED, T.SKIPPED}),
        T.REPROCESS: frozenset({T.PROCESSING, T.MERGED, T.SKIPPED}),
        T.PROCESSING: frozenset({T.DONE, T.FAILED, T.REPROCESS}),
        T.DONE: frozenset({T.REPROCESS}),
        T.FAILED: frozenset({T.REPROCESS, T.SKIPPED}),
        T.MERGED: frozenset({T.REPROCESS}),
        T.SKIPPED: frozenset({T.REPROCESS}),
    },
    causes={
        (T.NEW, T.PROCESSING): "claimed by a submit stage",
        (T.NEW, T.MERGED): "folded into another run's group",
        (T.REPROCESS, T.PROCESSING): "claimed by a submit stage",
        (T.REPROCESS, T.MERGED): "folded into another run's group",
        (T.PROCESSING, T.DONE): "check saw all jobs done",
        (T.PROCESSING, T.FAILED): "a job failed beyond its retries",
        (T.PROCESSING, T.REPROCESS): "operator abort",
        (T.DONE, T.REPROCESS): "operator, or an upstream task reprocessed with --downstream",
        (T.FAILED, T.REPROCESS): "operator",
        (T.MERGED, T.REPROCESS): "operator, or its group leader is reprocessed",
        (T.NEW, T.SKIPPED): "operator (bad data quality, detector out of the run; a reason is required)",
        (T.REPROCESS, T.SKIPPED): "operator (a reason is required)",
        (T.FAILED, T.SKIPPED): "operator: the run cannot be processed (a reason is required)",
        (T.SKIPPED, T.REPROCESS): "operator changes their mind",
    },
    entry="run injected, and a run type that matches it activates the task",
)

JOB = Machine(
    entity="job",
    statuses=JobStatus,
    initial=J.IDLE,
    table={
        J.IDLE: frozenset({J.RUNNING, J.DONE, J.FAILED}),
        J.RUNNING: frozenset({J.DONE, J.FAILED, J.IDLE}),
        J.FAILED: frozenset({J.IDLE}),
        J.DONE: frozenset(),
    },
    causes={
        (J.IDLE, J.RUNNING): "batch system started it",
        (J.IDLE, J.DONE): "finished between two checks",
        (J.IDLE, J.FAILED): "held or removed",
        (J.RUNNING, J.DONE): "finished",
        (J.RUNNING, J.FAILED): "failed",
        (J.RUNNING, J.IDLE): "evicted and requeued",
        (J.FAILED, J.IDLE): "resubmitted, only while attempts <= max retries",
    },
    terminals=frozenset({J.DONE}),
    entry="created by submit",
)


def job_refusal(current: JobStatus, requested: JobStatus, attempts: int, max_retries: int) -> str:
    """Why a job may not move from ``current`` to ``requested`` ('' when it may): not in the table, or a retry
    (failed -> idle) of a job whose attempts are beyond its task's retries. Every write path asks this."""
    if not JOB.is_allowed(current, requested):
        return "not in the job table"
    if current == J.FAILED and requested == J.IDLE and attempts > max_retries:
        return f"retries exhausted: {attempts} attempts, max retries {max_retries}"
    return ""


#: statuses from which a task instance may be claimed by a submit stage
CLAIMABLE = (T.NEW, T.REPROCESS)
#: statuses an operator may set by hand (``ecalstate set``); the others belong to injection and claims
OPERATOR_TARGETS = (T.DONE, T.FAILED, T.REPROCESS, T.SKIPPED)


# ------------------------------------------------------------------ how jobs decide their instance
#: the counts a processing instance's current generation is decided on (jobs, done, idle or running, failed with no
#: retry left), and ``retries``, its task's retry limit
TALLY = ("total", "done", "active", "exhausted", "retries")
_OPERATORS = {"=": "==", ">": ">"}


@dataclass(frozen=True)
class Decision:
    """A processing instance moves to ``status`` when every ``(count, operator, count or number)`` holds; its audit
    reason is ``reason`` with the counts filled in."""

    status: TaskStatus
    conditions: tuple[tuple[str, str, str | int], ...]
    reason: str


#: the one rule that decides an instance from its jobs, first match first (the generic path and both engines' one-job
#: fast paths read it; the PostgreSQL function is generated from it): all done, or none active and one beyond
#: its retries
DECISIONS = (
    Decision(T.DONE, (("done", "=", "total"),), "all {total} jobs done"),
    Decision(T.FAILED, (("active", "=", 0), ("exhausted", ">", 0)),
             "{exhausted} of {total} jobs failed beyond {retries} retries"),
)


def _python_rule() -> Any:
    """:data:`DECISIONS` compiled to one Python function of the counts, giving the index of the decision that holds
    (-1: none): a deciding job transition asks it, tens of microseconds in all, so no loop over data per call."""
    tests = [" and ".join(f"{left} {_OPERATORS[op]} {right}" for left, op, right in d.conditions) for d in DECISIONS]
    body = " else ".join(f"{i} if {test}" for i, test in enumerate(tests)) + " else -1"
    return eval(f"lambda {', '.join(TALLY)}: {body}", {})  # the text is made here from the table's own names


_RULE = _python_rule()


def decide(total: int, done: int, active: int, exhausted: int, retries: int) -> tuple[TaskStatus, str] | None:
    """What a processing instance's tally decides: (status, reason), or None while it waits for its jobs."""
    index = _RULE(total, done, active, exhausted, retries)
    if index < 0:
        return None
    decision = DECISIONS[index]
    return decision.status, decision.reason.format(total=total, done=done, active=active, exhausted=exhausted,
                                                   retries=retries)


def decision_sql(names: Mapping[str, str]) -> tuple[str, str]:
    """:data:`DECISIONS` as two SQL expressions, the status and the reason (NULL while undecided), over the counts
    as ``names`` spells them (a PL/pgSQL function's variables)."""
    def side(value: str | int) -> str:
        return names[value] if isinstance(value, str) else str(value)

    whens, reasons = [], []
    for decision in DECISIONS:
        test = " AND ".join(f"{side(left)} {op} {side(right)}" for left, op, right in decision.conditions)
        text = " || ".join(_pieces(decision.reason, side))
        whens.append(f"WHEN {test} THEN '{decision.status.value}'")
        reasons.append(f"WHEN {test} THEN {text}")
    return f"CASE {' '.join(whens)} END", f"CASE {' '.join(reasons)} END"


def _pieces(template: str, side: Any) -> list[str]:
    """A reason template as SQL pieces to concatenate: quoted texts and the counts it names."""
    out = []
    for i, part in enumerate(template.replace("}", "{").split("{")):
        if part:
            out.append(side(part) if i % 2 else "'" + part.replace("'", "''") + "'")
    return out


def _check_decisions() -> None:
    for decision in DECISIONS:
        if not TASK.is_allowed(T.PROCESSING, decision.status):
            raise ValueError(f"a decision moves processing to {decision.status.value}, which the task table refuses")
        for left, op, right in decision.conditions:
            if left not in TALLY or op not in _OPERATORS or (isinstance(right, str) and right not in TALLY):
                raise ValueError(f"a decision names an unknown count or operator: {left} {op} {right}")


_check_decisions()


def render_markdown(machine: Machine) -> str:
    """The table as Markdown, for docs/state-machines.md."""
    lines = ["| from | allowed to | typical cause |", "| --- | --- | --- |"]
    lines.append(f"| (none) | {machine.initial.value} | {machine.entry} |")
    for source in machine.statuses:
        targets = sorted(machine.table[source], key=lambda s: list(machine.statuses).index(s))
        if not targets:
            lines.append(f"| {source.value} | (none) | terminal |")
            continue
        causes = "; ".join(machine.causes.get((source, t), "") for t in targets)
        lines.append(f"| {source.value} | {', '.join(t.value for t in targets)} | {causes} |")
    return "\n".join(lines) + "\n"


#: the command that regenerates docs/state-machines.md (a test fails when the file is stale)
DOC_COMMAND = (
    "python -c 'from ecalstate.statemachine import document; print(document(), end=\"\")' > docs/state-machines.md"
)


def document() -> str:
    """docs/state-machines.md: both tables rendered from the data, so the docs cannot drift from the code."""
    parts = [
        "# State machines",
        "",
        "Generated from the tables in `ecalstate/statemachine.py` (do not edit by hand):",
        "",
        f"    {DOC_COMMAND}",
        "",
        "Anything not in a table is refused with `TransitionNotAllowed`, naming the entity, the current",
        "status, the requested status and the allowed ones; nothing is written.",
    ]
    for title, machine in (("Task instances", TASK), ("Jobs", JOB)):
        statuses = ", ".join(f"`{s.value}`" for s in machine.statuses)
        final = ", ".join(f"`{s.value}`" for s in machine.statuses if s in machine.terminals) or "none"
        table = render_markdown(machine).rstrip("\n")
        parts += ["", f"## {title}", "", f"Statuses: {statuses}. Terminal: {final}.", "", table]
    parts += ["", "## How jobs decide their instance", "",
              "A `processing` instance is decided by its current generation's jobs, the first rule that holds:", "",
              "| instance moves to | when | audit reason |", "| --- | --- | --- |"]
    for decision in DECISIONS:
        when = " and ".join(f"{left} {op} {right}" for left, op, right in decision.conditions)
        parts.append(f"| {decision.status.value} | {when} | {decision.reason} |")
    parts += ["", "Counts: " + "; ".join(f"`{name}` {meaning}" for name, meaning in (
        ("total", "its jobs"), ("done", "those done"), ("active", "those idle or running"),
        ("exhausted", "those failed with no retry left"), ("retries", "the task's retry limit"))) + "."]
    return "\n".join(parts) + "\n"
