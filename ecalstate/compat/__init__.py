"""The original framework's names and call shapes (ecalautoctrl's JobCtrl, RunCtrl, TaskHandler, QueryOMS) over
the store.

Handlers written for ecalautoctrl run unchanged (``import ecalautoctrl`` is an alias of this package), or
with ``from ecalstate.compat import JobCtrl, RunCtrl, TaskHandler``; ``dbname`` is an ecalstate database
path or URL, or one of the original's database names (``ecal_prompt_v1``) mapped to a store by the databases
file (:mod:`ecalstate.compat.dbnames`). Unlike the original, every call is one validated,
audited transaction: what the original accepted silently but the transition
tables refuse raises :class:`~ecalstate.statemachine.TransitionNotAllowed` (or
another :class:`~ecalstate.errors.EcalStateError`) and writes nothing.

Two deliberate differences (docs/migration.md has the full table):

* job changes never complete the task instance by themselves: as in the
  original, the handler's ``check`` stage moves ``processing`` to ``done``;
* ``createTask(recreate=True)`` opens a new job generation, history stays.

Run numbers may be ints, numeric strings, numpy (or awkward) integer scalars or the original's run dicts (a
mapping with ``run_number``); run dicts and job ids returned here are strings, as InfluxDB tags were, and every
call takes job ids as ints or strings alike. User fields may hold numpy scalars (stored as the Python value).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any, Optional, Union

from ..base import resolve_actor
from ..catalog import check_run
from ..db import normalise_url
from ..errors import EcalStateError, Invalid
from ..filters import split_multi
from ..limits import check_int64
from ..notify import deliver
from ..results import BulkResult, Change, JobInfo
from ..statemachine import JobStatus, TaskStatus
from ..store import Store
from .dbnames import resolve_dbname
from .legacy_store import LegacyStore, UpstreamNotReady
from .oms import QueryOMS

__all__ = ["JobCtrl", "JobPoints", "QueryOMS", "RunCtrl", "TaskHandler", "close_stores", "group_runs", "open_store",
           "plain", "run_number"]

RunRef = Union[int, str, Mapping[str, Any]]
STAGES = ("submit", "resubmit", "check")
#: instance statuses whose current generation holds the jobs a JobCtrl talks about
_WITH_JOBS = (TaskStatus.PROCESSING.value, TaskStatus.DONE.value, TaskStatus.FAILED.value)
_STATUSES = tuple(s.value for s in JobStatus)
#: the tags of every job point the original wrote (a JobCtrl's own tags join them), and its point's time
_JOB_TAGS = ("time", "id", "task", "campaign", "run_number")

_stores: dict[tuple[str, str], Store] = {}
_log = logging.getLogger("ecalstate.compat")
#: the runs found waiting by the drop-in stage running now (None outside a stage, where refusals raise)
_stage_waits: ContextVar[Optional[list[str]]] = ContextVar("ecalstate_compat_stage_waits", default=None)


def _waits(err: UpstreamNotReady) -> bool:
    """Within a stage, a run whose upstream tasks are not done waits: logged, noted for the stage's heartbeat, and
    True (the call answers as the original did a refused point, falsy, and the stage goes on to the other runs).
    Outside a stage, False: the caller raises."""
    waits = _stage_waits.get()
    if waits is None:
        return False
    waits.append(err.what)
    _log.info(f"{err.what} waits: {err.why}; nothing written")
    return True


def open_store(dbname: str) -> Store:
    """One store per database and actor for the whole process (handlers create many controllers).

    ``dbname`` is a path, a URL or a database name of the databases file (:func:`resolve_dbname`)."""
    target = resolve_dbname(dbname)
    key = (normalise_url(target), resolve_actor())
    store = _stores.get(key)
    if store is None:
        store = _stores[key] = Store.open(target)
    return store


def close_stores() -> None:
    """Close every store :func:`open_store` opened (end of a handler, or of a test)."""
    while _stores:
        _stores.popitem()[1].close()


def plain(value: Any) -> Any:
    """A numpy scalar (awkward's integer scalars are numpy's) as the Python value it holds; anything else as it is.

    Scripts take fills, runs and job ids from arrays; the store takes Python values (and JSON has no int64)."""
    item = getattr(value, "item", None)
    if getattr(value, "ndim", None) == 0 and callable(item):
        return item()
    return value


def run_number(run: RunRef) -> int:
    """The run number of an int, a numeric string, a numpy integer scalar or a run dict."""
    value = run.get("run_number") if isinstance(run, Mapping) else run
    return check_run(plain(value))[0]


def group_runs(group: Any) -> list[int]:
    """The runs a ``group`` tag names, each once: a comma-joined string, or a list, tuple or array of runs (each a
    run or a comma-joined string: ``args.run_list.split(',')`` gives a list of one run for a single run)."""
    group = plain(group)
    items = [group] if isinstance(group, (str, Mapping)) or not isinstance(group, Iterable) else list(group)
    runs: set[int] = set()
    for item in map(plain, items):
        parts = item.split(",") if isinstance(item, str) else [item]
        runs.update(run_number(p) for p in parts if not (isinstance(p, str) and not p.strip()))
    return sorted(runs)


def job_id(jid: Union[int, str]) -> int:
    """A job id as the store keeps it: the original's ids come back as strings (``getFailed() -> ['0']``)."""
    try:
        return check_int64(jid, "job id", 0)
    except Invalid:
        raise Invalid(f"invalid job id {jid!r}: expected an integer >= 0 (or its text)") from None


