"""pytest plugin: real servers and tools for the ecalstate tests.

Loaded by ``pytest_plugins = ["servers_plugin"]`` in tests/conftest.py. The servers themselves
live in scripts/servers.py (loaded here by path). Fixtures:

* ``influx``      (session) -- :class:`InfluxServer`, InfluxDB 1.6.7 on a free loopback port
* ``victoria``    (session) -- :class:`VictoriaServer`, VictoriaMetrics 1.79
* ``postgres``    (session) -- :class:`PostgresServer`, PostgreSQL 15
* ``pg_url``      (function) -- SQLAlchemy URL of a fresh database on ``postgres``, dropped afterwards
* ``condor_pool`` (session) -- :class:`CondorPool`, HTCondor personal pool from the trixie chroot;
  while it is up, ``os.environ["CONDOR_CONFIG"]`` points at its client config (and htcondor2's config
  is reloaded), so ``htcondor2.Schedd()`` talks to it
* ``groovy_lint`` -- path of the npm-groovy-lint executable (``$REPO/.tools``)
* ``chromium``    -- ``/usr/bin/chromium``

Missing binary/chroot: the test is skipped with the reason, except when ``ECALSTATE_REQUIRE_SERVERS=1``
(set by scripts/test.sh, i.e. CI), where it fails instead, so nothing is silently skipped in CI.
Other plugins use :func:`need_server` for the same rule. Tests using a fixture get the matching
marker (influx, victoria, postgres, condor, chromium), so ``-m "not condor"`` deselects them.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
SERVERS_PY = REPO / "scripts" / "servers.py"
GROOVY_LINT = Path(os.environ.get("ECALSTATE_GROOVY_LINT", REPO / ".tools" / "node_modules" / ".bin" / "npm-groovy-lint"))
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def _load_servers() -> ModuleType:
    name = "ecalstate_test_servers"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SERVERS_PY)
    assert spec is not None and spec.loader is not None, SERVERS_PY
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


servers = _load_servers()
InfluxServer = servers.InfluxServer
VictoriaServer = servers.VictoriaServer
PostgresServer = servers.PostgresServer
CondorPool = servers.CondorPool
ServerError = servers.ServerError


def require_servers() -> bool:
    """True when missing servers must fail tests instead of skipping them (CI)."""
    return os.environ.get("ECALSTATE_REQUIRE_SERVERS", "").strip().lower() not in ("", "0", "false", "no")


def skip_or_fail(reason: str) -> None:
    """Skip with ``reason``, or fail when ``ECALSTATE_REQUIRE_SERVERS=1``. Never returns."""
    if require_servers():
        pytest.fail(f"{reason} [ECALSTATE_REQUIRE_SERVERS=1: required, not skipped]", pytrace=False)
    pytest.skip(reason)


def _tool_available(name: str) -> tuple[bool, str, str | None]:
    if name == "groovy_lint":
        if not os.access(GROOVY_LINT, os.X_OK):
            return False, f"npm-groovy-lint not installed at {GROOVY_LINT}: run scripts/install-deps.sh", None
        if not shutil.which("java"):
            return False, "npm-groovy-lint needs java, which is not on PATH", None
        if not shutil.which("node"):
            return False, "npm-groovy-lint needs node, which is not on PATH", None
        return True, "", str(GROOVY_LINT)
    if name == "chromium":
        if not os.access(CHROMIUM, os.X_OK):
            return False, f"{CHROMIUM} not found (Debian package chromium): run scripts/install-deps.sh", None
        return True, "", str(CHROMIUM)
    if name == "chromedriver":
        if not os.access(CHROMEDRIVER, os.X_OK):
            return False, f"{CHROMEDRIVER} not found (Debian package chromium-driver): run install-deps.sh", None
        return True, "", str(CHROMEDRIVER)
    raise KeyError(name)


_ALIASES = {"influxdb": "influx", "influxd": "influx", "victoriametrics": "victoria", "vm": "victoria",
            "pg": "postgres", "postgresql": "postgres", "htcondor": "condor", "condor_pool": "condor",
            "npm-groovy-lint": "groovy_lint", "groovy-lint": "groovy_lint"}


def server_available(name: str) -> tuple[bool, str]:
    """(available, reason-if-not) for influx, victoria, postgres, condor, groovy_lint, chromium."""
    name = _ALIASES.get(name, name)
    if name in ("groovy_lint", "chromium", "chromedriver"):
        ok, reason, _ = _tool_available(name)
        return ok, reason
    try:
        cls = servers.SERVER_CLASSES[name]
    except KeyError:
        raise ValueError(f"unknown server {name!r}; known: {sorted(servers.SERVER_CLASSES)} "
                         "+ groovy_lint, chromium") from None
    ok, reason = cls.available()
    return bool(ok), str(reason)


def need_server(name: str) -> str | None:
    """Skip (or fail under ECALSTATE_REQUIRE_SERVERS=1) unless ``name`` is installed here.

    Returns the executable path for the tools (groovy_lint, chromium), else None.
    """
    name = _ALIASES.get(name, name)
    ok, reason = server_available(name)
    if not ok:
        skip_or_fail(f"{name}: {reason}")
    if name in ("groovy_lint", "chromium", "chromedriver"):
        return _tool_available(name)[2]
    return None


# --------------------------------------------------------------------------------- hooks
_FIXTURE_MARKERS = {"influx": "influx", "victoria": "victoria", "postgres": "postgres", "pg_url": "postgres",
                    "condor_pool": "condor", "chromium": "chromium",
                    "chromedriver": "chromium"}


def pytest_configure(config: pytest.Config) -> None:
    for marker, what in [("influx", "the real InfluxDB 1.6.7 server"), ("victoria", "the real VictoriaMetrics server"),
                         ("postgres", "the real PostgreSQL server"), ("condor", "the real HTCondor personal pool"),
                         ("chromium", "headless Chromium")]:
        config.addinivalue_line("markers", f"{marker}: needs {what}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names = getattr(item, "fixturenames", ())
        for fixture, marker in _FIXTURE_MARKERS.items():
            if fixture in names and item.get_closest_marker(marker) is None:
                item.add_marker(marker)


def pytest_report_header(config: pytest.Config) -> str:
    return f"ecalstate servers: ECALSTATE_REQUIRE_SERVERS={'1' if require_servers() else '0'} " \
           f"(missing servers {'fail' if require_servers() else 'skip'})"


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def influx() -> Iterator[Any]:
    need_server("influx")
    with InfluxServer() as server:
        yield server


@pytest.fixture(scope="session")
def victoria() -> Iterator[Any]:
    need_server("victoria")
    with VictoriaServer() as server:
        yield server


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    need_server("postgres")
    with PostgresServer() as server:
        yield server


@pytest.fixture
def pg_url(postgres: Any) -> Iterator[str]:
    """URL (postgresql+psycopg://...) of a fresh, empty database; dropped (WITH FORCE) after the test."""
    url = postgres.create_database()
    yield url
    try:
        postgres.drop_database(url.rsplit("/", 1)[1])
    except ServerError:
        pass


@pytest.fixture(scope="session")
def condor_pool() -> Iterator[Any]:
    need_server("condor")
    pool = CondorPool()
    pool.start()
    old = {k: os.environ.get(k) for k in ("CONDOR_CONFIG",)}
    os.environ["CONDOR_CONFIG"] = str(pool.client_config)
    _reload_htcondor_config()
    try:
        yield pool
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _reload_htcondor_config()
        if not pool.was_running:  # a pool someone started before this session is left running
            pool.stop()


def _reload_htcondor_config() -> None:
    mod = sys.modules.get("htcondor2")
    if mod is not None:
        mod.reload_config()


@pytest.fixture(scope="session")
def groovy_lint() -> str:
    path = need_server("groovy_lint")
    assert path
    return path


@pytest.fixture(scope="session")
def chromium() -> str:
    path = need_server("chromium")
    assert path
    return path


@pytest.fixture(scope="session")
def chromedriver(chromium: str) -> str:
    """Debian's chromium-driver, for Selenium (it drives the chromium of the fixture above)."""
    path = need_server("chromedriver")
    assert path
    return path
