"""A PostgreSQL deployment with the four roles applied and one real login per role, for the role tests.

Roles are cluster-wide: each deployment gets its own prefix. Logins have no password (the test server trusts
loopback connections); they belong to their group role exactly as a site's logins would.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from ecalstate.db import Database
from ecalstate.roles import KINDS, apply_roles

#: the state a raw-SQL attack must leave untouched, read as the server's superuser
STATE_TABLES = ("run", "task_instance", "job", "audit_log", "string", "request", "heartbeat", "run_source",
                "fill_end", "meta", "export_cursor")


def login_url(url: str, user: str) -> str:
    """``url`` (SQLAlchemy's) logged in as ``user``."""
    return make_url(url).set(username=user).render_as_string(hide_password=False)


def raw_url(url: str) -> str:
    """``url`` for psycopg itself."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def deploy(url: str) -> dict[str, str]:
    """Apply the roles to ``url``'s database (twice: it is idempotent) and make one login per role; the logins'
    URLs by kind (reader, writer, operator, admin)."""
    prefix = "t" + uuid.uuid4().hex[:8]
    db = Database(url)
    try:
        apply_roles(db, prefix)
        apply_roles(db, prefix)
    finally:
        db.close()
    logins = {}
    with psycopg.connect(raw_url(url), autocommit=True) as conn:
        for kind in KINDS:
            login = f"{prefix}_{kind}_login"
            conn.execute(f"CREATE ROLE {login} LOGIN IN ROLE {prefix}_{kind}")
            logins[kind] = login_url(url, login)
    return logins


@contextmanager
def connected(url: str, autocommit: bool = False) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(raw_url(url), autocommit=autocommit) as conn:
        yield conn


def accepted(conn: psycopg.Connection[Any], sql: str) -> bool:
    """Run ``sql`` in a savepoint; whether the server accepted it (the transaction stays usable either way)."""
    try:
        with conn.transaction():
            conn.execute(sql)
        return True
    except psycopg.Error:
        return False


def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the state tables, in order (as the superuser: row-level policies hide nothing)."""
    with connected(url) as conn:
        return {t: conn.execute(f"SELECT * FROM {t} x ORDER BY x").fetchall() for t in STATE_TABLES}


def unaudited(url: str) -> list[str]:
    """Instances and jobs whose newest audit row does not end in their status (must be none)."""
    with connected(url) as conn:
        rows = conn.execute(
            "SELECT 'task instance ' || ti.id || ' ' || ti.status FROM task_instance ti WHERE ti.status IS DISTINCT"
            " FROM (SELECT a.to_status FROM audit a WHERE a.instance_id = ti.id AND a.entity = 'task'"
            " ORDER BY a.id DESC LIMIT 1)"
            " UNION ALL SELECT 'job ' || j.id || ' ' || j.status FROM job j WHERE j.status IS DISTINCT"
            " FROM (SELECT a.to_status FROM audit a WHERE a.job_pk = j.id ORDER BY a.id DESC LIMIT 1)").fetchall()
    return sorted(r[0] for r in rows)
