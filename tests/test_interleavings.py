"""Random interleavings of the handler's stages as real processes on the local backend (issue 10).

For ~20 s, submit, check and resubmit stages start as OS processes (as Jenkins builds do, several at
once), some are SIGKILLed at a random moment, an operator aborts processing runs and reprocesses
finished ones. Then one clean check/resubmit round runs, and the state must hold the protocol's
promises: no run has jobs of two generations in the batch system, no instance is ``processing`` without
active jobs, no job is idle without a batch id, every transition has exactly one audit row.
``ECALSTATE_SEED`` replays a run's choices.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drive import audit_problems
from handler_support import Probe, cli_process, condor_workdir, make_campaign, marker, write_payload

from ecalstate import Conflict, Store
from ecalstate.backends import Backend
from ecalstate.backends.local import LocalBackend, _alive

RUNS = list(range(1, 9))
SECONDS = 20.0
SECONDS_HTCONDOR = 12.0
MAX_STAGES = 3


def live_generations(work: Path) -> dict[int, set[int]]:
    """Per run, the generations that have a job process alive (in the local "batch system")."""
    out: dict[int, set[int]] = {}
    for pid in (work / "jobs" / "prompt" / "probe").glob("*/g*/j*/pid"):
        folder = pid.parent
        if not (folder / "exit").exists() and _alive(pid.read_text().strip()):
            out.setdefault(int(folder.parent.parent.name), set()).add(int(folder.parent.name[1:]))
    return out


def wait_until(predicate: object, timeout: float) -> bool:
    stop = time.monotonic() + timeout
    while time.monotonic() < stop:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return bool(predicate())  # type: ignore[operator]


def test_random_interleavings_keep_the_protocol(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    interleave(tmp_path, work, LocalBackend(work, slots=4), ["--backend", "local", "--slots", "4"], SECONDS,
               lambda: live_generations(work))


def test_random_interleavings_keep_the_protocol_on_htcondor(condor_pool: Any, tmp_path: Path) -> None:
    """The same, shorter, on the real pool: the batch system's view comes from the schedd's queue."""
    from ecalstate.backends.htcondor import CondorBackend

    with condor_workdir(condor_pool, "interleave-") as work:
        import htcondor2

        def in_queue() -> dict[int, set[int]]:
            out: dict[int, set[int]] = {}
            for ad in htcondor2.Schedd().query(
                    constraint='EcalTask == "probe" && (JobStatus == 1 || JobStatus == 2)',
                    projection=["EcalRun", "EcalGeneration", "Iwd"]):
                if str(ad.get("Iwd", "")).startswith(str(work) + "/"):
                    out.setdefault(int(ad["EcalRun"]), set()).add(int(ad["EcalGeneration"]))
            return out

        interleave(tmp_path, work, CondorBackend(work), ["--backend", "htcondor"], SECONDS_HTCONDOR, in_queue)


def interleave(tmp_path: Path, work: Path, backend: Backend, backend_args: list[str], seconds: float,
               live: Callable[[], dict[int, set[int]]]) -> None:
    """Run random stage processes and operator actions for ``seconds``, one clean round, then check."""
    seed = int(os.environ.get("ECALSTATE_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    db = str(tmp_path / "state.db")
    payload = write_payload(tmp_path / "payload")
    store = Store.open(db, actor="operator", create=True)
    make_campaign(store, RUNS, retries=1, meta={"jobs": 2, "sleep": 0.3})
    broken = {marker(work, run, rng.randrange(2)) for run in rng.sample(RUNS, 3)}
    for path in broken:
        path.touch()
    args = ["-c", "prompt", "--db", db, "--workdir", str(work), *backend_args]
    stages: list[subprocess.Popen[str]] = []
    log: list[str] = []
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        stages = [p for p in stages if p.poll() is None]
        roll = rng.random()
        if roll < 0.45 and len(stages) < MAX_STAGES:
            stage = rng.choice(["submit", "submit", "check", "check", "resubmit"])
            stages.append(cli_process(payload, args + [stage]))
            log.append(stage)
        elif roll < 0.6 and stages:
            victim = rng.choice(stages)
            victim.send_signal(signal.SIGKILL)
            log.append("kill")
        elif roll < 0.75:
            wanted = ("processing",) if roll < 0.7 else ("done", "failed")
            runs = [r["run_number"] for r in store.list_runs("prompt", "probe") if r["status"] in wanted]
            if runs:
                try:
                    store.reprocess("prompt", "probe", runs=[rng.choice(runs)], reason="operator")
                    log.append("abort" if roll < 0.7 else "reprocess")
                except Conflict:  # a stage changed it meanwhile: the operator looks again
                    log.append("operator retry")
        elif roll < 0.8 and broken:
            broken.pop().unlink()  # an input fixed
        time.sleep(rng.uniform(0.02, 0.3))
    for proc in stages:
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    for path in broken:
        path.unlink()

    handler = Probe(Store.open(db, actor="clean-round"), backend)
    handler.payload = payload
    handler.check("prompt")
    handler.resubmit("prompt")
    where = f"seed {seed}, actions {log}"

    # superseded jobs were told to stop: give their processes a moment to end
    assert wait_until(lambda: all(len(g) == 1 for g in live().values()), 10), (
        f"two generations of one run in the batch system: {live()}; {where}")
    current = {r["run_number"]: store.instance("prompt", "probe", r["run_number"])
               for r in store.list_runs("prompt", "probe")}
    for run, generations in live().items():
        info = current[run]
        assert generations == {info.generation} and info.status == "processing", (run, generations, info, where)
    jobs = store.list_jobs("prompt", "probe", all_generations=True)
    assert [j for j in jobs if j.status == "idle" and not j.batch_id] == [], where
    for run, info in current.items():
        if info.status == "processing":
            mine = [j for j in jobs if j.run_number == run and j.generation == info.generation]
            assert any(j.status in ("idle", "running") for j in mine), (run, mine, where)
    assert audit_problems(store) == [], where
    assert "submit" in log and "kill" in log, where  # the interleaving did what it is for
    handler.store.close()
    store.close()
