"""Deadlines (issue 22): two weeks of data taking on the real store, run order against deadline order.

``python -m bench deadlines``. Three parts, each measured side by side in one run:

1. **The simulation.** A SQLite store driven with a simulated clock (``store.clock`` replaced) through two weeks of
   data taking: fills of runs of 30 min to 12 h (their end times and the fills' dumps given by the run source as
   OMS would, ``RunSources.apply_sync``), campaign ``prompt`` with ``reco`` per run and ``calib`` per fill (both due
   48 h after the run's or the fill's end, at risk 12 h before), and a reprocessing campaign ``rereco`` whose
   backlog (no deadline) shares the pool. Every 10 minutes a Jenkins tick checks (the pool's finished jobs written
   with ``update_jobs``) and submits: the store's own claims (``prompt``: everything eligible; ``rereco``: 20 runs
   while fewer than 60 of its jobs wait, a Jenkinsfile's ``--limit`` and a max-idle policy) create the jobs, which
   go to a simulated pool of 8 slots whose scheduler starts the highest priority first (HTCondor's JobPrio; equal
   priorities in submission order, as one submitting account's jobs are). *Run order* is the store before issue 22:
   claims by run number (``order="run"``), every priority 0. *Deadline order*: claims by deadline, priorities from
   ``deadlines.job_priority`` (static once submitted, as on HTCondor). Each, with and without a 12-hour pool
   outage (running jobs evicted, nothing starts) on day 6. Every tick the attention model's view is read
   (``Store.deadlines(finished=False)``): a warning is an instance's first ``at-risk`` (or ``missed``) state; a
   notification is sent on each entry into ``at-risk`` or ``missed`` (edge-triggered, not deduplicated: a state that
   flickered would notify twice). Figures: deadlines missed (done late, or open past the deadline at the end),
   p95 latency, the share of misses warned at least the margin ahead (to the tick), duplicate notifications.
2. **Health with deadlines on 10,000 runs x 20 tasks** (``bench.cli``'s database, every task given a deadline):
   ``health`` beside ``deadlines(finished=False)`` + ``cadence_gaps`` (what the attention model adds), and the
   whole latency table.
3. **One check over 10,000 queued jobs on the real HTCondor pool** (jobs that can never match, so they stay
   queued): ``CondorBackend.observe`` of all of them, its time and its schedd queries, beside the same jobs asked
   200 runs at a time (the queries the backend made before).
"""

from __future__ import annotations

import heapq
import math
import os
import random
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

from bench.common import row
from ecalstate import JobUpdate, RunSpec, Store
from ecalstate.clock import TS_FORMAT
from ecalstate.deadlines import job_priority
from ecalstate.latency import latency_table, nearest_rank
from ecalstate.results import AT_RISK, DONE_LATE, MISSED
from ecalstate.sources import SourceBatch, SourceRun
from ecalstate.sources.store import RunSources

T0 = datetime(2026, 5, 1, tzinfo=timezone.utc)
DAYS = 14
DRAIN_DAYS = 5
TICK = timedelta(minutes=10)
DEADLINE_H, WARN_H = 48, 12
SLOTS = 8
OUTAGE_START, OUTAGE_HOURS = timedelta(days=6, hours=8), 12
RECO_JOB_H, CALIB_JOB_H, REREC_JOB_H = 1.5, 3.0, 2.0
REREC_RUNS, REREC_JOBS, REREC_LIMIT, REREC_MAX_IDLE = 600, 4, 20, 60
H = 3600


def at(moment: datetime) -> str:
    return moment.strftime(TS_FORMAT)


@dataclass(frozen=True)
class SimRun:
    number: int
    fill: int
    start: datetime
    end: datetime


