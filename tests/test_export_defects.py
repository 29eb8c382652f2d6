"""Issue 10, export defects 7-13: one regression test (or more) per defect, against real parts.

7 user fields sharing the status point; 8 tags changing after export; 9 client clocks deciding the order;
10 field-only updates; 11 oversized data freezing the export; 12 a full disk tearing the files; 13 a wrong
target accepted when there is nothing new to send.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
from cli_support import invoke
from test_export import check_latest_statuses, closed_port, fresh_db, rows, split_lines

import ecalstate.base
from ecalstate import JobUpdate, RunSpec, Store
from ecalstate.export import (
    ExportError,
    FileTarget,
    RetryPolicy,
    V1Target,
    V2Target,
    export,
    watch,
)
from ecalstate.lineprotocol import timestamp_ns

FAST = RetryPolicy(retries=1, base=0.01, cap=0.01)


@pytest.fixture
def lite(tmp_path: Path) -> Iterator[Store]:
    """A SQLite store with campaign ``prompt``: task reco on runs 1-2 (fill 10), each claimed with jobs 0 and 1."""
    with Store.open(str(tmp_path / "s.db"), actor="tester", create=True) as store:
        store.create_campaign("prompt")
        store.add_task("prompt", "reco", max_retries=2)
        store.update_rtype("prompt", "all", add=["reco"])
        store.inject_runs("prompt", [RunSpec(1, 10, {"class": "Collisions"}), RunSpec(2, 10, {"class": "Cosmics"})])
        for claim in store.claim("prompt", "reco"):
            store.create_jobs("prompt", "reco", claim.run_number, [0, 1])
        yield store


def v1_export(store: Store, url: str, db: str, **kw: Any) -> Any:
    target = V1Target(url, db, timeout=20)
    try:
        return export(store, target, retry=FAST, **kw)
    finally:
        target.close()


def user_fields(influx: Any, db: str) -> dict[tuple[str, str, str, str], Any]:
    """(task, run, job id, field) -> the newest value of that user field, whichever of its number or text form."""
    newest: dict[tuple[str, str, str, str], tuple[int, Any]] = {}
    for measurement in ("job_number", "job_text"):
        names = [r["fieldKey"] for r in rows(influx, f"SHOW FIELD KEYS FROM {measurement}", db)]
        for name in names:
            query = f'SELECT last("{name}") AS v FROM {measurement} GROUP BY task, run_number, id'
            for row in rows(influx, query, db, epoch="u"):
                key = (row["task"], row["run_number"], row["id"], name)
                if key not in newest or newest[key][0] < row["time"]:
                    newest[key] = (row["time"], row["v"])
    return {k: v for k, (_, v) in newest.items()}


# ----------------------------------------------------------------------------------- 7: user fields


def test_7_a_user_field_changing_type_never_costs_the_status(lite: Store, influx: Any) -> None:
    db = fresh_db(influx)
    lite.update_jobs("prompt", "reco", [JobUpdate(1, 0, "running", fields={"output": 17})])
    v1_export(lite, influx.url, db)
    lite.update_jobs("prompt", "reco", [JobUpdate(1, 0, "done", fields={"output": "/eos/out.root"})])
    result = v1_export(lite, influx.url, db)  # the first export holds `output` as a number: no conflict now
    assert result.refused == 0
    check_latest_statuses(influx, db, lite)
    assert user_fields(influx, db)[("reco", "1", "0", "output")] == "/eos/out.root"


def test_7_a_partly_refused_batch_is_a_reported_failure_and_watch_goes_on(lite: Store, influx: Any) -> None:
    db = fresh_db(influx)
    with lite.db.tx(write=False) as tx:  # same shard as the exported points; reco is an integer there
        first = timestamp_ns(tx.scalar("SELECT MIN(ts) FROM audit"))
    influx.write(f"run,campaign=prompt,fill=10,rtype=all,run_number=1 reco=1i {first - 1}", db)
    target = V1Target(influx.url, db)
    with pytest.raises(ExportError) as info:
        export(lite, target, retry=FAST)
    err = info.value
    assert not err.permanent and "refused" in str(err) and "field type conflict" in str(err) and "\n" not in str(err)
    assert err.result is not None and err.result.refused >= 1
    high = audit_high(lite)
    assert lite.cursor(target.name) == high  # reported, not retried for ever: the rest went through
    jobs = rows(influx, "SELECT count(status) FROM job", db)
    assert jobs and jobs[0]["count"] == 4

    lite.update_jobs("prompt", "reco", [JobUpdate(2, 0, "running")])
    stop = threading.Event()
    seen: list[Any] = []

    def report(result: Any, error: Optional[ExportError]) -> None:
        seen.append((result, error))
        stop.set()

    watch(lite, target, 0.01, stop, report, full=True, retry=FAST)  # a re-export meets the same refusal
    target.close()
    assert seen and isinstance(seen[0][1], ExportError)
    assert lite.cursor(target.name) == audit_high(lite)


def audit_high(store: Store) -> int:
    with store.db.tx(write=False) as tx:
        return int(tx.scalar("SELECT MAX(id) FROM audit"))


# ----------------------------------------------------------------------------------- 8: tags


def test_8_backfill_keeps_each_run_in_its_series(lite: Store, tmp_path: Path) -> None:
    out = tmp_path / "out.lp"
    export(lite, FileTarget(str(out)))
    lite.add_task("prompt", "plots", max_retries=0)
    lite.create_rtype("prompt", "collisions", filter="class=Collisions")
    lite.update_rtype("prompt", "collisions", add=["plots"], backfill=True)
    assert lite.list_runs("prompt")[0]["rtypes"] == ["all", "collisions"]  # the store moved on
    lite.update_jobs("prompt", "reco", [JobUpdate(1, 0, "running")])
    export(lite, FileTarget(str(out)))
    export(lite, FileTarget(str(out)), full=True)
    series: dict[str, set[str]] = {}
    for ln in split_lines(out.read_text()):
        if ln.startswith("run,"):
            head = ln.split(" ", 1)[0]
            run = head.split("run_number=")[1]
            series.setdefault(run, set()).add(head)
    assert series == {"1": {"run,campaign=prompt,fill=10,rtype=all,run_number=1"},
                      "2": {"run,campaign=prompt,fill=10,rtype=all,run_number=2"}}


# ----------------------------------------------------------------------------------- 9: clocks


@contextlib.contextmanager
def skewed(seconds: float) -> Iterator[None]:
    """This process's clock runs ``seconds`` ahead (negative: behind) while the block runs."""
    from datetime import datetime, timedelta, timezone
    real = ecalstate.base.utcnow

    def clock() -> str:
        moment = datetime.now(timezone.utc) + timedelta(seconds=seconds)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    ecalstate.base.utcnow = clock  # type: ignore[assignment]
    try:
        yield
    finally:
        ecalstate.base.utcnow = real  # type: ignore[assignment]


