"""The local backend on its own: detached jobs, bounded parallelism, dead jobs, staging."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from ecalstate.backends import JobKey, JobSpec, Observation, make_backend, read_report
from ecalstate.backends.local import LocalBackend


def payload(folder: Path, body: str, name: str = "job.py") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("import os, sys, time, json\n" + body)
    return str(folder / name)


def submit(backend: LocalBackend, script: str, n: int, args: Sequence[str] = ()) -> list[JobKey]:
    keys = [JobKey(1, i, 1, 1) for i in range(n)]
    jobs = [backend.batch_job("c", "t", k, JobSpec(k.jid, script, tuple(args))) for k in keys]
    ids = backend.submit("c", "t", jobs)
    assert sorted(ids) == keys and all(v.startswith("local:") for v in ids.values())
    return keys


def wait(backend: LocalBackend, keys: Sequence[JobKey], deadline: float = 30) -> dict[JobKey, Observation]:
    stop = time.monotonic() + deadline
    while True:
        seen = backend.observe("c", "t", keys)
        if all(o.status in ("done", "failed") for o in seen.values()) or time.monotonic() > stop:
            return seen
        time.sleep(0.05)


def test_jobs_outlive_the_submitter_and_report(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "w")
    script = payload(tmp_path / "p", "json.dump({'fields': {'pid': os.getpid()}, 'error': ''},"
                                      " open(os.environ['ECALSTATE_REPORT'], 'w'))\nprint(sys.argv[1:])\n")
    keys = submit(backend, script, 2, ["a b", "it's"])
    # a new backend object (as in a later check process) finds them by key
    seen = wait(LocalBackend(tmp_path / "w"), keys)
    assert [o.status for o in seen.values()] == ["done", "done"]
    folder = backend.job_dir("c", "t", keys[0])
    assert (folder / "stdout").read_text() == "['a b', \"it's\"]\n"
    assert isinstance((read_report(folder).fields or {})["pid"], int)
    env = json.loads((folder / "run.json").read_text())["env"]
    assert env["ECALSTATE_REPORT"] == str(folder / "report.json") and env["ECALSTATE_ATTEMPT"] == "1"


def test_at_most_slots_jobs_run_at_once(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "w", slots=1)
    script = payload(tmp_path / "p", "s = time.time(); time.sleep(0.3)\n"
                                      "open('span', 'w').write(f'{s} {time.time()}')\n")
    keys = submit(backend, script, 3)
    assert [o.status for o in wait(backend, keys).values()] == ["done"] * 3
    spans = sorted(tuple(map(float, (backend.job_dir("c", "t", k) / "span").read_text().split())) for k in keys)
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:]))


@contextmanager
def only_slot_taken(backend: LocalBackend) -> Iterator[None]:
    """The backend's one slot held by this process while the block runs."""
    slot = backend.makedirs(backend.workdir / "slots") / "slot0"
    fd = os.open(slot, os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        os.close(fd)


def test_a_job_waiting_for_a_slot_is_idle(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "w", slots=1)
    with only_slot_taken(backend):
        keys = submit(backend, payload(tmp_path / "p", "pass\n"), 1)
        time.sleep(0.3)
        assert backend.observe("c", "t", keys)[keys[0]].status == "idle"
    assert wait(backend, keys)[keys[0]].status == "done"


def test_a_job_removed_before_its_payload_started_says_so(tmp_path: Path) -> None:
    """Removed while it waits for a slot (or between its start mark and its payload's start): its wrapper writes
    the signal as its exit, never starts the payload, and the job reads "killed by signal 15", not a death
    without an exit code."""
    backend = LocalBackend(tmp_path / "w", slots=1)
    with only_slot_taken(backend):
        keys = submit(backend, payload(tmp_path / "p", "open('ran', 'w').close()\n"), 1)
        time.sleep(0.3)
        backend.remove("c", "t", keys, "superseded")
        seen = wait(backend, keys, deadline=10)
    assert seen[keys[0]].status == "failed" and seen[keys[0]].reason.startswith("killed by signal 15"), seen
    assert not (backend.job_dir("c", "t", keys[0]) / "ran").exists()


def test_exit_codes_signals_and_stderr(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "w")
    script = payload(tmp_path / "p", "print('first', file=sys.stderr); print('bad input x', file=sys.stderr)\n"
                                      "if sys.argv[1] == 'kill': os.kill(os.getpid(), 9)\nsys.exit(4)\n")
    keys = submit(backend, script, 1, ["exit"]) + [JobKey(2, 0, 1, 1)]
    backend.submit("c", "t", [backend.batch_job("c", "t", keys[1], JobSpec(0, script, ("kill",)))])
    seen = wait(backend, keys)
    assert seen[keys[0]] == Observation("failed", "exit code 4: bad input x", seen[keys[0]].batch_id,
                                        started=seen[keys[0]].started)
    assert seen[keys[0]].started and seen[keys[0]].started.endswith("Z")  # the runner's start of the payload
    assert seen[keys[1]].reason == "killed by signal 9: bad input x"


def test_a_job_that_died_without_an_exit_code_is_failed(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "w")
    keys = submit(backend, payload(tmp_path / "p", "time.sleep(60)\n"), 1)
    folder = backend.job_dir("c", "t", keys[0])
    stop = time.monotonic() + 10
    while not (folder / "started").exists() and time.monotonic() < stop:
        time.sleep(0.05)
    assert backend.observe("c", "t", keys)[keys[0]].status == "running"
    pid = int((folder / "pid").read_text().split()[0])
    os.killpg(pid, signal.SIGKILL)  # the job's whole session: its wrapper and the payload
    stop = time.monotonic() + 10
    while backend.observe("c", "t", keys)[keys[0]].status == "running" and time.monotonic() < stop:
        time.sleep(0.05)
    assert backend.observe("c", "t", keys)[keys[0]] == Observation(
        "failed", f"job process {pid} died without an exit code", f"local:{pid}")


def test_a_recycled_pid_is_not_taken_for_the_job(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "w")
    key = JobKey(1, 0, 1, 1)
    folder = backend.makedirs(backend.job_dir("c", "t", key))
    (folder / "pid").write_text(f"{os.getpid()} 1")  # a live process, but not started at tick 1
    assert backend.observe("c", "t", [key])[key].status == "failed"
    # a folder whose pid file is not written yet (a submit in progress, or killed before it started the job):
    # not a failure; the submit stages find it by key and start it (issue 10 defect 1, its local trigger)
    backend.makedirs(backend.job_dir("c", "t", JobKey(1, 1, 1, 1)))
    assert backend.observe("c", "t", [JobKey(1, 1, 1, 1)])[JobKey(1, 1, 1, 1)] == Observation("idle")
    assert backend.find("c", "t", [JobKey(1, 1, 1, 1)]) == {}
    # no folder at all (a check run with another --workdir): no evidence, so no verdict
    assert backend.observe("c", "t", [JobKey(1, 2, 1, 1)]) == {}


def test_staging_is_content_addressed(tmp_path: Path) -> None:
    backend = make_backend("local", tmp_path / "w")
    script = payload(tmp_path / "p", "import helper\n")
    (tmp_path / "p" / "helper.py").write_text("X = 1\n")
    first = Path(backend.stage(script))
    assert first.read_text() == Path(script).read_text() and (first.parent / "helper.py").exists()
    (tmp_path / "p" / "helper.py").write_text("X = 2\n")
    second = Path(make_backend("local", tmp_path / "w").stage(script))
    assert second.parent != first.parent and (first.parent / "helper.py").read_text() == "X = 1\n"
    assert backend.stage("true") == "true"  # a command name: found on the job's PATH, not staged
    shell = tmp_path / "sh" / "job.sh"  # any executable given by a path is a payload, staged alone (issue 13.4)
    shell.parent.mkdir()
    shell.write_text("#!/bin/sh\necho from-shell\n")
    staged = Path(backend.stage(str(shell)))
    assert staged.parent.parent == backend.workdir / "bin" and os.listdir(staged.parent) == ["job.sh"]
    assert os.access(staged, os.X_OK) and not staged.stat().st_mode & 0o022


def test_unknown_backend_and_bad_slots_are_refused(tmp_path: Path) -> None:
    from ecalstate.errors import EcalStateError

    with pytest.raises(EcalStateError, match="unknown backend 'slurm'"):
        make_backend("slurm", tmp_path)
    with pytest.raises(EcalStateError, match="invalid number of local slots 0"):
        LocalBackend(tmp_path, slots=0)