def data_taking(seed: int = 22) -> tuple[list[SimRun], dict[int, datetime]]:
    """Two weeks of fills: 1-5 runs of 30 min to 12 h each (most of a few hours), 1-6 h between fills; each
    fill is dumped 10 min after its last run."""
    rnd = random.Random(seed)
    runs: list[SimRun] = []
    dumps: dict[int, datetime] = {}
    now, number, fill = T0 + timedelta(hours=2), 390_001, 9_500
    while now < T0 + timedelta(days=DAYS):
        for _ in range(rnd.randint(1, 5)):
            hours = min(12.0, max(0.5, rnd.lognormvariate(math.log(2.5), 0.7)))
            runs.append(SimRun(number, fill, now, now + timedelta(hours=hours)))
            now += timedelta(hours=hours, minutes=5)
            number += 1
        dumps[fill] = now + timedelta(minutes=5)
        now += timedelta(hours=rnd.uniform(1, 6))
        fill += 1
    return runs, dumps


@dataclass(order=True)
class SimJob:
    """One job in the simulated pool (ordered by the scheduler's key: priority, then submission)."""

    key: tuple[int, int] = field(compare=True)  # (-priority, submission sequence)
    campaign: str = field(compare=False)
    task: str = field(compare=False)
    run: int = field(compare=False)
    jid: int = field(compare=False)
    hours: float = field(compare=False)


class Pool:
    """``slots`` slots; the idle job of highest priority (then the earliest submitted) starts when one frees;
    during an outage nothing runs (running jobs are evicted back to idle, their work lost)."""

    def __init__(self, slots: int, outage: Optional[tuple[datetime, datetime]]) -> None:
        self.slots = slots
        self.outage = outage
        self.idle: list[SimJob] = []
        self.running: list[tuple[datetime, int, SimJob]] = []
        self.seq = 0
        self.now = T0

    def submit(self, jobs: list[tuple[str, str, int, int, float, int]]) -> None:
        for campaign, task, run, jid, hours, priority in jobs:
            self.seq += 1
            heapq.heappush(self.idle, SimJob((-priority, self.seq), campaign, task, run, jid, hours))

    def idle_of(self, campaign: str) -> int:
        return sum(j.campaign == campaign for j in self.idle)

    def _down(self, moment: datetime) -> bool:
        return self.outage is not None and self.outage[0] <= moment < self.outage[1]

    def advance(self, to: datetime) -> list[SimJob]:
        """Run the pool until ``to``; the jobs finished meanwhile."""
        done = []
        while True:
            if self.outage and self.now < self.outage[0] <= to and self.running:  # the outage begins: evict
                for _, _, job in self.running:
                    heapq.heappush(self.idle, job)
                self.running = []
            if self.outage and self._down(self.now):
                self.now = min(to, self.outage[1])
                if self.now < to:
                    continue
                return done
            self._start()
            if not self.running or self.running[0][0] > to:
                self.now = to
                self._start()
                return done
            finish, _, job = heapq.heappop(self.running)
            if self.outage and self.now < self.outage[0] <= finish:  # the outage comes first
                heapq.heappush(self.running, (finish, job.key[1], job))
                self.now = self.outage[0]
                continue
            self.now = finish
            done.append(job)

    def _start(self) -> None:
        if self._down(self.now):
            return
        while self.idle and len(self.running) < self.slots:
            job = heapq.heappop(self.idle)
            heapq.heappush(self.running, (self.now + timedelta(hours=job.hours), job.key[1], job))


def _jitter(campaign: str, task: str, run: int, jid: int) -> float:
    """A job's duration factor, 0.7-1.3: the same job takes the same time in every simulation."""
    return random.Random(f"{campaign}/{task}/{run}/{jid}").uniform(0.7, 1.3)


class Clock:
    """The store's clock, moved by the simulation."""

    def __init__(self, store: Store) -> None:
        self.now = T0
        store.clock = self  # type: ignore[method-assign]

    def __call__(self) -> str:
        return at(self.now)


@dataclass
class Outcome:
    """What one simulation gave."""

    misses: int
    instances: int
    p95_h: dict[str, float]
    warned: int
    warned_strict: int
    notifications: int
    duplicates: int
    seconds: float