def _one_hot(status: str) -> dict[str, int]:
    return {s: int(s == status) for s in _STATUSES}


def _tag_text(value: Any) -> str:
    """A tag's value as InfluxDB kept it, text; a group of runs comma-joined."""
    value = plain(value)
    if isinstance(value, Iterable) and not isinstance(value, (str, Mapping)):
        return ",".join(str(plain(v)) for v in value)
    return str(value)


class JobPoints:
    """A job's points as the original's ``getJob(jid)`` gave them, an InfluxDB ResultSet: ``get_points()`` yields
    each point (time, tags, one-hot statuses) oldest first; ``len()`` counts series (1, or 0 for an unknown job)."""

    def __init__(self, points: Sequence[dict[str, Any]]) -> None:
        self._points = list(points)

    def get_points(self, measurement: Optional[str] = None,
                   tags: Optional[Mapping[str, str]] = None) -> Iterator[dict[str, Any]]:
        if measurement not in (None, "job"):
            return iter(())
        return (dict(p) for p in self._points if all(p.get(k) == v for k, v in (tags or {}).items()))

    def __len__(self) -> int:
        return 1 if self._points else 0

    def __iter__(self) -> Iterator[Iterator[dict[str, Any]]]:
        """One generator of points per series, as a ResultSet iterates."""
        return iter([self.get_points()] if self._points else [])

    def __repr__(self) -> str:
        return f"JobPoints({self._points!r})"


