"""Database maintenance: schema upgrades, retention, size."""

from __future__ import annotations

from typing import Optional

import click

from ..migrations import UpgradeResult, upgrade_database
from ..retention import DbStats, PruneResult, prune, stats, vacuum
from .app import App, pass_app
from .fmt import table
from .options import dry_run_option
from .progress import progress


@click.group()
def db() -> None:
    """Maintain the database: schema upgrades, pruning old history, sizes.

    \b
    Example:
        ecalstate db upgrade
        ecalstate db prune --before 2024-01-01 --dry-run
        ecalstate db stats
        ecalstate db roles > roles.sql
    """


@db.command("upgrade")
@pass_app
def db_upgrade(app: App) -> None:
    """Apply the pending schema migrations, one transaction each.

    A database made by an older ecalstate is refused by every other command
    until it is upgraded; running this again does nothing.

    \b
    Example:
        ecalstate --db state.db db upgrade
    """
    with progress("upgrading the schema") as tick:
        result = upgrade_database(app.db, allow_network_fs=app.allow_network_fs, progress=tick)
    app.emit(result, lambda: _print_upgrade(result))


def _print_upgrade(result: UpgradeResult) -> None:
    if not result.applied:
        click.echo(f"schema {result.to_version} is current: nothing to do")
        return
    for step in result.applied:
        click.echo(f"applied {step}")
    click.echo(f"schema {result.from_version} -> {result.to_version}")


@db.command("prune")
@click.option("--before", required=True, metavar="DATE",
              help="Cut-off: YYYY-MM-DD, an ISO date-time (UTC unless it says otherwise) or an age like 180d.")
@dry_run_option
@click.option("--archive", type=click.Path(dir_okay=False), metavar="FILE",
              help="Append the removed rows to FILE as JSON lines, written before each delete commits.")
@click.option("--vacuum", "compact", is_flag=True, help="Give the freed space back to the file system afterwards.")
@pass_app
def db_prune(app: App, before: str, dry_run: bool, archive: Optional[str], compact: bool) -> None:
    """Remove history older than DATE that is safe to drop.

    Audit rows older than DATE that every export target has received, jobs
    of superseded generations that finished before DATE, and request-id
    records older than DATE. Audit rows not exported yet are never removed.

    \b
    Example:
        ecalstate db prune --before 180d --dry-run
        ecalstate db prune --before 2024-01-01 --archive audit-2023.jsonl --vacuum
    """
    store = app.store()
    with progress("pruning") as tick:
        result = prune(store.db, before, dry_run=dry_run, archive=None if dry_run else archive,
                       progress=None if dry_run else tick)
    if compact and not dry_run:
        with progress("giving the space back (vacuum)"):
            vacuum(store.db)
    app.emit(result, lambda: _print_prune(result))


def _print_prune(result: PruneResult) -> None:
    verb = "would remove" if result.dry_run else "removed"
    click.echo(f"{verb} (older than {result.before}): {result.audit} audit rows, {result.jobs} jobs of finished "
               f"older generations, {result.requests} request records")
    if result.export_floor is None:
        click.echo("no export target registered: no audit row is held back for the exporter")
    elif result.unexported_kept:
        click.echo(f"kept {result.unexported_kept} old audit rows the exporter has not sent yet "
                   f"(ids above {result.export_floor})")
    if result.archive and not result.dry_run:
        click.echo(f"archive: {result.archive}")


@db.command("stats")
@pass_app
def db_stats(app: App) -> None:
    """Rows per table and the space the database takes (file, WAL, free pages).

    \b
    Example:
        ecalstate --db state.db db stats
    """
    result = stats(app.reader().db)
    app.emit(result, lambda: _print_stats(result))


@db.command("roles")
@click.option("--prefix", default="ecalstate", show_default=True, metavar="NAME",
              help="Role names are PREFIX_reader, PREFIX_writer, PREFIX_operator, PREFIX_admin.")
@click.option("--apply", "do_apply", is_flag=True,
              help="Create the roles and grants on the --db PostgreSQL database (as the tables' owner).")
@pass_app
def db_roles(app: App, prefix: str, do_apply: bool) -> None:
    """PostgreSQL roles for shared use: print their SQL, or apply it.

    reader (dashboards, shifters, the exporter): reads, and moves only the
    exporter's bookmark. writer (handlers): claims, jobs, heartbeats, runs;
    the audit is append-only for it and refuses operator-only transitions.
    operator: the writer's rights, reprocess/skip of finished runs, campaign
    set-up. admin: owns the tables (upgrade, prune). Grant them to logins
    with GRANT PREFIX_reader TO alice; see docs/security.md.

    \b
    Example:
        ecalstate db roles > roles.sql && psql -f roles.sql "$DB"
        ecalstate --db postgresql+psycopg://ecal_admin@dbod:6600/ecal db roles --apply
    """
    from ..roles import RoleNames, apply_roles, roles_sql

    if not do_apply:
        RoleNames.of(prefix)  # a bad prefix is refused before anything is printed
        click.echo(roles_sql(prefix), nl=False)
        return
    names = apply_roles(app.store().db, prefix)
    app.emit({"roles": [names.reader, names.writer, names.operator, names.admin]},
             f"roles {names.reader}, {names.writer}, {names.operator}, {names.admin}: created and granted")


def _print_stats(result: DbStats) -> None:
    rows = [(name, count, _size(result.table_bytes.get(name))) for name, count in result.rows.items()]
    headers = ("table", "rows", "bytes") if result.table_bytes else ("table", "rows")
    click.echo(table(headers, [r[:len(headers)] for r in rows]))
    click.echo(f"{result.engine}, schema {result.schema_version}: database {_size(result.size_bytes)}"
               + (f", WAL {_size(result.wal_bytes)}" if result.wal_bytes is not None else "")
               + (f", free pages {_size(result.free_bytes)}" if result.free_bytes is not None else ""))


def _size(value: Optional[int]) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"
