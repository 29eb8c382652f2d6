"""CMS OMS (Online Monitoring System) as a run source, and the small REST client it uses.

The client speaks OMS's JSON:API dialect, with the call shape of the public ``omsapi`` client
(``OMSAPI(url).query("runs").filter(attr, value, op).attrs([...]).sort(attr).paginate(page, per_page)
.data().json()``) so that scripts written against it (through ``QueryOMS``) keep working, and sends the query
strings that client sends:
``GET <url>/<version>/<resource>?filter[attr][OP]=v&sort=-attr&page[offset]=N&page[limit]=M&fields=a,b``
answered by ``{"data": [{"id", "type", "attributes": {...}}], "links": {...}, "meta": {...}}``.

Authentication is OIDC client credentials (POST ``grant_type=client_credentials`` to the token
endpoint, then ``Authorization: Bearer``); a 401 renews the token once. The client secret comes from
the environment or a file only, never appears in a message, and travels over https only (or to this machine).
Server errors and network failures are retried with backoff, then reported as
:class:`~ecalstate.sources.SourceError`: a sync that fails writes nothing, and the next one starts from the
same cursor.

Nothing the server says is trusted: a redirect to another server (scheme, host or port) is refused, so the token
goes nowhere else; each request ends by its deadline, whole (connect, redirects, the body), and a sync by its own
(:meth:`OMSAPI.within`); an answer is at most ``max_bytes``; pages must hold what was asked, in the order asked;
every row is checked (:mod:`ecalstate.sources.omsrows`), and a bad one is skipped and reported, never a
traceback. What the run source does with each is in docs/security.md, "The OMS run source".

Which OMS attribute becomes which run metadata key is :class:`RunMapping` (a JSON file overrides it):
the attribute names beyond run_number, fill_number, start/end time and luminosity are not verified
against the real OMS, so they are configuration, not code.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Union

from ..errors import Invalid
from ..results import RunSpec
from ..secrets import read_secret_file
from . import Rejected, SourceBatch, SourceError, SourceRun, SourceState
from . import omsrows as rows
from .http import REDIRECTS, TimedOut, TooLarge, exchange, is_loopback, origin, site, where

DEFAULT_URL = "https://cmsoms.cern.ch/agg/api"
TOKEN_URL = "https://auth.cern.ch/auth/realms/cern/api-access/token"
AUDIENCE = "cmsoms-prod"
OPERATORS = ("EQ", "NEQ", "LT", "GT", "LE", "GE", "LIKE", "CT")
#: environment variables of the OMS connection (the secret, or the file holding it, never as an argument)
ENV_URL, ENV_CLIENT_ID = "ECALSTATE_OMS_URL", "ECALSTATE_OMS_CLIENT_ID"
ENV_SECRET, ENV_SECRET_FILE = "ECALSTATE_OMS_CLIENT_SECRET", "ECALSTATE_OMS_CLIENT_SECRET_FILE"
ENV_TOKEN_URL, ENV_AUDIENCE = "ECALSTATE_OMS_TOKEN_URL", "ECALSTATE_OMS_AUDIENCE"
#: how many of the newest runs still being taken (below the look-back) a sync reads again (one request each)
ONGOING_REREAD = 20
#: how many run numbers below the cursor every sync reads again, for runs OMS lists late
LOOKBACK = 100
#: the largest answer taken from OMS (a page of 100 runs is some 100 KB)
MAX_BYTES = 32 * 1024 * 1024
#: same-server redirects followed (``/runs`` -> ``/runs/``); one to another server is refused
MAX_REDIRECTS = 3


class Response:
    """An OMS answer: ``status_code``, ``text`` and ``json()``, as the public client's ``requests`` response."""

    def __init__(self, status_code: int, text: str, url: str) -> None:
        self.status_code = status_code
        self.text = text
        self.url = url

    def json(self) -> Any:
        """The answer as ``requests`` parses it (for scripts); the run source reads :meth:`document` instead."""
        try:
            return json.loads(self.text)
        except ValueError:
            raise SourceError(f"OMS answered {where(self.url)} with something that is not JSON") from None

    def document(self) -> Any:
        """The answer with NaN and Infinity kept apart (:class:`~ecalstate.sources.omsrows.NotFinite`)."""
        return rows.document(self.text, where(self.url))


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
                secret = read_secret_file(path, "the OMS client secret file").strip()
            except Invalid as err:
                raise SourceError(str(err)) from None
        if not secret:
            raise SourceError(f"{ENV_CLIENT_ID} is set but no secret: set {ENV_SECRET_FILE} (or {ENV_SECRET})")
        return cls(client_id, secret, env.get(ENV_TOKEN_URL) or TOKEN_URL, env.get(ENV_AUDIENCE) or AUDIENCE)


