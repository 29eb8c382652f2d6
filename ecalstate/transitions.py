"""Operator transitions: ``set`` and ``reprocess``, an expert's ``approve`` and ``reject`` of a gate task's
instances; validated, all-or-nothing, with dry runs.

A refused transition anywhere in the request refuses the whole request and
writes nothing; ``dry_run`` returns the same per-outcome plan without writing.
Reprocessing any run of a group (its leader or a merged run) reprocesses the
whole group, so the next claim makes one group again, never a partial one; with
``downstream`` every task depending on the reprocessed one follows, for the
same runs. History is never deleted: the next claim opens a new job generation.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from .auditlog import TASK_ROWS, made_and_done
from .base import CASCADE, Ctx, StoreBase, campaign_task, downstream_tasks, move_instance
from .claims import Eligible, awaiting, move_eligible
from .db import Tx
from .errors import Conflict, Invalid, Refused
from .limits import chunks
from .results import BulkResult, Change, TaskSettings
from .statemachine import OPERATOR_TARGETS, TASK, TaskStatus, TransitionNotAllowed

T = TaskStatus


@dataclass(frozen=True)
class _Target:
    iid: int
    task_id: int
    task: str
    run: int
    status: str
    version: int
    explicit: bool


class Transitions(StoreBase):
    """What operators do by hand."""

    def set_status(
        self,
        campaign: str,
        task: str,
        runs: Sequence[int],
        status: str,
        reason: str,
        dry_run: bool = False,
        request_id: Optional[str] = None,
    ) -> BulkResult:
        """Set the status of a task for some runs; ``reprocess`` behaves as :meth:`reprocess`.

        The table decides first (a pair outside it raises :class:`TransitionNotAllowed`); of the pairs it
        allows, an operator may only request ``done``, ``failed`` and ``reprocess``: claims own the rest.
        """
        target = TaskStatus(TASK.parse(status))
        if target == T.REPROCESS:
            return self.reprocess(campaign, task, runs=runs, reason=reason, dry_run=dry_run, request_id=request_id)
        return self._operate("set", campaign, task, runs, False, False, target, reason, dry_run, request_id)

    def reprocess(
        self,
        campaign: str,
        task: str,
        runs: Optional[Sequence[int]] = None,
        failed: bool = False,
        downstream: bool = False,
        reason: str = "",
        dry_run: bool = False,
        request_id: Optional[str] = None,
        generation: Optional[int] = None,
        fill: Optional[int] = None,
        only_from: Optional[Collection[str]] = None,
        version_not: Optional[str] = None,
    ) -> BulkResult:
        """Mark task instances for reprocessing (by runs, every failed one, or a fill's), optionally downstream too.

        ``fill``: every instance of the task processed for a run of that fill (processing, done, failed or merged:
        its groups, which the next claim makes again with the fill's runs not processed yet, a late run among them).
        ``generation``: roll back one claim only, a submit stage's own: refused with :class:`Conflict` (nothing
        written) unless every run given is ``processing`` in that generation, so a claim an operator aborted
        and another build took again is never aborted by the first build's rollback. ``only_from``: refused with
        :class:`Conflict` (nothing written) unless every instance selected is in one of these statuses (a policy
        that regroups a fill never aborts a group being processed).
        A skipped instance brought back also brings back what its skip cascaded to (see :func:`_cascaded`).
        ``version_not``: of the runs selected (every done or failed run of the task when none is given), only those
        whose current generation another version of the workflow made, or none recorded; the others are unchanged.
        """
        if not runs and not failed and fill is None and version_not is None:
            raise Invalid("nothing selected: give runs, a fill, failed=True or version_not")
        return self._operate("reprocess", campaign, task, runs or (), failed, downstream, T.REPROCESS, reason,
                             dry_run, request_id, generation, fill, only_from, version_not)

    def approve(self, campaign: str, task: str, runs: Sequence[int], reason: str, dry_run: bool = False,
                request_id: Optional[str] = None) -> BulkResult:
        """An expert approves a gate task's instances awaiting approval (eligible: their upstream tasks done): each
        moves new (or reprocess) -> processing -> done through the one writer, audited with the reason under the
        store's actor and identity. All or nothing: an instance not awaiting approval refuses the whole request
        (one already done is unchanged)."""
        return self._decide(campaign, task, runs, T.DONE, reason, dry_run, request_id)

    def reject(self, campaign: str, task: str, runs: Sequence[int], reason: str, dry_run: bool = False,
               request_id: Optional[str] = None) -> BulkResult:
        """An expert rejects a gate task's instances awaiting approval: as :meth:`approve`, to failed (the tasks
        that depend on it are blocked for those runs until the gate is reprocessed and approved)."""
        return self._decide(campaign, task, runs, T.FAILED, reason, dry_run, request_id)

    def _decide(self, campaign: str, task: str, runs: Sequence[int], to: TaskStatus, reason: str, dry_run: bool,
                request_id: Optional[str]) -> BulkResult:
        verb = "approve" if to == T.DONE else "reject"
        if not reason or not reason.strip():
            raise Invalid(f"an expert's {verb} needs a reason")
        wanted = sorted(set(runs))
        if not wanted:
            raise Invalid(f"nothing to {verb}: give the runs")
        said = f"{verb}d: {reason.strip()}"

        def plan(tx: Tx, lock: bool) -> tuple[int, list[tuple[Optional[Eligible], Change]]]:
            cid, tid, _ = campaign_task(tx, campaign, task)
            if not TaskSettings.from_json(tx.scalar("SELECT settings FROM task WHERE id = ?", (tid,))).gate:
                raise Invalid(f"task {task} is not a gate: only a gate's instances are approved or rejected (ecalstate"
                              f" task update -c {campaign} {task} --gate makes it one)")
            ready, why = awaiting(tx, cid, tid, wanted, lock)
            out: list[tuple[Optional[Eligible], Change]] = []
            for run in wanted:
                key = f"{task} run {run}"
                if run in ready:
                    out.append((ready[run], Change("task", key, ready[run].status, to.value, "changed", said)))
                    continue
                status, upstream = why.get(run, ("", ""))
                if not status:
                    out.append((None, Change("task", key, None, to.value, "refused", "no such task instance")))
                elif status == to.value:
                    out.append((None, Change("task", key, status, to.value, "unchanged", f"already {verb}d")))
                else:
                    name, _, state = upstream.partition(" ")
                    waits = f"its upstream task {name} is {state}: " if upstream and status in ("new", "reprocess") \
                        else ""
                    out.append((None, Change("task", key, status, to.value, "refused",
                                             f"{status}, {waits}not awaiting approval")))
            return cid, out

        if dry_run:
            with self.db.tx(write=False) as tx:
                return BulkResult([c for _, c in plan(tx, False)[1]], dry_run=True)

        def body(ctx: Ctx) -> BulkResult:
            cid, items = plan(ctx.tx, True)
            changes = [c for _, c in items]
            refused = [c for c in changes if c.outcome == "refused"]
            if refused:
                raise Refused(f"{len(refused)} of {len(changes)} runs refused ({verb}), nothing written; first: "
                              f"{refused[0].key}: {refused[0].reason}", BulkResult(changes))
            for inst, change in items:
                if inst is not None and change.outcome == "changed":
                    generation = inst.generation + 1
                    move_eligible(ctx, cid, task, inst, T.PROCESSING, said, generation=generation)
                    move_instance(ctx, cid, task, iid=inst.instance_id, run=inst.run_number, status=T.PROCESSING.value,
                                  version=inst.version + 1, to=to, reason=said, generation=generation)
            return BulkResult(changes)

        return self._write(verb, request_id, body, encode=BulkResult.to_dict, decode=BulkResult.from_dict,
                           args=(campaign, task, wanted, reason))

    def _operate(
        self, kind: str, campaign: str, task: str, runs: Sequence[int], failed: bool, downstream: bool,
        target: TaskStatus, reason: str, dry_run: bool, request_id: Optional[str], generation: Optional[int] = None,
        fill: Optional[int] = None, only_from: Optional[Collection[str]] = None, version_not: Optional[str] = None,
    ) -> BulkResult:
        if not reason or not reason.strip():
            raise Invalid("a reason is required for operator transitions")
        allowed = None if only_from is None else frozenset(only_from)

        def plan(tx: Tx) -> tuple[int, list[_Target], list[Change]]:
            cid, tid, _ = campaign_task(tx, campaign, task)
            targets, missing = _select(tx, tid, task, runs, failed, fill)
            left: list[Change] = []
            why: dict[int, str] = {}
            if version_not is not None:
                targets, left, why = _made_by_other(tx, tid, targets if runs or failed or fill is not None else None,
                                                    version_not)
            if allowed is not None:
                for t in targets:
                    if t.status not in allowed:
                        raise Conflict(f"task {task} run {t.run} is {t.status}, not {' or '.join(sorted(allowed))}:"
                                       " nothing written")
            if target == T.REPROCESS:
                targets = _cascaded(tx, _expand(tx, self, cid, targets, downstream))
            elif target == T.SKIPPED:  # nothing to do downstream either: the dependent tasks skip the run too
                targets = _expand(tx, self, cid, targets, True)
            changes = [Change("task", f"{task} run {r}", None, target.value, "refused", "no such task instance")
                       for r in missing] + left
            changes += [_decide(t, target, _unprocessed(tx, campaign, t) if target == T.REPROCESS and t.explicit
                                and t.status == T.NEW.value else "", why.get(t.iid, "")) for t in targets]
            return cid, targets, changes

        if dry_run:
            with self.db.tx(write=False) as tx:
                return BulkResult(plan(tx)[2], dry_run=True)

        def body(ctx: Ctx) -> BulkResult:
            cid, targets, changes = plan(ctx.tx)
            if generation is not None:
                _check_generation(ctx.tx, task, targets, generation)
            if any(c.outcome == "refused" for c in changes):
                raise _refusal(changes)
            for t, change in zip(targets, changes[len(changes) - len(targets):]):
                if change.outcome == "changed":
                    _write(ctx, cid, t, target, reason)
            return BulkResult(changes)

        args: tuple[Any, ...] = (campaign, task, sorted(runs), failed, downstream, target.value, reason, generation)
        if fill is not None or allowed is not None:  # (the fingerprints of calls without them stay as they were)
            args += (fill, sorted(allowed or ()))
        if version_not is not None:
            args += (version_not,)
        return self._write(kind, request_id, body, encode=BulkResult.to_dict, decode=BulkResult.from_dict, args=args)


def _check_generation(tx: Tx, task: str, targets: Sequence[_Target], generation: int) -> None:
    """Refuse a claim's rollback unless each run it names is still ``processing`` in that claim's generation."""
    for t in targets:
        if not t.explicit:
            continue
        gen = tx.scalar("SELECT generation FROM task_instance WHERE id = ?", (t.iid,))
        if t.status != T.PROCESSING.value or gen != generation:
            raise Conflict(f"task {task} run {t.run} is {t.status} in generation {gen}, no longer the claim of"
                           f" generation {generation}: not rolled back")


def _target(row: Sequence[Any], explicit: bool) -> _Target:
    return _Target(row[0], row[1], row[2], row[3], row[4], row[5], explicit)


_COLUMNS = ("SELECT ti.id, ti.task_id, t.name, r.run_number, ti.status, ti.version FROM task_instance ti"
            " JOIN run r ON r.id = ti.run_id JOIN task t ON t.id = ti.task_id")


#: what a fill's reprocessing selects: the instances processed (or being processed) for a run of the fill
PROCESSED = ("processing", "done", "failed", "merged")


def _select(
    tx: Tx, tid: int, task: str, runs: Sequence[int], failed: bool, fill: Optional[int] = None
) -> tuple[list[_Target], list[int]]:
    found: dict[int, _Target] = {}
    if fill is not None:
        marks = ",".join("?" * len(PROCESSED))
        for row in tx.all(f"{_COLUMNS} WHERE ti.task_id = ? AND r.fill = ? AND ti.status IN ({marks}){tx.lock('ti')}",
                          (tid, fill, *PROCESSED)):
            found[row[0]] = _target(row, True)
    wanted = sorted(set(runs))
    for chunk in chunks(wanted):
        marks = ",".join("?" * len(chunk))
        for row in tx.all(f"{_COLUMNS} WHERE ti.task_id = ? AND r.run_number IN ({marks}){tx.lock('ti')}",
                          (tid, *chunk)):
            found[row[0]] = _target(row, True)
    if failed:
        for row in tx.all(f"{_COLUMNS} WHERE ti.task_id = ? AND ti.status = 'failed'{tx.lock('ti')}", (tid,)):
            found[row[0]] = _target(row, True)
    present = {t.run for t in found.values()}
    return sorted(found.values(), key=lambda t: t.run), [r for r in wanted if r not in present]


def _expand(tx: Tx, store: StoreBase, cid: int, targets: list[_Target], downstream: bool) -> list[_Target]:
    """Add the runs merged into reprocessed leaders and, with ``downstream``, the dependent tasks' instances.

    Level by level, a few set-based reads per level (a read per instance took 15 ms each on 50,000 instances:
    2,000 runs reprocessed downstream took 54 s)."""
    chosen: dict[int, _Target] = {t.iid: t for t in targets}
    frontier = list(targets)
    children: dict[int, list[int]] = {}
    while frontier:
        found: list[_Target] = []
        ids = sorted({t.iid for t in frontier})
        for part in chunks(ids):
            marks = ",".join("?" * len(part))
            # a group is reprocessed whole: a merged run brings its leader, a leader the runs merged into it
            found += [_target(row, False) for row in tx.all(
                f"{_COLUMNS} WHERE (ti.leader_id IN ({marks}) OR ti.id IN (SELECT leader_id FROM task_instance"
                f" WHERE id IN ({marks}) AND leader_id IS NOT NULL))"
                f" AND ti.status IN ('merged', 'processing', 'done', 'failed'){tx.lock('ti')}", (*part, *part))]
        if downstream:
            runs_of: dict[int, set[int]] = {}
            for item in frontier:
                if item.task_id not in children:
                    children[item.task_id] = downstream_tasks(tx, item.task_id)
                for child in children[item.task_id]:
                    runs_of.setdefault(child, set()).add(item.run)
            for child, runs in sorted(runs_of.items()):
                for part in chunks(sorted(runs)):
                    found += [_target(row, False) for row in tx.all(
                        f"{_COLUMNS} WHERE ti.task_id = ? AND r.run_number IN ({','.join('?' * len(part))})"
                        f"{tx.lock('ti')}", (child, *part))]
        frontier = []
        for t in found:
            if t.iid not in chosen:
                chosen[t.iid] = t
                frontier.append(t)
    return sorted(chosen.values(), key=lambda t: (t.explicit is False, t.task_id, t.run))


#: the last transition of an instance, as its reason's text (through the partial index of task rows)
_LAST_REASON = (f"SELECT s.text FROM string s WHERE s.id = (SELECT a.reason FROM audit_log a WHERE a.instance_id = ?"
                f" AND a.{TASK_ROWS} ORDER BY a.id DESC LIMIT 1)")


def _cascaded(tx: Tx, targets: list[_Target]) -> list[_Target]:
    """``targets`` and, for each skipped one brought back, the instances its skip cascaded to: the dependent tasks'
    instances of its run that are skipped by a cascade (their last reason ends with "(cascade)", never an
    operator's own skip) and have no other upstream task still skipped for the run; theirs in turn."""
    chosen: dict[int, _Target] = {t.iid: t for t in targets}
    queue = [t for t in targets if t.status == T.SKIPPED.value]
    while queue:
        item = queue.pop(0)
        rows = tx.all(f"{_COLUMNS} JOIN task_dep d ON d.task_id = ti.task_id WHERE d.depends_on_id = ?"
                      " AND ti.run_id = (SELECT run_id FROM task_instance WHERE id = ?)"
                      f" AND ti.status = 'skipped'{tx.lock('ti')}", (item.task_id, item.iid))
        for row in rows:
            child = _target(row, False)
            if child.iid in chosen or not str(tx.scalar(_LAST_REASON, (child.iid,)) or "").endswith(CASCADE):
                continue
            others = tx.all("SELECT u.id FROM task_dep d JOIN task_instance u ON u.task_id = d.depends_on_id"
                            " AND u.run_id = (SELECT run_id FROM task_instance WHERE id = ?)"
                            " WHERE d.task_id = ? AND u.status = 'skipped'", (child.iid, child.task_id))
            if all(o[0] in chosen for o in others):
                chosen[child.iid] = child
                queue.append(child)
    return sorted(chosen.values(), key=lambda t: (t.explicit is False, t.task_id, t.run))


def _unprocessed(tx: Tx, campaign: str, t: _Target) -> str:
    """Why a run not processed yet cannot be reprocessed, and what to do: when its fill was processed without it
    (a late run of a group), the group's leader and the command that takes it in."""
    said = f"{t.task} run {t.run} is {t.status}: not processed yet"
    row = tx.one(
        "SELECT lr.run_number, l.status, r.fill FROM task_instance ti JOIN run r ON r.id = ti.run_id"
        " JOIN run lr ON lr.campaign_id = r.campaign_id AND lr.fill = r.fill"
        " JOIN task_instance l ON l.run_id = lr.id AND l.task_id = ti.task_id"
        " WHERE ti.id = ? AND l.status IN ('processing', 'done', 'failed')"
        " AND EXISTS (SELECT 1 FROM task_instance m WHERE m.leader_id = l.id)"
        " ORDER BY lr.run_number DESC LIMIT 1", (t.iid,))
    if row is None:
        return f"{said}; its next claim processes it"
    leader, status, fill = row
    return (f"{said}; fill {fill} was processed without it, in the group led by run {leader} ({status}): to process"
            f" it with its fill, reprocess the group: ecalstate reprocess -c {campaign} --task {t.task} --runs {leader}"
            ' --reason "..."')


def _decide(t: _Target, target: TaskStatus, unprocessed: str = "", why: str = "") -> Change:
    """The outcome of one instance; ``unprocessed``: why an explicit run not processed yet is refused instead of
    the table's bare refusal; ``why``: why it was selected (the version that made it)."""
    key = f"{t.task} run {t.run}"
    current = TaskStatus(t.status)
    if current == target:
        return Change("task", key, current.value, target.value, "unchanged", "already " + target.value)
    if TASK.is_allowed(current, target):
        if target not in OPERATOR_TARGETS:
            return Change("task", key, current.value, target.value, "refused",
                          f"{target.value} is set by claims, not by hand (an operator may set: "
                          f"{', '.join(s.value for s in OPERATOR_TARGETS)})")
        return Change("task", key, current.value, target.value, "changed", why or ("" if t.explicit else "cascade"))
    if not t.explicit and current in (T.NEW, T.REPROCESS):
        return Change("task", key, current.value, target.value, "unchanged", "not processed yet")
    if not t.explicit and target == T.SKIPPED:
        return Change("task", key, current.value, target.value, "unchanged", f"keeps its {current.value} result")
    allowed = ", ".join(sorted(s.value for s in TASK.allowed(current)))
    return Change("task", key, current.value, target.value, "refused",
                  unprocessed or f"not in the task table (allowed from {current.value}: {allowed})")


def _refusal(changes: list[Change]) -> Refused:
    """The error for a refused request: :class:`TransitionNotAllowed` when the table refused a pair."""
    refused = [c for c in changes if c.outcome == "refused"]
    summary = f"{len(refused)} of {len(changes)} transitions refused, nothing written"
    result = BulkResult(changes)
    for change in refused:
        if change.current is None:
            continue
        current, requested = TaskStatus(change.current), TaskStatus(change.requested)
        if not TASK.is_allowed(current, requested):
            said = "" if change.reason.startswith("not in the task table") else f"{change.reason}; "
            return TransitionNotAllowed(TASK.entity, change.key, current, requested, TASK.allowed(current),
                                        said + summary, result=result)
    first = refused[0]
    return Refused(f"{summary}; first: {first.key}: {first.current} -> {first.requested}: {first.reason}", result)


def _write(ctx: Ctx, cid: int, t: _Target, target: TaskStatus, reason: str) -> None:
    move_instance(ctx, cid, t.task, iid=t.iid, run=t.run, status=t.status, version=t.version, to=target,
                  reason=reason if t.explicit else f"{reason}{CASCADE}", leader_id=None)


def _made_by_other(tx: Tx, tid: int, targets: Optional[list[_Target]], version: str,
                   ) -> tuple[list[_Target], list[Change], dict[int, str]]:
    """Of ``targets`` (None: every done or failed instance of the task), those done or failed whose current
    generation another version made (or none recorded), with why each was taken; the others, unchanged, with why."""
    if targets is None:
        targets = [_target(row, True) for row in tx.all(
            f"{_COLUMNS} WHERE ti.task_id = ? AND ti.status IN ('done', 'failed'){tx.lock('ti')}", (tid,))]
    generations: dict[int, int] = {}
    for chunk in chunks([t.iid for t in targets]):
        marks = ",".join("?" * len(chunk))
        generations.update(tx.all(f"SELECT id, generation FROM task_instance WHERE id IN ({marks})", chunk))
    made, _ = made_and_done(tx, list(generations))
    chosen: list[_Target] = []
    left: list[Change] = []
    why: dict[int, str] = {}
    for t in targets:
        key = f"{t.task} run {t.run}"
        if t.status not in (T.DONE.value, T.FAILED.value):
            left.append(Change("task", key, t.status, T.REPROCESS.value, "unchanged",
                               f"{t.status}: only a done or failed run is selected by the version that made it"))
            continue
        found = made.get((t.iid, generations[t.iid]))
        if found is not None and found.version == version:
            left.append(Change("task", key, t.status, T.REPROCESS.value, "unchanged", f"made by version {version}"))
            continue
        chosen.append(t)
        why[t.iid] = f"made by version {found.version}" if found and found.version else "made by no recorded version"
    return chosen, left, why