class JobCtrl:
    """Jobs of one task instance: the task (``workflow=`` or ``task=``) x ``campaign`` x a run.

    The run is ``tags['run_number']``; tags keyed by ``fill`` and/or ``group`` (comma-separated runs, as the
    per-fill scripts pass them) name a group, whose jobs belong to its leader: the group's run the task is
    processing, else its newest run (the one a grouped claim makes leader).
    """

    def __init__(
        self, workflow: Optional[str] = None, campaign: str = "", tags: Optional[Mapping[str, Any]] = None,
        dbname: str = "", *, task: Optional[str] = None,
    ) -> None:
        if (workflow is None) == (task is None):
            raise Invalid("JobCtrl takes the task as workflow= or task=, one of them")
        tags = {str(k): plain(v) for k, v in (tags or {}).items()}
        self.task = str(workflow if workflow is not None else task)
        self.campaign = campaign
        self.tags = tags
        self.store = open_store(dbname)
        self.legacy = LegacyStore(self.store)
        if "run_number" in tags:
            self.run = run_number(tags["run_number"])
        else:
            group = tags.get("group")
            runs = [] if group is None or (isinstance(group, str) and not group.strip()) else group_runs(group)
            if not runs and tags.get("fill") in (None, ""):
                raise Invalid("JobCtrl needs tags with a run_number, or a fill and/or group of runs")
            self.run = self.legacy.group_leader(campaign, self.task, runs, tags.get("fill"))
        #: what a user field may not be called: the original's sanity check refused a field named as a tag, and a
        #: status name as a field would set two statuses
        self.reserved = frozenset(_JOB_TAGS) | frozenset(tags) | frozenset(_STATUSES)
        #: why the run waits, when createTask found its upstream not ready within a stage: its job calls then
        #: write nothing and answer False
        self.waiting: Optional[str] = None

    # --- task level -------------------------------------------------------------------

    def taskExist(self) -> bool:
        """True when the instance's current generation has jobs (a ``new``/``reprocess`` one has none yet)."""
        return bool(self._jobs())

    def createTask(
        self, jids: Optional[Iterable[Any]], fields: Optional[Sequence[Optional[Mapping[str, Any]]]] = None,
        recreate: bool = False,
    ) -> int:
        """Create ``idle`` jobs; claims a ``new`` instance first. Returns the job generation (>= 1).

        An existing task (jobs in the current generation) is refused unless ``recreate``, which starts it over: a
        new generation, every job idle, retries counted afresh (the earlier jobs stay in the history)."""
        try:
            ids = [plain(j) for j in (jids if jids is not None else [])]
        except TypeError:
            raise Invalid(f"createTask takes a list of job ids, not {type(jids).__name__}") from None
        if not ids:
            raise Invalid("createTask: the job id list is empty; give the ids of the jobs to create")
        checked = None
        if fields is not None:
            sets = list(fields)
            if len(sets) != len(ids):
                raise Invalid(f"createTask: {len(ids)} job ids but {len(sets)} field sets (one per job)")
            checked = [self._fields(j, f) for j, f in zip(ids, sets)]
        try:
            return self.legacy.open_generation(self.campaign, self.task, self.run, ids, checked, recreate)
        except UpstreamNotReady as err:  # within a stage: this run waits, the others go on
            if not _waits(err):
                raise
            self.waiting = err.why
            return 0

    def taskCompleted(self) -> bool:
        """Every job of the current generation is done (and there is at least one)."""
        jobs = self._jobs()
        return bool(jobs) and all(j.status == JobStatus.DONE.value for j in jobs)

    def taskEndTime(self) -> Optional[datetime]:
        """When the last job finished, once the task is completed: a naive UTC datetime, as the original's (callers
        write ``datetime.utcnow() - jctrl.taskEndTime()``)."""
        if not self.taskCompleted():
            return None
        end = max(datetime.fromisoformat(str(j.finished_at)) for j in self._jobs())
        return end.astimezone(timezone.utc).replace(tzinfo=None)

    # --- job statuses (called by the job itself, or by a check stage) ------------------

    def setStatus(self, jid: Union[int, str], status: str, fields: Optional[Mapping[str, Any]] = None) -> bool:
        """Validated job transition; the instance itself is completed by the handler's ``check``. False, nothing
        written, for a run createTask found waiting for its upstream tasks within a stage."""
        number = job_id(plain(jid))
        if self.waiting is not None:
            _log.info(f"{self.task} run {self.run} job {number} {status}: not recorded, the run waits ({self.waiting})")
            return False
        self.store.set_job_status(self.campaign, self.task, self.run, number, str(status), self._fields(number, fields),
                                  reason=f"JobCtrl.{status}", complete=False)
        return True

    def idle(self, jid: Union[int, str], fields: Optional[Mapping[str, Any]] = None) -> bool:
        return self.setStatus(jid, JobStatus.IDLE.value, fields)

    def running(self, jid: Union[int, str], fields: Optional[Mapping[str, Any]] = None) -> bool:
        return self.setStatus(jid, JobStatus.RUNNING.value, fields)

    def done(self, jid: Union[int, str], fields: Optional[Mapping[str, Any]] = None) -> bool:
        return self.setStatus(jid, JobStatus.DONE.value, fields)

    def failed(self, jid: Union[int, str], fields: Optional[Mapping[str, Any]] = None) -> bool:
        return self.setStatus(jid, JobStatus.FAILED.value, fields)

    # --- job queries ------------------------------------------------------------------

    def getJob(self, jid: Union[int, str], last: bool = False) -> Union[list[dict[str, Any]], JobPoints]:
        """The original's answers: ``last=True``, its ``last(*)`` query, a list of one point (``time``, the user
        fields, exactly one status set; no tags), ``[]`` for an unknown job; otherwise its ``SELECT *``, a
        :class:`JobPoints` (``get_points()``: every point, tags included, oldest first)."""
        job = self._find(jid)
        if last:
            if job is None:
                return []
            user = {k: v for k, v in job.fields.items() if k not in self.reserved}
            return [{"time": job.updated_at, **user, **_one_hot(job.status)}]
        if job is None:
            return JobPoints([])
        tags = {**{k: _tag_text(v) for k, v in self.tags.items()}, "campaign": self.campaign, "task": self.task,
                "run_number": str(self.run), "id": str(job.jid)}
        return JobPoints([{"time": row.ts, **tags, **_one_hot(row.to_status)} for row in self._history(job)])

    def getJobs(self) -> dict[str, list[str]]:
        """Job ids (strings, as the original's tags) by status."""
        out: dict[str, list[str]] = {s.value: [] for s in JobStatus}
        for job in self._jobs():
            out[job.status].append(str(job.jid))
        return out

    def getIdle(self) -> list[str]:
        return self.getJobs()[JobStatus.IDLE.value]

    def getRunning(self) -> list[str]:
        return self.getJobs()[JobStatus.RUNNING.value]

    def getDone(self) -> list[str]:
        return self.getJobs()[JobStatus.DONE.value]

    def getFailed(self) -> list[str]:
        return self.getJobs()[JobStatus.FAILED.value]

    def getNRetries(self, jid: Union[int, str]) -> int:
        """How many times the job failed in this generation, 0 for an unknown job (the original counted its points
        with ``failed`` set, a field update of a failed job among them)."""
        job = self._find(jid)
        failed = JobStatus.FAILED.value
        return 0 if job is None else sum(1 for row in self._history(job)
                                         if row.to_status == failed and row.from_status != failed)

    def _fields(self, jid: Any, fields: Optional[Mapping[str, Any]]) -> dict[str, Any]:
        """User fields as the store takes them (numpy scalars as Python values); one named as a tag or a status of
        the job is refused, as the original's sanity check refused it."""
        if fields is None:
            return {}
        if not isinstance(fields, Mapping):
            raise Invalid(f"the fields of job {jid} must be a dict of names and values, not {type(fields).__name__}")
        for name in fields:
            if name in self.reserved:
                raise Invalid(f"field {name!r} of job {jid} names a tag or a status of the job (reserved: "
                              f"{', '.join(sorted(self.reserved))}); the original refused such a point too: rename it")
        return {k: plain(v) for k, v in fields.items()}

    def _jobs(self) -> list[JobInfo]:
        if self.store.instance(self.campaign, self.task, self.run).status not in _WITH_JOBS:
            return []
        return self.store.list_jobs(self.campaign, self.task, run=self.run)

    def _find(self, jid: Union[int, str]) -> Optional[JobInfo]:
        """The job of the current generation, or None (the original's getters answered nothing for it)."""
        number = job_id(plain(jid))
        return next((job for job in self._jobs() if job.jid == number), None)

    def _history(self, job: JobInfo) -> list[Any]:
        rows = self.store.history(self.campaign, self.task, self.run, limit=None, entity="job")
        return [r for r in rows if r.jid == job.jid and r.generation == job.generation]


