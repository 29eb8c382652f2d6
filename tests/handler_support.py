"""What the handler and backend tests share: a probe workflow with a controllable payload, and drivers."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

from ecalstate import RunSpec, Store
from ecalstate.backends import JobSpec
from ecalstate.backends.local import LocalBackend
from ecalstate.handler import StageReport, TaskHandler
from ecalstate.results import Claim

#: a stdlib-only job: fails (exit 3) while its marker file exists, else writes its output and a report
PAYLOAD = '''\
import argparse, json, os, sys, time
p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--marker", required=True)
p.add_argument("--sleep", type=float, default=0.0)
p.add_argument("--hang", required=True)
a = p.parse_args()
def report(data):
    with open(os.environ["ECALSTATE_REPORT"] + ".tmp", "w") as f:
        json.dump(data, f)
    os.replace(os.environ["ECALSTATE_REPORT"] + ".tmp", os.environ["ECALSTATE_REPORT"])
start = time.time()
time.sleep(a.sleep)
while os.path.exists(a.hang) and time.time() < start + 120:
    time.sleep(0.05)
if os.path.exists(a.marker):
    report({"error": "input marked broken"})
    print("input marked broken", file=sys.stderr)
    sys.exit(3)
with open(a.out, "w") as f:
    f.write(json.dumps({"start": start, "end": time.time(), "attempt": os.environ["ECALSTATE_ATTEMPT"]}))
report({"fields": {"output": a.out, "answer": 42}})
'''


def write_payload(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "probe_job.py"
    path.write_text(PAYLOAD)
    return path


class Probe(TaskHandler):
    """A workflow whose jobs can be told to fail (marker files) or to take their time (run metadata)."""

    task = "probe"
    payload: Path  # set by the test (a folder of its own, staged with the job)

    def jobs(self, campaign: str, claim: Claim) -> list[JobSpec]:
        out = self.backend.workdir / "out" / str(claim.run_number) / f"g{claim.generation}"
        self.backend.makedirs(out)
        n = int(claim.meta.get("jobs", 3))
        return [JobSpec(i, str(self.payload), ["--out", str(out / f"job{i}.json"),
                                                "--marker", str(marker(self.backend.workdir, claim.run_number, i)),
                                                "--sleep", str(claim.meta.get("sleep", 0)),
                                                "--hang", str(marker(self.backend.workdir, claim.run_number, i,
                                                                     "hang"))],
                        {"slice": i}) for i in range(n)]


CLI = """
import sys, time
sys.path.insert(0, {tests!r})
from handler_support import Probe
while time.time() < {start_at!r}:
    time.sleep(0.001)
type("CliProbe", (Probe,), {{"payload": {payload!r}}}).main({args!r})
"""


def cli_process(payload: Path, args: Sequence[str], env: Optional[dict[str, str]] = None,
                start_at: float = 0.0) -> subprocess.Popen[str]:
    """The probe workflow's command line in its own process (as Jenkins runs it), from ``start_at`` on."""
    code = CLI.format(tests=str(Path(__file__).parent), start_at=start_at, payload=str(payload), args=list(args))
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def probe_on(db_url: str, tmp_path: Path) -> Probe:
    """The probe workflow on the local backend (2 slots) over a new database at ``db_url``; close its store after."""
    handler = Probe(Store.open(db_url, actor="tester", create=True), LocalBackend(tmp_path / "work", slots=2))
    handler.payload = write_payload(tmp_path / "payload")
    return handler


def marker(workdir: Path, run: int, jid: int, kind: str = "broken") -> Path:
    """While this file exists, job ``jid`` of ``run`` fails (``broken``) or does not finish (``hang``)."""
    return workdir / f"{kind}-{run}-{jid}"


def make_campaign(store: Store, runs: Sequence[int], task: str = "probe", retries: int = 2,
                  meta: Optional[dict[str, Any]] = None, campaign: str = "prompt") -> None:
    store.create_campaign(campaign)
    store.add_task(campaign, task, max_retries=retries)
    store.update_rtype(campaign, "all", add=[task])
    store.inject_runs(campaign, [RunSpec(r, 1, dict(meta or {})) for r in runs])


def settle(handler: TaskHandler, campaign: str = "prompt", deadline: float = 60.0) -> list[StageReport]:
    """Run check until no job of the handler's task is idle or running (or the deadline passes)."""
    reports = []
    stop = time.monotonic() + deadline
    while True:
        reports.append(handler.check(campaign))
        active = [j for j in handler.store.list_jobs(campaign, handler.task) if j.status in ("idle", "running")]
        if not active or time.monotonic() > stop:
            return reports
        time.sleep(0.2)


def transitions(store: Store, task: str, run: int, campaign: str = "prompt") -> dict[Any, list[str]]:
    """The statuses one instance (key None) and each of its jobs (key: job id) went through, in order.

    ``running`` is left out: whether a check sees a short job running is a matter of timing; so are annotations
    (field-only rows, from == to), which are not transitions.
    """
    out: dict[Any, list[str]] = {}
    for a in store.history(campaign, task=task, run=run, limit=None):
        if a.entity in ("task", "job") and a.to_status != "running" and a.from_status != a.to_status:
            out.setdefault(a.jid, []).append(a.to_status)
    return out


def snapshot(store: Store) -> tuple[object, ...]:
    """Every task and job status, every job, and the task/job audit (heartbeats excluded) of campaign prompt."""
    overview = store.overview("prompt")
    jobs = store.list_jobs("prompt", "probe", all_generations=True)
    audit = [a for a in store.history("prompt", limit=None) if a.entity != "handler"]
    return [r.statuses for r in overview.rows], jobs, audit


@contextmanager
def condor_workdir(pool: Any, prefix: str) -> Iterator[Path]:
    """A work folder in the pool's jobs folder (the jobs see it at the same path), removed afterwards from the
    host side, never through the chroot, without leaving this file system."""
    folder = Path(pool.make_jobdir(prefix))
    try:
        yield folder
    finally:
        assert folder.parent == Path(pool.jobdir) and "trixie" not in folder.parts
        subprocess.run(["rm", "-rf", "--one-file-system", str(folder)], check=True)
