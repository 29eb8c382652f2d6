"""Stateful property tests: random API call sequences against a real database, checked against a pure-Python model.

Rules inject runs, claim (alone or grouped by fill), create jobs, update jobs one by one and in bulk (legal
and illegal targets, old generations, retries), run operator set/reprocess (legal and illegal, dry runs,
downstream cascades) and replay request ids. After every step the database must agree with the model, and:
every status is in its table; audit rows (task + job) == accepted transitions counted from the API results;
each entity's audit rows form one unbroken chain ending at its current status, with version == number of
rows (so the version grows by exactly one per change); terminal jobs stay terminal; a claim only ever takes
an instance from new/reprocess (never one already processing).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

import pytest
from drive import TRANSITIONS, snapshot
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ecalstate import (
    JOB,
    TASK,
    Invalid,
    JobStatus,
    JobUpdate,
    Refused,
    RunSpec,
    Store,
    TaskStatus,
    TransitionNotAllowed,
)
from ecalstate.errors import Conflict
from ecalstate.results import BatchRecord
from ecalstate.statemachine import OPERATOR_TARGETS

C = "prop"
TASKS: dict[str, tuple[list[str], int]] = {"reco": ([], 1), "calib": (["reco"], 0)}  # dependencies, max retries
TASK_NAMES = list(TASKS)
RUNS = st.integers(1, 10)
FILLS = st.one_of(st.none(), st.integers(1, 3))
JOB_TARGETS = st.sampled_from([s.value for s in JobStatus])


@dataclass
class Inst:
    status: str = "new"
    version: int = 1
    generation: int = 0
    leader: Optional[int] = None


@dataclass
class JobM:
    status: str = "idle"
    version: int = 1
    attempts: int = 1


@dataclass
class Model:
    """What the database must hold, computed from the rules alone."""

    runs: dict[int, Optional[int]] = field(default_factory=dict)
    inst: dict[tuple[str, int], Inst] = field(default_factory=dict)
    jobs: dict[tuple[str, int, int, int], JobM] = field(default_factory=dict)
    transitions: int = 0
    ever_done: set[tuple[str, int, int, int]] = field(default_factory=set)

    def downstream(self, task: str) -> list[str]:
        out: list[str] = []
        frontier = [task]
        while frontier:
            current = frontier.pop(0)
            for child, (deps, _) in TASKS.items():
                if current in deps and child not in out:
                    out.append(child)
                    frontier.append(child)
        return out

    def eligible(self, task: str) -> list[int]:
        def upstream_done(dep: str, run: int) -> bool:
            up = self.inst.get((dep, run))
            if up is None:
                return False
            if up.status == "done":
                return True
            return up.status == "merged" and up.leader is not None and self.inst[(dep, up.leader)].status == "done"

        return sorted(run for (t, run), i in self.inst.items()
                      if t == task and i.status in ("new", "reprocess")
                      and all(upstream_done(d, run) for d in TASKS[task][0]))

    def groups(self, task: str, by_fill: bool, limit: Optional[int]) -> list[list[int]]:
        runs = self.eligible(task)
        if by_fill:
            fills: dict[int, list[int]] = {}
            for run in runs:
                if self.runs[run] is not None:
                    fills.setdefault(self.runs[run], []).append(run)  # type: ignore[arg-type]
            # a fill is claimed complete: ended (a later fill has a run) and every other run of it skipped
            newest = max((f for f in self.runs.values() if f is not None), default=None)
            groups = [g for f, g in fills.items() if newest is not None and f < newest and all(
                i.status == "skipped" or r in g for (t, r), i in self.inst.items() if t == task and self.runs[r] == f)]
            groups += [[r] for r in runs if self.runs[r] is None]
            groups.sort(key=lambda g: g[-1])
        else:
            groups = [[r] for r in runs]
        return groups if limit is None else groups[:limit]

    def job_keys(self, task: str, run: int, gen: int) -> list[tuple[str, int, int, int]]:
        return [k for k in self.jobs if k[:3] == (task, run, gen)]

    def complete(self, task: str, runs: set[int]) -> list[tuple[str, str, str]]:
        """The task instances that the jobs decide: (key, from, to)."""
        out = []
        for run in sorted(runs):
            inst = self.inst[(task, run)]
            jobs = [self.jobs[k] for k in self.job_keys(task, run, inst.generation)]
            if inst.status != "processing" or not jobs:
                continue
            if all(j.status == "done" for j in jobs):
                target = "done"
            elif not any(j.status in ("idle", "running") for j in jobs) and any(
                    j.status == "failed" and j.attempts > TASKS[task][1] for j in jobs):
                target = "failed"
            else:
                continue
            out.append((f"{task} run {run}", inst.status, target))
            inst.status, inst.version = target, inst.version + 1
            self.transitions += 1
        return out

    def job_decision(self, key: tuple[str, int, int, int], target: str) -> str:
        """changed, unchanged, or the refusal reason."""
        job = self.jobs[key]
        if job.status == target:
            return "unchanged"
        if not JOB.is_allowed(JobStatus(job.status), JobStatus(target)):
            return "not in the job table"
        if job.status == "failed" and target == "idle" and job.attempts > TASKS[key[0]][1]:
            return "retries exhausted"
        return "changed"

    def apply_job(self, key: tuple[str, int, int, int], target: str) -> bool:
        """Apply an accepted change; True when it may decide its instance."""
        job = self.jobs[key]
        if job.status == "failed" and target == "idle":
            job.attempts += 1
        job.status, job.version = target, job.version + 1
        self.transitions += 1
        if target == "done":
            self.ever_done.add(key)
        return key[2] == self.inst[key[:2]].generation and target in ("done", "failed")

    def operator_plan(self, task: str, runs: list[int], failed: bool, downstream: bool,
                      target: str) -> list[tuple[str, Optional[str], str, str]]:
        """(key, current, requested, outcome) in the order the store reports them."""
        missing = [r for r in sorted(set(runs)) if (task, r) not in self.inst]
        explicit = {(task, r) for r in runs if (task, r) in self.inst}
        if failed:
            explicit |= {k for k, i in self.inst.items() if k[0] == task and i.status == "failed"}
        chosen = {k: True for k in explicit}
        if target == "reprocess":
            queue = sorted(explicit, key=lambda k: k[1])
            while queue:
                t, r = queue.pop(0)
                extra = [(t, m) for (tt, m), i in sorted(self.inst.items())
                         if tt == t and i.status == "merged" and i.leader == r]
                mine = self.inst[(t, r)]
                if mine.status == "merged" and mine.leader is not None:  # a group is reprocessed whole
                    extra.append((t, mine.leader))
                if downstream:
                    extra += [(child, r) for child in self.downstream(t) if (child, r) in self.inst]
                for k in extra:
                    if k not in chosen:
                        chosen[k] = False
                        queue.append(k)
        plan: list[tuple[str, Optional[str], str, str]] = [
            (f"{task} run {r}", None, target, "refused") for r in missing]
        order = sorted(chosen, key=lambda k: (not chosen[k], TASK_NAMES.index(k[0]), k[1]))
        for k in order:
            current = self.inst[k].status
            c, t = TaskStatus(current), TaskStatus(target)
            if c == t:
                outcome = "unchanged"
            elif TASK.is_allowed(c, t):
                outcome = "changed" if t in OPERATOR_TARGETS else "refused"
            elif not chosen[k] and c in (TaskStatus.NEW, TaskStatus.REPROCESS):
                outcome = "unchanged"
            else:
                outcome = "refused"
            plan.append((f"{k[0]} run {k[1]}", current, target, outcome))
        return plan


class StoreMachine(RuleBasedStateMachine):
    """The real store next to the model; ``url_factory`` gives a fresh empty database per example."""

    url_factory: Callable[[], tuple[str, Callable[[], None]]]

    def __init__(self) -> None:
        super().__init__()
        url, self.cleanup = type(self).url_factory()
        self.store = Store.open(url, actor="prop", create=True)
        self.model = Model()
        self.requests = 0
        self.replay: Optional[tuple[Callable[[], Any], Any]] = None

    @initialize(runs=st.dictionaries(RUNS, FILLS, min_size=2, max_size=6))
    def setup(self, runs: dict[int, Optional[int]]) -> None:
        self.store.create_campaign(C)
        for name, (deps, retries) in TASKS.items():
            self.store.add_task(C, name, depends_on=deps, max_retries=retries)
        self.store.update_rtype(C, "all", add=TASK_NAMES)
        self.inject(runs, use_id=False)

    def teardown(self) -> None:
        self.store.close()
        self.cleanup()

    def request_id(self, use: bool) -> Optional[str]:
        if not use:
            return None
        self.requests += 1
        return f"req-{self.requests}"

    def remember(self, request_id: Optional[str], call: Callable[[], Any], result: Any) -> None:
        if request_id is not None:
            self.replay = (call, result)

    # --- rules -------------------------------------------------------------------------------------------

    @rule(runs=st.dictionaries(RUNS, FILLS, min_size=1, max_size=4), use_id=st.booleans(),
          bad=st.sampled_from([None, None, None, 0, -3, "x"]))
    def inject(self, runs: dict[int, Optional[int]], use_id: bool, bad: Any = None) -> None:
        if bad is not None:
            before = snapshot(self.store)
            with pytest.raises(Invalid):
                self.store.inject_runs(C, [*(RunSpec(r, f) for r, f in runs.items()), RunSpec(bad)])
            assert snapshot(self.store) == before
            return
        rid = self.request_id(use_id)
        call = lambda: self.store.inject_runs(C, [RunSpec(r, f) for r, f in runs.items()], request_id=rid)  # noqa: E731
        result = call()
        fresh = sorted(r for r in runs if r not in self.model.runs)
        assert (result.new, result.existing, result.instances) == (
            fresh, sorted(set(runs) - set(fresh)), len(fresh) * len(TASKS))
        for run in fresh:
            self.model.runs[run] = runs[run]
            for task in TASKS:
                self.model.inst[(task, run)] = Inst()
                self.model.transitions += 1
        self.remember(rid, call, result)

    @rule(task=st.sampled_from(TASK_NAMES), by_fill=st.booleans(), limit=st.one_of(st.none(), st.integers(1, 3)),
          use_id=st.booleans())
    def claim(self, task: str, by_fill: bool, limit: Optional[int], use_id: bool) -> None:
        expected = self.model.groups(task, by_fill, limit)
        rid = self.request_id(use_id)
        call = lambda: self.store.claim(C, task, limit=limit, group_by="fill" if by_fill else None,  # noqa: E731
                                        request_id=rid)
        claims = call()
        assert [c.runs for c in claims] == expected
        for group, claimed in zip(expected, claims):
            for run in group:
                # never claimed twice while processing: only new or reprocess instances are taken
                assert self.model.inst[(task, run)].status in ("new", "reprocess")
            leader = self.model.inst[(task, group[-1])]
            leader.status, leader.version, leader.generation, leader.leader = (
                "processing", leader.version + 1, leader.generation + 1, None)
            assert claimed.generation == leader.generation
            for run in group[:-1]:
                member = self.model.inst[(task, run)]
                member.status, member.version, member.leader = "merged", member.version + 1, group[-1]
            self.model.transitions += len(group)
        self.remember(rid, call, claims)

    @precondition(lambda self: any(i.status == "processing" for i in self.model.inst.values()))
    @rule(data=st.data(), count=st.integers(1, 3))
    def create_jobs(self, data: st.DataObject, count: int) -> None:
        task, run = data.draw(st.sampled_from(sorted(k for k, i in self.model.inst.items()
                                                     if i.status == "processing")))
        gen = self.model.inst[(task, run)].generation
        start = len(self.model.job_keys(task, run, gen))
        assert self.store.create_jobs(C, task, run, range(start, start + count)) == count
        for jid in range(start, start + count):
            self.model.jobs[(task, run, gen, jid)] = JobM()
            self.model.transitions += 1

    @precondition(lambda self: bool(self.model.jobs))
    @rule(data=st.data(), status=JOB_TARGETS, use_id=st.booleans())
    def set_job(self, data: st.DataObject, status: str, use_id: bool) -> None:
        target = status
        key = data.draw(st.sampled_from(sorted(self.model.jobs)))
        task, run, gen, jid = key
        current_gen = self.model.inst[(task, run)].generation
        decision = self.model.job_decision(key, target)
        rid = self.request_id(use_id)
        call = lambda: self.store.set_job_status(C, task, run, jid, target, request_id=rid,  # noqa: E731
                                                 generation=None if gen == current_gen else gen)
        if decision not in ("changed", "unchanged"):
            before = snapshot(self.store)
            with pytest.raises(TransitionNotAllowed):
                call()
            assert snapshot(self.store) == before
            return
        change = call()
        assert (change.outcome, change.current, change.requested) == (decision, self.model.jobs[key].status, target)
        if decision == "changed" and self.model.apply_job(key, target):
            self.model.complete(task, {run})
        self.remember(rid, call, change)

    @precondition(lambda self: bool(self.model.jobs))
    @rule(data=st.data(), use_id=st.booleans(), dry_run=st.booleans())
    def update_jobs(self, data: st.DataObject, use_id: bool, dry_run: bool) -> None:
        task = data.draw(st.sampled_from(sorted({k[0] for k in self.model.jobs})))
        keys = data.draw(st.lists(st.sampled_from(sorted(k for k in self.model.jobs if k[0] == task)),
                                  min_size=1, max_size=5, unique=True))
        targets = [data.draw(JOB_TARGETS) for _ in keys]
        ghost = data.draw(st.booleans())
        updates = [JobUpdate(run, jid, target, generation=gen) for (_, run, gen, jid), target in zip(keys, targets)]
        if ghost:
            updates.append(JobUpdate(keys[0][1], 99, "done", generation=keys[0][2]))
        rid = self.request_id(use_id)
        call = lambda: self.store.update_jobs(C, task, updates, request_id=rid, dry_run=dry_run)  # noqa: E731
        before = snapshot(self.store) if dry_run else None
        result = call()
        decisions = [self.model.job_decision(k, t) for k, t in zip(keys, targets)]
        jobs_seen = [(c.outcome, c.current, c.requested) for c in result.changes if c.entity == "job"]
        assert jobs_seen == [("changed" if d == "changed" else "unchanged" if d == "unchanged" else "refused",
                              self.model.jobs[k].status, t) for k, t, d in zip(keys, targets, decisions)] + (
            [("refused", None, "done")] if ghost else [])
        if dry_run:
            assert snapshot(self.store) == before and result.dry_run
            return
        deciding: set[int] = set()
        for key, target, decision in zip(keys, targets, decisions):
            if decision == "changed" and self.model.apply_job(key, target):
                deciding.add(key[1])
        completed = self.model.complete(task, deciding)
        assert [(c.key, c.current, c.requested) for c in result.changes if c.entity == "task"] == completed
        self.remember(rid, call, result)

    @precondition(lambda self: bool(self.model.runs))
    @rule(data=st.data(), task=st.sampled_from(TASK_NAMES),
          status=st.sampled_from(["done", "failed", "reprocess", "reprocess", "processing", "new"]),
          failed=st.booleans(), downstream=st.booleans(), dry_run=st.booleans(), use_id=st.booleans())
    def operate(self, data: st.DataObject, task: str, status: str, failed: bool, downstream: bool, dry_run: bool,
                use_id: bool) -> None:
        target = status
        known = sorted(self.model.runs)
        runs = data.draw(st.lists(st.sampled_from(known + [11]) if data.draw(st.integers(0, 9)) == 0
                                  else st.sampled_from(known), min_size=1, max_size=3, unique=True))
        reprocess = target == "reprocess" and (failed or downstream)
        plan = self.model.operator_plan(task, runs, failed and reprocess, downstream and reprocess, target)
        rid = self.request_id(use_id)
        if reprocess:
            call = lambda: self.store.reprocess(C, task, runs=runs, failed=failed, downstream=downstream,  # noqa: E731
                                                reason="prop", dry_run=dry_run, request_id=rid)
        else:
            call = lambda: self.store.set_status(C, task, runs, target, reason="prop",  # noqa: E731
                                                 dry_run=dry_run, request_id=rid)
        before = snapshot(self.store)
        refused = [p for p in plan if p[3] == "refused"]
        if refused and not dry_run:
            table = [p for p in refused if p[1] is not None and not TASK.is_allowed(TaskStatus(p[1]), TaskStatus(p[2]))]
            with pytest.raises(Refused) as caught:
                call()
            assert isinstance(caught.value, TransitionNotAllowed) == bool(table)
            assert snapshot(self.store) == before
            return
        result = call()
        assert [(c.key, c.current, c.requested, c.outcome) for c in result.changes] == plan
        if dry_run:
            assert snapshot(self.store) == before
            return
        for key, _, _, outcome in plan:
            if outcome == "changed":
                name, _, run = key.split()
                inst = self.model.inst[(name, int(run))]
                inst.status, inst.version, inst.leader = target, inst.version + 1, None
                self.model.transitions += 1
        self.remember(rid, call, result)

    @precondition(lambda self: any(self.model.job_keys(t, r, i.generation) and i.status == "processing"
                                   for (t, r), i in self.model.inst.items()))
    @rule(data=st.data(), status=st.sampled_from(["done", "done", "failed"]))
    def finish(self, data: st.DataObject, status: str) -> None:
        """Every current job of one processing instance to one status: the common way instances complete."""
        task, run = data.draw(st.sampled_from(sorted(
            (t, r) for (t, r), i in self.model.inst.items()
            if i.status == "processing" and self.model.job_keys(t, r, i.generation))))
        keys = self.model.job_keys(task, run, self.model.inst[(task, run)].generation)
        decisions = [self.model.job_decision(k, status) for k in keys]
        result = self.store.update_jobs(C, task, [JobUpdate(k[1], k[3], status) for k in keys])
        assert [c.outcome for c in result.changes if c.entity == "job"] == [
            d if d in ("changed", "unchanged") else "refused" for d in decisions]
        deciding = [self.model.apply_job(k, status) for k, d in zip(keys, decisions) if d == "changed"]
        decided = {run} if any(deciding) else set()
        completed = self.model.complete(task, decided)
        assert [(c.key, c.current, c.requested) for c in result.changes if c.entity == "task"] == completed

    @precondition(lambda self: bool(self.model.jobs))
    @rule(data=st.data())
    def record_batch_id(self, data: st.DataObject) -> None:
        """Recording a batch id is an annotation: never a status, version or audit change; refused (nothing
        written) once the job's generation is not its instance's current one, or the instance was aborted."""
        key = data.draw(st.sampled_from(sorted(self.model.jobs)))
        task, run, gen, jid = key
        inst = self.model.inst[(task, run)]
        record = [BatchRecord(jid, self.model.jobs[key].attempts, f"{run}.{jid}")]
        if inst.generation == gen and inst.status in ("processing", "done", "failed"):
            assert self.store.record_batch_ids(C, task, run, gen, record) == 1
            return
        before = snapshot(self.store)
        with pytest.raises(Conflict):
            self.store.record_batch_ids(C, task, run, gen, record)
        assert snapshot(self.store) == before

    @precondition(lambda self: self.replay is not None)
    @rule()
    def replay_request(self) -> None:
        assert self.replay is not None
        call, first = self.replay
        before = snapshot(self.store)
        assert call() == first
        assert snapshot(self.store) == before

    # --- invariants -----------------------------------------------------------------------------------------

    @invariant()
    def database_agrees_with_the_model(self) -> None:
        with self.store.db.tx(write=False) as tx:
            instances = tx.all(
                "SELECT ti.id, t.name, r.run_number, ti.status, ti.version, ti.generation, lr.run_number"
                " FROM task_instance ti JOIN task t ON t.id = ti.task_id JOIN run r ON r.id = ti.run_id"
                " LEFT JOIN task_instance l ON l.id = ti.leader_id LEFT JOIN run lr ON lr.id = l.run_id")
            jobs = tx.all(
                "SELECT j.id, t.name, r.run_number, j.generation, j.jid, j.status, j.version, j.attempts FROM job j"
                " JOIN task_instance ti ON ti.id = j.instance_id JOIN task t ON t.id = ti.task_id"
                " JOIN run r ON r.id = ti.run_id")
            audit = tx.all("SELECT entity, instance_id, job_pk, from_status, to_status FROM audit"
                           f" WHERE {TRANSITIONS} ORDER BY id")
        assert {(r[1], r[2]): Inst(r[3], r[4], r[5], r[6]) for r in instances} == self.model.inst
        assert {(r[1], r[2], r[3], r[4]): JobM(r[5], r[6], r[7]) for r in jobs} == self.model.jobs
        assert {r[3] for r in instances} <= {s.value for s in TaskStatus}
        assert {r[5] for r in jobs} <= {s.value for s in JobStatus}
        assert len(audit) == self.model.transitions
        chains: dict[tuple[str, int], list[tuple[Optional[str], str]]] = {}
        for entity, iid, jpk, src, dst in audit:
            chains.setdefault((entity, jpk if entity == "job" else iid), []).append((src, dst))
        for entity, rows in (("task", instances), ("job", jobs)):
            for row in rows:
                chain = chains.pop((entity, row[0]))
                current, version = (row[3], row[4]) if entity == "task" else (row[5], row[6])
                assert chain[0][0] is None and len(chain) == version and chain[-1][1] == current
                assert all(prev[1] == nxt[0] for prev, nxt in zip(chain, chain[1:]))
                assert all(src in ("new", "reprocess") for src, dst in chain if dst == "processing")
        assert not chains
        assert all(self.model.jobs[k].status == "done" for k in self.model.ever_done)


def _run(url_factory: Callable[[], tuple[str, Callable[[], None]]], examples: int) -> None:
    machine = type("Machine", (StoreMachine,), {"url_factory": staticmethod(url_factory)})
    run_state_machine_as_test(machine, settings=settings(
        max_examples=examples, stateful_step_count=40, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))


def test_store_matches_the_model_on_sqlite() -> None:
    def fresh() -> tuple[str, Callable[[], None]]:
        folder = tempfile.mkdtemp(prefix="ecalstate-prop-")
        return f"{folder}/state.db", lambda: shutil.rmtree(folder, ignore_errors=True)

    _run(fresh, examples=50)


@pytest.mark.postgres
def test_store_matches_the_model_on_postgres(postgres: Any) -> None:
    def fresh() -> tuple[str, Callable[[], None]]:
        url = postgres.create_database()
        return url, lambda: postgres.drop_database(url.rsplit("/", 1)[1])

    _run(fresh, examples=15)
