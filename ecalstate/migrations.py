"""Schema migrations: ordered steps from version N to N+1, each in one transaction.

A small versioned scheme instead of Alembic: the schema is one SQLModel module,
the engines are two (SQLite, PostgreSQL), and every step is a few portable DDL
statements. ``meta.schema_version`` says where a database is; :data:`STEPS`
says how to go on. Each step re-reads the version inside its own transaction
(with the row locked on PostgreSQL), so two upgraders racing apply it once; a
step that fails leaves the database at the previous version, untouched.

Adding a step: change the tables in ``tables.py``, bump ``tables.SCHEMA_VERSION``,
append a :class:`Step` here, and extend tests/test_migrations.py (it upgrades
the frozen first-release database in tests/data/).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional


from . import auditlog, pgjobs
from .clock import parse_time
from .db import Database, Tx
from .errors import SchemaError
from .limits import chunks
from .results import END_TIME
from .secrets import redact_url
from .tables import SCHEMA_VERSION, TABLES


@dataclass(frozen=True)
class Step:
    """What turns schema ``version - 1`` into ``version``."""

    version: int
    description: str
    apply: Callable[[Tx], None]


def _columns(tx: Tx, table: str) -> set[str]:
    if tx.is_sqlite:
        return {r[1] for r in tx.all(f"PRAGMA table_info({table})")}
    return {r[0] for r in tx.all(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
        " AND table_name = ?", (table,))}


def _campaign_settings(tx: Tx) -> None:
    # databases made between the column's addition and this step already have it (still labelled v1)
    if "settings" not in _columns(tx, "campaign"):
        tx.run("ALTER TABLE campaign ADD COLUMN settings VARCHAR NOT NULL DEFAULT '{}'")


def _audit_identity(tx: Tx) -> None:
    if "identity" not in _columns(tx, "audit"):
        tx.run("ALTER TABLE audit ADD COLUMN identity VARCHAR NOT NULL DEFAULT ''")


def _run_tag_rtypes(tx: Tx) -> None:
    if "tag_rtypes" not in _columns(tx, "run"):
        tx.run("ALTER TABLE run ADD COLUMN tag_rtypes VARCHAR")


def _run_sources(tx: Tx) -> None:
    for table in ("run_source", "fill_end"):  # create_table skips a table that is already there
        tx.create_table(TABLES[table])


def _progress_from_jobs(tx: Tx) -> None:
    if not tx.is_sqlite:  # the one-statement transition wrote the column: today's is made without it
        tx.run("DROP FUNCTION IF EXISTS ecalstate_set_job")
    if "progress_at" in _columns(tx, "task_instance"):
        tx.run("ALTER TABLE task_instance DROP COLUMN progress_at")
    pgjobs.install(tx)


#: the reason the OMS source gave a fill it saw dumped (before schema 8 the time was kept in these words only)
_DUMPED = re.compile(r"^OMS: fill ended \(beam dumped\) at (\S+)$")


def _deadlines(tx: Tx) -> None:
    """Task settings, runs' end times and fills' dump times; the times the old rows already hold are copied."""
    for table, column, ddl in (("task", "settings", "VARCHAR NOT NULL DEFAULT '{}'"), ("run", "ended_at", "VARCHAR"),
                               ("fill_end", "dumped_at", "VARCHAR")):
        if column not in _columns(tx, table):
            tx.run(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}")
    ended = []
    for run_id, meta in tx.all(f"SELECT id, meta FROM run WHERE meta LIKE '%\"{END_TIME}\"%'"):
        try:
            value = json.loads(meta).get(END_TIME)
        except (ValueError, AttributeError):
            continue
        when = parse_time(value)
        if when is not None:
            ended.append((when, run_id))
    for part in chunks(ended, 1000):
        tx.many("UPDATE run SET ended_at = ? WHERE id = ?", part)
    dumped = [(parse_time(m.group(1)), cid, fill) for cid, fill, reason in tx.all(
        "SELECT campaign_id, fill, reason FROM fill_end WHERE reason LIKE 'OMS: fill ended (beam dumped) at %'")
        for m in [_DUMPED.match(reason)] if m]
    tx.many("UPDATE fill_end SET dumped_at = ? WHERE campaign_id = ? AND fill = ?", [d for d in dumped if d[0]])


#: every step, in order; ``STEPS[i].version == i + 2`` (version 1 is the first release)
STEPS: tuple[Step, ...] = (
    Step(2, "campaign.settings: per-campaign configuration as JSON text (default '{}')", _campaign_settings),
    Step(3, "audit.identity: the authenticated identity beside the free-text actor (default '')", _audit_identity),
    Step(4, "run.tag_rtypes: the run types of the exported rtype tag, kept when a backfill changes rtypes",
         _run_tag_rtypes),
    Step(5, "run_source and fill_end: run sources' cursors per campaign, and fills known to have ended",
         _run_sources),
    Step(6, "audit_log + string behind the view audit: the audit's texts once, its times as integer microseconds",
         auditlog.migrate),
    Step(7, "task_instance.progress_at dropped: an instance's progress is its jobs' newest change (a job transition"
         " writes no instance row)", _progress_from_jobs),
    Step(8, "task.settings (deadlines, cadence: JSON), run.ended_at and fill_end.dumped_at: when runs and fills ended",
         _deadlines),
)


def _check_steps() -> None:
    versions = [s.version for s in STEPS]
    if versions != list(range(2, SCHEMA_VERSION + 1)):
        raise SchemaError(f"migration steps {versions} do not lead from 1 to schema {SCHEMA_VERSION}")


_check_steps()


def known_version(db: Database) -> int:
    """The database's schema version, refused when it has none or one newer than this ecalstate knows."""
    version = db.schema_version()
    if version is None:
        raise SchemaError(f"{redact_url(db.url)} holds no ecalstate schema; create it with `ecalstate init`")
    if version > SCHEMA_VERSION:
        raise SchemaError(f"{redact_url(db.url)} has schema version {version}, newer than this ecalstate "
                          f"(knows up to {SCHEMA_VERSION}); upgrade ecalstate")
    return version


