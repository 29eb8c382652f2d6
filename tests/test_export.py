"""The exporter: cursor, batching, determinism, outages, targets (file, real InfluxDB 1.6.7, VictoriaMetrics).

``make_campaign`` (also used by tests/test_dashboards.py) drives a campaign through everything the
exporter must carry, with the public Store API only.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

import pytest
from cli_support import ECALSTATE, invoke

from ecalstate import JobUpdate, RunSpec, Store
from ecalstate.auditlog import vocab_id
from ecalstate.db import Database
from ecalstate.export import (
    HISTORY_SQL,
    ROWS_SQL,
    ExportError,
    FileTarget,
    RetryPolicy,
    TargetSpec,
    V1Target,
    V2Target,
    export,
)
from ecalstate.lineprotocol import timestamp_ns

#: every character line protocol must escape, and some it must leave alone
NASTY = 'a b,c=d "q" back\\slash\\ new\nline ünïcødé ☃ \\'
FAST = RetryPolicy(retries=1, base=0.01, cap=0.01)


def make_campaign(store: Store, campaign: str = "prompt", runs: int = 12, text: str = NASTY,
                  deadlines: bool = False) -> list[int]:
    """Injection into two run types, fill-grouped claims (merged runs), jobs with fields, failures,
    a retry, a task failed beyond its retries, reprocessing (a new generation), operator
    transitions, handler heartbeats. Free text (reasons, messages, job fields) is ``text``.

    ``deadlines``: reco must be done 1 h after its run's end, calib 1 h after its fill's; runs ended 2 h (even) or
    10 min (odd) before now: some are done late, some in time."""
    store.create_campaign(campaign)
    hour = 3600 if deadlines else None
    store.add_task(campaign, "reco", max_retries=1, deadline=hour)
    store.add_task(campaign, "calib", depends_on=["reco"], max_retries=0, deadline=hour,
                   deadline_from="fill-end" if deadlines else None)
    store.add_task(campaign, "plots", depends_on=["calib"], max_retries=0)
    store.update_rtype(campaign, "all", add=["reco", "calib"])
    store.create_rtype(campaign, "collisions", filter="class=Collisions", tasks=["plots"])
    numbers = [356000 + i for i in range(runs)]
    now = datetime.now(timezone.utc)

    def ended(i: int) -> dict[str, str]:
        ago = timedelta(hours=2) if i % 2 == 0 else timedelta(minutes=10)
        return {"end_time": (now - ago).strftime("%Y-%m-%dT%H:%M:%SZ")} if deadlines else {}

    store.inject_runs(campaign, [
        RunSpec(n, 8000 + i // 2, {"class": "Cosmics" if i % 4 == 3 else "Collisions", **ended(i)})
        for i, n in enumerate(numbers)
    ])
    ok, retried, doomed = numbers[0], numbers[1], numbers[2]

    for claim in store.claim(campaign, "reco"):
        fields: list[dict[str, Any]] = [{"output": f"/eos/reco/{claim.run_number}_{j}.root", "label": text}
                                        for j in range(3)]
        if claim.run_number == ok:
            fields[0].update({"key with space,comma=eq": 1, "back\\slash\nkey": "x", "status": "user's", "time": 3})
        store.create_jobs(campaign, "reco", claim.run_number, [0, 1, 2], fields)
    store.update_jobs(campaign, "reco", [JobUpdate(n, j, "running") for n in numbers for j in range(3)])
    store.update_jobs(campaign, "reco", [JobUpdate(retried, 1, "failed", reason="held: " + text)])
    store.update_jobs(campaign, "reco", [JobUpdate(retried, 1, "idle", reason="resubmitted")])
    store.update_jobs(campaign, "reco", [JobUpdate(retried, 1, "running")])
    for status in ("failed", "idle", "running", "failed"):
        store.set_job_status(campaign, "reco", doomed, 0, status, reason=f"{status}: {text}")
    store.update_jobs(campaign, "reco", [
        JobUpdate(n, j, "done", fields={"nevents": 1000 * j + n % 100, "good": j != 2})
        for n in numbers for j in range(3) if not (n == doomed and j == 0)
    ])

    leaders = [c.run_number for c in store.claim(campaign, "calib", group_by="fill")]
    for leader in leaders:
        store.create_jobs(campaign, "calib", leader, [0], [{"constant": 1.5}])
    store.set_job_status(campaign, "calib", leaders[0], 0, "failed", reason=text)
    store.update_jobs(campaign, "calib", [JobUpdate(n, 0, "done") for n in leaders[1:]])

    store.reprocess(campaign, "reco", failed=True, downstream=True, reason="retry after fix: " + text)
    for claim in store.claim(campaign, "reco"):
        store.create_jobs(campaign, "reco", claim.run_number, [0])
        store.set_job_status(campaign, "reco", claim.run_number, 0, "done", fields={"output": "/eos/again.root"})
    store.reprocess(campaign, "calib", runs=[leaders[0]], reason=text)
    for claim in store.claim(campaign, "plots", limit=2):
        store.create_jobs(campaign, "plots", claim.run_number, [0])

    store.heartbeat(campaign, "reco", "submit")
    store.heartbeat(campaign, "reco", "check", ok=False, message=text)
    store.heartbeat(campaign, "calib", "submit", message="ok")
    return numbers


def audit_count(db: Database) -> int:
    with db.tx(write=False) as tx:
        return int(tx.scalar("SELECT COUNT(*) FROM audit"))


def expected_points(db: Database) -> int:
    """Points the audit rows make: one per task, handler and job status change, and per job row setting user
    fields one in job_number (numbers) and one in job_text (the rest)."""
    with db.tx(write=False) as tx:
        found = tx.all("SELECT entity, from_status, to_status, detail FROM audit")
    total = 0
    for entity, src, dst, detail in found:
        if entity != "job":
            total += 1
            continue
        values = [v for v in json.loads(detail or "{}").values() if v is not None]
        total += (src != dst) + any(isinstance(v, (bool, int, float)) for v in values)
        total += any(not isinstance(v, (bool, int, float)) for v in values)
    return total


def file_export(store: Store, path: Path, **kw: Any) -> Any:
    target = FileTarget(str(path))
    return export(store, target, **kw)


# ------------------------------------------------------------------------ file target, any engine


def test_incremental_export_sends_each_change_once(store: Store, tmp_path: Path) -> None:
    make_campaign(store)
    out = tmp_path / "state.lp"
    first = file_export(store, out)
    total = expected_points(store.db)
    assert (first.points, first.cursor_before, first.skipped, first.refused) == (total, 0, 0, 0)
    assert first.batches == 1 and len(split_lines(out.read_text())) == total > audit_count(store.db)

    content = out.read_bytes()
    again = file_export(store, out)
    assert (again.points, again.batches, again.cursor_after) == (0, 0, first.cursor_after)
    assert out.read_bytes() == content

    store.heartbeat("prompt", "calib", "check")
    third = file_export(store, out)
    assert (third.points, third.cursor_before) == (1, first.cursor_after)
    added = out.read_bytes()[len(content):].decode()
    assert added.startswith('handler,campaign=prompt,stage=check,task=calib ok=true,heartbeat=1i,message="",actor=')
    assert store.cursor(FileTarget(str(out)).name) == third.cursor_after == first.cursor_after + 1


def test_replays_are_byte_identical_whatever_the_batches(store: Store, tmp_path: Path) -> None:
    make_campaign(store)
    whole = tmp_path / "whole.lp"
    file_export(store, whole)
    small = tmp_path / "small.lp"
    result = file_export(store, small, batch_size=7)
    assert result.batches > 10
    assert small.read_bytes() == whole.read_bytes()  # job attempts and fields rebuilt across batch boundaries

    replay = file_export(store, whole, full=True)
    assert replay.full and replay.points == expected_points(store.db)
    assert whole.read_bytes() == small.read_bytes() * 2


def job_lines(text: str, task: str, run: int, jid: int, measurement: str = "job") -> list[str]:
    prefix = f"{measurement},campaign=prompt,id={jid},run_number={run},task={task} "
    return [ln for ln in split_lines(text) if ln.startswith(prefix)]


def split_lines(text: str) -> list[str]:
    """Points of a line-protocol text (a newline inside a quoted string does not end a point)."""
    return re.findall(r'(?:[^"\n]|"(?:[^"\\]|\\.)*")+', text)


def test_job_points_carry_attempts_and_fields_as_of_their_transition(store: Store, tmp_path: Path) -> None:
    numbers = make_campaign(store, text="plain")
    out = tmp_path / "out.lp"
    file_export(store, out, batch_size=3)
    text = out.read_text()
    retried = job_lines(text, "reco", numbers[1], 1)
    assert [re.findall(r'status="(\w+)"', ln)[0] for ln in retried] == [
        "idle", "running", "failed", "idle", "running", "done"]
    assert [int(re.findall(r"attempts=(\d+)i", ln)[0]) for ln in retried] == [1, 1, 1, 2, 2, 2]
    assert all("idle=1i,running=0i,done=0i,failed=0i" in ln for ln in retried if 'status="idle"' in ln)
    assert not any("label" in ln or "nevents" in ln for ln in retried)  # user fields never share a status point
    texts = job_lines(text, "reco", numbers[1], 1, "job_text")
    assert [ln.split(" ")[1] for ln in texts] == [f'label="plain",output="/eos/reco/{numbers[1]}_1.root"']
    assert [ln.split(" ")[1] for ln in job_lines(text, "reco", numbers[1], 1, "job_number")] == [
        "good=1.0,nevents=1001.0"]  # set with the last transition, at its time
    assert job_lines(text, "reco", numbers[1], 1, "job_number")[0].split(" ")[2] == retried[-1].split(" ")[-1]

    first = job_lines(text, "reco", numbers[0], 0, "job_text")[0]
    assert 'back_slash_key="x"' in first and 'status="user\'s"' in first
    number = job_lines(text, "reco", numbers[0], 0, "job_number")[0]
    assert 'key\\ with\\ space\\,comma\\=eq=1.0' in number and "user_time=3.0" in number and ",time=" not in number
    db_jobs = {(j.run_number, j.jid): j for j in store.list_jobs("prompt", "reco")}
    last = job_lines(text, "reco", numbers[2], 0)[-1]
    assert db_jobs[(numbers[2], 0)].generation == 2 and "generation=2i" in last and "attempts=1i" in last


def test_handler_points(store: Store, tmp_path: Path) -> None:
    make_campaign(store)
    out = tmp_path / "out.lp"
    file_export(store, out)
    handler = [ln for ln in split_lines(out.read_text()) if ln.startswith("handler,")]
    assert len(handler) == 3
    assert handler[0].startswith("handler,campaign=prompt,stage=submit,task=reco ok=true,heartbeat=1i,message=\"\"")
    assert handler[1].startswith('handler,campaign=prompt,stage=check,task=reco ok=false,heartbeat=1i,message="a b,c=d'
                                 ' \\"q\\" back\\\\slash\\\\ new\nline ünïcødé ☃ \\\\",actor="tester"')


def test_attention_points_say_what_needed_action_and_replay_identically(store: Store, tmp_path: Path) -> None:
    """Issue 22: what needs action, recorded by the attention model, as points Grafana can plot."""
    from ecalstate.attention import observe

    make_campaign(store, text="plain")
    later = datetime.now(timezone.utc) + timedelta(hours=7)
    store.clock = lambda: later.strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # type: ignore[method-assign]
    observe(store, "prompt")  # two plots instances without job progress for 7 h: stuck
    store.reprocess("prompt", "plots", runs=[356004], reason="stuck: again")  # clears one
    observe(store, "prompt")
    out = tmp_path / "out.lp"
    file_export(store, out, batch_size=5)
    points = [ln for ln in split_lines(out.read_text()) if ln.startswith("attention,")]
    rows = store.history("prompt", kinds=["attention"], limit=None)
    assert len(points) == len(rows) > 0
    for row, point in zip(rows, points):
        tags, fields, when = point.split(" ")[0], point[len(point.split(" ")[0]) + 1:].rsplit(" ", 1)[0], point[-19:]
        assert tags == f"attention,campaign=prompt,reason={row.reason},run_number={row.run_number},task={row.task}"
        severity = {"clear": 0, "info": 1, "warning": 2, "problem": 3}[row.to_status]
        assert fields.startswith(f'level="{row.to_status}",severity={severity}i,since=') and "command=" in fields
        assert int(when) == timestamp_ns(row.ts)
    cleared = [p for p in points if 'level="clear"' in p]
    assert cleared and all('message="",command=""' in p for p in cleared)
    problem = next(p for p in points if 'level="problem"' in p)
    assert 'command="ecalstate reprocess -c prompt' in problem
    replay = tmp_path / "replay.lp"
    file_export(store, replay, full=True)
    assert [ln for ln in split_lines(replay.read_text()) if ln.startswith("attention,")] == points


def test_cursor_query_reads_by_primary_key(tmp_path: Path) -> None:
    """Incremental cost follows the changes, not the database: the batch query is a rowid range search."""
    with Store.open(str(tmp_path / "s.db"), create=True) as store:
        with store.db.tx(write=False) as tx:
            plan = " | ".join(str(r[-1]) for r in tx.all("EXPLAIN QUERY PLAN " + ROWS_SQL, (0, 10, 10)))
            history = " | ".join(str(r[-1]) for r in tx.all(
                "EXPLAIN QUERY PLAN " + HISTORY_SQL.format(marks="?,?"), (1, 2, 10)))
    assert "SEARCH a USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)" in plan, plan
    assert "SCAN a" not in plan and "TEMP B-TREE" not in plan, plan
    assert "USING COVERING INDEX ix_audit_retry" in history or "USING INDEX ix_audit_retry" in history, history


# ------------------------------------------------------------------------ outages, targets, credentials


def closed_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_unreachable_server_leaves_the_cursor(chain: Store, protocol: str, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    spec = TargetSpec(url=url, protocol=protocol, database="ecal" if protocol == "v1" else None,
                      bucket=None if protocol == "v1" else "ecal", org=None if protocol == "v1" else "cms", timeout=2)
    target = spec.open(env={})
    try:
        with pytest.raises(ExportError) as info:
            export(chain, target, retry=FAST)
    finally:
        target.close()
    err = info.value
    assert not err.permanent and err.result is not None and err.result.points == 0
    assert "after 2 attempts" in str(err) and "connection refused" in str(err) and "\n" not in str(err)
    assert chain.cursor(target.name) == 0
    out = tmp_path / "later.lp"
    assert file_export(chain, out).points == audit_count(chain.db)  # nothing was consumed


def test_cli_outage_is_one_line_exit_1_without_secrets(tmp_path: Path) -> None:
    from cli_support import build_chain
    db = str(tmp_path / "s.db")
    build_chain(db)
    secret = "s3cr3t-" + uuid.uuid4().hex
    pw_file = tmp_path / "pw"
    pw_file.write_text(secret + "\n")
    pw_file.chmod(0o600)
    url = f"http://127.0.0.1:{closed_port()}"
    env = {"ECALSTATE_INFLUX_TOKEN": secret, "ECALSTATE_INFLUX_USER": "ecal", "ECALSTATE_INFLUX_PASSWORD": secret}
    runs = [
        invoke(db, "export", "--url", url, "--bucket", "b", "--org", "o", "--retries", "1", "--retry-base", "0",
               env=env),
        invoke(db, "export", "--protocol", "v1", "--url", url, "--database", "d", "--password-file", str(pw_file),
               "--retries", "0", env={"ECALSTATE_INFLUX_USER": "ecal"}),
        invoke(db, "export", "--url", f"http://ecal:{secret}@127.0.0.1:1", "--bucket", "b", "--org", "o"),
    ]
    for result in runs:
        assert result.exit_code == 1, (result.stdout, result.stderr)
        assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1
        assert secret not in result.stderr
    assert "credentials do not belong in the URL (http://ecal:***@127.0.0.1:1)" in runs[2].stderr
    with Store.open(db) as store:
        with store.db.tx(write=False) as tx:
            assert tx.all("SELECT * FROM export_cursor") == []


def test_a_token_or_password_file_others_can_read_is_refused(tmp_path: Path) -> None:
    """A credentials file the group or others may read is refused before anything connects (as libpq refuses
    such a ``.pgpass``), with one line naming the file and the fix."""
    from cli_support import build_chain
    db = str(tmp_path / "s.db")
    build_chain(db)
    secret = "s3cr3t-" + uuid.uuid4().hex
    url = f"http://127.0.0.1:{closed_port()}"
    shared = tmp_path / "shared"
    shared.write_text(secret + "\n")
    for mode in (0o644, 0o660):
        shared.chmod(mode)
        for args in (["--url", url, "--bucket", "b", "--org", "o", "--token-file", str(shared)],
                     ["--protocol", "v1", "--url", url, "--database", "d", "--password-file", str(shared)]):
            result = invoke(db, "export", *args, "--retries", "0", env={"ECALSTATE_INFLUX_USER": "ecal"})
            assert result.exit_code == 1 and result.stdout == "" and len(result.stderr.strip().splitlines()) == 1
            assert f"{shared} may be read by other users" in result.stderr, result.stderr
            assert f"chmod 600 {shared}" in result.stderr and secret not in result.stderr
    with Store.open(db) as store:
        with store.db.tx(write=False) as tx:
            assert tx.all("SELECT * FROM export_cursor") == []


def test_target_options_are_checked_before_anything_runs(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("")
    token.chmod(0o600)
    cases = [
        (TargetSpec(url="http://h:8086"), "needs --bucket and --org"),
        (TargetSpec(url="http://h:8086", protocol="v1"), "needs --database"),
        (TargetSpec(url="http://h:8086", protocol="v1", database="d", bucket="b"), "are for the v2 API"),
        (TargetSpec(url="http://h:8086", database="d", bucket="b", org="o"), "are for --protocol v1"),
        (TargetSpec(out="x.lp", url="http://h:8086"), "not both"),
        (TargetSpec(database="d"), "need --url"),
        (TargetSpec(out="x.lp", protocol="v1"), "--protocol need --url"),
        (TargetSpec(url="ftp://h/x", bucket="b", org="o"), "invalid URL"),
        (TargetSpec(url="http://h:8086?u=a&p=b", protocol="v1", database="d"), "credentials do not belong"),
        (TargetSpec(url="http://h:8086", bucket="b", org="o", token_file=str(token)), "is empty"),
        (TargetSpec(url="http://h:8086", bucket="b", org="o", token_file=str(tmp_path / "nope")), "cannot read"),
    ]
    from ecalstate.errors import Invalid
    for spec, message in cases:
        with pytest.raises(Invalid, match=re.escape(message)):
            spec.open(env={})
    with pytest.raises(Invalid, match="no user"):
        TargetSpec(url="http://h:8086", protocol="v1", database="d").open(env={"ECALSTATE_INFLUX_PASSWORD": "x"})
    assert TargetSpec().open(env={}).name == "file:" + os.path.abspath("ecalstate.lp")


def test_file_target_failure_is_permanent_and_keeps_the_cursor(chain: Store, tmp_path: Path) -> None:
    target = FileTarget(str(tmp_path / "missing-dir" / "x.lp"))
    with pytest.raises(ExportError) as info:
        export(chain, target, retry=FAST)
    assert info.value.permanent and "cannot write" in str(info.value)
    assert chain.cursor(target.name) == 0


def test_influxdb_client_is_imported_only_by_the_v2_target(tmp_path: Path) -> None:
    from cli_support import build_chain
    db = str(tmp_path / "s.db")
    build_chain(db)
    code = f"""
