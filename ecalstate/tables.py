"""The tables (SQLModel declarations) and the schema version they make.

Only the declarations: creating, installing and upgrading a database is :mod:`ecalstate.schema` and
:mod:`ecalstate.migrations`; connections and transactions are :mod:`ecalstate.db`.
"""

from __future__ import annotations

from typing import Any, Optional

from sqlalchemy import BigInteger, Column, Index, Integer, UniqueConstraint
from sqlmodel import Field, SQLModel

#: bumped with every schema change; ``ecalstate.migrations`` knows how to reach it
SCHEMA_VERSION = 8


class Meta(SQLModel, table=True):
    __tablename__ = "meta"
    key: str = Field(primary_key=True)
    value: str


class Campaign(SQLModel, table=True):
    __tablename__ = "campaign"
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(unique=True)
    kind: str = "prompt"
    description: str = ""
    settings: str = Field(default="{}", sa_column_kwargs={"server_default": "{}"})
    created_at: str


class Task(SQLModel, table=True):
    __tablename__ = "task"
    __table_args__ = (UniqueConstraint("campaign_id", "name"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    campaign_id: int = Field(foreign_key="campaign.id")
    name: str
    max_retries: int = 3
    created_at: str
    #: the task's settings as a JSON object of validated keys (schema 8: ``deadline``, ``deadline_from``,
    #: ``warn_before``, ``cadence``; see ``ecalstate.deadlines.TaskSettings``)
    settings: str = Field(default="{}", sa_column_kwargs={"server_default": "{}"})


class TaskDep(SQLModel, table=True):
    __tablename__ = "task_dep"
    task_id: int = Field(foreign_key="task.id", primary_key=True)
    depends_on_id: int = Field(foreign_key="task.id", primary_key=True)


class RunType(SQLModel, table=True):
    __tablename__ = "rtype"
    __table_args__ = (UniqueConstraint("campaign_id", "name"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    campaign_id: int = Field(foreign_key="campaign.id")
    name: str
    filter: str = ""


class RunTypeTask(SQLModel, table=True):
    __tablename__ = "rtype_task"
    rtype_id: int = Field(foreign_key="rtype.id", primary_key=True)
    task_id: int = Field(foreign_key="task.id", primary_key=True)


class Run(SQLModel, table=True):
    __tablename__ = "run"
    __table_args__ = (UniqueConstraint("campaign_id", "run_number"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    campaign_id: int = Field(foreign_key="campaign.id")
    run_number: int
    fill: Optional[int] = None
    meta: str = "{}"
    rtypes: str = ""
    #: the run types the exporter tags the run's points with, kept when a backfill changes ``rtypes`` (NULL:
    #: ``rtypes`` never changed): a series is defined by its tags, which must not change once exported
    tag_rtypes: Optional[str] = None
    injected_at: str
    #: when the run ended, in the store's time format: its metadata's ``end_time`` as the run source wrote it,
    #: normalised when written (schema 8; NULL: none, or not a time). Deadlines count from it, claims order by it
    ended_at: Optional[str] = None


class TaskInstance(SQLModel, table=True):
    __tablename__ = "task_instance"
    __table_args__ = (
        UniqueConstraint("task_id", "run_id"),
        Index("ix_ti_campaign_task_status", "campaign_id", "task_id", "status"),
        Index("ix_ti_run", "run_id"),
    )
    id: Optional[int] = Field(default=None, primary_key=True)
    campaign_id: int = Field(foreign_key="campaign.id")
    task_id: int = Field(foreign_key="task.id")
    run_id: int = Field(foreign_key="run.id")
    status: str
    version: int = 1
    generation: int = 0
    leader_id: Optional[int] = Field(default=None, foreign_key="task_instance.id")
    #: the jobs' output fields gathered when the instance is done; ``''``: those of its current generation's jobs,
    #: read when asked (``outputs.instance_outputs``) instead of a copy of every path (schema 6)
    outputs: str = "{}"
    created_at: str
    updated_at: str


def _micros_column(nullable: bool = False) -> Any:
    return Field(default=None, sa_column=Column(BigInteger, nullable=nullable))


class Job(SQLModel, table=True):
    __tablename__ = "job"
    __table_args__ = (
        UniqueConstraint("instance_id", "generation", "jid"),
    )
    id: Optional[int] = Field(default=None, primary_key=True)
    instance_id: int = Field(foreign_key="task_instance.id")
    generation: int
    jid: int
    status: str
    version: int = 1
    attempts: int = 1
    batch_id: Optional[str] = None
    fields: str = "{}"
    #: times as integer microseconds since 1970 (schema 6: two million jobs a year); readers convert them
    created_at: int = _micros_column()
    updated_at: int = _micros_column()
    started_at: Optional[int] = _micros_column(nullable=True)
    finished_at: Optional[int] = _micros_column(nullable=True)


class AuditLog(SQLModel, table=True):
    """One row per accepted transition (and per handler heartbeat); its id is the export cursor.

    Lean (schema 6): the repeated texts are ids of :class:`String` rows and the time is integer microseconds
    since 1970 (UTC). Readers use the view ``audit`` (``ecalstate.auditlog``), which gives the texts and the
    store's time format back; writers insert here through ``base.AUDIT_SQL``, with ids they resolved (no foreign
    keys to ``string``: seven lookups per row would cost more than the row, and ``string`` rows are never deleted).
    """

    __tablename__ = "audit_log"
    #: its indexes are partial ones, of the rows their readers look for (``auditlog.install``)
    __table_args__ = ({"sqlite_autoincrement": True},)
    id: Optional[int] = Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    ts: int = _micros_column()
    campaign_id: int = Field(foreign_key="campaign.id")
    entity: int
    instance_id: Optional[int] = None
    job_pk: Optional[int] = None
    task: int
    run_number: Optional[int] = None
    jid: Optional[int] = None
    generation: Optional[int] = None
    from_status: Optional[int] = None
    to_status: int
    actor: int
    #: who really acted, as authenticated (OS user@host, Jenkins' build tag, PostgreSQL role); ``actor`` is a label
    identity: int
    reason: int
    request_id: Optional[str] = None
    detail: Optional[str] = None


class String(SQLModel, table=True):
    """The audit's texts, each once: entities, statuses, task names, actors, identities, reasons.

    Never deleted (an id, once committed, means its text for ever), so ids can be cached by writers. The unique
    index is the engine's own (``ecalstate.auditlog``): PostgreSQL indexes a digest, a reason may be long.
    """

    __tablename__ = "string"
    id: Optional[int] = Field(default=None, primary_key=True)
    text: str


class Request(SQLModel, table=True):
    """Outcome of a mutating call made with a request id: a replay returns it unchanged."""

    __tablename__ = "request"
    request_id: str = Field(primary_key=True)
    kind: str
    outcome: str
    created_at: str


class ExportCursor(SQLModel, table=True):
    __tablename__ = "export_cursor"
    target: str = Field(primary_key=True)
    audit_id: int = 0
    updated_at: str


class Heartbeat(SQLModel, table=True):
    __tablename__ = "heartbeat"
    campaign_id: int = Field(foreign_key="campaign.id", primary_key=True)
    task: str = Field(primary_key=True)
    stage: str = Field(primary_key=True)
    last_at: str
    actor: str
    ok: bool = True
    message: str = ""


class RunSourceCursor(SQLModel, table=True):
    """Where a run source (OMS, a file) left off for a campaign: a re-sync reads on from here."""

    __tablename__ = "run_source"
    campaign_id: int = Field(foreign_key="campaign.id", primary_key=True)
    source: str = Field(primary_key=True)
    last_run: int = 0
    updated_at: str


class FillEnd(SQLModel, table=True):
    """A fill known to have ended (a later fill started, the source saw the beam dump, or an operator closed it):
    grouping by fill waits for this before it treats a fill's runs as complete."""

    __tablename__ = "fill_end"
    campaign_id: int = Field(foreign_key="campaign.id", primary_key=True)
    fill: int = Field(primary_key=True)
    ended_at: str
    reason: str
    actor: str
    #: when the fill really ended (the beam dump), as the run source says (schema 8; NULL: it did not say):
    #: ``ended_at`` is when the store learnt it
    dumped_at: Optional[str] = None


#: every table, by name (a migration step creates the one it adds from here)
TABLES = SQLModel.metadata.tables
