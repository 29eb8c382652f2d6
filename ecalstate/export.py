"""Export the audit trail to InfluxDB as ``run``, ``job`` and ``handler`` points.

Incremental: every target has a cursor (the last exported audit id, table
``export_cursor``). An export reads the audit rows after it in id order, in
batches of at most 5,000 lines, sends each batch and, only once the server has
acknowledged it, advances the cursor in its own short write transaction. No
database lock is held while talking to the server. A crash or an outage
therefore re-sends at most the unacknowledged batch, and since a replay writes
byte-identical lines (same series, same timestamp, same values) InfluxDB keeps
one copy: at-least-once delivery, exactly-once data.

Deterministic points: a point depends only on its audit row and the rows before
it. Job ``attempts`` and user fields are rebuilt from the job's own audit history
(creation fields, fields sent with each transition, one attempt more per
failed -> idle), and the run's fill and run types never change after injection.

Measurements (compatible with the original's Grafana):

- ``run``: tags campaign, fill, rtype, run_number; one string field named after
  the task, holding its status at that transition;
- ``job``: tags campaign, id, run_number, task; fields status, the one-hot
  integers idle/running/done/failed, attempts, generation, reason, user fields
  (numbers as floats, so that 1 and 1.5 never conflict; other values as text);
- ``handler``: tags campaign, stage, task; fields ok, heartbeat (always 1: its
  ``last()`` gives the time of the last heartbeat), message, actor.

Targets: InfluxDB 2.x/3.x and 1.8+ through ``influxdb-client``'s v2 write API
(imported only when that target is opened); InfluxDB 1.x through ``POST /write``;
a line-protocol file. Timestamps are nanoseconds, and the precision is always
sent explicitly.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import random
import re
import signal
import socket
import threading
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol
from urllib.parse import quote as urlquote
from urllib.parse import urlencode, urlsplit

from .db import Database, Tx, utcnow
from .errors import EcalStateError, Invalid
from .lineprotocol import FieldValue, line, safe_key, timestamp_ns

#: the most lines one request carries
BATCH_LIMIT = 5000
#: the file target used when no target is given
DEFAULT_OUT = "ecalstate.lp"
TOKEN_ENV = "ECALSTATE_INFLUX_TOKEN"
USER_ENV = "ECALSTATE_INFLUX_USER"
PASSWORD_ENV = "ECALSTATE_INFLUX_PASSWORD"
JOB_STATUSES = ("idle", "running", "done", "failed")
#: names a job's user field may not take: the exporter's own fields and tags (InfluxDB 3 refuses a field
#: named like a tag; 1.x makes queries ambiguous) and ``time``; such a field is written as ``user_<name>``
JOB_FIELDS = frozenset(("status", *JOB_STATUSES, "attempts", "generation", "reason", "time",
                        "campaign", "task", "run_number", "id"))


class ExportError(EcalStateError):
    """The target refused the data or stayed unreachable; the cursor stayed where the server last acknowledged.

    ``permanent`` errors (refused credentials, unknown database, bad request) do not go away by
    retrying; the others (server down, timeouts, 5xx) do.
    """

    def __init__(self, message: str, permanent: bool, result: Optional[ExportResult] = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.result = result


class _Unavailable(Exception):
    """A failure worth retrying: connection refused or reset, timeout, HTTP 5xx or 429."""


class _Refused(Exception):
    """A failure retrying cannot fix."""


class _Stopped(Exception):
    """A stop was requested while waiting to retry."""


# --------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ExportResult:
    """What one export did: points acknowledged, batches, and the cursor before and after."""

    target: str
    points: int
    batches: int
    cursor_before: int
    cursor_after: int
    full: bool = False
    dropped: int = 0
    skipped: int = 0
    stopped: bool = False
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter: ``retries`` more tries, waits growing from ``base`` up to ``cap``."""

    retries: int = 5
    base: float = 1.0
    cap: float = 30.0

    def __post_init__(self) -> None:
        if self.retries < 0 or self.base < 0 or self.cap < 0:
            raise Invalid("retries, base and cap must be >= 0")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based): half fixed, half random."""
        ceiling = min(self.cap, self.base * 2 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


# --------------------------------------------------------------------------------- targets


class Target(Protocol):
    """Where lines go. ``name`` keys the cursor and never contains a secret."""

    name: str

    def send(self, payload: bytes) -> tuple[int, str]:
        """Write newline-separated lines; return (points the server dropped, its message), or raise."""

    def close(self) -> None: ...


class FileTarget:
    """Appends lines to a file (loadable with ``influx write`` or ``POST /write``); each batch is fsynced."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(os.path.expanduser(path))
        self.name = "file:" + self.path

    def send(self, payload: bytes) -> tuple[int, str]:
        try:
            with open(self.path, "ab") as out:
                out.write(payload + b"\n")
                out.flush()
                os.fsync(out.fileno())
        except OSError as err:
            raise _Refused(f"cannot write {self.path}: {err.strerror or err}") from None
        return 0, ""

    def close(self) -> None:
        pass


