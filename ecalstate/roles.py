"""PostgreSQL roles for a shared deployment: least privilege for each kind of user.

Four group roles (NOLOGIN; a site grants them to its logins):

* ``reader``: dashboards, shifters, the exporter. Reads everything; writes only the exporter's own bookmarks
  (``export_cursor``, not the notifier's), never state. Nothing it can do holds a writer up: it may take no lock
  but the one every read takes, no advisory lock, and the exporter's high-water mark locks nothing.
* ``writer``: handlers (Jenkins), run sources. Claims, jobs, heartbeats, run injection. It changes only the columns
  a transition changes, never a row's identity; the audit is append-only for it (a job's creation fields aside).
* ``operator``: the writer's rights, plus the transitions only an operator makes (``done``/``failed``/``merged``/
  ``skipped`` -> ``reprocess``, anything -> ``skipped``), a gate's decision (``approve``/``reject``), a run type's
  backfill and the campaign set-up.
* ``admin``: owns the tables: schema upgrades, ``db prune``, and everything else.

Below admin the server also holds the transition tables and the audit against raw SQL (``ecalstate.guards``).
On SQLite the file's permissions are the boundary instead (docs/security.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from .auditlog import COLUMNS
from .db import Database
from .errors import Invalid
from .guards import HIGH_WATER, guards_sql

#: tables a role may read and write, per role (each role also has what the one before it has)
STATE = ("run", "task_instance", "job", "audit_log", "string", "request", "heartbeat", "run_source", "fill_end")
SETUP = ("campaign", "task", "task_dep", "rtype", "rtype_task")
TABLES = ("meta", *SETUP, *STATE, "export_cursor")
#: the views (owned by the admin, read by everyone): the audit's texts and times
VIEWS = ("audit",)
#: the columns a writer's transitions change (a row's identity, its ids, campaign, run number and creation time,
#: never changes below admin); column privileges also keep a writer from locking these tables against the others
UPDATES = {
    "run": ("fill", "meta", "rtypes", "tag_rtypes", "ended_at"),
    "task_instance": ("status", "version", "generation", "leader_id", "outputs", "updated_at"),
    "job": ("status", "version", "attempts", "batch_id", "fields", "updated_at", "started_at", "finished_at"),
    "run_source": ("last_run", "updated_at"),
    "fill_end": ("dumped_at",),  # a fill's dump time, when the source tells it after a later fill closed it
    "audit_log": ("detail",),  # a job's creation fields, kept in its creation row before they change
    "export_cursor": ("audit_id", "updated_at"),
}
#: the advisory locks a session can take: a reader holding the one that run injection waits for (the key is no
#: secret) would stop every injection; only writers keep them (``Tx.serialize`` takes the two-integer one)
ADVISORY = tuple(f"pg_{kind}advisory_{scope}lock{shared}({args})" for kind in ("", "try_") for scope in ("", "xact_")
                 for shared in ("", "_shared") for args in ("bigint", "integer, integer"))
SERIALIZE = "pg_advisory_xact_lock(integer, integer)"


#: the four roles, from the least to the most privileged (each has the rights of the one before)
KINDS = ("reader", "writer", "operator", "admin")


@dataclass(frozen=True)
class RoleNames:
    """The four role names, ``PREFIX_reader`` ... ``PREFIX_admin`` (several deployments may share one server)."""

    reader: str
    writer: str
    operator: str
    admin: str

    @classmethod
    def of(cls, prefix: str = "ecalstate") -> RoleNames:
        if not prefix.replace("_", "").isalnum() or not prefix[0].isalpha() or len(prefix) > 40:
            raise Invalid(f"invalid role prefix {prefix!r}: letters, digits and _ only, starting with a letter")
        return cls(*(f"{prefix}_{kind}" for kind in KINDS))


def _columns(table: str) -> str:
    """``(col, ...) ON table``: the columns of ``table`` a writer (or a reader, its bookmark) updates."""
    return f"({', '.join(UPDATES[table])}) ON {table}"


def roles_sql(prefix: str = "ecalstate") -> str:
    """The idempotent SQL that creates the roles, grants their rights and installs the guards (run by the tables'
    owner; closing the advisory locks needs a superuser, and is skipped with a warning otherwise)."""
    n = RoleNames.of(prefix)
    tables = ", ".join(TABLES)
    below_admin = f"{n.reader}, {n.writer}, {n.operator}"
    lines = [f"-- ecalstate roles ({prefix}): run as the owner of the ecalstate tables; safe to run again", "BEGIN;"]
    for role in (n.reader, n.writer, n.operator, n.admin):
        lines.append(f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN"
                     f" CREATE ROLE {role} NOLOGIN; END IF; END $$;")
    lines += [
        f"GRANT {n.reader} TO {n.writer};",
        f"GRANT {n.writer} TO {n.operator};",
        f"GRANT {n.operator} TO {n.admin};",
        f"GRANT {n.admin} TO CURRENT_USER;",
        "",
        "-- admin: owns the tables (upgrades, prune)",
        *(f"ALTER TABLE {t} OWNER TO {n.admin};" for t in TABLES),
        *(f"ALTER VIEW {v} OWNER TO {n.admin};" for v in VIEWS),
        f"GRANT USAGE ON SCHEMA public TO {n.reader};",
        f"REVOKE ALL ON {tables} FROM {below_admin};",
        f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {below_admin};",
        "",
        "-- reader: everything readable; only the exporter's bookmarks writable (rows: guards), the audit's sequence",
        "-- readable (the high-water mark)",
        f"GRANT SELECT ON {tables}, {', '.join(VIEWS)} TO {n.reader};",
        f"GRANT INSERT ON export_cursor TO {n.reader};",
        f"GRANT UPDATE {_columns('export_cursor')} TO {n.reader};",
        f"GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO {n.reader};",
        HIGH_WATER,
        f"ALTER FUNCTION ecalstate_audit_high_water() OWNER TO {n.admin};",
        "",
        "-- writer: state rows (the columns a transition changes) and their audit (append-only), heartbeats,",
        "-- notification bookkeeping",
        f"GRANT INSERT ON run, task_instance, job, request, heartbeat, run_source, fill_end TO {n.writer};",
        *(f"GRANT UPDATE {_columns(t)} TO {n.writer};" for t in ("run", "task_instance", "job", "run_source",
                                                                         "fill_end")),
        f"GRANT INSERT ({', '.join(c for c in COLUMNS if c != 'id')}) ON audit_log TO {n.writer};",
        f"GRANT UPDATE {_columns('audit_log')} TO {n.writer};",
        f"GRANT INSERT (text) ON string TO {n.writer};",
        f"GRANT INSERT, UPDATE, DELETE ON meta, heartbeat TO {n.writer};",
        f"GRANT DELETE ON export_cursor TO {n.writer};",
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {n.writer};",
        "DO $$ BEGIN IF current_setting('is_superuser') = 'on' THEN",
        f"  REVOKE EXECUTE ON FUNCTION {', '.join(ADVISORY)} FROM PUBLIC;",
        f"  GRANT EXECUTE ON FUNCTION {SERIALIZE} TO {n.writer};",
        "ELSE RAISE WARNING 'ecalstate roles: advisory locks stay open to every login (a reader could hold the one"
        " run injection waits for): run this as a superuser to close them'; END IF; END $$;",
        "",
        "-- operator: campaign set-up (the transitions only an operator makes: guards)",
        f"GRANT INSERT, UPDATE, DELETE ON {', '.join(SETUP)} TO {n.operator};",
        "",
        *guards_sql(n.reader, n.writer, n.operator, n.admin),
        "",
        "-- functions: the writer's (the one-statement job transition, the guards' labels); the reader's high water",
        f"REVOKE ALL ON ALL FUNCTIONS IN SCHEMA public FROM PUBLIC, {below_admin};",
        f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO {n.writer};",
        f"GRANT EXECUTE ON FUNCTION ecalstate_audit_high_water() TO {n.reader};",
        "COMMIT;",
    ]
    return "\n".join(lines) + "\n"


def apply_roles(db: Database, prefix: str = "ecalstate") -> RoleNames:
    """Create the roles and grants on ``db`` (PostgreSQL only), as one transaction."""
    if db.is_sqlite:
        raise Invalid("roles exist on PostgreSQL only; on SQLite the file's permissions decide (docs/security.md)")
    body = roles_sql(prefix).replace("BEGIN;\n", "").replace("COMMIT;\n", "")
    with db.tx(write=True) as tx:
        tx.script(body)
    return RoleNames.of(prefix)
