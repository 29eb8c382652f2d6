"""Campaigns, tasks, run types, runs and their fills: what exists, before anything runs, and which fills ended."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Optional

from .base import (AUDIT_SQL, CASCADE, Ctx, StoreBase, campaign_id, downstream_tasks, loads, move_instance,
                   task_names, task_of)
from .clock import parse_moment, parse_time
from .db import Tx
from .errors import Invalid, NotFound
from .filters import parse_filter
from .inputs import declare_inputs, with_inputs
from .limits import INT64_MAX, check_int64, chunks, int64_range
from .results import (END_TIME, ONGOING, BackfillResult, CampaignInfo, FillEnd, InjectResult, RunSpec, RunTypeInfo,
                      TaskInfo, TaskSettings)
from .statemachine import TaskStatus

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,127}$")
CAMPAIGN_KINDS = ("prompt", "reprocessing")
#: task names that cannot be a field of the exported ``run`` point (InfluxDB drops ``time``; the rest are its tags)
RESERVED_TASK_NAMES = ("time", "campaign", "run_number", "fill", "rtype")


def check_name(what: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise Invalid(
            f"invalid {what} name {name!r}: 1-128 characters, letters, digits and _ . : + - "
            "(starting with a letter or digit)"
        )
    if what == "task" and name.lower() in RESERVED_TASK_NAMES:
        raise Invalid(
            f"invalid task name {name!r}: reserved by the exported run measurement "
            f"({', '.join(RESERVED_TASK_NAMES)})"
        )
    return name


def check_run(run_number: Any, fill: Any = None) -> tuple[int, Optional[int]]:
    """Validate a run number (int > 0) and a fill (int or absent), accepting numeric strings."""
    try:
        number = int(str(run_number).strip())
    except (TypeError, ValueError):
        raise Invalid(f"invalid run number {run_number!r}: expected an integer > 0") from None
    if number <= 0:
        raise Invalid(f"invalid run number {number}: run numbers are > 0")
    check_int64(number, "run number", 1)
    if fill is None or fill == "":
        return number, None
    try:
        fill_number = int(str(fill).strip())
    except (TypeError, ValueError):
        raise Invalid(f"invalid fill {fill!r} for run {number}: expected an integer") from None
    if fill_number < 0:
        raise Invalid(f"invalid fill {fill_number} for run {number}: fills are >= 0")
    if fill_number > INT64_MAX:
        raise Invalid(f"invalid fill {fill_number} for run {number}: expected {int64_range(0)}")
    return number, fill_number


def check_fill(fill: Any) -> int:
    """A fill number, checked (an integer >= 0)."""
    return check_int64(fill, "fill", 0)


def ended_fills(tx: Tx, cid: int, fills: Sequence[int]) -> set[int]:
    """The fills of ``fills`` that ended: recorded (a source, ``run close-fill``), or a later fill has a run."""
    newest = tx.scalar("SELECT MAX(fill) FROM run WHERE campaign_id = ?", (cid,))
    marks = ",".join("?" * len(fills))
    recorded = {r[0] for r in tx.all(f"SELECT fill FROM fill_end WHERE campaign_id = ? AND fill IN ({marks})",
                                     (cid, *fills))}
    return recorded | {f for f in fills if newest is not None and f < newest}


def fill_last_ends(tx: Tx, cid: int, fills: Sequence[int]) -> dict[int, Optional[str]]:
    """When each fill of ``fills`` saw its last run end, in the store's time: the runs' metadata end time, else when
    the run was recorded; None while a run of the fill is still being taken."""
    out: dict[int, Optional[str]] = {}
    for chunk in chunks(sorted(set(fills))):
        marks = ",".join("?" * len(chunk))
        for fill, meta, injected in tx.all(
                f"SELECT fill, meta, injected_at FROM run WHERE campaign_id = ? AND fill IN ({marks})", (cid, *chunk)):
            data = loads(meta)
            if fill in out and out[fill] is None:
                continue
            if data.get(ONGOING) is True:
                out[fill] = None
                continue
            end = parse_moment(data.get(END_TIME)) or injected
            known = out.get(fill)
            out[fill] = end if known is None or end > known else known
    return out


def end_fills(ctx: Ctx, cid: int, fills: Mapping[int, str], dumped: Optional[Mapping[int, str]] = None) -> list[int]:
    """Record the fills of ``fills`` (fill -> why) not known to have ended yet; the ones it recorded, in order.

    ``dumped`` (fill -> when the beam was dumped, as the source says) is kept too, also for a fill recorded before
    without it (a later fill had started): a fill's deadline counts from its dump."""
    times = {f: parse_time(t) for f, t in (dumped or {}).items()}
    known = {f: ctx.tx.one("SELECT dumped_at FROM fill_end WHERE campaign_id = ? AND fill = ?", (cid, f))
             for f in sorted(set(fills) | set(times))}
    closed = [f for f in sorted(fills) if known[f] is None]
    ctx.tx.many("INSERT INTO fill_end (campaign_id, fill, ended_at, reason, actor, dumped_at) VALUES (?,?,?,?,?,?)",
                [(cid, f, ctx.now, str(fills[f])[:500], ctx.actor, times.get(f)) for f in closed])
    ctx.tx.many("UPDATE fill_end SET dumped_at = ? WHERE campaign_id = ? AND fill = ?",
                [(t, cid, f) for f, t in times.items() if t and known[f] is not None and known[f][0] is None])
    return closed