class OMSAPI:
    """The OMS REST API at ``api_url`` (``.../agg/api``); ``query(resource)`` starts a query.

    ``timeout`` ends each request, whole: connect, same-server redirects and the entire answer.
    ``validate`` checks query attributes against ``/<resource>/meta`` and drops unknown ones, as the public
    client does (for scripts, through ``QueryOMS``); the run source sends its mapping's names as they are.
    """

    def __init__(
        self, api_url: str = DEFAULT_URL, api_version: str = "v1", credentials: Optional[Credentials] = None,
        timeout: float = 30.0, retries: int = 3, backoff: float = 1.0, max_bytes: int = MAX_BYTES,
        validate: bool = False,
    ) -> None:
        self.base = f"{api_url.rstrip('/')}/{api_version}"
        self.credentials = credentials
        if credentials is not None:
            for url in (self.base, credentials.token_url):
                if urllib.parse.urlsplit(url).scheme != "https" and not is_loopback(url):
                    raise SourceError(f"OMS credentials go over https only (or to this machine), not to {where(url)}")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_bytes = max_bytes
        self.validate = validate
        self._token: Optional[str] = None
        self._token_until = 0.0
        self._deadline: Optional[tuple[float, str]] = None  # (monotonic end, how to name it)
        self._meta: dict[str, Optional[dict[str, Any]]] = {}

    def query(self, resource: str) -> "OMSQuery":
        return OMSQuery(self, resource)

    @contextmanager
    def within(self, seconds: Optional[float], name: str = "") -> Iterator[None]:
        """Every request inside ends within ``seconds`` from now, retries and their waits included (a deadline
        already set and nearer stays); ``name`` says where the figure comes from in messages (`` (--timeout)``)."""
        saved = self._deadline
        if seconds is not None:
            end = time.monotonic() + seconds
            if saved is None or end < saved[0]:
                self._deadline = (end, f"the {seconds:g} s deadline{name}")
        try:
            yield
        finally:
            self._deadline = saved

    def get(self, resource: str, params: Sequence[tuple[str, str]]) -> Response:
        """One GET, authenticated; a refused token is renewed once, server errors are retried with backoff."""
        url = f"{self.base}/{resource}" + ("?" + urllib.parse.urlencode(list(params), safe="[],") if params else "")
        renewed, failures = False, 0
        while True:
            status, text = self._fetch(url)
            if status == 401 and self.credentials is not None and not renewed:
                self._token, renewed = None, True  # expired: renew once
                continue
            if status == 401:
                raise SourceError(f"OMS refused the credentials for {where(url)} (401)")
            if 200 <= status < 300:
                return Response(status, text, url)
            if 300 <= status < 500:
                raise SourceError(f"OMS refused {where(url)}: HTTP {status} {_first_line(text)}")
            failures += 1
            what = f"OMS failed {failures} times for {where(url)}: " + (
                f"HTTP {status} {_first_line(text)}" if status else text)
            if failures > self.retries:
                raise SourceError(what)
            wait = self.backoff * 2 ** (failures - 1)
            if self._deadline is not None and time.monotonic() + wait >= self._deadline[0]:
                raise SourceError(f"{what}; no time left for another try within {self._deadline[1]}")
            time.sleep(wait)

    def meta(self, resource: str) -> Optional[dict[str, Any]]:
        """``/<resource>/meta``'s fields (attribute name -> description), None when OMS gives none; asked once."""
        base = resource.split("/")[0]
        if base not in self._meta:
            try:
                found = self.get(f"{base}/meta", []).json()
                self._meta[base] = found["meta"]["fields"] if isinstance(found["meta"]["fields"], dict) else None
            except (SourceError, KeyError, TypeError):
                self._meta[base] = None
        return self._meta[base]

    def _fetch(self, url: str) -> tuple[int, str]:
        """(HTTP status, body) of a GET, same-server redirects followed within the deadline; (0, why) when the
        server cannot be reached or did not answer in ``timeout``. A redirect elsewhere is refused."""
        until = time.monotonic() + self.timeout
        overall = self._deadline is not None and self._deadline[0] <= until
        if self._deadline is not None:
            until = min(until, self._deadline[0])
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            try:
                answer = exchange("GET", current, self._headers(), None, until, self.max_bytes)
            except TimedOut:
                if overall and self._deadline is not None:
                    raise SourceError(f"OMS did not answer {where(url)} within {self._deadline[1]}") from None
                return 0, f"no whole answer within {self.timeout:g} s"
            except TooLarge:
                raise SourceError(f"OMS answered {where(current)} with more than {self.max_bytes} bytes: refused"
                                  ) from None
            except ValueError as err:
                raise SourceError(f"cannot ask OMS at {where(current)}: {err}") from None
            except (OSError, http.client.HTTPException) as err:
                return 0, f"unreachable: {getattr(err, 'strerror', None) or type(err).__name__}"
            if answer.status not in REDIRECTS:
                return answer.status, answer.body.decode("utf-8", "replace")
            target = urllib.parse.urljoin(current, answer.location or "")
            if not answer.location or origin(target) != origin(current):
                raise SourceError(f"OMS redirected {where(current)} to {site(target) if answer.location else 'nowhere'}"
                                  f": refused (the credentials and queries go to {site(url)} only: point the URL at"
                                  " the API itself)")
            current = target
        raise SourceError(f"OMS redirected {where(url)} more than {MAX_REDIRECTS} times: refused")

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
        until = time.monotonic() + self.timeout
        if self._deadline is not None:
            until = min(until, self._deadline[0])
        status, text = 0, ""
        try:  # no redirect is followed: the form holds the secret
            answer = exchange("POST", cred.token_url, {"Content-Type": "application/x-www-form-urlencoded"}, form,
                              until, 1024 * 1024)
            status, text = answer.status, answer.body.decode("utf-8", "replace")
        except TimedOut:
            text = "no answer in time"
        except TooLarge:
            text = "an answer of more than 1 MiB"
        except ValueError as err:
            text = str(err)
        except (OSError, http.client.HTTPException) as err:
            text = f"unreachable: {getattr(err, 'strerror', None) or type(err).__name__}"
        try:
            granted = json.loads(text) if status == 200 else {}
            token, lifetime = str(granted["access_token"]), float(granted.get("expires_in", 300))
            if not token or not 0 <= lifetime < 1e9:
                raise ValueError(token)
        except (ValueError, KeyError, TypeError, AttributeError):
            what = "refused" if 400 <= status < 500 else "gave no token to"
            raise SourceError(f"the token endpoint {where(cred.token_url)} {what} client {cred.client_id!r}: "
                              + (f"HTTP {status}" if status else text)) from None
        self._token, self._token_until = token, time.monotonic() + max(lifetime - 30.0, 0.0)
        return token


