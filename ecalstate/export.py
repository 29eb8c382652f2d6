"""Export the audit trail to InfluxDB as ``run``, ``job`` and ``handler`` points.

Incremental: every target has a cursor (the last exported audit id, table
``export_cursor``). An export reads the audit rows after it in id order, sends
them in requests of at most 5,000 lines and ``batch_bytes`` bytes and, only once
the server has acknowledged a request, advances the cursor in its own short write
transaction. No database lock is held while talking to the server. A crash or an
outage therefore re-sends at most the unacknowledged request, and since a replay
writes byte-identical lines (same series, same timestamp, same values) InfluxDB
keeps one copy: at-least-once delivery, exactly-once data.

Nothing freezes the export: a request the server refuses for its data (a partial
write, a parse error, too large) is split in halves until the refused points are
found; they are reported (:class:`ExportError` at the end, with ``result.refused``)
and passed, everything else is written. An export with nothing to send still
checks the target, so a wrong URL or database never looks like success.

Deterministic, stable points: a point depends only on its audit row and the rows
before it (job ``attempts`` is rebuilt from the job's failed -> idle rows). A
series is defined by its tags, which never change for an entity: the run's fill
never changes and its ``rtype`` tag keeps the run types it had before any
backfill (``run.tag_rtypes``). Point times are the audit rows' times, which follow
the store's order (see ``StoreBase._now``), so they never go backwards in a series.

Measurements (``run``, ``job`` and ``handler`` are compatible with the original's Grafana):

- ``run``: tags campaign, fill, rtype, run_number; one string field named after
  the task, holding its status at that transition;
- ``job``: tags campaign, id, run_number, task; fields status, the one-hot
  integers idle/running/done/failed, attempts, generation, reason; one point per
  status change, and no user field (a field of a conflicting type would make
  InfluxDB refuse the point, and the status with it);
- ``job_number`` and ``job_text``: the job's tags; the user fields a transition or
  a field-only update (an audit row from a status to itself) set: numbers and
  booleans as floats in ``job_number``, everything else as text in ``job_text``,
  so that a field's type never changes within a measurement. A field whose value
  changes kind lands in the other measurement: its value is the newer of the two;
- ``handler``: tags campaign, stage, task; fields ok, heartbeat (always 1: its
  ``last()`` gives the time of the last heartbeat), message, actor;
- ``made_by``: tags campaign, run_number, task; one point per claim that recorded
  which version of the workflow made the generation it opened: fields version,
  generation and ``config_<key>`` (each configuration value as text).
- ``attention``: what needed action (the attention model's audit rows: a reason
  appearing, changing level, clearing): tags campaign, reason, run_number, task;
  fields level, severity (0 cleared, 1 info, 2 warning, 3 problem), since (Unix
  seconds), message, command, and deadline and latency when recorded.
- ``latency``: tags campaign, fill, run_number, task; beside the ``run`` point of an
  instance's first move to done, for a task with a deadline and a run with a reference
  (:mod:`ecalstate.deadlines`): fields latency_s (float seconds from the run's or fill's
  end) and deadline_met (integer 1 or 0, so that ``mean()`` is the share). A measurement
  of its own: the overview's ``last(*)`` of ``run`` stays one status per task, and a
  field's name never meets a task's. It depends on the run's end, its fill's and the
  task's deadline as they are when exported (a full re-export after a deadline changed
  rewrites the same points with the new judgement: same series, time and field types).

Targets: InfluxDB 2.x/3.x and 1.8+ through ``influxdb-client``'s v2 write API
(imported only when that target is opened); InfluxDB 1.x through ``POST /write``;
a line-protocol file. Timestamps are nanoseconds, and the precision is always
sent explicitly.
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import os
import random
import re
import signal
import socket
import threading
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, closing, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Optional, Protocol
from urllib.parse import quote as urlquote
from urllib.parse import urlencode, urlsplit

from .appendfile import Batch, append_whole, batch, settle
from .auditlog import DETAIL, RETRY_ROWS, high_water, texts_of
from .clock import parse_moment, to_micros
from .db import Database, Tx
from .deadlines import done_latencies
from .errors import EcalStateError, Invalid
from .limits import MAX_EXPORT_RETRIES, MAX_EXPORT_TIMEOUT, MAX_RETRY_BASE, MAX_WATCH_INTERVAL, chunks
from .lineprotocol import FieldValue, line, safe_key
from .secrets import read_secret_file, redact_url
from .results import MadeBy
from .store import Store

#: the most lines one request carries
BATCH_LIMIT = 5000
#: the most bytes one request carries (InfluxDB 1.x refuses bodies over 25 MB by default); a single point
#: larger than this is refused without sending it
BATCH_BYTES = 10_000_000
#: the file target used when no target is given
DEFAULT_OUT = "ecalstate.lp"
TOKEN_ENV = "ECALSTATE_INFLUX_TOKEN"
USER_ENV = "ECALSTATE_INFLUX_USER"
PASSWORD_ENV = "ECALSTATE_INFLUX_PASSWORD"
JOB_STATUSES = ("idle", "running", "done", "failed")
#: names a job's user field may not take: the tags (InfluxDB 3 refuses a field named like a tag; 1.x makes
#: queries ambiguous) and ``time``; such a field is written as ``user_<name>``
RESERVED_FIELDS = frozenset(("time", "campaign", "task", "run_number", "id"))


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
    """A failure retrying cannot fix: credentials, an unknown database, a file that cannot be written."""


class _Rejected(Exception):
    """The server refused (some of) the points of a request for what they hold; the rest may be written."""


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
    #: points the server refused for what they hold (passed, and reported by an ExportError)
    refused: int = 0
    skipped: int = 0
    stopped: bool = False


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter: ``retries`` more tries, waits growing from ``base`` up to ``cap``."""

    retries: int = 5
    base: float = 1.0
    cap: float = MAX_RETRY_BASE

    def __post_init__(self) -> None:
        if not 0 <= self.retries <= MAX_EXPORT_RETRIES:
            raise Invalid(f"invalid retries {self.retries}: 0 to {MAX_EXPORT_RETRIES}")
        if not (0 <= self.base <= MAX_RETRY_BASE and 0 <= self.cap <= MAX_RETRY_BASE):
            raise Invalid(f"invalid backoff: base and cap from 0 to {MAX_RETRY_BASE} s")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based): half fixed, half random."""
        ceiling = min(self.cap, self.base * 2 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


# --------------------------------------------------------------------------------- targets


class Target(Protocol):
    """Where lines go. ``name`` keys the cursor and never contains a secret."""

    name: str

    def send(self, payload: bytes) -> None:
        """Write newline-separated lines, or raise _Unavailable, _Refused or _Rejected."""

    def check(self) -> None:
        """Prove the target takes writes (reachable, database there, credentials good) without writing a point."""

    def close(self) -> None: ...


class FileTarget:
    """Appends lines to a file (loadable with ``influx write`` or ``POST /write``); each batch is fsynced, and
    written whole or not at all, in step with the cursor: lines a failed or killed export wrote but never
    acknowledged in the database are cut off before the next export writes them again (see
    :mod:`ecalstate.appendfile`). A server keeps one copy of a point sent twice; a file would keep both."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(os.path.expanduser(path))
        self.name = "file:" + self.path
        self._batch: Optional[Batch] = None
        self._upto = 0

    def send(self, payload: bytes) -> None:
        try:
            if self._batch is None:
                append_whole(self.path, payload + b"\n")
            else:
                self._batch.write(payload + b"\n", {"cursor": self._upto})
        except OSError as err:
            raise _Refused(f"cannot write {self.path}: {err.strerror or err}") from None

    def check(self) -> None:
        try:
            append_whole(self.path, b"")
        except OSError as err:
            raise _Refused(f"cannot write {self.path}: {err.strerror or err}") from None

    @contextmanager
    def acknowledging(self, upto: int) -> Iterator[None]:
        """The lines sent in the block count only if it ends normally, its last statement having moved the
        cursor to ``upto``; otherwise they are cut off again."""
        try:
            with batch(self.path) as current:
                self._batch, self._upto = current, upto
                yield
        except OSError as err:  # the cut itself failed: the note left beside the file has the next export do it
            raise _Refused(f"cannot cut {self.path} back: {err.strerror or err}") from None
        finally:
            self._batch = None

    def settle(self, acknowledged: int) -> None:
        """Before an export: cut off the lines of a batch an export killed before its cursor moved (the cursor
        is at ``acknowledged``) left at the end of the file."""
        try:
            settle(self.path, lambda note: acknowledged >= int(note["cursor"]))
        except OSError as err:
            raise _Refused(f"cannot settle {self.path} with its cursor: {err.strerror or err}") from None

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

    def send(self, payload: bytes) -> None:
        reused = self._conn is not None
        try:
            self._post(payload)
            return
        except (OSError, http.client.HTTPException) as err:
            self.close()
            if not reused:
                raise _Unavailable(f"cannot reach InfluxDB at {self.url}: {_reason(err)}") from None
        try:  # a keep-alive connection the server had closed: one fresh try, no wait
            self._post(payload)
        except (OSError, http.client.HTTPException) as err:
            self.close()
            raise _Unavailable(f"cannot reach InfluxDB at {self.url}: {_reason(err)}") from None

    def check(self) -> None:
        self.send(b"")  # InfluxDB answers an empty write like a real one: 204, 401, 404 database not found

    def _post(self, payload: bytes) -> None:
        if self._conn is None:
            self._conn = self._connect()
        try:
            self._conn.request("POST", self._path, body=payload, headers=self._headers)
        except (BrokenPipeError, ConnectionResetError):
            # a server refusing the body (413 too large) answers and closes before reading it all: its
            # answer, not the broken pipe, says what happened (and if there is none, the pipe error stands)
            pass
        response = self._conn.getresponse()
        body = response.read().decode("utf-8", "replace")
        if response.getheader("Connection", "").lower() == "close" or response.status == 413:
            self.close()
        _outcome(response.status, _server_message(body), self.url)

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

    def send(self, payload: bytes) -> None:
        from influxdb_client import WritePrecision

        self._call(lambda: self._write.write(bucket=self.bucket, org=self.org, record=payload,
                                             write_precision=WritePrecision.NS))  # type: ignore[arg-type]

    def check(self) -> None:
        from influxdb_client.service.write_service import WriteService

        service = WriteService(self._client.api_client)  # the write API skips empty writes; the service does not
        self._call(lambda: service.post_write(org=self.org, bucket=self.bucket, body="", precision="ns"))

    def _call(self, write: Callable[[], Any]) -> None:
        from influxdb_client.rest import ApiException
        from urllib3.exceptions import HTTPError

        try:
            write()
        except ApiException as err:
            _outcome(int(err.status or 0), _server_message(err.body or err.reason or ""), self.url)
        except (HTTPError, OSError) as err:
            raise _Unavailable(f"cannot reach InfluxDB at {self.url}: {_reason(err)}") from None

    def close(self) -> None:
        self._client.close()