class V1Target:
    """InfluxDB 1.x ``POST /write`` (any 1.x, also 1.8+ and VictoriaMetrics), on one keep-alive connection."""

    def __init__(
        self, url: str, database: str, retention_policy: Optional[str] = None,
        user: Optional[str] = None, password: Optional[str] = None, timeout: float = 30.0,
    ) -> None:
        self.url = check_url(url)
        parts = urlsplit(self.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        params = {"db": database, "precision": "ns"}
        if retention_policy:
            params["rp"] = retention_policy
        self._path = parts.path + "/write?" + urlencode(params, quote_via=urlquote)
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        if user is not None:
            token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            self._headers["Authorization"] = "Basic " + token
        self._timeout = timeout
        self._conn: Optional[http.client.HTTPConnection] = None
        self.name = f"influx-v1:{self.url}/{database}" + (f"/{retention_policy}" if retention_policy else "")

    def _connect(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=self._timeout)

    def send(self, payload: bytes) -> tuple[int, str]:
        reused = self._conn is not None
        try:
            return self._post(payload)
        except (OSError, http.client.HTTPException) as err:
            self.close()
            if not reused:
                raise _Unavailable(f"cannot reach InfluxDB at {self.url}: {_reason(err)}") from None
        try:  # a keep-alive connection the server had closed: one fresh try, no wait
            return self._post(payload)
        except (OSError, http.client.HTTPException) as err:
            self.close()
            raise _Unavailable(f"cannot reach InfluxDB at {self.url}: {_reason(err)}") from None

    def _post(self, payload: bytes) -> tuple[int, str]:
        if self._conn is None:
            self._conn = self._connect()
        self._conn.request("POST", self._path, body=payload, headers=self._headers)
        response = self._conn.getresponse()
        body = response.read().decode("utf-8", "replace")
        if response.getheader("Connection", "").lower() == "close":
            self.close()
        return _outcome(response.status, _server_message(body), self.url)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class V2Target:
    """InfluxDB 2.x/3.x (and 1.8+ with bucket ``db/retention``, token ``user:password``) via influxdb-client."""

    def __init__(self, url: str, bucket: str, org: str, token: Optional[str] = None, timeout: float = 30.0) -> None:
        from influxdb_client import (
            InfluxDBClient,  # heavy: only when this target is used
        )
        from influxdb_client.client.write_api import SYNCHRONOUS

        self.url = check_url(url)
        self.bucket = bucket
        self.org = org
        self._client = InfluxDBClient(url=self.url, token=token or "", org=org, timeout=int(timeout * 1000))
        self._write = self._client.write_api(write_options=SYNCHRONOUS)
        self.name = f"influx-v2:{self.url}?org={org}&bucket={bucket}"

    def send(self, payload: bytes) -> tuple[int, str]:
        from influxdb_client import WritePrecision
        from influxdb_client.rest import ApiException
        from urllib3.exceptions import HTTPError

        try:
            self._write.write(bucket=self.bucket, org=self.org, record=payload,
                              write_precision=WritePrecision.NS)  # type: ignore[arg-type]  # a str constant
        except ApiException as err:
            return _outcome(int(err.status or 0), _server_message(err.body or err.reason or ""), self.url)
        except (HTTPError, OSError) as err:
            raise _Unavailable(f"cannot reach InfluxDB at {self.url}: {_reason(err)}") from None
        return 0, ""

    def close(self) -> None:
        self._client.close()


def _outcome(status: int, message: str, url: str) -> tuple[int, str]:
    """Map an HTTP answer: 2xx ok; a partial write is acknowledged with its dropped count; else an error."""
    if 200 <= status < 300:
        return 0, ""
    if status in (400, 422) and "partial write" in message:
        found = re.search(r"dropped=(\d+)", message)
        return (int(found.group(1)) if found else 1), message
    text = f"InfluxDB at {url} answered HTTP {status}" + (f": {message}" if message else "")
    if status == 0 or status == 429 or status >= 500:
        raise _Unavailable(text)
    if status in (401, 403):
        raise _Refused(text + f" (check {TOKEN_ENV} or {USER_ENV}/{PASSWORD_ENV})")
    raise _Refused(text)


def _server_message(body: str) -> str:
    """The server's error text (InfluxDB answers ``{"error": ...}`` or ``{"message": ...}``), on one line."""
    try:
        data = json.loads(body)
        text = str(data.get("error") or data.get("message") or body) if isinstance(data, dict) else body
    except ValueError:
        text = body
    return " ".join(text.split())[:300]


def _reason(err: BaseException) -> str:
    """A short, secret-free reason for a network error."""
    if isinstance(err, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    inner = getattr(err, "reason", None) or err.__cause__ or err.__context__
    if isinstance(inner, BaseException):
        return _reason(inner)
    text = str(err).split(": ", 1)[-1] if ": " in str(err) else str(err)
    return " ".join(text.split())[:200] or type(err).__name__


def check_url(url: str) -> str:
    """An http(s) URL without credentials or query (secrets come from the environment), trailing / removed."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket: http://[::1
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid(f"invalid URL {redact_url(url)!r}: expected http(s)://host[:port][/path]")
    if parts.username is not None or parts.password is not None or parts.query:
        raise Invalid(f"credentials do not belong in the URL ({redact_url(url)}): set {TOKEN_ENV} or "
                      f"{USER_ENV}/{PASSWORD_ENV}, or use --token-file/--password-file")
    try:
        valid_port = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        valid_port = False
    if not valid_port:
        raise Invalid(f"invalid port in URL {redact_url(url)!r}")
    return url.rstrip("/")


def redact_url(url: str) -> str:
    """The URL without user, password and query, for messages."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<url>"
    return f"{parts.scheme}://{host}{port}{parts.path}"


@dataclass(frozen=True)
class TargetSpec:
    """A target as the command line describes it; secrets are read by :meth:`open`, never passed in."""

    out: Optional[str] = None
    url: Optional[str] = None
    protocol: Optional[str] = None  # v2 (the default with a URL) or v1
    bucket: Optional[str] = None
    org: Optional[str] = None
    database: Optional[str] = None
    retention_policy: Optional[str] = None
    token_file: Optional[str] = None
    password_file: Optional[str] = None
    timeout: float = 30.0

    def open(self, env: Optional[Mapping[str, str]] = None) -> Target:
        """Validate the combination, read credentials from ``env`` (default: os.environ) or files, open."""
        env = os.environ if env is None else env
        if self.timeout <= 0:
            raise Invalid("timeout must be > 0")
        if self.url is None:
            given = [n for n, v in (("--protocol", self.protocol), ("--bucket", self.bucket), ("--org", self.org),
                                    ("--database", self.database), ("--token-file", self.token_file),
                                    ("--password-file", self.password_file)) if v is not None]
            if given:
                raise Invalid(f"{', '.join(given)} need --url")
            return FileTarget(self.out or DEFAULT_OUT)
        if self.out is not None:
            raise Invalid("give either --out FILE or --url URL, not both")
        if self.protocol == "v1":
            return self._open_v1(env)
        if self.protocol not in (None, "v2"):
            raise Invalid(f"unknown protocol {self.protocol!r} (valid: v1, v2)")
        if self.database is not None or self.retention_policy is not None:
            raise Invalid("--database/--retention-policy are for --protocol v1; with v2 use --bucket db/retention")
        if not self.bucket or not self.org:
            raise Invalid("the v2 write API needs --bucket and --org (InfluxDB 1.8+: --bucket db/retention, any org)")
        token = read_secret(TOKEN_ENV, self.token_file, env, "--token-file")
        if token is None:  # InfluxDB 1.8+: the token is user:password
            user, password = self._user_password(env)
            token = None if user is None else f"{user}:{password or ''}"
        return V2Target(self.url, self.bucket, self.org, token, self.timeout)

    def _open_v1(self, env: Mapping[str, str]) -> Target:
        if self.bucket is not None or self.org is not None or self.token_file is not None:
            raise Invalid("--bucket/--org/--token-file are for the v2 API; --protocol v1 takes --database")
        if not self.database:
            raise Invalid("--protocol v1 needs --database")
        user, password = self._user_password(env)
        return V1Target(self.url or "", self.database, self.retention_policy, user, password, self.timeout)

    def _user_password(self, env: Mapping[str, str]) -> tuple[Optional[str], Optional[str]]:
        user = env.get(USER_ENV) or None
        password = read_secret(PASSWORD_ENV, self.password_file, env, "--password-file")
        if password is not None and user is None:
            raise Invalid(f"a password is given but no user: set {USER_ENV}")
        return user, password


def read_secret(env_name: str, path: Optional[str], env: Mapping[str, str], option: str) -> Optional[str]:
    """A secret from a file (first line) or else from the environment; never echoed."""
    if path is None:
        return env.get(env_name) or None
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as handle:
            secret = handle.readline().strip()
    except OSError as err:
        raise Invalid(f"cannot read {option} {path}: {err.strerror or err}") from None
    if not secret:
        raise Invalid(f"{option} {path} is empty")
    return secret


# --------------------------------------------------------------------------------- points

ROWS_SQL = (
    "SELECT a.id, a.ts, a.entity, a.task, a.run_number, a.jid, a.generation, a.from_status, a.to_status,"
    " a.actor, a.reason, a.detail, a.instance_id, a.job_pk, c.name, r.fill, r.rtypes"
    " FROM audit a LEFT JOIN campaign c ON c.id = a.campaign_id"
    " LEFT JOIN run r ON r.campaign_id = a.campaign_id AND r.run_number = a.run_number"
    " WHERE a.id > ? AND a.id <= ? ORDER BY a.id LIMIT ?"
)
# the job rows that shape a job's attempts and fields, before a batch (through ix_audit_instance)
HISTORY_SQL = (
    "SELECT job_pk, from_status, to_status, detail FROM audit"
    " WHERE instance_id IN ({marks}) AND entity = 'job' AND id < ?"
    " AND (detail IS NOT NULL OR (from_status = 'failed' AND to_status = 'idle')) ORDER BY id"
)


@dataclass
class _Job:
    """A job as of some audit row: what its points carry besides the status."""

    attempts: int = 1
    fields: dict[str, Any] = field(default_factory=dict)

    def apply(self, from_status: Optional[str], to_status: str, detail: Optional[str]) -> None:
        """Mirror what the store did at that transition (jobs._apply)."""
        if from_status == "failed" and to_status == "idle":
            self.attempts += 1
        if detail:
            self.fields.update(json.loads(detail))


def _user_value(value: Any) -> Optional[FieldValue]:
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _user_fields(fields: Mapping[str, Any]) -> list[tuple[str, FieldValue]]:
    out: dict[str, FieldValue] = {}
    for raw_key in sorted(fields):
        key = safe_key(str(raw_key))
        value = _user_value(fields[raw_key])
        if not key or value is None:
            continue
        out["user_" + key if key in JOB_FIELDS else key] = value
    return list(out.items())


def _point(row: Sequence[Any], jobs: dict[int, _Job]) -> Optional[str]:
    """The line of one audit row (``None`` for an entity the exporter does not know)."""
    (_id, ts, entity, task, run, jid, gen, from_status, to_status, actor, reason, detail, _iid, job_pk,
     campaign, fill, rtypes) = row
    when = timestamp_ns(ts)
    if entity == "task":
        tags = [("campaign", campaign), ("fill", "" if fill is None else str(fill)), ("rtype", rtypes or ""),
                ("run_number", str(run))]
        return line("run", tags, [(task, to_status)], when)
    if entity == "job":
        job = jobs.setdefault(job_pk, _Job())
        job.apply(from_status, to_status, detail)
        values: list[tuple[str, FieldValue]] = [("status", to_status)]
        values += [(s, int(s == to_status)) for s in JOB_STATUSES]
        values += [("attempts", job.attempts), ("generation", int(gen or 0)), ("reason", reason or "")]
        values += _user_fields(job.fields)
        tags = [("campaign", campaign), ("id", str(jid)), ("run_number", str(run)), ("task", task)]
        return line("job", tags, values, when)
    if entity == "handler":
        stage = json.loads(detail).get("stage", "") if detail else ""
        values = [("ok", to_status == "ok"), ("heartbeat", 1), ("message", reason or ""), ("actor", actor or "")]
        return line("handler", [("campaign", campaign), ("stage", str(stage)), ("task", task)], values, when)
    return None


def _job_history(tx: Tx, rows: Sequence[Sequence[Any]]) -> dict[int, _Job]:
    """Each job of the batch as of just before the batch, rebuilt from its earlier audit rows."""
    instances = sorted({r[12] for r in rows if r[2] == "job" and r[12] is not None})
    if not instances:
        return {}
    first = rows[0][0]
    jobs: dict[int, _Job] = {}
    for start in range(0, len(instances), 500):
        chunk = instances[start:start + 500]
        sql = HISTORY_SQL.format(marks=",".join("?" * len(chunk)))
        for job_pk, from_status, to_status, detail in tx.all(sql, (*chunk, first)):
            jobs.setdefault(job_pk, _Job()).apply(from_status, to_status, detail)
    return jobs


def read_batch(db: Database, after: int, upto: int, limit: int) -> tuple[list[str], int, int]:
    """Lines for the audit rows in (after, upto], at most ``limit``: (lines, last id read, rows skipped)."""
    with db.tx(write=False) as tx:
        rows = tx.all(ROWS_SQL, (after, upto, limit))
        jobs = _job_history(tx, rows)
    lines = []
    for row in rows:
        text = _point(row, jobs)
        if text is not None:
            lines.append(text)
    return lines, (rows[-1][0] if rows else after), len(rows) - len(lines)


# --------------------------------------------------------------------------------- cursor


def cursor(db: Database, target: str) -> int:
    """The last audit id acknowledged by ``target`` (0 when it never received anything)."""
    with db.tx(write=False) as tx:
        value = tx.scalar("SELECT audit_id FROM export_cursor WHERE target = ?", (target,))
    return int(value or 0)


def _set_cursor(db: Database, target: str, audit_id: int, forward_only: bool = True) -> None:
    """Store the cursor in its own short write transaction; never moves it back unless told to."""
    guard = " WHERE export_cursor.audit_id < excluded.audit_id" if forward_only else ""
    with db.tx(write=True) as tx:
        tx.run(
            "INSERT INTO export_cursor (target, audit_id, updated_at) VALUES (?,?,?)"
            " ON CONFLICT (target) DO UPDATE SET audit_id = excluded.audit_id, updated_at = excluded.updated_at"
            + guard,
            (target, audit_id, utcnow()),
        )


def _high_water(db: Database) -> int:
    """The newest audit id below which every row is committed.

    SQLite has one writer at a time, so committed ids always form a prefix. PostgreSQL hands out
    ids before commit: a share lock waits for the transactions inserting audit rows right now,
    after which every id up to the maximum is either committed or never will be.
    """
    with db.tx(write=False) as tx:
        if not tx.is_sqlite:
            # a read-only exporter may not lock the table itself: `ecalstate db roles` gives it a function that does
            if tx.scalar("SELECT to_regprocedure('ecalstate_audit_high_water()') IS NOT NULL"):
                return int(tx.scalar("SELECT ecalstate_audit_high_water()"))
            tx.run("LOCK TABLE audit IN SHARE MODE")
        return int(tx.scalar("SELECT MAX(id) FROM audit") or 0)


# --------------------------------------------------------------------------------- export


def export(
    db: Database,
    target: Target,
    full: bool = False,
    batch_size: int = BATCH_LIMIT,
    retry: RetryPolicy = RetryPolicy(),
    stop: Optional[threading.Event] = None,
    on_batch: Optional[Callable[[int, int], None]] = None,
) -> ExportResult:
    """Send the audit rows the target has not acknowledged yet (all of them with ``full``).

    ``on_batch(points, cursor)`` is called after each acknowledged batch; ``stop`` ends the export
    cleanly between batches (or while waiting to retry), keeping what was acknowledged.
    """
    if not 1 <= batch_size <= BATCH_LIMIT:
        raise Invalid(f"invalid batch size {batch_size}: 1 to {BATCH_LIMIT} lines")
    stop = stop or threading.Event()
    before = cursor(db, target.name)
    if full and before:
        _set_cursor(db, target.name, 0, forward_only=False)
    position = 0 if full else before
    high = _high_water(db)
    points = batches = dropped = skipped = 0
    warnings: list[str] = []

    def result(stopped: bool = False) -> ExportResult:
        return ExportResult(target.name, points, batches, before, position, full, dropped, skipped, stopped,
                            tuple(warnings))

    with closing(_prefetched(db, position, high, batch_size)) as batches_read:
        for lines, last, unknown in batches_read:
            if stop.is_set():
                return result(stopped=True)
            if lines:
                try:
                    lost, message = _send(target, "\n".join(lines).encode("utf-8"), retry, stop)
                except _Stopped:
                    return result(stopped=True)
                except (_Unavailable, _Refused) as err:
                    permanent = isinstance(err, _Refused)
                    attempts = retry.retries + 1
                    tries = "" if permanent else f" after {attempts} attempt{'s' if attempts > 1 else ''}"
                    sent = f", after {points} points were acknowledged" if points else ""
                    raise ExportError(
                        f"export to {target.name} failed{tries}: {err}; cursor stays at {position}{sent}; "
                        "the next export sends what is missing",
                        permanent, result(),
                    ) from None
                if lost:
                    dropped += lost
                    warnings.append(f"the server dropped {lost} of {len(lines)} points: {message}")
                batches += 1
                points += len(lines)
            skipped += unknown
            _set_cursor(db, target.name, last)
            position = last
            if on_batch is not None:
                on_batch(len(lines), position)
    return result()


def _prefetched(db: Database, after: int, upto: int, limit: int) -> Generator[tuple[list[str], int, int], None, None]:
    """The batches of (after, upto] in order; the next one is read in a worker thread while the
    current one is sent, so formatting and the server's work overlap (reads only: nothing is lost
    when the export stops early)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ecalstate-export") as pool:
        pending: Optional[Future[tuple[list[str], int, int]]] = pool.submit(read_batch, db, after, upto, limit)
        while pending is not None:
            batch = pending.result()
            last = batch[1]
            pending = pool.submit(read_batch, db, last, upto, limit) if after < last < upto else None
            if last > after:
                yield batch
            after = last


def _send(target: Target, payload: bytes, retry: RetryPolicy, stop: threading.Event) -> tuple[int, str]:
    attempt = 0
    while True:
        try:
            return target.send(payload)
        except _Unavailable:
            attempt += 1
            if attempt > retry.retries:
                raise
            if stop.wait(retry.delay(attempt)):
                raise _Stopped() from None


def watch(
    db: Database,
    target: Target,
    interval: float,
    stop: threading.Event,
    on_result: Callable[[Optional[ExportResult], Optional[ExportError]], None],
    full: bool = False,
    batch_size: int = BATCH_LIMIT,
    retry: RetryPolicy = RetryPolicy(),
) -> int:
    """Export every ``interval`` seconds until ``stop`` is set; returns the number of cycles.

    An outage is reported through ``on_result`` and retried at the next cycle; a permanent
    refusal (credentials, unknown database) raises, since waiting will not fix it.
    """
    if interval <= 0:
        raise Invalid(f"invalid watch interval {interval}: must be > 0 seconds")
    cycles = 0
    while not stop.is_set():
        try:
            result = export(db, target, full=full and cycles == 0, batch_size=batch_size, retry=retry, stop=stop)
        except ExportError as err:
            if err.permanent:
                raise
            on_result(None, err)
        else:
            on_result(result, None)
        cycles += 1
        stop.wait(interval)
    return cycles


@contextmanager
def stop_on_signals(signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[threading.Event]:
    """An event set by SIGTERM/SIGINT while the block runs (main thread only); the old handlers come back after."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in signals}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
