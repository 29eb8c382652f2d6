"""CMS OMS (Online Monitoring System) as a run source, and the small REST client it uses.

The client speaks OMS's JSON:API dialect, with the call shape of the public ``omsapi`` client
(``OMSAPI(url).query("runs").filter(attr, value, op).attrs([...]).sort(attr).paginate(page, per_page)
.data().json()``) so that scripts written against it (through ``QueryOMS``) keep working:
``GET <url>/<version>/<resource>?filter[attr][op]=v&sort=-attr&page[offset]=N&page[limit]=M&fields=a,b``
answered by ``{"data": [{"id", "type", "attributes": {...}}], "links": {...}, "meta": {...}}``.

Authentication is OIDC client credentials (POST ``grant_type=client_credentials`` to the token
endpoint, then ``Authorization: Bearer``); a 401 renews the token once. The client secret comes from
the environment or a file only, and never appears in a message. Server errors and network failures are
retried with backoff, then reported as :class:`~ecalstate.sources.SourceError`: a sync that fails writes
nothing, and the next one starts from the same cursor.

Which OMS attribute becomes which run metadata key is :class:`RunMapping` (a JSON file overrides it):
the attribute names beyond run_number, fill_number, start/end time and luminosity are not verified
against the real OMS, so they are configuration, not code.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from ..results import RunSpec
from . import SourceBatch, SourceError, SourceRun, SourceState

DEFAULT_URL = "https://cmsoms.cern.ch/agg/api"
TOKEN_URL = "https://auth.cern.ch/auth/realms/cern/api-access/token"
AUDIENCE = "cmsoms-prod"
OPERATORS = ("EQ", "NEQ", "LT", "GT", "LE", "GE", "LIKE", "CT")
#: environment variables of the OMS connection (the secret, or the file holding it, never as an argument)
ENV_URL, ENV_CLIENT_ID = "ECALSTATE_OMS_URL", "ECALSTATE_OMS_CLIENT_ID"
ENV_SECRET, ENV_SECRET_FILE = "ECALSTATE_OMS_CLIENT_SECRET", "ECALSTATE_OMS_CLIENT_SECRET_FILE"
ENV_TOKEN_URL, ENV_AUDIENCE = "ECALSTATE_OMS_TOKEN_URL", "ECALSTATE_OMS_AUDIENCE"
#: how many of the newest runs still being taken a sync reads again (one request each)
ONGOING_REREAD = 20


class Response:
    """An OMS answer: ``status_code``, ``text`` and ``json()``, as the public client's ``requests`` response."""

    def __init__(self, status_code: int, text: str, url: str) -> None:
        self.status_code = status_code
        self.text = text
        self.url = url

    def json(self) -> Any:
        try:
            return json.loads(self.text)
        except ValueError:
            raise SourceError(f"OMS answered {_where(self.url)} with something that is not JSON") from None


@dataclass(frozen=True)
class Credentials:
    """An OIDC client registered for OMS; ``repr`` never shows the secret."""

    client_id: str
    secret: str = field(repr=False)
    token_url: str = TOKEN_URL
    audience: str = AUDIENCE

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> Optional["Credentials"]:
        """From ``ECALSTATE_OMS_CLIENT_ID`` and ``ECALSTATE_OMS_CLIENT_SECRET(_FILE)``; None without a client id
        (an OMS endpoint inside the experiment's network needs no token)."""
        env = os.environ if env is None else env
        client_id = env.get(ENV_CLIENT_ID, "").strip()
        if not client_id:
            return None
        secret = env.get(ENV_SECRET, "")
        path = env.get(ENV_SECRET_FILE, "")
        if path:
            try:
                with open(path, encoding="utf-8") as handle:
                    secret = handle.read().strip()
            except OSError as err:
                raise SourceError(f"cannot read the OMS client secret file {path}: {err.strerror}") from None
        if not secret:
            raise SourceError(f"{ENV_CLIENT_ID} is set but no secret: set {ENV_SECRET_FILE} (or {ENV_SECRET})")
        return cls(client_id, secret, env.get(ENV_TOKEN_URL) or TOKEN_URL, env.get(ENV_AUDIENCE) or AUDIENCE)


