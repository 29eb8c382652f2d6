"""Static reports: the processing overview as one HTML file, readable without Grafana."""

from __future__ import annotations

import os
from typing import Optional

import click

from .app import App, pass_app
from .options import campaign_option, silent_after_option, stuck_after_option
from .parse import INT64_FROM_1
from .when import MOMENT


@click.group()
def report() -> None:
    """Write static reports of a campaign.

    \b
    Example:
        ecalstate report html -c prompt --out overview.html
    """


@report.command("html")
@campaign_option
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, writable=True), metavar="FILE",
              help="Where to write the page (replaced atomically).")
@stuck_after_option
@silent_after_option
@click.option("--failures", type=INT64_FROM_1, default=20, show_default=True, metavar="N",
              help="How many recent failures to list.")
@click.option("--since", type=MOMENT, default="24h", show_default=True, metavar="TIME",
              help="List the operator actions from this time: 8h (ago), 2d, or 2026-12-01T06:00 (UTC).")
@click.option("--until", type=MOMENT, metavar="TIME", help="... and before this time (same forms as --since).")
@pass_app
def report_html(app: App, campaign: str, out: str, stuck_after: float, silent_after: float, failures: int,
                since: str, until: Optional[str]) -> None:
    """Write one self-contained HTML page: status matrix, failures, operator actions, health.

    Each matrix cell names its status in text and colour; its tooltip gives the generation, the
    last change and its reason. No external assets: the file can be archived by Jenkins or mailed.

    \b
    Example:
        ecalstate report html -c prompt --out public/prompt.html --stuck-after 12h
        ecalstate report html -c prompt --out shift.html --since 2026-12-01T06:00 --until 2026-12-01T14:00
    """
    from ..report import render_html

    page = render_html(app.reader(), campaign, stuck_after, silent_after, failures, since, until)
    tmp = f"{out}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(page)
        os.replace(tmp, out)
    except OSError as err:
        raise click.ClickException(f"cannot write {out}: {err.strerror or err}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    app.emit({"out": out, "bytes": len(page.encode())}, f"wrote {out}")
