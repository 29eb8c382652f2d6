"""Database passwords never in arguments, output or logs (issue 11, item 1; issue 20, item 5), on a real
PostgreSQL login.

A role that must authenticate with a password (scram-sha-256 in pg_hba.conf, the rest of the test server
stays on trust): the password reaches the server from ECALSTATE_DB_PASSWORD_FILE, ECALSTATE_DB_PASSWORD or
libpq's own ~/.pgpass (PGPASSFILE), each file only when no one else may read it; a password anywhere in the
database URL (its user part, a query parameter), given as ``--db`` or ``ECALSTATE_DB``, is refused before
anything connects; no command prints it, in text or JSON.
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
from ecalstate.db import DatabaseError
from ecalstate.secrets import redact_url

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


def _nothing_written(password_url: str) -> None:
    admin = make_url(password_url).set(username="postgres", drivername="postgresql")
    with psycopg.connect(admin.render_as_string(hide_password=False)) as conn:
        assert conn.execute("SELECT to_regclass('public.meta')").fetchone() == (None,)


#: every place of a URL that carries a password to libpq (its value is the right one: accepted, init would work)
PLACES = {
    "user part": lambda url: make_url(url).set(password=PASSWORD).render_as_string(hide_password=False),
    "query password": lambda url: f"{url}?password={PASSWORD}",
    "query sslpassword": lambda url: f"{url}?sslmode=prefer&sslpassword={PASSWORD}",
    "query in capitals": lambda url: f"{url}?sslmode=prefer&PASSWORD={PASSWORD}",
}


@pytest.mark.parametrize("given", ["--db", "ECALSTATE_DB"])
@pytest.mark.parametrize("place", list(PLACES))
def test_a_password_anywhere_in_the_url_is_refused_before_connecting(password_url: str, place: str,
                                                                     given: str) -> None:
    url = PLACES[place](password_url)
    result = _cli("--db", url, "init") if given == "--db" else _cli("init", env={"ECALSTATE_DB": url})
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert "holds a password" in result.stderr and "ECALSTATE_DB_PASSWORD_FILE" in result.stderr
    assert PASSWORD not in result.stderr + result.stdout
    _nothing_written(password_url)


@pytest.mark.parametrize("place", list(PLACES))
def test_the_library_refuses_a_password_in_the_url_too(password_url: str, place: str) -> None:
    with pytest.raises(DatabaseError) as refused:
        Store.open(PLACES[place](password_url), create=True)
    assert "holds a password" in str(refused.value) and PASSWORD not in str(refused.value)
    _nothing_written(password_url)


def test_urls_in_messages_go_through_one_redaction() -> None:
    url = f"postgresql+psycopg://ecal:{PASSWORD}@db:6600/state?sslmode=require&sslpassword={PASSWORD}&passfile=/p"
    shown = redact_url(url)
    assert PASSWORD not in shown
    assert shown.startswith("postgresql+psycopg://ecal:***@db:6600/state?") and "sslmode=require" in shown
    assert "sslpassword=***" in shown and "passfile=/p" in shown
    assert PASSWORD not in redact_url(f"http://u:{PASSWORD}@influx:8086/write?u=x&p={PASSWORD}")
    assert redact_url("/not a url[") == "/not a url["  # a path stays as it is


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
        secret.chmod(0o600)  # only its owner may read it (refused otherwise: below)
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


@pytest.mark.parametrize("source", ["ECALSTATE_DB_PASSWORD_FILE", "PGPASSFILE"])
def test_a_password_file_others_can_read_is_refused(password_url: str, tmp_path: Path, source: str) -> None:
    """As libpq refuses a ``.pgpass`` that the group or others may read; here with one line and the fix."""
    secret = tmp_path / "secret"
    u = make_url(password_url)
    secret.write_text(PASSWORD + "\n" if source == "ECALSTATE_DB_PASSWORD_FILE"
                      else f"{u.host}:{u.port}:{u.database}:{u.username}:{PASSWORD}\n")
    for mode in (0o640, 0o604):
        secret.chmod(mode)
        result = _cli("--db", password_url, "init", env={source: str(secret)})
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr  # one line
        assert f"{secret} may be read by other users" in result.stderr
        assert f"chmod 600 {secret}" in result.stderr and PASSWORD not in result.stderr + result.stdout
        _nothing_written(password_url)
    secret.chmod(0o600)
    assert _cli("--db", password_url, "init", env={source: str(secret)}).returncode == 0
