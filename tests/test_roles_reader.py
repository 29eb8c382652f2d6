"""Nothing a reader does stops a writer (issue 20, item 2), and the exporter it runs still never skips a row.

The reader's high-water function took a SHARE lock on the audit until the reader's transaction ended: a reader
that called it and kept its transaction open stopped every audited write (a ``run inject`` waited for minutes).
Here a reader login does its worst in one transaction held for a full minute (every function it may call, every
lock it can take, the writers' advisory locks) while handlers inject, claim, move jobs and send heartbeats, and
another reader exports: every one of them goes on. The exporter waits for audit inserts in flight, without any lock
that a writer would queue behind, and for a bounded time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cli_support import build_chain, invoke
from roles_support import accepted, connected, deploy

from ecalstate import RunSpec, Store
from ecalstate.auditlog import vocab_id
from ecalstate.export import FileTarget, export
from ecalstate.roles import TABLES

pytestmark = pytest.mark.postgres

#: how long the reader holds its transaction (the issue's minute), and the longest any writer's call may take
#: meanwhile (on a loaded 2-core machine a call takes milliseconds; a blocked one takes the whole minute)
HOLD, WRITER_BOUND = 60.0, 10.0
#: what a reader may still do: compute the high-water mark (it locks nothing), and take the lock its own bookmark
#: insert takes (ROW EXCLUSIVE conflicts only with SHARE and stronger, which no writer takes)
HARMLESS = {"called ecalstate_audit_high_water()", "locked export_cursor in ROW EXCLUSIVE mode"}


@pytest.fixture
def site(pg_url: str) -> dict[str, str]:
    build_chain(pg_url)
    with Store.open(pg_url, actor="setup") as store:
        store.update_task("prompt", "reco", max_retries=10**6)
        store.inject_runs("prompt", [RunSpec(n, 100 + n // 10) for n in range(10, 400)])
    return {**deploy(pg_url), "setup": pg_url}


def _do_its_worst(conn: Any) -> list[str]:
    """Everything a reader might do to hold writers up, in its open transaction; what the server let it do."""
    done = []
    for (name,) in conn.execute(
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'"
            " AND p.pronargs = 0 AND p.prorettype <> 'trigger'::regtype AND has_function_privilege(p.oid, 'EXECUTE')"
            ).fetchall():
        if accepted(conn, f"SELECT {name}()"):
            done.append(f"called {name}()")
    for table in TABLES:
        conn.execute(f"SELECT * FROM {table} LIMIT 1")
        for mode in ("ROW SHARE", "ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE", "SHARE", "SHARE ROW EXCLUSIVE",
                     "EXCLUSIVE", "ACCESS EXCLUSIVE"):
            if accepted(conn, f"LOCK TABLE {table} IN {mode} MODE"):
                done.append(f"locked {table} in {mode} mode")
        for strength in ("UPDATE", "NO KEY UPDATE", "SHARE", "KEY SHARE"):
            if accepted(conn, f"SELECT 1 FROM {table} FOR {strength}") and table != "export_cursor":
                done.append(f"locked rows of {table} for {strength}")
    for key in ("'runs', '1'", "'request', 'r'"):
        for function in ("pg_advisory_xact_lock", "pg_advisory_xact_lock_shared", "pg_advisory_lock",
                         "pg_advisory_lock_shared"):
            if accepted(conn, f"SELECT {function}(hashtext({key.split(', ')[0]}), hashtext({key.split(', ')[1]}))"):
                done.append(f"{function}({key})")
    return done


def _loop(name: str, call: Callable[[int], Any], stop: threading.Event, out: dict[str, list[float]]) -> None:
    """Call ``call(i)`` until ``stop``; each call's duration in ``out[name]`` (an error is kept as -1)."""
    times = out.setdefault(name, [])
    i = 0
    while not stop.is_set():
        start = time.monotonic()
        try:
            call(i)
            times.append(time.monotonic() - start)
        except Exception as err:  # reported by the test
            times.append(-1.0)
            out.setdefault("errors", []).append(f"{name}: {err}")  # type: ignore[arg-type]
        i += 1
        time.sleep(0.05)