class Catalog(StoreBase):
    """Setting up a campaign: its tasks, their dependencies, its run types, its runs."""

    # --- campaigns ----------------------------------------------------------------

    def create_campaign(self, name: str, kind: str = "prompt", description: str = "") -> CampaignInfo:
        """Create a campaign with its default run type ``all`` (empty filter, no tasks yet)."""
        check_name("campaign", name)
        if kind not in CAMPAIGN_KINDS:
            raise Invalid(f"invalid campaign kind {kind!r} (valid: {', '.join(CAMPAIGN_KINDS)})")

        def body(ctx: Ctx) -> CampaignInfo:
            if ctx.tx.scalar("SELECT id FROM campaign WHERE name = ?", (name,)) is not None:
                raise Invalid(f"campaign {name!r} already exists")
            cid = ctx.tx.scalar(
                "INSERT INTO campaign (name, kind, description, created_at) VALUES (?,?,?,?) RETURNING id",
                (name, kind, description, ctx.now),
            )
            ctx.tx.run("INSERT INTO rtype (campaign_id, name, filter) VALUES (?, 'all', '')", (cid,))
            return CampaignInfo(name, kind, description, ctx.now)

        return self._write("campaign.create", None, body)

    def list_campaigns(self) -> list[CampaignInfo]:
        with self.db.tx(write=False) as tx:
            rows = tx.all("SELECT name, kind, description, created_at FROM campaign ORDER BY name")
        return [CampaignInfo(*r) for r in rows]

    # --- tasks ----------------------------------------------------------------------

    def add_task(
        self, campaign: str, name: str, depends_on: Sequence[str] = (), max_retries: int = 3,
        deadline: Optional[float] = None, deadline_from: Optional[str] = None, warn_before: Optional[float] = None,
        cadence: Optional[float] = None, inputs_from: Optional[str] = None, ordered: bool = False,
        gate: bool = False,
    ) -> TaskInfo:
        """Declare a task; its dependencies must exist already, so no cycle can form.

        ``deadline`` (seconds from the run's end, or the fill's: ``deadline_from``), ``warn_before`` (seconds before
        it, default a quarter of it), ``cadence`` (seconds), ``ordered`` (claimed in run order) and ``gate``
        (approved by an expert, never claimed): see :class:`~ecalstate.results.TaskSettings`.
        ``inputs_from``: the campaign whose tasks ``depends_on`` names, read only (:mod:`ecalstate.inputs`)."""
        check_name("task", name)
        _check_retries(max_retries)
        settings = TaskSettings().changed(deadline, deadline_from, warn_before, cadence, ordered, gate)
        deps = list(dict.fromkeys(depends_on))
        if name in deps and inputs_from is None:
            raise Invalid(f"task {name!r} cannot depend on itself (dependency cycle)")

        def body(ctx: Ctx) -> TaskInfo:
            cid = campaign_id(ctx.tx, campaign)
            if ctx.tx.scalar("SELECT id FROM task WHERE campaign_id = ? AND name = ?", (cid, name)):
                raise Invalid(f"task {name!r} already exists in campaign {campaign!r}")
            wanted = settings
            if inputs_from is not None:  # dependencies in another campaign: in the settings, no task_dep row
                wanted = with_inputs(settings, *declare_inputs(ctx.tx, campaign, inputs_from, deps))
            dep_ids = [] if inputs_from is not None else [task_of(ctx.tx, cid, campaign, d)[0] for d in deps]
            tid = ctx.tx.scalar(
                "INSERT INTO task (campaign_id, name, max_retries, created_at, settings) VALUES (?,?,?,?,?)"
                " RETURNING id", (cid, name, max_retries, ctx.now, wanted.to_json()),
            )
            ctx.tx.many("INSERT INTO task_dep (task_id, depends_on_id) VALUES (?,?)", [(tid, d) for d in dep_ids])
            return task_info(name, deps, max_retries, wanted)

        return self._write("task.add", None, body)

    def update_task(
        self,
        campaign: str,
        name: str,
        depends_on: Optional[Sequence[str]] = None,
        max_retries: Optional[int] = None,
        deadline: Optional[float] = None,
        deadline_from: Optional[str] = None,
        warn_before: Optional[float] = None,
        cadence: Optional[float] = None,
        ordered: Optional[bool] = None,
        gate: Optional[bool] = None,
    ) -> TaskInfo:
        """Change a task's dependencies, retry limit or settings (None: unchanged; a deadline or cadence of 0
        removes it); a change that closes a cycle is refused."""
        if max_retries is not None:
            _check_retries(max_retries)

        def body(ctx: Ctx) -> TaskInfo:
            tx = ctx.tx
            cid = campaign_id(tx, campaign)
            tid, retries = task_of(tx, cid, campaign, name)
            if (deadline, deadline_from, warn_before, cadence, ordered, gate) != (None,) * 6:
                current = TaskSettings.from_json(tx.scalar("SELECT settings FROM task WHERE id = ?", (tid,)))
                settings = current.changed(deadline, deadline_from, warn_before, cadence, ordered, gate)
                tx.run("UPDATE task SET settings = ? WHERE id = ?", (settings.to_json(), tid))
            if max_retries is not None:
                tx.run("UPDATE task SET max_retries = ? WHERE id = ?", (max_retries, tid))
                retries = max_retries
            current = TaskSettings.from_json(tx.scalar("SELECT settings FROM task WHERE id = ?", (tid,)))
            if depends_on is not None and current.inputs_from is not None:  # another campaign's tasks (none: its own)
                source = declare_inputs(tx, campaign, current.inputs_from, depends_on) if depends_on else (None, ())
                tx.run("UPDATE task SET settings = ? WHERE id = ?", (with_inputs(current, *source).to_json(), tid))
            elif depends_on is not None:
                deps = list(dict.fromkeys(depends_on))
                dep_ids = [task_of(tx, cid, campaign, d)[0] for d in deps]
                downstream = set(downstream_tasks(tx, tid)) | {tid}
                for dep, dep_id in zip(deps, dep_ids):
                    if dep_id in downstream:
                        raise Invalid(f"task {name!r} cannot depend on {dep!r}: that closes a dependency cycle")
                tx.run("DELETE FROM task_dep WHERE task_id = ?", (tid,))
                tx.many("INSERT INTO task_dep (task_id, depends_on_id) VALUES (?,?)", [(tid, d) for d in dep_ids])
            return self._task_info(tx, cid, tid, name, retries)

        return self._write("task.update", None, body)

    def list_tasks(self, campaign: str) -> list[TaskInfo]:
        with self.db.tx(write=False) as tx:
            cid = campaign_id(tx, campaign)
            rows = tx.all("SELECT id, name, max_retries FROM task WHERE campaign_id = ? ORDER BY id", (cid,))
            return [self._task_info(tx, cid, r[0], r[1], r[2]) for r in rows]

    @staticmethod
    def _task_info(tx: Tx, cid: int, tid: int, name: str, retries: int) -> TaskInfo:
        deps = tx.all(
            "SELECT t.name FROM task_dep d JOIN task t ON t.id = d.depends_on_id WHERE d.task_id = ? ORDER BY t.id",
            (tid,),
        )
        settings = TaskSettings.from_json(tx.scalar("SELECT settings FROM task WHERE id = ?", (tid,)))
        return task_info(name, [d[0] for d in deps] or list(settings.inputs), int(retries), settings)

    # --- run types ---------------------------------------------------------------------

    def create_rtype(
        self, campaign: str, name: str, filter: str = "", tasks: Sequence[str] = ()
    ) -> RunTypeInfo:
        check_name("run type", name)
        parsed = parse_filter(filter)

        def body(ctx: Ctx) -> RunTypeInfo:
            cid = campaign_id(ctx.tx, campaign)
            if ctx.tx.scalar("SELECT id FROM rtype WHERE campaign_id = ? AND name = ?", (cid, name)):
                raise Invalid(f"run type {name!r} already exists in campaign {campaign!r}")
            task_ids = [task_of(ctx.tx, cid, campaign, t)[0] for t in dict.fromkeys(tasks)]
            rid = ctx.tx.scalar(
                "INSERT INTO rtype (campaign_id, name, filter) VALUES (?,?,?) RETURNING id", (cid, name, parsed.text)
            )
            ctx.tx.many("INSERT INTO rtype_task (rtype_id, task_id) VALUES (?,?)", [(rid, t) for t in task_ids])
            return RunTypeInfo(name, parsed.text, list(dict.fromkeys(tasks)))

        return self._write("rtype.create", None, body)

    def update_rtype(
        self,
        campaign: str,
        name: str,
        add: Sequence[str] = (),
        remove: Sequence[str] = (),
        backfill: bool = False,
        filter: Optional[str] = None,
    ) -> BackfillResult:
        """Add or remove tasks of a run type; ``backfill`` creates instances for matching runs already present."""
        parsed = parse_filter(filter) if filter is not None else None
        overlap = set(add) & set(remove)
        if overlap:
            raise Invalid(f"task(s) both added and removed: {', '.join(sorted(overlap))}")

        def body(ctx: Ctx) -> BackfillResult:
            tx = ctx.tx
            cid = campaign_id(tx, campaign)
            tx.serialize("runs", cid)  # with injections: each sees the other's runs or run-type tasks
            rid = tx.scalar("SELECT id FROM rtype WHERE campaign_id = ? AND name = ?", (cid, name))
            if rid is None:
                raise NotFound(f"unknown run type {name!r} in campaign {campaign!r}")
            add_ids = [task_of(tx, cid, campaign, t)[0] for t in dict.fromkeys(add)]
            remove_ids = [task_of(tx, cid, campaign, t)[0] for t in dict.fromkeys(remove)]
            if parsed is not None:
                tx.run("UPDATE rtype SET filter = ? WHERE id = ?", (parsed.text, rid))
            present = {r[0] for r in tx.all("SELECT task_id FROM rtype_task WHERE rtype_id = ?", (rid,))}
            tx.many(
                "INSERT INTO rtype_task (rtype_id, task_id) VALUES (?,?)",
                [(rid, t) for t in add_ids if t not in present],
            )
            tx.many("DELETE FROM rtype_task WHERE rtype_id = ? AND task_id = ?", [(rid, t) for t in remove_ids])
            created = 0
            if backfill:
                run_filter = parse_filter(tx.scalar("SELECT filter FROM rtype WHERE id = ?", (rid,)))
                runs = tx.all("SELECT id, run_number, fill, meta, rtypes FROM run WHERE campaign_id = ?", (cid,))
                # a run still being taken has no task yet: its run types are matched when it ends
                matching = [r for r in runs if loads(r[3]).get(ONGOING) is not True
                            and run_filter.matches(run_record(r[1], r[2], loads(r[3])))]
                # the runs it now matches carry its name too, as if injected after the change; their exported
                # rtype tag keeps the run types they had (a new tag would start a second series)
                tx.many("UPDATE run SET tag_rtypes = COALESCE(tag_rtypes, rtypes), rtypes = ? WHERE id = ?", [
                    (",".join([*r[4].split(","), name] if r[4] else [name]), r[0])
                    for r in matching if name not in r[4].split(",")])
                task_ids = [r[0] for r in tx.all("SELECT task_id FROM rtype_task WHERE rtype_id = ?", (rid,))]
                created = _create_instances(ctx, cid, [(r[0], r[1]) for r in matching], task_ids, "backfill")
                skip_under_skipped(ctx, cid)
            return BackfillResult(name, list(dict.fromkeys(add)), list(dict.fromkeys(remove)), created)

        return self._write("rtype.update", None, body)

    def list_rtypes(self, campaign: str) -> list[RunTypeInfo]:
        with self.db.tx(write=False) as tx:
            cid = campaign_id(tx, campaign)
            out = []
            for rid, name, flt in tx.all("SELECT id, name, filter FROM rtype WHERE campaign_id = ? ORDER BY id",
                                         (cid,)):
                tasks = tx.all("SELECT t.name FROM rtype_task x JOIN task t ON t.id = x.task_id WHERE x.rtype_id = ?"
                               " ORDER BY t.id", (rid,))
                out.append(RunTypeInfo(name, flt, [t[0] for t in tasks]))
            return out

    # --- runs ---------------------------------------------------------------------------

    def inject_runs(
        self, campaign: str, runs: Iterable[RunSpec], request_id: Optional[str] = None
    ) -> InjectResult:
        """Inject runs; each run type they match activates its tasks (status ``new``). Re-injection is a no-op."""
        specs = check_specs(runs)

        def body(ctx: Ctx) -> InjectResult:
            cid = campaign_id(ctx.tx, campaign)
            ctx.tx.serialize("runs", cid)  # overlapping builds injecting the same runs: one inserts, the rest see them
            return insert_runs(ctx, cid, specs)

        return self._write("run.inject", request_id, body, encode=_asdict, decode=InjectResult.from_dict,
                           args=(campaign, specs))

    def copy_runs(self, campaign: str, source: str, runs: Optional[Sequence[int]] = None) -> InjectResult:
        """Inject into ``campaign`` the runs of campaign ``source`` (all, or ``runs``) with their fills and metadata,
        and the ends of their fills that ``source`` knows (with the dump times): a test campaign on production's runs.

        Reads ``source`` only. A run still being taken there is left for a later copy; runs present are left as
        they are (a copy is repeated as production goes on)."""
        wanted = None if runs is None else set(runs)
        if source == campaign:
            raise Invalid(f"cannot copy the runs of campaign {campaign!r} into itself")

        def body(ctx: Ctx) -> InjectResult:
            tx = ctx.tx
            cid, sid = campaign_id(tx, campaign), campaign_id(tx, source)
            tx.serialize("runs", cid)  # with injections and syncs of the campaign: one inserts, the others see it
            specs = {}
            for number, fill, meta in tx.all("SELECT run_number, fill, meta FROM run WHERE campaign_id = ?"
                                             " ORDER BY run_number", (sid,)):
                data = loads(meta)
                if (wanted is None or number in wanted) and data.get(ONGOING) is not True:
                    specs[number] = RunSpec(number, fill, data)
            result = insert_runs(ctx, cid, specs)
            fills = {s.fill for s in specs.values() if s.fill is not None}
            ends = {f: (d, r) for f, d, r in tx.all(
                "SELECT fill, dumped_at, reason FROM fill_end WHERE campaign_id = ?", (sid,)) if f in fills}
            end_fills(ctx, cid, {f: f"ended in campaign {source}: {r}" for f, (_, r) in ends.items()},
                      {f: d for f, (d, _) in ends.items() if d})
            return result

        return self._write("run.copy", None, body)

    def close_fill(self, campaign: str, fill: int, reason: str) -> bool:
        """Record that ``fill`` ended (an operator saw the dump); False when it was known already."""
        number = check_fill(fill)
        if not str(reason).strip():
            raise Invalid("closing a fill needs a reason")

        def body(ctx: Ctx) -> bool:
            cid = campaign_id(ctx.tx, campaign)
            ctx.tx.serialize("runs", cid)  # with syncs recording the same fill: one inserts, the other sees it
            return bool(end_fills(ctx, cid, {number: str(reason)}))

        return self._write("fill.close", None, body)

    def fill_ended(self, campaign: str, fill: int) -> bool:
        """Whether ``fill`` ended, by the rule grouping by fill uses: recorded (a source, ``run close-fill``), or a
        run of a later fill exists."""
        with self.db.tx(write=False) as tx:
            return check_fill(fill) in ended_fills(tx, campaign_id(tx, campaign), [fill])

    def ended_fills(self, campaign: str) -> list[FillEnd]:
        """Every fill known to have ended, with when, why and who recorded it, by fill."""
        with self.db.tx(write=False) as tx:
            cid = campaign_id(tx, campaign)
            return [FillEnd(*r) for r in tx.all(
                "SELECT fill, ended_at, reason, actor, dumped_at FROM fill_end WHERE campaign_id = ? ORDER BY fill",
                (cid,))]