class OMSQuery:
    """A query on one resource, built by chaining (as the public client): filters AND together."""

    def __init__(self, api: OMSAPI, resource: str) -> None:
        self.api = api
        self.resource = resource
        self._filters: list[tuple[str, str]] = []
        self._attrs: list[str] = []
        self._sort: list[str] = []
        self._page = (1, 10)  # the public client's default
        self._include: list[str] = []
        self._custom: list[tuple[str, str]] = []

    def attrs(self, names: Sequence[str]) -> "OMSQuery":
        self._attrs = [name for name in dict.fromkeys(names) if self._known(name)]
        return self

    def filter(self, attribute: str, value: Any, operator: str = "EQ") -> "OMSQuery":
        if operator.upper() not in OPERATORS:
            raise SourceError(f"unknown OMS filter operator {operator!r} (valid: {', '.join(OPERATORS)})")
        if self._known(attribute):
            text = json.dumps(value) if isinstance(value, bool) else str(value)
            self._filters.append((f"filter[{attribute}][{operator.upper()}]", text))
        return self

    def filters(self, items: Sequence[Mapping[str, Any]]) -> "OMSQuery":
        """Several filters: ``[{"attribute_name": a, "value": v, "operator": op}, ...]``."""
        for item in items:
            self.filter(item["attribute_name"], item["value"], item["operator"])
        return self

    def clear_filter(self) -> "OMSQuery":
        self._filters = []
        return self

    def sort(self, attribute: str, asc: bool = True) -> "OMSQuery":
        if self._known(attribute):
            self._sort.append(attribute if asc else f"-{attribute}")
        return self

    def paginate(self, page: int = 1, per_page: int = 10) -> "OMSQuery":
        self._page = (max(int(page), 1), max(int(per_page), 1))
        return self

    def include(self, flag: str) -> "OMSQuery":
        self._include.append(flag)
        return self

    def custom(self, key: str, value: Any = None) -> "OMSQuery":
        """A parameter the chain has no method for (``custom("group[size]", 100)``)."""
        self._custom.append((key, str(value)))
        return self

    def set_verbose(self, verbose: bool) -> "OMSQuery":
        """Accepted for scripts written against the public client; this client prints nothing."""
        return self

    def set_validation(self, validate: bool) -> "OMSQuery":
        self.api.validate = validate
        return self

    def meta(self) -> Optional[dict[str, Any]]:
        """The resource's attributes as ``/<resource>/meta`` describes them (None when OMS gives none)."""
        return self.api.meta(self.resource)

    def params(self) -> list[tuple[str, str]]:
        page, per_page = self._page
        out = list(self._filters)
        out += [("fields", ",".join(self._attrs))] if self._attrs else []
        out += [("sort", ",".join(self._sort))] if self._sort else []
        out += [("include", ",".join(self._include))] if self._include else []
        return out + [("page[offset]", str((page - 1) * per_page)), ("page[limit]", str(per_page))] + self._custom

    def data(self) -> Response:
        """The current page, as the public client's ``data()``."""
        return self.api.get(self.resource, self.params())

    def items(self) -> Iterator[Any]:
        """Every item of every page from the current one, until a short page; an answer that is not a JSON:API
        list, or a page longer than asked, is refused. The caller stops when it has read enough."""
        page, per_page = self._page
        while True:
            self._page = (page, per_page)
            answer = self.data()
            found = answer.document()
            items = found.get("data") if isinstance(found, dict) else None
            if not isinstance(items, list):
                raise SourceError(f"OMS answered {where(answer.url)} without a data list")
            if len(items) > per_page:
                raise SourceError(f"OMS answered {len(items)} {self.resource} to a page of {per_page}")
            yield from items
            if len(items) < per_page:
                return
            page += 1

    def _known(self, attribute: str) -> bool:
        """Whether to send ``attribute``: always, unless validating against ``/meta`` (as the public client)."""
        if not self.api.validate:
            return True
        known = self.meta()
        return known is None or attribute in known


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
        if not isinstance(data.get("meta", {}), dict):
            raise SourceError(f"{path}: meta must be an object of metadata key -> OMS attribute")
        for key, value in [(f"meta.{k}", v) for k, v in data.get("meta", {}).items()] + [
                (k, v) for k, v in data.items() if k != "meta"]:
            if not isinstance(value, str) or not value.strip():
                raise SourceError(f"{path}: {key} must name an OMS attribute (text), not {rows.shown(value)}")
        return cls(**data)

    def attributes(self) -> list[str]:
        return sorted({"run_number", self.fill, self.end_time, self.components, self.global_attr, self.class_attr,
                       *self.meta.values()})

    def parse(self, item: Any) -> Union[SourceRun, Rejected]:
        """One OMS runs item as a run (ongoing while its end time is empty), or why it cannot be one."""
        attrs = rows.attributes(item)
        if attrs is None:
            return Rejected("runs", None, f"a row without attributes: {rows.shown(item)}")
        try:
            number = rows.checked(attrs, "run_number", rows.RUN_ATTRIBUTES["run_number"], required=True)
        except rows.Bad as bad:
            return Rejected("runs", None, str(bad))
        try:
            values = {name: rows.checked(attrs, name, self._check(name)) for name in self.attributes()}
            rows.in_order(values, "start_time", self.end_time)
        except rows.Bad as bad:
            return Rejected("runs", number, str(bad))
        meta = {key: _scalar(values[name]) for key, name in self.meta.items() if values.get(name) is not None}
        parts = values.get(self.components)
        if parts is not None:
            names = parts if isinstance(parts, list) else str(parts).split(",")
            meta["ecal"] = "ECAL" in {str(n).strip().upper() for n in names}
        if values.get(self.global_attr) is not None:
            meta["global"] = str(values[self.global_attr]) == self.global_value
        if values.get(self.class_attr):
            meta["class"] = re.sub(r"[\d_]+$", "", str(values[self.class_attr])).capitalize()
        return SourceRun(RunSpec(number, values.get(self.fill), meta), values.get(self.end_time) is None)

    def _check(self, name: str) -> rows.Check:
        """An attribute's check: by the role the mapping gives it, else by its OMS name, else a plain value."""
        roles = {self.fill: rows.RUN_ATTRIBUTES["fill_number"], self.end_time: rows.moment,
                 self.components: rows.names, self.class_attr: rows.text}
        return roles.get(name) or rows.RUN_ATTRIBUTES.get(name) or rows.plain


