"""``ecalstate import-influx``: bring an ecalautoctrl InfluxDB history into ecalstate."""

from __future__ import annotations

from typing import Any

import click

from ..compat.legacy import InfluxSource, import_influx as run_import
from ..compat.legacy_store import ImportResult, Problem
from .app import App, pass_app
from .fmt import echo_table, printable
from .options import dry_run_option, multi_option
from .progress import progress


@click.command("import-influx")
@click.option("--url", required=True, metavar="URL", help="InfluxDB 1.x base URL, e.g. http://ecal-db:8086 "
              "(credentials from ECAL_INFLUXDB_USER / ECAL_INFLUXDB_PWD).")
@click.option("--database", required=True, metavar="NAME", help="InfluxDB database of the original framework.")
@multi_option("-c", "--campaign", help="Import only this campaign (default: every campaign found).")
@multi_option("--meta-field", help="String field of `run` points that is run metadata, not a task status.",
              metavar="FIELD")
@click.option("--kind", type=click.Choice(["prompt", "reprocessing"]), default="prompt", show_default=True,
              help="Kind of the campaigns the import creates.")
@click.option("--timeout", type=click.FloatRange(1, 3600), default=60.0, show_default=True,
              help="Seconds to wait for each InfluxDB query.")
@dry_run_option
@pass_app
def import_influx(app: App, url: str, database: str, campaign: list[str], meta_field: list[str], kind: str,
                  timeout: float, dry_run: bool) -> None:
    """Import campaigns, runs, task statuses and job histories from the original's InfluxDB.

    Each campaign is one transaction; what already exists here is left as it
    is, so importing twice changes nothing. Unknown statuses and histories
    the transition tables refuse are reported, never imported.

    \b
    Example:
        export ECAL_INFLUXDB_USER=reader ECAL_INFLUXDB_PWD=...
        ecalstate --db state.db import-influx --url http://ecal-db:8086 --database ecal_prompt --dry-run
    """
    store = app.store(create=not dry_run)
    with progress("importing") as tick:
        results, problems = run_import(store, InfluxSource(url, database, timeout), campaign, meta_field, kind,
                                       dry_run, progress=tick)
    reported = problems + [p for r in results for p in r.problems]
    app.emit({"dry_run": dry_run, "campaigns": results, "problems": [str(p) for p in reported]},
             lambda: _text(results, reported, dry_run))


def _text(results: list[ImportResult], problems: list[Problem], dry_run: bool) -> None:
    if dry_run:
        click.echo("dry run: nothing written")
    rows: list[list[Any]] = [
        [r.campaign, "yes" if r.campaign_created else "no", len(r.tasks_created), r.runs["new"], r.runs["existing"],
         r.instances["imported"], r.instances["unchanged"], r.instances["conflict"], r.instances["refused"], r.jobs,
         r.audit_rows] for r in results]
    echo_table(["campaign", "new", "new tasks", "new runs", "known runs", "imported", "unchanged", "conflict",
                "refused", "jobs", "audit rows"], rows, "no campaign found")
    if problems:
        click.echo(f"reported, not imported ({len(problems)}):")
        for problem in problems:
            click.echo(f"  {printable(str(problem))}")