#: what InfluxDB (1.x, 2.x, 3.x) and VictoriaMetrics say when they refuse points for what they hold
_DATA_REFUSALS = re.compile(r"partial write|unable to parse|field type conflict|beyond retention|too large|"
                            r"max-values-per-tag|invalid (field|tag|measurement|timestamp|line)", re.IGNORECASE)


def _outcome(status: int, message: str, url: str) -> None:
    """Map an HTTP answer: 2xx ok; the points refused (even partly: a partial write) is _Rejected; else an error."""
    if 200 <= status < 300:
        return
    text = f"InfluxDB at {url} answered HTTP {status}" + (f": {message}" if message else "")
    if status == 413 or (status in (400, 422) and _DATA_REFUSALS.search(message)):
        raise _Rejected(text)
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
        if not 0 < self.timeout <= MAX_EXPORT_TIMEOUT:
            raise Invalid(f"invalid timeout {self.timeout}: more than 0 and at most {MAX_EXPORT_TIMEOUT} s")
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
    """A secret from a file (first line; only its owner may read it) or else from the environment; never echoed."""
    if path is None:
        return env.get(env_name) or None
    secret = read_secret_file(path, option).strip()
    if not secret:
        raise Invalid(f"{option} {path} is empty")
    return secret


# --------------------------------------------------------------------------------- points