def parse_fill(item: Any) -> Union[rows.OmsFill, Rejected]:
    """One OMS fills item, or why it cannot be one."""
    attrs = rows.attributes(item)
    if attrs is None:
        return Rejected("fills", None, f"a row without attributes: {rows.shown(item)}")
    try:
        number = rows.checked(attrs, "fill_number", rows.FILL_ATTRIBUTES["fill_number"], required=True)
    except rows.Bad as bad:
        return Rejected("fills", None, str(bad))
    try:
        start, end = (rows.checked(attrs, name, rows.moment) for name in ("start_time", "end_time"))
        rows.in_order({"start_time": start, "end_time": end}, "start_time", "end_time")
    except rows.Bad as bad:
        return Rejected("fills", number, str(bad))
    return rows.OmsFill(number, start, end)


class OmsRunSource:
    """Runs (and fills) from OMS, after the campaign's cursor; ``from_run`` starts a campaign without one.

    Each sync reads the runs after ``cursor - lookback`` in run-number order (checked: an answer out of that
    order is refused), so a run OMS lists late within ``lookback`` numbers below the cursor is still injected.
    A bad row is skipped and reported; a bad run holds the cursor below it, so it is read (and reported) again
    on every sync until OMS fixes it, unless the sync read a full ``max_runs`` without moving the cursor (then
    the cursor passes it rather than stall). ``timeout`` ends the whole sync (every request, retry and wait).
    """

    name = "oms"

    def __init__(self, api: OMSAPI, mapping: Optional[RunMapping] = None, from_run: Optional[int] = None,
                 page_size: int = 100, max_runs: int = 1000, lookback: int = LOOKBACK,
                 timeout: Optional[float] = None) -> None:
        self.api = api
        self.mapping = mapping or RunMapping()
        self.from_run = from_run
        self.page_size = page_size
        self.max_runs = max_runs
        self.lookback = lookback
        self.timeout = timeout

    def fetch(self, state: SourceState) -> SourceBatch:
        if not state.last_run and self.from_run is None:
            raise SourceError("no OMS cursor in this campaign yet: give the first run to read (--from-run N)")
        with self.api.within(self.timeout, " (--timeout)"):
            low = (self.from_run or 1) - 1
            after = max(state.last_run, low)
            floor = max(after - self.lookback, low) if state.last_run else after
            runs, rejected, cursor = self._runs(floor, after)
            for number in [n for n in sorted(state.ongoing) if n <= floor][-ONGOING_REREAD:]:
                found = self._again(number)
                if isinstance(found, SourceRun):
                    runs.append(found)
                elif found is not None:
                    rejected.append(found)
            fills = set(state.open_fills) | {r.spec.fill for r in runs if r.spec.fill is not None}
            ended, bad_fills, dumped = self._ended(fills) if fills else ({}, [], {})
        return SourceBatch(runs, ended, cursor, rejected + bad_fills, state.last_run, dumped)

    def _runs(self, floor: int, after: int) -> tuple[list[SourceRun], list[Rejected], int]:
        """The runs after ``floor`` (at most ``max_runs`` after ``after``), the rows rejected, the next cursor."""
        query = (self.api.query("runs").attrs(self.mapping.attributes()).filter("run_number", floor, "GT")
                 .sort("run_number").paginate(1, self.page_size))
        runs: list[SourceRun] = []
        rejected: list[Rejected] = []
        previous, hold, read, full = floor, None, 0, False
        for item in query.items():
            row = self.mapping.parse(item)
            number = row.spec.run_number if isinstance(row, SourceRun) else row.number
            if number is not None:
                _check_order("runs", "run_number", floor, previous, number)
                previous = number
            if isinstance(row, SourceRun):
                runs.append(row)
            else:
                rejected.append(row)
                if number is not None and number > after and hold is None:
                    hold = number - 1  # read again next time, reported until fixed
            if number is None or number > after:
                read += 1
                if read >= self.max_runs:
                    full = True
                    break
        cursor = max(after, previous if hold is None else min(previous, hold))
        if full and cursor == after:
            cursor = max(after, previous)  # a bad run at the cursor with max_runs after it: pass it, not stall
        return runs, rejected, cursor

    def _again(self, number: int) -> Union[SourceRun, Rejected, None]:
        """A run still being taken, read again alone; None when OMS no longer lists it."""
        query = self.api.query("runs").attrs(self.mapping.attributes()).filter("run_number", number)
        item = next(query.paginate(1, 1).items(), None)
        if item is None:
            return None
        row = self.mapping.parse(item)
        found = row.spec.run_number if isinstance(row, SourceRun) else row.number
        if found is not None and found != number:
            raise SourceError(f"OMS answered run {found} to a query for run {number}; nothing written")
        return row

    def _ended(self, fills: set[int]) -> tuple[dict[int, str], list[Rejected], dict[int, str]]:
        """Fills of interest that ended: OMS gives their end time (beam dumped), or a later fill started; and the end
        times OMS gave."""
        first = min(fills)
        query = (self.api.query("fills").attrs(["fill_number", "start_time", "end_time"])
                 .filter("fill_number", first, "GE").sort("fill_number").paginate(1, self.page_size))
        found: list[rows.OmsFill] = []
        rejected: list[Rejected] = []
        previous = first - 1
        for count, item in enumerate(query.items(), 1):
            row = parse_fill(item)
            number = row.number
            if number is not None:
                _check_order("fills", "fill_number", first - 1, previous, number)
                previous = number
            if isinstance(row, rows.OmsFill):
                found.append(row)
            else:
                rejected.append(row)
            if count >= self.max_runs:
                break
        newest = max((f.number for f in found if f.start_time), default=None)
        out, dumped = {}, {}
        for fill in found:
            if fill.number not in fills:
                continue
            if fill.end_time:
                out[fill.number] = f"OMS: fill ended (beam dumped) at {fill.end_time}"
                dumped[fill.number] = fill.end_time
            elif newest is not None and newest > fill.number:
                out[fill.number] = f"OMS: a later fill ({newest}) started"
        return out, rejected, dumped


