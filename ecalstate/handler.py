"""TaskHandler: the submit, check and resubmit stages of one task, and their command line.

A workflow script subclasses :class:`TaskHandler`, names its task, says how runs
are grouped, and builds the jobs of a claimed task instance::

    class PhiSymReco(TaskHandler):
        task = "phisym-reco"
        def jobs(self, campaign, claim):
            return [JobSpec(i, "handlers/jobs/reco.py", ["--run", str(claim.run_number)]) for i in range(3)]

    if __name__ == "__main__":
        PhiSymReco.main()     # python handlers/phisym_reco.py -c prompt submit|check|resubmit

Each stage is a few short store transactions around backend I/O, never one
transaction across it. The submission protocol is "state first, side effects
after, reconciliation by key": submit claims one group at a time and creates
its jobs in the same transaction, so a killed build leaves jobs "to submit"
(idle, no batch id), never a claim without jobs; it then submits them under the
run's submission lock and records their batch ids, an annotation that never
changes a status and is refused for another generation. A failure before the
batch system took the jobs rolls back only the claim's own generation; a later
or unknown one keeps the claim, and the next stage looks the jobs up by key
(and adopts them) before submitting anything again. Every stage first removes
from the batch system the jobs of generations an operator aborted or that were
claimed again. check reconciles job statuses in one bulk update and reads the
JSON reports of jobs that could not reach the database; instances complete in
the store. resubmit puts failed jobs under the retry limit back to idle (a new
attempt, to submit) and submits them.
Every stage records a heartbeat, ok or not, for ``ecalstate health``.
A handler's own command-line options (:attr:`TaskHandler.options`, click options) are taken by every stage; their
values reach ``jobs()`` and, kept in each job's spec, the jobs' environment.

A workflow may declare its task's deadline in code (``deadline = 48 * 3600``, ``deadline_from = "fill-end"``,
``warn_before``, ``cadence``: seconds) and its run order (``ordered = True``); submit writes them into the task of
each campaign it serves when they differ (the code is the workflow's truth, as ``task update`` would). Jobs are
submitted with a priority from their instance's deadline (:func:`~ecalstate.deadlines.job_priority`), for the batch
system to start the most urgent first.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Optional, Union

import click

from .attention import HandlerInfo, apply_policies, note_handler, observe, pending_actions, script_of
from .backends import Backend, JobKey, JobSpec, NotAccepted, Observation, make_backend, read_report
from .claims import LUMI_KEY, Eligible, Grouper, Grouping, grouping
from .deadlines import MISSED_PRIORITY, job_priority, priority_now
from .errors import Conflict, EcalStateError, Invalid
from .filters import split_multi
from .results import STARTED, BatchRecord, BulkResult, Claim, JobInfo, JobUpdate, MadeBy
from .secrets import known_secrets, leaked, no_password_in_argument
from .store import Store

ACTIVE = ("idle", "running")
#: the prefix of the variables that carry a handler's option values to its jobs
OPTION_ENV_PREFIX = "ECALSTATE_OPTION_"
#: the variable that gives the jobs their workflow's version
VERSION_ENV = "ECALSTATE_WORKFLOW_VERSION"
#: a stage's exit code when it left an instance failed for good (its jobs have no retry left): the stage itself
#: worked, a run is lost until an operator acts; Jenkins marks the build UNSTABLE (1: the stage failed)
EXIT_LOST = 3


class StageFailed(EcalStateError):
    """A stage finished with errors (some claims rolled back); its heartbeat says so."""


@dataclass
class StageReport:
    """What one stage did for one campaign: counts, the runs it touched, and its errors."""

    campaign: str
    task: str
    stage: str
    dry_run: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    runs: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: groups not complete yet, and why ("fill 9002 waits: fill not ended"); filled by ``submit --dry-run``
    waiting: list[str] = field(default_factory=list)
    #: runs whose instance this stage left failed for good (no retry left): the stage exits with :data:`EXIT_LOST`
    failed_for_good: list[int] = field(default_factory=list)
    #: what the campaign's policies did in this stage (a fill closed, a late run's fill regrouped)
    policies: list[str] = field(default_factory=list)
    #: the jobs ``submit --dry-run`` would submit: run, job id, executable and arguments (or why jobs() failed)
    jobs: list[dict[str, Any]] = field(default_factory=list)

    def add(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    def summary(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.counts.items()) or "nothing to do"
        runs = f" (runs {', '.join(map(str, self.runs))})" if self.runs else ""
        waits = "".join(f"; {w}" for w in self.waiting)
        done = "".join(f"; policy: {p}" for p in self.policies)
        lost = (f"; failed for good (no retry left): runs {', '.join(map(str, self.failed_for_good))}"
                if self.failed_for_good else "")
        return f"{self.stage}: {counts}{runs}" + (" [dry run]" if self.dry_run else "") + waits + done + lost

    def lost(self, result: BulkResult) -> None:
        """Note the instances ``result`` moved to failed: their jobs have no retry left."""
        self.failed_for_good += [int(c.key.rsplit(" ", 1)[1]) for c in result.changes
                                 if c.entity == "task" and c.requested == "failed" and c.outcome == "changed"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TaskHandler:
    """Base of every workflow script: subclass, set :attr:`task`, implement :meth:`jobs`."""

    #: the task this handler runs (declared in each campaign with ``ecalstate task add``)
    task: ClassVar[str]
    #: how eligible runs are grouped into one instance: None (one per run), "fill", "lumi", "era" (each claimed
    #: only once complete, see :class:`~ecalstate.claims.Grouping`), or a callable (no completeness check)
    group_by: ClassVar[Union[None, str, Grouper]] = None
    #: with ``group_by = "lumi"``: the integrated luminosity a group collects, in the unit of ``lumi_key``
    lumi_target: ClassVar[Optional[float]] = None
    #: the run metadata key summed by ``group_by = "lumi"`` (the OMS mapping puts ``recorded_lumi`` there)
    lumi_key: ClassVar[str] = LUMI_KEY
    #: the workflow's HTCondor submit template (memory, +JobFlavour, requirements...)
    condor: ClassVar[Mapping[str, str]] = {}
    #: the handler's environment variables its jobs need besides the base ones (e.g. ``X509_USER_PROXY``);
    #: the database and the secrets are never passed, even when named here
    job_env: ClassVar[Sequence[str]] = ()
    #: the handler's own command-line options: click decorators (``click.option("--global-tag", required=True,
    #: help="...")``) or click parameters. Every stage takes them (its ``--help`` shows them); their values are
    #: :attr:`option_values`, and each job made gets them as ``ECALSTATE_OPTION_<NAME>`` (see :func:`option_env`)
    options: ClassVar[Sequence[Any]] = ()
    #: the workflow's version ("2.1"): recorded with each claim, so history, the outputs and the export say which
    #: version made each generation, and ``ecalstate reprocess --version-not`` finds what another version made
    version: ClassVar[Optional[str]] = None
    #: the configuration that matters for what the jobs make (a global tag...), recorded with the version; the
    #: option values are recorded with it (see :meth:`made_by`)
    config: ClassVar[Mapping[str, Any]] = {}
    #: the task's deadline in seconds after its reference (None: as the campaign says, ``task update --deadline``)
    deadline: ClassVar[Optional[float]] = None
    #: what the deadline counts from: ``run-end`` or ``fill-end`` (None: as the campaign says)
    deadline_from: ClassVar[Optional[str]] = None
    #: seconds before the deadline at which an instance is at risk (None: as the campaign says)
    warn_before: ClassVar[Optional[float]] = None
    #: a done instance at least this often, seconds (None: as the campaign says)
    cadence: ClassVar[Optional[float]] = None
    #: claimed strictly in run order, one run (or group) in flight at a time: a conditions upload (None: as the
    #: campaign says, ``task update --ordered``)
    ordered: ClassVar[Optional[bool]] = None

    def __init__(self, store: Store, backend: Backend, options: Optional[Mapping[str, Any]] = None) -> None:
        self.store = store
        self.backend = backend
        #: the values of :attr:`options` by parameter name (``--global-tag``: ``global_tag``), as click made them;
        #: from the library, ``options`` gives them and the declared defaults fill the rest
        self.option_values: dict[str, Any] = option_values(type(self), options or {})

    # --- what a workflow implements ---------------------------------------------------------

    def jobs(self, campaign: str, claim: Claim) -> list[JobSpec]:
        """The jobs of a claimed instance (``claim.runs``: the group, leader last)."""
        raise NotImplementedError(f"{type(self).__name__} must implement jobs()")

    # --- helpers for workflows ------------------------------------------------------------------

    def data_dir(self, campaign: str, claim: Claim) -> Path:
        """Where the jobs of this instance put their outputs (per generation: reprocessing never overwrites)."""
        return self.backend.workdir / "data" / campaign / self.task / str(claim.run_number) / f"g{claim.generation}"

    def outputs(self, campaign: str, task: str, runs: Sequence[int], key: str = "output") -> list[str]:
        """The ``key`` outputs of ``task`` for ``runs`` (e.g. ``claim.runs``), each once, in run order.

        A merged run stands for its group leader's outputs (the original's getOutput). When this handler's task takes
        its inputs from another campaign (``task add --inputs-from``) and ``task`` is one of them, they are read
        there (read only).
        """
        source = self.inputs_campaign(campaign, task)
        found: dict[str, None] = {}
        for run in runs:
            info = self.store.instance(source, task, run)
            if info.leader_run is not None:
                info = self.store.instance(source, task, info.leader_run)
            found.update(dict.fromkeys(p for p in str(info.outputs.get(key, "")).split(",") if p))
        return list(found)

    def inputs_campaign(self, campaign: str, task: str) -> str:
        """The campaign whose ``task`` this handler's task reads in ``campaign``: another one when the task takes its
        inputs from there (:mod:`ecalstate.inputs`), else ``campaign``."""
        info = next((t for t in self.store.list_tasks(campaign) if t.name == self.task), None)
        if info is not None and info.inputs_from is not None and task in info.depends_on:
            return info.inputs_from
        return campaign

    def made_by(self) -> Optional[MadeBy]:
        """What each claim records as having made its generation: :attr:`version`, :attr:`config` and the option
        values (those given a value); None when the handler declares none of them."""
        config = {**type(self).config, **{k: v for k, v in self.option_values.items() if v is not None}}
        if type(self).version is None and not config:
            return None
        made = MadeBy(type(self).version, dict(config))
        try:
            made.detail()  # refused here, before anything is claimed
        except Invalid as err:
            raise Invalid(f"{type(self).__name__}: {err}") from None
        return made

    # --- stages ------------------------------------------------------------------------------------

    def submit(self, campaign: str, limit: Optional[int] = None, dry_run: bool = False) -> StageReport:
        """Finish what earlier stages left, then claim eligible groups one at a time and submit each at once."""
        if dry_run:
            report = StageReport(campaign, self.task, "submit", dry_run=True)
            plan = self.store.plan(campaign, self.task, self._grouping())
            for group in plan.groups[:limit]:
                report.add("would claim")
                report.add("would merge", len(group) - 1)
                report.runs.append(group[-1].run_number)
                report.jobs += self._planned_jobs(campaign, group)
            report.waiting.extend(map(str, plan.waiting))
            _count(report, "waiting", len(plan.waiting))
            return report
        with self._stage(campaign, "submit") as report:
            made_by = self.made_by()
            self.backend.check()  # an unreachable batch system: fail before claiming anything
            self._declare_deadline(campaign, report)
            self._settle_leftovers(campaign, report)
            self._note(campaign)
            report.policies += [a.reason for a in apply_policies(self.store, pending_actions(
                self.store, campaign, [self.task]))]  # a fill closed, a late run's fill regrouped: claimed now
            claimed = 0
            skip: set[int] = set()  # groups whose jobs() failed in this stage: the next groups go on
            while limit is None or claimed < limit:
                made: dict[int, list[JobSpec]] = {}
                tried: list[Claim] = []
                try:  # one group per claim, just before its submission: a killed build leaks nothing else
                    claims = self.store.claim(campaign, self.task, 1, self._grouping(), exclude=skip,
                                              jobs=lambda c: self._make_jobs(campaign, c, made, tried),
                                              made_by=made_by)
                except Exception as err:  # the claim was undone with everything it wrote: the run stays eligible
                    if not tried:
                        raise
                    report.errors.append(f"run {tried[-1].run_number}: {_message(err)}")
                    skip.update(tried[-1].runs)
                    continue
                if not claims:
                    break
                claim = claims[0]
                claimed += 1
                report.add("claimed")
                report.add("merged", len(claim.merged))
                if self._submit_run(campaign, claim.run_number, claim.generation, report, made[claim.run_number]):
                    report.runs.append(claim.run_number)
                else:  # rolled back, it is eligible again: not in this stage
                    skip.update(claim.runs)
            return report

    def _planned_jobs(self, campaign: str, group: Sequence[Eligible]) -> list[dict[str, Any]]:
        """The jobs a claim of ``group`` would make (what ``jobs()`` returns for it, made from the plan, nothing
        claimed), or why ``jobs()`` failed."""
        leader = group[-1]
        claim = Claim(self.task, leader.run_number, leader.fill, leader.instance_id, leader.generation + 1,
                      [e.run_number for e in group[:-1]], leader.meta)
        try:
            specs = self._with_options(self.jobs(campaign, claim))
        except Exception as err:  # shown, as submit would show it; the dry run goes on
            return [{"run": claim.run_number, "error": _message(err)}]
        return [{"run": claim.run_number, "job": s.jid, "executable": s.executable, "args": list(s.args)}
                for s in specs]

    def _declare_deadline(self, campaign: str, report: StageReport) -> None:
        """Write the deadline and cadence the workflow declares into the campaign's task, when they differ."""
        cls = type(self)
        declared = (cls.deadline, cls.deadline_from, cls.warn_before, cls.cadence)
        if declared == (None,) * 4 and cls.ordered is None:
            return
        info = next(t for t in self.store.list_tasks(campaign) if t.name == self.task)
        if cls.ordered is not None and cls.ordered != info.ordered:
            self.store.update_task(campaign, self.task, ordered=cls.ordered)
            report.add("run order declared")
        if declared == (None,) * 4:
            return
        stored = (info.deadline, info.deadline_from, info.warn_before, info.cadence)
        wanted = (cls.deadline and round(cls.deadline) or None, cls.deadline_from,
                  None if cls.warn_before is None else round(cls.warn_before),
                  cls.cadence and round(cls.cadence) or None)
        if any(given is not None and want != have for given, want, have in zip(declared, wanted, stored)):
            self.store.update_task(campaign, self.task, deadline=cls.deadline, deadline_from=cls.deadline_from,
                                   warn_before=cls.warn_before, cadence=cls.cadence)
            report.add("deadline declared")

    def _priority(self, campaign: str, run: int) -> int:
        """The batch priority of the run's instance: from its deadline, at the store's time."""
        found = [d for d in self.store.deadlines(campaign, self.task, runs=[run]) if d.run_number == run]
        return job_priority(found[0].deadline if found else None, self.store.clock())

    def _grouping(self) -> Union[Grouping, Grouper]:
        # read from the class: a function stored as a class attribute would bind as a method
        cls = type(self)
        return grouping(cls.group_by, cls.lumi_target, cls.lumi_key)

    def _note(self, campaign: str) -> None:
        """Tell the store what this task groups by and which script runs its stages (the attention model says why a
        group waits, and names the command)."""
        rule = self._grouping()
        by = rule.by if isinstance(rule, Grouping) else None
        source = getattr(sys.modules.get(type(self).__module__), "__file__", None)
        note_handler(self.store, campaign, self.task, HandlerInfo(
            by, rule.lumi_target if isinstance(rule, Grouping) else None,
            rule.lumi_key if isinstance(rule, Grouping) else LUMI_KEY, script_of(source)))

    def _make_jobs(self, campaign: str, claim: Claim, made: dict[int, list[JobSpec]],
                   tried: list[Claim]) -> list[tuple[int, Any]]:
        """The claim's jobs as the store creates them (inside the claim's transaction); their specs kept."""
        tried.append(claim)
        specs = self._with_options(self.jobs(campaign, claim))
        jids = [s.jid for s in specs]
        if not specs or len(set(jids)) != len(jids):
            raise Invalid(f"{type(self).__name__}.jobs() must return jobs with distinct ids, got {jids}")
        made[claim.run_number] = specs
        return [(s.jid, s.fields) for s in specs]

    def _settle_leftovers(self, campaign: str, report: StageReport) -> None:
        """Remove the jobs of aborted generations, then submit (or adopt) the jobs earlier stages left to submit."""
        self._sweep(campaign, report)
        pending: dict[int, int] = {}
        for job in self.store.pending_jobs(campaign, self.task):
            pending[job.run_number] = job.generation
        # jobs "to submit" are another stage's claim, that stage killed or still on its way to submitting them: this
        # stage submits the run and lists it (that stage then finds nothing left to submit and does not)
        for run, generation in sorted(pending.items()):
            if self._submit_run(campaign, run, generation, report):
                report.runs.append(run)

    def _sweep(self, campaign: str, report: StageReport) -> None:
        """Jobs still active in a generation that no longer runs: removed from the batch system, then failed."""
        for run in sorted({j.run_number for j in self.store.stale_jobs(campaign, self.task)}):
            with self.backend.lock(campaign, self.task, run):
                self._drop_stale(campaign, run, report)

    def _drop_stale(self, campaign: str, run: int, report: StageReport) -> None:
        """Remove the run's stale jobs from the batch system and fail them (the caller holds the run's lock)."""
        jobs = self.store.stale_jobs(campaign, self.task, run)
        if not jobs:
            return
        reason = "superseded: its task instance was aborted or claimed again"
        self.backend.remove(campaign, self.task, [_key(j) for j in jobs], reason)
        result = self.store.update_jobs(campaign, self.task, [
            JobUpdate(j.run_number, j.jid, "failed", reason=reason, generation=j.generation, attempt=j.attempts)
            for j in jobs])
        _count(report, "superseded jobs removed", sum(c.outcome == "changed" for c in result.changes))

    def _submit_run(self, campaign: str, run: int, generation: int, report: StageReport,
                    specs: Optional[Sequence[JobSpec]] = None, label: str = "jobs submitted") -> bool:
        """Submit the jobs "to submit" of one run's generation: found by key in the batch system first (adopted),
        the others submitted; then their batch ids recorded. True when all of them are in the batch system.

        Holds the run's submission lock, so two stages never submit the same job. A failure before the batch
        system took the jobs gives them up (a fresh claim is rolled back, only if still this generation); any
        later or unknown failure keeps them, and the next stage looks them up before submitting again.
        """
        with self.backend.lock(campaign, self.task, run):
            self._drop_stale(campaign, run, report)  # an aborted generation leaves before the next one comes
            pending = {_key(j): j for j in self.store.pending_jobs(campaign, self.task, run)
                       if j.generation == generation}
            if not pending:
                return False
            try:
                found = self.backend.find(campaign, self.task, sorted(pending))
                todo = [k for k in sorted(pending) if k not in found]
                priority = self._priority(campaign, run) if todo else 0
                batch = [self.backend.batch_job(campaign, self.task, k, spec, priority)
                         for k, spec in zip(todo, self._specs(campaign, run, generation, todo, specs))]
            except Exception as err:  # nothing submitted; the next stage tries again
                report.errors.append(f"run {run}: {_message(err)}")
                return False
            try:
                submitted = self.backend.submit(campaign, self.task, batch) if batch else {}
            except NotAccepted as err:
                self._give_up(campaign, run, generation, [pending[k] for k in todo], _message(err), report)
                return False
            except Exception as err:
                report.errors.append(f"run {run}: {_message(err)}; the jobs may be in the batch system: the next"
                                     " stage looks them up by key before submitting again")
                return False
            ids = {**found, **submitted}
            records = [BatchRecord(k.jid, k.attempt, ids[k],
                                   {"logs": str(self.backend.job_dir(campaign, self.task, k))}) for k in sorted(ids)]
            try:
                self.store.record_batch_ids(campaign, self.task, run, generation, records)
            except Conflict as err:  # aborted or claimed again meanwhile: what was just submitted is stale
                report.errors.append(f"run {run}: {err}")
                self._drop_stale(campaign, run, report)
                return False
            except Exception as err:  # accepted by the batch system: never rolled back
                report.errors.append(f"run {run}: jobs in the batch system, batch ids not recorded: {_message(err)};"
                                     " the next stage finds them by key")
                return False
            _count(report, label, len(submitted))
            _count(report, "jobs adopted", len(found))
            return len(ids) == len(pending)

    def _specs(self, campaign: str, run: int, generation: int, keys: Sequence[JobKey],
               made: Optional[Sequence[JobSpec]]) -> list[JobSpec]:
        """The specs of these jobs: kept beside their folders (written now for a fresh claim), or made again
        from the claim when a killed stage never wrote them."""
        specs = {s.jid: s for s in made or ()}
        paths = {k.jid: self.backend.spec_path(campaign, self.task, run, generation, k.jid) for k in keys}
        missing = [jid for jid, path in paths.items() if jid not in specs and not path.exists()]
        if missing:
            claim = self.store.claim_of(campaign, self.task, run)
            if claim.generation != generation:
                raise Conflict(f"run {run} was claimed again (generation {claim.generation}); generation"
                               f" {generation} is not submitted")
            specs.update({s.jid: s for s in self._with_options(self.jobs(campaign, claim)) if s.jid in missing})
        out = []
        for jid, path in paths.items():
            if jid in specs:
                if not path.exists():
                    self.backend.makedirs(path.parent)
                    path.write_text(json.dumps(specs[jid].to_dict(), sort_keys=True))
                out.append(specs[jid])
            else:
                out.append(JobSpec.from_dict(json.loads(path.read_text())))
        return out

    def _with_options(self, specs: Sequence[JobSpec]) -> list[JobSpec]:
        """The specs with the handler's option values and version in their environment (kept in the spec: a
        resubmitted job runs with what it was made with); a variable the spec sets itself wins."""
        env = option_env(self.option_values)
        if type(self).version is not None:
            env[VERSION_ENV] = str(type(self).version)
        return [replace(s, env={**env, **s.env}) for s in specs] if env else list(specs)

    def _give_up(self, campaign: str, run: int, generation: int, jobs: Sequence[JobInfo], error: str,
                 report: StageReport) -> None:
        """The batch system refused jobs: a retried attempt is failed (the next resubmit tries while retries
        last); a fresh claim that has nothing in the batch system is rolled back, only if still this generation."""
        reason = f"submit failed: {error}"
        report.errors.append(f"run {run}: {error}")
        retried = [j for j in jobs if j.attempts > 1]
        fresh = [j for j in jobs if j.attempts == 1]
        if fresh and not any(j.batch_id for j in self.store.list_jobs(campaign, self.task, run=run)):
            try:
                self.store.reprocess(campaign, self.task, runs=[run], reason=reason, generation=generation)
                report.add("rolled back")
            except EcalStateError as err:  # aborted or claimed again meanwhile: not ours to roll back
                report.errors.append(f"run {run}: not rolled back: {err}")
                return
            retried += fresh
        report.lost(self.store.update_jobs(campaign, self.task, [
            JobUpdate(j.run_number, j.jid, "failed", reason=reason, generation=j.generation, attempt=j.attempts)
            for j in retried]))

    def check(self, campaign: str, dry_run: bool = False) -> StageReport:
        """Reconcile the active jobs with the backend in one bulk update; read the jobs' reports."""
        with self._stage(campaign, "check", dry_run) as report:
            if not dry_run:
                self._sweep(campaign, report)
            active = [j for j in self.store.list_jobs(campaign, self.task) if j.status in ACTIVE]
            jobs = {_key(j): j for j in active}
            seen = self.backend.observe(campaign, self.task, sorted(jobs))
            updates = [self._update(campaign, jobs[k], o) for k, o in sorted(seen.items())
                       if o.status != jobs[k].status or (o.batch_id and o.batch_id != jobs[k].batch_id)]
            result = self.store.update_jobs(campaign, self.task, updates, dry_run=dry_run)
            report.lost(result)
            report.add("active", len(active))
            if len(seen) < len(jobs):  # left active; health reports them as stuck if it lasts
                report.add("not found by the backend", len(jobs) - len(seen))
            for change in result.changes:
                if change.entity == "job" and change.outcome == "changed":
                    report.add(change.requested)
                elif change.entity == "task":
                    report.add(f"instances {change.requested}")
                    report.runs.append(int(change.key.rsplit(" ", 1)[1]))
            if result.refused:
                report.add("refused", len(result.refused))
            held = [o.batch_id for o in seen.values() if o.release and o.batch_id]
            if held and not dry_run:
                self.backend.release(held)
                report.add("held removed", len(held))
            now = self.store.clock()
            missed = {o.batch_id: MISSED_PRIORITY for o in seen.values() if o.status == "idle" and o.batch_id
                      and o.priority is not None and priority_now(o.priority, now) != o.priority}
            if missed and not dry_run:  # they wait below every live deadline from now on
                self.backend.reprioritize(missed)
                report.add("deadline missed while queued", len(missed))
            if not dry_run:  # what needs action now, recorded for the export and the notifications
                self._note(campaign)
                observe(self.store, campaign, tasks=[self.task])
            return report

    def _update(self, campaign: str, job: JobInfo, seen: Observation) -> JobUpdate:
        fields: Optional[dict[str, Any]] = None
        reason, status = seen.reason, seen.status
        if seen.status in ("done", "failed"):
            report = read_report(self.backend.job_dir(campaign, self.task, _key(job)))
            fields, error = report.fields, report.error
            if error and error not in reason:  # the local backend already quotes the last stderr line
                reason = f"{reason}: {error}" if reason else error
            if report.refused:  # a link or a pipe where its report should be: what it did is unknown
                status = "failed"
        if seen.started and job.started_at is None and status != "idle":  # the start the batch system saw
            fields = {**(fields or {}), STARTED: seen.started}
        return JobUpdate(job.run_number, job.jid, status, fields, seen.batch_id, reason, job.generation,
                         job.attempts)

    def resubmit(self, campaign: str, limit: Optional[int] = None, dry_run: bool = False) -> StageReport:
        """Put failed jobs (under the retry limit, of ``processing`` instances) back to idle and submit them."""
        with self._stage(campaign, "resubmit", dry_run) as report:
            retries = {t.name: t.max_retries for t in self.store.list_tasks(campaign)}[self.task]
            processing = {r["run_number"] for r in self.store.list_runs(campaign, self.task, status="processing")}
            by_run: dict[int, list[JobInfo]] = defaultdict(list)
            for job in self.store.list_jobs(campaign, self.task, status="failed"):
                if job.run_number in processing and job.attempts <= retries:
                    by_run[job.run_number].append(job)
            runs = sorted(by_run)[:limit]
            if dry_run:
                report.add("would resubmit", sum(len(by_run[r]) for r in runs))
                report.runs.extend(runs)
                return report
            self.backend.check()
            self._settle_leftovers(campaign, report)
            for run in runs:
                # failed -> idle is the new attempt, "to submit" until its batch id is recorded
                self.store.update_jobs(campaign, self.task, [
                    JobUpdate(j.run_number, j.jid, "idle", reason="resubmitted", generation=j.generation,
                              attempt=j.attempts) for j in by_run[run]])
                if self._submit_run(campaign, run, by_run[run][0].generation, report, label="jobs resubmitted"):
                    report.runs.append(run)
            return report

    @contextmanager
    def _stage(self, campaign: str, stage: str, dry_run: bool = False) -> Iterator[StageReport]:
        """Run a stage and record its heartbeat (ok, or the error), unless it is a dry run."""
        report = StageReport(campaign, self.task, stage, dry_run=dry_run)
        try:
            yield report
        except Exception as err:
            if not dry_run:
                self._heartbeat(campaign, stage, False, _message(err))
            raise
        if report.errors:
            message = f"{len(report.errors)} error(s): {'; '.join(report.errors)}"
            if not dry_run:
                self._heartbeat(campaign, stage, False, message)
            raise StageFailed(f"{campaign} {self.task} {report.summary()}; {message}")
        if not dry_run:
            self._heartbeat(campaign, stage, True, report.summary())

    def _heartbeat(self, campaign: str, stage: str, ok: bool, message: str) -> None:
        try:
            self.store.heartbeat(campaign, self.task, stage, ok, message[:1000])
        except EcalStateError:
            if ok:
                raise  # a failing stage reports its own error, not the heartbeat's

    # --- command line ----------------------------------------------------------------------------

    @classmethod
    def cli(cls) -> click.Group:
        """The handler's click command line: ``-c C [-c C2] submit|check|resubmit``."""
        return _make_cli(cls)

    @classmethod
    def main(cls, args: Optional[Sequence[str]] = None) -> None:
        """Run the command line (``if __name__ == "__main__": MyHandler.main()``)."""
        cls.cli().main(args=list(args) if args is not None else None,
                       prog_name=os.path.basename(sys.argv[0]) or cls.task)


