"""PostgreSQL roles for a shared deployment: least privilege for each kind of user.

Four group roles (NOLOGIN; a site grants them to its logins):

* ``reader``: dashboards, shifters, the exporter. Reads everything; writes only the exporter's own
  bookmark (``export_cursor``), never state. The exporter's high-water mark comes from a function that
  runs with the admin's rights, so the reader needs no table lock of its own.
* ``writer``: handlers (Jenkins), run sources. Claims, jobs, heartbeats, run injection; the audit is
  append-only for it, and a row-level policy refuses the transitions only an operator makes
  (``done``/``failed``/``merged``/``skipped`` -> ``reprocess``, anything -> ``skipped``).
* ``operator``: the writer's rights, plus those transitions and the campaign set-up (tasks, run types,
  notification settings).
* ``admin``: owns the tables: schema upgrades, ``db prune``, and everything else.

On SQLite the file's permissions are the boundary instead (docs/security.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from .auditlog import vocab_id
from .db import Database
from .errors import Invalid

#: tables a role may read and write, per role (each role also has what the one before it has)
STATE = ("run", "task_instance", "job", "audit_log", "string", "request", "heartbeat", "run_source", "fill_end")
SETUP = ("campaign", "task", "task_dep", "rtype", "rtype_task")
TABLES = ("meta", *SETUP, *STATE, "export_cursor")
#: the views (owned by the admin, read by everyone): the audit's texts and times
VIEWS = ("audit",)


def _ids(*texts: str) -> str:
    return ", ".join(str(vocab_id(t)) for t in texts)


#: transitions that only an operator makes (the writer's audit inserts are checked against this; the statuses
#: by their fixed ``string`` ids)
OPERATOR_ONLY = (f"entity = {vocab_id('task')} AND (to_status = {vocab_id('skipped')} OR (to_status ="
                 f" {vocab_id('reprocess')} AND from_status IN ({_ids('done', 'failed', 'merged', 'skipped')})))")


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


def roles_sql(prefix: str = "ecalstate") -> str:
    """The idempotent SQL that creates the roles and grants their rights (run by the tables' owner)."""
    n = RoleNames.of(prefix)
    tables = ", ".join(TABLES)
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
        "",
        "-- reader: everything readable; only the exporter's bookmark writable",
        f"REVOKE ALL ON {tables} FROM {n.reader}, {n.writer}, {n.operator};",
        f"GRANT SELECT ON {tables}, {', '.join(VIEWS)} TO {n.reader};",
        f"GRANT INSERT, UPDATE, DELETE ON export_cursor TO {n.reader};",
        # PostgreSQL hands out audit ids before commit: the exporter waits for the inserts in flight (a share lock)
        # before it reads the newest id; the lock needs rights on audit that a reader must not have, so a function
        # that runs as its owner takes it
        "CREATE OR REPLACE FUNCTION ecalstate_audit_high_water() RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER"
        " SET search_path = public AS"
        " $$ BEGIN LOCK TABLE audit_log IN SHARE MODE; RETURN COALESCE((SELECT MAX(id) FROM audit_log), 0); END $$;",
        f"ALTER FUNCTION ecalstate_audit_high_water() OWNER TO {n.admin};",
        "REVOKE ALL ON FUNCTION ecalstate_audit_high_water() FROM PUBLIC;",
        f"GRANT EXECUTE ON FUNCTION ecalstate_audit_high_water() TO {n.reader};",
        "",
        "-- writer: state rows and their audit (append-only), heartbeats, notification bookkeeping",
        f"GRANT INSERT, UPDATE ON run, task_instance, job, request, heartbeat, run_source, fill_end TO {n.writer};",
        f"GRANT INSERT ON audit_log, string TO {n.writer};",
        f"GRANT INSERT, UPDATE, DELETE ON meta, heartbeat TO {n.writer};",
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {n.writer};",
        "",
        "-- operator: campaign set-up, and the transitions only an operator makes",
        f"GRANT INSERT, UPDATE, DELETE ON {', '.join(SETUP)} TO {n.operator};",
        "",
        "-- row-level rules: the audit accepts a writer's row only for a transition a handler makes;",
        "-- meta's schema version is the admin's",
        "ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;",
        "ALTER TABLE meta ENABLE ROW LEVEL SECURITY;",
        "DROP POLICY IF EXISTS ecalstate_read ON audit_log;",
        "DROP POLICY IF EXISTS ecalstate_writer_rows ON audit_log;",
        "DROP POLICY IF EXISTS ecalstate_operator_rows ON audit_log;",
        "DROP POLICY IF EXISTS ecalstate_read ON meta;",
        "DROP POLICY IF EXISTS ecalstate_writer_keys ON meta;",
        "CREATE POLICY ecalstate_read ON audit_log FOR SELECT USING (true);",
        f"CREATE POLICY ecalstate_writer_rows ON audit_log FOR INSERT TO {n.writer} WITH CHECK"
        f" (NOT ({OPERATOR_ONLY}));",
        f"CREATE POLICY ecalstate_operator_rows ON audit_log FOR INSERT TO {n.operator} WITH CHECK (true);",
        "CREATE POLICY ecalstate_read ON meta FOR SELECT USING (true);",
        f"CREATE POLICY ecalstate_writer_keys ON meta FOR ALL TO {n.writer}"
        " USING (key <> 'schema_version') WITH CHECK (key <> 'schema_version');",
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
