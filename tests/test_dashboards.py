"""Grafana dashboards: JSON and provisioning structure, and every panel query run against the real InfluxDB.

No Grafana server runs here, so the test does what Grafana would: substitute ``$campaign``,
``$timeFilter`` and ``$__interval`` the way Grafana does, send each query to InfluxDB 1.6.7
loaded by ``ecalstate export``, and compare the rows with the database.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_export import NASTY, make_campaign, rows

from ecalstate import Store, TaskStatus
from ecalstate.attention import observe, recorded
from ecalstate.clock import to_micros
from ecalstate.export import V1Target, export
from ecalstate.latency import latency_table
from ecalstate.lineprotocol import timestamp_ns

DASHBOARDS = Path(__file__).resolve().parent.parent / "dashboards"
PROVISIONING = DASHBOARDS / "provisioning"
PANEL_TYPES = {"table", "timeseries", "stat", "bargauge", "text", "row"}


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def datasource_uids() -> set[str]:
    uids = set()
    for path in sorted((PROVISIONING / "datasources").glob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        assert config["apiVersion"] == 1
        for source in config["datasources"]:
            assert source["type"] == "influxdb" and source["access"] == "proxy"
            for key in ("url", "user", "password"):
                value = source.get(key, source.get("secureJsonData", {}).get(key))
                assert value is None or re.fullmatch(r"\$\{[A-Z_]+\}", value), f"{key} must come from the environment"
            uids.add(source["uid"])
    return uids


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def test_provisioning_files_are_loadable_as_they_are() -> None:
    assert datasource_uids() == {"ecalstate-influxdb"}
    providers = [yaml.safe_load(p.read_text()) for p in sorted((PROVISIONING / "dashboards").glob("*.yaml"))]
    assert providers and all(c["apiVersion"] == 1 for c in providers)
    for provider in (p for c in providers for p in c["providers"]):
        assert provider["type"] == "file" and provider["options"]["path"].startswith("/")


def test_dashboard_structure() -> None:
    dashboards = load_dashboards()
    assert set(dashboards) == {"processing.json", "jobs.json"}
    uids = {d["uid"] for d in dashboards.values()}
    assert len(uids) == len(dashboards)
    known_sources = datasource_uids()
    for name, dash in dashboards.items():
        assert dash["title"] and isinstance(dash["schemaVersion"], int) and dash["time"]["from"].startswith("now")
        variables = {v["name"]: v for v in dash["templating"]["list"]}
        campaign = variables["campaign"]
        assert campaign["type"] == "query" and campaign["datasource"]["uid"] in known_sources
        assert campaign["query"] == 'SHOW TAG VALUES FROM "run" WITH KEY = "campaign"' and campaign["multi"]
        for link in dash["links"]:
            assert re.match(r"/d/([\w-]+)\?", link["url"]).group(1) in uids  # type: ignore[union-attr]
        ids = [p["id"] for p in panels(dash)]
        assert len(ids) == len(set(ids)), name
        cells: set[tuple[int, int]] = set()
        for panel in panels(dash):
            assert panel["type"] in PANEL_TYPES and panel["title"] and panel.get("description")
            grid = panel["gridPos"]
            assert grid["x"] >= 0 and grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24
            area = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                    for y in range(grid["y"], grid["y"] + grid["h"])}
            assert not area & cells, f"{name}: panel {panel['title']!r} overlaps another"
            cells |= area
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] in known_sources
            refs = [t["refId"] for t in panel["targets"]]
            assert refs and len(refs) == len(set(refs))
            for t in panel["targets"]:
                assert t["datasource"]["uid"] in known_sources and t["rawQuery"] is True
                assert t["resultFormat"] in ("table", "time_series")
                assert '"campaign" =~ /^$campaign$/' in t["query"] and "$timeFilter" in t["query"]


def test_overview_colours_every_task_status() -> None:
    overview = next(p for p in panels(load_dashboards()["processing.json"]) if p["title"] == "Processing overview")
    mapping = overview["fieldConfig"]["defaults"]["mappings"][0]["options"]
    assert set(mapping) == {s.value for s in TaskStatus}
    colours = [m["color"] for m in mapping.values()]
    assert all(colours) and len(set(colours)) == len(colours)
    assert overview["fieldConfig"]["defaults"]["custom"]["cellOptions"]["type"] == "color-background"


# ------------------------------------------------------------------------ queries against InfluxDB 1.6.7


@dataclass
class Loaded:
    """InfluxDB loaded by the exporter, and the database it came from."""

    influx: Any
    database: str
    store: Store
    start_ms: int
    end_ms: int

    def query(self, text: str, campaign: str = "prompt", interval: str = "1s") -> list[dict[str, Any]]:
        """The query as Grafana sends it: regex-escaped variable, absolute time range, interval."""
        value = re.sub(r"([\\/^$.|?*+()\[\]{}])", r"\\\1", campaign) if "|" not in campaign else campaign
        text = text.replace("$campaign", value).replace("$__interval", interval)
        text = text.replace("$timeFilter", f"time >= {self.start_ms}ms and time <= {self.end_ms}ms")
        return rows(self.influx, text, self.database, epoch="ms")

    def audit(self, sql: str) -> list[Any]:
        with self.store.db.tx(write=False) as tx:
            return tx.all(sql)

    def latest_jobs(self) -> dict[tuple[str, str, str], Any]:
        """Each job id's newest job (across generations): what its series shows last."""
        out = {}
        for task in ("reco", "calib", "plots"):
            for job in self.store.list_jobs("prompt", task, all_generations=True):
                out[(task, str(job.run_number), str(job.jid))] = job
        return out


