"""What every part of the store shares: the database, the actor, audit rows, idempotent writes."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Optional, TypeVar

from .auditlog import text_id, vocabulary_ids
from .clock import from_micros, to_micros, utcnow
from .db import Database, Tx
from .errors import Conflict, Invalid, NotFound
from .statemachine import TASK, TaskStatus

R = TypeVar("R")

#: an audit row, as :meth:`Ctx.audit_row` makes it: texts as ``string`` ids, the time in integer microseconds
AUDIT_SQL = (
    "INSERT INTO audit_log (ts, campaign_id, entity, instance_id, job_pk, task, run_number, jid, generation,"
    " from_status, to_status, actor, identity, reason, request_id, detail) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)


#: the suffix of the reason of a transition that followed another instance's: a skip, or a reprocessing, cascading to
#: the dependent tasks (undoing a skip brings back what it cascaded to, and only that)
CASCADE = " (cascade)"

#: the actor of history brought in from elsewhere (``import-influx``): notifications do not announce it again
IMPORT_ACTOR = "import"


def resolve_actor(explicit: Optional[str] = None) -> str:
    """``--actor``, else ``ECALSTATE_ACTOR``, else Jenkins' ``BUILD_TAG``, else account@host."""
    for value in (explicit, os.environ.get("ECALSTATE_ACTOR"), os.environ.get("BUILD_TAG")):
        if value:
            return value
    return account_at_host()


def account_at_host() -> str:
    """The effective uid's account (not ``$USER``, which anyone sets) at this host."""
    uid = os.geteuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid without an account (containers)
        user = f"uid {uid}"
    return f"{user}@{socket.gethostname()}"


def os_identity() -> str:
    """Who this process really is: :func:`account_at_host`, and Jenkins' build tag when it runs in a build."""
    identity = account_at_host()
    build = os.environ.get("BUILD_TAG")
    return f"{identity} ({build})" if build else identity


@dataclass
class Ctx:
    """Who does a write, under which request id, and when (one timestamp per transaction)."""

    tx: Tx
    actor: str
    request_id: Optional[str]
    now: str
    #: the authenticated identity (see :meth:`StoreBase.identity`), recorded beside the free-text ``actor``
    identity: str = ""
    #: the database's cache of committed text ids, and the ids this transaction found or made (see
    #: :func:`ecalstate.auditlog.text_id`; ``StoreBase._write`` adds them to the cache once it committed)
    texts: dict[str, int] = field(default_factory=vocabulary_ids)
    learned: dict[str, int] = field(default_factory=dict)

    #: ``now`` as integer microseconds (how ``audit_log`` and ``job`` store times); made from ``now`` (a copy
    #: with another ``now``, ``dataclasses.replace``, makes its own)
    now_us: int = field(init=False)

    def __post_init__(self) -> None:
        self.now_us = to_micros(self.now)

    def text(self, value: str) -> int:
        """The ``string`` id of an audit text."""
        return text_id(self.tx, value, self.texts, self.learned)

    def audit(
        self,
        campaign_id: int,
        entity: str,
        task: str,
        to_status: str,
        *,
        from_status: Optional[str] = None,
        instance_id: Optional[int] = None,
        job_pk: Optional[int] = None,
        run_number: Optional[int] = None,
        jid: Optional[int] = None,
        generation: Optional[int] = None,
        reason: str = "",
        detail: Optional[dict[str, Any]] = None,
    ) -> None:
        self.tx.execute(AUDIT_SQL, self.audit_row(
            campaign_id, entity, task, to_status, from_status=from_status, instance_id=instance_id,
            job_pk=job_pk, run_number=run_number, jid=jid, generation=generation, reason=reason, detail=detail,
        ))

    def audit_row(
        self,
        campaign_id: int,
        entity: str,
        task: str,
        to_status: str,
        *,
        from_status: Optional[str] = None,
        instance_id: Optional[int] = None,
        job_pk: Optional[int] = None,
        run_number: Optional[int] = None,
        jid: Optional[int] = None,
        generation: Optional[int] = None,
        reason: str = "",
        detail: Optional[dict[str, Any] | str] = None,
    ) -> tuple[Any, ...]:
        """The row for :data:`AUDIT_SQL`; a ``detail`` text is stored as it is (``auditlog.SAME_AS_JOB``). Its texts
        are nearly always known: looked up here first (a job transition's row costs a third less)."""
        known, text = self.texts.get, self.text
        return (
            self.now_us, campaign_id, known(entity) or text(entity), instance_id, job_pk, known(task) or text(task),
            run_number, jid, generation, None if from_status is None else known(from_status) or text(from_status),
            known(to_status) or text(to_status), known(self.actor) or text(self.actor),
            known(self.identity) or text(self.identity), known(reason) or text(reason), self.request_id,
            detail if detail is None or isinstance(detail, str) else json.dumps(detail, sort_keys=True),
        )


