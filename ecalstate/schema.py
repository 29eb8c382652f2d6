"""The schema room: create a database's schema, install what the tables cannot declare, check its version.

:mod:`ecalstate.tables` declares the tables; :mod:`ecalstate.auditlog` and :mod:`ecalstate.pgjobs` add the
indexes, views and functions a declaration cannot hold; :mod:`ecalstate.migrations` upgrades an older schema
step by step. :func:`open_database` is how the store opens a database: connected, then checked (or created).
"""

from __future__ import annotations

from sqlalchemy import exc
from sqlmodel import SQLModel

from . import auditlog, pgjobs
from .db import Database, DatabaseError, Tx, first_line, sqlite_path
from .errors import SchemaError
from .migrations import known_version, upgrade
from .secrets import redact_url
from .tables import SCHEMA_VERSION


def open_database(url: str, create: bool = False, allow_network_fs: bool = False,
                  read_only: bool = False) -> Database:
    """``url`` opened with its schema checked (``create``: made, or upgraded, first; see :func:`create`).

    A SQLite file turns to WAL only once it is known to be ours: another program's file, an empty or a damaged
    one is refused unchanged."""
    if read_only and create:
        raise ValueError("a read-only database cannot be created")
    db = Database(url, create=create, allow_network_fs=allow_network_fs, read_only=read_only)
    try:
        if create:
            create_schema(db)
        else:
            check(db)
        db.use_wal()
    except BaseException:
        db.close()
        raise
    return db


def create_schema(db: Database) -> None:
    """Create the tables of a new database, or upgrade an older one (``ecalstate init`` is idempotent).

    A SQLite file without a schema version gets the tables only when it holds nothing that is not ours (a new
    or empty file, or an ``init`` cut short): another program's database is refused, unchanged."""
    found = db.schema_version()
    if found is None and db.is_sqlite:
        _refuse_foreign(db)
    if found is not None and found < SCHEMA_VERSION:
        upgrade(db)
    try:
        SQLModel.metadata.create_all(db.engine)
    except exc.DBAPIError as err:
        raise DatabaseError(f"cannot create the schema in {redact_url(db.url)}: {first_line(err.orig)}") from err
    with db.tx() as tx:
        install(tx)
        if tx.scalar("SELECT value FROM meta WHERE key = 'schema_version'") is None:
            tx.run("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    check(db)


def install(tx: Tx) -> None:
    """What the declarations cannot make: the audit's index, vocabulary and view, the engine's functions."""
    auditlog.install(tx)
    pgjobs.install(tx)


def check(db: Database) -> None:
    """Refuse a database without our schema, or at another version than this ecalstate's."""
    version = known_version(db)
    if version < SCHEMA_VERSION:
        raise SchemaError(f"{redact_url(db.url)} has schema version {version}; run `ecalstate db upgrade` first")


def _refuse_foreign(db: Database) -> None:
    """Refuse a SQLite file that holds tables or views of another program."""
    ours = {*SQLModel.metadata.tables, "audit"}  # the view ``audit`` over ``audit_log`` (ecalstate.auditlog)
    with db.tx(write=False) as tx:
        names = [r[0] for r in tx.all("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')"
                                      " AND name NOT LIKE 'sqlite!_%' ESCAPE '!' ORDER BY name")]
    foreign = [n for n in names if n not in ours]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise SchemaError(f"{sqlite_path(db.url)} is another program's database (it holds {shown}): ecalstate "
                          "adds its tables only to a new file, an empty one or its own; give another --db")