def task_info(name: str, deps: list[str], retries: int, settings: TaskSettings) -> TaskInfo:
    """A task as listed: its dependencies, retry limit and settings."""
    if settings.deadline is None:
        return TaskInfo(name, deps, retries, cadence=settings.cadence, inputs_from=settings.inputs_from,
                        ordered=settings.ordered, gate=settings.gate)
    return TaskInfo(name, deps, retries, settings.deadline, settings.deadline_from, settings.warn_before,
                    settings.cadence, settings.inputs_from, settings.ordered, settings.gate)


def ended_at(meta: Mapping[str, Any]) -> Optional[str]:
    """When a run ended, from its metadata (:data:`~ecalstate.results.END_TIME`), in the store's format; None when it
    says nothing usable."""
    return parse_time(meta.get(END_TIME))


def check_specs(runs: Iterable[RunSpec]) -> dict[int, RunSpec]:
    """Validated runs by number: run and fill numbers, JSON metadata, no run given twice with different values."""
    specs: dict[int, RunSpec] = {}
    for spec in runs:
        number, fill = check_run(spec.run_number, spec.fill)
        meta = dict(spec.meta)
        try:
            json.dumps(meta)
        except (TypeError, ValueError):
            raise Invalid(f"metadata of run {number} is not JSON-serialisable") from None
        if number in specs and (specs[number].fill, specs[number].meta) != (fill, meta):
            raise Invalid(f"run {number} is given twice with different values")
        specs[number] = RunSpec(number, fill, meta)
    return specs