def test_9_a_slow_clock_on_another_host_does_not_reorder_the_series(lite: Store, influx: Any) -> None:
    with skewed(+3):  # host A runs ahead
        lite.update_jobs("prompt", "reco", [JobUpdate(1, 0, "running"), JobUpdate(1, 1, "running")])
    lite.update_jobs("prompt", "reco", [JobUpdate(1, 0, "done"), JobUpdate(1, 1, "done")])  # host B, on time
    with lite.db.tx(write=False) as tx:
        stamps = [r[0] for r in tx.all("SELECT ts FROM audit ORDER BY id")]
    assert stamps == sorted(stamps)
    db = fresh_db(influx)
    v1_export(lite, influx.url, db)
    check_latest_statuses(influx, db, lite)
    assert {r.statuses["reco"] for r in lite.overview("prompt").rows if r.run_number == 1} == {"done"}


# ----------------------------------------------------------------------------------- 10: field-only updates


def test_10_field_only_updates_reach_influxdb(lite: Store, influx: Any) -> None:
    db = fresh_db(influx)
    lite.update_jobs("prompt", "reco", [JobUpdate(1, 0, "running")])
    v1_export(lite, influx.url, db)
    lite.set_job_status("prompt", "reco", 1, 0, "running", fields={"logs": "/work/1/0/attempt1"})
    with lite.db.tx(write=False) as tx:
        transitions = tx.scalar("SELECT COUNT(*) FROM audit WHERE entity = 'job' AND from_status IS NOT to_status")
    assert transitions == 5  # 4 created, 1 running: the annotation is no transition
    result = v1_export(lite, influx.url, db)
    assert result.points >= 1
    assert user_fields(influx, db)[("reco", "1", "0", "logs")] == "/work/1/0/attempt1"
    assert rows(influx, "SELECT count(status) FROM job WHERE run_number = '1' AND id = '0'", db)[0]["count"] == 2