def pending(version: int) -> list[Step]:
    """The steps a database at ``version`` still needs."""
    return [s for s in STEPS if s.version > version]


def upgrade(db: Database, progress: Optional[Callable[[int, int], None]] = None) -> list[Step]:
    """Apply every pending step, one transaction each; returns the steps applied (none: already current).

    ``progress(done, total)`` is called before each step and after the last (a step on a year of data takes a
    minute)."""
    version = known_version(db)
    applied = []
    steps = pending(version)
    for done, step in enumerate(steps):
        if progress is not None:
            progress(done, len(steps))
        with db.tx(write=True) as tx:
            found = int(tx.scalar("SELECT value FROM meta WHERE key = 'schema_version'" + _for_update(tx)))
            if found >= step.version:  # another upgrader got here first
                continue
            step.apply(tx)
            tx.run("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(step.version),))
        applied.append(step)
    if progress is not None:
        progress(len(steps), len(steps))
    return applied


@dataclass(frozen=True)
class UpgradeResult:
    """Where a database was, where it is now, and the steps that took it there."""

    url: str
    from_version: int
    to_version: int
    applied: list[str]


def upgrade_database(url: str, allow_network_fs: bool = False,
                     progress: Optional[Callable[[int, int], None]] = None) -> UpgradeResult:
    """Open ``url`` without the version check and apply the pending steps (``ecalstate db upgrade``)."""
    db = Database(url, allow_network_fs=allow_network_fs)
    try:
        before = db.schema_version() or 0
        if before:  # ours: a SQLite file upgrades in WAL, as every store works on it
            db.use_wal()
        steps = upgrade(db, progress)  # refuses a database without a schema
        after = db.schema_version() or 0
    finally:
        db.close()
    return UpgradeResult(redact_url(db.url), before, after, [f"{s.version}: {s.description}" for s in steps])


def _for_update(tx: Tx) -> str:
    return "" if tx.is_sqlite else " FOR UPDATE"
