"""Claims: select eligible task instances and mark them processing, in one transaction.

Two overlapping Jenkins builds can therefore never submit the same run twice:
on SQLite the claim holds the write lock from its first read (``BEGIN
IMMEDIATE``); on PostgreSQL it locks the rows it takes (``FOR UPDATE SKIP
LOCKED``) so a concurrent claimer takes the next ones instead of waiting.

Order (a policy; docs/cli.md, `task add`): for a task with a deadline, what can still make its deadline first, the
earliest deadline first; then what has already missed it (earliest first: Tier-0 has gone past those runs, the
others it still waits for); then runs without a reference (no end time), by run number. A group goes by its
most urgent run. A task without a deadline (or ``order="run"``) is claimed in run order, as before deadlines.

An ordered task (a conditions upload: Tier-0 takes conditions in run order) is claimed strictly in run order, whatever
its deadline: a claim takes only the group of its first run not finished (done, skipped, or merged into a done
leader), and only while none of its runs is in flight (:class:`RunOrder`; its claims take turns). A gate task is never
claimed: an expert approves or rejects its instances (``Store.approve``, ``Store.reject``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Optional, Union

from .base import Ctx, StoreBase, campaign_task, loads, move_instance
from .catalog import ended_fills
from .clock import from_micros, to_micros
from .db import Tx
from .deadlines import FillEnds, reference_of, urgency
from .errors import Invalid, no_instance
from .inputs import inputs_of
from .jobs import check_jobs, insert_jobs, keep_outputs
from .limits import chunks
from .results import FILL_END, ONGOING, Claim, MadeBy, TaskSettings
from .statemachine import TaskStatus

T = TaskStatus

# an instance is eligible when every task it depends on is done for its run, or merged into a done leader (of its
# campaign, or of the campaign it takes its inputs from: ecalstate.inputs);
# the campaign id lets the (campaign, task, status) index find the new/reprocess ones without reading the done ones
ELIGIBLE_SQL = """
SELECT ti.id, r.run_number, r.fill, ti.status, ti.version, ti.generation, r.meta, r.ended_at
FROM task_instance ti JOIN run r ON r.id = ti.run_id
WHERE ti.campaign_id = ? AND ti.task_id = ? AND ti.status IN ('new', 'reprocess')
  AND NOT EXISTS (
    SELECT 1 FROM task_dep d
    WHERE d.task_id = ti.task_id AND NOT EXISTS (
      SELECT 1 FROM task_instance u LEFT JOIN task_instance ul ON ul.id = u.leader_id
      WHERE u.task_id = d.depends_on_id AND u.run_id = ti.run_id
        AND (u.status = 'done' OR (u.status = 'merged' AND ul.status = 'done')))){inputs}