#: the rows of ``audit_log`` itself, texts as ids and times as integers (:func:`read_batch` resolves them from a
#: cache: through the view ``audit`` a page cost twice as much)
ROWS_SQL = (
    "SELECT a.id, a.ts, a.entity, a.task, a.run_number, a.jid, a.generation, a.from_status, a.to_status,"
    f" a.actor, a.reason, {DETAIL}, a.instance_id, a.job_pk, c.name, r.fill, COALESCE(r.tag_rtypes, r.rtypes)"
    " FROM audit_log a LEFT JOIN campaign c ON c.id = a.campaign_id"
    " LEFT JOIN run r ON r.campaign_id = a.campaign_id AND r.run_number = a.run_number"
    " WHERE a.id > ? AND a.id <= ? ORDER BY a.id LIMIT ?"
)
# the job rows that add an attempt, before a batch (through the partial index ix_audit_retry)
HISTORY_SQL = f"SELECT job_pk FROM audit_log WHERE instance_id IN ({{marks}}) AND {RETRY_ROWS} AND id < ?"

#: (audit id, line): lines keep their row's id, so that a refused point can be named and the cursor placed
Line = tuple[int, str]


def _user_fields(detail: Optional[str]) -> tuple[list[tuple[str, FieldValue]], list[tuple[str, FieldValue]]]:
    """The user fields an audit row set, as (numbers, texts): one type per measurement, for ever."""
    numbers: dict[str, FieldValue] = {}
    texts: dict[str, FieldValue] = {}
    fields = json.loads(detail) if detail else {}
    for raw_key in sorted(fields):
        key = safe_key(str(raw_key))
        value = fields[raw_key]
        if not key or value is None:
            continue
        key = "user_" + key if key in RESERVED_FIELDS else key
        if isinstance(value, (bool, int, float)):
            number = float(value)
            if math.isfinite(number):
                numbers[key] = number
        else:
            texts[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)
    return list(numbers.items()), list(texts.items())


