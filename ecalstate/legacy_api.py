"""Typed store calls behind the ecalautoctrl compat layer (:mod:`ecalstate.compat`).

The original wrote whatever it was told; these calls map its operations onto
the transition tables, one transaction each, audited, refusing with the same
typed errors as the rest of the store:

* :meth:`LegacyApi.open_generation` is ``createTask``: a ``new``/``reprocess``
  instance is claimed (-> ``processing``, next generation) and gets its jobs;
  ``recreate`` on a ``processing`` instance opens the next generation instead
  of deleting history.
* :meth:`LegacyApi.legacy_update` is ``updateStatus``: ``processing`` claims,
  ``merged`` folds the run into its group leader, ``done``/``failed`` complete.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from .base import Ctx, StoreBase, loads
from .claims import Eligible, _move
from .db import Tx
from .errors import Conflict, Invalid, NotFound
from .jobs import _outputs, check_jobs, insert_jobs
from .results import BulkResult, Change
from .statemachine import CLAIMABLE, TASK, TaskStatus, TransitionNotAllowed

T = TaskStatus

_INSTANCE_SQL = (
    "SELECT ti.id, r.run_number, r.fill, ti.status, ti.version, ti.generation, r.meta"
    " FROM task_instance ti JOIN run r ON r.id = ti.run_id WHERE ti.task_id = ? AND r.run_number = ?"
)

# each upstream task of an instance with its status for the same run and, when merged, its leader's status
_UPSTREAM_SQL = """
SELECT t.name, u.status, ul.status FROM task_dep d JOIN task t ON t.id = d.depends_on_id
LEFT JOIN task_instance u ON u.task_id = d.depends_on_id
  AND u.run_id = (SELECT run_id FROM task_instance WHERE id = ?)
LEFT JOIN task_instance ul ON ul.id = u.leader_id
WHERE d.task_id = ? ORDER BY t.name
"""


@dataclass(frozen=True)
class LegacyRun:
    """A run as the original's ``run`` measurement held it: metadata, every task's status and outputs."""

    run_number: int
    fill: Optional[int]
    meta: dict[str, Any]
    statuses: dict[str, str]
    outputs: dict[str, dict[str, Any]]


class LegacyApi(StoreBase):
    """The original's operations, validated by the transition tables."""

    def open_generation(
        self,
        campaign: str,
        task: str,
        run: int,
        jids: Sequence[int],
        fields: Optional[Sequence[dict[str, Any]]] = None,
        recreate: bool = False,
    ) -> int:
        """Create jobs in a fresh generation of an instance, claiming it first when it is new; returns the generation."""
        jid_list, field_list = check_jobs(jids, fields)

        def body(ctx: Ctx) -> int:
            tx = ctx.tx
            cid = self._campaign_id(tx, campaign)
            tid, _ = self._task(tx, cid, campaign, task)
            inst = _instance(tx, campaign, task, tid, run)
            status = TaskStatus(inst.status)
            what = f"{task} run {run}"
            if status in CLAIMABLE:
                _check_upstream(tx, tid, inst, what)
                generation = inst.generation + 1
                _move(ctx, cid, task, inst, T.PROCESSING, "claimed by createTask", generation=generation)
            elif status == T.PROCESSING:
                generation = inst.generation
                if tx.scalar("SELECT COUNT(*) FROM job WHERE instance_id = ? AND generation = ?",
                             (inst.instance_id, generation)):
                    if not recreate:
                        raise Invalid(f"task {what} already has jobs in generation {generation}; "
                                      "recreate=True opens a new generation")
                    generation += 1
                    _cas(tx, inst, "generation = ?, progress_at = NULL, updated_at = ?", (generation, ctx.now), what)
            else:
                raise TransitionNotAllowed(TASK.entity, what, status, T.PROCESSING, TASK.allowed(status),
                                           "reprocess it first to run it again")
            insert_jobs(ctx, cid, task, run, inst.instance_id, generation, jid_list, field_list)
            return generation

        return self._write("legacy.create", None, body)

    def legacy_update(
        self,
        campaign: str,
        run: int,
        statuses: Mapping[str, str],
        leader: Optional[int] = None,
        reason: str = "updateStatus",
    ) -> BulkResult:
        """Set several tasks' statuses for one run, all or nothing; the same status again is ``unchanged``."""
        targets = {task: TaskStatus(TASK.parse(status)) for task, status in statuses.items()}
        if T.REPROCESS in targets.values():
            raise Invalid("reprocess goes through Store.reprocess (it cascades to merged runs)")

        def body(ctx: Ctx) -> BulkResult:
            tx = ctx.tx
            cid = self._campaign_id(tx, campaign)
            changes = []
            for task, target in targets.items():
                tid, _ = self._task(tx, cid, campaign, task)
                inst = _instance(tx, campaign, task, tid, run)
                current = TaskStatus(inst.status)
                what = f"{task} run {run}"
                if current == target:
                    changes.append(Change("task", what, current.value, target.value, "unchanged"))
                    continue
                TASK.check(current, target, what)
                if target == T.PROCESSING:
                    _check_upstream(tx, tid, inst, what)
                    _move(ctx, cid, task, inst, target, reason, generation=inst.generation + 1)
                elif target == T.MERGED:
                    head = _leader(tx, tid, inst, task, leader)
                    _move(ctx, cid, task, inst, target, f"{reason}: merged into run {head[1]}", leader_id=head[0])
                else:
                    _finish(ctx, cid, task, inst, target, reason)
                changes.append(Change("task", what, current.value, target.value, "changed", reason))
            return BulkResult(changes)

        return self._write("legacy.update", None, body)

    def legacy_runs(self, campaign: str) -> list[LegacyRun]:
        """Every run of a campaign with its metadata and every task's status and outputs, by run number."""
        with self.db.tx(write=False) as tx:
            cid = self._campaign_id(tx, campaign)
            runs = {r[0]: LegacyRun(r[1], r[2], loads(r[3]), {}, {}) for r in tx.all(
                "SELECT id, run_number, fill, meta FROM run WHERE campaign_id = ? ORDER BY run_number", (cid,))}
            for run_id, task, status, outputs in tx.all(
                "SELECT ti.run_id, t.name, ti.status, ti.outputs FROM task_instance ti JOIN task t ON t.id = ti.task_id"
                " WHERE ti.campaign_id = ?", (cid,)
            ):
                runs[run_id].statuses[task] = status
                runs[run_id].outputs[task] = loads(outputs)
        return list(runs.values())