def _check_order(resource: str, key: str, floor: int, previous: int, number: int) -> None:
    """Rows come in the order asked (``sort=key``, after ``floor``): a page out of order would move the cursor past
    runs not read yet, for good."""
    if number <= floor:
        raise SourceError(f"OMS answered {key} {number} to a query for {resource} after {floor}; nothing written")
    if number <= previous:
        raise SourceError(f"OMS answered {resource} out of the order asked (sort={key}): {number} after {previous};"
                          " nothing written")


def _scalar(value: Any) -> Any:
    """Metadata values are JSON scalars: a list (components) becomes a comma string."""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return value


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:200]


def oms_source(
    url: Optional[str] = None, from_run: Optional[int] = None, mapping: Optional[str] = None,
    page_size: int = 100, max_runs: int = 1000, timeout: float = 30.0, retries: int = 3, backoff: float = 1.0,
) -> OmsRunSource:
    """The OMS source as ``run sync`` and Jenkins use it (:func:`oms_api`, :class:`RunMapping` from a file);
    ``timeout`` ends the whole sync, and each request within it."""
    return OmsRunSource(oms_api(url, timeout, retries, backoff), RunMapping.from_file(mapping) if mapping else None,
                        from_run, page_size, max_runs, timeout=timeout)


def oms_api(url: Optional[str] = None, timeout: float = 30.0, retries: int = 3, backoff: float = 1.0,
            validate: bool = False) -> OMSAPI:
    """The OMS API at ``url``, else ``ECALSTATE_OMS_URL``, else CERN's; credentials from the environment only."""
    return OMSAPI(url or os.environ.get(ENV_URL) or DEFAULT_URL, credentials=Credentials.from_env(),
                  timeout=timeout, retries=retries, backoff=backoff, validate=validate)
