"""import-influx: a legacy-style dataset written the way ecalautoctrl wrote it (one point per update,
second-resolution times) into the real InfluxDB 1.6.7, imported into a SQLite file: statuses, merged groups,
retried jobs, histories with their original times; refusals reported, never coerced; a second import
changes nothing."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from click.testing import CliRunner
from drive import snapshot

from ecalstate import Store
from ecalstate.cli import main
from ecalstate.errors import Invalid
from ecalstate.compat.legacy import InfluxSource, LegacySourceError, Series, import_influx, plan

T0 = 1656000000  # 2022-06-23T16:00:00Z
DB = "ecal_legacy"


def iso(t: int) -> str:
    return f"2022-06-23T{16 + (t - T0) // 3600:02d}:{(t - T0) % 3600 // 60:02d}:{(t - T0) % 60:02d}.000000Z"


class Legacy:
    """Writes points like the original: updateStatus -> a `run` point, JobCtrl.set_status -> a one-hot `job`
    point carrying every user field so far; one second apart (the original's timestamp resolution)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.clock = itertools.count(T0)
        self.fields: dict[tuple[str, str, int, int], dict[str, Any]] = {}
        self.times: dict[tuple[str, str, int, int], list[int]] = {}
        self.marks: dict[str, int] = {}  # times of the points the expected problems name

    @staticmethod
    def _value(v: Any) -> str:
        if isinstance(v, str):
            return '"' + v.replace('"', '\\"') + '"'
        return f"{v}i" if isinstance(v, int) else str(v)

    def point(self, measurement: str, tags: dict[str, Any], fields: dict[str, Any]) -> int:
        t = next(self.clock)
        tag_text = ",".join(f"{k}={v}" for k, v in tags.items())
        field_text = ",".join(f"{k}={self._value(v)}" for k, v in fields.items())
        self.lines.append(f"{measurement},{tag_text} {field_text} {t}")
        return t

    def run(self, campaign: str, run: int, fill: int, **fields: Any) -> int:
        return self.point("run", {"campaign": campaign, "fill": fill, "run_number": run}, fields)

    def job(self, campaign: str, task: str, run: int, jid: int, status: str, **fields: Any) -> None:
        key = (campaign, task, run, jid)
        self.fields.setdefault(key, {}).update(fields)
        one_hot = {s: int(s == status) for s in ("idle", "running", "failed", "done")}
        t = self.point("job", {"campaign": campaign, "id": jid, "run_number": run, "task": task},
                       {**one_hot, **self.fields[key]})
        self.times.setdefault(key, []).append(t)

    def jobs(self, campaign: str, task: str, run: int, jid: int, *statuses: str, **last_fields: Any) -> None:
        for i, status in enumerate(statuses):
            self.job(campaign, task, run, jid, status, **(last_fields if i == len(statuses) - 1 else {}))


def dataset() -> Legacy:
    lg = Legacy()
    fills = {356001: 8000, 356002: 8000, 356003: 8000, 356004: 8001, 356005: 8001, 356006: 8002}
    for run, fill in fills.items():
        lg.run("prompt", run, fill, era="Run2022F", lumi=12.5, **{"phisym-reco": "new", "pi0-mon": "new"})
    for run, fill in fills.items():  # per-run reconstruction, two jobs each
        lg.run("prompt", run, fill, **{"phisym-reco": "processing"})
        for jid in (0, 1):
            lg.job("prompt", "phisym-reco", run, jid, "idle", condor_id=f"{run}.{jid}")
    for run in (356001, 356002, 356003):
        for jid in (0, 1):
            lg.jobs("prompt", "phisym-reco", run, jid, "running", "done", output=f"/eos/phisym/{run}/nano_{jid}.root")
        lg.run("prompt", run, fills[run], **{"phisym-reco": "done"})
    lg.run("prompt", 356003, 8000, **{"phisym-reco": "done"})  # a repeated status is not a change
    # an impossible history: done, then running again
    lg.jobs("prompt", "phisym-reco", 356004, 0, "running", "done")
    lg.jobs("prompt", "phisym-reco", 356004, 1, "running", "done", "running")
    lg.run("prompt", 356004, 8001, **{"phisym-reco": "done"})
    # a retried job: failed once, resubmitted, done; the check stage has not run yet
    lg.jobs("prompt", "phisym-reco", 356005, 0, "running", "done", output="/eos/phisym/356005/nano_0.root")
    lg.jobs("prompt", "phisym-reco", 356005, 1, "running", "failed", "idle", "running", "done",
            output="/eos/phisym/356005/nano_1.root")
    # out of retries
    lg.jobs("prompt", "phisym-reco", 356006, 0, "running", "failed", "idle", "failed")
    lg.jobs("prompt", "phisym-reco", 356006, 1, "running", "done")
    lg.run("prompt", 356006, 8002, **{"phisym-reco": "failed"})
    # per-fill monitoring: fill 8000 grouped with the group field, fill 8001 by fill only
    lg.run("prompt", 356003, 8000, **{"pi0-mon": "processing"})
    lg.jobs("prompt", "pi0-mon", 356003, 0, "idle", "running", "done", group="356001,356002",
            output="/eos/pi0/pi0_fitMassInfo_8000.txt", plots="https://plots.example/8000")
    for run in (356001, 356002):
        lg.run("prompt", run, 8000, **{"pi0-mon": "merged"})
    lg.run("prompt", 356003, 8000, **{"pi0-mon": "done"})
    lg.run("prompt", 356005, 8001, **{"pi0-mon": "processing"})
    lg.job("prompt", "pi0-mon", 356005, 0, "idle")
    lg.run("prompt", 356004, 8001, **{"pi0-mon": "merged"})
    lg.marks["locked"] = lg.run("prompt", 356006, 8002, **{"pi0-mon": "locked"})  # a status ecalstate does not know
    lg.jobs("prompt", "timing-reco", 356001, 0, "idle", "running")  # jobs of a task the run never had
    # a second campaign: a reprocessing with a point that sets two statuses at once
    for run in (355000, 355001):
        lg.run("rereco-2022", run, 7900, era="Run2022C", **{"ecalelf-ntuples": "new"})
        lg.run("rereco-2022", run, 7900, **{"ecalelf-ntuples": "processing"})
        lg.job("rereco-2022", "ecalelf-ntuples", run, 0, "idle")
    lg.jobs("rereco-2022", "ecalelf-ntuples", 355000, 0, "running", "done", output="/eos/ecalelf/355000/ntuple_0.root")
    lg.run("rereco-2022", 355000, 7900, **{"ecalelf-ntuples": "done"})
    lg.marks["two"] = lg.point("job", {"campaign": "rereco-2022", "id": 0, "run_number": 355001, "task": "ecalelf-ntuples"},
             {"idle": 0, "running": 1, "failed": 0, "done": 1})
    lg.point("run", {"run_number": 355999}, {"ecalelf-ntuples": "done"})  # no campaign tag
    return lg


@pytest.fixture(scope="module")
def legacy(influx: Any) -> Iterator[tuple[InfluxSource, Legacy]]:
    lg = dataset()
    influx.query(f'DROP DATABASE "{DB}"')
    influx.create_database(DB)
    influx.write(lg.lines, DB, precision="s")
    yield InfluxSource(influx.url, DB), lg
    influx.query(f'DROP DATABASE "{DB}"')


def expected_problems(lg: Legacy) -> set[str]:
    return {
        "campaign (none): run series without a campaign tag: {'run_number': '355999'}",
        "campaign prompt task phisym-reco run 356004 job 1: impossible history: done -> running at "
        f"{iso(lg.times[('prompt', 'phisym-reco', 356004, 1)][-1])} is not in the job table",
        "campaign prompt task pi0-mon run 356006: unknown task instance status 'locked' (valid: new, processing, "
        f"done, failed, merged, reprocess, skipped) (latest status, at {iso(lg.marks['locked'])})",
        "campaign prompt task timing-reco run 356001: 1 job(s) but no status of the task in the run measurement",
        f"campaign rereco-2022 task ecalelf-ntuples run 355001 job 0: point at {iso(lg.marks['two'])} has 2 "
        "statuses set (done, running), not one",
    }


def test_import_round_trip_then_idempotent(legacy: tuple[InfluxSource, Legacy], db_url: str) -> None:
    source, lg = legacy
    with Store.open(db_url, actor="migration", create=True) as store:
        before = snapshot(store)
        planned, problems = import_influx(store, source, dry_run=True)
        assert snapshot(store) == before
        results, problems = import_influx(store, source)
        assert [(r.campaign, r.instances, r.jobs, r.audit_rows) for r in results] == \
            [(p.campaign, p.instances, p.jobs, p.audit_rows) for p in planned]
        assert [p.dry_run for p in planned] == [True, True] and not results[0].dry_run
        prompt, rereco = results
        assert prompt.campaign_created and prompt.tasks_created == ["phisym-reco", "pi0-mon"]
        assert prompt.runs == {"new": 6, "existing": 0}
        assert prompt.instances == {"imported": 10, "unchanged": 0, "conflict": 0, "refused": 3}
        assert rereco.instances == {"imported": 1, "unchanged": 0, "conflict": 0, "refused": 1}
        assert {str(p) for p in problems + prompt.problems + rereco.problems} == expected_problems(lg)

        ov = store.overview("prompt")
        assert {r.run_number: r.statuses for r in ov.rows} == {
            356001: {"phisym-reco": "done", "pi0-mon": "merged"},
            356002: {"phisym-reco": "done", "pi0-mon": "merged"},
            356003: {"phisym-reco": "done", "pi0-mon": "done"},
            356004: {"pi0-mon": "merged"},
            356005: {"phisym-reco": "processing", "pi0-mon": "processing"},
            356006: {"phisym-reco": "failed"},
        }
        assert [store.instance("prompt", "pi0-mon", r).leader_run for r in (356001, 356002, 356004)] == \
            [356003, 356003, 356005]
        assert store.instance("prompt", "phisym-reco", 356002).outputs == {
            "output": "/eos/phisym/356002/nano_0.root,/eos/phisym/356002/nano_1.root"}
        assert store.instance("prompt", "pi0-mon", 356003).outputs == {
            "output": "/eos/pi0/pi0_fitMassInfo_8000.txt", "plots": "https://plots.example/8000"}
        runs = {r["run_number"]: r for r in store.list_runs("prompt")}
        assert (runs[356004]["fill"], runs[356004]["meta"], runs[356004]["rtypes"]) == (
            8001, {"era": "Run2022F", "lumi": 12.5}, ["all"])

        retried = {j.jid: j for j in store.list_jobs("prompt", "phisym-reco", run=356005)}
        assert (retried[1].status, retried[1].attempts, retried[1].generation) == ("done", 2, 1)
        assert retried[1].fields == {"condor_id": "356005.1", "output": "/eos/phisym/356005/nano_1.root"}
        exhausted = store.list_jobs("prompt", "phisym-reco", run=356006)[0]
        assert (exhausted.status, exhausted.attempts) == ("failed", 2)
        history = [h for h in store.history("prompt", "phisym-reco", 356005, limit=None) if h.jid == 1]
        assert [(h.ts, h.from_status, h.to_status, h.actor) for h in history] == [
            (iso(t), f, s, "import") for t, f, s in zip(
                lg.times[("prompt", "phisym-reco", 356005, 1)],
                [None, "idle", "running", "failed", "idle", "running"],
                ["idle", "running", "failed", "idle", "running", "done"])]
        (task_row,) = [h for h in store.history("prompt", "pi0-mon", 356001, limit=None)]
        assert (task_row.from_status, task_row.to_status, task_row.actor) == (None, "merged", "import")

        # the imported state is live: the pending check completes the retried run
        assert [c.key for c in store.complete_instances("prompt", "phisym-reco").changes] == ["phisym-reco run 356005"]
        store.reprocess("prompt", "phisym-reco", runs=[356001], reason="recalibrated")

        after = snapshot(store)
        again, _ = import_influx(store, source)
        assert snapshot(store) == after
        prompt2 = again[0]
        assert (prompt2.campaign_created, prompt2.tasks_created, prompt2.runs) == (False, [], {"new": 0, "existing": 6})
        assert prompt2.instances == {"imported": 0, "unchanged": 8, "conflict": 2, "refused": 3}
        assert (prompt2.jobs, prompt2.audit_rows) == (0, 0)
        assert {str(p) for p in prompt2.problems if "here" in p.message} == {
            "campaign prompt task phisym-reco run 356005: already done here, processing in InfluxDB: left as it is",
            "campaign prompt task phisym-reco run 356001: already reprocess here, done in InfluxDB: left as it is"}


def test_cli_dry_run_and_campaign_filter(legacy: tuple[InfluxSource, Legacy], sqlite_url: str) -> None:
    source, lg = legacy
    runner = CliRunner()
    assert runner.invoke(main, ["--db", sqlite_url, "init"]).exit_code == 0
    args = ["--db", sqlite_url, "import-influx", "--url", source.url, "--database", DB, "-c", "rereco-2022"]
    out = runner.invoke(main, [*args, "--dry-run"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0] == "dry run: nothing written"
    assert lines[2].split() == ["rereco-2022", "yes", "1", "2", "0", "1", "0", "0", "1", "1", "4"]
    assert lines[3:] == ["reported, not imported (1):",
                         f"  campaign rereco-2022 task ecalelf-ntuples run 355001 job 0: point at {iso(lg.marks['two'])}"
                         " has 2 statuses set (done, running), not one"]
    with Store.open(sqlite_url) as store:
        assert store.list_campaigns() == []
    assert runner.invoke(main, args).exit_code == 0
    with Store.open(sqlite_url) as store:
        assert [c.name for c in store.list_campaigns()] == ["rereco-2022"]
        assert store.instance("rereco-2022", "ecalelf-ntuples", 355000).status == "done"


class NotInflux(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"<html>login</html>\n")

    def log_message(self, *args: Any) -> None:
        pass


def test_unreachable_or_unknown_source_is_one_clear_error(influx: Any, sqlite_url: str) -> None:
    portal = ThreadingHTTPServer(("127.0.0.1", 0), NotInflux)
    thread = threading.Thread(target=portal.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        with Store.open(sqlite_url, create=True) as store:
            with pytest.raises(LegacySourceError, match="database not found: nope"):
                import_influx(store, InfluxSource(influx.url, "nope"))
            with pytest.raises(LegacySourceError, match="unreachable"):
                import_influx(store, InfluxSource("http://127.0.0.1:9", DB, timeout=2))
            with pytest.raises(LegacySourceError, match="did not answer InfluxDB /query JSON"):
                import_influx(store, InfluxSource(f"http://127.0.0.1:{portal.server_address[1]}", DB))
            assert store.list_campaigns() == []
    finally:
        portal.shutdown()
        portal.server_close()
    with pytest.raises(Invalid, match="credentials in the InfluxDB URL are refused"):
        InfluxSource("http://reader:secret@127.0.0.1:8086", DB)


def series(tags: dict[str, str], *points: dict[str, Any]) -> Series:
    return Series(tags, [{"time": f"2022-06-23T16:00:{i:02d}.000000Z", **p} for i, p in enumerate(points)])


def test_job_histories_are_validated_not_coerced() -> None:
    run = series({"campaign": "c", "run_number": "1"}, {"reco": "processing"})
    tags = {"campaign": "c", "task": "reco", "run_number": "1"}
    retried = series({**tags, "id": "1"}, {"idle": 1, "log": "a"}, {"idle": 1, "log": "b"},
                     {"FAILED": True, "IDLE": False})  # upper-case one-hot: the fork's spelling
    plans, _ = plan([run], [series({**tags, "id": "0"}, {"RUNNING": 1, "IDLE": 0}), retried])
    (problem,) = plans[0].problems
    assert str(problem) == "campaign c task reco run 1 job 0: history starts with running at " \
                           "2022-06-23T16:00:00.000000Z: a job starts idle"
    assert plans[0].instances == []
    plans, _ = plan([run], [retried])
    (inst,) = plans[0].instances
    (job,) = inst.jobs
    assert (job.status, job.fields, [h[1:] for h in job.history]) == (
        "failed", {"log": "b"}, [(None, "idle", {"log": "a"}), ("idle", "failed", {"log": "b"})])
    with pytest.raises(Invalid, match="invalid campaign kind"):
        plan([], [], kind="rereco")
