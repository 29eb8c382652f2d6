"""Claims: select eligible task instances and mark them processing, in one transaction.

Two overlapping Jenkins builds can therefore never submit the same run twice:
on SQLite the claim holds the write lock from its first read (``BEGIN
IMMEDIATE``); on PostgreSQL it locks the rows it takes (``FOR UPDATE SKIP
LOCKED``) so a concurrent claimer takes the next ones instead of waiting.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any, Optional, Union

from .base import Ctx, StoreBase, loads
from .db import Tx
from .errors import Conflict, Invalid, NotFound
from .jobs import check_jobs, insert_jobs
from .results import Claim
from .statemachine import TASK, TaskStatus

T = TaskStatus

# an instance is eligible when every task it depends on is done for its run, or merged into a done leader;
# the campaign id lets the (campaign, task, status) index find the new/reprocess ones without reading the done ones
ELIGIBLE_SQL = """
SELECT ti.id, r.run_number, r.fill, ti.status, ti.version, ti.generation, r.meta
FROM task_instance ti JOIN run r ON r.id = ti.run_id
WHERE ti.campaign_id = ? AND ti.task_id = ? AND ti.status IN ('new', 'reprocess')
  AND NOT EXISTS (
    SELECT 1 FROM task_dep d
    WHERE d.task_id = ti.task_id AND NOT EXISTS (
      SELECT 1 FROM task_instance u LEFT JOIN task_instance ul ON ul.id = u.leader_id
      WHERE u.task_id = d.depends_on_id AND u.run_id = ti.run_id
        AND (u.status = 'done' OR (u.status = 'merged' AND ul.status = 'done'))))