def _points(row: Sequence[Any], attempts: dict[int, int],
            latencies: Optional[Mapping[int, tuple[float, bool]]] = None) -> list[str]:
    """The lines of one audit row (none for an entity the exporter does not know); ``latencies``: the
    (latency, deadline met) of the rows that first moved an instance to done."""
    (audit_id, ts, entity, task, run, jid, gen, from_status, to_status, actor, reason, detail, _iid, job_pk,
     campaign, fill, rtypes) = row
    when = ts * 1000  # integer microseconds
    if entity == "task":
        tags = [("campaign", campaign), ("fill", "" if fill is None else str(fill)), ("rtype", rtypes or ""),
                ("run_number", str(run))]
        out = [line("run", tags, [(task, to_status)], when), *_made_by(campaign, task, run, gen, detail, when)]
        if latencies and audit_id in latencies:
            latency, met = latencies[audit_id]
            out.append(line("latency", [("campaign", campaign), ("fill", "" if fill is None else str(fill)),
                                        ("run_number", str(run)), ("task", task)],
                            [("latency_s", float(latency)), ("deadline_met", int(met))], when))
        return out
    if entity == "job":
        tags = [("campaign", campaign), ("id", str(jid)), ("run_number", str(run)), ("task", task)]
        out = []
        if from_status != to_status:  # a status change (from a status to itself: a field-only update)
            if from_status == "failed" and to_status == "idle":
                attempts[job_pk] = attempts.get(job_pk, 1) + 1
            values: list[tuple[str, FieldValue]] = [("status", to_status)]
            values += [(s, int(s == to_status)) for s in JOB_STATUSES]
            values += [("attempts", attempts.get(job_pk, 1)), ("generation", int(gen or 0)),
                       ("reason", reason or "")]
            out.append(line("job", tags, values, when))
        numbers, texts = _user_fields(detail)
        if numbers:
            out.append(line("job_number", tags, numbers, when))
        if texts:
            out.append(line("job_text", tags, texts, when))
        return out
    if entity == "attention":
        return [_attention_point(campaign, task, run, to_status, reason, detail, when)]
    if entity == "handler":
        stage = json.loads(detail).get("stage", "") if detail else ""
        values = [("ok", to_status == "ok"), ("heartbeat", 1), ("message", reason or ""), ("actor", actor or "")]
        return [line("handler", [("campaign", campaign), ("stage", str(stage)), ("task", task)], values, when)]
    return []


