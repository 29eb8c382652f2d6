#!/usr/bin/env python3
"""Real servers for the ecalstate tests and demos, each on a free loopback port.

Importable (tests/servers_plugin.py loads this file by path) and a small CLI::

    python scripts/servers.py up [influx victoria postgres condor]   # start, write .servers/env, print it
    python scripts/servers.py status                                 # print env lines + liveness
    python scripts/servers.py down                                   # stop what `up` started

Classes (all context managers; ``start()`` waits for readiness with a bounded timeout and
raises :class:`ServerError` with the tail of the server log when it is not ready):

* :class:`InfluxServer`   -- Debian ``influxd`` 1.6.7 (v1 API: ``/write``, ``/query`` InfluxQL)
* :class:`VictoriaServer` -- Debian ``victoria-metrics`` 1.79 (Influx line protocol v1 + v2 write,
  read back with ``/api/v1/export`` or PromQL)
* :class:`PostgresServer` -- Debian PostgreSQL 15, ``initdb`` as user ``postgres`` in a temp dir
* :class:`CondorPool`     -- wraps ``scripts/htcondor-pool.sh`` (personal pool in a trixie chroot)

Only the standard library and ``requests`` are used. See shared/reference/infrastructure.md.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import requests

REPO = Path(__file__).resolve().parent.parent
STATE_DIR = REPO / ".servers"
DEFAULT_TIMEOUT = float(os.environ.get("ECALSTATE_SERVER_TIMEOUT", "30"))


class ServerError(RuntimeError):
    """A server could not be started, did not become ready, or failed a request."""


class ServerUnavailable(ServerError):
    """The server's binary (or chroot) is not installed on this machine."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def tail(path: Path | str, lines: int = 30) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        return f"<no log: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def _elapsed(t0: float) -> float:
    return round(time.monotonic() - t0, 2)


