"""``ecalstate import-influx``: read an ecalautoctrl InfluxDB 1.x database into ecalstate.

The legacy layout read here (docs/migration.md shows it with examples):

* ``run`` points, tagged ``campaign`` and ``run_number`` (tag or field), ``fill`` (tag or
  field); a string field per task holding its status at that time; other tags, numeric
  fields and the string fields named as metadata (``era``, ``class``... plus
  ``--meta-field``) are run metadata, latest value kept.
* ``job`` points, tagged ``campaign``, ``task``, ``run_number``, ``id``; one-hot status
  fields ``idle``/``running``/``done``/``failed`` (either case), every other field a job
  user field; one point per status change, second-resolution timestamps.

Every instance is imported at its latest status and every job with its whole history,
validated against the transition tables. Nothing is coerced: an unknown status, a job
history the job table refuses (``done -> running``), a point with two statuses set, a
merged run without a leader refuses that task instance, and the import reports it.
Credentials come from ``ECAL_INFLUXDB_USER`` / ``ECAL_INFLUXDB_PWD`` (the original's names).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Optional
from urllib.parse import urlencode, urlsplit

from ..catalog import CAMPAIGN_KINDS, check_name, check_run
from ..errors import EcalStateError, Invalid
from ..statemachine import JOB, TASK, JobStatus, TaskStatus
from ..store import Store
from .legacy_store import ImportInstance, ImportJob, ImportPlan, ImportResult, ImportRun, LegacyStore, Problem

USER_ENV, PASSWORD_ENV = "ECAL_INFLUXDB_USER", "ECAL_INFLUXDB_PWD"
#: string fields of ``run`` points that are run metadata rather than a task's status
META_FIELDS = ("era", "class", "run_class", "rtype", "run_type", "global", "dataset", "hlt_key", "start_time",
               "end_time", "lumi", "nevents")
JOB_STATUSES = tuple(s.value for s in JobStatus)
_RUN_KEYS = ("campaign", "run_number", "fill")
J = JobStatus

# (campaign, run) -> what the run points said; (campaign, task, run) -> jid -> points
_Point = tuple[str, list[str], dict[str, Any]]


class LegacySourceError(EcalStateError):
    """The InfluxDB server could not be read (unreachable, refused, unknown database)."""


@dataclass
class Series:
    """One InfluxDB series: its tags and its points (``time`` in the store's text format, non-null fields)."""

    tags: dict[str, str]
    points: list[dict[str, Any]]


def _timestamp(micros: int) -> str:
    seconds, rest = divmod(int(micros), 1_000_000)
    moment = datetime.fromtimestamp(seconds, timezone.utc).replace(microsecond=rest)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class InfluxSource:
    """InfluxQL over the v1 ``/query`` endpoint (urllib, chunked); credentials from the environment only."""

    def __init__(self, url: str, database: str, timeout: float = 30.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Invalid(f"invalid InfluxDB URL {url!r}: expected http(s)://host:port")
        if parts.username or parts.password:
            raise Invalid(f"credentials in the InfluxDB URL are refused: set {USER_ENV} and {PASSWORD_ENV}")
        self.url = url.rstrip("/")
        self.database = database
        self.timeout = timeout

    def series(self, measurement: str) -> list[Series]:
        """Every series of ``measurement`` (``GROUP BY *``), chunks of one series joined, points by time."""
        import urllib.error
        import urllib.request

        query = {"db": self.database, "q": f'SELECT * FROM "{measurement}" GROUP BY *', "epoch": "u",
                 "chunked": "true", "chunk_size": "10000"}
        request = urllib.request.Request(f"{self.url}/query?{urlencode(query)}")
        user, password = os.environ.get(USER_ENV), os.environ.get(PASSWORD_ENV, "")
        if user:
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        found: dict[tuple[tuple[str, str], ...], Series] = {}
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                for line in response:  # one JSON document per chunk
                    if line.strip():
                        self._add(found, json.loads(line))
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:200]
            raise LegacySourceError(f"InfluxDB at {self.url} answered HTTP {err.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as err:
            reason = err.reason if isinstance(err, urllib.error.URLError) else err
            raise LegacySourceError(f"InfluxDB at {self.url} unreachable: {reason}") from None
        except ValueError:
            raise LegacySourceError(f"{self.url} did not answer InfluxDB /query JSON") from None
        for series in found.values():
            series.points.sort(key=lambda p: p["time"])
        return list(found.values())

    def _add(self, found: dict[tuple[tuple[str, str], ...], Series], chunk: dict[str, Any]) -> None:
        """Add one chunk's points to their series (a series may span several chunks)."""
        if "error" in chunk:
            raise LegacySourceError(f"InfluxDB database {self.database}: {chunk['error']}")
        for result in chunk.get("results", []):
            if "error" in result:
                raise LegacySourceError(f"InfluxDB database {self.database}: {result['error']}")
            for raw in result.get("series", []):
                tags = {k: v for k, v in (raw.get("tags") or {}).items() if v != ""}  # GROUP BY * lists every key
                series = found.setdefault(tuple(sorted(tags.items())), Series(tags, []))
                columns = raw["columns"]
                for values in raw["values"]:
                    point = {k: v for k, v in zip(columns, values) if v is not None}
                    point["time"] = _timestamp(point["time"])
                    series.points.append(point)


@dataclass
class _RunAcc:
    fill: Optional[int]
    meta: dict[str, Any]
    statuses: dict[str, list[tuple[str, str]]]
    first: str


def plan(
    runs: Iterable[Series],
    jobs: Iterable[Series],
    meta_fields: Sequence[str] = META_FIELDS,
    campaigns: Sequence[str] = (),
    kind: str = "prompt",
) -> tuple[list[ImportPlan], list[Problem]]:
    """Validated import plans, one per campaign, and the problems of points that belong to no campaign or run."""
    if kind not in CAMPAIGN_KINDS:
        raise Invalid(f"invalid campaign kind {kind!r} (valid: {', '.join(CAMPAIGN_KINDS)})")
    problems: list[Problem] = []
    wanted = set(campaigns)
    run_acc = _read_runs(runs, set(meta_fields), wanted, problems)
    job_acc = _read_jobs(jobs, wanted, problems)
    plans: dict[str, ImportPlan] = {}
    for (campaign, number), acc in sorted(run_acc.items()):
        target = plans.setdefault(campaign, ImportPlan(campaign, kind))
        target.runs.append(ImportRun(number, acc.fill, acc.meta, acc.first))
        for task, history in sorted(acc.statuses.items()):
            points = job_acc.pop((campaign, task, number), {})
            _plan_instance(target, task, number, _collapse(history), points)
    for (campaign, task, number), points in sorted(job_acc.items()):
        plans.setdefault(campaign, ImportPlan(campaign, kind)).problems.append(Problem(
            campaign, task, number, None, f"{len(points)} job(s) but no status of the task in the run measurement"))
    for target in plans.values():
        _find_leaders(target, {r.run_number: r.fill for r in target.runs})
    return list(plans.values()), problems


def _campaign(tags: dict[str, str], wanted: set[str], problems: list[Problem], what: str) -> Optional[str]:
    campaign = tags.get("campaign")
    if not campaign:
        if wanted:
            return None  # it may belong to a campaign not asked for
        problems.append(Problem("(none)", tags.get("task"), None, None,
                                f"{what} series without a campaign tag: {tags}"))
        return None
    if wanted and campaign not in wanted:
        return None
    try:
        return check_name("campaign", campaign)
    except Invalid as err:
        problems.append(Problem(campaign, None, None, None, str(err)))
        return None


def _read_runs(
    series: Iterable[Series], meta_fields: set[str], wanted: set[str], problems: list[Problem]
) -> dict[tuple[str, int], _RunAcc]:
    out: dict[tuple[str, int], _RunAcc] = {}
    for s in series:
        campaign = _campaign(s.tags, wanted, problems, "run")
        if campaign is None or not s.points:
            continue
        raw_run = s.tags.get("run_number", next((p["run_number"] for p in s.points if "run_number" in p), None))
        raw_fill = s.tags.get("fill", next((p["fill"] for p in reversed(s.points) if "fill" in p), None))
        try:
            number, fill = check_run(raw_run, raw_fill)
        except Invalid as err:
            problems.append(Problem(campaign, None, None, None, f"run points skipped: {err}"))
            continue
        acc = out.setdefault((campaign, number), _RunAcc(fill, {}, {}, s.points[0]["time"]))
        acc.first = min(acc.first, s.points[0]["time"])
        acc.meta.update({k: v for k, v in s.tags.items() if k not in _RUN_KEYS})
        for point in s.points:
            for key, value in point.items():
                if key in _RUN_KEYS or key == "time":
                    continue
                if key in meta_fields or not isinstance(value, str):
                    acc.meta[key] = value
                else:
                    acc.statuses.setdefault(key, []).append((point["time"], value))
    return out


def _read_jobs(
    series: Iterable[Series], wanted: set[str], problems: list[Problem]
) -> dict[tuple[str, str, int], dict[int, list[_Point]]]:
    out: dict[tuple[str, str, int], dict[int, list[_Point]]] = {}
    for s in series:
        campaign = _campaign(s.tags, wanted, problems, "job")
        if campaign is None:
            continue
        task, raw_run, raw_jid = s.tags.get("task"), s.tags.get("run_number"), s.tags.get("id")
        try:
            number = check_run(raw_run)[0]
            jid = int(str(raw_jid))
            if not task or jid < 0:
                raise ValueError
        except (Invalid, ValueError):
            problems.append(Problem(campaign, task, None, None, f"job series without a valid task, run_number or id: "
                                                                f"{s.tags}"))
            continue
        points = out.setdefault((campaign, task, number), {}).setdefault(jid, [])
        for point in s.points:
            statuses = [k.lower() for k, v in point.items() if k.lower() in JOB_STATUSES and v == 1]
            fields = {k: v for k, v in point.items() if k != "time" and k.lower() not in JOB_STATUSES}
            points.append((point["time"], statuses, fields))
        points.sort(key=lambda p: p[0])
    return out


def _collapse(history: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Status changes only: a point repeating the previous status is not a change."""
    out: list[tuple[str, str]] = []
    for ts, status in sorted(history):
        if not out or out[-1][1] != status:
            out.append((ts, status))
    return out


def _plan_instance(target: ImportPlan, task: str, run: int, history: list[tuple[str, str]],
                   points: dict[int, list[_Point]]) -> None:
    """Add the instance to ``target``, or one problem saying why it is refused."""
    latest = history[-1][1]
    problem = None
    try:
        check_name("task", task)
        TASK.parse(latest)
    except EcalStateError as err:
        problem = Problem(target.campaign, task, run, None, f"{err} (latest status, at {history[-1][0]})")
    jobs = []
    for jid, job_points in sorted(points.items()):
        job, error = _job(jid, job_points)
        if error and problem is None:
            problem = Problem(target.campaign, task, run, jid, error)
        if job is not None:
            jobs.append(job)
    if problem is not None:
        target.problems.append(problem)
    else:
        target.instances.append(ImportInstance(task, run, latest, history, jobs))


def _job(jid: int, points: list[_Point]) -> tuple[Optional[ImportJob], Optional[str]]:
    """A job's history replayed through the job table (the retry guard is not applied to the past)."""
    history: list[tuple[str, Optional[str], str, dict[str, Any]]] = []
    fields: dict[str, Any] = {}
    changed: dict[str, Any] = {}  # fields changed since the last transition: its audit detail
    status: Optional[str] = None
    attempts, started, finished = 1, None, None
    for ts, statuses, point_fields in points:
        if len(statuses) != 1:
            return None, f"point at {ts} has {len(statuses)} statuses set ({', '.join(statuses) or 'none'}), not one"
        new = statuses[0]
        changed.update({k: v for k, v in point_fields.items() if fields.get(k) != v})
        fields.update(point_fields)
        if status is None and new != J.IDLE.value:
            return None, f"history starts with {new} at {ts}: a job starts idle"
        if status is not None and new == status:
            continue  # a field update, not a transition: told with the next one
        if status is not None and not JOB.is_allowed(J(status), J(new)):
            return None, f"impossible history: {status} -> {new} at {ts} is not in the job table"
        attempts += status == J.FAILED.value and new == J.IDLE.value
        started = None if new == J.IDLE.value else (started or (ts if new == J.RUNNING.value else None))
        finished = ts if new in (J.DONE.value, J.FAILED.value) else finished
        history.append((ts, status, new, changed))
        status, changed = new, {}
    assert status is not None
    return ImportJob(jid, status, fields, attempts, started, finished, history), None


def _find_leaders(target: ImportPlan, fills: dict[int, Optional[int]]) -> None:
    """Point each merged instance at its leader: the run of the task whose jobs' ``group`` field lists it,
    else the one other (not merged) run of the task in its fill; refuse it when there is none or several."""
    leaders = [i for i in target.instances if i.status != TaskStatus.MERGED.value]
    listing: dict[tuple[str, str], set[int]] = {}
    by_fill: dict[tuple[str, Optional[int]], set[int]] = {}
    for lead in leaders:
        by_fill.setdefault((lead.task, fills.get(lead.run)), set()).add(lead.run)
        for job in lead.jobs:
            for member in str(job.fields.get("group", "")).replace(" ", "").split(","):
                listing.setdefault((lead.task, member), set()).add(lead.run)
    kept = list(leaders)
    for inst in target.instances:
        if inst.status != TaskStatus.MERGED.value:
            continue
        fill = fills.get(inst.run)
        candidates = listing.get((inst.task, str(inst.run))) or (by_fill.get((inst.task, fill), set())
                                                                 if fill is not None else set())
        if len(candidates) == 1:
            kept.append(replace(inst, leader_run=next(iter(candidates))))
            continue
        found = ", ".join(map(str, sorted(candidates))) or "none"
        target.problems.append(Problem(target.campaign, inst.task, inst.run, None,
                                       f"merged, but no single leader (runs listing it in their group field, "
                                       f"else runs of its fill {fill}: {found})"))
    target.instances = kept


def import_influx(
    store: Store,
    source: InfluxSource,
    campaigns: Sequence[str] = (),
    meta_fields: Sequence[str] = (),
    kind: str = "prompt",
    dry_run: bool = False,
    progress: Optional[Callable[[int, int], None]] = None,
) -> tuple[list[ImportResult], list[Problem]]:
    """Read ``source`` and import (or with ``dry_run`` only count) each campaign in one transaction.

    ``progress(done, total)``: the two reads, then each campaign's transaction."""
    tick = progress or (lambda done, total: None)
    tick(0, 3)
    runs = source.series("run")
    tick(1, 3)
    plans, problems = plan(runs, source.series("job"), (*META_FIELDS, *meta_fields), campaigns, kind)
    legacy = LegacyStore(store)
    results = []
    for done, one in enumerate(plans):
        tick(2 + done, 2 + len(plans))
        results.append(legacy.import_plan(one, dry_run))
    tick(2 + len(plans), 2 + len(plans))
    return results, problems