import sys
import ecalstate, ecalstate.export, ecalstate.cli.export
from ecalstate.cli import main
try:
    main(["--db", {db!r}, "export", "--out", {str(tmp_path / "x.lp")!r}])
except SystemExit as e:
    assert e.code in (0, None), e.code
assert "influxdb_client" not in sys.modules, "imported too early"
from ecalstate.export import TargetSpec
TargetSpec(url="http://127.0.0.1:1", bucket="b", org="o").open(env={{}})
assert "influxdb_client" in sys.modules
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "exported" in done.stdout


def test_watch_exports_changes_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    from cli_support import build_chain
    db = str(tmp_path / "s.db")
    build_chain(db)
    out = tmp_path / "w.lp"
    proc = subprocess.Popen([ECALSTATE, "--db", db, "export", "--out", str(out), "--watch", "0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: out.exists() and len(out.read_text().splitlines()) == 12)
        with Store.open(db, actor="op") as store:
            store.heartbeat("prompt", "reco", "submit")
        wait_for(lambda: len(out.read_text().splitlines()) == 13)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert stdout.splitlines() == [f"exported 12 points in 1 batch to file:{out} (cursor 0 -> 12)",
                                   f"exported 1 point in 1 batch to file:{out} (cursor 12 -> 13)"]


def wait_for(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_stop_between_batches_keeps_what_was_acknowledged(chain: Store, tmp_path: Path) -> None:
    stop = threading.Event()
    out = tmp_path / "s.lp"
    result = file_export(chain, out, batch_size=5, stop=stop, on_batch=lambda n, pos: stop.set())
    assert result.stopped and (result.points, result.batches, result.cursor_after) == (5, 1, 5)
    rest = file_export(chain, out, batch_size=5)
    assert rest.points == audit_count(chain.db) - 5 and rest.cursor_before == 5


def test_postgres_export_waits_for_audit_rows_still_being_written(pg_url: str, tmp_path: Path) -> None:
    """PostgreSQL hands out audit ids before commit: a row with a lower id may commit after a higher one.
    The exporter must not move its cursor past a row that is still being written."""
    with Store.open(pg_url, actor="t", create=True) as store:
        store.create_campaign("prompt")
        store.add_task("prompt", "reco")
        store.update_rtype("prompt", "all", add=["reco"])
        store.inject_runs("prompt", [RunSpec(1)])
        slow = store.db.engine.connect()
        slow_tx = slow.begin()
        slow.exec_driver_sql(  # a transaction that took an audit id and has not committed yet
            "INSERT INTO audit_log (ts, campaign_id, entity, task, run_number, to_status, actor, identity, reason)"
            f" SELECT 1893456000000000, id, {vocab_id('task')}, (SELECT id FROM string WHERE text = 'reco'), 1,"
            f" {vocab_id('processing')}, (SELECT id FROM string WHERE text = 't'), {vocab_id('')}, {vocab_id('')}"
            " FROM campaign")
        store.heartbeat("prompt", "reco", "submit")  # a later id, committed first
        out = tmp_path / "pg.lp"
        results: list[Any] = []
        worker = threading.Thread(target=lambda: results.append(file_export(store, out)))
        worker.start()
        with store.db.tx(write=False) as tx:
            wait_for(lambda: tx.scalar("SELECT COUNT(*) FROM pg_locks WHERE NOT granted AND relation ="
                                       " 'audit_log'::regclass") == 1 or not worker.is_alive())
        slow_tx.commit()
        slow.close()
        worker.join(30)
        assert results and results[0].points == 3
        assert 'reco="processing" 1893456000000000000' in out.read_text()


# ------------------------------------------------------------------------ InfluxDB 1.6.7


def fresh_db(influx: Any) -> str:
    name = "t_" + uuid.uuid4().hex[:10]
    influx.create_database(name)
    return name


def rows(influx: Any, query: str, db: str, **params: Any) -> list[dict[str, Any]]:
    """InfluxQL result rows as dicts, tags of each series included."""
    out = []
    for result in influx.query(query, db=db, **params)["results"]:
        for series in result.get("series", []):
            for values in series["values"]:
                out.append({**series.get("tags", {}), **dict(zip(series["columns"], values))})
    return out


def check_latest_statuses(influx: Any, db: str, store: Store, campaign: str = "prompt") -> None:
    """The latest status of every (run, task) and every job, read back with InfluxQL, equals the database's."""
    overview = store.overview(campaign)
    expected = {(str(r.run_number), t): s for r in overview.rows for t, s in r.statuses.items() if s}
    got = {}
    for row in rows(influx, f"SELECT last(*) FROM run WHERE campaign = '{campaign}' GROUP BY run_number", db):
        for key, value in row.items():
            if key.startswith("last_") and value is not None:
                got[(row["run_number"], key[5:])] = value
    assert got == expected

    for task in overview.tasks:
        want = {}  # a job id keeps its series across generations: the newest generation's job is the latest
        for j in store.list_jobs(campaign, task, all_generations=True):
            want[(str(j.run_number), str(j.jid))] = (j.status, j.attempts, j.generation)
        found = rows(influx, f"SELECT last(status) AS status, attempts, generation FROM job WHERE "
                             f"campaign = '{campaign}' AND task = '{task}' GROUP BY run_number, id", db)
        assert {(r["run_number"], r["id"]): (r["status"], r["attempts"], r["generation"]) for r in found} == want


def test_export_to_influxdb_v1_reads_back_the_database_state(store: Store, influx: Any, tmp_path: Path) -> None:
    make_campaign(store)
    db = fresh_db(influx)
    target = V1Target(influx.url, db)
    result = export(store, target, batch_size=50)
    target.close()
    assert result.points == expected_points(store.db) and result.batches >= -(-result.points // 50)
    check_latest_statuses(influx, db, store)

    beats = rows(influx, "SELECT last(heartbeat), ok, message FROM handler WHERE campaign = 'prompt'"
                         " GROUP BY task, stage", db, epoch="u")
    by_stage = {(b["task"], b["stage"]): b for b in beats}
    assert by_stage[("reco", "check")]["ok"] is False and by_stage[("reco", "check")]["message"] == NASTY
    failing = store.health("prompt").failing
    assert [(h.task, h.stage) for h in failing] == [("reco", "check")]
    assert by_stage[("reco", "check")]["time"] == timestamp_ns(failing[0].last_at) // 1000

    # the file target holds the same points: loading it gives the same answers
    out = tmp_path / "state.lp"
    file_export(store, out)
    loaded = fresh_db(influx)
    influx.write(out.read_text(), loaded, precision="ns")
    check_latest_statuses(influx, loaded, store)
    for measurement in ("run", "job", "job_number", "job_text", "handler"):
        query = f"SELECT * FROM {measurement} GROUP BY *"
        assert rows(influx, query, loaded) == rows(influx, query, db)


def test_free_text_round_trips_through_influxdb(store: Store, influx: Any) -> None:
    numbers = make_campaign(store, campaign="c.1:x+y-z")
    db = fresh_db(influx)
    target = V1Target(influx.url, db)
    export(store, target)
    target.close()
    where = f"WHERE campaign = 'c.1:x+y-z' AND task = 'reco' AND run_number = '{numbers[0]}' AND id = '0'"
    texts = rows(influx, f"SELECT last(label) AS label, back_slash_key, status FROM job_text {where}", db)
    assert [(r["label"], r["back_slash_key"], r["status"]) for r in texts] == [(NASTY, "x", "user's")]
    numbers_ = rows(influx, f'SELECT last("key with space,comma=eq") AS k, user_time FROM job_number {where}', db)
    assert [(r["k"], r["user_time"]) for r in numbers_] == [(1.0, 3.0)]
    reasons = rows(influx, "SELECT reason FROM job WHERE campaign = 'c.1:x+y-z' AND status = 'failed' AND task = 'reco'"
                           f" AND run_number = '{numbers[1]}'", db)
    assert [r["reason"] for r in reasons] == ["held: " + NASTY]
    assert rows(influx, 'SHOW TAG VALUES FROM "run" WITH KEY = "rtype"', db) == [
        {"key": "rtype", "value": "all"}, {"key": "rtype", "value": "all,collisions"}]
    check_latest_statuses(influx, db, store, "c.1:x+y-z")


def count_points(influx: Any, db: str) -> int:
    """Field values stored: one per exported line (each line carries one task status / one job or handler
    point whose fields are counted once through status / heartbeat)."""
    run = sum(v for r in rows(influx, "SELECT count(*) FROM run", db) for k, v in r.items() if k.startswith("count_"))
    job = sum(r["count"] for r in rows(influx, "SELECT count(status) FROM job", db))
    handler = sum(r["count"] for r in rows(influx, "SELECT count(heartbeat) FROM handler", db))
    return int(run + job + handler)


def test_influxdb_killed_mid_export_loses_and_duplicates_nothing(store: Store, influx: Any) -> None:
    make_campaign(store)
    total = audit_count(store.db)
    db = fresh_db(influx)
    target = V1Target(influx.url, db, timeout=5)
    acknowledged: list[tuple[int, int]] = []

    def crash_after_two(points: int, position: int) -> None:
        acknowledged.append((points, position))
        if len(acknowledged) == 2:
            influx.kill()  # SIGKILL, as a crash

    try:
        with pytest.raises(ExportError) as info:
            export(store, target, batch_size=40, retry=FAST, on_batch=crash_after_two)
        sent = sum(p for p, _ in acknowledged)
        assert not info.value.permanent and f"after {sent} points were acknowledged" in str(info.value)
        assert store.cursor(target.name) == acknowledged[-1][1] < total
    finally:
        influx.start()  # same port, same data directory
    resumed = export(store, target, batch_size=40)
    target.close()
    assert resumed.cursor_before == acknowledged[-1][1] and resumed.points + sent == expected_points(store.db)
    assert count_points(influx, db) == total
    check_latest_statuses(influx, db, store)
    assert export(store, V1Target(influx.url, db)).points == 0


def test_v1_errors_from_the_real_server(chain: Store, influx: Any) -> None:
    target = V1Target(influx.url, "no_such_db_" + uuid.uuid4().hex[:6])
    with pytest.raises(ExportError) as info:
        export(chain, target, retry=FAST)
    assert info.value.permanent and "HTTP 404" in str(info.value) and "database not found" in str(info.value)
    assert chain.cursor(target.name) == 0


def test_partial_write_is_a_reported_failure_not_an_acknowledgement(chain: Store, influx: Any) -> None:
    db = fresh_db(influx)
    with chain.db.tx(write=False) as tx:  # the same shard as the exported points: reco is an integer there
        first = timestamp_ns(tx.scalar("SELECT ts FROM audit ORDER BY id LIMIT 1"))
    influx.write(f"run,campaign=prompt,fill=10,rtype=all,run_number=1 reco=1i {first - 1}", db)
    target = V1Target(influx.url, db)
    with pytest.raises(ExportError) as info:
        export(chain, target)
    target.close()
    result = info.value.result
    assert result is not None and (result.points, result.refused) == (8, 4) and not info.value.permanent
    assert "refused 4 points that can never be written (audit rows 1, 4, 7, 10)" in str(info.value)
    assert "field type conflict" in str(info.value)
    assert chain.cursor(target.name) == 12  # passed, not retried for ever: the calib and plots points are in
    assert len(rows(influx, "SELECT calib FROM run", db)) == 4


# ------------------------------------------------------------------------ VictoriaMetrics (v2 write API)


Sample = tuple[str, tuple[tuple[str, str], ...], int, Optional[float]]


def unescape(text: str) -> str:
    return re.sub(r"\\([,= ])", r"\1", text)


def expected_samples(lines: list[str]) -> Counter[Sample]:
    """What VictoriaMetrics stores per field: metric <measurement>_<field>, labels = tags, millisecond
    timestamps, numbers and booleans as values (string fields: value None here, not compared)."""
    out: Counter[Sample] = Counter()
    for ln in lines:
        head, fields, ts = re.match(r'^((?:[^ \\]|\\.)+) (.*) (\d+)$', ln, re.S).groups()  # type: ignore[union-attr]
        parts = re.split(r"(?<!\\),", head)
        labels = tuple(sorted((unescape(k), unescape(v)) for k, v in (re.split(r"(?<!\\)=", p, 1) for p in parts[1:])))
        for key, value in re.findall(r'((?:[^=,\\]|\\.)+)=("(?:[^"\\]|\\.)*"|[^,]+)', fields):
            number = None if value.startswith('"') else {"true": 1.0, "false": 0.0}.get(value)
            if number is None and not value.startswith('"'):
                number = float(value.rstrip("i"))
            out[(f"{parts[0]}_{unescape(key)}", labels, int(ts) // 1_000_000, number)] += 1
    return out


def test_export_through_influxdb_client_to_victoriametrics(store: Store, victoria: Any, tmp_path: Path) -> None:
    campaign = "vm" + uuid.uuid4().hex[:8]
    make_campaign(store, campaign=campaign, text="no newline here, \"quoted\" = ok")
    target = V2Target(victoria.url, bucket="ecal", org="cms")
    result = export(store, target, batch_size=100)
    target.close()
    assert result.points == expected_points(store.db) and result.batches >= -(-result.points // 100)
    out = tmp_path / "same.lp"
    file_export(store, out)
    want = expected_samples(split_lines(out.read_text()))
    strings = {k[0] for k in want if k[3] is None}
    victoria.force_flush()
    got: Counter[Sample] = Counter()
    for series in victoria.export(match=f'{{campaign="{campaign}"}}'):
        metric = series["metric"]
        labels = tuple(sorted((k, v) for k, v in metric.items() if k != "__name__"))
        for ts, value in zip(series["timestamps"], series["values"]):
            got[(metric["__name__"], labels, ts, None if metric["__name__"] in strings else float(value))] += 1
    assert got == want


# ------------------------------------------------------------------------ command line, watch loop


def test_cli_reports_points_batches_and_cursor(tmp_path: Path) -> None:
    from cli_support import build_chain
    db = str(tmp_path / "s.db")
    build_chain(db)
    out = str(tmp_path / "x.lp")
    first = invoke(db, "--json", "export", "--out", out, "--batch-size", "5")
    assert first.exit_code == 0, first.stderr
    data = json.loads(first.stdout)
    assert (data["points"], data["batches"], data["cursor_before"], data["cursor_after"]) == (12, 3, 0, 12)
    assert data["target"] == f"file:{out}"
    again = invoke(db, "export", "--out", out)
    assert again.stdout.strip() == f"nothing to export to file:{out} (cursor at 12)"

    bad = [invoke(db, "export", "--out", out, "--url", "http://h:1"),
           invoke(db, "export", "--url", "http://h:1", "--bucket", "b"),
           invoke(db, "export", "--out", out, "--batch-size", "5001"),
           invoke(db, "export", "--out", out, "--watch", "0")]
    assert [r.exit_code for r in bad] == [1, 1, 2, 2]
    assert "give either --out FILE or --url URL" in bad[0].stderr and "--bucket and --org" in bad[1].stderr
    with Store.open(db) as store:
        with store.db.tx(write=False) as tx:
            assert tx.all("SELECT target, audit_id FROM export_cursor") == [(f"file:{out}", 12)]


def test_watch_reports_outages_and_keeps_going(chain: Store, tmp_path: Path) -> None:
    from ecalstate.export import watch
    target = V1Target(f"http://127.0.0.1:{closed_port()}", "ecal", timeout=2)
    stop = threading.Event()
    seen: list[Any] = []

    def report(result: Any, error: Optional[ExportError]) -> None:
        seen.append(error)
        if len(seen) == 2:
            stop.set()

    assert watch(chain, target, 0.01, stop, report, retry=FAST) == 2
    assert all(isinstance(e, ExportError) and not e.permanent for e in seen)
    assert chain.cursor(target.name) == 0

    broken = FileTarget(str(tmp_path / "no-such-dir" / "x.lp"))
    with pytest.raises(ExportError):  # waiting does not fix a refusal: it ends the loop
        watch(chain, broken, 0.01, threading.Event(), lambda r, e: None, retry=FAST)