def _key(job: JobInfo) -> JobKey:
    return JobKey(job.run_number, job.jid, job.generation, job.attempts)


def _count(report: StageReport, what: str, n: int) -> None:
    if n:
        report.add(what, n)


def _message(err: BaseException) -> str:
    if isinstance(err, EcalStateError):
        return str(err)
    return f"{type(err).__name__}: {err}"


def declared_options(handler: type[TaskHandler]) -> list[click.Parameter]:
    """The click parameters of ``handler.options`` (fresh ones at each call: a command owns its parameters)."""
    params: list[click.Parameter] = []
    for item in handler.options:
        if isinstance(item, click.Parameter):
            params.append(item)
            continue
        if not callable(item):
            raise Invalid(f"{handler.__name__}.options: {item!r} is neither a click option nor a click parameter")

        def holder() -> None:
            """What the decorator decorates, to give up its parameter."""

        item(holder)
        params.extend(reversed(getattr(holder, "__click_params__", [])))
    return params


def option_values(handler: type[TaskHandler], given: Mapping[str, Any]) -> dict[str, Any]:
    """The values of ``handler``'s options: ``given`` (by parameter name), else as click makes them (the option's
    environment variable, its default), checked as the command line checks them."""
    params = declared_options(handler)
    unknown = sorted(set(given) - {p.name for p in params})
    if unknown:
        names = ", ".join(str(p.name) for p in params) or "none"
        raise Invalid(f"{handler.__name__}: no option {unknown[0]!r} (declared: {names})")
    if not params:
        return {}
    command = click.Command(handler.__name__, params=params)
    try:
        return dict(command.make_context(handler.__name__, [], default_map=dict(given)).params)
    except click.ClickException as err:
        raise Invalid(f"{handler.__name__}: {err.format_message()}") from None