class RunCtrl:
    """Runs of one campaign: task statuses per run, and the outputs tasks recorded."""

    def __init__(self, dbname: str, campaign: str) -> None:
        self.campaign = campaign
        self.store = open_store(dbname)
        self.legacy = LegacyStore(self.store)

    def updateStatus(self, run: RunRef, status: Mapping[str, str], leader: Optional[RunRef] = None) -> BulkResult:
        """Set ``{task: status}`` for a run, validated and all or nothing.

        ``processing`` claims the run (next generation); ``merged`` folds it into ``leader``, by default
        the one ``processing`` run of the task in the same fill; ``reprocess`` (alone) cascades to the runs
        merged into it; the same status again changes nothing.
        """
        number = run_number(run)
        if "reprocess" in status.values():
            if len(status) != 1:
                raise Invalid("updateStatus with reprocess takes one task at a time")
            (task,) = status
            return self.store.reprocess(self.campaign, task, runs=[number], reason="updateStatus")
        head = None if leader is None else run_number(leader)
        try:
            return self.legacy.legacy_update(self.campaign, number, status, leader=head)
        except UpstreamNotReady as err:  # within a stage: this run waits (nothing written), the others go on
            if not _waits(err):
                raise
            return BulkResult([Change("task", err.what, err.current.value, err.requested.value, "refused", err.why)])

    def getRuns(self, status: Optional[Mapping[str, Union[str, Sequence[str]]]] = None) -> list[dict[str, Any]]:
        """Run dicts (``run_number`` and ``fill`` as strings, metadata, each task's status) matching every
        ``{task: status or [statuses]}`` given."""
        wanted = {t: {s} if isinstance(s, str) else set(s) for t, s in (status or {}).items()}
        out = []
        for run in self.legacy.legacy_runs(self.campaign):
            if all(run.statuses.get(t) in allowed for t, allowed in wanted.items()):
                fill = "" if run.fill is None else str(run.fill)
                out.append({**run.meta, **run.statuses, "run_number": str(run.run_number), "fill": fill})
        return out

    def getOutput(
        self, process: str, runs: Optional[Sequence[RunRef]] = None, era: Optional[str] = None
    ) -> list[str]:
        """The files task ``process`` produced for ``runs`` or for an ``era``: one element per file, in run then
        job order (callers remove files one by one), from the ``output`` field of each job of its done runs."""
        if (runs is None) == (era is None):
            raise Invalid("getOutput takes runs=... or era=..., one of them")
        numbers = None if runs is None else [run_number(r) for r in runs]
        return self.legacy.legacy_outputs(self.campaign, process, numbers, era)


