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