class _ProcessServer:
    """A server run as one child process with its files in a (temporary) directory."""

    name = "server"
    binary = ""

    def __init__(self, workdir: str | os.PathLike[str] | None = None, port: int | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self._owns_dir = workdir is None
        self.dir = Path(workdir) if workdir is not None else Path(
            tempfile.mkdtemp(prefix=f"ecalstate-{self.name}-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.timeout = timeout
        self.log_path = self.dir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.startup_seconds: float | None = None

    # -- availability ---------------------------------------------------------------------
    @classmethod
    def find_binary(cls) -> str | None:
        return shutil.which(cls.binary) or (
            f"/usr/bin/{cls.binary}" if os.access(f"/usr/bin/{cls.binary}", os.X_OK) else None)

    @classmethod
    def available(cls) -> tuple[bool, str]:
        if cls.find_binary():
            return True, ""
        return False, (f"{cls.binary!r} not found (Debian package missing): run scripts/install-deps.sh")

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def prepare(self) -> None:
        """Write config files etc. before the first start."""

    def is_ready(self) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def is_running(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        if self.pid is not None:
            try:
                os.kill(self.pid, 0)
            except OSError:
                return False
            return True
        return False

    def start(self) -> "_ProcessServer":
        if self.is_running():
            return self
        ok, reason = self.available()
        if not ok:
            raise ServerUnavailable(reason)
        self.prepare()
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.dir,
                                         start_new_session=True)
        self.pid = self.proc.pid
        self._wait_ready(t0)
        self.startup_seconds = _elapsed(t0)
        return self

    def _wait_ready(self, t0: float) -> None:
        deadline = t0 + self.timeout
        while True:
            if not self.is_running():
                code = self.proc.returncode if self.proc else None
                raise ServerError(f"{self.name} exited with code {code} during start-up; "
                                  f"tail of {self.log_path}:\n{tail(self.log_path)}")
            try:
                if self.is_ready():
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise ServerError(f"{self.name} not ready on port {self.port} after {self.timeout:.0f} s; "
                                  f"tail of {self.log_path}:\n{tail(self.log_path)}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``). The data dir is kept."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would. The data dir is kept."""
        self._signal(signal.SIGKILL, 5.0)

    def _signal(self, sig: int, timeout: float) -> None:
        if not self.is_running():
            self.proc = None
            return
        assert self.pid is not None
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while self.is_running() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.is_running():
            os.kill(self.pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while self.is_running() and time.monotonic() < deadline:
                time.sleep(0.05)
        self.proc = None

    def restart(self, kill: bool = False) -> "_ProcessServer":
        """Stop (or kill) and start again on the same port with the same data dir."""
        self.kill() if kill else self.stop()
        return self.start()

    def close(self) -> None:
        """Stop and remove the temporary directory (only if this object created it)."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "_ProcessServer":
        try:
            return self.start()
        except BaseException:
            self.close()  # the error message already carries the log tail
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state for the CLI -------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"class": type(self).__name__, "dir": str(self.dir), "port": self.port, "pid": self.pid,
                "url": self.url}

    @classmethod
    def from_state(cls, st: dict[str, Any]) -> "_ProcessServer":
        obj = cls(workdir=st["dir"], port=st["port"])
        obj._owns_dir = True
        obj.pid = st.get("pid")
        return obj

    def env(self) -> dict[str, str]:
        return {}


class InfluxServer(_ProcessServer):
    """InfluxDB 1.6.7 (``influxd run``), v1 HTTP API only (no /api/v2, no Flux)."""

    name = "influxdb"
    binary = "influxd"

    def __init__(self, workdir: str | os.PathLike[str] | None = None, port: int | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(workdir, port, timeout)
        self.rpc_port = free_port()
        while self.rpc_port == self.port:
            self.rpc_port = free_port()
        self.config_path = self.dir / "influxdb.conf"

    def prepare(self) -> None:
        d = self.dir
        self.config_path.write_text(f"""\
reporting-enabled = false
bind-address = "127.0.0.1:{self.rpc_port}"
[meta]
  dir = "{d}/meta"
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:{self.port}"
  log-enabled = false
""")

    def command(self) -> list[str]:
        return [self.find_binary() or self.binary, "run", "-config", str(self.config_path)]

    def is_ready(self) -> bool:
        return requests.get(self.url + "/ping", timeout=2).status_code == 204

    def query(self, q: str, db: str | None = None, **params: Any) -> dict[str, Any]:
        """Run InfluxQL through ``POST /query`` and return the parsed JSON (raises on errors)."""
        data: dict[str, Any] = {"q": q, **params}
        if db is not None:
            data["db"] = db
        r = requests.post(self.url + "/query", data=data, timeout=30)
        try:
            body = r.json()
        except ValueError:
            raise ServerError(f"InfluxDB /query HTTP {r.status_code}: {r.text[:500]}") from None
        if not isinstance(body, dict):
            raise ServerError(f"InfluxDB /query returned {body!r}")
        if r.status_code >= 400 or "error" in body:
            raise ServerError(f"InfluxDB /query HTTP {r.status_code}: {body}")
        for res in body.get("results", []):
            if "error" in res:
                raise ServerError(f"InfluxDB query {q!r} failed: {res['error']}")
        return body

    def create_database(self, db: str) -> None:
        self.query(f'CREATE DATABASE "{db}"')

    def write(self, lines: str | Iterable[str], db: str, precision: str | None = None) -> None:
        """Write line protocol through ``POST /write`` (v1)."""
        body = lines if isinstance(lines, str) else "\n".join(lines)
        params = {"db": db}
        if precision:
            params["precision"] = precision
        r = requests.post(self.url + "/write", params=params, data=body.encode(), timeout=30)
        if r.status_code != 204:
            raise ServerError(f"InfluxDB /write HTTP {r.status_code}: {r.text[:500]}")

    def env(self) -> dict[str, str]:
        return {"ECALSTATE_INFLUX_URL": self.url}

    def state(self) -> dict[str, Any]:
        return {**super().state(), "rpc_port": self.rpc_port}

    @classmethod
    def from_state(cls, st: dict[str, Any]) -> "InfluxServer":
        obj = super().from_state(st)
        assert isinstance(obj, InfluxServer)
        obj.rpc_port = st["rpc_port"]
        return obj


class VictoriaServer(_ProcessServer):
    """VictoriaMetrics 1.79: accepts Influx line protocol on /write (v1) and /api/v2/write (v2)."""

    name = "victoria"
    binary = "victoria-metrics"

    def command(self) -> list[str]:
        return [self.find_binary() or self.binary, f"-storageDataPath={self.dir}/data",
                f"-httpListenAddr=127.0.0.1:{self.port}", "-search.latencyOffset=0s",
                "-retentionPeriod=100y"]

    def is_ready(self) -> bool:
        return requests.get(self.url + "/health", timeout=2).status_code == 200

    def force_flush(self) -> None:
        """Make just-written samples searchable (call before reading right after a write)."""
        r = requests.get(self.url + "/internal/force_flush", timeout=30)
        r.raise_for_status()

    def export(self, match: str = '{__name__=~".+"}', start: float | None = None,
               end: float | None = None) -> list[dict[str, Any]]:
        """``GET /api/v1/export?match[]=...`` -> one dict per series
        (``{"metric": {...labels}, "values": [...], "timestamps": [...]}``).

        ``end`` defaults to one day in the future: VictoriaMetrics' own default ``end`` (now,
        second-granular) hides samples written during the last second, even after force_flush.
        """
        params: dict[str, Any] = {"match[]": match, "end": f"{end if end is not None else time.time() + 86400:.3f}"}
        if start is not None:
            params["start"] = f"{start:.3f}"
        r = requests.get(self.url + "/api/v1/export", params=params, timeout=30)
        if r.status_code != 200:
            raise ServerError(f"VictoriaMetrics export HTTP {r.status_code}: {r.text[:500]}")
        return [json.loads(line) for line in r.text.splitlines() if line.strip()]

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant PromQL query at ``at``; returns ``data.result``.

        ``at`` defaults to now + 1 s: at ``time=now`` VictoriaMetrics 1.79 does not yet show samples
        written during the last second (even with -search.latencyOffset=0s and force_flush).
        """
        params = {"query": promql, "time": f"{at if at is not None else time.time() + 1:.3f}"}
        r = requests.get(self.url + "/api/v1/query", params=params, timeout=30)
        if r.status_code != 200:
            raise ServerError(f"VictoriaMetrics query HTTP {r.status_code}: {r.text[:500]}")
        return list(r.json()["data"]["result"])

    def env(self) -> dict[str, str]:
        return {"ECALSTATE_VICTORIA_URL": self.url}


def _pg_bindir() -> str | None:
    env = os.environ.get("ECALSTATE_PG_BIN")
    if env:
        return env if os.access(os.path.join(env, "initdb"), os.X_OK) else None
    cands = [d for d in glob.glob("/usr/lib/postgresql/*/bin") if os.access(os.path.join(d, "initdb"), os.X_OK)]
    cands.sort(key=lambda d: int(re.sub(r"\D", "", d.split("/")[-2]) or 0))
    return cands[-1] if cands else None


class PostgresServer(_ProcessServer):
    """PostgreSQL (Debian 15), initdb + pg_ctl as user ``postgres`` in a temp dir, fsync off."""

    name = "postgres"
    binary = "initdb"
    user = "postgres"
    _IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

    def __init__(self, workdir: str | os.PathLike[str] | None = None, port: int | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(workdir, port, timeout)
        self.bindir = _pg_bindir()
        self.datadir = self.dir / "data"
        self._started = False
        self._db_counter = 0

    @classmethod
    def find_binary(cls) -> str | None:
        d = _pg_bindir()
        return os.path.join(d, "initdb") if d else None

    @classmethod
    def available(cls) -> tuple[bool, str]:
        if not _pg_bindir():
            return False, "PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb) not found: " \
                          "run scripts/install-deps.sh"
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(cls.user)
            except KeyError:
                return False, "user 'postgres' does not exist (Debian package postgresql missing?)"
        return True, ""

    @property
    def url(self) -> str:
        return self.db_url("postgres")

    def db_url(self, db: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{db}"

    def _as_pg(self, cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", self.user, "--"] + cmd
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd="/")

    def _bin(self, tool: str) -> str:
        if not self.bindir:
            raise ServerUnavailable(self.available()[1])
        return os.path.join(self.bindir, tool)

    def is_running(self) -> bool:
        if not self._started and self.pid is None:
            return False
        pidfile = self.datadir / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().split()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return False
        self.pid = pid
        return True

    def start(self) -> "PostgresServer":
        if self.is_running():
            return self
        ok, reason = self.available()
        if not ok:
            raise ServerUnavailable(reason)
        t0 = time.monotonic()
        if os.geteuid() == 0:
            pw = pwd.getpwnam(self.user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        if not (self.datadir / "PG_VERSION").exists():
            r = self._as_pg([self._bin("initdb"), "-D", str(self.datadir), "-A", "trust", "-U", "postgres",
                             "-E", "UTF8", "--locale=C", "--no-sync"], timeout=self.timeout + 60)
            if r.returncode != 0:
                raise ServerError(f"initdb failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300")
        r = self._as_pg([self._bin("pg_ctl"), "-D", str(self.datadir), "-l", str(self.log_path), "-w",
                         "-t", str(int(self.timeout)), "-o", opts, "start"], timeout=self.timeout + 10)
        self._started = True
        if r.returncode != 0 or not self.is_running():
            raise ServerError(f"pg_ctl start failed ({r.returncode}): {r.stdout[-1000:]} {r.stderr[-1000:]}\n"
                              f"tail of {self.log_path}:\n{tail(self.log_path)}")
        deadline = t0 + self.timeout
        while not self._ping():
            if time.monotonic() > deadline:
                raise ServerError(f"postgres not accepting TCP connections on port {self.port}; "
                                  f"tail of {self.log_path}:\n{tail(self.log_path)}")
            time.sleep(0.05)
        self.startup_seconds = _elapsed(t0)
        return self

    def _ping(self) -> bool:
        r = subprocess.run([self._bin("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                           capture_output=True, timeout=10)
        return r.returncode == 0

    def _signal(self, sig: int, timeout: float) -> None:
        if not self.is_running():
            return
        mode = "immediate" if sig == signal.SIGKILL else "fast"
        r = self._as_pg([self._bin("pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "-t", str(int(timeout)),
                         "stop"], timeout=timeout + 10)
        if r.returncode != 0 and self.is_running() and self.pid:
            os.kill(self.pid, signal.SIGKILL)

    def command(self) -> list[str]:
        return []

    def is_ready(self) -> bool:
        return self._ping()

    def psql(self, sql: str, db: str = "postgres") -> str:
        r = subprocess.run([self._bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                            "-d", db, "-v", "ON_ERROR_STOP=1", "-AtX", "-c", sql],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise ServerError(f"psql {sql!r} failed: {r.stderr.strip()}")
        return r.stdout

    def create_database(self, name: str | None = None) -> str:
        """Create a fresh database and return its SQLAlchemy URL (``postgresql+psycopg://``)."""
        if name is None:
            self._db_counter += 1
            name = f"t{os.getpid()}_{self._db_counter}_{os.urandom(3).hex()}"
        if not self._IDENT.match(name):
            raise ValueError(f"not a plain identifier: {name!r}")
        self.psql(f'CREATE DATABASE "{name}"')
        return self.db_url(name)

    def drop_database(self, name: str) -> None:
        if not self._IDENT.match(name):
            raise ValueError(f"not a plain identifier: {name!r}")
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def env(self) -> dict[str, str]:
        return {"ECALSTATE_PG_URL": self.url}

    @classmethod
    def from_state(cls, st: dict[str, Any]) -> "PostgresServer":
        obj = super().from_state(st)
        assert isinstance(obj, PostgresServer)
        obj._started = True
        return obj


class CondorPool:
    """The HTCondor personal pool of ``scripts/htcondor-pool.sh`` (trixie chroot, 127.0.0.1).

    Clients use ``CONDOR_CONFIG=<client_config>`` and ``import htcondor2`` (they authenticate as the
    chroot-only user ``htcjob``; jobs run as that user inside the chroot, so job files must live
    under :attr:`jobdir` (world-writable, same path inside and outside the chroot). Set
    ``initialdir`` in submit descriptions to such a folder: the default, the submitter's cwd, does
    not exist inside the chroot and the job is held ("Cannot access initial working directory").
    """

    name = "condor"
    script = REPO / "scripts" / "htcondor-pool.sh"
    cache = Path(os.environ.get("ECALSTATE_HTC_CACHE", "/var/cache/ecalstate-htcondor"))
    base = Path("/tmp/ecalstate-htc")
    DEFAULT_PORT = 19618
    #: the group of the job user htcjob (uid 2001) inside the chroot
    JOBGID = 2001

    def __init__(self, port: int | None = None, timeout: float = 90.0) -> None:
        self.client_config = self.base / "condor" / "client_config"
        self.daemon_config = self.base / "condor" / "condor_config"
        self.jobdir = self.base / "jobs"
        self.bindir = self.base / "bin"
        self.timeout = timeout
        self._port = port
        self.was_running = False
        self.startup_seconds: float | None = None

    @classmethod
    def available(cls) -> tuple[bool, str]:
        if os.geteuid() != 0:
            return False, "the HTCondor chroot pool needs root (mount, chroot)"
        if not os.access(cls.cache / "trixie" / "usr/sbin/condor_master", os.X_OK):
            return False, f"no HTCondor chroot at {cls.cache / 'trixie'}: run scripts/install-deps.sh"
        if not shutil.which("chroot") or not shutil.which("mount"):
            return False, "chroot/mount not found"
        return True, ""

    @property
    def port(self) -> int:
        try:
            m = re.search(r"^COLLECTOR_HOST = 127\.0\.0\.1:(\d+)$", self.client_config.read_text(), re.M)
            if m and self.is_running():
                return int(m.group(1))
        except OSError:
            pass
        return self._port or int(os.environ.get("ECALSTATE_HTC_PORT", self.DEFAULT_PORT))

    def _run(self, action: str, port: int | None = None, timeout: float | None = None
             ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        if port is not None:
            env["ECALSTATE_HTC_PORT"] = str(port)
        return subprocess.run(["bash", str(self.script), action], capture_output=True, text=True, env=env,
                              timeout=timeout or self.timeout, stdin=subprocess.DEVNULL)

    def is_running(self) -> bool:
        return self._run("status", timeout=60).returncode == 0

    def start(self) -> "CondorPool":
        ok, reason = self.available()
        if not ok:
            raise ServerUnavailable(reason)
        t0 = time.monotonic()
        self.was_running = self.is_running()
        port = self._port or int(os.environ.get("ECALSTATE_HTC_PORT", self.DEFAULT_PORT))
        if not self.was_running and not port_is_free(port):
            port = free_port()
        try:
            r = self._run("start", port=port, timeout=self.timeout + 30)
        except subprocess.TimeoutExpired as exc:
            raise ServerError(f"htcondor-pool.sh start timed out after {exc.timeout} s") from None
        if r.returncode != 0:
            raise ServerError(f"htcondor-pool.sh start failed ({r.returncode}):\n{r.stdout[-3000:]}\n"
                              f"{r.stderr[-3000:]}")
        self.startup_seconds = _elapsed(t0)
        return self

    def stop(self) -> None:
        r = self._run("stop", timeout=120)
        if r.returncode != 0:
            raise ServerError(f"htcondor-pool.sh stop failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> "CondorPool":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def make_jobdir(self, prefix: str = "job-") -> Path:
        """A fresh folder under :attr:`jobdir` that jobs (group 2001) can write to, and no other user: the
        work folder of an ecalstate backend (group-writable for its jobs' group, never world-writable)."""
        self.jobdir.mkdir(parents=True, exist_ok=True)
        d = Path(tempfile.mkdtemp(prefix=prefix, dir=self.jobdir))
        os.chown(d, -1, self.JOBGID)
        d.chmod(0o2775)
        return d

    def env(self) -> dict[str, str]:
        """Environment for clients: CONDOR_CONFIG, the jobs folder, and PATH with the condor_* wrappers."""
        return {
            "CONDOR_CONFIG": str(self.client_config),
            "ECALSTATE_CONDOR_JOBDIR": str(self.jobdir),
            "ECALSTATE_CONDOR_BIN": str(self.bindir),
            "PATH": f"{self.bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def state(self) -> dict[str, Any]:
        return {"class": "CondorPool", "port": self.port, "client_config": str(self.client_config)}


SERVER_CLASSES: dict[str, Callable[[], Any]] = {
    "influx": InfluxServer,
    "victoria": VictoriaServer,
    "postgres": PostgresServer,
    "condor": CondorPool,
}
_BY_CLASS = {c.__name__: c for c in (InfluxServer, VictoriaServer, PostgresServer)}


# ------------------------------------------------------------------------------------------ CLI
def _load_state() -> dict[str, dict[str, Any]]:
    try:
        return dict(json.loads((STATE_DIR / "state.json").read_text()))
    except (OSError, ValueError):
        return {}


def _save_state(state: dict[str, dict[str, Any]], env: dict[str, str]) -> None:
    STATE_DIR.mkdir(exist_ok=True)
    (STATE_DIR / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    (STATE_DIR / "env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))


def _revive(key: str, st: dict[str, Any]) -> Any:
    if key == "condor":
        return CondorPool(port=st.get("port"))
    return _BY_CLASS[st["class"]].from_state(st)


def _env_of(obj: Any) -> dict[str, str]:
    env = dict(obj.env())
    if isinstance(obj, CondorPool):
        env.pop("PATH", None)  # not useful as a static line
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("action", choices=["up", "down", "status"])
    ap.add_argument("servers", nargs="*", help="subset of: " + " ".join(SERVER_CLASSES) + " (default: all available)")
    args = ap.parse_args(argv)
    names = args.servers or list(SERVER_CLASSES)
    bad = [n for n in names if n not in SERVER_CLASSES]
    if bad:
        ap.error(f"unknown server(s): {' '.join(bad)}")
    state = _load_state()

    if args.action == "up":
        env: dict[str, str] = {}
        for key in names:
            if key in state:
                obj = _revive(key, state[key])
                if obj.is_running():
                    env.update(_env_of(obj))
                    print(f"# {key}: already up", file=sys.stderr)
                    continue
            cls = SERVER_CLASSES[key]
            ok, reason = cls.available()  # type: ignore[attr-defined]
            if not ok:
                print(f"# {key}: skipped: {reason}", file=sys.stderr)
                continue
            obj = cls()
            obj.start()
            state[key] = obj.state()
            env.update(_env_of(obj))
            print(f"# {key}: started in {obj.startup_seconds} s", file=sys.stderr)
        for key in state:
            if key not in names:
                env.update(_env_of(_revive(key, state[key])))
        _save_state(state, env)
        sys.stdout.write("".join(f"{k}={v}\n" for k, v in env.items()))
        print(f"# written to {STATE_DIR / 'env'}", file=sys.stderr)
        return 0

    if args.action == "status":
        rc = 0
        for key, st in state.items():
            obj = _revive(key, st)
            up = obj.is_running()
            rc |= 0 if up else 1
            print(f"# {key}: {'up' if up else 'DOWN'}", file=sys.stderr)
            for k, v in _env_of(obj).items():
                print(f"{k}={v}")
        if not state:
            print("# nothing started by `servers.py up`", file=sys.stderr)
        return rc

    # down
    for key in list(state):
        if key not in names:
            continue
        obj = _revive(key, state.pop(key))
        obj.close()
        print(f"# {key}: stopped", file=sys.stderr)
    env = {}
    for key, st in state.items():
        env.update(_env_of(_revive(key, st)))
    _save_state(state, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
