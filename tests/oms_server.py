"""A local stand-in for CMS OMS: the documented JSON:API answers over a data set the test controls.

``GET /agg/api/v1/<resource>`` implements ``filter[attr][OP]=value`` (EQ NEQ LT GT LE GE LIKE CT, any case,
ANDed), ``sort=attr,-attr``, ``page[offset]``/``page[limit]``, ``fields=a,b`` or ``fields[<resource>]=a,b``, and
answers ``{"data": [{"id", "type", "attributes"}], "links": {...}, "meta": {...}}``.
``GET /agg/api/v1/<resource>/meta`` answers ``{"meta": {"fields": {name: {...}}}}``, which the OMS team's client
(``omsapi``) loads before every query and checks attribute names against. With a client registered, every API
call needs ``Authorization: Bearer <token>`` from ``POST /token`` (``grant_type=client_credentials``, as
``omsapi``'s ``auth_oidc`` sends it); :meth:`OmsServer.expire_tokens` makes the issued ones stale (401).

It can be hostile, as a broken or compromised server would be: :meth:`OmsServer.fail_next` answers server errors,
:meth:`~OmsServer.redirect_next` redirects (elsewhere), :meth:`~OmsServer.trickle_next` sends its answer a byte
at a time, :attr:`~OmsServer.reorder` ignores the sort asked, :attr:`~OmsServer.unpaged` the page size, and rows
hold whatever a test puts in them (NaN and
Infinity are sent as the bare literals Python's encoder writes). Every API call's headers are kept in
:attr:`~OmsServer.seen`, so a test sees what a client sent to which host.
"""

from __future__ import annotations

import json
import math
import secrets
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

OPS = {
    "eq": lambda a, b: a == b, "neq": lambda a, b: a != b, "lt": lambda a, b: a < b, "gt": lambda a, b: a > b,
    "le": lambda a, b: a <= b, "ge": lambda a, b: a >= b,
    "like": lambda a, b: str(b).replace("%", "") in str(a), "ct": lambda a, b: str(b) in str(a),
}
KEYS = {"runs": "run_number", "fills": "fill_number"}
#: the attributes /meta lists besides those the rows hold (OMS's own names, with their types)
FIELDS = {
    "runs": {"run_number": "INTEGER", "fill_number": "INTEGER", "start_time": "STRING", "end_time": "STRING",
             "recorded_lumi": "DOUBLE", "delivered_lumi": "DOUBLE", "last_lumisection_number": "INTEGER",
             "stable_beam": "BOOLEAN", "energy": "DOUBLE", "b_field": "DOUBLE", "hlt_key": "STRING",
             "l1_hlt_mode": "STRING", "components": "LIST", "sequence": "STRING", "duration": "INTEGER"},
    "fills": {"fill_number": "INTEGER", "start_time": "STRING", "end_time": "STRING", "fill_type_runtime": "STRING",
              "energy": "DOUBLE", "stable_beams": "BOOLEAN"},
}