class TaskHandler:
    """Base of a task script: ``python my_task.py --db DB -c CAMPAIGN submit|resubmit|check``.

    Subclasses implement ``submit`` and ``resubmit`` (and may override ``check``); before each stage
    method runs, ``self.campaign`` and ``self.rctrl`` are switched to the campaign at hand. Each stage
    records a heartbeat for ``ecalstate health`` and then sends the campaign's pending notifications
    (a webhook that is down is logged, never fails the stage); a failing campaign does not stop the others.
    Nor does a run whose upstream tasks are not done (or were skipped): within a stage, ``createTask`` and
    ``updateStatus(processing)`` for it write nothing, log that it waits and answer falsy (``0``, a refused
    change), and that JobCtrl's job calls answer ``False``: the loop goes on to the next run (``health`` names a run
    that can never start).
    """

    rctrl: RunCtrl  # set for the campaign at hand before each stage method runs

    def __init__(self, task: str) -> None:
        self.task = task
        self.campaign = ""
        self.log = logging.getLogger(f"ecalstate.compat.{task}")
        self.opts = argparse.Namespace()
        self.parser = argparse.ArgumentParser(description=f"{task}: submit, resubmit or check its jobs")
        self.parser.add_argument("--db", dest="dbname", default=os.environ.get("ECALSTATE_DB", "./ecalstate.db"),
                                 help="ecalstate database path or URL, or a database name of the databases file "
                                      "(ECALSTATE_DATABASES; docs/migration.md) (env ECALSTATE_DB)")
        self.parser.add_argument("-c", "--campaign", action="append", default=[],
                                 help="campaign; repeatable, comma lists accepted (env ECALSTATE_CAMPAIGN)")
        self.parser.add_argument("stage", choices=STAGES)

    def __call__(self, argv: Optional[Sequence[str]] = None) -> int:
        """Run the stage for every campaign; 0 when all succeeded, 1 otherwise."""
        self.opts = self.parser.parse_args(argv)
        campaigns = split_multi(self.opts.campaign or [os.environ.get("ECALSTATE_CAMPAIGN", "")])
        if not campaigns:
            self.parser.error("give -c/--campaign (or set ECALSTATE_CAMPAIGN)")
        return max(self._stage(campaign, self.opts.stage) for campaign in campaigns)

    def _stage(self, campaign: str, stage: str) -> int:
        self.campaign = campaign
        ok, message = True, ""
        waits: list[str] = []
        token = _stage_waits.set(waits)  # a run whose upstream is not ready waits; the stage goes on
        try:
            self.rctrl = RunCtrl(self.opts.dbname, campaign)
            getattr(self, stage)()
            if waits:
                runs = list(dict.fromkeys(waits))
                message = f"{len(runs)} run(s) wait for their upstream tasks: {', '.join(runs)}"
        except EcalStateError as err:
            ok, message = False, str(err)
            self.log.error(f"{stage} of {self.task} in campaign {campaign} failed: {err}")
        except Exception as err:  # a handler bug in one campaign must not stop the others
            ok, message = False, f"{type(err).__name__}: {err}"
            self.log.exception(f"{stage} of {self.task} in campaign {campaign} failed")
        finally:
            _stage_waits.reset(token)
        try:
            store = open_store(self.opts.dbname)
            store.heartbeat(campaign, self.task, stage, ok, message[:500])
            deliver(store, campaign, timeout=3.0, retries=1, backoff=0.5)
        except EcalStateError as err:
            ok = False
            self.log.error(f"cannot record the {stage} of {self.task} in campaign {campaign}: {err}")
        return 0 if ok else 1

    def submit(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not implement submit")

    def resubmit(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not implement resubmit")

    def check(self) -> None:
        """Complete ``processing`` instances whose jobs decided them: all done -> done; failed beyond retries ->
        failed."""
        result = open_store(self.opts.dbname).complete_instances(self.campaign, self.task)
        for change in result.changes:
            self.log.info(f"{change.key}: {change.current} -> {change.requested} ({change.reason})")