def test_10_an_annotation_row_exports_its_fields_and_no_status_point(lite: Store, influx: Any) -> None:
    """A field-only update's audit row (from a status to itself, the fields as detail) gives field points only."""
    lite.update_jobs("prompt", "reco", [JobUpdate(1, 0, "running", fields={"n": 1})])
    job = next(j for j in lite.list_jobs("prompt", "reco") if (j.run_number, j.jid) == (1, 0))
    with lite.db.tx(write=False) as tx:
        cid, iid, pk = tx.one("SELECT a.campaign_id, a.instance_id, a.job_pk FROM audit a WHERE a.entity = 'job'"
                              " AND a.run_number = 1 AND a.jid = 0 ORDER BY a.id DESC LIMIT 1")

    def annotate(ctx: Any) -> None:
        ctx.audit(cid, "job", "reco", "running", from_status="running", instance_id=iid, job_pk=pk, run_number=1,
                  jid=0, generation=job.generation, detail={"logs": "/work/1/0/attempt1", "n": "many"})

    lite._write("annotate", None, annotate)
    db = fresh_db(influx)
    v1_export(lite, influx.url, db)
    assert rows(influx, "SELECT count(status) FROM job WHERE run_number = '1' AND id = '0'", db)[0]["count"] == 2
    fields = user_fields(influx, db)
    assert (fields[("reco", "1", "0", "logs")], fields[("reco", "1", "0", "n")]) == ("/work/1/0/attempt1", "many")
    check_latest_statuses(influx, db, lite)


# ----------------------------------------------------------------------------------- 11: oversized data


def test_11_an_oversized_point_is_reported_once_and_the_export_moves_on(lite: Store, influx: Any) -> None:
    db = fresh_db(influx)
    huge = "x" * (30 * 1024 * 1024)  # over InfluxDB's 25 MB request limit on its own
    lite.update_jobs("prompt", "reco", [JobUpdate(1, 0, "done", fields={"report": huge}),
                                        JobUpdate(1, 1, "running")])
    target = V1Target(influx.url, db, timeout=30)
    with pytest.raises(ExportError) as info:
        export(lite, target, retry=FAST)
    text = str(info.value)
    assert "cannot reach" not in text and "Broken pipe" not in text
    assert "refused 1 point" in text and "too large" in text.lower() and "\n" not in text
    assert lite.cursor(target.name) == audit_high(lite)
    check_latest_statuses(influx, db, lite)  # the status of the job with the huge field arrived
    lite.update_jobs("prompt", "reco", [JobUpdate(1, 1, "done")])
    later = export(lite, target, retry=FAST)  # later changes arrive
    target.close()
    assert later.points >= 1 and later.refused == 0
    check_latest_statuses(influx, db, lite)