ORDER BY r.run_number
"""


@dataclass(frozen=True)
class Eligible:
    """A run whose task instance may be claimed now."""

    instance_id: int
    run_number: int
    fill: Optional[int]
    status: str
    version: int
    generation: int
    meta: dict[str, Any]


#: a grouping rule: eligible runs in, groups out (each group's last run is its leader)
Grouper = Callable[[list[Eligible]], list[list[Eligible]]]
#: a claim's jobs, made inside the claim's transaction: (job id, fields) pairs
JobMaker = Callable[[Claim], Sequence[tuple[int, Mapping[str, Any]]]]


def group_by_fill(runs: list[Eligible]) -> list[list[Eligible]]:
    """One group per fill, newest run last (the leader); runs without a fill stay alone."""
    with_fill = sorted((r for r in runs if r.fill is not None), key=lambda r: (r.fill, r.run_number))
    groups = [list(g) for _, g in groupby(with_fill, key=lambda r: r.fill)]
    groups += [[r] for r in runs if r.fill is None]
    return sorted(groups, key=lambda g: g[-1].run_number)


def one_per_run(runs: list[Eligible]) -> list[list[Eligible]]:
    return [[r] for r in runs]


GROUPERS: dict[str, Grouper] = {"run": one_per_run, "fill": group_by_fill}


class Claims(StoreBase):
    """Atomic claims of eligible task instances."""

    def eligible(self, campaign: str, task: str) -> list[Eligible]:
        """What a claim would consider now (for dry runs and displays)."""
        with self.db.tx(write=False) as tx:
            cid, tid, _ = self._campaign_task(tx, campaign, task)
            return _eligible(tx, cid, tid, lock=False)

    def claim(
        self,
        campaign: str,
        task: str,
        limit: Optional[int] = None,
        group_by: Union[None, str, Grouper] = None,
        request_id: Optional[str] = None,
        jobs: Optional[JobMaker] = None,
    ) -> list[Claim]:
        """Mark up to ``limit`` groups of eligible runs as claimed: leader ``processing``, the rest ``merged``.

        ``jobs`` (the claim in, (job id, fields) pairs out) creates each claim's jobs in the same transaction:
        a build killed after the claim leaves jobs "to submit", never a claim without jobs. It runs while the
        write lock is held: it must only compute, not wait on I/O. Whatever it raises undoes the claim.
        """
        if limit is not None and limit < 1:
            raise Invalid(f"invalid limit {limit}: expected an integer >= 1")
        grouper = _grouper(group_by)

        def body(ctx: Ctx) -> list[Claim]:
            tx = ctx.tx
            cid, tid, _ = self._campaign_task(tx, campaign, task)
            # one run per group: take (and on PostgreSQL lock) only what is claimed, so concurrent
            # claimers get the next runs instead of finding everything locked
            rows = limit if grouper is one_per_run else None
            groups = [g for g in grouper(_eligible(tx, cid, tid, lock=True, limit=rows)) if g]
            if limit is not None:
                groups = groups[:limit]
            claims = [_claim_group(ctx, cid, task, group) for group in groups]
            if jobs is not None:
                for claim in claims:
                    made = list(jobs(claim))
                    jids, fields = check_jobs([j for j, _ in made], [dict(f) for _, f in made])
                    insert_jobs(ctx, cid, task, claim.run_number, claim.instance_id, claim.generation, jids, fields)
            return claims

        return self._write(
            "claim", request_id, body, args=(campaign, task, limit, getattr(group_by, "__name__", group_by)),
            encode=lambda claims: [c.__dict__ for c in claims],
            decode=lambda data: [Claim(**d) for d in data],
        )

    def claim_of(self, campaign: str, task: str, run: int) -> Claim:
        """The claim ``run`` leads now (its current generation and merged runs), to finish what a killed stage
        left "to submit"."""
        with self.db.tx(write=False) as tx:
            _, tid, _ = self._campaign_task(tx, campaign, task)
            row = tx.one("SELECT ti.id, r.fill, ti.generation, r.meta FROM task_instance ti JOIN run r ON r.id ="
                         " ti.run_id WHERE ti.task_id = ? AND r.run_number = ?", (tid, run))
            if row is None:
                raise NotFound(f"task {task!r} has no instance for run {run} in campaign {campaign!r}")
            merged = [r[0] for r in tx.all(
                "SELECT r.run_number FROM task_instance ti JOIN run r ON r.id = ti.run_id"
                " WHERE ti.leader_id = ? AND ti.status = 'merged' ORDER BY r.run_number", (row[0],))]
        return Claim(task, run, row[1], row[0], row[2], merged, loads(row[3]))


def _grouper(group_by: Union[None, str, Grouper]) -> Grouper:
    if group_by is None:
        return one_per_run
    if callable(group_by):
        return group_by
    try:
        return GROUPERS[group_by]
    except KeyError:
        raise Invalid(f"unknown grouping {group_by!r} (valid: {', '.join(GROUPERS)})") from None


def _eligible(tx: Tx, cid: int, task_id: int, lock: bool, limit: Optional[int] = None) -> list[Eligible]:
    sql = ELIGIBLE_SQL
    params: list[Any] = [cid, task_id]
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    if lock and not tx.is_sqlite:
        sql += " FOR UPDATE OF ti SKIP LOCKED"
    return [
        Eligible(r[0], r[1], r[2], r[3], r[4], r[5], loads(r[6]))
        for r in tx.all(sql, params)
    ]


def _claim_group(ctx: Ctx, cid: int, task: str, group: Sequence[Eligible]) -> Claim:
    leader, members = group[-1], list(group[:-1])
    generation = leader.generation + 1
    _move(ctx, cid, task, leader, T.PROCESSING, "claimed by submit", generation=generation)
    for member in members:
        _move(ctx, cid, task, member, T.MERGED, f"merged into run {leader.run_number}",
              leader_id=leader.instance_id)
    return Claim(task, leader.run_number, leader.fill, leader.instance_id, generation,
                 [m.run_number for m in members], leader.meta)


def _move(
    ctx: Ctx, cid: int, task: str, inst: Eligible, to: TaskStatus, reason: str,
    generation: Optional[int] = None, leader_id: Optional[int] = None,
) -> None:
    TASK.check(TaskStatus(inst.status), to, f"{task} run {inst.run_number}")
    gen = inst.generation if generation is None else generation
    count = ctx.tx.execute(
        "UPDATE task_instance SET status = ?, version = version + 1, generation = ?, leader_id = ?,"
        " updated_at = ?, progress_at = NULL WHERE id = ? AND version = ?",
        (to.value, gen, leader_id, ctx.now, inst.instance_id, inst.version),
    )
    if count != 1:
        raise Conflict(f"task {task} run {inst.run_number} changed concurrently; retry the claim")
    ctx.audit(cid, "task", task, to.value, from_status=inst.status, instance_id=inst.instance_id,
              run_number=inst.run_number, generation=gen, reason=reason)
