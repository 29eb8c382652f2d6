"""Setting a campaign up: schema, campaigns, tasks, run types."""

from __future__ import annotations

import click

from .app import App, pass_app
from .options import campaign_option


@click.command()
@pass_app
def init(app: App) -> None:
    """Create or upgrade the database schema. Idempotent.

    \b
    Example:
        ecalstate --db state.db init
    """
    store = app.store(create=True)
    app.emit({"db": store.db.url, "schema_version": store.db.schema_version()},
             f"database ready: {store.db.url} (schema {store.db.schema_version()})")


@click.group()
def campaign() -> None:
    """Create and list campaigns.

    \b
    Example:
        ecalstate campaign create prompt --kind prompt
    """


@campaign.command("create")
@click.argument("name")
@click.option("--kind", type=click.Choice(["prompt", "reprocessing"]), default="prompt", show_default=True,
              help="prompt: runs arrive as data is taken; reprocessing: injected all at once.")
@click.option("--description", default="", metavar="TEXT", help="Free text.")
@pass_app
def campaign_create(app: App, name: str, kind: str, description: str) -> None:
    """Create campaign NAME with its default run type `all`.

    \b
    Example:
        ecalstate campaign create rereco-2024 --kind reprocessing --description "2024 rereco"
    """
    info = app.store(create=True).create_campaign(name, kind, description)
    app.emit(info, f"created campaign {info.name} ({info.kind})")