def _made_by(campaign: str, task: str, run: int, generation: Optional[int], detail: Optional[str],
             when: int) -> list[str]:
    """A claim's record of what made its generation, as a ``made_by`` point of its own (never beside a status):
    the version and every configuration value as text (a field's type never changes), the generation."""
    made = MadeBy.from_detail(json.loads(detail)) if detail else None
    if made is None:
        return []
    values: list[tuple[str, FieldValue]] = [("generation", int(generation or 0))]
    if made.version:
        values.append(("version", str(made.version)))
    for key, value in made.config.items():
        if safe_key(str(key)):
            values.append(("config_" + safe_key(str(key)), value if isinstance(value, str) else
                           json.dumps(value, sort_keys=True, ensure_ascii=False)))
    tags = [("campaign", campaign), ("run_number", str(run)), ("task", task)]
    return [line("made_by", tags, sorted(values), when)]


#: an ``attention`` point's severity by level (0: the reason cleared): a number Grafana can plot and threshold
SEVERITY = {"clear": 0, "info": 1, "warning": 2, "problem": 3}


def _attention_point(campaign: str, task: str, run: Optional[int], level: str, code: str, detail: Optional[str],
                     when: int) -> str:
    """What needed action, as the attention model recorded it: one series per instance and reason (tags campaign,
    reason, run_number, task); fields level and severity, since (Unix seconds), the words and the command, and the
    deadline (Unix seconds) and latency (seconds) when the row carries them. Every field is always there, with one
    type, so a replay writes the same point and no field changes type."""
    data = json.loads(detail) if detail else {}
    since = parse_moment(data.get("since"))
    values: list[tuple[str, FieldValue]] = [
        ("level", level), ("severity", SEVERITY.get(level, 0)),
        ("since", to_micros(since) // 1_000_000 if since else 0),
        ("message", str(data.get("message") or "")), ("command", str(data.get("command") or ""))]
    deadline = parse_moment(data.get("deadline"))
    if deadline:
        values.append(("deadline", to_micros(deadline) // 1_000_000))
    if isinstance(data.get("latency"), (int, float)) and not isinstance(data.get("latency"), bool):
        values.append(("latency", float(data["latency"])))
    tags = [("campaign", campaign), ("reason", code), ("run_number", "" if run is None else str(run)), ("task", task)]
    return line("attention", tags, values, when)


#: the positions of ROWS_SQL's text ids (entity, task, from_status, to_status, actor, reason)
_TEXT_COLUMNS = (2, 3, 7, 8, 9, 10)


def _with_texts(tx: Tx, rows: list[Any], known: dict[int, str]) -> list[tuple[Any, ...]]:
    """ROWS_SQL's rows with their texts in place of the ids."""
    ids = {r[i] for r in rows for i in _TEXT_COLUMNS}
    ids.discard(None)  # a creation row's from_status
    t = texts_of(tx, ids, known).get  # get(None): None
    return [(r[0], r[1], t(r[2]), t(r[3]), r[4], r[5], r[6], t(r[7]), t(r[8]), t(r[9]), t(r[10]), *r[11:])
            for r in rows]


def _attempts(tx: Tx, rows: Sequence[Sequence[Any]]) -> dict[int, int]:
    """The attempts of each job of the batch as of just before the batch: one more per failed -> idle row."""
    instances = sorted({r[12] for r in rows if r[2] == "job" and r[12] is not None})
    attempts: dict[int, int] = {}
    for chunk in chunks(instances):
        sql = HISTORY_SQL.format(marks=",".join("?" * len(chunk)))
        for (job_pk,) in tx.all(sql, (*chunk, rows[0][0])):
            attempts[job_pk] = attempts.get(job_pk, 1) + 1
    return attempts


def read_batch(db: Database, after: int, upto: int, limit: int) -> tuple[list[Line], int, int]:
    """Lines for the audit rows in (after, upto], at most ``limit`` rows: (lines, last id read, rows skipped)."""
    with db.tx(write=False) as tx:
        rows = _with_texts(tx, tx.all(ROWS_SQL, (after, upto, limit)), db.audit_strings)
        attempts = _attempts(tx, rows)
        latencies = done_latencies(tx, {r[0]: r[12] for r in rows if r[2] == "task" and r[8] == "done"
                                        and r[12] is not None})
    lines: list[Line] = []
    skipped = 0
    for row in rows:
        texts = _points(row, attempts, latencies)
        skipped += not texts
        lines += [(row[0], text) for text in texts]
    return lines, (rows[-1][0] if rows else after), skipped


# --------------------------------------------------------------------------------- export


def export(
    store: Store,
    target: Target,
    full: bool = False,
    batch_size: int = BATCH_LIMIT,
    retry: RetryPolicy = RetryPolicy(),
    stop: Optional[threading.Event] = None,
    on_batch: Optional[Callable[[int, int], None]] = None,
    batch_bytes: int = BATCH_BYTES,
    progress: Optional[Callable[[int, int], None]] = None,
) -> ExportResult:
    """Send the audit rows the target has not acknowledged yet (all of them with ``full``).

    ``on_batch(points, cursor)`` is called after each acknowledged request, and ``progress(done, total)`` with the
    audit ids passed of those to send (a full export of a year takes minutes); ``stop`` ends the export
    cleanly between requests (or while waiting to retry), keeping what was acknowledged. Points the
    server refuses for what they hold are passed and reported: an :class:`ExportError` (not permanent)
    once everything else is written.
    """
    if not 1 <= batch_size <= BATCH_LIMIT:
        raise Invalid(f"invalid batch size {batch_size}: 1 to {BATCH_LIMIT} lines")
    if batch_bytes < 1:
        raise Invalid(f"invalid batch size {batch_bytes}: at least 1 byte")
    stop = stop or threading.Event()
    db = store.db
    before = store.cursor(target.name)
    if isinstance(target, FileTarget):
        try:
            target.settle(before)
        except _Refused as err:  # another export at work on the file, or a disk error: it may pass
            raise ExportError(f"export to {target.name} failed: {err}; the cursor stays at {before}", False) from None
    if full and before:
        store.set_cursor(target.name, 0, forward_only=False)
    position = 0 if full else before
    with db.tx(write=False) as tx:
        high = high_water(tx)
    start = position
    if progress is not None:
        progress(0, high - start)
    points = batches = skipped = 0
    refused: list[tuple[int, str]] = []

    def result(stopped: bool = False) -> ExportResult:
        return ExportResult(target.name, points, batches, before, position, full, len(refused), skipped, stopped)

    def failed(err: Exception) -> ExportError:
        permanent = isinstance(err, _Refused)
        attempts = retry.retries + 1
        tries = "" if permanent else f" after {attempts} attempt{'s' if attempts > 1 else ''}"
        sent = f", after {points} points were acknowledged" if points else ""
        return ExportError(f"export to {target.name} failed{tries}: {err}; cursor stays at {position}{sent}; "
                           "the next export sends what is missing", permanent, result())

    with closing(_prefetched(db, position, high, batch_size)) as batches_read:
        for lines, last, unknown in batches_read:
            skipped += unknown
            for chunk, upto in _requests(lines, last, batch_size, batch_bytes):
                if stop.is_set():
                    return result(stopped=True)
                try:
                    with _acknowledging(target, upto):
                        sent, lost = _deliver(target, chunk, batch_bytes, retry, stop)
                        store.set_cursor(target.name, upto)
                except _Stopped:
                    return result(stopped=True)
                except (_Unavailable, _Refused) as err:
                    raise failed(err) from None
                refused += lost
                points += sent
                batches += bool(chunk)
                position = upto
                if on_batch is not None:
                    on_batch(sent, position)
                if progress is not None:
                    progress(position - start, high - start)
    if not points and not refused:
        try:  # nothing was sent: a wrong URL, database or credentials must not look like success
            _retrying(target.check, retry, stop)
        except _Stopped:
            return result(stopped=True)
        except (_Unavailable, _Refused) as err:
            raise failed(err) from None
    if refused:
        ids = ", ".join(str(i) for i in sorted({i for i, _ in refused})[:10]) + (", ..." if len(refused) > 10 else "")
        count = f"{len(refused)} point{'s' if len(refused) > 1 else ''}"
        raise ExportError(f"export to {target.name}: refused {count} that can never be written (audit rows {ids}): "
                          f"{refused[0][1]}; everything else was written (cursor {before} -> {position})",
                          False, result())
    return result()


def _acknowledging(target: Target, upto: int) -> AbstractContextManager[None]:
    """Around a request and its cursor's commit: a file's lines stand or fall with the commit (a server keeps one
    copy of a point sent again, a file would keep two)."""
    return target.acknowledging(upto) if isinstance(target, FileTarget) else nullcontext()


def _requests(lines: Sequence[Line], last: int, size: int, limit: int) -> Iterator[tuple[list[Line], int]]:
    """Split a batch's lines into requests of at most ``size`` lines and ``limit`` bytes (a larger line goes
    alone, to be refused); each with the cursor it allows: every row up to it is then wholly sent.

    A row's lines (at most three) go in one request, even past ``size``: the cursor counts whole rows, so the
    first lines of a row cut in two would be sent again with the rest after a failure between the requests."""
    chunk: list[Line] = []
    used = 0
    row = 0  # where the chunk's last row begins
    for audit_id, text in lines:
        cost = len(text.encode("utf-8")) + 1
        if chunk and chunk[-1][0] != audit_id:
            row = len(chunk)
        if chunk and row == len(chunk) and len(chunk) >= size:  # full: cut before this row
            yield chunk, audit_id - 1
            chunk, used, row = [], 0, 0
        elif chunk and used + cost > limit:  # cut before this row, or in it when it fills a request alone
            cut = row or len(chunk)
            yield chunk[:cut], audit_id - 1
            chunk, row = chunk[cut:], 0
            used = sum(len(t.encode("utf-8")) + 1 for _, t in chunk)
        chunk.append((audit_id, text))
        used += cost
    yield chunk, last


def _deliver(
    target: Target, lines: Sequence[Line], limit: int, retry: RetryPolicy, stop: threading.Event
) -> tuple[int, list[tuple[int, str]]]:
    """Send lines; a refused request is split in halves until its refused points are found.

    Returns (points written, [(audit id, why) of each refused point]). Resending the halves is harmless:
    the points the server had kept are written again identically."""
    if not lines:
        return 0, []
    payload = "\n".join(text for _, text in lines).encode("utf-8")
    if len(lines) == 1 and len(payload) > limit:
        why = f"a point of {len(payload) / 1e6:.1f} MB is too large for one request (at most {limit / 1e6:.1f} MB)"
        return 0, [(lines[0][0], why)]
    try:
        _retrying(lambda: target.send(payload), retry, stop)
    except _Rejected as err:
        if len(lines) == 1:
            return 0, [(lines[0][0], str(err))]
        half = len(lines) // 2
        first, lost = _deliver(target, lines[:half], limit, retry, stop)
        second, more = _deliver(target, lines[half:], limit, retry, stop)
        return first + second, lost + more
    return len(lines), []


def _prefetched(db: Database, after: int, upto: int, limit: int) -> Generator[tuple[list[Line], int, int], None, None]:
    """The batches of (after, upto] in order; the next one is read in a worker thread while the
    current one is sent, so formatting and the server's work overlap (reads only: nothing is lost
    when the export stops early)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ecalstate-export") as pool:
        pending: Optional[Future[tuple[list[Line], int, int]]] = pool.submit(read_batch, db, after, upto, limit)
        while pending is not None:
            batch = pending.result()
            last = batch[1]
            pending = pool.submit(read_batch, db, last, upto, limit) if after < last < upto else None
            if last > after:
                yield batch
            after = last


def _retrying(call: Callable[[], None], retry: RetryPolicy, stop: threading.Event) -> None:
    attempt = 0
    while True:
        try:
            call()
            return
        except _Unavailable:
            attempt += 1
            if attempt > retry.retries:
                raise
            if stop.wait(retry.delay(attempt)):
                raise _Stopped() from None


def watch(
    store: Store,
    target: Target,
    interval: float,
    stop: threading.Event,
    on_result: Callable[[Optional[ExportResult], Optional[ExportError]], None],
    full: bool = False,
    batch_size: int = BATCH_LIMIT,
    retry: RetryPolicy = RetryPolicy(),
    batch_bytes: int = BATCH_BYTES,
) -> int:
    """Export every ``interval`` seconds until ``stop`` is set; returns the number of cycles.

    An outage, and points the server refused (passed: the export goes on), are reported through
    ``on_result``; a permanent refusal (credentials, unknown database) raises, since waiting will not fix it.
    """
    if not 0 < interval <= MAX_WATCH_INTERVAL:
        raise Invalid(f"invalid watch interval {interval}: more than 0 and at most {MAX_WATCH_INTERVAL} s")
    cycles = 0
    while not stop.is_set():
        try:
            result = export(store, target, full=full and cycles == 0, batch_size=batch_size, retry=retry, stop=stop,
                            batch_bytes=batch_bytes)
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