@pytest.fixture(scope="module")
def loaded(influx: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    path = tmp_path_factory.mktemp("dash") / "state.db"
    with Store.open(str(path), actor="tester", create=True) as store:
        make_campaign(store, deadlines=True)
        make_campaign(store, campaign="rereco", runs=4, text="other campaign", deadlines=True)
        later = datetime.now(timezone.utc) + timedelta(hours=7)
        store.clock = lambda: later.strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # type: ignore[method-assign]
        observe(store, "prompt")  # what needs action, 7 h on: the plots without job progress are stuck
        store.reprocess("prompt", "plots", runs=[356004], reason="stuck")
        observe(store, "prompt")  # one of them cleared
        database = "dash_" + uuid.uuid4().hex[:8]
        influx.create_database(database)
        target = V1Target(influx.url, database)
        export(store, target)
        target.close()
        with store.db.tx(write=False) as tx:
            first, last = tx.one("SELECT MIN(ts), MAX(ts) FROM audit")
        yield Loaded(influx, database, store, timestamp_ns(first) // 10**6 - 1000, timestamp_ns(last) // 10**6 + 2000)


def check_overview(found: list[dict[str, Any]], data: Loaded) -> None:
    got = {r["run_number"]: {k[5:]: v for k, v in r.items() if k.startswith("last_") and v} for r in found}
    assert {r["campaign"] for r in found} == {"prompt"}
    overview = data.store.overview("prompt")
    assert got == {str(r.run_number): {t: s for t, s in r.statuses.items() if s} for r in overview.rows}
    assert {r["fill"] for r in found} == {str(r.fill) for r in overview.rows}


def check_handlers(found: list[dict[str, Any]], data: Loaded) -> None:
    beats = data.audit("SELECT h.task, h.stage, h.ok, h.message, h.last_at FROM heartbeat h"
                       " JOIN campaign c ON c.id = h.campaign_id WHERE c.name = 'prompt'")
    want = {(task, stage): (bool(ok), message, timestamp_ns(at) // 10**6) for task, stage, ok, message, at in beats}
    assert {(r["task"], r["stage"]): (r["ok"], r["message"], r["time"]) for r in found} == want
    assert want[("reco", "check")][:2] == (False, NASTY)


def status_counts(data: Loaded) -> dict[str, tuple[int, ...]]:
    counts: dict[str, Counter[str]] = {}
    for (task, _, _), job in data.latest_jobs().items():
        counts.setdefault(task, Counter())[job.status] += 1
    return {task: tuple(c[s] for s in ("idle", "running", "done", "failed")) for task, c in counts.items()}


def check_per_status(found: list[dict[str, Any]], data: Loaded) -> None:
    """One row per job and interval; Grafana sums them per interval and task (groupBy transformation)."""
    statuses = ("idle", "running", "done", "failed")
    summed: dict[tuple[int, str], list[int]] = {}
    for row in found:
        cell = summed.setdefault((row["time"], row["task"]), [0, 0, 0, 0])
        for i, status in enumerate(statuses):
            cell[i] += row[status] or 0
    last = {task: tuple(values) for (_, task), values in sorted(summed.items())}
    assert last == status_counts(data)
    assert len({row["time"] for row in found}) > 1  # really over time


def check_now(found: list[dict[str, Any]], data: Loaded) -> None:
    assert {r["task"]: tuple(r[s] for s in ("idle", "running", "done", "failed")) for r in found} == status_counts(data)


def check_failures(found: list[dict[str, Any]], data: Loaded) -> None:
    def per_task(sql: str) -> dict[str, int]:
        return dict(data.audit(sql + " AND a.campaign_id = (SELECT id FROM campaign WHERE name = 'prompt')"
                                     " GROUP BY a.task"))
    failures = per_task("SELECT a.task, COUNT(*) FROM audit a WHERE a.entity = 'job' AND a.to_status = 'failed'")
    resubmitted = per_task("SELECT a.task, COUNT(*) FROM audit a WHERE a.entity = 'job' AND a.from_status = 'failed'"
                           " AND a.to_status = 'idle'")
    got: dict[str, Counter[str]] = {"failures": Counter(), "resubmissions": Counter()}
    for row in found:
        for column in got:
            got[column][row["task"]] += row.get(column) or 0
    assert {t: n for t, n in got["failures"].items() if n} == failures == {"reco": 3, "calib": 1}
    assert {t: n for t, n in got["resubmissions"].items() if n} == resubmitted == {"reco": 2}


def check_failed_now(found: list[dict[str, Any]], data: Loaded) -> None:
    want = {key: (job.attempts, job.generation) for key, job in data.latest_jobs().items() if job.status == "failed"}
    assert {(r["task"], r["run_number"], r["id"]): (r["attempts"], r["generation"]) for r in found} == want
    assert all(r["reason"] == NASTY for r in found if r["task"] == "calib")


def check_retried(found: list[dict[str, Any]], data: Loaded) -> None:
    want = {}
    for task in ("reco", "calib", "plots"):
        for job in data.store.list_jobs("prompt", task, all_generations=True):
            if job.attempts > 1:
                want[(task, str(job.run_number), str(job.jid))] = (job.status, job.attempts)
    assert {(r["task"], r["run_number"], r["id"]): (r["status"], r["attempts"]) for r in found} == want
    assert len(want) == 2


def check_attention(found: list[dict[str, Any]], data: Loaded) -> None:
    """Each instance and reason's last point is what the attention model recorded: its level (cleared: gone), the
    command that resolves it."""
    want = {(task, run, code): level for task, told in recorded(data.store, "prompt").items()
            for key, (level, _) in told.items() for run, _, code in [key.partition(":")]}
    got = {(r["task"], r["run_number"], r["reason"]): r["level"] for r in found}
    assert {k: v for k, v in got.items() if v != "clear"} == want and "clear" in got.values()
    # jobs never sent, and (the runs ended 2 h ago, due 1 h after) the unfinished ones past their deadline
    assert {r["reason"] for r in found if r["level"] == "problem"} == {"stuck", "unsubmitted", "deadline-missed"}
    assert all(r["command"] == f'ecalstate reprocess -c prompt --task plots --runs {r["run_number"]} --reason "..."'
               for r in found if r["reason"] == "stuck" and r["level"] == "problem")


def check_latency(found: list[dict[str, Any]], data: Loaded) -> None:
    """The panel's numbers are ``ecalstate latency``'s: InfluxQL's percentile is the table's nearest rank."""
    want = {r.task: (r.count, r.p50_s, r.p95_s, r.max_s, r.within) for r in latency_table(data.store, "prompt")}
    got = {r["task"]: (r["done"], r["p50"], r["p95"], r["max"], r["within deadline"]) for r in found}
    assert got == want and set(got) == {"reco", "calib"}
    assert 0 < want["reco"][4] < 1  # some late, some in time


def check_latency_weeks(found: list[dict[str, Any]], data: Loaded) -> None:
    want = {(r.task, to_micros(f"{r.week}T00:00:00.000000Z") // 1000): r.p95_s
            for r in latency_table(data.store, "prompt", by="week")}
    assert {(r["task"], r["time"]): r["p95"] for r in found} == want and want


EXPECTED: dict[tuple[str, str], Callable[[list[dict[str, Any]], Loaded], None]] = {
    ("processing.json", "Processing overview"): check_overview,
    ("processing.json", "Handler health"): check_handlers,
    ("processing.json", "Needs action"): check_attention,
    ("processing.json", "Latency against deadlines"): check_latency,
    ("processing.json", "Latency p95 per week"): check_latency_weeks,
    ("jobs.json", "Jobs per status"): check_per_status,
    ("jobs.json", "Jobs by status now"): check_now,
    ("jobs.json", "Job failures and resubmissions"): check_failures,
    ("jobs.json", "Jobs failed now"): check_failed_now,
    ("jobs.json", "Retried jobs"): check_retried,
}


def test_every_panel_query_returns_the_database_state(loaded: Loaded) -> None:
    checked = set()
    for name, dash in load_dashboards().items():
        for panel in panels(dash):
            if panel["type"] == "row":
                continue
            key = (name, panel["title"])
            assert key in EXPECTED, f"no expectation for panel {key}: add one"
            found = [row for t in panel["targets"] for row in loaded.query(t["query"])]
            assert found, f"{key} returned no rows"
            EXPECTED[key](found, loaded)
            checked.add(key)
    assert checked == set(EXPECTED)


def test_campaign_variable_and_multi_value_selection(loaded: Loaded) -> None:
    dash = load_dashboards()["processing.json"]
    variable = dash["templating"]["list"][0]
    assert {r["value"] for r in rows(loaded.influx, variable["query"], loaded.database)} == {"prompt", "rereco"}
    overview = next(p for p in panels(dash) if p["title"] == "Processing overview")["targets"][0]["query"]
    both = loaded.query(overview, campaign="(prompt|rereco)")
    assert Counter(r["campaign"] for r in both) == {"prompt": 12, "rereco": 4}
