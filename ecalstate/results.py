"""Typed values the store returns. Plain dataclasses: easy to print, compare and serialise."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Optional

from .errors import Invalid
from .limits import MAX_DURATION, MAX_DURATION_TEXT


#: the job field a check records the start of a job's attempt in, as its batch system reported it
STARTED = "started"
#: what a campaign's policy may do with a late run (one that comes after its fill was processed): flag it (a problem
#: naming the command), or regroup the fill at once (the attention model)
LATE_RUNS = ("flag", "regroup")


@dataclass(frozen=True)
class CampaignInfo:
    name: str
    kind: str
    description: str
    created_at: str


@dataclass(frozen=True)
class TaskInfo:
    name: str
    depends_on: list[str]
    max_retries: int
    #: seconds from the reference (the run's end, or its fill's: ``deadline_from``) until the task's instance
    #: must be done; None: no deadline
    deadline: Optional[int] = None
    #: what the deadline counts from: ``run-end`` or ``fill-end``
    deadline_from: Optional[str] = None
    #: seconds before the deadline at which an unfinished instance is "at risk"
    warn_before: Optional[int] = None
    #: the task must produce a done instance at least this often (seconds); None: no cadence
    cadence: Optional[int] = None
    #: the campaign whose tasks (``depends_on``) this task reads its inputs from; None: its own campaign
    inputs_from: Optional[str] = None
    #: its instances are claimed strictly in run order, one run (or group) in flight at a time (a conditions upload)
    ordered: bool = False
    #: a manual gate: no jobs; an expert approves or rejects its instances (``ecalstate approve``/``reject``)
    gate: bool = False


#: what a deadline counts from: the run's end (its ``end_time``), or its fill's end (the beam dump)
RUN_END, FILL_END = "run-end", "fill-end"
DEADLINE_FROM = (RUN_END, FILL_END)


@dataclass(frozen=True)
class TaskSettings:
    """A task's settings (``task.settings``, a JSON object of validated keys): its deadline, counted from the run's or
    the fill's end, the warning margin before it, and its cadence; durations in whole seconds; whether it is claimed
    in run order (``ordered``) or is a manual gate (``gate``), never both. Keys a later ecalstate adds are kept as
    they are (``other``)."""

    deadline: Optional[int] = None
    deadline_from: str = RUN_END
    warn_before: Optional[int] = None
    cadence: Optional[int] = None
    other: dict[str, Any] = field(default_factory=dict)
    #: the campaign whose tasks (``inputs``) this task depends on, read only: a test campaign's task on production's
    #: inputs (``task add --inputs-from prompt --depends-on phisym-reco``, see :mod:`ecalstate.inputs`); None: its own
    inputs_from: Optional[str] = None
    inputs: tuple[str, ...] = ()
    ordered: bool = False
    gate: bool = False

    @classmethod
    def from_json(cls, text: Optional[str]) -> TaskSettings:
        """The settings as stored (a value that is not what this ecalstate writes counts as absent)."""
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        ours = {"deadline", "deadline_from", "warn_before", "cadence", "ordered", "gate"}

        def seconds(key: str) -> Optional[int]:
            value = data.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None

        kind = data.get("deadline_from")
        given = data.get("inputs_from")
        source: dict[str, Any] = given if isinstance(given, dict) else {}
        tasks = source.get("tasks")
        inputs = tuple(tasks) if isinstance(tasks, list) and all(isinstance(t, str) for t in tasks) else ()
        campaign = source.get("campaign") if isinstance(source.get("campaign"), str) and inputs else None
        return cls(seconds("deadline") or None, kind if kind in DEADLINE_FROM else RUN_END, seconds("warn_before"),
                   seconds("cadence") or None, {k: v for k, v in data.items() if k not in ours | {"inputs_from"}},
                   campaign, inputs if campaign else (), data.get("ordered") is True, data.get("gate") is True)

    def to_json(self) -> str:
        data = dict(self.other)
        if self.deadline:
            data.update(deadline=self.deadline, deadline_from=self.deadline_from, warn_before=self.warn_before)
        if self.cadence:
            data["cadence"] = self.cadence
        if self.inputs_from:
            data["inputs_from"] = {"campaign": self.inputs_from, "tasks": list(self.inputs)}
        data.update({k: True for k, on in (("ordered", self.ordered), ("gate", self.gate)) if on})
        return json.dumps(data, sort_keys=True)

    def changed(self, deadline: Optional[float] = None, deadline_from: Optional[str] = None,
                warn_before: Optional[float] = None, cadence: Optional[float] = None,
                ordered: Optional[bool] = None, gate: Optional[bool] = None) -> TaskSettings:
        """These settings with the given ones changed (None: kept), checked. A deadline or cadence of 0 removes it
        (a deadline with its margin); a first deadline counts from the run's end and warns a quarter of it ahead."""
        new = self
        for key, flag in (("ordered", ordered), ("gate", gate)):
            if flag is not None and not isinstance(flag, bool):
                raise Invalid(f"invalid {key} {flag!r}: true or false")
        new = replace(new, ordered=new.ordered if ordered is None else ordered, gate=new.gate if gate is None else gate)
        if new.ordered and new.gate:
            raise Invalid("a task is ordered (claimed in run order) or a gate (approved by an expert, never claimed),"
                          " not both")
        if deadline is not None:
            seconds = _duration("deadline", deadline)
            if not seconds:
                new = replace(new, deadline=None, deadline_from=RUN_END, warn_before=None)
            else:
                first = new.deadline is None
                new = replace(new, deadline=seconds, warn_before=seconds // 4 if first else new.warn_before)
        if deadline_from is not None:
            if deadline_from not in DEADLINE_FROM:
                raise Invalid(f"invalid deadline reference {deadline_from!r} (valid: {', '.join(DEADLINE_FROM)})")
            new = replace(new, deadline_from=deadline_from)
        if warn_before is not None:
            new = replace(new, warn_before=_duration("warning margin", warn_before))
        if cadence is not None:
            new = replace(new, cadence=_duration("cadence", cadence) or None)
        if new.deadline is None and (deadline_from is not None or warn_before is not None):
            raise Invalid("a deadline reference or warning margin needs a deadline (give one: 48h)")
        if new.deadline is not None and (new.warn_before or 0) > new.deadline:
            raise Invalid(f"the warning margin ({new.warn_before} s) is longer than the deadline ({new.deadline} s)")
        return new


def _duration(what: str, value: Any) -> int:
    """Whole seconds of a duration given in seconds, checked."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_DURATION:
        raise Invalid(f"invalid {what} {value!r}: seconds from 0, {MAX_DURATION_TEXT}")
    return int(round(value))


#: what an instance's deadline says of it (:class:`InstanceDeadline`): the task has none; its reference (the
#: run's or fill's end) is not known; unfinished and before the warning; unfinished within the warning margin;
#: unfinished past its deadline; done by its deadline; done after it
NO_DEADLINE, NO_END_TIME, ON_TIME, AT_RISK, MISSED, DONE, DONE_LATE = (
    "no-deadline", "no-end-time", "on-time", "at-risk", "missed", "done", "done-late")
DEADLINE_STATES = (NO_DEADLINE, NO_END_TIME, ON_TIME, AT_RISK, MISSED, DONE, DONE_LATE)


@dataclass(slots=True)  # not frozen: made for every open instance of a campaign, a frozen one costs 6 times more
class InstanceDeadline:
    """A task instance against its task's deadline: when its reference (the run's or the fill's end) was, when it
    must be done, when it is at risk, when it was first done, its latency and its :data:`DEADLINE_STATES` state.

    A merged run carries its group leader's (the group is done together); ``why`` says what a state without a
    deadline lacks ("run 380001 has no end time")."""

    task: str
    run_number: int
    fill: Optional[int]
    status: str
    reference: Optional[str]
    reference_kind: Optional[str]
    deadline: Optional[str]
    warn_at: Optional[str]
    done_at: Optional[str]
    latency_s: Optional[float]
    state: str
    why: str = ""
    #: the run that leads the group a merged run was folded into (None: not merged)
    leader_run: Optional[int] = None


@dataclass(frozen=True)
class CadenceGap:
    """A task with a cadence whose newest done instance is older than it: one per gap, from ``since`` (the newest
    done instance plus the cadence; the task's creation when it never had one)."""

    campaign: str
    task: str
    cadence_s: int
    last_done: Optional[str]
    since: str


@dataclass(frozen=True)
class RunTypeInfo:
    name: str
    filter: str
    tasks: list[str]


#: run metadata key that says the run was still being taken when its source last saw it: it activates no task
#: until it ended, and a fill with such a run is not complete
ONGOING = "ongoing"
#: run metadata key holding when the run ended (the OMS mapping and the file source write it): deadlines count from it
END_TIME = "end_time"


@dataclass(frozen=True)
class RunSpec:
    """A run to inject: number, fill and free metadata."""

    run_number: int
    fill: Optional[int] = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FillEnd:
    """A fill known to have ended: when, why and who recorded it."""

    fill: int
    ended_at: str
    reason: str
    actor: str
    #: when the beam was dumped, as the run source said (None: it did not)
    dumped_at: Optional[str] = None


@dataclass(frozen=True)
class InjectResult:
    new: list[int]
    existing: list[int]
    instances: int

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InjectResult:
        return cls(**data)


@dataclass(frozen=True)
class BackfillResult:
    rtype: str
    added: list[str]
    removed: list[str]
    instances: int


@dataclass(frozen=True)
class Claim:
    """A claimed task instance: the leader that owns the jobs, and the runs merged into it."""

    task: str
    run_number: int
    fill: Optional[int]
    instance_id: int
    generation: int
    merged: list[int]
    meta: dict[str, Any]

    @property
    def runs(self) -> list[int]:
        """Every run of the group, merged ones first, the leader last (the original's ``group``)."""
        return [*self.merged, self.run_number]


@dataclass(frozen=True)
class JobUpdate:
    """A requested job status change, as a check stage or a job reports it."""

    run: int
    jid: int
    status: str
    fields: Optional[dict[str, Any]] = None
    batch_id: Optional[str] = None
    reason: str = ""
    generation: Optional[int] = None
    #: the attempt the update is about (a check's observation): refused once a newer attempt exists
    attempt: Optional[int] = None


@dataclass(frozen=True)
class BatchRecord:
    """What the batch system gave one submitted job attempt: its id, and fields to keep (its ``logs``)."""

    jid: int
    attempt: int
    batch_id: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Change:
    """One requested transition and what became of it."""

    entity: str
    key: str
    current: Optional[str]
    requested: str
    outcome: str  # "changed" | "unchanged" | "refused"
    reason: str = ""


@dataclass(frozen=True)
class BulkResult:
    """Per-outcome counts of a bulk call, like HTCondor's ``act``: changed, unchanged, refused."""

    changes: list[Change]
    dry_run: bool = False

    def _count(self, outcome: str) -> int:
        return sum(1 for c in self.changes if c.outcome == outcome)

    @property
    def changed(self) -> int:
        return self._count("changed")

    @property
    def unchanged(self) -> int:
        return self._count("unchanged")

    @property
    def refused(self) -> list[Change]:
        return [c for c in self.changes if c.outcome == "refused"]

    def counts(self) -> dict[str, int]:
        return {"changed": self.changed, "unchanged": self.unchanged, "refused": len(self.refused)}

    def to_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "counts": self.counts(), "changes": [asdict(c) for c in self.changes]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BulkResult:
        return cls([Change(**c) for c in data["changes"]], data["dry_run"])


@dataclass(frozen=True)
class InstanceInfo:
    campaign: str
    task: str
    run_number: int
    fill: Optional[int]
    status: str
    version: int
    generation: int
    leader_run: Optional[int]
    outputs: dict[str, Any]
    updated_at: str


@dataclass(frozen=True)
class JobInfo:
    task: str
    run_number: int
    jid: int
    generation: int
    status: str
    version: int
    attempts: int
    batch_id: Optional[str]
    fields: dict[str, Any]
    created_at: str
    updated_at: str
    started_at: Optional[str]
    finished_at: Optional[str]

    @property
    def started(self) -> Optional[str]:
        """When the current attempt started: as the batch system reported it (the field :data:`STARTED` a check
        records; a job may finish between two checks, never seen running), else when a check saw it running; None
        while it waits (an idle job's field is an earlier attempt's)."""
        if self.status == "idle":
            return None
        reported = self.fields.get(STARTED)
        return reported if isinstance(reported, str) else self.started_at


#: what a workflow's version may be: "2.1", "v2.1-rc1", "2026.06+git.3f2a"
VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+:~-]{0,63}")
#: the most bytes a claim's record of what made its generation takes in the audit
MAX_MADE_BY_BYTES = 4096
#: the key of a claim's audit detail that holds it
MADE_BY_KEY = "made_by"


@dataclass(frozen=True)
class MadeBy:
    """Which version of a workflow, with which configuration that matters (a global tag, a handler's option
    values), made a generation of an instance's jobs: recorded with the claim that opened it."""

    version: Optional[str] = None
    config: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        shown = [f"version {self.version}" if self.version else "no version"]
        shown += [f"{k}={v if isinstance(v, str) else json.dumps(v, sort_keys=True)}"
                  for k, v in sorted(self.config.items())]
        return "; ".join(shown)

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "config": dict(self.config)}

    @classmethod
    def from_detail(cls, detail: Any) -> Optional[MadeBy]:
        """What an audit row's detail (parsed) says made its generation; None when it says nothing."""
        made = detail.get(MADE_BY_KEY) if isinstance(detail, dict) else None
        if not isinstance(made, dict):
            return None
        config = made.get("config")
        return cls(made.get("version"), config if isinstance(config, dict) else {})

    def detail(self) -> dict[str, Any]:
        """The claim's audit detail: checked (a version of :data:`VERSION`, configuration of JSON values under plain
        keys, at most :data:`MAX_MADE_BY_BYTES` in all), configuration as JSON gives it back."""
        if self.version is not None and not (isinstance(self.version, str) and VERSION.fullmatch(self.version)):
            raise Invalid(f"version {self.version!r} is not a version (a letter or digit, then letters, digits and"
                          " ._+:~-, at most 64)")
        for key, value in self.config.items():
            if not isinstance(key, str) or not VERSION.fullmatch(key):
                raise Invalid(f"config key {key!r} is not a plain name")
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError):
                raise Invalid(f"config[{key!r}]: not a JSON value") from None
        detail = {MADE_BY_KEY: json.loads(json.dumps(self.to_dict()))}
        size = len(json.dumps(detail, sort_keys=True).encode())
        if size > MAX_MADE_BY_BYTES:
            raise Invalid(f"what made a generation (version and configuration) would take {size} bytes in the audit,"
                          f" more than {MAX_MADE_BY_BYTES}")
        return detail


