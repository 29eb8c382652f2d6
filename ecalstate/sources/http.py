"""One HTTP exchange that a server cannot stretch: it ends by a deadline, whole, and its answer is bounded.

A socket timeout bounds each read only: a server sending a byte every half second never trips it. Here a
watchdog hangs the socket up when the deadline passes, whatever phase the exchange is in (sending, the
status line, the headers, the body), and the body is read in pieces up to a size bound. No redirect is
followed here: the caller decides (see :mod:`ecalstate.sources.oms`), so credentials never travel by
themselves to where a server points.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Optional

#: the statuses that carry a ``Location`` to follow
REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}


class TimedOut(Exception):
    """The deadline passed before the exchange ended."""


class TooLarge(Exception):
    """The answer is larger than the bound."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    location: Optional[str] = None


def exchange(method: str, url: str, headers: dict[str, str], body: Optional[bytes], until: float,
             max_bytes: int) -> Answer:
    """``method url`` ended by ``until`` (``time.monotonic``): connect, send, headers and the whole body.

    Raises :class:`TimedOut`, :class:`TooLarge`, ``OSError`` or ``http.client.HTTPException`` (unreachable,
    the connection dropped, an answer cut short), ``ValueError`` for a URL that is not http(s).
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {where(url)}")
    remaining = until - time.monotonic()
    if remaining <= 0:
        raise TimedOut()
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = kind(parts.hostname, parts.port, timeout=remaining)
    fired = threading.Event()
    watchdog: Optional[threading.Timer] = None
    try:
        conn.connect()  # bounded by the socket timeout (name resolution aside)
        sock = conn.sock  # kept: the connection lets go of it once an answer says it closes

        def hang_up() -> None:
            fired.set()
            try:  # the plain socket's shutdown, under TLS too: the blocked read returns at once
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass

        watchdog = threading.Timer(max(until - time.monotonic(), 0.0), hang_up)
        watchdog.daemon = True
        watchdog.start()
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request(method, target, body=body, headers=headers)
        answer = conn.getresponse()
        declared = answer.getheader("Content-Length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise TooLarge()
        data = bytearray()
        while chunk := answer.read1(65536):
            data += chunk
            if len(data) > max_bytes:
                raise TooLarge()
        if fired.is_set():
            raise TimedOut()
        if answer.length:  # the connection ended before the length it announced
            raise http.client.IncompleteRead(bytes(data), answer.length)
        return Answer(answer.status, bytes(data), answer.getheader("Location"))
    except (OSError, http.client.HTTPException):
        if fired.is_set() or time.monotonic() >= until:
            raise TimedOut() from None
        raise
    finally:
        if watchdog is not None:
            watchdog.cancel()
        conn.close()


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL, default ports filled in: what "the same server" means for credentials."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), _port(parts) or _DEFAULT_PORTS.get(scheme, 0)


def site(url: str) -> str:
    """scheme://host:port of a URL: the server a redirect points at."""
    scheme, host, port = origin(url)
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def where(url: str) -> str:
    """scheme://host[:port]/path of a URL, without its user, password or query (long, or not for the log)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = _port(parts)
    return f"{parts.scheme}://{host}{f':{port}' if port else ''}{parts.path}"


def _port(parts: urllib.parse.SplitResult) -> Optional[int]:
    try:
        return parts.port
    except ValueError:  # not a number, or beyond 65535
        return -1


def is_loopback(url: str) -> bool:
    """Whether the URL's host is this machine (``localhost`` or a loopback address)."""
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