def option_env(values: Mapping[str, Any]) -> dict[str, str]:
    """Option values as the jobs' variables: ``global_tag`` is ``ECALSTATE_OPTION_GLOBAL_TAG``; a flag is ``true``
    or ``false``, a repeated option comma-joined, an option without a value left out. A value holding a secret of
    this process (an option read from the environment) is refused: the jobs never see one."""
    env: dict[str, str] = {}
    for name, value in values.items():
        if value is None:
            continue
        text = ("true" if value else "false") if isinstance(value, bool) else \
            ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        env[OPTION_ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", name).upper()] = text
    if leaked(env.values(), known_secrets()):
        raise Invalid("an option's value holds a secret of this process: jobs never get one (give the secret to the"
                      " payload another way, e.g. a file only it reads)")
    return env


class _Context:
    """The options of the handler's command group, and the store and backend they open."""

    def __init__(self, handler: type[TaskHandler], campaigns: list[str], db: str, actor: Optional[str],
                 backend: str, workdir: str, slots: Optional[int], as_json: bool) -> None:
        self.handler_cls = handler
        self.campaigns = campaigns
        self.db, self.actor, self.backend_name, self.workdir = db, actor, backend, workdir
        self.slots = slots
        self.as_json = as_json

    def handler(self, values: Mapping[str, Any]) -> TaskHandler:
        """The handler over the store and backend the options name, with its own options' ``values``."""
        options: dict[str, Any] = {"slots": self.slots} if self.backend_name == "local" else {
            "template": self.handler_cls.condor}
        options["job_env"] = self.handler_cls.job_env
        backend = make_backend(self.backend_name, self.workdir, **options)
        store = Store.open(self.db, actor=self.actor)
        try:
            return self.handler_cls(store, backend, values)
        except BaseException:
            store.close()
            raise

    def each(self, stage: Callable[[TaskHandler, str], StageReport], values: Mapping[str, Any]) -> None:
        """Run ``stage`` for every campaign; print each report; exit 1 (one line per error) if any failed, else
        :data:`EXIT_LOST` if the stage left an instance failed for good."""
        if not self.campaigns:
            raise click.UsageError("Missing option '-c' / '--campaign': give at least one.")
        errors = []
        lost: list[str] = []
        try:
            handler = self.handler(values)
        except EcalStateError as err:
            raise click.ClickException(str(err)) from None
        try:
            for campaign in self.campaigns:
                try:
                    report = stage(handler, campaign)
                except EcalStateError as err:
                    errors.append(f"{campaign}: {err}")
                    continue
                if self.as_json:
                    click.echo(json.dumps(report.to_dict(), sort_keys=True))
                else:
                    click.echo(f"{campaign} {handler.task} {report.summary()}")
                    for job in report.jobs:  # submit --dry-run: what it would submit
                        what = f"jobs() failed: {job['error']}" if "error" in job else \
                            f"job {job['job']}: {shlex.join([job['executable'], *job['args']])}"
                        click.echo(f"  run {job['run']} {what}")
                if report.failed_for_good:
                    lost.append(f"{campaign} {handler.task} runs {', '.join(map(str, report.failed_for_good))}")
        finally:
            handler.store.close()
        if errors:
            raise click.ClickException("; ".join(errors))
        if lost:
            click.echo(f"failed for good in this stage (no retry left; see ecalstate health): {'; '.join(lost)}",
                       err=True)
            raise click.exceptions.Exit(EXIT_LOST)


def _campaigns(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> list[str]:
    """The campaigns, checked only when a stage runs (so that ``STAGE --help`` needs none)."""
    return split_multi(value)


def _make_cli(handler: type[TaskHandler]) -> click.Group:
    source = getattr(sys.modules.get(handler.__module__), "__file__", None) or f"{handler.task}.py"
    script = f"python {os.path.basename(source)}"

    def example(text: str, line: str) -> str:
        return f"{text}\n\n\b\nExample:\n    {script} {line}"

    @click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
                 help=example(f"The stages of task {handler.task}: submit, check, resubmit (run by Jenkins).",
                              "-c prompt --backend htcondor submit --limit 10"))
    @click.option("-c", "--campaign", "campaigns", multiple=True, envvar="ECALSTATE_CAMPAIGN",
                  callback=_campaigns, metavar="NAME",
                  help="Campaign, required (env ECALSTATE_CAMPAIGN). Repeatable; comma lists accepted.")
    @click.option("--db", envvar="ECALSTATE_DB", default="./ecalstate.db", show_default=True, metavar="URL|PATH",
                  callback=no_password_in_argument,
                  help="SQLite file or SQLAlchemy URL (env ECALSTATE_DB; a password never on the command line).")
    @click.option("--actor", metavar="NAME", help="Who acts, for the audit (env ECALSTATE_ACTOR, else BUILD_TAG).")
    @click.option("--backend", type=click.Choice(["local", "htcondor"]), envvar="ECALSTATE_BACKEND",
                  default="local", show_default=True, help="Where jobs run (env ECALSTATE_BACKEND).")
    @click.option("--workdir", envvar="ECALSTATE_WORKDIR", default="./ecalstate-work", show_default=True,
                  metavar="DIR", help="Job folders, staged payloads and outputs; every stage must use the same "
                                      "(env ECALSTATE_WORKDIR). With htcondor: a folder the pool sees.")
    @click.option("--slots", type=click.IntRange(min=1), envvar="ECALSTATE_LOCAL_SLOTS", metavar="N",
                  help="Local backend: jobs running at once (env ECALSTATE_LOCAL_SLOTS; default: CPUs).")
    @click.option("--json", "as_json", is_flag=True, help="One JSON report per campaign on stdout.")
    @click.pass_context
    def group(ctx: click.Context, campaigns: list[str], db: str, actor: Optional[str], backend: str, workdir: str,
              slots: Optional[int], as_json: bool) -> None:
        ctx.obj = _Context(handler, campaigns, db, actor, backend, workdir, slots, as_json)

    limit_option = click.option("--limit", type=click.IntRange(min=1), metavar="N",
                                help="At most N task instances (groups) per campaign.")
    dry_run_option = click.option("--dry-run", is_flag=True, help="Print what would happen; write and submit nothing.")

    exits = ("Exit codes: 0 done; 1 the stage failed (one line per error); 3 the stage worked but left a task"
             " instance failed for good (its jobs have no retry left: ecalstate health names it and the command"
             " that resolves it); Jenkins marks such a build UNSTABLE.")

    @group.command(help=example("Claim eligible runs, create their jobs and submit them. Before claiming, the"
                                " campaign's policies act (a fill open for too long is closed, a late run's fill"
                                f" regrouped).\n\n{exits}", "-c prompt submit --limit 20"))
    @limit_option
    @dry_run_option
    @click.pass_obj
    def submit(obj: _Context, limit: Optional[int], dry_run: bool, **values: Any) -> None:
        obj.each(lambda h, c: h.submit(c, limit, dry_run), values)

    @group.command(help=example("Reconcile job statuses with the batch system; complete task instances; record what"
                                f" needs action (for the export and the notifications).\n\n{exits}",
                                "-c prompt check"))
    @dry_run_option
    @click.pass_obj
    def check(obj: _Context, dry_run: bool, **values: Any) -> None:
        obj.each(lambda h, c: h.check(c, dry_run), values)

    @group.command(help=example(f"Resubmit failed jobs that are under the task's retry limit.\n\n{exits}",
                                "-c prompt resubmit"))
    @limit_option
    @dry_run_option
    @click.pass_obj
    def resubmit(obj: _Context, limit: Optional[int], dry_run: bool, **values: Any) -> None:
        obj.each(lambda h, c: h.resubmit(c, limit, dry_run), values)

    for command in (submit, check, resubmit):
        _add_options(handler, group, command)
    return group


def _add_options(handler: type[TaskHandler], group: click.Group, command: click.Command) -> None:
    """Give a stage the handler's own options; one that would hide an option of the stage or of its group (or take
    its parameter name) is refused."""
    taken = {"-h", "--help"}
    names = set()
    for param in [*group.params, *command.params]:
        taken.update(param.opts + param.secondary_opts)
        names.add(param.name)
    for param in declared_options(handler):
        clash = sorted(taken.intersection(param.opts + param.secondary_opts)) or \
            ([f"named {param.name}"] if param.name in names else [])
        if clash:
            raise Invalid(f"{handler.__name__}: option {clash[0]} is a stage's own: give yours another name")
        command.params.append(param)
