"""Job files that cannot be turned against their readers (issue 20, item 3).

A job's payload writes into its own attempt folder (on HTCondor as the pool's job user, into a group-writable
folder): it can replace its stderr, its report or the local runner's bookkeeping by a symbolic link (to a file only
the handler's account may read), a named pipe (whoever opens it waits for ever), a directory, a device, a hard link or
a huge file. Each case here is a real job that plants the thing itself, then the real ``check`` of a handler's
command line (with a timeout: it must finish), ``ecalstate job logs`` and the web view: they show a one-line note
naming the file and what it is, never what a link points to.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest
from cli_support import ECALSTATE
from handler_support import condor_workdir, make_campaign

from ecalstate import Store
from ecalstate.backends import stderr_tail
from ecalstate.logs import job_logs

C = "prompt"
SECRET = "SECRET-c0ffee"
#: a huge file: far beyond every bound a reader has (sparse: it costs no disk)
HUGE = 256 * 1024 * 1024

#: the payload: ``NAME KIND TARGET EXIT HOLD``: replace NAME in its job folder by KIND, wait while HOLD exists, exit
PLANT = r'''
import os, stat, sys, time
name, kind, target, code, hold = sys.argv[1:6]
print("the payload's own stderr line", file=sys.stderr, flush=True)
if name == "exit.tmp":  # the name the local runner writes its exit code under, before renaming it to exit
    name += str(os.getppid())

def swap(seconds):
    """A child that keeps replacing NAME (atomically) by a regular file, a link and a named pipe."""
    if os.fork():
        return
    os.setsid()
    end = time.time() + seconds
    while time.time() < end:
        with open(".swap", "w") as f:
            f.write("a regular line\n")
        os.replace(".swap", name)
        os.symlink(target, ".swap")
        os.replace(".swap", name)
        os.mkfifo(".swap")
        os.replace(".swap", name)
    os._exit(0)

if os.path.lexists(name):
    os.unlink(name)
if kind == "symlink-out":
    os.symlink(target, name)
elif kind == "symlink-in":
    with open("inner", "w") as f:
        f.write("a line of the folder's own file\n")
    os.symlink("inner", name)
elif kind == "fifo":
    os.mkfifo(name)
elif kind == "directory":
    os.mkdir(name)
elif kind == "device":
    os.mknod(name, stat.S_IFCHR | 0o600, os.makedev(1, 3))
elif kind == "hardlink":
    os.link(target, name)
elif kind == "huge":
    with open(name, "wb") as f:
        f.truncate(HUGE)
        f.seek(HUGE)
        f.write(b"\nthe last line of a huge file\n")
elif kind == "folder-link":
    here = os.getcwd()
    os.rename(here, here + ".moved")
    os.symlink(here + ".moved", here)
elif kind == "logs-field":  # a report that names another folder as the job's logs
    with open(name, "w") as f:
        f.write('{"fields": {"logs": "%s", "answer": 42}}' % target)
elif kind == "swap":
    swap(8.0)
else:
    raise SystemExit(f"unknown kind {kind}")
start = time.time()
while hold and os.path.exists(hold) and time.time() < start + 120:
    time.sleep(0.05)
sys.exit(int(code))
'''.replace("HUGE", str(HUGE))

#: a workflow whose job i plants the i-th "NAME:KIND" of its run's metadata
HANDLER = '''
from ecalstate.backends import JobSpec
from ecalstate.handler import TaskHandler


class Plant(TaskHandler):
    task = "plant"
    condor = {"request_memory": "64MB"}

    def jobs(self, campaign, claim):
        m = claim.meta
        return [JobSpec(i, m["payload"], [*plant.split(":"), m["target"], str(m["exit"]), m.get("hold", "")])
                for i, plant in enumerate(m["plants"].split(","))]


Plant.main()
'''


@dataclass
class Ran:
    """A process that ended (or was killed at its deadline)."""

    code: int
    out: str
    err: str
    seconds: float
    max_rss_mb: float
    timed_out: bool


#: forks and runs its arguments, and writes their peak memory (wait4) to the file named first. The command is a
#: grandchild of the test: a child forked from pytest starts with pytest's pages resident (hundreds of MB late in a
#: full run), and the kernel counts them in the child's peak even after it runs another program
MEASURED = """import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as handle:
    handle.write(str(usage.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
os._exit(code if code >= 0 else 128 - code)
"""


def run(args: Sequence[str], tmp: Path, timeout: float = 60.0, env: Optional[dict[str, str]] = None) -> Ran:
    """Run a command in its own session; killed (with its children) at ``timeout``; its peak memory from wait4."""
    out, err = tmp / f"out.{time.monotonic_ns()}", tmp / f"err.{time.monotonic_ns()}"
    rss = tmp / f"rss.{time.monotonic_ns()}"
    start = time.monotonic()
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen([sys.executable, "-c", MEASURED, str(rss), *args], stdout=o, stderr=e,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=env)
    timed_out = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() - start > timeout:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped: keep Popen from waiting again
    peak = int(rss.read_text()) if rss.exists() and rss.read_text() else usage.ru_maxrss
    return Ran(proc.returncode, out.read_text(), err.read_text(), time.monotonic() - start, peak / 1024, timed_out)


@dataclass
class Site:
    """One handler (the Plant workflow) over a SQLite file, a work folder and a payload, driven by its command line."""

    tmp: Path
    db: str
    work: Path
    backend: str
    script: Path
    payload: Path
    secret: Path

    def stage(self, stage: str, timeout: float = 60.0) -> Ran:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ECALSTATE_")}
        return run([sys.executable, str(self.script), "-c", C, "--db", self.db, "--backend", self.backend,
                    "--workdir", str(self.work), "--slots", "4", stage], self.tmp, timeout, env)

    def logs(self, run_number: int, jid: int, stream: str) -> Ran:
        return run([ECALSTATE, "--db", self.db, "job", "logs", "-c", C, "--task", "plant", "--run", str(run_number),
                    "--job", str(jid), *(["--stderr"] if stream == "stderr" else [])], self.tmp, 60)

    def folder(self, run_number: int, jid: int) -> Path:
        return self.work / "jobs" / C / "plant" / str(run_number) / "g1" / f"j{jid}.a1"

    def add_run(self, run_number: int, plants: Sequence[str], code: int, hold: Optional[Path] = None) -> None:
        meta: dict[str, Any] = {"payload": str(self.payload), "target": str(self.secret), "exit": code,
                                "plants": ",".join(plants)}
        if hold is not None:
            meta["hold"] = str(hold)
        with Store.open(self.db, actor="tester", create=True) as store:
            if not store.list_campaigns():
                make_campaign(store, [], task="plant", retries=0)
            from ecalstate import RunSpec

            store.inject_runs(C, [RunSpec(run_number, 1, meta)])

    def jobs(self, run_number: int) -> dict[int, tuple[str, str]]:
        """Each job's status and the reason of its last transition."""
        with Store.open(self.db, actor="tester") as store:
            reasons = {a.jid: a.reason for a in store.history(C, task="plant", run=run_number, limit=None)
                       if a.entity == "job" and a.from_status != a.to_status}
            return {j.jid: (j.status, reasons.get(j.jid, "")) for j in store.list_jobs(C, "plant", run_number)}


def make_site(tmp: Path, work: Path, backend: str = "local") -> Site:
    payload = tmp / "payload" / "plant.py"
    payload.parent.mkdir(parents=True)
    payload.write_text(PLANT)
    script = tmp / "handler" / "plant_handler.py"
    script.parent.mkdir()
    script.write_text(HANDLER)
    secret = tmp / "private" / "token.json"
    secret.parent.mkdir(mode=0o700)
    secret.write_text(json.dumps({"fields": {"token": SECRET}}) + "\n")
    secret.chmod(0o600)  # only the handler's account may read it
    return Site(tmp, str(tmp / "state.db"), work, backend, script, payload, secret)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return make_site(tmp_path, tmp_path / "work")


def wait_for(predicate: Any, what: str, deadline: float = 60.0) -> None:
    stop = time.monotonic() + deadline
    while not predicate():
        assert time.monotonic() < stop, f"timed out waiting for {what}"
        time.sleep(0.05)


def finished_locally(site: Site, run_number: int, jobs: int) -> None:
    wait_for(lambda: all(os.path.lexists(site.folder(run_number, j) / "exit") for j in range(jobs)), "the jobs")


def checked(site: Site) -> Ran:
    """``check`` through the handler's command line: it must finish, cleanly, in little memory (exit 3 when it left
    an instance failed for good, and only then)."""
    done = site.stage("check")
    assert not done.timed_out, f"check did not finish in 60 s: {done.err[-2000:]}"
    lost = "failed for good" in done.out
    assert done.code == (3 if lost else 0) and "Traceback" not in done.err, done.err[-3000:]
    assert done.max_rss_mb < 200, f"check used {done.max_rss_mb:.0f} MB"
    return done


def logs_show(site: Site, run_number: int, jid: int, stream: str, note: str) -> str:
    """``ecalstate job logs``: it finishes, exits 0, names the file's note in its header, never the secret."""
    shown = site.logs(run_number, jid, stream)
    assert not shown.timed_out, "job logs did not finish in 60 s"
    assert shown.code == 0 and "Traceback" not in shown.err, shown.err
    assert SECRET not in shown.out
    assert note in shown.out.splitlines()[0], shown.out
    return shown.out


# ------------------------------------------------------------------------------------------- local backend

STDERR_CASES = {
    "symlink-out": "stderr is a symbolic link",
    "symlink-in": "stderr is a symbolic link",
    "fifo": "stderr is a named pipe",
    "directory": "stderr is a directory",
    "device": "stderr is a device",
    "hardlink": "stderr has 2 hard links",
}


@pytest.mark.parametrize("kind", sorted(STDERR_CASES))
def test_a_planted_stderr_is_a_note_in_the_reason_and_the_logs(site: Site, kind: str) -> None:
    site.add_run(1, [f"stderr:{kind}"], code=3)
    assert site.stage("submit").code == 0
    finished_locally(site, 1, 1)
    checked(site)
    note = STDERR_CASES[kind]
    assert site.jobs(1) == {0: ("failed", f"exit code 3: {note}")}
    logs_show(site, 1, 0, "stderr", note)


def test_a_huge_stderr_and_stdout_are_read_only_at_their_end(site: Site) -> None:
    site.add_run(1, ["stderr:huge", "stdout:huge"], code=3)
    assert site.stage("submit").code == 0
    finished_locally(site, 1, 2)
    done = checked(site)
    assert site.jobs(1)[0] == ("failed", "exit code 3: the last line of a huge file")
    out = site.logs(1, 1, "stdout")
    assert out.code == 0 and "(older lines left out)" in out.out and out.out.endswith("the last line of a huge file\n")
    assert len(out.out) < 70 * 1024 and out.max_rss_mb < 200
    print(f"\ncheck over a {HUGE >> 20} MiB stderr: {done.seconds:.2f} s, {done.max_rss_mb:.0f} MB peak")


REPORT_CASES = {
    "symlink-out": "report.json is a symbolic link",
    "fifo": "report.json is a named pipe",
    "directory": "report.json is a directory",
}


@pytest.mark.parametrize("kind", sorted(REPORT_CASES))
def test_a_planted_report_fails_its_job_with_the_note(site: Site, kind: str) -> None:
    site.add_run(1, [f"report.json:{kind}"], code=0)
    assert site.stage("submit").code == 0
    finished_locally(site, 1, 1)
    checked(site)
    assert site.jobs(1) == {0: ("failed", REPORT_CASES[kind])}
    with Store.open(site.db, actor="tester") as store:
        fields = store.list_jobs(C, "plant", 1)[0].fields
    assert set(fields) == {"logs", "started"}  # nothing of the linked file became a field (started: the runner's)


def test_a_report_cannot_move_the_logs(site: Site) -> None:
    """A report's ``logs`` field would send every log reader to a folder the job chose: it is dropped, with a note."""
    site.add_run(1, ["report.json:logs-field"], code=0)
    assert site.stage("submit").code == 0
    finished_locally(site, 1, 1)
    checked(site)
    assert site.jobs(1) == {0: ("done", "the report's field 'logs' was ignored (the handler records it)")}
    with Store.open(site.db, actor="tester") as store:
        fields = store.list_jobs(C, "plant", 1)[0].fields
        assert fields == {"logs": str(site.folder(1, 0)), "answer": 42, "started": fields["started"]}


@pytest.mark.parametrize("kind", ["symlink-out", "fifo"])
def test_a_planted_stdout_is_a_note_in_the_logs(site: Site, kind: str) -> None:
    site.add_run(1, [f"stdout:{kind}"], code=0)
    assert site.stage("submit").code == 0
    finished_locally(site, 1, 1)
    checked(site)
    assert site.jobs(1) == {0: ("done", "")}
    logs_show(site, 1, 0, "stdout", f"stdout is a {'symbolic link' if kind == 'symlink-out' else 'named pipe'}")


BOOKKEEPING_CASES = {
    "pid:fifo": "pid is a named pipe",
    "exit:fifo": "exit is a named pipe",
    "exit:symlink-out": "exit is a symbolic link",
    "pid:huge": "pid holds no process id",
}


@pytest.mark.parametrize("plant", sorted(BOOKKEEPING_CASES))
def test_the_local_runners_files_planted_while_the_job_runs(site: Site, plant: str) -> None:
    """The local backend's own files (``pid``, ``exit``) in the job folder, replaced by a payload that goes on
    running: check finishes and fails the job with the note."""
    hold = site.tmp / "hold"
    hold.touch()
    site.add_run(1, [plant], code=0, hold=hold)
    assert site.stage("submit").code == 0
    name = plant.split(":")[0]
    planted = site.folder(1, 0) / name
    wait_for(lambda: _planted(planted), "the plant")
    try:
        checked(site)
        assert site.jobs(1) == {0: ("failed", BOOKKEEPING_CASES[plant])}
    finally:
        hold.unlink()
    finished_locally(site, 1, 1)


def _planted(path: Path) -> bool:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    return not stat.S_ISREG(info.st_mode) or info.st_size > HUGE


def test_a_running_job_with_a_planted_lock_is_still_removed(site: Site) -> None:
    """The local backend removes a job (its run aborted by an operator) under the job folder's lock file: one the
    payload replaced by a named pipe neither stops the sweep nor saves the job from it."""
    hold = site.tmp / "hold"
    hold.touch()
    site.add_run(1, [".lock:fifo"], code=0, hold=hold)
    assert site.stage("submit").code == 0
    wait_for(lambda: _planted(site.folder(1, 0) / ".lock"), "the plant")
    try:
        with Store.open(site.db, actor="operator") as store:
            store.reprocess(C, "plant", runs=[1], reason="wrong calibration tag")
        checked(site)
        assert site.jobs(1) == {0: ("failed", "superseded: its task instance was aborted or claimed again")}
        wait_for(lambda: _text(site.folder(1, 0) / "exit") == "-15", "the job's end")  # stopped, not left running
    finally:
        hold.unlink()


def test_the_local_runner_never_writes_through_a_planted_link(site: Site) -> None:
    """The runner writes the exit code into a temporary file it then renames: a link the payload put under that name
    is replaced, never written through (it would overwrite any file of the handler's account)."""
    site.add_run(1, ["exit.tmp:symlink-out"], code=0)
    before = site.secret.read_text()
    assert site.stage("submit").code == 0
    finished_locally(site, 1, 1)
    checked(site)
    assert site.jobs(1) == {0: ("done", "")}
    assert site.secret.read_text() == before and (site.folder(1, 0) / "exit").read_text() == "0"


def test_a_job_folder_swapped_for_a_link_is_refused(site: Site) -> None:
    site.add_run(1, ["stderr:folder-link"], code=3)
    assert site.stage("submit").code == 0
    finished_locally(site, 1, 1)
    checked(site)
    note = "jobs/prompt/plant/1/g1/j0.a1 is a symbolic link"
    assert site.jobs(1) == {0: ("failed", note)}
    logs_show(site, 1, 0, "stderr", note)


def test_a_stderr_replaced_while_it_is_read(site: Site) -> None:
    """A child of the payload keeps swapping stderr between a regular file, a link and a named pipe (4 s) while
    check, ``job logs`` and the reason's reader read it: each read is the regular content or a note, never the
    link's target, never a hang."""
    site.add_run(1, ["stderr:swap"], code=3)
    assert site.stage("submit").code == 0
    finished_locally(site, 1, 1)
    allowed = {"a regular line", "stderr is a symbolic link", "stderr is a named pipe", ""}
    checked(site)
    status, reason = site.jobs(1)[0]
    assert status == "failed" and reason.removeprefix("exit code 3").removeprefix(": ") in allowed
    folder = site.folder(1, 0)
    seen = set()
    with Store.open(site.db, actor="tester") as store:
        stop = time.monotonic() + 2
        while time.monotonic() < stop:
            seen.add(stderr_tail(folder))
            log = job_logs(store, C, "plant", 1, 0, stream="stderr")[0]
            seen.add(log.note or log.text.strip())
    assert seen <= allowed and len(seen) >= 2, seen
    shown = site.logs(1, 0, "stderr")
    assert shown.code == 0 and not shown.timed_out and SECRET not in shown.out


def test_a_log_that_shrinks_and_grows_while_it_is_read(tmp_path: Path) -> None:
    """A regular stderr truncated and refilled while its tail is read: every read ends, bounded, never an error."""
    work = tmp_path / "work"
    folder = work / "jobs" / C / "plant" / "1" / "g1" / "j0.a1"
    folder.mkdir(parents=True)
    log = folder / "stderr"
    log.write_bytes(b"x" * 100_000 + b"\nlast\n")
    stop = threading.Event()

    def churn() -> None:
        with open(log, "r+b") as handle:
            while not stop.is_set():
                handle.truncate(0)
                handle.seek(0)
                handle.write(b"y" * 200_000 + b"\nagain\n")
                handle.flush()

    writer = threading.Thread(target=churn)
    writer.start()
    try:
        tails = {stderr_tail(folder) for _ in range(2000)}
    finally:
        stop.set()
        writer.join()
    assert tails <= {"", "last", "again", "y" * 200} and tails & {"last", "again"}, {t[:20] for t in tails}


def test_the_web_view_shows_the_notes_and_never_waits(tmp_path: Path) -> None:
    from test_web import serve

    site = make_site(tmp_path, tmp_path / "work")
    kinds = ["symlink-out", "fifo", "directory", "hardlink"]
    site.add_run(1, [f"stderr:{k}" for k in kinds], code=3)
    assert site.stage("submit").code == 0
    finished_locally(site, 1, len(kinds))
    checked(site)
    for view in serve(site.db):
        t0 = time.monotonic()
        status, _, html = view.get("/instance?c=prompt&task=plant&run=1")
        assert status == 200 and SECRET not in html
        for jid, kind in enumerate(kinds):
            note = STDERR_CASES[kind]
            assert f"job {jid} failed: exit code 3: {note}" in html
            status, _, page = view.get(f"/log?c=prompt&task=plant&run=1&job={jid}&stream=stderr")
            assert status == 200 and note in page and SECRET not in page
        print(f"\nweb view over planted files: {time.monotonic() - t0:.2f} s for 5 pages")


# ------------------------------------------------------------------------------------------- HTCondor pool

CONDOR_CASES = {
    "stderr:symlink-out": ("failed", "exit code 3: stderr is a symbolic link"),
    "stderr:symlink-in": ("failed", "exit code 3: stderr is a symbolic link"),
    "stderr:fifo": ("failed", "exit code 3: stderr is a named pipe"),
    "stderr:directory": ("failed", "exit code 3: stderr is a directory"),
    "report.json:symlink-out": ("failed", "exit code 3: the payload's own stderr line: report.json is a symbolic link"),
    "report.json:fifo": ("failed", "exit code 3: the payload's own stderr line: report.json is a named pipe"),
}


@pytest.fixture
def condor_site(condor_pool: Any, tmp_path: Path) -> Iterator[Site]:
    with condor_workdir(condor_pool, "planted-") as work:
        yield make_site(tmp_path, work, "htcondor")


def test_files_planted_by_a_job_on_the_pool(condor_site: Site) -> None:
    """The pool's job user, in its chroot, plants links to a file of the submit host that only the handler's account
    reads, named pipes and a folder: check (through the handler's command line) finishes and records notes."""
    site = condor_site
    plants = sorted(CONDOR_CASES)
    site.add_run(1, plants, code=3)
    submitted = site.stage("submit")
    assert submitted.code == 0, submitted.err
    t0 = time.monotonic()
    wait_for(lambda: all("Job terminated" in _text(site.folder(1, j) / "condor.log") for j in range(len(plants))),
             "the pool's jobs", deadline=180)
    ran = time.monotonic() - t0
    planted = [os.lstat(site.folder(1, j) / p.split(":")[0]) for j, p in enumerate(plants)]
    assert {info.st_uid for info in planted} == {2001}  # planted by the pool's job user
    checked(site)
    assert site.jobs(1) == {j: CONDOR_CASES[p] for j, p in enumerate(plants)}
    for jid, plant in enumerate(plants):
        name, kind = plant.split(":")
        if name == "stderr":
            logs_show(site, 1, jid, "stderr", CONDOR_CASES[plant][1].removeprefix("exit code 3: "))
    print(f"\npool jobs that plant files: ran in {ran:.1f} s")


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def test_the_condor_reason_reader_stays_in_the_job_folder(site: Site) -> None:
    """The HTCondor backend quotes the stderr its job's ad names (``Err``) only from inside the job's folder."""
    from ecalstate.backends.htcondor import observation

    folder = site.folder(1, 0)
    folder.mkdir(parents=True)
    (folder / "stderr").write_text("its own last line\n")
    ad = {"ClusterId": 1, "ProcId": 0, "JobStatus": 4, "ExitCode": 2, "Iwd": str(folder)}
    assert observation({**ad, "Err": str(folder / "stderr")}).reason == "exit code 2: its own last line"
    assert observation({**ad, "Err": "stderr"}).reason == "exit code 2: its own last line"
    assert observation({**ad, "Err": str(site.secret)}).reason == "exit code 2"  # not the job's folder: not read
    assert observation({**ad, "Err": "../../../../../../.." + str(site.secret)}).reason == "exit code 2"