def insert_runs(ctx: Ctx, cid: int, specs: dict[int, RunSpec], activate: bool = True) -> InjectResult:
    """Insert the runs not present yet (the caller holds the campaign's ``runs`` lock).

    ``activate=False`` (a run still being taken) matches no run type and creates no instance yet:
    :func:`activate_runs` does when the run has ended."""
    tx = ctx.tx
    known: set[int] = set()
    numbers = sorted(specs)
    for chunk in chunks(numbers):
        marks = ",".join("?" * len(chunk))
        known.update(r[0] for r in tx.all(
            f"SELECT run_number FROM run WHERE campaign_id = ? AND run_number IN ({marks})", (cid, *chunk)
        ))
    fresh = [n for n in numbers if n not in known]
    match = _matcher(tx, cid) if activate else (lambda spec: ("", []))
    pending: list[tuple[int, int]] = []
    run_numbers: dict[int, int] = {}
    for number in fresh:
        spec = specs[number]
        rtypes, task_ids = match(spec)
        run_id = tx.scalar(
            "INSERT INTO run (campaign_id, run_number, fill, meta, rtypes, injected_at, ended_at)"
            " VALUES (?,?,?,?,?,?,?) RETURNING id",
            (cid, number, spec.fill, json.dumps(spec.meta, sort_keys=True), rtypes, ctx.now, ended_at(spec.meta)),
        )
        run_numbers[run_id] = number
        pending += [(run_id, task_id) for task_id in task_ids]
    return InjectResult(fresh, sorted(known), _create_pairs(ctx, cid, run_numbers, pending))


