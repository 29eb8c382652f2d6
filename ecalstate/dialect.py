"""What differs between the two engines, in one place.

SQLite has one writer at a time: a write transaction holds the file, so a read that decides a write needs no row
lock, and every transaction is serialised. PostgreSQL runs writers side by side: rows are locked, names are
serialised by advisory locks, job transitions run in one statement (``ecalstate.pgjobs``), and the server
authenticates a role. :class:`ecalstate.db.Tx` and :class:`ecalstate.db.Database` ask here; code above the
database layer never asks which engine it runs on, only what a transaction can do.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dialect:
    """One engine's SQL and abilities."""

    name: str
    #: reads that decide a write lock their rows (else the transaction holds the whole database)
    row_locks: bool
    #: a job's transition is one statement, a server function (``ecalstate.pgjobs``)
    job_function: bool
    #: the server authenticates a role (``session_user``), recorded beside the actor
    roles: bool

    def lock(self, alias: str) -> str:
        """The clause that locks the rows a read of ``alias`` decides a write on."""
        return f" FOR UPDATE OF {alias}" if self.row_locks else ""

    def skip_locked(self, alias: str) -> str:
        """The clause that takes only the rows no other transaction holds (concurrent claimers)."""
        return f" FOR UPDATE OF {alias} SKIP LOCKED" if self.row_locks else ""

    def lock_rows_sql(self, table: str, count: int) -> str:
        """A statement locking ``count`` rows of ``table`` by id, in id order (no deadlock); '' when not needed."""
        if not self.row_locks:
            return ""
        return f"SELECT id FROM {table} WHERE id IN ({','.join('?' * count)}) ORDER BY id FOR UPDATE"

    def serialize_sql(self) -> str:
        """A statement taking a lock named by two texts until commit; '' where transactions run one at a time."""
        return "SELECT pg_advisory_xact_lock(hashtext(?), hashtext(?))" if self.row_locks else ""

    def exists_sql(self) -> str:
        """A query for whether a table, view, index or function named by its one or two parameters exists."""
        if self.name == "sqlite":
            return "SELECT COUNT(*) > 0 FROM sqlite_master WHERE name = ?"
        return "SELECT to_regclass(?) IS NOT NULL OR to_regproc(?) IS NOT NULL"


SQLITE = Dialect("sqlite", row_locks=False, job_function=False, roles=False)
POSTGRESQL = Dialect("postgresql", row_locks=True, job_function=True, roles=True)


def dialect_of(name: str) -> Dialect:
    """The dialect of an SQLAlchemy dialect name (other engines are treated as PostgreSQL: a server with locks)."""
    return SQLITE if name == "sqlite" else POSTGRESQL