class OMSAPI:
    """The OMS REST API at ``api_url`` (``.../agg/api``); ``query(resource)`` starts a query."""

    def __init__(
        self, api_url: str = DEFAULT_URL, api_version: str = "v1", credentials: Optional[Credentials] = None,
        timeout: float = 30.0, retries: int = 3, backoff: float = 1.0,
    ) -> None:
        self.base = f"{api_url.rstrip('/')}/{api_version}"
        self.credentials = credentials
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._token: Optional[str] = None
        self._token_until = 0.0

    def query(self, resource: str) -> "OMSQuery":
        return OMSQuery(self, resource)

    def get(self, resource: str, params: Sequence[tuple[str, str]]) -> Response:
        """One GET, authenticated; a refused token is renewed once, server errors are retried with backoff."""
        url = f"{self.base}/{resource}?" + urllib.parse.urlencode(list(params))
        renewed = False
        for attempt in range(self.retries + 1):
            status, text = self._send(url, self._headers())
            if status == 401 and self.credentials is not None and not renewed:
                self._token, renewed = None, True  # expired: renew once
                status, text = self._send(url, self._headers())
            if status == 401:
                raise SourceError(f"OMS refused the credentials for {_where(url)} (401)")
            if status < 500 and status != 0:
                if status >= 400:
                    raise SourceError(f"OMS refused {_where(url)}: HTTP {status} {_first_line(text)}")
                return Response(status, text, url)
            if attempt < self.retries:
                time.sleep(self.backoff * 2 ** attempt)
        what = f"HTTP {status} {_first_line(text)}" if status else text
        raise SourceError(f"OMS failed {self.retries + 1} times for {_where(url)}: {what}")

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.credentials is not None:
            headers["Authorization"] = f"Bearer {self._bearer(self.credentials)}"
        return headers

    def _bearer(self, cred: Credentials) -> str:
        if self._token is not None and time.monotonic() < self._token_until:
            return self._token
        form = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": cred.client_id,
                                       "client_secret": cred.secret, "audience": cred.audience}).encode()
        request = urllib.request.Request(cred.token_url, data=form, method="POST",
                                         headers={"Content-Type": "application/x-www-form-urlencoded"})
        status, text = _open(request, self.timeout)
        try:
            answer = json.loads(text) if status == 200 else {}
            token, lifetime = str(answer["access_token"]), float(answer.get("expires_in", 300))
        except (ValueError, KeyError, TypeError):
            what = "refused" if 400 <= status < 500 else "gave no token to"
            raise SourceError(f"the token endpoint {_where(cred.token_url)} {what} client {cred.client_id!r}: "
                              + (f"HTTP {status}" if status else text)) from None
        self._token, self._token_until = token, time.monotonic() + max(lifetime - 30.0, 0.0)
        return token

    def _send(self, url: str, headers: dict[str, str]) -> tuple[int, str]:
        return _open(urllib.request.Request(url, headers=headers), self.timeout)