def campaign_settings(tx: Tx, cid: int) -> dict[str, Any]:
    """A campaign's settings (``campaign.settings``: what its wings keep, one key each)."""
    return loads(tx.scalar("SELECT settings FROM campaign WHERE id = ?", (cid,)))


def set_campaign_setting(ctx: Ctx, cid: int, key: str, value: Optional[dict[str, Any]]) -> None:
    """Store one key of a campaign's settings (None: remove it)."""
    settings = campaign_settings(ctx.tx, cid)
    if value is None:
        settings.pop(key, None)
    else:
        settings[key] = value
    ctx.tx.run("UPDATE campaign SET settings = ? WHERE id = ?", (json.dumps(settings, sort_keys=True), cid))


def update_runs(ctx: Ctx, runs: Sequence[tuple[int, RunSpec]]) -> None:
    """Give runs (by id) their final fill and metadata (a run source saw them end, or saw more of them)."""
    ctx.tx.many("UPDATE run SET fill = ?, meta = ?, ended_at = ? WHERE id = ?",
                [(spec.fill, json.dumps(spec.meta, sort_keys=True), ended_at(spec.meta), run_id)
                 for run_id, spec in runs])


def activate_runs(ctx: Ctx, cid: int, runs: Sequence[tuple[int, RunSpec]]) -> int:
    """Match (run id, run) against the campaign's run types: record the matches, create their ``new`` instances."""
    match = _matcher(ctx.tx, cid)
    pending: list[tuple[int, int]] = []
    updates = []
    for run_id, spec in runs:
        rtypes, task_ids = match(spec)
        updates.append((rtypes, run_id))
        pending += [(run_id, task_id) for task_id in task_ids]
    ctx.tx.many("UPDATE run SET rtypes = ? WHERE id = ?", updates)
    return _create_pairs(ctx, cid, {run_id: spec.run_number for run_id, spec in runs}, pending)


