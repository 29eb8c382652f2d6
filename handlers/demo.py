#!/usr/bin/env python3
"""The main job, on the embedded defaults: a simulated day of ECAL PhiSym processing.

    python handlers/demo.py [--out DIR] [--fills N]

In a fresh SQLite file it creates campaign ``prompt`` with the PhiSym chain
(phisym-reco per run -> phisym-calib per fill -> phisym-plots per fill, and
phisym-validate -> phisym-upload per fill: the constants checked, then uploaded in
run order to the conditions database's stand-in), then
plays a day of data taking and Jenkins together. The day's runs and fills are
written in CMS OMS's JSON:API shape (``oms.json``); every tick the clock moves on
and the OMS run source (``run sync --source oms``: its cursor, runs still being
taken, fills that ended, the OMS attribute mapping) reads what OMS would answer
by then, through an OMS API answered in-process instead of over HTTP. Then check,
resubmit and submit of each workflow run with the local backend, until every
task instance is done. One reconstruction job fails on its first attempt
(resubmit recovers it, and its fill's calibration waits for it); the operator
skips one run (ECAL was partly off), which its fill's calibration leaves out.
Each fill is calibrated once, from all its runs, when it has ended, by phisym-calib's
previous release (2.0); the calibration must be done 48 h after its fill's end (the
beam dump OMS reports): the day is placed so that it ended just before the demo starts,
and the demo replays it in seconds, so a fill's latency is how long ago its beam was
dumped. OMS lists one run of the second fill late, after its fill was calibrated:
health names it with the command that takes it in, and the operator runs that command.
Then the new release (2.1) is deployed: ``reprocess --version-not 2.1 --downstream``
takes every fill the old one calibrated, and the new one calibrates them again.
Its constants are the same bytes as the old one's: their upload writes nothing (same
sha256). Finally it prints the status overview, health, the latency table and the
upload log, and writes the HTML report and the InfluxDB line protocol. Every other step is the command an
operator or a Jenkins stage would type, run in-process.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import operator
import re
import shutil
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import click

from ecalstate import Store
from ecalstate.attention import attention
from ecalstate.backends import JobKey
from ecalstate.backends.local import LocalBackend
from ecalstate.cli import main as ecalstate
from ecalstate.clock import now as clock_now
from ecalstate.handler import TaskHandler
from ecalstate.sources.oms import OMSAPI, OmsRunSource, Response, RunMapping
from ecalstate.sources.sync import sync

sys.path.insert(0, str(Path(__file__).resolve().parent))
from phisym_calib import PhiSymCalib  # noqa: E402
from phisym_plots import PhiSymPlots  # noqa: E402
from phisym_reco import PhiSymReco  # noqa: E402
from phisym_upload import STANDIN_LOG, PhiSymUpload  # noqa: E402
from phisym_validate import PhiSymValidate  # noqa: E402

CAMPAIGN = "prompt"


class PhiSymCalib20(PhiSymCalib):
    """phisym-calib as released before the new one: the day is calibrated by it, then reprocessed by the new."""

    version = "2.0"


#: the workflows Jenkins runs during the day (phisym-calib in its previous release)
WORKFLOWS = (PhiSymReco, PhiSymCalib20, PhiSymPlots, PhiSymValidate, PhiSymUpload)
MARKER = ".ecalstate-demo"
FIRST_RUN, FIRST_FILL = 380001, 9001
#: how far the simulated clock moves on each Jenkins tick
TICK = timedelta(minutes=30)
#: the run the operator skips (the first run of the second fill: ECAL partly off)
SKIPPED_RUN = FIRST_RUN + 4
#: when the simulated OMS starts listing a run (a run it lists late); not an OMS attribute
LISTED_AT = "listed_at"
#: the OMS attributes the demo maps beyond the default mapping: the era, and two simulated ones (events per run,
#: and the demo's transient failure), as a --mapping file would
MAPPING = RunMapping(meta={**RunMapping().meta, "era": "era", "nevents": "nevents", "inject_failure": "inject_failure"})
KEYS = {"runs": "run_number", "fills": "fill_number"}
FILTERS = {"eq": operator.eq, "gt": operator.gt, "ge": operator.ge}


def run(command: click.Command, name: str, args: Sequence[str], echo: bool = True, check: bool = True) -> int:
    """Run one command line in-process, printing it first; return its exit code."""
    if echo:
        click.secho(f"$ {name} {' '.join(args)}", fg="cyan")
    try:
        command.main(list(args), prog_name=name, standalone_mode=False)
    except click.ClickException as err:
        err.show()
        if check:
            raise SystemExit(f"demo step failed: {name} {' '.join(args)}") from None
        return err.exit_code
    except SystemExit as exc:  # commands that report through their exit code (health)
        code = int(exc.code or 0)
        if check and code:
            raise SystemExit(f"demo step failed: {name} {' '.join(args)}") from None
        return code
    return 0


def day_start(fills: int) -> datetime:
    """Where the day begins so that it ends (its last run) 30 minutes before now: runs end in the past, as OMS
    reports them, and their latencies are real ones."""
    probe = datetime(2026, 1, 1, tzinfo=timezone.utc)
    span = max(datetime.fromisoformat(r["attributes"]["end_time"].replace("Z", "+00:00"))
               for r in day_of_runs(fills, probe)["runs"]["data"]) - probe
    return clock_now().replace(second=0, microsecond=0) - span - timedelta(minutes=30)


def day_of_runs(fills: int, start: datetime) -> dict[str, Any]:
    """A day of data taking as OMS answers it (JSON:API documents of runs and fills): fills of 2-4 collision
    runs, each fill dumped before a cosmics run (no fill) that the collisions run type leaves alone. With two fills
    or more, one collision run of the second fill is listed by OMS late (``listed_at``, not an OMS attribute: when
    the simulated OMS starts answering it), after its fill was calibrated."""
    runs: list[dict[str, Any]] = []
    ends: list[dict[str, Any]] = []
    number = FIRST_RUN
    for fill in range(FIRST_FILL, FIRST_FILL + fills):
        fill_start = start
        for i in range(2 + (fill % 3)):
            end = start + timedelta(minutes=25 + 10 * i)
            lumi = round(0.004 * (end - start).total_seconds() / 60, 3)
            runs.append(oms_run(number, fill, "collisions2026", start, end, lumi, 40_000 + 30_000 * i))
            number += 1
            start = end + timedelta(minutes=3)
        ends.append({"fill_number": fill, "start_time": iso(fill_start), "end_time": iso(start)})  # beam dumped
        runs.append(oms_run(number, None, "cosmics2026", start, start + timedelta(minutes=40), 0.0, 5_000))
        number += 1
        start += timedelta(hours=1)
    runs[1]["inject_failure"] = 1  # a transient failure of its first reconstruction job
    if fills > 1:  # a run of the second fill that OMS lists two hours after the day's last run ended
        fill = FIRST_FILL + 1
        taken = next(datetime.fromisoformat(e["start_time"]) for e in ends if e["fill_number"] == fill)
        late = oms_run(number, fill, "collisions2026", taken + timedelta(minutes=1), taken + timedelta(minutes=21),
                       0.08, 30_000)
        late[LISTED_AT] = iso(datetime.fromisoformat(runs[-1]["end_time"]) + timedelta(hours=2))
        runs.append(late)
    return {resource: {"data": [{"id": str(row[KEYS[resource]]), "type": resource, "attributes": row}
                                for row in rows]} for resource, rows in (("runs", runs), ("fills", ends))}


def oms_run(number: int, fill: Any, mode: str, start: datetime, end: datetime, lumi: float,
            events: int) -> dict[str, Any]:
    """One run's OMS attributes (the names of OMS's runs endpoint, mapped by :class:`RunMapping`)."""
    return {"run_number": number, "fill_number": fill, "start_time": iso(start), "end_time": iso(end),
            "recorded_lumi": lumi, "delivered_lumi": round(lumi * 1.05, 3), "l1_hlt_mode": mode,
            "sequence": "GLOBAL-RUN", "components": ["ECAL", "HCAL", "TRACKER"], "era": "Run2026C",
            "nevents": events}


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class SimulatedOms(OMSAPI):
    """OMS's runs and fills endpoints answered in-process from ``oms.json``, as OMS would see them at ``now``
    (a run not ended yet has no end time; a fill not dumped yet has none), with OMS's filters and pages."""

    def __init__(self, path: Path, now: datetime) -> None:
        super().__init__("in-process://oms")
        self.day = json.loads(path.read_text())
        self.now = iso(now)

    def get(self, resource: str, params: Sequence[tuple[str, str]]) -> Response:
        rows = [self._seen(item["attributes"]) for item in self.day[resource]["data"]
                if item["attributes"].get(LISTED_AT, item["attributes"]["start_time"]) <= self.now]
        for key, value in params:
            match = re.fullmatch(r"filter\[(\w+)\]\[(\w+)\]", key)
            if match:
                test = FILTERS[match[2].lower()]
                rows = [r for r in rows if r[match[1]] is not None and test(r[match[1]], int(value))]
        page = dict(params)
        offset, limit = int(page["page[offset]"]), int(page["page[limit]"])
        data = [{"id": str(r[KEYS[resource]]), "type": resource, "attributes": r} for r in rows[offset:offset + limit]]
        return Response(200, json.dumps({"data": data}), f"{self.base}/{resource}")

    def _seen(self, attributes: dict[str, Any]) -> dict[str, Any]:
        ended = attributes["end_time"] <= self.now
        shown = {k: v for k, v in attributes.items() if k != LISTED_AT}
        return {**shown, "end_time": attributes["end_time"] if ended else None}