def test_11_batches_are_split_by_bytes_as_well_as_lines(lite: Store, influx: Any) -> None:
    lite.claim("prompt", "reco")
    many = 2600  # 2,600 lines of 10 kB: 26 MB, over the server's 25 MB limit in one request of <= 5,000 lines
    lite.create_jobs("prompt", "reco", 2, list(range(2, 2 + many)), [{"blob": "y" * 10_000} for _ in range(many)])
    db = fresh_db(influx)
    result = v1_export(lite, influx.url, db)
    assert result.batches >= 2 and result.refused == 0
    assert rows(influx, "SELECT count(blob) FROM job_text", db)[0]["count"] == many
    check_latest_statuses(influx, db, lite)

    # a server whose limit is below ours answers 413 (read back, not a broken pipe): the request is halved
    again = fresh_db(influx)
    halved = v1_export(lite, influx.url, again, batch_bytes=100_000_000)
    assert halved.refused == 0 and halved.batches == -(-halved.points // 5000)  # bisection is no new batch
    assert rows(influx, "SELECT count(blob) FROM job_text", again)[0]["count"] == many
    huge = "z" * (30 * 1024 * 1024)
    lite.update_jobs("prompt", "reco", [JobUpdate(1, 0, "running", fields={"report": huge})])
    with pytest.raises(ExportError) as info:
        v1_export(lite, influx.url, again, batch_bytes=100_000_000)
    assert "refused 1 point" in str(info.value) and "HTTP 413" in str(info.value)
    assert "Broken pipe" not in str(info.value)
    check_latest_statuses(influx, again, lite)


# ----------------------------------------------------------------------------------- 12: full disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 kB tmpfs: a real file system that runs full (needs root, as in CI)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True,
                          check=False)
    if done.returncode != 0:
        from servers_plugin import skip_or_fail
        skip_or_fail(f"cannot mount a small tmpfs (root needed): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path, leave: int) -> Path:
    """Fill the file system of ``path`` until ``leave`` bytes are free; returns the filler (delete it to free)."""
    filler = path / "filler"
    free = os.statvfs(path).f_bavail * os.statvfs(path).f_frsize
    filler.write_bytes(b"\0" * max(0, free - leave))
    return filler


def whole_lines(data: bytes) -> bool:
    return data == b"" or data.endswith(b"\n")


def test_12_a_full_disk_never_leaves_a_torn_line_in_the_export_file(lite: Store, small_disk: Path,
                                                                    influx: Any) -> None:
    lite.update_jobs("prompt", "reco", [JobUpdate(1, j, "running", fields={"pad": "p" * 3000}) for j in (0, 1)])
    out = small_disk / "state.lp"
    filler = fill(small_disk, 4096)
    target = FileTarget(str(out))
    with pytest.raises(ExportError) as info:
        export(lite, target, retry=FAST)
    assert "No space left on device" in str(info.value)
    assert whole_lines(out.read_bytes()) and lite.cursor(target.name) == 0
    filler.unlink()
    export(lite, target, retry=FAST)
    db = fresh_db(influx)
    influx.write(out.read_text(), db, precision="ns")  # the server refuses a fused line
    check_latest_statuses(influx, db, lite)


def test_12_a_torn_tail_from_a_killed_exporter_is_cut_before_appending(lite: Store, tmp_path: Path) -> None:
    out = tmp_path / "state.lp"
    export(lite, FileTarget(str(out)))
    whole = out.read_bytes()
    with open(out, "ab") as handle:
        handle.write(b"job,campaign=prompt,id=0 status=\"TORN")  # killed mid-write: never acknowledged
    lite.update_jobs("prompt", "reco", [JobUpdate(1, 0, "running")])
    export(lite, FileTarget(str(out)))
    data = out.read_bytes()
    assert data.startswith(whole) and b"TORN" not in data and whole_lines(data)


def test_12_prune_archive_on_a_full_disk_is_one_line_and_no_duplicate_later(small_disk: Path, tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    with Store.open(db, actor="t", create=True) as store:
        store.create_campaign("prompt")
        store.add_task("prompt", "reco")
        store.update_rtype("prompt", "all", add=["reco"])
        store.inject_runs("prompt", [RunSpec(n, 1) for n in range(1, 101)])
    archive = small_disk / "audit.jsonl"
    filler = fill(small_disk, 8192)
    failed = invoke(db, "db", "prune", "--before", "2999-01-01", "--archive", str(archive))
    assert failed.exit_code == 1 and "Traceback" not in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1 and "No space left on device" in failed.stderr
    assert whole_lines(archive.read_bytes())
    filler.unlink()
    again = invoke(db, "db", "prune", "--before", "2999-01-01", "--archive", str(archive))
    assert again.exit_code == 0, again.stderr
    ids = [json.loads(ln)["row"]["id"] for ln in archive.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 100


# ----------------------------------------------------------------------------------- 13: wrong target


def test_13_a_wrong_target_fails_even_with_nothing_to_send(influx: Any, tmp_path: Path) -> None:
    path = str(tmp_path / "empty.db")
    with Store.open(path, actor="t", create=True) as empty:  # a new deployment: no audit row yet
        db = fresh_db(influx)
        assert v1_export(empty, influx.url, db).points == 0  # the right target: nothing to send, fine
        with pytest.raises(ExportError) as info:
            v1_export(empty, influx.url, "no_such_db")
        assert info.value.permanent and "database not found" in str(info.value)
        with pytest.raises(ExportError) as down:
            v1_export(empty, f"http://127.0.0.1:{closed_port()}", db)
        assert "connection refused" in str(down.value)
        with pytest.raises(ExportError) as unwritable:
            export(empty, FileTarget(str(tmp_path / "no-such-dir" / "x.lp")), retry=FAST)
        assert "No such file or directory" in str(unwritable.value)
    cli = invoke(path, "export", "--protocol", "v1", "--url", f"http://127.0.0.1:{closed_port()}", "--database", db,
                 "--retries", "0")
    assert cli.exit_code == 1 and "connection refused" in cli.stderr and cli.stdout == ""


def test_13_the_v2_target_is_checked_too(victoria: Any, tmp_path: Path) -> None:
    with Store.open(str(tmp_path / "empty.db"), actor="t", create=True) as empty:
        right = V2Target(victoria.url, bucket="ecal", org="cms")
        assert export(empty, right, retry=FAST).points == 0
        right.close()
        wrong = V2Target(f"http://127.0.0.1:{closed_port()}", bucket="ecal", org="cms", timeout=2)
        with pytest.raises(ExportError) as down:
            export(empty, wrong, retry=FAST)
        wrong.close()
    assert "connection refused" in str(down.value) and not down.value.permanent
