#!/usr/bin/env python3
"""The main job, on the embedded defaults: a simulated day of ECAL PhiSym processing.

    python handlers/demo.py [--out DIR] [--fills N]

In a fresh SQLite file it creates campaign ``prompt`` with the PhiSym chain
(phisym-reco per run -> phisym-calib per fill -> phisym-plots per fill), injects a
day of runs across several LHC fills (plus a cosmics run that the collisions run
type leaves alone), then plays Jenkins: every "tick" runs check, resubmit and
submit of each workflow with the local backend, until every task instance is
done. One reconstruction job fails on its first attempt; resubmit recovers it.
Finally it prints the status overview and health, and writes the HTML report and
the InfluxDB line protocol. Every step is the command an operator or a Jenkins
stage would type, run in-process.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import click

from ecalstate.cli import main as ecalstate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from phisym_calib import PhiSymCalib  # noqa: E402
from phisym_plots import PhiSymPlots  # noqa: E402
from phisym_reco import PhiSymReco  # noqa: E402

CAMPAIGN = "prompt"
WORKFLOWS = (PhiSymReco, PhiSymCalib, PhiSymPlots)
MARKER = ".ecalstate-demo"
FIRST_RUN, FIRST_FILL = 380001, 9001


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


def day_of_runs(fills: int) -> list[dict[str, object]]:
    """A day of data taking: fills of 2-4 collision runs, a cosmics run between two fills."""
    start = datetime(2026, 6, 14, tzinfo=timezone.utc)
    runs: list[dict[str, object]] = []
    number = FIRST_RUN
    for fill in range(FIRST_FILL, FIRST_FILL + fills):
        for i in range(2 + (fill % 3)):
            end = start + timedelta(minutes=25 + 10 * i)
            lumi = round(0.004 * (end - start).total_seconds() / 60, 3)
            runs.append({"run_number": number, "fill": fill, "class": "Collisions", "era": "Run2026C",
                         "global": True, "nevents": 40_000 + 30_000 * i, "lumi_pb": lumi,
                         "start_time": start.isoformat(), "end_time": end.isoformat()})
            number += 1
            start = end + timedelta(minutes=3)
        runs.append({"run_number": number, "fill": None, "class": "Cosmics", "era": "Run2026C", "global": True,
                     "nevents": 5_000, "start_time": start.isoformat()})
        number += 1
        start += timedelta(hours=1)
    runs[1]["inject_failure"] = 1  # a transient failure of its first reconstruction job
    return runs


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
                                 "--max-retries", "1"])
    run(ecalstate, "ecalstate", [*base, "task", "add", "-c", CAMPAIGN, "phisym-plots", "--depends-on",
                                 "phisym-calib", "--max-retries", "1"])
    run(ecalstate, "ecalstate", [*base, "rtype", "create", "-c", CAMPAIGN, "collisions", "--filter",
                                 "class=Collisions,nevents>=10000"])
    run(ecalstate, "ecalstate", [*base, "rtype", "update", "-c", CAMPAIGN, "collisions",
                                 "--add", "phisym-reco,phisym-calib,phisym-plots"])

    click.secho("\n== a day of runs", bold=True)
    runs_file = out / "runs.json"
    runs_file.write_text(json.dumps(day_of_runs(args.fills), indent=1))
    run(ecalstate, "ecalstate", [*base, "run", "inject", "-c", CAMPAIGN, "--file", str(runs_file)])

    click.secho("\n== Jenkins ticks: check, resubmit, submit of each workflow (local backend)", bold=True)
    stages = [(w, stage) for w in WORKFLOWS for stage in ("check", "resubmit", "submit")]
    handler_args = ["-c", CAMPAIGN, "--db", db, "--actor", "demo", "--workdir", work]
    click.secho(f"$ python handlers/<workflow>.py {' '.join(handler_args)} check|resubmit|submit", fg="cyan")
    for tick in range(1, args.ticks + 1):
        click.secho(f"-- tick {tick}", fg="cyan")
        for workflow, stage in stages:
            output = io.StringIO()
            with contextlib.redirect_stdout(output):
                run(workflow.cli(), f"{workflow.task}.py", [*handler_args, stage], echo=False)
            for line in output.getvalue().splitlines():
                if not line.endswith("nothing to do"):
                    click.echo(f"   {line}")
        if finished(db):
            break
        time.sleep(0.5)

    click.secho("\n== the result", bold=True)
    run(ecalstate, "ecalstate", [*base, "status", "-c", CAMPAIGN])
    run(ecalstate, "ecalstate", [*base, "job", "list", "-c", CAMPAIGN, "--task", "phisym-reco", "--run",
                                 str(FIRST_RUN + 1)])
    run(ecalstate, "ecalstate", [*base, "health", "-c", CAMPAIGN], check=False)
    if ecalstate.get_command(click.Context(ecalstate), "report") is not None:  # the HTML report, when installed
        run(ecalstate, "ecalstate", [*base, "report", "html", "-c", CAMPAIGN, "--out", str(out / "overview.html")])
    run(ecalstate, "ecalstate", [*base, "export", "--out", str(out / "ecalstate.lp")])
    plots = sorted(out.glob("work/data/**/*.png"))
    click.secho(f"\nplots: {len(plots)} PNG maps, e.g. {plots[0] if plots else '-'}", bold=True)
    click.secho(f"demo finished in {time.monotonic() - t0:.1f} s; everything is in {out}", bold=True)
    if not finished(db):
        raise SystemExit("demo: some task instances did not finish")


def finished(db: str) -> bool:
    """Every task instance is done or merged (the cosmics run activated nothing)."""
    from ecalstate import Store

    with Store.open(db) as store:
        totals = store.overview(CAMPAIGN).totals
    return all(count == 0 for task in totals.values() for status, count in task.items()
               if status not in ("done", "merged"))


if __name__ == "__main__":
    main()
