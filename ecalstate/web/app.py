"""The web view: pages over the store's read queries, a guard that makes writing impossible, the server.

Every page is rendered on the server by Jinja2 with autoescaping (stored text is data, never markup) and
sent with a Content-Security-Policy that runs no inline script. The only script (``static/live.js``) polls
``/api/last`` (the newest audit id) and re-reads the page's live region when it moved.
"""

from __future__ import annotations

import contextlib
import difflib
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader
from markupsafe import Markup, escape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..attention import Attention, Reason, attention
from ..backends.jobfiles import NotRegular, attempt_path, read_inside
from ..clock import human_time
from ..errors import EcalStateError, Invalid, NotFound, no_instance
from ..limits import check_int64
from ..logs import STREAMS, JobLog, job_logs
from ..monitoring import cutoff
from ..queries import DEFAULT_KINDS, GAP_LABELS, GAP_LEGEND, HISTORY_KINDS
from ..report import COLOURS, health_sections
from ..results import JobInfo, Overview
from ..statemachine import JobStatus, TaskStatus, UnknownStatus
from ..store import Store

#: runs per page of the grid: 200 runs x 20 tasks is 4,000 cells, a DOM a browser paints at once
PAGE = 200
#: the text of a grid cell (the colour says it too, for who cannot tell colours apart)
LABELS = {"new": "new", "processing": "proc", "done": "done", "failed": "FAIL", "merged": "mrg",
          "reprocess": "repr", "skipped": "skip"}