class OMSQuery:
    """A query on one resource, built by chaining (as the public client): filters AND together."""

    def __init__(self, api: OMSAPI, resource: str) -> None:
        self.api = api
        self.resource = resource
        self._filters: list[tuple[str, str]] = []
        self._attrs: list[str] = []
        self._sort: list[str] = []
        self._page = (1, 100)
        self._include: list[str] = []

    def attrs(self, names: Sequence[str]) -> "OMSQuery":
        self._attrs = list(names)
        return self

    def filter(self, attribute: str, value: Any, operator: str = "EQ") -> "OMSQuery":
        if operator.upper() not in OPERATORS:
            raise SourceError(f"unknown OMS filter operator {operator!r} (valid: {', '.join(OPERATORS)})")
        text = json.dumps(value) if isinstance(value, bool) else str(value)
        self._filters.append((f"filter[{attribute}][{operator.lower()}]", text))
        return self

    def sort(self, attribute: str, asc: bool = True) -> "OMSQuery":
        self._sort.append(attribute if asc else f"-{attribute}")
        return self

    def paginate(self, page: int = 1, per_page: int = 100) -> "OMSQuery":
        self._page = (max(int(page), 1), max(int(per_page), 1))
        return self

    def include(self, flag: str) -> "OMSQuery":
        self._include.append(flag)
        return self

    def params(self) -> list[tuple[str, str]]:
        page, per_page = self._page
        out = list(self._filters)
        out += [("fields", ",".join(self._attrs))] if self._attrs else []
        out += [("sort", ",".join(self._sort))] if self._sort else []
        out += [("include", ",".join(self._include))] if self._include else []
        return out + [("page[offset]", str((page - 1) * per_page)), ("page[limit]", str(per_page))]

    def data(self) -> Response:
        """The current page, as the public client's ``data()``."""
        return self.api.get(self.resource, self.params())

    def rows(self, limit: Optional[int] = None) -> Iterator[dict[str, Any]]:
        """Every matching row's attributes, page after page (until a short page or ``limit`` rows)."""
        page, per_page = self._page
        seen = 0
        while True:
            self._page = (page, per_page)
            data = self.data().json()
            items = data.get("data") if isinstance(data, dict) else None
            if not isinstance(items, list):
                raise SourceError(f"OMS answered {self.resource} without a data list")
            for item in items:
                attributes = item.get("attributes") if isinstance(item, dict) else None
                if not isinstance(attributes, dict):
                    raise SourceError(f"OMS answered {self.resource} with a row without attributes")
                yield attributes
                seen += 1
                if limit is not None and seen >= limit:
                    return
            if len(items) < per_page:
                return
            page += 1


@dataclass(frozen=True)
class RunMapping:
    """Which OMS run attribute becomes which run metadata key (a JSON object with these fields overrides it).

    Beyond ``meta`` (copied as they are), three keys are derived so that run-type filters can say
    ``ecal=true``, ``global=true``, ``class=Collisions``: ``ecal`` from ``components`` (a list or a comma
    string containing ``ECAL``), ``global`` from ``global_attr == global_value``, ``class`` from
    ``class_attr`` (``collisions2024`` -> ``Collisions``).
    """

    meta: dict[str, str] = field(default_factory=lambda: {
        "start_time": "start_time", "end_time": "end_time", "lumi": "recorded_lumi",
        "delivered_lumi": "delivered_lumi", "last_lumisection": "last_lumisection_number",
        "stable_beam": "stable_beam", "energy": "energy", "b_field": "b_field", "hlt_key": "hlt_key",
        "l1_hlt_mode": "l1_hlt_mode", "components": "components",
    })
    fill: str = "fill_number"
    end_time: str = "end_time"
    components: str = "components"
    global_attr: str = "sequence"
    global_value: str = "GLOBAL-RUN"
    class_attr: str = "l1_hlt_mode"

    @classmethod
    def from_file(cls, path: str) -> "RunMapping":
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError) as err:
            raise SourceError(f"cannot read the OMS mapping {path}: {getattr(err, 'strerror', None) or err}") from None
        known = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or set(data) - known:
            raise SourceError(f"{path}: expected a JSON object with keys among {', '.join(sorted(known))}")
        return cls(**data)

    def attributes(self) -> list[str]:
        return sorted({"run_number", self.fill, self.end_time, self.components, self.global_attr, self.class_attr,
                       *self.meta.values()})

    def run(self, attrs: Mapping[str, Any]) -> SourceRun:
        """One OMS run row as a run, ongoing while its end time is empty."""
        meta = {key: _scalar(attrs[name]) for key, name in self.meta.items() if attrs.get(name) is not None}
        parts = attrs.get(self.components)
        if parts is not None:
            names = parts if isinstance(parts, list) else str(parts).split(",")
            meta["ecal"] = "ECAL" in {str(n).strip().upper() for n in names}
        if attrs.get(self.global_attr) is not None:
            meta["global"] = str(attrs[self.global_attr]) == self.global_value
        if attrs.get(self.class_attr):
            meta["class"] = re.sub(r"[\d_]+$", "", str(attrs[self.class_attr])).capitalize()
        fill = attrs.get(self.fill)
        try:
            spec = RunSpec(int(attrs["run_number"]), None if fill in (None, "") else int(fill), meta)
        except (KeyError, TypeError, ValueError):
            raise SourceError(f"OMS run row without a valid run_number/{self.fill}: {json.dumps(attrs)[:99]}") from None
        return SourceRun(spec, attrs.get(self.end_time) in (None, ""))