def prepare(out: Path) -> None:
    """A fresh demo folder; only a folder made by the demo (or an empty one) is ever cleared."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise SystemExit(f"{out} exists and was not made by the demo: choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by handlers/demo.py; cleared by its next run\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="demo-output", help="Folder for the database, jobs and reports.")
    parser.add_argument("--fills", type=int, default=4, help="LHC fills in the simulated day.")
    parser.add_argument("--ticks", type=int, default=60, help="At most this many Jenkins ticks.")
    args = parser.parse_args()
    t0 = time.monotonic()
    out = Path(args.out).absolute()
    prepare(out)
    db, work = str(out / "ecalstate.db"), str(out / "work")
    base = ["--db", db, "--actor", "demo"]

    click.secho("== a campaign and its tasks", bold=True)
    run(ecalstate, "ecalstate", [*base, "init"])
    run(ecalstate, "ecalstate", [*base, "campaign", "create", CAMPAIGN, "--description", "demo: one day of PhiSym"])
    run(ecalstate, "ecalstate", [*base, "task", "add", "-c", CAMPAIGN, "phisym-reco", "--max-retries", "2"])
    run(ecalstate, "ecalstate", [*base, "task", "add", "-c", CAMPAIGN, "phisym-calib", "--depends-on", "phisym-reco",
                                 "--max-retries", "1", "--deadline", "48h", "--deadline-from", "fill-end",
                                 "--warn-before", "12h"])
    run(ecalstate, "ecalstate", [*base, "task", "add", "-c", CAMPAIGN, "phisym-plots", "--depends-on",
                                 "phisym-calib", "--max-retries", "1"])
    run(ecalstate, "ecalstate", [*base, "task", "add", "-c", CAMPAIGN, "phisym-validate", "--depends-on",
                                 "phisym-calib", "--max-retries", "0"])
    run(ecalstate, "ecalstate", [*base, "task", "add", "-c", CAMPAIGN, "phisym-upload", "--depends-on",
                                 "phisym-validate", "--max-retries", "1", "--ordered"])
    run(ecalstate, "ecalstate", [*base, "rtype", "create", "-c", CAMPAIGN, "collisions", "--filter",
                                 "class=Collisions,global=true,ecal=true,nevents>=10000"])
    run(ecalstate, "ecalstate", [*base, "rtype", "update", "-c", CAMPAIGN, "collisions",
                                 "--add", "phisym-reco,phisym-calib,phisym-plots,phisym-validate,phisym-upload"])

    click.secho("\n== a day of data taking, as OMS answers it (JSON:API)", bold=True)
    oms = out / "oms.json"
    start = day_start(args.fills)
    oms.write_text(json.dumps(day_of_runs(args.fills, start), indent=1))
    last_end = max(max(item["attributes"]["end_time"], item["attributes"].get(LISTED_AT, ""))
                   for item in json.loads(oms.read_text())["runs"]["data"])
    late = [int(item["id"]) for item in json.loads(oms.read_text())["runs"]["data"] if LISTED_AT in item["attributes"]]
    click.echo(f"   {oms}: {args.fills} fills from {iso(start)}, the last run ended 30 min ago; each tick the day's"
               f" clock moves on {TICK} and the OMS source reads it (the store keeps real time: latencies are real)")

    click.secho("\n== Jenkins ticks: sync the runs, then check, resubmit, submit of each workflow (local backend)",
                bold=True)
    stages = [(w, stage) for w in WORKFLOWS for stage in ("check", "resubmit", "submit")]
    handler_args = ["-c", CAMPAIGN, "--db", db, "--actor", "demo", "--workdir", work]
    click.secho(f"$ ecalstate run sync -c {CAMPAIGN} --source oms --from-run {FIRST_RUN}   (OMS answered in-process)",
                fg="cyan")
    click.secho(f"$ python handlers/<workflow>.py {' '.join(handler_args)} check|resubmit|submit", fg="cyan")
    now, waiting = start, ""
    for tick in range(1, args.ticks + 1):
        now += TICK
        click.secho(f"-- tick {tick} ({iso(now)})", fg="cyan")
        with Store.open(db, actor="demo") as store:
            synced = sync(store, CAMPAIGN, OmsRunSource(SimulatedOms(oms, now), MAPPING, from_run=FIRST_RUN))
        if synced.new or synced.ended or synced.fills_ended:
            click.echo(f"   oms: runs {_runs(synced.new + synced.ended)} ended, {_runs(synced.ongoing)} being taken;"
                       f" fills ended: {_runs(synced.fills_ended)}")
        if SKIPPED_RUN in synced.new + synced.ended:
            run(ecalstate, "ecalstate", [*base, "set", "-c", CAMPAIGN, "--task", "phisym-reco", "--runs",
                                         str(SKIPPED_RUN), "skipped", "--reason", "ECAL partly off (simulated)"])
        output = io.StringIO()
        with contextlib.redirect_stdout(output):  # which fills wait, and why
            run(PhiSymCalib20.cli(), f"{PhiSymCalib.task}.py", [*handler_args, "submit", "--dry-run"], echo=False)
        if output.getvalue() != waiting and "waits:" in output.getvalue():
            click.echo(f"   $ python handlers/phisym_calib.py ... submit --dry-run\n   {output.getvalue().strip()}")
        waiting = output.getvalue()
        jenkins(stages, handler_args)
        if iso(now) >= last_end and finished(db, late):
            break
        wait_for_jobs(db, work)

    if late:
        click.secho(f"\n== run {late[0]} came late: OMS listed it after its fill was calibrated; health names it"
                    " with the command that takes it in (ecalstate campaign update --late-runs regroup would have"
                    " regrouped its fill at the next submit)", bold=True)
        run(ecalstate, "ecalstate", [*base, "health", "-c", CAMPAIGN], check=False)
        fill = FIRST_FILL + 1
        click.secho("\n== the operator runs it", bold=True)
        run(ecalstate, "ecalstate", [*base, "reprocess", "-c", CAMPAIGN, "--task", "phisym-calib", "--fill", str(fill),
                                     "--downstream", "--reason", f"late run {late[0]}"])
        ticks(stages, handler_args, db, work, args.ticks)

    click.secho(f"\n== a new release: phisym-calib {PhiSymCalib.version} (the day was calibrated by"
                f" {PhiSymCalib20.version}); everything an older version made is reprocessed", bold=True)
    run(ecalstate, "ecalstate", [*base, "outputs", "-c", CAMPAIGN, "--task", "phisym-calib"])
    run(ecalstate, "ecalstate", [*base, "reprocess", "-c", CAMPAIGN, "--task", "phisym-calib", "--version-not",
                                 str(PhiSymCalib.version), "--downstream", "--reason",
                                 f"phisym-calib {PhiSymCalib.version}: new release"])
    release = [(w, stage) for w in (PhiSymCalib, PhiSymPlots, PhiSymValidate, PhiSymUpload)
               for stage in ("check", "resubmit", "submit")]
    ticks(release, handler_args, db, work, args.ticks)
    run(ecalstate, "ecalstate", [*base, "outputs", "-c", CAMPAIGN, "--task", "phisym-calib"])

    click.secho("\n== the result", bold=True)
    run(ecalstate, "ecalstate", [*base, "status", "-c", CAMPAIGN])
    run(ecalstate, "ecalstate", [*base, "job", "list", "-c", CAMPAIGN, "--task", "phisym-reco", "--run",
                                 str(FIRST_RUN + 1)])
    run(ecalstate, "ecalstate", [*base, "health", "-c", CAMPAIGN], check=False)
    run(ecalstate, "ecalstate", [*base, "latency", "-c", CAMPAIGN])
    if ecalstate.get_command(click.Context(ecalstate), "report") is not None:  # the HTML report, when installed
        run(ecalstate, "ecalstate", [*base, "report", "html", "-c", CAMPAIGN, "--out", str(out / "overview.html")])
    run(ecalstate, "ecalstate", [*base, "export", "--out", str(out / "ecalstate.lp")])
    plots = sorted(out.glob("work/data/**/*.png"))
    upload_log(out / "work" / STANDIN_LOG)
    click.secho(f"\nplots: {len(plots)} PNG maps, e.g. {plots[0] if plots else '-'}", bold=True)
    click.secho(f"demo finished in {time.monotonic() - t0:.1f} s; everything is in {out}", bold=True)
    if not finished(db):
        raise SystemExit("demo: some task instances did not finish")


def jenkins(stages: Sequence[tuple[type[TaskHandler], str]], handler_args: Sequence[str]) -> None:
    """One Jenkins tick: each workflow's stage, in-process; what did something is printed."""
    for workflow, stage in stages:
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            run(workflow.cli(), f"{workflow.task}.py", [*handler_args, stage], echo=False)
        for line in output.getvalue().splitlines():
            if not line.endswith("nothing to do"):
                click.echo(f"   {line}")


