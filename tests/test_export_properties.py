"""Export property: after a random history, InfluxDB 1.6.7's ``last()`` of every series equals the store.

Histories mix what broke the export before (issue 10): job fields changing type (number, text, boolean,
list), run types added with ``--backfill``, writes from two hosts whose clocks differ by seconds, and an
exporter killed at random points (after a request the server acknowledged but before the cursor moved,
or between requests), with ``--full`` replays in between. Then one clean export, and for every run and job:

- ``run``: ``last()`` of each task field is the instance's status, and each run has exactly one series;
- ``job``: ``last(status)``, attempts and generation are the job's (the newest generation's job of an id);
- ``job_number`` / ``job_text``: for each user field the job holds, the newer of its two ``last()`` values
  is the stored value.

Field-only updates (a job's fields changing without its status) are in the histories too: the store audits
them as annotation rows, which the exporter sends as fields only.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_export import check_latest_statuses, rows
from test_export_defects import user_fields

from ecalstate import EcalStateError, JobUpdate, RunSpec, Store
from ecalstate.clock import TS_FORMAT
from ecalstate.export import ExportError, RetryPolicy, V1Target, export

C = "prompt"
TASKS = ("reco", "plots")
FAST = RetryPolicy(retries=0)

VALUES = st.one_of(
    st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False, width=32), st.booleans(),
    st.text(max_size=12), st.lists(st.integers(0, 9), max_size=3), st.none(),
)
FIELDS = st.dictionaries(st.sampled_from(["a", "b", "out put", "time"]), VALUES, max_size=3)
OPS = st.one_of(
    st.tuples(st.just("inject"), st.integers(1, 3), st.sampled_from(["Collisions", "Cosmics"])),
    st.tuples(st.just("claim"), st.sampled_from(TASKS), st.integers(1, 3), FIELDS),
    st.tuples(st.just("job"), st.integers(0, 50), st.sampled_from(["idle", "running", "done", "failed"]), FIELDS),
    st.tuples(st.just("reprocess"), st.sampled_from(TASKS), st.integers(0, 50)),
    st.tuples(st.just("backfill"), st.sampled_from(["Collisions", "Cosmics"])),
    st.tuples(st.just("export"), st.integers(1, 6), st.sampled_from(["none", "after-send", "between"]),
              st.booleans()),
)


class Killed(Exception):
    """The exporter process dying: nothing after this point of the export happens."""


class DyingTarget:
    """A real V1 target whose process dies after the ``after``-th acknowledged request (before the cursor moves)."""

    def __init__(self, inner: V1Target, after: int) -> None:
        self.inner = inner
        self.name = inner.name
        self.left = after

    def send(self, payload: bytes) -> None:
        self.inner.send(payload)
        self.left -= 1
        if self.left == 0:
            raise Killed()

    def check(self) -> None:
        self.inner.check()

    def close(self) -> None:
        self.inner.close()


def clock_of(skew: float) -> Any:
    def clock() -> str:
        return (datetime.now(timezone.utc) + timedelta(seconds=skew)).strftime(TS_FORMAT)
    return clock


class History:
    """Two hosts (one 3 s ahead) sharing one store, and an exporter that may die."""

    def __init__(self, path: str, influx: Any, db: str) -> None:
        self.hosts = [Store.open(path, actor="host-a", create=True), Store.open(path, actor="host-b")]
        self.hosts[0].clock = clock_of(+3.0)  # type: ignore[method-assign]
        self.hosts[1].clock = clock_of(-0.5)  # type: ignore[method-assign]
        self.influx = influx
        self.db = db
        self.next_run = 1
        self.rtypes = 0
        store = self.hosts[0]
        store.create_campaign(C)
        for task in TASKS:
            store.add_task(C, task, max_retries=1)
        store.update_rtype(C, "all", add=["reco"])

    def close(self) -> None:
        for store in self.hosts:
            store.close()

    def jobs(self, store: Store) -> list[tuple[str, int, int, str]]:
        return sorted((t, j.run_number, j.jid, j.status) for t in TASKS for j in store.list_jobs(C, t))

    def apply(self, host: int, op: tuple[Any, ...]) -> None:
        store = self.hosts[host]
        kind = op[0]
        if kind == "inject":
            store.inject_runs(C, [RunSpec(self.next_run + i, self.next_run // 4, {"class": op[2]})
                                  for i in range(op[1])])
            self.next_run += op[1]
        elif kind == "claim":
            for claim in store.claim(C, op[1], limit=1):
                store.create_jobs(C, op[1], claim.run_number, list(range(op[2])), [op[3]] * op[2])
        elif kind == "job":
            jobs = self.jobs(store)
            if jobs:
                task, run, jid, status = jobs[op[1] % len(jobs)]
                # the same status with fields is a field-only update (an annotation row in the audit)
                store.update_jobs(C, task, [JobUpdate(run, jid, op[2], fields=op[3])])
        elif kind == "reprocess":
            runs = [r.run_number for r in store.overview(C).rows if r.statuses.get(op[1]) in ("done", "failed")]
            if runs:
                store.reprocess(C, op[1], runs=[runs[op[2] % len(runs)]], reason="again")
        elif kind == "backfill":
            self.rtypes += 1
            name = f"rt{self.rtypes}"
            store.create_rtype(C, name, filter=f"class={op[1]}")
            store.update_rtype(C, name, add=["plots"], backfill=True)
        else:
            self.export(store, *op[1:])

    def export(self, store: Store, batch: int, death: str, full: bool) -> None:
        inner = V1Target(self.influx.url, self.db, timeout=10)
        target: Any = DyingTarget(inner, 2) if death == "after-send" else inner

        def between(points: int, position: int) -> None:
            if death == "between":
                raise Killed()

        try:
            export(store, target, full=full, batch_size=batch, retry=FAST, on_batch=between)
        except Killed:
            pass
        finally:
            target.close()


def check_user_fields(influx: Any, db: str, store: Store) -> None:
    got = user_fields(influx, db)
    for task in TASKS:
        newest = {(j.run_number, j.jid): j for j in store.list_jobs(C, task, all_generations=True)}  # a job id's
        for job in newest.values():  # series is shared by its generations: the newest one's fields are the latest
            for key, value in job.fields.items():
                if value is None:  # a null is no value: the field keeps its previous one
                    continue
                name = "user_time" if key == "time" else key
                if isinstance(value, (bool, int, float)):
                    want: Any = float(value)
                elif isinstance(value, str):
                    want = value
                else:
                    want = json.dumps(value, sort_keys=True, ensure_ascii=False)
                found = got.get((task, str(job.run_number), str(job.jid), name))
                if isinstance(want, float) and isinstance(found, int):  # InfluxDB's JSON writes 5e16 as an integer
                    found = float(found)
                assert found == want, (task, job, key)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(steps=st.lists(st.tuples(st.integers(0, 1), OPS), min_size=4, max_size=30))
def test_influxdb_last_equals_the_store_after_any_history(influx: Any, steps: list[tuple[int, Any]]) -> None:
    workdir = tempfile.mkdtemp(prefix="ecalstate-export-prop-")
    db = "p_" + uuid.uuid4().hex[:10]
    influx.create_database(db)
    history = History(f"{workdir}/s.db", influx, db)
    try:
        history.apply(0, ("inject", 3, "Collisions"))
        for host, op in steps:
            try:
                history.apply(host, op)
            except ExportError:
                raise
            except EcalStateError:
                pass  # a refused operation is part of the history too
        store = history.hosts[1]
        target = V1Target(influx.url, db)
        export(store, target)  # the clean export after all the deaths
        target.close()
        check_latest_statuses(influx, db, store, C)
        check_user_fields(influx, db, store)
        series = rows(influx, "SHOW SERIES FROM run", db)
        assert len(series) == len(store.overview(C).rows)  # one series per run: tags never changed
    finally:
        history.close()
        shutil.rmtree(workdir, ignore_errors=True)