def test_a_reader_holding_its_transaction_for_a_minute_stops_no_writer(site: dict[str, str], tmp_path: Path) -> None:
    writer = Store.open(site["writer"], actor="jenkins")
    exporter = Store.open(site["reader"], actor="exporter")
    target = FileTarget(str(tmp_path / "out.lp"))
    claimed: list[int] = []

    def claim_and_run(i: int) -> None:
        for claim in writer.claim("prompt", "reco", limit=1):
            claimed.append(claim.run_number)
            writer.create_jobs("prompt", "reco", claim.run_number, [0])
            writer.set_job_status("prompt", "reco", claim.run_number, 0, "running")
            writer.set_job_status("prompt", "reco", claim.run_number, 0, "done")

    calls: dict[str, Callable[[int], Any]] = {
        "run inject": lambda i: writer.inject_runs("prompt", [RunSpec(1000 + i, 500 + i)]),
        "claim and jobs": claim_and_run,
        "heartbeat": lambda i: writer.heartbeat("prompt", "reco", "check", message=str(i)),
        "close fill": lambda i: writer.close_fill("prompt", 500 + i, "dumped"),
        "export": lambda i: export(exporter, target),
    }
    durations: dict[str, list[float]] = {}
    stop = threading.Event()
    with connected(site["reader"]) as reader:
        did = _do_its_worst(reader)
        threads = [threading.Thread(target=_loop, args=(name, call, stop, durations)) for name, call in calls.items()]
        for thread in threads:
            thread.start()
        time.sleep(HOLD)  # the reader's transaction stays open all along
        stop.set()
        reader.rollback()
        for thread in threads:
            thread.join(HOLD)
    writer.close()
    exporter.close()
    assert not durations.get("errors"), durations.get("errors")
    for name in calls:
        assert len(durations[name]) >= 20, (name, len(durations[name]), did)  # it went on, all minute long
        assert max(durations[name]) < WRITER_BOUND, (name, max(durations[name]), did)
    assert set(did) <= HARMLESS, did  # and the reader could hold nothing that a writer waits for
    print({name: f"{len(durations[name])} calls, max {max(durations[name]) * 1000:.0f} ms" for name in calls})
    with Store.open(site["setup"]) as check:
        audited = len(check.history(limit=None))
    lines = [line for line in (tmp_path / "out.lp").read_text().splitlines() if line]
    assert len(lines) <= audited and len(claimed) >= 20


def _slow_writer(url: str) -> psycopg.Connection[Any]:
    """A writer's open transaction that took an audit id and has not committed yet (a heartbeat's row, in its
    login's name as the store writes it)."""
    conn = psycopg.connect(url.replace("postgresql+psycopg", "postgresql"))
    [identity] = conn.execute("SELECT ecalstate_text_id('slow db:' || session_user)").fetchone()  # type: ignore[misc]
    conn.execute("INSERT INTO audit_log (ts, campaign_id, entity, task, to_status, actor, identity, reason, detail)"
                 f" SELECT 1, 1, {vocab_id('handler')}, (SELECT id FROM string WHERE text = 'reco'), {vocab_id('ok')},"
                 f" 1, %s, (SELECT id FROM string WHERE text = 'reco'), '{{\"stage\": \"slow\"}}'", (identity,))
    return conn


def test_the_readers_exporter_waits_for_a_late_row_without_holding_writers_up(site: dict[str, str],
                                                                           tmp_path: Path) -> None:
    """A row whose id was handed out first commits last: the reader's export waits for it (sends it, with every
    row after it), and while it waits other writers commit at once (no lock queued in front of them)."""
    slow = _slow_writer(site["writer"])
    writer = Store.open(site["writer"], actor="jenkins")
    writer.heartbeat("prompt", "reco", "submit")  # a later id, committed first
    out = tmp_path / "out.lp"
    results: list[Any] = []
    with Store.open(site["reader"]) as reader:
        exporting = threading.Thread(target=lambda: results.append(export(reader, FileTarget(str(out)))))
        exporting.start()
        time.sleep(1.0)
        assert exporting.is_alive()  # waiting for the slow writer
        meanwhile = threading.Thread(target=writer.heartbeat, args=("prompt", "reco", "resubmit"))
        meanwhile.start()  # another writer, while the exporter waits
        meanwhile.join(5.0)
        blocked = meanwhile.is_alive()
        slow.commit()
        slow.close()
        exporting.join(30)
        meanwhile.join(30)
        again = export(reader, FileTarget(str(out)))
    writer.close()
    assert not blocked
    with Store.open(site["setup"]) as check:
        audited = len(check.history(limit=None))
    lines = [line for line in out.read_text().splitlines() if line]
    assert results and results[0].points + again.points == audited == len(lines)
    assert any("slow" in line for line in lines)


def test_an_audit_insert_in_flight_too_long_fails_the_export_cleanly(site: dict[str, str], tmp_path: Path) -> None:
    """A writer's transaction open longer than the exporter's wait (10 s): the export ends with one clear line and
    exit 1, nothing sent, the cursor where it was; it never waits for ever."""
    slow = _slow_writer(site["writer"])
    out = tmp_path / "out.lp"
    release = threading.Timer(25.0, slow.rollback)  # the old exporter waited for this, however long it took
    release.start()
    started = time.monotonic()
    result = invoke(site["reader"], "export", "--out", str(out))  # (the command line's signal handlers: main thread)
    waited = time.monotonic() - started
    release.cancel()
    release.join()
    slow.close()
    assert waited < 20, waited
    assert result.exit_code == 1, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert "still being written" in result.stderr, result.stderr
    assert not out.exists() or not out.read_text()
    with Store.open(site["setup"]) as check:
        assert check.cursor(FileTarget(str(out)).name) == 0
