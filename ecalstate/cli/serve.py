"""``ecalstate serve``: the live, read-only web view for shifters."""

from __future__ import annotations

from typing import Optional

import click

from .app import App, pass_app
from .options import optional_campaign_option
from .parse import DURATION


@click.command()
@optional_campaign_option
@click.option("--host", default="127.0.0.1", show_default=True, metavar="ADDRESS",
              help="Address to listen on; requests must name it (0.0.0.0: any name). Anything but loopback shows "
                   "the state to whoever reaches it (no login).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, metavar="PORT",
              help="Port to listen on (0: any free port, printed).")
@click.option("--refresh", type=DURATION, default="2s", show_default=True, metavar="DURATION",
              help="How often open pages check for changes (1s, 10s).")
@pass_app
def serve(app: App, campaign: Optional[str], host: str, port: int, refresh: float) -> None:
    """Serve a live, read-only web view of the database until Ctrl-C.

    The run x task grid (newest runs first, filters by status, task and run range), each instance with its
    jobs, failure reasons and log tails, the history of a run, a task or the last hours, and the health banner;
    pages update themselves when the state changes. The database is opened read-only and never written.

    \b
    Example:
        ecalstate --db state.db serve -c prompt
        ecalstate --db postgresql://ecal@dbhost/ecal serve --port 8081 --refresh 5s
    """
    from ..web import serve as run_server  # Starlette and uvicorn only for this command

    if refresh <= 0:
        raise click.BadParameter("must be more than 0 s", param_hint="'--refresh'")

    def ready(url: str) -> None:
        click.echo(f"serving {url} (read-only); Ctrl-C to stop", err=True)

    run_server(app.reader(), host, port, campaign, refresh, ready)
