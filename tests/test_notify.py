"""Webhook notifications against real local HTTP servers (one of them down): what is sent, once, to which
channel; a webhook that is down blocks nothing, loses nothing and shows in health; URLs never printed."""

from __future__ import annotations

import json
import re
import logging
import os
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ecalstate import RunSpec, Store
from ecalstate.cli import main
from ecalstate.compat import JobCtrl, TaskHandler, close_stores
from ecalstate.notify import NotifyConfig, NotifySettings, Webhook, deliver, status


class Hook:
    """A local incoming-webhook endpoint on 127.0.0.1 recording the JSON it receives."""

    def __init__(self, port: int = 0, code: int = 200, delay: float = 0.0) -> None:
        self.received: list[dict[str, Any]] = []
        self.code = code
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.received.append(json.loads(body))
                time.sleep(delay)  # a slow webhook: senders overlap while it answers
                self.send_response(hook.code)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/s3cr3t-token"

    def texts(self) -> list[str]:
        return [m["text"] for m in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def hooks() -> Iterator[list[Hook]]:
    started: list[Hook] = []
    yield started
    for hook in started:
        hook.close()


def start(hooks: list[Hook], port: int = 0, code: int = 200, delay: float = 0.0) -> Hook:
    hook = Hook(port, code, delay)
    hooks.append(hook)
    return hook


@pytest.fixture
def store(sqlite_url: str) -> Iterator[Store]:
    with Store.open(sqlite_url, actor="tester", create=True) as s:
        s.create_campaign("prompt")
        s.add_task("prompt", "reco", max_retries=1)
        s.update_rtype("prompt", "all", add=["reco"])
        s.inject_runs("prompt", [RunSpec(1, 10), RunSpec(2, 10)])
        yield s
    close_stores()


def url_file(url: str) -> str:
    """A private file holding ``url``, as a site keeps its webhook secret."""
    fd, path = tempfile.mkstemp(prefix="hook-")
    with os.fdopen(fd, "w") as handle:
        handle.write(url + "\n")
    return path


def configure(store: Store, main: str, dev: str | None = None, channel: str | None = None) -> None:
    NotifySettings(store).set_config("prompt", NotifyConfig(
        Webhook(url_file(main), channel=channel, events=("failed", "retries", "health")),
        None if dev is None else Webhook(url_file(dev), events=("job-failed",)),
    ))


def fail_twice(store: Store, run: int) -> None:
    """Job 0 of ``run`` fails, is resubmitted, fails again: out of retries (max 1), the instance fails."""
    store.claim("prompt", "reco", group_by=lambda runs: [[r] for r in runs if r.run_number == run])
    store.create_jobs("prompt", "reco", run, [0])
    store.set_job_status("prompt", "reco", run, 0, "failed", reason="exit code 1")
    store.set_job_status("prompt", "reco", run, 0, "idle")
    store.set_job_status("prompt", "reco", run, 0, "failed", reason="exit code 1")
    assert store.instance("prompt", "reco", run).status == "failed"


def test_each_channel_gets_its_events_once(store: Store, hooks: list[Hook]) -> None:
    main, dev = start(hooks), start(hooks)
    fail_twice(store, 1)  # before the configuration: never sent
    configure(store, main.url, dev.url, channel="ecal-automation")
    assert [(d.channel, d.events, d.ok) for d in deliver(store, "prompt", backoff=0)] == [
        ("main", 0, True), ("dev", 0, True)]
    assert main.received == [] and dev.received == []

    fail_twice(store, 2)
    results = deliver(store, "prompt", backoff=0)
    assert [(d.channel, d.events, d.ok) for d in results] == [("main", 2, True), ("dev", 2, True)]
    (message,) = main.received
    assert message["channel"] == "ecal-automation" and message["username"] == "ecalstate"
    assert message["text"].splitlines()[1:] == [
        "- task reco run 2 job 0 failed with no retry left (2 attempts, max retries 1)",
        "- task reco run 2 failed: 1 of 1 jobs failed beyond 1 retries"]
    (low,) = dev.received
    assert "channel" not in low
    assert low["text"].splitlines()[1:] == ["- task reco run 2 job 0 failed (attempt 1): exit code 1",
                                            "- task reco run 2 job 0 failed (attempt 2): exit code 1"]
    assert [(d.events, d.problems) for d in deliver(store, "prompt", backoff=0)] == [(0, 0), (0, 0)]
    assert len(main.received) == len(dev.received) == 1


def test_a_webhook_that_is_down_blocks_nothing_loses_nothing_and_shows_in_health(
    store: Store, hooks: list[Hook], caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    down = f"http://127.0.0.1:{port}/hooks/s3cr3t-token"
    configure(store, down)
    fail_twice(store, 1)  # transitions go on while the webhook is down
    (result,) = deliver(store, "prompt", timeout=1, retries=2, backoff=0)
    assert not result.ok and result.pending == 2 and "unreachable" in str(result.error)
    assert status(store, "prompt")["channels"][0]["pending"] == 2
    (failing,) = store.health("prompt").failing
    assert (failing.task, failing.stage, failing.ok) == ("@notify", "send", False)
    assert "2 pending" in failing.message
    assert "s3cr3t" not in failing.message and "s3cr3t" not in caplog.text
    assert "not delivered" in caplog.text

    up = start(hooks, port=port)  # the webhook comes back on the same address
    (result,) = deliver(store, "prompt", backoff=0)
    assert result.ok and result.events == 2
    assert len(up.received) == 1 and len(up.texts()[0].splitlines()) == 3
    assert not store.health("prompt").failing
    assert deliver(store, "prompt", backoff=0)[0].events == 0 and len(up.received) == 1


def test_a_refusing_webhook_is_not_retried(store: Store, hooks: list[Hook]) -> None:
    refusing = start(hooks, code=400)
    configure(store, refusing.url)
    fail_twice(store, 1)
    (result,) = deliver(store, "prompt", retries=3, backoff=0)
    assert result.error == "webhook HTTP 400 Bad Request after 1 attempt(s)"
    assert len(refusing.received) == 1


def test_health_problems_are_told_once_each(store: Store, hooks: list[Hook]) -> None:
    main = start(hooks)
    configure(store, main.url)
    store.heartbeat("prompt", "reco", "check", ok=False, message="schedd unreachable")
    deliver(store, "prompt", backoff=0)
    deliver(store, "prompt", backoff=0)
    assert main.texts() == ["ecalstate, campaign prompt:\n- handler reco check failing: schedd unreachable"]

    store.claim("prompt", "reco", limit=1)  # run 1 processing, no job: stuck at once with stuck_after=0
    deliver(store, "prompt", stuck_after=0, backoff=0)
    assert main.texts()[1].startswith("ecalstate, campaign prompt:\n- problem: reco run 1 is stuck: processing without"
                                      " job progress since")
    assert main.texts()[1].endswith('[stuck]; to resolve: ecalstate reprocess -c prompt --task reco --runs 1 --reason "..."')
    store.heartbeat("prompt", "reco", "check", ok=True)
    deliver(store, "prompt", stuck_after=0, backoff=0)  # the shifters hear that it cleared
    assert main.texts()[2] == "ecalstate, campaign prompt:\n- resolved: handler reco check failing: schedd unreachable"
    deliver(store, "prompt", stuck_after=0, backoff=0)  # and only once
    store.heartbeat("prompt", "reco", "check", ok=False, message="schedd unreachable")
    deliver(store, "prompt", stuck_after=0, backoff=0)  # back: told again
    assert len(main.received) == 4 and "failing: schedd unreachable" in main.texts()[3]


def test_blocked_instances_are_told_and_so_is_their_unblocking(store: Store, hooks: list[Hook]) -> None:
    """Issue 13, item 3: an instance blocked by an upstream failure, then cleared by the operator."""
    main = start(hooks)
    store.add_task("prompt", "calib", depends_on=["reco"])
    store.update_rtype("prompt", "all", add=["calib"], backfill=True)
    configure(store, main.url)
    fail_twice(store, 1)
    deliver(store, "prompt", backoff=0)
    assert ("- warning: calib run 1 is blocked: its upstream task reco failed for the run [blocked]; to resolve:"
            ' ecalstate reprocess -c prompt --task reco --runs 1 --reason "..."') in main.texts()[0]
    store.set_status("prompt", "reco", [1], "skipped", reason="raw data lost")
    deliver(store, "prompt", backoff=0)
    assert main.texts()[1] == "ecalstate, campaign prompt:\n- resolved: task calib run 1 no longer waits (blocked)"


def test_a_compat_handler_stage_sends_what_it_caused(store: Store, hooks: list[Hook]) -> None:
    main = start(hooks)
    configure(store, main.url)

    class Reco(TaskHandler):
        def submit(self) -> None:
            jctrl = JobCtrl(workflow=self.task, campaign=self.campaign, tags={"run_number": 1}, dbname=self.opts.dbname)
            jctrl.createTask(jids=[0])
            jctrl.failed(jid=0)
            jctrl.idle(jid=0)
            jctrl.failed(jid=0)

    assert Reco("reco")(["--db", store.db.url, "-c", "prompt", "submit"]) == 0
    assert main.texts() == ["ecalstate, campaign prompt:\n"
                            "- task reco run 1 job 0 failed with no retry left (2 attempts, max retries 1)"]
    assert Reco("reco")(["--db", store.db.url, "-c", "prompt", "check"]) == 0
    assert main.texts()[1] == "ecalstate, campaign prompt:\n- task reco run 1 failed: 1 of 1 jobs failed beyond 1 retries"


def test_cli_never_prints_the_url(store: Store, hooks: list[Hook], tmp_path: Path,
                                  caplog: pytest.LogCaptureFixture) -> None:
    down = f"http://127.0.0.1:{free_port()}/hooks/s3cr3t-token"
    secret = tmp_path / "hook"
    secret.write_text(down + "\n")
    secret.chmod(0o600)
    runner = CliRunner()
    db = ["--db", store.db.url]
    out = runner.invoke(main, [*db, "notify", "set", "-c", "prompt", "--webhook-url-file", str(secret),
                               "--dev-webhook-url-env", "MM_DEV_HOOK", "--dev-on", "job-failed,health"])
    assert out.exit_code == 0, out.output
    assert f"URL from file {secret}" in out.output and "$MM_DEV_HOOK" in out.output
    shown = runner.invoke(main, [*db, "--json", "notify", "show", "-c", "prompt"])
    assert json.loads(shown.output)["channels"][1]["events"] == ["job-failed", "health"]
    fail_twice(store, 1)
    sent = runner.invoke(main, [*db, "notify", "send", "-c", "prompt", "--timeout", "1",
                                "--retries", "0"])
    assert sent.exit_code == 1
    assert "main: NOT delivered" in sent.output and "MM_DEV_HOOK" in sent.output
    for text in (out.output, shown.output, sent.output, caplog.text):
        assert "s3cr3t" not in text
    bad = runner.invoke(main, [*db, "notify", "set", "-c", "prompt", "--webhook-url-file", str(secret),
                               "--on", "everything"])
    assert bad.exit_code == 1 and "invalid notification events everything" in bad.output
    assert NotifySettings(store).config("prompt") is not None
    assert runner.invoke(main, [*db, "notify", "clear", "-c", "prompt"]).exit_code == 0
    assert NotifySettings(store).config("prompt") is None and store.health("prompt").failing == []  # the notifier is gone


def test_the_url_stays_out_of_reprs() -> None:
    hook = Webhook(url="https://chat.example/hooks/s3cr3t-token", events=("failed",))
    assert "s3cr3t" not in repr(NotifyConfig(hook))
    with pytest.raises(Exception, match="invalid notification events"):
        Webhook(url_file="/run/secrets/hook", events=())
    with pytest.raises(Exception, match="one of them"):
        Webhook(events=("failed",))


def test_logs_name_the_channel_not_the_url(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    configure(store, f"http://127.0.0.1:{free_port()}/hooks/s3cr3t-token")
    fail_twice(store, 1)
    with caplog.at_level(logging.WARNING, logger="ecalstate.notify"):
        deliver(store, "prompt", timeout=1, retries=0)
    assert "campaign prompt (main channel) not delivered: webhook unreachable" in caplog.text
    assert "s3cr3t" not in caplog.text


def test_the_database_keeps_a_reference_never_the_secret(store: Store, hooks: list[Hook], tmp_path: Path) -> None:
    """Issue 11, item 2: the URL is read from its file when sending; the database file has no trace of it."""
    hook = start(hooks)
    secret = tmp_path / "hook.secret"
    secret.write_text(hook.url + "\n")
    secret.chmod(0o600)
    runner = CliRunner()
    out = runner.invoke(main, ["--db", store.db.url, "notify", "set", "-c", "prompt", "--webhook-url-file",
                               str(secret)])
    assert out.exit_code == 0, out.output
    path = Path(store.db.url.removeprefix("sqlite:///"))
    runner.invoke(main, ["--db", store.db.url, "db", "stats"])  # checkpoint nothing special: read every file
    for f in path.parent.glob(path.name + "*"):
        assert b"/hooks/" not in f.read_bytes(), f
    fail_twice(store, 1)
    assert [d.ok for d in deliver(store, "prompt", timeout=2, retries=0)] == [True]
    # rotation: the new URL goes into the file; nothing in the database changes
    rotated = start(hooks)
    secret.write_text(rotated.url + "\n")
    fail_twice(store, 2)
    assert [d.ok for d in deliver(store, "prompt", timeout=2, retries=0)] == [True]
    assert len(hook.texts()) == 1 and len(rotated.texts()) == 1


def test_a_url_stored_by_an_earlier_version_still_sends_and_is_flagged(store: Store, hooks: list[Hook]) -> None:
    hook = start(hooks)
    NotifySettings(store).set_config("prompt", NotifyConfig(Webhook(url=hook.url, events=("failed",))))
    assert "insecure" in status(store, "prompt")["channels"][0]["url"]
    fail_twice(store, 1)
    assert [d.ok for d in deliver(store, "prompt", timeout=2, retries=0)] == [True]


@pytest.mark.parametrize("umask", [0o022, 0o000], ids=["umask 022", "umask 000"])
def test_a_new_database_is_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        db = tmp_path / "state.db"
        with Store.open(str(db), create=True) as s:
            s.create_campaign("prompt")  # writes: the -wal and -shm files exist now
            modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in tmp_path.iterdir()}
    finally:
        os.umask(old)
    assert modes["state.db"] == 0o600
    assert all(mode == 0o600 for mode in modes.values()), modes


def test_a_configured_group_may_share_the_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import grp

    group = grp.getgrgid(os.getgid()).gr_name
    monkeypatch.setenv("ECALSTATE_DB_GROUP", group)
    db = tmp_path / "state.db"
    Store.open(str(db), create=True).close()
    assert stat.S_IMODE(db.stat().st_mode) == 0o660 and db.stat().st_gid == os.getgid()
    monkeypatch.setenv("ECALSTATE_DB_GROUP", "no-such-group-here")
    with pytest.raises(Exception, match="ECALSTATE_DB_GROUP=no-such-group-here: no such group"):
        Store.open(str(tmp_path / "other.db"), create=True)
    assert not (tmp_path / "other.db").exists()


def test_another_local_user_cannot_read_the_database(tmp_path: Path, other_user: str) -> None:
    """Issue 11, item 2, tried as the attacker: another account on the host, in a folder it may enter."""
    import subprocess

    tmp_path.chmod(0o755)
    db = tmp_path / "state.db"
    with Store.open(str(db), create=True) as s:
        s.create_campaign("prompt")
        files = sorted(tmp_path.iterdir())
        tried = [subprocess.run(["runuser", "-u", other_user, "--", "cat", str(f)], capture_output=True, text=True)
                 for f in files]
        sql = subprocess.run(["runuser", "-u", other_user, "--", "sqlite3", "-readonly", str(db),
                              "SELECT name FROM campaign"], capture_output=True, text=True)
    assert [f.name for f in files] == ["state.db", "state.db-shm", "state.db-wal"]
    assert all(t.returncode != 0 and "Permission denied" in t.stderr for t in tried), tried
    assert sql.returncode != 0 and "prompt" not in sql.stdout


def test_messages_link_the_instance_page_of_the_view(store: Store, hooks: list[Hook]) -> None:
    """Issue 13, item 2: one click from the shifters' channel to the instance in ``ecalstate serve``."""
    from test_web import serve

    main = start(hooks)
    for view in serve(store.db.url.removeprefix("sqlite:///")):
        base = view.url.rstrip("/")
        NotifySettings(store).set_config("prompt", NotifyConfig(Webhook(url_file(main.url), events=("failed", "retries")),
                                                       view_url=base + "/"))
        fail_twice(store, 1)
        deliver(store, "prompt", backoff=0)
        links = re.findall(r"https?://\S+", main.texts()[0])
        assert links and all(link == base + "/instance?c=prompt&task=reco&run=1" for link in links)
        status, _, html = view.get(links[0].removeprefix(base))
        assert status == 200 and "failed" in html
    with pytest.raises(Exception, match="view URL must be an http"):
        NotifyConfig(Webhook(url_file(main.url), events=("failed",)), view_url="ecal-shift.cern.ch")


def test_a_webhook_url_file_others_can_read_is_refused(store: Store, hooks: list[Hook]) -> None:
    """Issue 20, item 5: the webhook URL is a secret (anyone holding it posts to the channel); its file must be
    private, as a database password file must, and the refusal never quotes it."""
    hook = start(hooks)
    path = url_file(hook.url)
    os.chmod(path, 0o644)
    NotifySettings(store).set_config("prompt", NotifyConfig(Webhook(url_file=path, events=("failed", "retries"))))
    fail_twice(store, 1)
    result = CliRunner().invoke(main, ["--db", store.db.url, "notify", "send", "-c", "prompt"])
    assert result.exit_code == 1, result.output
    assert f"chmod 600 {path}" in result.output and hook.url not in result.output
    assert hook.texts() == []
    os.chmod(path, 0o600)
    assert CliRunner().invoke(main, ["--db", store.db.url, "notify", "send", "-c", "prompt"]).exit_code == 0
    assert len(hook.texts()) == 1



def test_concurrent_senders_and_health_tell_each_instance_reason_and_level_once(db_url: str, hooks: list[Hook]) -> None:
    """Issue 22: ``notify send`` and ``health`` run at once by several real processes (cron, Jenkins, a shifter):
    what needs action is recorded once, and each instance, reason and level reaches the channel once."""
    import subprocess
    import sys
    from collections import Counter
    from pathlib import Path

    main_hook = start(hooks, delay=1.0)
    with Store.open(db_url, actor="tester", create=True) as s:
        s.create_campaign("prompt")
        s.add_task("prompt", "reco", max_retries=1)
        s.add_task("prompt", "calib", depends_on=["reco"])
        s.update_rtype("prompt", "all", add=["reco", "calib"])
        s.inject_runs("prompt", [RunSpec(r, 10) for r in range(1, 7)])
        NotifySettings(s).set_config("prompt", NotifyConfig(Webhook(url_file(main_hook.url), events=("health",))))
        for run in (1, 2, 3):
            fail_twice(s, run)  # 3 failed (problems), 3 calib blocked (warnings)
    ecalstate = str(Path(sys.executable).parent / "ecalstate")
    commands = [["notify", "send", "-c", "prompt"], ["health", "-c", "prompt"]] * 4
    for round_ in range(2):
        at = time.time() + 1.5  # every process past its imports, then all at once
        procs = [subprocess.Popen(
            [sys.executable, "-c", f"import time, sys, os; time.sleep(max(0, {at} - time.time()));"
             f" os.execv({ecalstate!r}, [{ecalstate!r}, '--db', {db_url!r}, *sys.argv[1:]])", *cmd],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for cmd in commands]
        outs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 1] * 4, outs  # health: unhealthy; send: delivered or busy
        if round_ == 0:
            with Store.open(db_url, actor="tester") as s:
                fail_twice(s, 4)  # a new problem between the rounds
    assert subprocess.run([ecalstate, "--db", db_url, "notify", "send", "-c", "prompt"], capture_output=True,
                          timeout=120).returncode == 0  # whatever a busy sender left pending
    told = Counter(line for text in main_hook.texts() for line in text.splitlines()[1:])
    assert told and max(told.values()) == 1, told
    keys = sorted(re.sub(r"^- (\w+): (\w+) run (\d+) .*\[([\w-]+)\].*$", r"\1 \2 \3 \4", line) for line in told)
    assert keys == sorted([f"problem reco {r} failed" for r in (1, 2, 3, 4)]
                          + [f"warning calib {r} blocked" for r in (1, 2, 3, 4)])