ORDER BY {order}r.run_number
"""
#: a run-end deadline's order in SQL (the parameter: now minus the deadline): the claim of one run per group takes
#: (and on PostgreSQL locks) only the runs it claims, in this order (:func:`~ecalstate.deadlines.urgency`'s)
BY_RUN_END = "CASE WHEN r.ended_at IS NULL THEN 2 WHEN r.ended_at <= ? THEN 1 ELSE 0 END, r.ended_at, "
#: how claims may order: by deadline (the default), or by run number only (as before deadlines: benchmarks)
ORDERS = ("deadline", "run")


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
    #: the instance's reference (its run's end, or its fill's) when its task has a deadline: claims order by it
    reference: Optional[str] = None


#: why a group waits, as data (:class:`Cause` kinds): its fill or era has not ended, one of its runs is not ready
#: upstream, still being taken, being claimed by another build, or already processed for this task (the group
#: came late: its other runs were processed without it), or an earlier run of its ordered task is not finished
CAUSES = ("fill-open", "era-open", "upstream", "ongoing", "claiming", "processed", "ordered")


@dataclass(frozen=True)
class Cause:
    """One reason a group waits: its ``kind`` (one of :data:`CAUSES`), the run it is about (None for the whole
    group), and the words ``submit --dry-run`` prints."""

    kind: str
    run: Optional[int]
    text: str
    #: the run's status for this task (``processed``), or its upstream task and status (``upstream``)
    status: str = ""


@dataclass(frozen=True)
class Waiting:
    """A group not claimed yet because it is not complete, and why (``submit --dry-run`` lists them); ``causes``
    says it as data (the attention model reads them)."""

    group: str
    runs: list[int]
    reason: str
    causes: tuple[Cause, ...] = ()

    def __str__(self) -> str:
        return f"{self.group} waits: {self.reason}"


@dataclass(frozen=True)
class Plan:
    """What a claim would take now (each group's last run leads) and the groups that wait."""

    groups: list[list[Eligible]]
    waiting: list[Waiting] = field(default_factory=list)


#: a grouping rule: eligible runs in, groups out (each group's last run is its leader); no completeness check
Grouper = Callable[[list[Eligible]], list[list[Eligible]]]
#: a claim's jobs, made inside the claim's transaction: (job id, fields) pairs
JobMaker = Callable[[Claim], Sequence[tuple[int, Mapping[str, Any]]]]

#: the built-in groupings (``claim --group-by``, a handler's ``group_by``)
GROUPINGS = ("run", "fill", "lumi", "era")
#: the run metadata key holding a run's integrated luminosity (the OMS mapping's ``recorded_lumi``)
LUMI_KEY = "lumi"
#: the run metadata key naming a run's era
ERA_KEY = "era"

# every run of a scope with this task's instance (if any) and, for a pending one, the first upstream task that
# is not done (nor merged into a done leader): "reco processing", "reco missing", "reco skipped" (a skip cascades,
# so a pending instance under a skipped upstream can never start: its group waits for an operator)
STATE_SQL = """
SELECT r.run_number, r.fill, r.meta, ti.status, (
  SELECT t.name || ' ' || CASE
    WHEN u.status = 'merged' THEN 'merged into a ' || COALESCE(ul.status, 'missing') || ' run'
    ELSE COALESCE(u.status, 'missing') END
  FROM task_dep d JOIN task t ON t.id = d.depends_on_id
  LEFT JOIN task_instance u ON u.task_id = d.depends_on_id AND u.run_id = r.id
  LEFT JOIN task_instance ul ON ul.id = u.leader_id
  WHERE d.task_id = ? AND NOT (COALESCE(u.status, '') = 'done'
                               OR (COALESCE(u.status, '') = 'merged' AND COALESCE(ul.status, '') = 'done'))
  ORDER BY t.name LIMIT 1)
FROM run r LEFT JOIN task_instance ti ON ti.run_id = r.id AND ti.task_id = ?
WHERE r.campaign_id = ? AND ({where})
ORDER BY r.run_number
"""
_ONGOING_LIKE = f'%"{ONGOING}": true%'


@dataclass
class _Row:
    run_number: int
    fill: Optional[int]
    raw: Optional[str]  # the metadata as stored: parsed only when asked (most rows never are)
    status: Optional[str]  # this task's instance; None: the task does not apply (or the run is still being taken)
    upstream: Optional[str]  # the first upstream task not done nor skipped, with its status

    @cached_property
    def meta(self) -> dict[str, Any]:
        return loads(self.raw)


@dataclass(frozen=True)
class Grouping:
    """A built-in grouping: ``run``, ``fill``, ``lumi`` (with a target) or ``era``, each claimed only complete.

    - fill: one group per fill, once the fill ended (recorded by a run source or ``run close-fill``, or a run of a
      later fill exists) and every run of the fill is done or skipped upstream; skipped runs are left out.
    - lumi: consecutive runs of a fill (and era) whose ``lumi_key`` values add up to ``lumi_target`` (a run
      without one counts 0); a run not ready upstream (or still being taken) stops the group there, and the
      remainder closes, below target, when its fill or era ended.
    - era: one group per ``era``, once a later era started (the newest run with an era is of another era)
      and every run of the era is done or skipped upstream.
    """

    by: str = "run"
    lumi_target: Optional[float] = None
    lumi_key: str = LUMI_KEY

    def plan(self, tx: Tx, cid: int, task_id: int, task: str, eligible: list[Eligible]) -> Plan:
        if self.by == "run":
            return Plan(one_per_run(eligible))
        if self.by == "fill":
            return _fill_plan(tx, cid, task_id, task, eligible)
        if self.by == "era":
            return _era_plan(tx, cid, task_id, task, eligible)
        return _lumi_plan(tx, cid, task_id, eligible, float(self.lumi_target or 0), self.lumi_key)


def grouping(group_by: Union[None, str, Grouper, Grouping] = None, lumi_target: Optional[float] = None,
             lumi_key: str = LUMI_KEY) -> Union[Grouping, Grouper]:
    """The grouping ``group_by`` names (None: one group per run); a callable is a handler's own rule."""
    if isinstance(group_by, Grouping) or callable(group_by):
        return group_by
    by = group_by or "run"
    if by not in GROUPINGS:
        raise Invalid(f"unknown grouping {by!r} (valid: {', '.join(GROUPINGS)})")
    if by == "lumi" and (lumi_target is None or not lumi_target > 0):
        raise Invalid(f"grouping by lumi needs a luminosity target > 0 (got {lumi_target})")
    if by != "lumi" and lumi_target is not None:
        raise Invalid("a luminosity target goes with grouping by lumi only")
    return Grouping(by, lumi_target, lumi_key)


def one_per_run(runs: list[Eligible]) -> list[list[Eligible]]:
    return [[r] for r in runs]


class Claims(StoreBase):
    """Atomic claims of eligible task instances."""

    def eligible(self, campaign: str, task: str, order: str = "deadline") -> list[Eligible]:
        """What a claim would consider now, in the order it would take it (for dry runs and displays)."""
        now = self.clock()
        with self.db.tx(write=False) as tx:
            cid, tid, _ = campaign_task(tx, campaign, task)
            return _Order.of(tx, tid, order, now).eligible(tx, cid, tid, lock=False)

    def plan(
        self, campaign: str, task: str, group_by: Union[None, str, Grouper, Grouping] = None,
        lumi_target: Optional[float] = None, lumi_key: str = LUMI_KEY, order: str = "deadline",
    ) -> Plan:
        """The groups a claim would take now, in its order, and the groups that wait, with why (for ``submit
        --dry-run``)."""
        rule = grouping(group_by, lumi_target, lumi_key)
        now = self.clock()
        with self.db.tx(write=False) as tx:
            cid, tid, _ = campaign_task(tx, campaign, task)
            ranked = _Order.of(tx, tid, order, now)
            never_claimed(ranked.declared, task)
            plan = ranked.sort(_plan(tx, cid, tid, task, rule, ranked.eligible(tx, cid, tid, lock=False)))
            return RunOrder.read(tx, cid, tid).apply(plan) if ranked.declared.ordered else plan

    def claim(
        self,
        campaign: str,
        task: str,
        limit: Optional[int] = None,
        group_by: Union[None, str, Grouper, Grouping] = None,
        request_id: Optional[str] = None,
        jobs: Optional[JobMaker] = None,
        lumi_target: Optional[float] = None,
        lumi_key: str = LUMI_KEY,
        exclude: Collection[int] = (),
        made_by: Optional[MadeBy] = None,
        order: str = "deadline",
    ) -> list[Claim]:
        """Mark up to ``limit`` complete groups of eligible runs as claimed: leader ``processing``, the rest
        ``merged``. A group that is not complete (see :class:`Grouping`) waits; :meth:`plan` says why.

        ``jobs`` (the claim in, (job id, fields) pairs out) creates each claim's jobs in the same transaction:
        a build killed after the claim leaves jobs "to submit", never a claim without jobs. It runs while the
        write lock is held: it must only compute, not wait on I/O. Whatever it raises undoes the claim.
        ``exclude``: groups holding one of these runs are left alone (a submit stage's failed groups).
        ``made_by``: the workflow's version and configuration, recorded with each claim (its audit row's detail).
        ``order``: ``deadline`` (see the module) or ``run`` (run number only).
        """
        if limit is not None and limit < 1:
            raise Invalid(f"invalid limit {limit}: expected an integer >= 1")
        if order not in ORDERS:
            raise Invalid(f"unknown claim order {order!r} (valid: {', '.join(ORDERS)})")
        rule = grouping(group_by, lumi_target, lumi_key)
        skip = set(exclude)
        detail = made_by.detail() if made_by is not None else None

        def body(ctx: Ctx) -> list[Claim]:
            tx = ctx.tx
            cid, tid, _ = campaign_task(tx, campaign, task)
            ranked = _Order.of(tx, tid, order, ctx.now)
            never_claimed(ranked.declared, task)
            if ranked.declared.ordered:
                tx.serialize("ordered claim", tid)  # its claims take turns: each sees what the one before claimed
            # one run per group: take (and on PostgreSQL lock) only what is claimed, so concurrent
            # claimers get the next runs instead of finding everything locked (in SQL's order: not a fill's end)
            rows = limit if isinstance(rule, Grouping) and rule.by == "run" and not skip and ranked.in_sql else None
            # completeness is decided here, inside the claim's transaction: two builds agree on it
            plan = ranked.sort(_plan(tx, cid, tid, task, rule, ranked.eligible(tx, cid, tid, lock=True, limit=rows)))
            if ranked.declared.ordered:
                plan = RunOrder.read(tx, cid, tid).apply(plan)
            groups = [g for g in plan.groups if g and not any(e.run_number in skip for e in g)]
            if limit is not None:
                groups = groups[:limit]
            claims = [_claim_group(ctx, cid, task, group, detail) for group in groups]
            if jobs is not None:
                for claim in claims:
                    made = list(jobs(claim))
                    jids, fields = check_jobs([j for j, _ in made], [dict(f) for _, f in made])
                    insert_jobs(ctx, cid, task, claim.run_number, claim.instance_id, claim.generation, jids, fields)
            return claims

        name = rule.by if isinstance(rule, Grouping) else getattr(rule, "__name__", "custom")
        args: tuple[Any, ...] = (campaign, task, limit, None if name == "run" and group_by is None else name)
        if isinstance(rule, Grouping) and rule.by == "lumi":
            args += (rule.lumi_target, rule.lumi_key)
        if detail is not None:
            args += (detail,)
        if order != "deadline":
            args += (order,)
        return self._write(
            "claim", request_id, body, args=args,
            encode=lambda claims: [c.__dict__ for c in claims],
            decode=lambda data: [Claim(**d) for d in data],
        )

    def ready_since(self, campaign: str, task: str, runs: Sequence[int]) -> dict[int, str]:
        """When each instance of ``runs`` became ready to be taken (an ordered run, a gate's approval wait since):
        the latest of its own last change and its upstream instances' (a merged one's group leader's), by run."""
        out: dict[int, str] = {}
        with self.db.tx(write=False) as tx:
            _, tid, _ = campaign_task(tx, campaign, task)
            for chunk in chunks(sorted(set(runs))):
                marks = ",".join("?" * len(chunk))
                for run, *times in tx.all(
                        "SELECT r.run_number, ti.updated_at, u.updated_at, ul.updated_at FROM task_instance ti"
                        " JOIN run r ON r.id = ti.run_id LEFT JOIN task_dep d ON d.task_id = ti.task_id"
                        " LEFT JOIN task_instance u ON u.task_id = d.depends_on_id AND u.run_id = ti.run_id"
                        " LEFT JOIN task_instance ul ON ul.id = u.leader_id"
                        f" WHERE ti.task_id = ? AND r.run_number IN ({marks})", (tid, *chunk)):
                    out[run] = max([out.get(run, ""), *(t for t in times if t)])
        return out

    def claim_of(self, campaign: str, task: str, run: int) -> Claim:
        """The claim ``run`` leads now (its current generation and merged runs), to finish what a killed stage
        left "to submit"."""
        with self.db.tx(write=False) as tx:
            _, tid, _ = campaign_task(tx, campaign, task)
            row = tx.one("SELECT ti.id, r.fill, ti.generation, r.meta FROM task_instance ti JOIN run r ON r.id ="
                         " ti.run_id WHERE ti.task_id = ? AND r.run_number = ?", (tid, run))
            if row is None:
                raise no_instance(campaign, task, run)
            merged = [r[0] for r in tx.all(
                "SELECT r.run_number FROM task_instance ti JOIN run r ON r.id = ti.run_id"
                " WHERE ti.leader_id = ? AND ti.status = 'merged' ORDER BY r.run_number", (row[0],))]
        return Claim(task, run, row[1], row[0], row[2], merged, loads(row[3]))


@dataclass(frozen=True)
class _Order:
    """A claim's order: the task's deadline settings (None: run order, always for an ordered task) at the claim's
    time, and the task's settings as declared."""

    settings: Optional[TaskSettings]
    now: str
    declared: TaskSettings = TaskSettings()

    @classmethod
    def of(cls, tx: Tx, task_id: int, order: str, now: str) -> _Order:
        settings = TaskSettings.from_json(tx.scalar("SELECT settings FROM task WHERE id = ?", (task_id,)))
        by_deadline = order == "deadline" and settings.deadline is not None and not settings.ordered
        return cls(settings if by_deadline else None, now, settings)

    @property
    def in_sql(self) -> bool:
        """Whether the eligible rows come in this order from SQL (run order, or a run-end deadline)."""
        return self.settings is None or self.settings.deadline_from != FILL_END

    def eligible(self, tx: Tx, cid: int, task_id: int, lock: bool, limit: Optional[int] = None) -> list[Eligible]:
        """The task's eligible instances, in this order (their references read with them)."""
        order = BY_RUN_END if self.settings is not None and self.in_sql else ""
        sql, params = eligible_sql(tx, cid, task_id, order)
        if self.settings is not None and order:
            params.append(from_micros(to_micros(self.now) - (self.settings.deadline or 0) * 1_000_000))
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        if lock:
            sql += tx.skip_locked("ti")
        rows = [Eligible(r[0], r[1], r[2], r[3], r[4], r[5], loads(r[6]), r[7] if order else None)
                for r in tx.all(sql, params)]
        if self.settings is not None and not self.in_sql:
            settings = self.settings
            ends = FillEnds.read(tx, cid, {e.fill for e in rows if e.fill is not None})
            rows = [replace(e, reference=reference_of(settings, e.run_number, e.fill, None, ends)[0]) for e in rows]
            rows.sort(key=self.rank)  # stable: run order among equals
        return rows

    def rank(self, item: Eligible) -> tuple[int, str]:
        return urgency(item.reference, self.settings, self.now)

    def sort(self, plan: Plan) -> Plan:
        """The plan's groups in this order: by their most urgent run, then their leader's run number."""
        if self.settings is not None:
            plan.groups.sort(key=lambda g: (min(self.rank(e) for e in g), g[-1].run_number))
        return plan


def eligible_sql(tx: Tx, cid: int, task_id: int, order: str) -> tuple[str, list[Any]]:
    """The statement reading the task's eligible instances in ``order``, and its parameters so far: its upstream
    tasks in its campaign, or in the campaign it takes its inputs from (:mod:`ecalstate.inputs`)."""
    inputs = inputs_of(tx, task_id)
    clause, extra = inputs.clause() if inputs is not None else ("", [])
    return ELIGIBLE_SQL.format(order=order, inputs=clause), [cid, task_id, *extra]


def awaiting(tx: Tx, cid: int, task_id: int, runs: Sequence[int], lock: bool
             ) -> tuple[dict[int, Eligible], dict[int, tuple[str, str]]]:
    """Of ``runs``, the task's instances that may be taken now (claimed, or decided by an expert for a gate), read
    locked when ``lock`` (where rows are locked); and, for each other instance, its status and the upstream task it
    waits for with that task's status ('' when none)."""
    wanted = set(runs)
    sql, params = eligible_sql(tx, cid, task_id, "")
    ready = {e.run_number: e for e in (Eligible(r[0], r[1], r[2], r[3], r[4], r[5], loads(r[6]))
                                        for r in tx.all(sql + (tx.lock("ti") if lock else ""), params)
                                        if r[1] in wanted)}
    why: dict[int, tuple[str, str]] = {}
    for chunk in chunks(sorted(wanted - set(ready))):
        marks = ",".join("?" * len(chunk))
        for row in _state(tx, cid, task_id, f"r.run_number IN ({marks}) AND ti.id IS NOT NULL", chunk):
            why[row.run_number] = (str(row.status), row.upstream or "")
    return ready, why


def never_claimed(settings: TaskSettings, task: str) -> None:
    """Refuse to claim (or plan) a gate task: an expert approves or rejects its instances."""
    if settings.gate:
        raise Invalid(f"task {task} is a gate: its instances are never claimed (no jobs); an expert approves or"
                      " rejects them: ecalstate approve|reject -c CAMPAIGN --task TASK --runs SET --reason ...")


#: an ordered task's first run not finished (nor merged into a done leader), its status and its leader's
FIRST_OPEN_SQL = """
SELECT r.run_number, ti.status, l.status FROM task_instance ti JOIN run r ON r.id = ti.run_id
LEFT JOIN task_instance l ON l.id = ti.leader_id
WHERE ti.campaign_id = ? AND ti.task_id = ? AND ti.status IN ('new', 'reprocess', 'processing', 'failed', 'merged')
  AND NOT (ti.status = 'merged' AND COALESCE(l.status, '') = 'done')
ORDER BY r.run_number LIMIT 1
"""
#: an ordered task's first run in flight (processing), if any
IN_FLIGHT_SQL = ("SELECT MIN(r.run_number) FROM task_instance ti JOIN run r ON r.id = ti.run_id"
                 " WHERE ti.campaign_id = ? AND ti.task_id = ? AND ti.status = 'processing'")


@dataclass(frozen=True)
class RunOrder:
    """Where an ordered task stands: its first run not finished (None: every run is) with its status, and its first
    run in flight. A claim takes only the group that starts at the first run, and only while nothing is in flight;
    a run without an instance of the task is not waited for."""

    first: Optional[int]
    status: str
    in_flight: Optional[int]

    @classmethod
    def read(cls, tx: Tx, cid: int, task_id: int) -> RunOrder:
        row = tx.one(FIRST_OPEN_SQL, (cid, task_id))
        flying = tx.scalar(IN_FLIGHT_SQL, (cid, task_id))
        if row is None:
            return cls(None, "", flying)
        status = f"merged into a {row[2] or 'missing'} run" if row[1] == "merged" else str(row[1])
        return cls(int(row[0]), status, flying)

    @property
    def waits_for(self) -> Optional[tuple[int, str]]:
        """The run every other run waits for, and its status (None: the first run's group may be claimed)."""
        if self.in_flight is not None:
            return self.in_flight, "processing"
        if self.first is None or self.status in ("new", "reprocess"):
            return None
        return self.first, self.status

    def apply(self, plan: Plan) -> Plan:
        """``plan`` with only the group that starts at the first run (when it may be claimed); the other groups wait
        (cause ``ordered``), naming the run they wait for."""
        blocker = self.waits_for
        keep: list[list[Eligible]] = []
        waiting = list(plan.waiting)
        for group in plan.groups:
            if blocker is None and not keep and group and group[0].run_number == self.first:
                keep.append(group)
                continue
            run, status = blocker or (self.first or group[0].run_number, self.status)
            text = f"in run order after run {run} ({status})"
            waiting.append(Waiting(_label(group), [e.run_number for e in group], text,
                                   (Cause("ordered", run, text, status),)))
        return Plan(keep, waiting)


def _label(group: Sequence[Eligible]) -> str:
    """How a waiting group is named: its run, its fill, or its runs."""
    if len(group) == 1:
        return f"run {group[0].run_number}"
    fills = {e.fill for e in group}
    return f"fill {group[0].fill}" if len(fills) == 1 and group[0].fill is not None else \
        f"runs {group[0].run_number}-{group[-1].run_number}"


def _claim_group(ctx: Ctx, cid: int, task: str, group: Sequence[Eligible],
                 detail: Optional[dict[str, Any]] = None) -> Claim:
    leader, members = group[-1], list(group[:-1])
    generation = leader.generation + 1
    move_eligible(ctx, cid, task, leader, T.PROCESSING, "claimed by submit", generation=generation, detail=detail)
    for member in members:
        move_eligible(ctx, cid, task, member, T.MERGED, f"merged into run {leader.run_number}",
              leader_id=leader.instance_id)
    return Claim(task, leader.run_number, leader.fill, leader.instance_id, generation,
                 [m.run_number for m in members], leader.meta)


def move_eligible(
    ctx: Ctx, cid: int, task: str, inst: Eligible, to: TaskStatus, reason: str,
    generation: Optional[int] = None, leader_id: Optional[int] = None, detail: Optional[dict[str, Any]] = None,
) -> None:
    """Claim (``generation``: the next one) or merge (into ``leader_id``) an instance read as :class:`Eligible`;
    a new generation first keeps what the one before gave (its outputs stay readable until the new one is done).
    ``detail``: the claim's audit detail (what made the generation)."""
    gen = inst.generation if generation is None else generation
    if gen != inst.generation:
        keep_outputs(ctx.tx, inst.instance_id, inst.generation)
    move_instance(ctx, cid, task, iid=inst.instance_id, run=inst.run_number, status=inst.status,
                  version=inst.version, to=to, reason=reason, generation=gen, new_generation=gen, leader_id=leader_id,
                  detail=detail)


def _plan(tx: Tx, cid: int, task_id: int, task: str, rule: Union[Grouping, Grouper],
          eligible: list[Eligible]) -> Plan:
    if isinstance(rule, Grouping):
        return rule.plan(tx, cid, task_id, task, eligible)
    return Plan(rule(eligible))


def _state(tx: Tx, cid: int, task_id: int, where: str, params: Sequence[Any]) -> list[_Row]:
    """The runs of a scope as completeness sees them (one query, set-based; one more for inputs from another
    campaign)."""
    rows = [_Row(r[0], r[1], r[2], r[3], r[4])
            for r in tx.all(STATE_SQL.format(where=where), (task_id, task_id, cid, *params))]
    inputs = inputs_of(tx, task_id)
    if inputs is not None:
        waits = inputs.waits(tx, [r.run_number for r in rows if r.status in ("new", "reprocess")])
        for row in rows:
            row.upstream = waits.get(row.run_number, row.upstream)
    return rows


def _why(row: _Row, eligible: Collection[int], task: str, unit: str) -> Optional[Cause]:
    """Why ``row`` keeps its group waiting, or None (ready, skipped, or not a run of this task)."""
    run = row.run_number
    if row.status is None:
        return Cause("ongoing", run, f"run {run} still being taken") if row.meta.get(ONGOING) is True else None
    if row.status == "skipped":
        return None
    if row.status in ("new", "reprocess"):
        if row.upstream:
            return Cause("upstream", run, f"run {run} {row.upstream}", row.upstream)
        if run not in eligible:  # PostgreSQL: locked by a concurrent claim
            return Cause("claiming", run, f"run {run} being claimed by another build")
        return None
    return Cause("processed", run, f"run {run} already {row.status} for {task} (reprocess the whole {unit} to"
                 " regroup it)", row.status)


def _newest_era(tx: Tx, cid: int) -> Optional[str]:
    """The era of the newest run that names one: every other era has ended (eras follow each other)."""
    for (meta,) in tx.all("SELECT meta FROM run WHERE campaign_id = ? ORDER BY run_number DESC LIMIT 100", (cid,)):
        era = loads(meta).get(ERA_KEY)
        if era not in (None, ""):
            return str(era)
    return None


def _complete(rows: list[_Row], eligible: dict[int, Eligible], task: str, unit: str, label: str,
              ended: bool, not_ended: str, plan: Plan) -> None:
    """Add the unit's eligible runs to ``plan``: one group when it ended and every run is ready, else waiting."""
    causes = ([] if ended else [Cause(f"{unit}-open", None, not_ended)])
    causes += [w for w in (_why(r, eligible, task, unit) for r in rows) if w]
    members = [eligible[r.run_number] for r in rows if r.run_number in eligible]
    if causes:
        plan.waiting.append(Waiting(label, [m.run_number for m in members], "; ".join(c.text for c in causes),
                                    tuple(causes)))
    elif members:
        plan.groups.append(members)


def _fill_plan(tx: Tx, cid: int, task_id: int, task: str, eligible: list[Eligible]) -> Plan:
    plan = Plan([[e] for e in eligible if e.fill is None])
    fills = sorted({e.fill for e in eligible if e.fill is not None})
    if fills:
        ended = ended_fills(tx, cid, fills)
        by_run = {e.run_number: e for e in eligible}
        rows = _by(_state(tx, cid, task_id, f"r.fill IN ({','.join('?' * len(fills))})", fills), lambda r: r.fill)
        for fill in fills:
            _complete(rows[fill], by_run, task, "fill", f"fill {fill}", fill in ended, "fill not ended", plan)
    plan.groups.sort(key=lambda g: g[-1].run_number)
    return plan


def _by(rows: list[_Row], key: Callable[[_Row], Any]) -> dict[Any, list[_Row]]:
    """``rows`` by ``key``, each list in run order."""
    out: dict[Any, list[_Row]] = defaultdict(list)
    for row in rows:
        out[key(row)].append(row)
    return out


def _pending(tx: Tx, cid: int, task_id: int) -> list[_Row]:
    """The task's runs not claimed yet (new, reprocess, skipped) and the runs still being taken."""
    return _state(tx, cid, task_id, "ti.status IN ('new', 'reprocess', 'skipped')"
                  " OR (ti.id IS NULL AND r.meta LIKE ?)", (_ONGOING_LIKE,))


def _era_plan(tx: Tx, cid: int, task_id: int, task: str, eligible: list[Eligible]) -> Plan:
    plan = Plan([[e] for e in eligible if e.meta.get(ERA_KEY) in (None, "")])
    eras = sorted({str(e.meta[ERA_KEY]) for e in eligible if e.meta.get(ERA_KEY) not in (None, "")})
    if eras:
        newest = _newest_era(tx, cid)
        by_run = {e.run_number: e for e in eligible}
        rows = _by(_pending(tx, cid, task_id), lambda r: str(r.meta.get(ERA_KEY)))
        for era in eras:
            _complete(rows[era], by_run, task, "era", f"era {era}", newest is not None and newest != era,
                      "era not ended (no run of a later era yet)", plan)
    plan.groups.sort(key=lambda g: g[-1].run_number)
    return plan


def _lumi(meta: Mapping[str, Any], key: str) -> float:
    try:
        return max(0.0, float(meta.get(key) or 0))
    except (TypeError, ValueError):
        return 0.0


def _lumi_plan(tx: Tx, cid: int, task_id: int, eligible: list[Eligible], target: float, key: str) -> Plan:
    """Consecutive runs of one fill and era up to ``target``; the remainder closes when the fill or era ended."""
    plan = Plan([])
    if not eligible:
        return plan
    by_run = {e.run_number: e for e in eligible}
    rows = _pending(tx, cid, task_id)
    fills = sorted({r.fill for r in rows if r.fill is not None})
    ended = ended_fills(tx, cid, fills) if fills else set()
    newest = _newest_era(tx, cid)
    segments: dict[tuple[Optional[int], Optional[str]], list[_Row]] = defaultdict(list)
    for row in rows:
        era = row.meta.get(ERA_KEY)
        segments[(row.fill, None if era in (None, "") else str(era))].append(row)
    for (fill, era), seg in segments.items():
        group: list[Eligible] = []
        total, blocked = 0.0, None
        for row in seg:
            blocked = _why(row, by_run, "", "")  # pending runs only: never "already claimed"
            if blocked is not None:
                break
            if row.status == "skipped" or row.run_number not in by_run:
                continue
            group.append(by_run[row.run_number])
            total += _lumi(row.meta, key)
            if total >= target:
                plan.groups.append(group)
                group, total = [], 0.0
        grouped = {e.run_number for g in plan.groups for e in g}
        left = [r.run_number for r in seg if r.run_number in by_run and r.run_number not in grouped]
        closed = (fill is not None and fill in ended) or (era is not None and newest is not None and newest != era)
        if group and closed and not blocked:
            plan.groups.append(group)
        elif left:
            where = f"fill {fill}" if fill is not None else f"era {era}"
            cause = blocked or (Cause("fill-open", None, "fill not ended") if fill is not None else
                                Cause("era-open", None, "era not ended"))
            plan.waiting.append(Waiting(f"lumi group of {where} from run {left[0]}", left,
                                        f"{cause.text} ({total:g} of {target:g} {key})", (cause,)))
    plan.groups.sort(key=lambda g: g[-1].run_number)
    return plan