@dataclass(frozen=True)
class InstanceOutputs:
    """An instance's current outputs (a merged run's: its group leader's), which generation gave them, and what
    made that generation."""

    run_number: int
    status: str
    #: the run holding the outputs: the leader of a merged run's group, else the run itself
    from_run: int
    #: the generation whose jobs gave the outputs (a processing instance shows the previous one's until done)
    generation: Optional[int]
    outputs: dict[str, str]
    made_by: Optional[MadeBy]

    def paths(self) -> list[tuple[str, str]]:
        """(kind, path) of every output, in the original's order (``output`` first, then ``plots``)."""
        return [(kind, path) for kind, text in self.outputs.items() for path in str(text).split(",") if path]

    def to_dict(self) -> dict[str, Any]:
        return {"run_number": self.run_number, "status": self.status, "from_run": self.from_run,
                "generation": self.generation, "outputs": {k: [p for p in str(v).split(",") if p]
                                                           for k, v in self.outputs.items()},
                "made_by": None if self.made_by is None else self.made_by.to_dict()}


@dataclass(frozen=True)
class AuditRow:
    id: int
    ts: str
    campaign: str
    entity: str
    task: str
    run_number: Optional[int]
    jid: Optional[int]
    generation: Optional[int]
    from_status: Optional[str]
    to_status: str
    actor: str
    reason: str
    request_id: Optional[str]
    #: the authenticated identity that wrote the row (``actor`` is the free-text label it chose)
    identity: str = ""
    #: what an annotation (a job's fields changing, its status not: from == to) recorded; None for a transition
    fields: Optional[dict[str, Any]] = None
    #: a claim's row: what made the generation it opened (the workflow's version and configuration)
    made_by: Optional[MadeBy] = None

    @property
    def said(self) -> str:
        """The reason, and for an annotation without one what it recorded (a submit's, or an adopting stage's,
        logs folder beside the batch id): an 'idle -> idle' row with nothing to say read as a transition; a claim
        says what made its generation."""
        if self.entity == "attention" and self.fields:  # what needed action: the reason's code, and its words
            return f"{self.reason}: {self.fields.get('message') or 'cleared'}"
        if self.made_by is not None:
            return f"{self.reason} (made by {self.made_by})"
        if self.reason or not self.fields:
            return self.reason
        return "fields recorded: " + ", ".join(f"{k}={v}" for k, v in self.fields.items())


