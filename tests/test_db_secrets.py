"""Database passwords never in arguments, output or logs (issue 11, item 1), on a real PostgreSQL login.

A role that must authenticate with a password (scram-sha-256 in pg_hba.conf, the rest of the test server
stays on trust): the password reaches the server from ECALSTATE_DB_PASSWORD_FILE, ECALSTATE_DB_PASSWORD or
libpq's own ~/.pgpass (PGPASSFILE); a password inside ``--db`` is refused before anything connects; no
command prints it, in text or JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from ecalstate import Store
from ecalstate.db import split_password
from ecalstate.retention import stats

PASSWORD = "S3cret-" + uuid.uuid4().hex[:8]


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ECALSTATE_", "PG"))}
    return subprocess.run([sys.executable, "-c", "from ecalstate.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=60, env={**clean, **(env or {})})


@pytest.fixture
def password_url(postgres: Any, pg_url: str) -> str:
    """The URL (without password) of a fresh database owned by a role that must give its password."""
    role = "ecal_pw_" + uuid.uuid4().hex[:6]
    admin = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
        conn.execute(f"GRANT ALL ON SCHEMA public TO {role}")
        conn.execute(f"ALTER DATABASE {make_url(pg_url).database} OWNER TO {role}")
        hba = Path(conn.execute("SHOW hba_file").fetchone()[0])  # type: ignore[index]
        hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        conn.execute("SELECT pg_reload_conf()")
    return make_url(pg_url).set(username=role).render_as_string(hide_password=False)


def test_split_password_keeps_everything_but_the_secret() -> None:
    url, secret = split_password("postgresql+psycopg://ecal:pw%40x@db.cern.ch:6600/state?sslmode=require")
    assert (url, secret) == ("postgresql+psycopg://ecal@db.cern.ch:6600/state?sslmode=require", "pw@x")
    assert split_password("sqlite:////tmp/x.db") == ("sqlite:////tmp/x.db", None)


def test_a_password_in_the_argument_is_refused_before_connecting(password_url: str) -> None:
    with_password = make_url(password_url).set(password=PASSWORD).render_as_string(hide_password=False)
    result = _cli("--db", with_password, "init")
    assert result.returncode == 2
    assert "holds a password" in result.stderr and "ECALSTATE_DB_PASSWORD_FILE" in result.stderr
    assert PASSWORD not in result.stderr + result.stdout and "Traceback" not in result.stderr
    admin = make_url(password_url).set(username="postgres", drivername="postgresql")
    with psycopg.connect(admin.render_as_string(hide_password=False)) as conn:
        assert conn.execute("SELECT to_regclass('public.meta')").fetchone() == (None,)  # nothing written


def test_without_a_password_the_login_fails_cleanly(password_url: str) -> None:
    result = _cli("--db", password_url, "init")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "password" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("source", ["password file", "environment", "pgpass"])
def test_the_password_comes_from_a_file_the_environment_or_pgpass(password_url: str, tmp_path: Path,
                                                                    source: str) -> None:
    secret = tmp_path / "secret"
    if source == "password file":
        secret.write_text(PASSWORD + "\n")
        env = {"ECALSTATE_DB_PASSWORD_FILE": str(secret)}
    elif source == "environment":
        env = {"ECALSTATE_DB_PASSWORD": PASSWORD}
    else:
        u = make_url(password_url)
        secret.write_text(f"{u.host}:{u.port}:{u.database}:{u.username}:{PASSWORD}\n")
        secret.chmod(0o600)
        env = {"PGPASSFILE": str(secret)}
    outputs = []
    for args in (("init",), ("campaign", "create", "prompt"), ("--json", "db", "stats"), ("db", "stats"),
                 ("--json", "campaign", "list")):
        result = _cli("--db", password_url, *args, env=env)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout + result.stderr)
    assert json.loads(outputs[4])[0]["name"] == "prompt"
    assert all(PASSWORD not in text for text in outputs)


def test_a_url_given_to_the_library_with_a_password_is_never_shown(password_url: str) -> None:
    with_password = make_url(password_url).set(password=PASSWORD).render_as_string(hide_password=False)
    with Store.open(with_password, create=True) as store:
        assert PASSWORD not in store.db.url
        assert PASSWORD not in repr(stats(store.db))
