"""A local stand-in for CMS OMS: the documented JSON:API answers over a data set the test controls.

``GET /agg/api/v1/<resource>`` implements ``filter[attr][OP]=value`` (EQ NEQ LT GT LE GE LIKE CT, ANDed),
``sort=attr,-attr``, ``page[offset]``/``page[limit]``, ``fields=a,b`` or ``fields[<resource>]=a,b``, and
answers ``{"data": [{"id", "type", "attributes"}], "links": {...}, "meta": {...}}``. With a client
registered, every API call needs ``Authorization: Bearer <token>`` from ``POST /token``
(``grant_type=client_credentials``); :meth:`OmsServer.expire_tokens` makes the issued ones stale (401),
:meth:`OmsServer.fail_next` answers the next calls with a server error.
"""

from __future__ import annotations

import json
import secrets
import threading
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


def _number(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


class OmsServer:
    """The data (``runs``/``fills``: lists of attribute dicts), the registered client, and what was asked."""

    def __init__(self, client_id: Optional[str] = None, secret: Optional[str] = None) -> None:
        self.data: dict[str, list[dict[str, Any]]] = {"runs": [], "fills": []}
        self.client = (client_id, secret) if client_id else None
        self.tokens: set[str] = set()
        self.token_requests = 0
        self.requests: list[dict[str, list[str]]] = []
        self.failures: list[int] = []  # status per coming API call: 0 answers, else fails with it
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

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

    def run(self, number: int, fill: int, end: Optional[str] = "2026-06-01T12:00:00Z", **attrs: Any) -> dict[str, Any]:
        """Add (or replace) a run; ``end=None`` is a run still being taken."""
        row = {"run_number": number, "fill_number": fill, "start_time": "2026-06-01T10:00:00Z", "end_time": end,
               "recorded_lumi": 1.5, "components": ["DAQ", "ECAL", "TRACKER"], "sequence": "GLOBAL-RUN",
               "l1_hlt_mode": "collisions2026", **attrs}
        with self.lock:
            self.data["runs"] = [r for r in self.data["runs"] if r["run_number"] != number] + [row]
        return row

    def fill(self, number: int, end: Optional[str] = None) -> None:
        with self.lock:
            self.data["fills"] = [f for f in self.data["fills"] if f["fill_number"] != number] + [
                {"fill_number": number, "start_time": "2026-06-01T09:00:00Z", "end_time": end}]

    def answer(self, resource: str, query: dict[str, list[str]]) -> dict[str, Any]:
        with self.lock:
            rows = [dict(r) for r in self.data[resource]]
        for name, values in query.items():
            if name.startswith("filter["):
                attr, op = name[len("filter["):-1].split("][")
                for value in values:
                    test = OPS[op.lower()]
                    rows = [r for r in rows if r.get(attr) is not None and test(_cmp(r[attr]), _number(value))]
        for key in reversed((query.get("sort") or [KEYS[resource]])[0].split(",")):
            rows.sort(key=lambda r: (r.get(key.lstrip("-")) is None, r.get(key.lstrip("-"))),
                      reverse=key.startswith("-"))
        total = len(rows)
        offset = int(query.get("page[offset]", ["0"])[0])
        limit = int(query.get("page[limit]", ["10"])[0])
        page = rows[offset:offset + limit]
        wanted = (query.get("fields") or query.get(f"fields[{resource}]") or [""])[0]
        if wanted:
            page = [{k: r.get(k) for k in wanted.split(",")} | {KEYS[resource]: r[KEYS[resource]]} for r in page]
        links = {"self": f"/agg/api/v1/{resource}?page[offset]={offset}"}
        if offset + limit < total:
            links["next"] = f"/agg/api/v1/{resource}?page[offset]={offset + limit}&page[limit]={limit}"
        return {"data": [{"id": str(r[KEYS[resource]]), "type": resource, "attributes": r} for r in page],
                "links": links, "meta": {"totalResourceCount": total}}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

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
                resource = url.path.rsplit("/", 1)[-1]
                with server.lock:
                    server.requests.append({"path": [url.path], **query})
                    status = server.failures.pop(0) if server.failures else 0
                    auth = self.headers.get("Authorization", "")
                    refused = server.client is not None and auth.removeprefix("Bearer ") not in server.tokens
                if status:
                    return self._send(status, {"errors": [{"title": "Service Unavailable"}]})
                if refused:
                    return self._send(401, {"errors": [{"title": "token expired or missing"}]})
                if not url.path.startswith("/agg/api/v1/") or resource not in KEYS:
                    return self._send(404, {"errors": [{"title": f"unknown resource {resource}"}]})
                self._send(200, server.answer(resource, query))

        return Handler


def _cmp(value: Any) -> Any:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


@contextmanager
def oms_server(client_id: Optional[str] = None, secret: Optional[str] = None) -> Iterator[OmsServer]:
    server = OmsServer(client_id, secret)
    thread = threading.Thread(target=server.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