#: inline log tails on the instance page: the last lines of stderr of its failed jobs
TAIL_LINES = 40
TAIL_JOBS = 5
#: the newest transitions an instance page shows (and reads its jobs' failure reasons from)
HISTORY_ROWS = 2000
#: transitions a history page shows by default, and at most (``limit=``): the rest is a link away; the whole audit
#: in one page grew with it (18 MB and 3 s on 20,000 runs)
HISTORY_PAGE = 500
HISTORY_PAGE_MAX = 1000
#: what ``status=`` of the history page may name: a task instance's statuses, then a job's
HISTORY_STATUSES = [*(s.value for s in TaskStatus), *(s.value for s in JobStatus if s.value not in set(TaskStatus))]
#: hosts a browser may name in a request to a server bound to loopback (a guard against DNS rebinding)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
#: scripts and styles only from this server; no frames, no plugins, no inline script
HEADERS = {"Content-Security-Policy": "default-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}

def forbid_writes(store: Store) -> None:
    """Make the view's process unable to write, beyond opening read-only: SQLite statements other than reads
    are refused by an authorizer on every connection (no PRAGMA can lift it, unlike ``query_only``);
    PostgreSQL sessions of a read-only store start with ``default_transaction_read_only``."""
    if not store.db.read_only:
        raise Invalid("the web view reads a store opened read-only (Store.open(db, read_only=True))")
    store.db.forbid_writes()


class Query:
    """The request's query parameters, checked: bad input is an :class:`Invalid` naming the parameter."""

    def __init__(self, request: Request) -> None:
        self.params = request.query_params

    def text(self, name: str) -> Optional[str]:
        return self.params.get(name) or None

    def required(self, name: str) -> str:
        value = self.text(name)
        if value is None:
            raise Invalid(f"parameter {name!r} is required")
        return value

    def texts(self, name: str) -> list[str]:
        return [v for v in self.params.getlist(name) if v]

    def integer(self, name: str, minimum: int = 1, maximum: Optional[int] = None,
                unit: str = "") -> Optional[int]:
        value = self.text(name)
        if value is None:
            return None
        number = check_int64(value, f"parameter {name!r}", minimum)
        if maximum is not None and number > maximum:
            raise Invalid(f"invalid parameter {name!r} {number}: at most {maximum}{unit}")
        return number

    def choice(self, name: str, valid: Sequence[str], what: str) -> Optional[str]:
        value = self.text(name)
        if value is not None and value not in valid:
            raise Invalid(f"unknown {what} {value!r} (valid: {', '.join(valid)})")
        return value

    def choices(self, name: str, valid: Sequence[str], what: str) -> list[str]:
        """Every value of a repeated parameter, each one of ``valid``."""
        values = self.texts(name)
        for value in values:
            if value not in valid:
                raise Invalid(f"unknown {what} {value!r} (valid: {', '.join(valid)})")
        return values


def page_of(number: int, total: int, size: int, what: str) -> int:
    """The pages ``total`` rows make, ``size`` a page (at least one, empty); page ``number`` past them is refused."""
    pages = max(1, -(-total // size))
    if number > pages:
        raise Invalid(f"page {number} is past the end: {total} {what} make {pages} page{'s' if pages > 1 else ''} "
                      f"of {size}")
    return pages


def url(path: str, **params: Any) -> str:
    """``path`` with its query string; empty values left out, lists repeated (``status=a&status=b``)."""
    kept = {k: v for k, v in params.items() if v not in (None, "", [], ())}
    return path + ("?" + urlencode(kept, doseq=True) if kept else "")


def last_change(store: Store, campaign: Optional[str]) -> int:
    """The newest audit id (of ``campaign``): pages are current while it has not moved."""
    rows = store.history(campaign, limit=1)
    return rows[-1].id if rows else 0


#: a cell's mark by its worst reason: ``*`` blocked by an upstream failure, ``!`` a problem (stuck, a late run, a
#: failed leader...; a failed cell says it already), ``?`` a warning; waiting as expected (info): the tooltip only
MARKS = {"blocked": "*", "failed": ""}
LEVEL_MARKS = {"problem": "!", "warning": "?", "info": ""}
#: the classes some reasons give a cell (its outline)
REASON_CLASSES = {"blocked": " blocked", "stuck": " stuck"}


def cell_reasons(result: Attention) -> dict[tuple[str, int], Reason]:
    """(task, run) -> the worst reason of each instance that waits."""
    return {(i.task, i.run_number): i.reasons[0] for i in result.items if i.reasons}


def grid_rows(campaign: str, view: Overview, runs: Sequence[dict[str, Any]],
              reasons: Optional[dict[tuple[str, int], Reason]] = None) -> list[Markup]:
    """The grid's rows (``runs``' order) as HTML, escaped here: 4,000 cells a page, 5x faster than a template loop.

    A cell: status as class (colour), ``data-status`` and text; an instance that waits says why (``data-reason``,
    ``data-level``, its tooltip: the reason and the command) and is marked (:data:`MARKS`, :data:`LEVEL_MARKS`); it
    links to the instance.
    """
    found_reasons = reasons if reasons is not None else {}
    statuses = {row.run_number: row.statuses for row in view.rows}
    columns = [(task, escape(task), escape(url("/instance", c=campaign, task=task) + "&run="))
               for task in view.tasks]
    out = []
    for run in runs:
        number = run["run_number"]
        cells = [f'<tr><th><a href="{escape(url("/history", c=campaign, run=number))}">{number}</a></th>'
                 f'<td class="info">{"" if run["fill"] is None else run["fill"]}</td>'
                 f'<td class="info">{escape(", ".join(run["rtypes"]))}</td>']
        found = statuses.get(number, {})
        for task, label, link in columns:
            status = found.get(task)
            if status is None:  # no instance: the run is being taken, no run type activates the task, or backfill
                gap = view.gaps.get((task, number))
                cells.append('<td class="s-missing"></td>' if gap is None else
                             f'<td class="s-missing" data-task="{label}" data-run="{number}" data-gap="{gap}"'
                             f' title="{escape(view.notes.get(number, ""))}">{GAP_LABELS[gap]}</td>')
                continue
            status = escape(status)
            text = LABELS.get(status, status)
            why = found_reasons.get((task, number))
            if why is None:
                cells.append(f'<td class="s-{status}" data-task="{label}" data-run="{number}"'
                             f' data-status="{status}"><a href="{link}{number}">{text}</a></td>')
                continue
            mark = MARKS.get(why.code, LEVEL_MARKS[why.level])
            cells.append(f'<td class="s-{status}{REASON_CLASSES.get(why.code, "")}" data-task="{label}"'
                         f' data-run="{number}" data-status="{status}" data-reason="{escape(why.code)}"'
                         f' data-level="{why.level}" title="{escape(why.message)}; to resolve: {escape(why.command)}">'
                         f'<a href="{link}{number}">{text}{mark}</a></td>')
        out.append(Markup("".join(cells) + "</tr>"))
    return out


def instance_jobs(store: Store, campaign: str, task: str, run: int) -> dict[str, Any]:
    """An instance with its jobs per generation (newest first), each job's last failure reason, its history,
    and the stderr tail of the current generation's failed jobs."""
    info = store.instance(campaign, task, run)
    jobs = store.list_jobs(campaign, task, run, all_generations=True)
    history = store.history(campaign, task, run, limit=HISTORY_ROWS, transitions_only=True)
    reasons = {(a.generation, a.jid): a.reason for a in history if a.entity == "job" and a.to_status == "failed"}
    generations: dict[int, list[JobInfo]] = {}
    for job in sorted(jobs, key=lambda j: (-j.generation, j.jid)):
        generations.setdefault(job.generation, []).append(job)
    failed = [j for j in generations.get(info.generation, []) if j.status == "failed"][:TAIL_JOBS]
    return {"info": info, "generations": generations, "reasons": reasons, "history": history,
            "failures": {(j.generation, j.jid): failure_of(j, reasons[(j.generation, j.jid)]) for j in jobs
                         if (j.generation, j.jid) in reasons},
            "tails": [(job, read_log(store, campaign, task, run, job.jid, None, "stderr", TAIL_LINES))
                      for job in failed]}


def failure_of(job: JobInfo, reason: str) -> str:
    """A job's last failure reason labelled with its attempt: a job that failed and was retried shows its earlier
    attempt's reason ("held: ...") beside its current status ("done"), which read as the reason of that status.
    The last failure is the current attempt's while the job is failed, else the one before (a retry is the only
    way out of failed, and it starts the next attempt)."""
    if job.status == "failed":
        return f"attempt {job.attempts}: {reason}"
    return f"attempt {job.attempts - 1} failed: {reason}"


def read_log(store: Store, campaign: str, task: str, run: int, jid: int, attempt: Optional[int], stream: str,
             lines: Optional[int] = None) -> JobLog | str:
    """The log's bounded tail, or why it cannot be shown (no folder recorded, unreadable file)."""
    try:
        return job_logs(store, campaign, task, run, jid, attempt, stream, lines)[0]
    except (NotFound, Invalid) as err:
        return str(err)


#: the largest plot the view serves (a calibration map is tens of kB)
MAX_PLOT_BYTES = 16 * 1024 * 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def instance_outputs(store: Store, campaign: str, task: str, run: int) -> dict[str, Any]:
    """What an instance page says of its outputs: the run's current outputs (a merged run's: its leader's), what
    made each generation, and per plot either its number (a PNG the view serves, linked) or why it is not served."""
    found = store.outputs(campaign, task, [run])
    plots: dict[str, int | str] = {}
    if found:
        for n, path in enumerate(p for kind, p in found[0].paths() if kind == "plots"):
            try:
                read_plot(path, workdir_of(store, campaign, task, found[0].from_run, path), 8)
                plots[path] = n
            except (Invalid, NotFound) as err:
                plots[path] = str(err)
    return {"outputs": found[0] if found else None, "plots": plots,
            "made_by": store.made_by(campaign, task, run) if found else {}}


def plot_of(store: Store, campaign: str, task: str, run: int, n: int) -> bytes:
    """The ``n``-th plot of an instance (a merged run's: its leader's), as :func:`read_plot` serves it: only a path
    the instance's ``plots`` name, inside the work folder of the job that reported it."""
    found = store.outputs(campaign, task, [run])
    if not found:
        raise no_instance(campaign, task, run)
    plots = [path for kind, path in found[0].paths() if kind == "plots"]
    if not 0 <= n < len(plots):
        raise NotFound(f"task {task} run {run} has no plot {n} (it has {len(plots)})")
    return read_plot(plots[n], workdir_of(store, campaign, task, found[0].from_run, plots[n]), MAX_PLOT_BYTES)


def workdir_of(store: Store, campaign: str, task: str, run: int, path: str) -> str:
    """The work folder of the job of ``run`` (any generation) that reported the plot ``path``: its attempt folder,
    which the handler records (a job cannot), lies below it."""
    for job in store.list_jobs(campaign, task, run, all_generations=True):
        if path in str(job.fields.get("plots", "")).split(","):
            where = attempt_path(str(job.fields.get("logs", "")))
            if where is not None:
                return str(where.workdir)
    raise NotFound(f"{path}: no job of run {run} that reported it recorded its work folder")


def read_plot(path: str, workdir: str, limit: int) -> bytes:
    """The first ``limit`` bytes of the PNG plot ``path``: a regular file inside ``workdir``, read through the job
    files' opener (no link followed, no pipe waited on), at most :data:`MAX_PLOT_BYTES`, a PNG by its signature."""
    try:
        data, size = read_inside(workdir, path, limit)
    except NotRegular as err:
        raise Invalid(f"{err}: not served") from None
    except FileNotFoundError:
        raise NotFound(f"{path} does not exist") from None
    except OSError as err:
        raise NotFound(f"cannot read {path}: {err.strerror}") from None
    if size > MAX_PLOT_BYTES:
        raise Invalid(f"{path} is larger than {MAX_PLOT_BYTES >> 20} MiB: not served")
    if not data.startswith(PNG_SIGNATURE):
        raise Invalid(f"{path} is not a PNG: not served")
    return data


def create_app(store: Store, campaign: Optional[str] = None, refresh: float = 2.0,
               allowed_hosts: Sequence[str] = LOOPBACK_HOSTS) -> Starlette:
    """The ASGI application over ``store`` (open it read-only and call :func:`forbid_writes` first).

    ``campaign``: where ``/`` leads; ``refresh``: seconds between the pages' checks for changes.
    """
    env = Environment(loader=PackageLoader("ecalstate.web", "templates"), autoescape=True, trim_blocks=True,
                      lstrip_blocks=True)
    env.filters["seconds"] = human_time
    env.globals.update(url=url, colours=COLOURS, labels=LABELS, gap_labels=GAP_LABELS, gap_legend=GAP_LEGEND,
                       statuses=[s.value for s in TaskStatus],
                       refresh_ms=int(refresh * 1000), streams=STREAMS, max_limit=HISTORY_PAGE_MAX)

    def page(template: str, request: Request, campaign: Optional[str], last: int,
             result: Optional[Attention] = None, **context: Any) -> HTMLResponse:
        """The page; ``last`` is :func:`last_change` read before anything it shows (a change made while the page
        was read moves it again, and the open page fetches it once more). Its banner is what needs action."""
        result = result or attention(store, campaign)
        handlers = [s for s in health_sections(result.health) if s[0].startswith(("silent", "failing"))]
        html = env.get_template(template).render(
            request=request, campaign=campaign, last=last, healthy=result.ok, problems=result.problems,
            warnings=result.warnings, health=handlers, **context)
        return HTMLResponse(html, headers=HEADERS)

    def home(request: Request) -> Response:
        if campaign is not None:
            return RedirectResponse(url("/grid", c=campaign), status_code=307)
        return page("campaigns.html", request, None, last_change(store, None), campaigns=store.list_campaigns())

    def grid(request: Request) -> Response:
        q = Query(request)
        name = q.required("c")
        tasks, wanted = q.texts("task"), q.texts("status")
        first, last, number = q.integer("first"), q.integer("last"), q.integer("page") or 1
        changed = last_change(store, name)
        total, runs = store.run_page(name, tasks, wanted, first, last, PAGE, (number - 1) * PAGE)
        pages = page_of(number, total, PAGE, "runs")
        numbers = [r["run_number"] for r in runs]
        view = store.overview(name, tasks, runs=numbers, stuck_after=None)
        result = attention(store, name, runs=numbers)  # the banner's and the cells' reasons: read once
        filters = {"c": name, "task": tasks, "status": wanted, "first": first, "last": last}
        return page("grid.html", request, name, changed, result, view=view,
                    rows=grid_rows(name, view, runs, cell_reasons(result)), total=total, number=number, pages=pages,
                    filters=filters, all_tasks=[t.name for t in store.list_tasks(name)])

    def needs_action(request: Request) -> Response:
        """What needs action in a campaign, problems first, then warnings (with ``all=1``, what waits as expected
        too): each instance with its reason, since when, and the command that resolves it."""
        q = Query(request)
        name = q.required("c")
        everything = q.choice("all", ("0", "1"), "value of all") == "1"
        changed = last_change(store, name)
        result = attention(store, name, everything=everything)
        shown = result.reasons() if everything else [p for p in result.reasons() if p[1].level != "info"]
        return page("attention.html", request, name, changed, result, shown=shown, everything=everything,
                    counts=result.counts(), actions=result.actions)

    def instance(request: Request) -> Response:
        q = Query(request)
        name, task, run = q.required("c"), q.required("task"), q.integer("run")
        if run is None:
            raise Invalid("parameter 'run' is required")
        changed = last_change(store, name)
        result = attention(store, name, runs=[run])
        mine = result.by_instance().get((name, task, run))
        return page("instance.html", request, name, changed, result, task=task, run=run,
                    waits=() if mine is None else mine.reasons, **instance_jobs(store, name, task, run),
                    **instance_outputs(store, name, task, run))

    def plot(request: Request) -> Response:
        """A PNG plot of an instance, by its number in the instance's ``plots``: nothing else is ever served."""
        q = Query(request)
        name, task, run, n = q.required("c"), q.required("task"), q.integer("run"), q.integer("n", 0)
        if run is None or n is None:
            raise Invalid("parameters 'run' and 'n' are required")
        return Response(plot_of(store, name, task, run, n), media_type="image/png", headers=HEADERS)

    def log(request: Request) -> Response:
        q = Query(request)
        name, task, run, jid = q.required("c"), q.required("task"), q.integer("run"), q.integer("job", 0)
        stream = q.text("stream") or "stderr"
        if run is None or jid is None:
            raise Invalid("parameters 'run' and 'job' are required")
        changed = last_change(store, name)
        found = read_log(store, name, task, run, jid, q.integer("attempt"), stream)
        return page("log.html", request, name, changed, task=task, run=run, jid=jid, stream=stream, log=found)

    def history(request: Request) -> Response:
        """A page of the transitions (newest first) of a campaign, a task, a run, the last hours, to a status, of
        some kinds (task, job; the handlers' heartbeats only when asked: they drown a shift's transitions)."""
        q = Query(request)
        name, task, run, hours = q.required("c"), q.text("task"), q.integer("run"), q.integer("hours")
        status = q.choice("status", HISTORY_STATUSES, "status")
        limit = q.integer("limit", maximum=HISTORY_PAGE_MAX, unit=" rows a page") or HISTORY_PAGE
        number = q.integer("page") or 1
        chosen = q.choices("kind", HISTORY_KINDS, "kind")
        kinds = [k for k in HISTORY_KINDS if k in (chosen or DEFAULT_KINDS)]
        since = None if hours is None else cutoff(hours * 3600, store.clock())
        changed = last_change(store, name)
        where: dict[str, Any] = dict(since=since, status=status, transitions_only=True)
        counts = store.history_counts(name, task, run, **where)
        total, hidden = sum(counts[k] for k in kinds), 0 if chosen else counts["handler"]
        pages = page_of(number, total, limit, "transitions")
        rows = store.history(name, task, run, limit=limit, offset=(number - 1) * limit, kinds=kinds, **where)
        filters = {"c": name, "task": task, "run": run, "hours": hours, "status": status, "kind": chosen,
                   "limit": None if limit == HISTORY_PAGE else limit}
        return page("history.html", request, name, changed, rows=list(reversed(rows)), task=task, run=run,
                    hours=hours, status=status, limit=limit, total=total, number=number, pages=pages,
                    first=(number - 1) * limit + 1, filters=filters, history_statuses=HISTORY_STATUSES,
                    kinds=kinds, hidden=hidden, history_kinds=HISTORY_KINDS)

    def api_last(request: Request) -> Response:
        return JSONResponse({"last": last_change(store, Query(request).text("c"))}, headers=HEADERS)

    async def refused(request: Request, exc: Exception) -> Response:
        code = 404 if isinstance(exc, NotFound) else 400 if isinstance(exc, (Invalid, UnknownStatus)) else 503
        html = env.get_template("error.html").render(request=request, campaign=None, message=str(exc), code=code)
        return HTMLResponse(html, status_code=code, headers=HEADERS)

    routes = [Route("/", home), Route("/grid", grid), Route("/attention", needs_action), Route("/instance", instance),
              Route("/log", log), Route("/history", history), Route("/api/last", api_last), Route("/plot", plot),
              Mount("/static", StaticFiles(packages=[("ecalstate.web", "static")]), name="static")]
    middleware = [] if "*" in allowed_hosts else [Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))]
    return Starlette(routes=routes, middleware=middleware, exception_handlers={EcalStateError: refused})


def check_campaign(store: Store, campaign: str) -> None:
    """Refuse a campaign the store does not have, naming the closest and every one: a typo found at start, not as a
    404 on every page once the shift opens the view."""
    names = [c.name for c in store.list_campaigns()]
    if campaign not in names:
        close = difflib.get_close_matches(campaign, names, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise NotFound(f"unknown campaign {campaign!r} ({hint}campaigns: {', '.join(names) or 'none yet'})")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port), or one clear error (port taken, unknown host)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as err:
        raise Invalid(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    return sock


def serve(store: Store, host: str = "127.0.0.1", port: int = 8080, campaign: Optional[str] = None,
          refresh: float = 2.0, ready: Optional[Callable[[str], None]] = None) -> None:
    """Serve the view of ``store`` (opened read-only) until interrupted; ``ready`` gets the URL once listening.

    Bound to loopback by default; on another address, anyone who reaches it reads the state (there is no login).
    """
    import uvicorn  # the server only when serving: the rest of the package renders without it

    if campaign is not None:
        check_campaign(store, campaign)
    forbid_writes(store)
    wildcard = host in ("0.0.0.0", "::", "")
    app = create_app(store, campaign, refresh, ["*"] if wildcard else [*LOOPBACK_HOSTS, host])
    sock = bind(host, port)
    where = f"[{host}]" if ":" in host else host
    server = _server_class(uvicorn.Server)(uvicorn.Config(app, log_level="warning", access_log=False,
                                                           lifespan="off"))
    if ready is not None:
        ready(f"http://{where}:{sock.getsockname()[1]}/")
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


def _server_class(base: Any) -> Any:
    """uvicorn's server, stopping on SIGINT or SIGTERM and then returning, where uvicorn's own re-raises the
    signal and the process dies before the store is closed (on SQLite the last reader out removes the -wal
    and -shm files it made: without the close they stay beside the database)."""

    class Server(base):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            kept = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in kept.items():
                    signal.signal(sig, handler)

    return Server
