"""Typed values the store returns. Plain dataclasses: easy to print, compare and serialise."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional


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


@dataclass(frozen=True)
class RunTypeInfo:
    name: str
    filter: str
    tasks: list[str]


#: run metadata key that says the run was still being taken when its source last saw it: it activates no task
#: until it ended, and a fill with such a run is not complete
ONGOING = "ongoing"


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

    @property
    def said(self) -> str:
        """The reason, and for an annotation without one what it recorded (a submit's, or an adopting stage's,
        logs folder beside the batch id): an 'idle -> idle' row with nothing to say read as a transition."""
        if self.entity == "attention" and self.fields:  # what needed action: the reason's code, and its words
            return f"{self.reason}: {self.fields.get('message') or 'cleared'}"
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