def _matcher(tx: Tx, cid: int) -> Callable[[RunSpec], tuple[str, list[int]]]:
    """run -> (the names of the run types it matches, comma-joined; the ids of the tasks they activate)."""
    rtypes = []
    for rid, rname, flt in tx.all("SELECT id, name, filter FROM rtype WHERE campaign_id = ? ORDER BY id", (cid,)):
        tasks = [r[0] for r in tx.all("SELECT task_id FROM rtype_task WHERE rtype_id = ?", (rid,))]
        rtypes.append((rname, parse_filter(flt), tasks))

    def match(spec: RunSpec) -> tuple[str, list[int]]:
        record = run_record(spec.run_number, spec.fill, spec.meta)
        matched = [(name, tasks) for name, flt, tasks in rtypes if flt.matches(record)]
        return ",".join(m[0] for m in matched), list(dict.fromkeys(t for _, tasks in matched for t in tasks))

    return match


def _asdict(result: InjectResult) -> dict[str, Any]:
    return {"new": result.new, "existing": result.existing, "instances": result.instances}


def _check_retries(value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise Invalid(f"invalid max retries {value!r}: expected an integer >= 0")
    check_int64(value, "max retries", 0)


def run_record(run_number: int, fill: Optional[int], meta: dict[str, Any]) -> dict[str, Any]:
    """What a run type's filter reads of a run: its metadata, its number and its fill."""
    return {**meta, "run_number": run_number, "fill": fill}


#: instances this transaction created (still new) whose upstream task is skipped for their run
_UNDER_SKIPPED = """
SELECT ti.id, t.name, r.run_number, ti.version, ut.name
FROM task_instance ti JOIN task t ON t.id = ti.task_id JOIN run r ON r.id = ti.run_id
JOIN task_dep d ON d.task_id = ti.task_id JOIN task ut ON ut.id = d.depends_on_id
JOIN task_instance u ON u.task_id = d.depends_on_id AND u.run_id = ti.run_id
WHERE ti.campaign_id = ? AND ti.status = 'new' AND ti.created_at = ? AND u.status = 'skipped'
ORDER BY ti.id, ut.name
"""


def skip_under_skipped(ctx: Ctx, cid: int) -> int:
    """Skip the instances this transaction created for runs an upstream task was skipped for, as a skip cascades
    (a backfill after a skip): they could never be claimed and would wait for ever. How many it skipped."""
    skipped: set[int] = set()
    while True:  # a chain created at once: each round skips the next task down
        rows = [r for r in ctx.tx.all(_UNDER_SKIPPED, (cid, ctx.now)) if r[0] not in skipped]
        if not rows:
            return len(skipped)
        for iid, task, run, version, upstream in rows:
            if iid in skipped:
                continue
            skipped.add(iid)
            move_instance(ctx, cid, task, iid=iid, run=run, status=TaskStatus.NEW.value, version=version,
                          to=TaskStatus.SKIPPED, reason=f"backfill: {upstream} is skipped for the run{CASCADE}")


def _create_instances(ctx: Ctx, cid: int, runs: Sequence[tuple[int, int]], task_ids: Sequence[int], reason: str) -> int:
    """Create ``new`` instances of ``task_ids`` for ``runs`` (run id, run number) that lack one."""
    existing: set[tuple[int, int]] = set()
    for chunk in chunks(list(task_ids)):
        marks = ",".join("?" * len(chunk))
        existing.update(
            (r[0], r[1]) for r in ctx.tx.all(
                f"SELECT run_id, task_id FROM task_instance WHERE campaign_id = ? AND task_id IN ({marks})",
                (cid, *chunk),
            )
        )
    pairs = [(run_id, t) for run_id, _ in runs for t in task_ids if (run_id, t) not in existing]
    return _create_pairs(ctx, cid, {run_id: num for run_id, num in runs}, pairs, reason)


def _create_pairs(
    ctx: Ctx, cid: int, numbers: dict[int, int], pairs: Sequence[tuple[int, int]], reason: str = "run injected"
) -> int:
    """Insert instances (status ``new``) and their audit rows, in bulk."""
    if not pairs:
        return 0
    tx = ctx.tx
    names = task_names(tx, cid)
    tx.many(
        "INSERT INTO task_instance (campaign_id, task_id, run_id, status, version, generation, outputs,"
        " created_at, updated_at) VALUES (?,?,?,?,1,0,'{}',?,?)",
        [(cid, task_id, run_id, TaskStatus.NEW.value, ctx.now, ctx.now) for run_id, task_id in pairs],
    )
    ids: dict[tuple[int, int], int] = {}
    for chunk in chunks(sorted({run_id for run_id, _ in pairs})):
        marks = ",".join("?" * len(chunk))
        for iid, run_id, task_id in tx.all(
            f"SELECT id, run_id, task_id FROM task_instance WHERE run_id IN ({marks})", tuple(chunk)
        ):
            ids[(run_id, task_id)] = iid
    tx.many(
        AUDIT_SQL,
        [
            ctx.audit_row(cid, "task", names[task_id], TaskStatus.NEW.value, instance_id=ids[(run_id, task_id)],
                          run_number=numbers[run_id], generation=0, reason=reason)
            for run_id, task_id in pairs
        ],
    )
    return len(pairs)