class StoreBase:
    """The database handle and the helpers shared by every concern of the store."""

    def __init__(self, db: Database, actor: Optional[str] = None) -> None:
        self.db = db
        self.actor = resolve_actor(actor)
        self._identity: Optional[str] = None
        if not db.audit_texts:
            db.audit_texts.update(vocabulary_ids())

    def identity(self, tx: Tx) -> str:
        """The authenticated identity of this store's writes: :func:`os_identity`, and on PostgreSQL the role the
        server authenticated (``session_user``), which a client cannot choose freely. Asked once per store."""
        if self._identity is None:
            role = tx.session_role()
            self._identity = os_identity() + (f" db:{role}" if role else "")
        return self._identity

    def _write(
        self,
        kind: str,
        request_id: Optional[str],
        body: Callable[[Ctx], R],
        encode: Callable[[R], Any] = lambda r: r,
        decode: Callable[[Any], R] = lambda d: d,
        args: Any = None,
    ) -> R:
        """Run ``body`` in one write transaction; with a request id, a replay returns the first outcome.

        ``args`` (the call's arguments) are fingerprinted with the request id: the same id with other
        arguments is refused, never answered with another call's outcome.
        """
        if request_id is not None and not request_id.strip():
            raise Invalid("request id must not be blank")
        # only a request id needs the fingerprint (8 us, about 5% of a job transition, without one)
        signed = kind if args is None or not request_id else f"{kind} args:{fingerprint(args)}"
        with self.db.tx(write=True) as tx:
            if request_id:
                tx.serialize("request", request_id)  # a concurrent replay waits for the first outcome
                row = tx.one("SELECT kind, outcome FROM request WHERE request_id = ?", (request_id,))
                if row is not None:
                    first_kind, _, first_args = row[0].partition(" args:")
                    if first_kind != kind:
                        raise Conflict(f"request id {request_id!r} was already used for a {first_kind} call")
                    if first_args and args is not None and row[0] != signed:
                        raise Conflict(f"request id {request_id!r} was already used for a {kind} call with other"
                                       " arguments; give this call a new request id")
                    return decode(json.loads(row[1]))
            ctx = Ctx(tx, self.actor, request_id, self._now(tx), self.identity(tx), self.db.audit_texts)
            result = body(ctx)
            if request_id:
                tx.execute(
                    "INSERT INTO request (request_id, kind, outcome, created_at) VALUES (?,?,?,?)",
                    (request_id, signed, json.dumps(encode(result)), ctx.now),
                )
        self.db.audit_texts.update(ctx.learned)  # committed: these ids are for good
        return result

    def write(self, kind: str, body: Callable[[Ctx], R], request_id: Optional[str] = None) -> R:
        """Run ``body`` in one write transaction of the store (the seam the wings write through: the drop-in, the
        notifier, the run sources); ``kind`` names it, a request id makes a replay return the first outcome."""
        return self._write(kind, request_id, body)

    def clock(self) -> str:
        """This host's UTC time in the store's format; the one clock writes read (tests replace it)."""
        return utcnow()

    def _now(self, tx: Tx) -> str:
        """The transaction's timestamp (:func:`store_time`)."""
        return store_time(self.clock(), tx.scalar(NEWEST_AUDIT_TIME))


#: the time of the newest audit row (the highest id), read inside a write transaction
NEWEST_AUDIT_TIME = "SELECT ts FROM audit_log ORDER BY id DESC LIMIT 1"


def store_time(clock: str, latest: Optional[int]) -> str:
    """A write transaction's timestamp: ``clock``, but never before the newest audit row's time ``latest`` (plus 1 µs).

    Hosts' clocks differ; audit times, and so exported point times, follow the store's order instead."""
    if latest is not None and latest >= to_micros(clock):
        return from_micros(latest + 1)
    return clock


