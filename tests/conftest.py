"""Shared fixtures: a fresh database on each engine, and a store with a small campaign."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ecalstate import RunSpec, Store

pytest_plugins = ["servers_plugin"]

ENGINES = ["sqlite", "postgres"]


@pytest.fixture(params=ENGINES)
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A URL for an empty database: a SQLite file in a temp dir, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "state.db")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return str(tmp_path / "state.db")


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    with Store.open(db_url, actor="tester", create=True) as s:
        yield s


@pytest.fixture
def chain(store: Store) -> Store:
    """Campaign ``prompt`` with reco -> calib -> plots active on every run, runs 1-4 in fills 10 and 11."""
    store.create_campaign("prompt")
    store.add_task("prompt", "reco", max_retries=2)
    store.add_task("prompt", "calib", depends_on=["reco"], max_retries=1)
    store.add_task("prompt", "plots", depends_on=["calib"], max_retries=0)
    store.update_rtype("prompt", "all", add=["reco", "calib", "plots"])
    store.inject_runs("prompt", [RunSpec(1, 10), RunSpec(2, 10), RunSpec(3, 11), RunSpec(4, 11)])
    return store


def pytest_report_header(config: pytest.Config) -> str:
    return f"ECALSTATE_REQUIRE_SERVERS={os.environ.get('ECALSTATE_REQUIRE_SERVERS', '0')}"


OTHER_USER = "ecaltest"


@pytest.fixture(scope="session")
def other_user() -> str:
    """An unprivileged local account ("another person on the same host"), for permission tests.

    scripts/install-deps.sh creates it; as root the fixture creates it when missing. Its commands run through
    ``runuser -u ecaltest --`` (the project's venv lives in root's home, so it runs system tools: sqlite3, cat, sh).
    """
    import pwd
    import shutil
    import subprocess

    from servers_plugin import skip_or_fail

    try:
        pwd.getpwnam(OTHER_USER)
    except KeyError:
        if os.geteuid() != 0 or not shutil.which("useradd"):
            skip_or_fail(f"no user {OTHER_USER} and not root to create it (scripts/install-deps.sh creates it)")
        subprocess.run(["useradd", "--system", "--no-create-home", OTHER_USER], check=True)
    if os.geteuid() != 0:
        skip_or_fail(f"running commands as {OTHER_USER} needs root (runuser)")
    return OTHER_USER