def _number(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def _order(value: Any) -> tuple[int, Any]:
    """A sort key that never raises: numbers, then text, then nothing (a bad row sorts somewhere, as it would)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value):
        return 0, float(value)
    return (2, "") if value is None else (1, str(value))


class OmsServer:
    """The data (``runs``/``fills``: lists of attribute dicts), the registered client, and what was asked."""

    def __init__(self, client_id: Optional[str] = None, secret: Optional[str] = None, host: str = "127.0.0.1") -> None:
        self.data: dict[str, list[dict[str, Any]]] = {"runs": [], "fills": []}
        self.client = (client_id, secret) if client_id else None
        self.tokens: set[str] = set()
        self.token_requests = 0
        self.requests: list[dict[str, list[str]]] = []
        #: (path, headers) of every GET, meta and refused ones included
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.failures: list[int] = []  # status per coming API call: 0 answers, else fails with it
        self.redirects: list[tuple[int, str]] = []  # (status, base URL) per coming API call
        self.trickles: list[tuple[float, float]] = []  # (seconds per byte, give up after) per coming API call
        #: answer rows in the reverse of the order asked (a server that ignores ``sort``)
        self.reorder = False
        #: answer every row at once (a server that ignores ``page[limit]``)
        self.unpaged = False
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer((host, 0), self._handler())
        self.url = f"http://{host}:{self.httpd.server_address[1]}"

    @property
    def api_url(self) -> str:
        return self.url + "/agg/api"

    @property
    def token_url(self) -> str:
        return self.url + "/token"

    def expire_tokens(self) -> None:
        with self.lock:
            self.tokens.clear()

    def fail_next(self, count: int, status: int = 503, after: int = 0) -> None:
        """Answer the ``after`` next API calls, then fail ``count`` calls with ``status``."""
        with self.lock:
            self.failures = [0] * after + [status] * count

    def redirect_next(self, base: str, count: int = 1, status: int = 302) -> None:
        """Answer the ``count`` next API calls with a redirect to ``base`` + the same path and query."""
        with self.lock:
            self.redirects = [(status, base)] * count

    def trickle_next(self, per_byte: float, give_up: float, count: int = 1) -> None:
        """Send the ``count`` next API answers one byte every ``per_byte`` s; close after ``give_up`` s."""
        with self.lock:
            self.trickles = [(per_byte, give_up)] * count

    def run(self, number: Any, fill: Any, end: Optional[str] = "2026-06-01T12:00:00Z", **attrs: Any) -> dict[str, Any]:
        """Add (or replace) a run; ``end=None`` is a run still being taken. Any value goes (bad rows too)."""
        row = {"run_number": number, "fill_number": fill, "start_time": "2026-06-01T10:00:00Z", "end_time": end,
               "recorded_lumi": 1.5, "components": ["DAQ", "ECAL", "TRACKER"], "sequence": "GLOBAL-RUN",
               "l1_hlt_mode": "collisions2026", **attrs}
        with self.lock:
            self.data["runs"] = [r for r in self.data["runs"] if r.get("run_number") != number] + [row]
        return row

    def fill(self, number: Any, end: Optional[str] = None, **attrs: Any) -> None:
        with self.lock:
            self.data["fills"] = [f for f in self.data["fills"] if f.get("fill_number") != number] + [
                {"fill_number": number, "start_time": "2026-06-01T09:00:00Z", "end_time": end, **attrs}]

    def meta(self, resource: str) -> dict[str, Any]:
        with self.lock:
            names = dict(FIELDS[resource]) | {k: "STRING" for r in self.data[resource] for k in r if k not in
                                              FIELDS[resource]}
        return {"meta": {"fields": {name: {"type": kind, "title": name.replace("_", " "), "searchable": True,
                                           "sortable": True} for name, kind in names.items()}}}

    def answer(self, resource: str, query: dict[str, list[str]]) -> dict[str, Any]:
        with self.lock:
            rows = [dict(r) for r in self.data[resource]]
        for name, values in query.items():
            if name.startswith("filter["):
                attr, op = name[len("filter["):-1].split("][")
                for value in values:
                    rows = [r for r in rows if _keeps(OPS[op.lower()], r.get(attr), value)]
        for key in reversed((query.get("sort") or [KEYS[resource]])[0].split(",")):
            rows.sort(key=lambda r: _order(r.get(key.lstrip("-"))), reverse=key.startswith("-"))
        if self.reorder:
            rows.reverse()
        total = len(rows)
        offset = int(query.get("page[offset]", ["0"])[0])
        limit = int(query.get("page[limit]", ["10"])[0])
        page = rows[offset:] if self.unpaged else rows[offset:offset + limit]
        wanted = (query.get("fields") or query.get(f"fields[{resource}]") or [""])[0]
        key = KEYS[resource]
        if wanted:
            page = [{k: r.get(k) for k in wanted.split(",")} | {key: r.get(key)} for r in page]
        links = {"self": f"/agg/api/v1/{resource}?page[offset]={offset}"}
        if offset + limit < total:
            links["next"] = f"/agg/api/v1/{resource}?page[offset]={offset + limit}&page[limit]={limit}"
        return {"data": [{"id": str(r.get(key)), "type": resource, "attributes": r} for r in page],
                "links": links, "meta": {"totalResourceCount": total}}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any, trickle: Optional[tuple[float, float]] = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if trickle is None:
                    self.wfile.write(data)
                    return
                per_byte, give_up = trickle
                until = time.monotonic() + give_up
                try:
                    for byte in data:
                        if time.monotonic() > until:
                            break  # hang up mid-answer
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(per_byte)
                except OSError:
                    pass  # the client went away
                self.close_connection = True

            def do_POST(self) -> None:
                form = urllib.parse.parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
                with server.lock:
                    server.token_requests += 1
                    client = server.client
                    given = (form.get("client_id", [""])[0], form.get("client_secret", [""])[0])
                    if (self.path != "/token" or form.get("grant_type") != ["client_credentials"]
                            or client is None or given != client):
                        return self._send(401, {"error": "invalid_client"})
                    token = secrets.token_hex(16)
                    server.tokens.add(token)
                self._send(200, {"access_token": token, "expires_in": 1200, "token_type": "Bearer"})

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                parts = url.path.removeprefix("/agg/api/v1/").split("/")
                with server.lock:
                    server.seen.append((url.path, dict(self.headers.items())))
                    redirect = server.redirects.pop(0) if server.redirects else None
                    if redirect is None and parts[-1] != "meta":
                        server.requests.append({"path": [url.path], **query})
                    status = server.failures.pop(0) if server.failures and parts[-1] != "meta" else 0
                    trickle = server.trickles.pop(0) if server.trickles and parts[-1] != "meta" else None
                    auth = self.headers.get("Authorization", "")
                    refused = server.client is not None and auth.removeprefix("Bearer ") not in server.tokens
                if redirect is not None:
                    self.send_response(redirect[0])
                    self.send_header("Location", redirect[1] + self.path)
                    self.send_header("Content-Length", "0")
                    return self.end_headers()
                if status:
                    return self._send(status, {"errors": [{"title": "Service Unavailable"}]})
                if refused:
                    return self._send(401, {"errors": [{"title": "token expired or missing"}]})
                if not url.path.startswith("/agg/api/v1/") or parts[0] not in KEYS or len(parts) > 2 or (
                        len(parts) == 2 and parts[1] != "meta"):
                    return self._send(404, {"errors": [{"title": f"unknown resource {url.path}"}]})
                if len(parts) == 2:
                    return self._send(200, server.meta(parts[0]))
                self._send(200, server.answer(parts[0], query), trickle)

        return Handler


def _keeps(test: Any, value: Any, asked: str) -> bool:
    """Whether a filter keeps a row; a value of the wrong type, or none, is let through, as a broken server would."""
    if value is None or isinstance(value, bool):
        return True
    try:
        return bool(test(_cmp(value), _number(asked)))
    except TypeError:
        return True


def _cmp(value: Any) -> Any:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


@contextmanager
def oms_server(client_id: Optional[str] = None, secret: Optional[str] = None,
               host: str = "127.0.0.1") -> Iterator[OmsServer]:
    server = OmsServer(client_id, secret, host)
    thread = threading.Thread(target=server.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