def fingerprint(args: Any) -> str:
    """A digest of a call's arguments (JSON, keys sorted; other objects by their text)."""
    text = json.dumps(args, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def loads(text: Optional[str]) -> dict[str, Any]:
    return json.loads(text) if text else {}


# ------------------------------------------------ name resolution, always inside the caller's transaction

def campaign_id(tx: Tx, campaign: str) -> int:
    cid = tx.scalar("SELECT id FROM campaign WHERE name = ?", (campaign,))
    if cid is None:
        raise NotFound(f"unknown campaign {campaign!r}")
    return int(cid)

def task_of(tx: Tx, cid: int, campaign: str, task: str) -> tuple[int, int]:
    """(task id, max retries)."""
    row = tx.one("SELECT id, max_retries FROM task WHERE campaign_id = ? AND name = ?", (cid, task))
    if row is None:
        raise NotFound(f"unknown task {task!r} in campaign {campaign!r}")
    return int(row[0]), int(row[1])

def campaign_task(tx: Tx, campaign: str, task: str) -> tuple[int, int, int]:
    """(campaign id, task id, max retries) in one statement: the hot paths resolve both on every call."""
    row = tx.one(
        "SELECT c.id, t.id, t.max_retries FROM campaign c LEFT JOIN task t ON t.campaign_id = c.id AND t.name = ?"
        " WHERE c.name = ?",
        (task, campaign),
    )
    if row is None:
        raise NotFound(f"unknown campaign {campaign!r}")
    if row[1] is None:
        raise NotFound(f"unknown task {task!r} in campaign {campaign!r}")
    return int(row[0]), int(row[1]), int(row[2])

def task_names(tx: Tx, cid: int) -> dict[int, str]:
    return {r[0]: r[1] for r in tx.all("SELECT id, name FROM task WHERE campaign_id = ?", (cid,))}

def downstream_tasks(tx: Tx, task_id: int) -> list[int]:
    """Every task that depends on ``task_id``, directly or not, nearest first."""
    out: list[int] = []
    frontier = [task_id]
    while frontier:
        current = frontier.pop(0)
        for (child,) in tx.all("SELECT task_id FROM task_dep WHERE depends_on_id = ?", (current,)):
            if child not in out:
                out.append(child)
                frontier.append(child)
    return out


# ------------------------------------------------ the one writer of an instance's status
#
# Every move of an instance (a claim, a merge into a group, its jobs deciding it, an operator's set or reprocess,
# the drop-in's updateStatus) goes through :func:`move_instance`: checked against the task table, written as a
# compare-and-set on the row's version, audited in the same transaction. The PostgreSQL one-statement job
# transition (``ecalstate.pgjobs``) is the one other writer: a server function generated from the same rule
# (:data:`ecalstate.statemachine.DECISIONS`) that writes the same columns.


class _Keep:
    """A column the move leaves as it is."""

    def __repr__(self) -> str:
        return "KEEP"


#: leave this column as it was
KEEP: Any = _Keep()


@lru_cache(maxsize=None)
def _move_sql(columns: tuple[str, ...]) -> str:
    sets = "".join(f", {c} = ?" for c in columns)
    return (f"UPDATE task_instance SET status = ?, version = version + 1, updated_at = ?{sets}"
            " WHERE id = ? AND version = ?")


def move_instance(
    ctx: Ctx, cid: int, task: str, *, iid: int, run: int, status: str, version: int, to: TaskStatus, reason: str,
    generation: Optional[int] = None, new_generation: Optional[int] = None, leader_id: Any = KEEP,
    outputs: Any = KEEP, detail: Optional[dict[str, Any]] = None,
) -> None:
    """Move instance ``iid`` (task ``task`` of run ``run``, read at ``status`` and ``version`` in this transaction)
    to ``to``, audited with ``reason``, ``generation`` and ``detail`` (a claim's: what made its generation);
    ``new_generation``, ``leader_id`` and ``outputs`` set those columns too. Refused by the table, or a
    :class:`Conflict` (nothing written) if the row moved meanwhile."""
    TASK.check(TaskStatus(status), to, f"{task} run {run}")
    columns, values = [], []
    for column, value in (("generation", new_generation), ("leader_id", leader_id), ("outputs", outputs)):
        if value is not KEEP and not (column == "generation" and value is None):
            columns.append(column)
            values.append(value)
    count = ctx.tx.execute(_move_sql(tuple(columns)), (to.value, ctx.now, *values, iid, version))
    if count != 1:
        raise Conflict(f"task {task} run {run} changed concurrently; nothing was written, retry")
    ctx.audit(cid, "task", task, to.value, from_status=status, instance_id=iid, run_number=run, generation=generation,
              reason=reason, detail=detail)


def next_generation(ctx: Ctx, task: str, *, iid: int, run: int, version: int, generation: int) -> None:
    """Give a processing instance the next generation of jobs (the drop-in's ``createTask(recreate=True)``): its
    status stays, its earlier jobs and their history stay queryable."""
    count = ctx.tx.execute("UPDATE task_instance SET generation = ?, version = version + 1, updated_at = ?"
                           " WHERE id = ? AND version = ?", (generation, ctx.now, iid, version))
    if count != 1:
        raise Conflict(f"task {task} run {run} changed concurrently; nothing was written, retry")