def ticks(stages: Sequence[tuple[type[TaskHandler], str]], handler_args: Sequence[str], db: str, work: str,
          most: int) -> None:
    """Jenkins ticks of ``stages`` until every task instance is finished (at most ``most``)."""
    for tick in range(1, most + 1):
        click.secho(f"-- tick {tick}", fg="cyan")
        jenkins(stages, handler_args)
        if finished(db):
            return
        wait_for_jobs(db, work)


def wait_for_jobs(db: str, work: str, limit: float = 0.5) -> None:
    """Let the jobs in flight run before the next tick, as the time between two Jenkins builds does: until each has
    ended (a local job takes a fraction of a second) or ``limit`` seconds passed; the next tick's check reads them."""
    backend, deadline = LocalBackend(work), time.monotonic() + limit
    with Store.open(db) as store:
        while time.monotonic() < deadline:
            flying = {w.task: [JobKey(j.run_number, j.jid, j.generation, j.attempts) for status in ("idle", "running")
                               for j in store.list_jobs(CAMPAIGN, w.task, status=status)] for w in WORKFLOWS}
            if all(seen.status in ("done", "failed") for task, keys in flying.items()
                   for seen in backend.observe(CAMPAIGN, task, keys).values()):
                return
            time.sleep(0.05)


def upload_log(path: Path) -> None:
    """What the conditions database (the stand-in uploader) received: one line per payload, in the order sent."""
    click.secho(f"\n== the conditions uploads, in the order sent ({path})", bold=True)
    entries = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    for entry in entries:
        tags = ",".join(entry["destinationTags"])
        click.echo(f"   since {entry['since']}  {tags}  sha256 {entry['payload_hash'][:12]}  {entry['userText']}")
    click.echo(f"   {len(entries)} payloads; a payload sent again (same sha256) wrote nothing")


def finished(db: str, late: Sequence[int] = ()) -> bool:
    """Every task instance is done, merged or skipped (the cosmics runs activated nothing), but those of the runs
    listed ``late``: reconstructed, their fill's calibration flagged (it waits for an operator, with the command)."""
    with Store.open(db) as store:
        rows = store.overview(CAMPAIGN).rows
        flagged = {i.run_number for i in attention(store, CAMPAIGN).items
                   if i.task == "phisym-calib" and any(r.code == "late-member" for r in i.reasons)}
    return all(status in ("done", "merged", "skipped") for row in rows if row.run_number not in late
               for status in row.statuses.values() if status) and \
        all(row.statuses.get("phisym-reco") == "done" and row.run_number in flagged for row in rows
            if row.run_number in late)


def _runs(numbers: Sequence[int]) -> str:
    return ",".join(map(str, sorted(numbers))) or "none"


if __name__ == "__main__":
    main()