def _instance(tx: Tx, campaign: str, task: str, tid: int, run: int) -> Eligible:
    """The (locked) instance of ``task`` for ``run``."""
    row = tx.one(_INSTANCE_SQL + tx.lock("ti"), (tid, run))
    if row is None:
        raise NotFound(f"task {task!r} has no instance for run {run} in campaign {campaign!r}")
    return Eligible(row[0], row[1], row[2], row[3], row[4], row[5], loads(row[6]))


def _check_upstream(tx: Tx, tid: int, inst: Eligible, what: str) -> None:
    """Refuse to start an instance whose upstream tasks are not done for its run (the claim rule)."""
    for name, status, leader_status in tx.all(_UPSTREAM_SQL, (inst.instance_id, tid)):
        if status == T.DONE.value or (status == T.MERGED.value and leader_status == T.DONE.value):
            continue
        state = status if status != T.MERGED.value else f"merged into a {leader_status} leader"
        raise TransitionNotAllowed(TASK.entity, what, TaskStatus(inst.status), T.PROCESSING,
                                   TASK.allowed(TaskStatus(inst.status)),
                                   f"upstream task {name} is {state or 'not active for this run'}")


def _leader(tx: Tx, tid: int, inst: Eligible, task: str, leader: Optional[int]) -> tuple[int, int]:
    """(instance id, run) of the group leader: the given run, else the one processing run of the task in the fill."""
    if leader is not None:
        row = tx.one(_INSTANCE_SQL, (tid, leader))
        if row is None or row[0] == inst.instance_id:
            raise Invalid(f"run {leader} cannot lead run {inst.run_number} of task {task}: "
                          + ("it has no instance" if row is None else "a run cannot lead itself"))
        if row[3] != T.PROCESSING.value:
            raise Invalid(f"leader run {leader} of task {task} is {row[3]}, not processing")
        return int(row[0]), int(row[1])
    if inst.fill is None:
        raise Invalid(f"run {inst.run_number} has no fill, so task {task} has no leader to merge it into; "
                      "pass leader=RUN")
    rows = tx.all(
        "SELECT ti.id, r.run_number FROM task_instance ti JOIN run r ON r.id = ti.run_id"
        " WHERE ti.task_id = ? AND r.fill = ? AND ti.status = 'processing' AND ti.id <> ? ORDER BY r.run_number",
        (tid, inst.fill, inst.instance_id),
    )
    if len(rows) != 1:
        found = "none" if not rows else "runs " + ", ".join(str(r[1]) for r in rows)
        raise Invalid(f"cannot merge run {inst.run_number} of task {task}: the leader must be the one processing "
                      f"run of fill {inst.fill}, found {found}; pass leader=RUN")
    return int(rows[0][0]), int(rows[0][1])


def _finish(ctx: Ctx, cid: int, task: str, inst: Eligible, target: TaskStatus, reason: str) -> None:
    """processing -> done (no job of the generation still idle or running; outputs gathered) or -> failed."""
    tx = ctx.tx
    what = f"{task} run {inst.run_number}"
    outputs: dict[str, str] = {}
    if target == T.DONE:
        active = tx.scalar(
            "SELECT COUNT(*) FROM job WHERE instance_id = ? AND generation = ? AND status IN ('idle', 'running')",
            (inst.instance_id, inst.generation))
        if active:
            raise TransitionNotAllowed(TASK.entity, what, T.PROCESSING, target, TASK.allowed(T.PROCESSING),
                                       f"{active} job(s) of generation {inst.generation} still idle or running")
        outputs = _outputs(tx, inst.instance_id, inst.generation)
    _cas(tx, inst, "status = ?, outputs = ?, updated_at = ?", (target.value, json.dumps(outputs, sort_keys=True),
                                                               ctx.now), what)
    ctx.audit(cid, "task", task, target.value, from_status=inst.status, instance_id=inst.instance_id,
              run_number=inst.run_number, generation=inst.generation, reason=reason)


def _cas(tx: Tx, inst: Eligible, assignments: str, values: Sequence[Any], what: str) -> None:
    """Compare-and-set update of an instance read earlier in this transaction."""
    count = tx.run(f"UPDATE task_instance SET {assignments}, version = version + 1 WHERE id = ? AND version = ?",
                   (*values, inst.instance_id, inst.version)).rowcount
    if count != 1:
        raise Conflict(f"task {what} changed concurrently; nothing was written, retry")
