"""``ecalstate export``: send the audit trail to InfluxDB (or a line-protocol file) for Grafana."""

from __future__ import annotations

import json
from contextlib import closing
from typing import Optional

import click

from ..export import (
    BATCH_LIMIT,
    DEFAULT_OUT,
    PASSWORD_ENV,
    TOKEN_ENV,
    USER_ENV,
    ExportError,
    ExportResult,
    RetryPolicy,
    TargetSpec,
    stop_on_signals,
    watch,
)
from ..export import (
    export as run_export,
)
from ..limits import MAX_EXPORT_RETRIES, MAX_EXPORT_TIMEOUT, MAX_RETRY_BASE, MAX_WATCH_INTERVAL
from .app import App, pass_app, to_jsonable
from .progress import progress


def _summary(result: ExportResult) -> str:
    if not result.points:
        text = f"nothing to export to {result.target} (cursor at {result.cursor_after})"
    else:
        points = f"{result.points} point" + ("s" if result.points != 1 else "")
        batches = f"{result.batches} batch" + ("es" if result.batches != 1 else "")
        text = (f"exported {points} in {batches} to {result.target} "
                f"(cursor {result.cursor_before} -> {result.cursor_after})")
    return text + ("; stopped" if result.stopped else "")


@click.command("export")
@click.option("--out", metavar="FILE", help=f"Append line protocol to FILE (the default target: ./{DEFAULT_OUT}).")
@click.option("--url", metavar="URL", help="InfluxDB base URL, e.g. http://influx:8086 (no credentials in it).")
@click.option("--protocol", type=click.Choice(["v2", "v1"]),
              help="With --url: v2 write API (the default: InfluxDB 2.x/3.x, 1.8+) or v1 /write (InfluxDB 1.x < 1.8).")
@click.option("--bucket", metavar="BUCKET", help="v2: bucket (InfluxDB 1.8+: db/retention).")
@click.option("--org", metavar="ORG", help="v2: organisation (InfluxDB 1.8+: any value).")
@click.option("--database", metavar="DB", help="v1: database.")
@click.option("--retention-policy", metavar="RP", help="v1: retention policy (default: the database's).")
@click.option("--token-file", type=click.Path(dir_okay=False), metavar="FILE",
              help=f"v2: file holding the token (else env {TOKEN_ENV}; InfluxDB 1.8+: user:password).")
@click.option("--password-file", type=click.Path(dir_okay=False), metavar="FILE",
              help=f"File holding the password of env {USER_ENV} (else env {PASSWORD_ENV}).")
@click.option("--full", is_flag=True, help="Re-export everything from the start (identical points: idempotent).")
@click.option("--watch", "interval", type=click.FloatRange(min=0, min_open=True, max=MAX_WATCH_INTERVAL),
              metavar="SECONDS",
              help=f"Keep exporting every SECONDS (at most {MAX_WATCH_INTERVAL}) until SIGTERM/SIGINT.")
@click.option("--batch-size", type=click.IntRange(1, BATCH_LIMIT), default=BATCH_LIMIT, show_default=True,
              help=f"Lines per request (1 to {BATCH_LIMIT}).")
@click.option("--retries", type=click.IntRange(0, MAX_EXPORT_RETRIES), default=5, show_default=True,
              help=f"Retries of a batch while the server is unreachable (0 to {MAX_EXPORT_RETRIES}; exponential "
                   "backoff with jitter).")
@click.option("--retry-base", type=click.FloatRange(0, MAX_RETRY_BASE), default=1.0, show_default=True,
              metavar="SECONDS",
              help=f"First backoff wait; each retry doubles it (every wait at most {MAX_RETRY_BASE} s).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True, max=MAX_EXPORT_TIMEOUT), default=30.0,
              show_default=True, metavar="SECONDS", help=f"Timeout of one request (at most {MAX_EXPORT_TIMEOUT}).")
@pass_app
def export(
    app: App, out: Optional[str], url: Optional[str], protocol: Optional[str], bucket: Optional[str],
    org: Optional[str], database: Optional[str], retention_policy: Optional[str], token_file: Optional[str],
    password_file: Optional[str], full: bool, interval: Optional[float], batch_size: int, retries: int,
    retry_base: float, timeout: float,
) -> None:
    """Export state changes to InfluxDB as run, job and handler points.

    Incremental: each target keeps a cursor in the database, advanced only
    once the server acknowledged a batch; a server that stays down ends the
    export with exit code 1, and the next export sends exactly what is
    missing. Points the server refuses for what they hold (a field type
    conflict, too large) are named and passed, exit code 1, everything else
    is written. With nothing new to send the target is still checked.
    Credentials come from the environment (ECALSTATE_INFLUX_TOKEN,
    ECALSTATE_INFLUX_USER, ECALSTATE_INFLUX_PASSWORD) or --token-file /
    --password-file, never from the command line.

    \b
    Example:
        ecalstate export --out state.lp
        ecalstate export --protocol v1 --url http://influx:8086 --database ecal
        ecalstate export --url http://influx:8086 --bucket ecal/autogen --org cms --watch 60
    """
    spec = TargetSpec(out, url, protocol, bucket, org, database, retention_policy, token_file, password_file,
                      timeout)
    store = app.store()
    retry = RetryPolicy(retries, retry_base)
    with closing(spec.open()) as target, stop_on_signals() as stop:
        if interval is None:
            with progress("exporting") as tick:
                result = run_export(store, target, full=full, batch_size=batch_size, retry=retry, stop=stop,
                                    progress=tick)
            app.emit(result, _summary(result))
            return

        def report(result: Optional[ExportResult], error: Optional[ExportError]) -> None:
            if error is not None:
                click.echo(f"export: {error}", err=True)
            elif result is not None and (result.points or app.as_json):
                click.echo(json.dumps(to_jsonable(result), sort_keys=True) if app.as_json else _summary(result))

        watch(store, target, interval, stop, report, full=full, batch_size=batch_size, retry=retry)
