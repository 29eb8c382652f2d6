"""The one writer of a task instance's status.

Every move of an instance (a claim, a merge into a group, its jobs deciding it, an operator's set or reprocess,
the drop-in's updateStatus) goes through :func:`move_instance`: checked against the task table, written as a
compare-and-set on the row's version, audited in the same transaction. The PostgreSQL one-statement job
transition (``ecalstate.pgjobs``) is the one other writer: a server function generated from the same rule
(:data:`ecalstate.statemachine.DECISIONS`) that writes the same columns.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Optional

from .base import Ctx
from .errors import Conflict
from .statemachine import TASK, TaskStatus


class _Keep:
    """A column the move leaves as it is."""

    def __repr__(self) -> str:
        return "KEEP"


#: leave this column as it was
KEEP: Any = _Keep()


@lru_cache(maxsize=None)
def _move_sql(columns: tuple[str, ...]) -> str:
    sets = "".join(f", {c} = ?" for c in columns)
    return f"UPDATE task_instance SET status = ?, version = version + 1, updated_at = ?{sets} WHERE id = ? AND version = ?"


def move_instance(
    ctx: Ctx, cid: int, task: str, *, iid: int, run: int, status: str, version: int, to: TaskStatus, reason: str,
    generation: Optional[int] = None, new_generation: Optional[int] = None, leader_id: Any = KEEP,
    outputs: Any = KEEP,
) -> None:
    """Move instance ``iid`` (task ``task`` of run ``run``, read at ``status`` and ``version`` in this transaction)
    to ``to``, audited with ``reason`` and ``generation``; ``new_generation``, ``leader_id`` and ``outputs`` set
    those columns too. Refused by the table, or a :class:`Conflict` (nothing written) if the row moved meanwhile."""
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
              reason=reason)


def next_generation(ctx: Ctx, task: str, *, iid: int, run: int, version: int, generation: int) -> None:
    """Give a processing instance the next generation of jobs (the drop-in's ``createTask(recreate=True)``): its
    status stays, its earlier jobs and their history stay queryable."""
    count = ctx.tx.execute("UPDATE task_instance SET generation = ?, version = version + 1, updated_at = ?"
                           " WHERE id = ? AND version = ?", (generation, ctx.now, iid, version))
    if count != 1:
        raise Conflict(f"task {task} run {run} changed concurrently; nothing was written, retry")