def simulate(order: str, outage: bool, seed: int = 22, slots: int = SLOTS, rereco: bool = True,
             rereco_limit: int = REREC_LIMIT, rereco_idle: int = REREC_MAX_IDLE) -> Outcome:
    """Two weeks of data taking and the Jenkins ticks, on a fresh SQLite file (see the module)."""
    started = time.perf_counter()
    runs, dumps = data_taking(seed)
    window = (T0 + OUTAGE_START, T0 + OUTAGE_START + timedelta(hours=OUTAGE_HOURS)) if outage else None
    pool = Pool(slots, window)
    with tempfile.TemporaryDirectory(prefix="ecalstate-bench-deadlines-") as tmp, \
            Store.open(os.path.join(tmp, "sim.db"), actor="jenkins", create=True) as store:
        clock = Clock(store)
        store.create_campaign("prompt")
        store.add_task("prompt", "reco", deadline=DEADLINE_H * H, warn_before=WARN_H * H)
        store.add_task("prompt", "calib", depends_on=["reco"], deadline=DEADLINE_H * H, deadline_from="fill-end",
                       warn_before=WARN_H * H)
        store.update_rtype("prompt", "all", add=["reco", "calib"])
        store.create_campaign("rereco", kind="reprocessing")
        store.add_task("rereco", "reco")
        store.update_rtype("rereco", "all", add=["reco"])
        old = T0 - timedelta(days=200)
        store.inject_runs("rereco", [RunSpec(380_000 + i, 8_000 + i // 4, {"end_time": at(old)})
                                     for i in range(REREC_RUNS)])
        sources = RunSources(store)
        seen_runs: set[int] = set()
        seen_fills: set[int] = set()
        first_warned: dict[tuple[str, int], datetime] = {}
        states: dict[tuple[str, int], str] = {}
        notified: defaultdict[tuple[str, int, str], int] = defaultdict(int)
        jobs_of = {"reco": lambda run: max(1, math.ceil((run.end - run.start).total_seconds() / H))}
        by_number = {r.number: r for r in runs}
        end = T0 + timedelta(days=DAYS + DRAIN_DAYS)
        while clock.now < end:
            clock.now += TICK
            now = clock.now
            # the run source: runs that ended, fills dumped (with their dump time)
            new = [r for r in runs if r.end <= now and r.number not in seen_runs]
            fills = [f for f, d in dumps.items() if d <= now and f not in seen_fills]
            if new or fills:
                sources.apply_sync("prompt", "oms", SourceBatch(
                    [SourceRun(RunSpec(r.number, r.fill, {"end_time": r.end.strftime("%Y-%m-%dT%H:%M:%SZ")}))
                     for r in new], {f: f"OMS: fill ended (beam dumped) at {dumps[f]:%Y-%m-%dT%H:%M:%SZ}"
                                     for f in fills}, max([r.number for r in new], default=0),
                    fills_dumped={f: f"{dumps[f]:%Y-%m-%dT%H:%M:%SZ}" for f in fills}))
                seen_runs.update(r.number for r in new)
                seen_fills.update(fills)
            # check: what the pool finished
            finished: defaultdict[tuple[str, str], list[JobUpdate]] = defaultdict(list)
            for job in pool.advance(now):
                finished[(job.campaign, job.task)].append(JobUpdate(job.run, job.jid, "done"))
            for (campaign, task), updates in finished.items():
                store.update_jobs(campaign, task, updates)
            # submit: the store's claims, their jobs to the pool
            plans: list[tuple[str, str, Optional[int], Optional[str], float, Any]] = [
                ("prompt", "reco", None, None, RECO_JOB_H, lambda c: jobs_of["reco"](by_number[c.run_number])),
                ("prompt", "calib", None, "fill", CALIB_JOB_H, lambda c: 1)]
            if rereco and pool.idle_of("rereco") < rereco_idle:
                plans.append(("rereco", "reco", rereco_limit, None, REREC_JOB_H, lambda c: REREC_JOBS))
            for campaign, task, limit, group_by, hours, count in plans:
                claims = store.claim(campaign, task, limit=limit, group_by=group_by, order=order,
                                     jobs=lambda c, count=count: [(j, {}) for j in range(count(c))])
                if not claims:
                    continue
                due = ({d.run_number: d.deadline for d in store.deadlines(campaign, task, runs=[
                    c.run_number for c in claims])} if order == "deadline" else {})
                pool.submit([(campaign, task, c.run_number, j, hours * _jitter(campaign, task, c.run_number, j),
                              job_priority(due.get(c.run_number), at(now)) if order == "deadline" else 0)
                             for c in claims for j in range(count(c))])
            # the attention model's view: warnings and edge-triggered notifications
            for d in store.deadlines("prompt", finished=False):
                key = (d.task, d.run_number)
                if d.leader_run is not None:
                    continue
                if d.state in (AT_RISK, MISSED):
                    first_warned.setdefault(key, now)
                if d.state in (AT_RISK, MISSED) and states.get(key) != d.state:
                    notified[(d.task, d.run_number, d.state)] += 1
                states[key] = d.state
        final = [d for d in store.deadlines("prompt") if d.leader_run is None]
        missed = [d for d in final if d.state in (DONE_LATE, MISSED)]
        margin = timedelta(hours=WARN_H)

        def ahead(d: Any) -> timedelta:
            warned = first_warned.get((d.task, d.run_number))
            return timedelta(0) if warned is None else datetime.strptime(
                d.deadline, TS_FORMAT).replace(tzinfo=timezone.utc) - warned

        latencies = {task: [d.latency_s for d in final if d.task == task and d.latency_s is not None]
                     for task in ("reco", "calib")}
        p95 = {task: (nearest_rank(v, 95) or 0) / H for task, v in latencies.items()}
        return Outcome(len(missed), len(final), p95, sum(ahead(d) >= margin - TICK for d in missed),
                       sum(ahead(d) >= margin for d in missed), sum(notified.values()),
                       sum(n - 1 for n in notified.values()), time.perf_counter() - started)


# ------------------------------------------------------------------ health with deadlines, 10,000 runs x 20 tasks

def health_figures(repeat: int = 3) -> list[dict[str, Any]]:
    """``health`` with and without what deadlines add, on 10,000 runs x 20 tasks: as ``bench.cli`` builds it (four
    fifths of the instances open: a worst case), then with all but the newest 200 runs done (a campaign as it runs)."""
    from bench.cli import RUNS, TASKS, build_status_db

    size = f"{RUNS} runs x {TASKS} tasks"
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ecalstate-bench-deadlines-") as tmp:
        path = os.path.join(tmp, "big.db")
        build_status_db(path)
        with Store.open(path, actor="bench") as store:
            for i, task in enumerate(store.list_tasks("bench")):  # every task a deadline, two a cadence
                store.update_task("bench", task.name, deadline=DEADLINE_H * H, cadence=4 * 86400 if i < 2 else 0)
            now = datetime.now(timezone.utc)
            with store.db.tx() as tx:  # the runs ended over the last 10 days (a scratch database: set directly)
                tx.run("UPDATE run SET ended_at = ?", (at(now - timedelta(days=10)),))
            for label in ("worst case", "all but the newest 200 runs done"):
                if label != "worst case":
                    with store.db.tx() as tx:
                        tx.run("UPDATE task_instance SET status = 'done' WHERE run_id IN (SELECT id FROM run WHERE"
                               " run_number < (SELECT MAX(run_number) - 199 FROM run))")
                health = statistics.median(_seconds(lambda: store.health("bench")) for _ in range(repeat))
                extra = statistics.median(_seconds(lambda: (store.deadlines("bench", finished=False),
                                                            store.cadence_gaps("bench"))) for _ in range(repeat))
                opened = len(store.deadlines("bench", finished=False))
                anchor = row(f"health, {size}, {label}", health, "s")
                rows += [anchor, row(f"health + deadlines(finished=False) + cadence_gaps, {size}, {label}",
                                     health + extra, "s", {"name": "target 1 s", "value": 1.0},
                                     note=f"{opened} open instances judged (process CPU time, median of {repeat})")]
            table = statistics.median(_seconds(lambda: latency_table(store, "bench")) for _ in range(repeat))
            rows.append(row(f"latency table (every instance, first done times), {size}", table, "s"))
    return rows


def _seconds(call: Any) -> float:
    """The process's CPU seconds of ``call()`` (the machine is shared: wall time measures the neighbours too)."""
    start = time.process_time()
    call()
    return time.process_time() - start


# ------------------------------------------------------------------ a check over 10,000 queued HTCondor jobs

@contextmanager
def _pool() -> Iterator[Any]:
    from bench.common import servers

    pool = servers().CondorPool()
    pool.start()
    old = os.environ.get("CONDOR_CONFIG")
    os.environ["CONDOR_CONFIG"] = str(pool.client_config)
    try:
        import htcondor2

        htcondor2.reload_config()
        yield pool
    finally:
        if old is None:
            os.environ.pop("CONDOR_CONFIG", None)
        else:
            os.environ["CONDOR_CONFIG"] = old
        if not pool.was_running:
            pool.stop()


def condor_figures(jobs: int = 10_000) -> list[dict[str, Any]]:
    """One observe of ``jobs`` queued jobs (one per run): its time and schedd queries, beside 200 runs a query."""
    import shutil

    from ecalstate.backends import JobKey
    from ecalstate.backends.htcondor import CONSTRAINT_CHUNK, CondorBackend

    with _pool() as pool:
        import htcondor2

        workdir = pool.make_jobdir("bench-deadlines-")
        schedd = htcondor2.Schedd()
        backend = CondorBackend(workdir)
        keys = [JobKey(r, 0, 1, 1) for r in range(1, jobs + 1)]
        items = [{"run": str(k.run), "dir": str(backend.job_dir("bench", "check", k))} for k in keys]
        try:
            for item in items:
                os.makedirs(item["dir"], exist_ok=True)
            t0 = time.perf_counter()
            schedd.submit(htcondor2.Submit({
                "executable": "/bin/true", "initialdir": "$(dir)", "requirements": "False",
                "+EcalCampaign": '"bench"', "+EcalTask": '"check"', "+EcalRun": "$(run)", "+EcalJobId": "0",
                "+EcalGeneration": "1", "+EcalAttempt": "1"}), itemdata=iter(items))
            submitted = time.perf_counter() - t0
            calls: list[str] = []
            real = htcondor2.Schedd

            class Counting:
                def __init__(self) -> None:
                    self.schedd = real()

                def query(self, *args: Any, **kwargs: Any) -> Any:
                    calls.append("query")
                    return self.schedd.query(*args, **kwargs)

                def history(self, *args: Any, **kwargs: Any) -> Any:
                    calls.append("history")
                    return self.schedd.history(*args, **kwargs)

            htcondor2.Schedd = Counting
            try:
                t0 = time.perf_counter()
                seen = backend.observe("bench", "check", keys)
                once = time.perf_counter() - t0
                queries = len(calls)
                calls.clear()
                t0 = time.perf_counter()
                for start in range(0, len(keys), CONSTRAINT_CHUNK):  # the backend's queries before: 200 runs each
                    backend.observe("bench", "check", keys[start:start + CONSTRAINT_CHUNK])
                chunked = time.perf_counter() - t0
                chunk_queries = len(calls)
            finally:
                htcondor2.Schedd = real
            assert len(seen) == jobs and {o.status for o in seen.values()} == {"idle"}
        finally:
            schedd.act(htcondor2.JobAction.Remove, 'EcalCampaign == "bench" && EcalTask == "check"')
            shutil.rmtree(workdir, ignore_errors=True)
    anchor = row(f"htcondor: observe {jobs} queued jobs, 200 runs a query (before)", chunked, "s",
                 note=f"{chunk_queries} schedd queries")
    return [row(f"htcondor: submit {jobs} jobs that never match (one cluster)", submitted, "s"), anchor,
            row(f"htcondor: observe {jobs} queued jobs (check), one queue query", once, "s", anchor,
                note=f"{queries} schedd quer{'y' if queries == 1 else 'ies'}, whatever the number of jobs"),
            row("htcondor: schedd queries of that check", queries, "queries",
                {"name": "before", "value": chunk_queries})]


# ------------------------------------------------------------------ the module's figures

#: (label, simulate's options): the reprocessing campaign's queue (its jobs waiting in the pool: the Jenkinsfile's
#: --limit and max-idle policy) is what today's first-come-first-served pool makes prompt wait behind
SCENARIOS = (
    ("8 slots, rereco queue <= 16 jobs", {"rereco_limit": 4, "rereco_idle": 16}),
    ("8 slots, rereco queue <= 32 jobs", {"rereco_limit": 8, "rereco_idle": 32}),
    ("8 slots, rereco queue <= 60 jobs", {"rereco_limit": 20, "rereco_idle": 60}),
    ("prompt alone, 2 slots", {"slots": 2, "rereco": False}),
)


def simulation_figures() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    totals: dict[str, list[Outcome]] = {"run order": [], "deadline order": []}
    for label, options in SCENARIOS:
        for outage in (False, True):
            name = f"sim {label}, {'12 h outage' if outage else 'no outage'}"
            old, new = simulate("run", outage, **options), simulate("deadline", outage, **options)
            totals["run order"].append(old)
            totals["deadline order"].append(new)
            base = row(f"{name}: deadlines missed, run order (before)", old.misses, "instances",
                       note=f"of {old.instances} (reco per run, calib per fill)")
            before = row(f"{name}: p95 latency of prompt calib, run order", old.p95_h["calib"], "h",
                         note=f"reco {old.p95_h['reco']:.1f} h")
            rows += [base, row(f"{name}: deadlines missed, deadline order", new.misses, "instances", base,
                               note="goal: at most half of run order's with the outage, never more"),
                     before, row(f"{name}: p95 latency of prompt calib, deadline order", new.p95_h["calib"], "h",
                                 before, note=f"reco {new.p95_h['reco']:.1f} h")]
    for mode, outcomes in totals.items():
        missed = sum(o.misses for o in outcomes)
        label = f"sim, every scenario, {mode}"
        rows.append(row(f"{label}: deadlines missed", missed, "instances"))
        if missed:
            rows += [row(f"{label}: misses warned >= 12 h ahead, to the 10 min tick", sum(o.warned for o in outcomes)
                         / missed, "share", {"name": "goal 0.95", "value": 0.95}),
                     row(f"{label}: misses warned >= 12 h ahead, to the second", sum(o.warned_strict for o in outcomes)
                         / missed, "share", note="the attention model looks each tick")]
        rows += [row(f"{label}: notifications (each entry into at-risk or missed)",
                     sum(o.notifications for o in outcomes), "count"),
                 row(f"{label}: duplicate notifications", sum(o.duplicates for o in outcomes), "count",
                     note="goal 0"),
                 row(f"{label}: wall time of the simulations", sum(o.seconds for o in outcomes), "s")]
    return rows


def run() -> list[dict[str, Any]]:
    """Every figure of the deadline benchmark, as rows {name, value, unit, anchor, ratio}."""
    rows = simulation_figures() + health_figures()
    try:
        rows += condor_figures()
    except Exception as err:  # the pool needs root and its chroot: say so, keep the other figures
        rows.append(row("htcondor: observe 10,000 queued jobs", 0, "skipped", note=f"{type(err).__name__}: {err}"))
    return rows


if __name__ == "__main__":
    for r in run():
        print(r)