@dataclass(frozen=True)
class OverviewRow:
    run_number: int
    fill: Optional[int]
    statuses: dict[str, str]


@dataclass(frozen=True)
class Overview:
    """The run x task matrix, with totals and the derived marks (blocked, stuck), and why a cell is empty."""

    campaign: str
    tasks: list[str]
    rows: list[OverviewRow]
    totals: dict[str, dict[str, int]]
    blocked: list[tuple[str, int]]
    stuck: list[tuple[str, int]]
    #: (task, run) -> why it has no instance: "ongoing" (the run is still being taken), "inactive" (no run type
    #: activates the task for the run), "backfill" (the task was added to one of the run's run types later)
    gaps: dict[tuple[str, int], str] = field(default_factory=dict)
    #: run -> what its empty cells mean, in words (the run types' clauses it fails, the command that backfills)
    notes: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StuckInstance:
    campaign: str
    task: str
    run_number: int
    since: str
    jobs: int


@dataclass(frozen=True)
class SilentHandler:
    campaign: str
    task: str
    stage: str
    last_at: str
    ok: bool
    message: str


@dataclass(frozen=True)
class BlockedInstance:
    """An instance waiting on an upstream task that failed for its run (or whose group leader failed): which one,
    and since when (the upstream's last change)."""

    campaign: str
    task: str
    run_number: int
    upstream: str
    since: str
    status: str = "new"


@dataclass(frozen=True)
class Health:
    stuck: list[StuckInstance]
    silent: list[SilentHandler]
    blocked: list[tuple[str, str, int]]
    failing: list[SilentHandler]
    #: ``processing`` instances whose jobs were created but not submitted for too long (a killed submit)
    unsubmitted: list[StuckInstance] = field(default_factory=list)
    #: instances given up: failed beyond their retries; an operator reprocesses or skips them (``jobs``: failed jobs)
    failed: list[StuckInstance] = field(default_factory=list)
    #: ``processing`` instances with failed jobs that the next resubmit retries (``jobs``: how many): not a problem
    retrying: list[StuckInstance] = field(default_factory=list)
    #: ``blocked`` with the upstream task that blocks each instance and since when
    blocked_by: list[BlockedInstance] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.stuck or self.silent or self.blocked or self.failing or self.unsubmitted or self.failed)