class OmsRunSource:
    """Runs (and fills) from OMS, after the campaign's cursor; ``from_run`` starts a campaign without one."""

    name = "oms"

    def __init__(self, api: OMSAPI, mapping: Optional[RunMapping] = None, from_run: Optional[int] = None,
                 page_size: int = 100, max_runs: int = 1000) -> None:
        self.api = api
        self.mapping = mapping or RunMapping()
        self.from_run = from_run
        self.page_size = page_size
        self.max_runs = max_runs

    def fetch(self, state: SourceState) -> SourceBatch:
        if not state.last_run and self.from_run is None:
            raise SourceError("no OMS cursor in this campaign yet: give the first run to read (--from-run N)")
        after = max(state.last_run, (self.from_run or 1) - 1)
        runs = [self.mapping.run(a) for a in self._runs(after).rows(self.max_runs)]
        for number in sorted(state.ongoing)[-ONGOING_REREAD:]:  # one or two at a time, in practice
            query = self.api.query("runs").attrs(self.mapping.attributes()).filter("run_number", number)
            runs += [self.mapping.run(a) for a in query.paginate(1, 1).rows(1)]
        fills = set(state.open_fills) | {r.spec.fill for r in runs if r.spec.fill is not None}
        last = max([after] + [r.spec.run_number for r in runs])
        return SourceBatch(runs, self._ended(fills) if fills else {}, last)

    def _runs(self, after: int) -> OMSQuery:
        query = self.api.query("runs").attrs(self.mapping.attributes()).filter("run_number", after, "GT")
        return query.sort("run_number").paginate(1, self.page_size)

    def _ended(self, fills: set[int]) -> dict[int, str]:
        """Fills of interest that ended: OMS gives their end time (beam dumped), or a later fill started."""
        query = (self.api.query("fills").attrs(["fill_number", "start_time", "end_time"])
                 .filter("fill_number", min(fills), "GE").sort("fill_number").paginate(1, self.page_size))
        rows = list(query.rows(self.max_runs))
        newest = max((int(r["fill_number"]) for r in rows if r.get("start_time")), default=None)
        out = {}
        for row in rows:
            number = int(row["fill_number"])
            if number not in fills:
                continue
            if row.get("end_time"):
                out[number] = f"OMS: fill ended (beam dumped) at {row['end_time']}"
            elif newest is not None and newest > number:
                out[number] = f"OMS: a later fill ({newest}) started"
        return out


def _scalar(value: Any) -> Any:
    """Metadata values are JSON scalars: a list (components) becomes a comma string."""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return value if isinstance(value, (str, int, float, bool)) else str(value)


def _open(request: urllib.request.Request, timeout: float) -> tuple[int, str]:
    """(HTTP status, body); (0, why) when the server cannot be reached."""
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return int(answer.status), answer.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return int(err.code), err.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as err:
        return 0, f"unreachable: {getattr(err, 'reason', None) or err}"


def _where(url: str) -> str:
    """scheme://host/path of a URL, without its query (it holds nothing secret, but is long)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:200]


def oms_source(
    url: Optional[str] = None, from_run: Optional[int] = None, mapping: Optional[str] = None,
    page_size: int = 100, max_runs: int = 1000, timeout: float = 30.0, retries: int = 3, backoff: float = 1.0,
) -> OmsRunSource:
    """The OMS source as ``run sync`` and Jenkins use it (:func:`oms_api`, :class:`RunMapping` from a file)."""
    return OmsRunSource(oms_api(url, timeout, retries, backoff), RunMapping.from_file(mapping) if mapping else None,
                        from_run, page_size, max_runs)


def oms_api(url: Optional[str] = None, timeout: float = 30.0, retries: int = 3, backoff: float = 1.0) -> OMSAPI:
    """The OMS API at ``url``, else ``ECALSTATE_OMS_URL``, else CERN's; credentials from the environment only."""
    return OMSAPI(url or os.environ.get(ENV_URL) or DEFAULT_URL, credentials=Credentials.from_env(),
                  timeout=timeout, retries=retries, backoff=backoff)
