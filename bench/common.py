"""What the benchmark modules share: result rows, the real servers, process pools, a job campaign.

Every module's ``run()`` returns rows ``{name, value, unit, anchor, ratio}``: ``anchor`` names the
row measured side by side in the same run that this one is compared with, ``ratio`` is
value / anchor value (``python -m bench`` fills it in when the anchor is another module's row).
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

from ecalstate import RunSpec, Store
from ecalstate.auditlog import text_id, vocabulary_ids

REPO = Path(__file__).resolve().parent.parent
SPAWN = multiprocessing.get_context("spawn")
#: side-by-side measurements alternate this many times; each keeps its best round
REPEATS = 3


def row(name: str, value: float, unit: str, anchor: Optional[dict[str, Any]] = None,
        note: str = "") -> dict[str, Any]:
    """A result row; ``anchor`` is the row it is compared with (measured in the same run)."""
    ratio = round(value / anchor["value"], 2) if anchor and anchor["value"] else None
    out = {"name": name, "value": value, "unit": unit, "anchor": anchor["name"] if anchor else None,
           "ratio": ratio}
    if note:
        out["note"] = note
    return out


def best(rounds: list[Callable[[], float]], repeats: int = REPEATS) -> list[float]:
    """Alternate the measurements ``repeats`` times, so that other load on the machine hits each alike; the best
    rate of each."""
    rates: list[list[float]] = [[] for _ in rounds]
    for _ in range(repeats):
        for i, measure in enumerate(rounds):
            rates[i].append(measure())
    return [max(r) for r in rates]


def timed(count: int, call: Callable[[], Any]) -> float:
    """``count`` / seconds that ``call()`` took."""
    start = time.perf_counter()
    call()
    return count / (time.perf_counter() - start)


@contextmanager
def cpu_burners(count: int) -> Iterator[None]:
    """``count`` processes spinning on the CPU while the block runs: a busy machine, made on purpose."""
    stop = SPAWN.Event()
    procs = [SPAWN.Process(target=_burn, args=(stop,), daemon=True) for _ in range(count)]
    for proc in procs:
        proc.start()
    try:
        yield
    finally:
        stop.set()
        for proc in procs:
            proc.join(10)


def _burn(stop: Any) -> None:
    while not stop.is_set():
        sum(range(10_000))


def median_ms(call: Callable[[], Any], repeat: int = 3) -> float:
    """The median time of ``repeat`` calls, in milliseconds."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def servers() -> ModuleType:
    """scripts/servers.py (InfluxServer, PostgresServer...), loaded by path."""
    spec = importlib.util.spec_from_file_location("ecalstate_bench_servers", REPO / "scripts" / "servers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def job_campaign(url: str, runs: int, jobs: int, tasks: Sequence[str] = ("reco",)) -> None:
    """Campaign ``bench``: ``runs`` runs, every task claimed with ``jobs`` idle jobs per run (through the API)."""
    with Store.open(url, actor="bench-setup", create=True) as store:
        store.create_campaign("bench")
        for task in tasks:
            store.add_task("bench", task, max_retries=3)
        store.update_rtype("bench", "all", add=list(tasks))
        for start in range(0, runs, 5000):
            store.inject_runs("bench", [RunSpec(n, n // 20) for n in range(start + 1, min(runs, start + 5000) + 1)])
        if not jobs:
            return
        for task in tasks:
            for claim in store.claim("bench", task):
                store.create_jobs("bench", task, claim.run_number, list(range(jobs)))


def transition_worker(url: str, jobs: Sequence[tuple[int, int]], targets: Sequence[str],
                      start: Any) -> tuple[int, float]:
    """ecalstate: one validated, audited transaction per job change. Returns (changes applied, finished at)."""
    applied = 0
    with Store.open(url, actor="bench") as store:
        start.wait()
        for target in targets:
            for run, jid in jobs:
                if store.set_job_status("bench", "reco", run, jid, target).outcome == "changed":
                    applied += 1
    return applied, time.time()


def text_ids(url: str, texts: Iterable[str]) -> dict[str, int]:
    """The ``string`` ids of audit texts (inserted when new), resolved once through the store before anything is
    timed, as the store's writers resolve them once and cache them for the database's life."""
    with Store.open(url, actor="bench-setup") as store, store.db.tx(write=True) as tx:
        learned: dict[str, int] = {}
        return {text: text_id(tx, text, vocabulary_ids(), learned) for text in texts}


def now_micros() -> int:
    """This host's time as integer microseconds since 1970 (how ``audit_log`` and ``job`` keep their times)."""
    return time.time_ns() // 1000


def job_keys(runs: Sequence[int], per_run: int) -> list[tuple[int, int]]:
    """(run, job id) of every job of ``runs``."""
    return [(r, j) for r in runs for j in range(per_run)]


def split(runs: int, workers: int) -> list[list[int]]:
    """Runs 1..``runs`` dealt out to ``workers``."""
    return [list(range(w + 1, runs + 1, workers)) for w in range(workers)]


def parallel(workers: int, target: Callable[..., Any], args: Sequence[Sequence[Any]]) -> tuple[list[Any], float]:
    """Run ``target(*args[i], start)`` in ``workers`` processes; (results, wall seconds of the work).

    Each process imports and connects first, then calls ``start.wait()`` (a barrier the parent
    shares), so start-up is not timed; it returns ``(result, finished_at)`` (``time.time()``).
    """
    start = SPAWN.Barrier(workers + 1)
    queue = SPAWN.Queue()
    procs = [SPAWN.Process(target=_child, args=(queue, i, target, (*a, start))) for i, a in enumerate(args)]
    for proc in procs:
        proc.start()
    try:
        start.wait(timeout=120)
        began = time.time()
        results = dict(queue.get(timeout=600) for _ in procs)
    finally:
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    failed = [r for r in results.values() if isinstance(r, str)]
    if failed:
        raise RuntimeError(f"a benchmark process failed: {failed[0]}")
    return [results[i][0] for i in range(len(procs))], max(results[i][1] for i in range(len(procs))) - began


def _child(queue: Any, index: int, target: Callable[..., Any], args: Sequence[Any]) -> None:
    try:
        queue.put((index, target(*args)))
    except Exception as err:  # reported to the parent, which raises it
        queue.put((index, f"{type(err).__name__}: {err}"))
