"""Every command of the contract through click's CliRunner, on a real SQLite file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from cli_support import as_json, build_chain, dump, invoke, ok, process

from ecalstate import Store
from ecalstate.cli import main


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "state.db")


@pytest.fixture
def chain(db: str) -> str:
    build_chain(db)
    return db


def test_init_creates_once_and_is_idempotent(db: str) -> None:
    first = as_json(db, "init")
    assert first["schema_version"] >= 1 and first["db"].endswith("state.db")
    before = dump(db)
    assert "database ready" in ok(db, "init").stdout
    assert dump(db) == before


def test_campaign_create_and_list(db: str) -> None:
    ok(db, "init")
    assert ok(db, "campaign", "create", "prompt").stdout.strip() == "created campaign prompt (prompt)"
    ok(db, "campaign", "create", "rereco-2024", "--kind", "reprocessing", "--description", "2024 rereco")
    listed = as_json(db, "campaign", "list")
    assert [(c["name"], c["kind"], c["description"]) for c in listed] == [
        ("prompt", "prompt", ""), ("rereco-2024", "reprocessing", "2024 rereco")]
    text = ok(db, "campaign", "list").stdout
    assert re.search(r"^rereco-2024\s+reprocessing\s+\S+Z\s+2024 rereco$", text, re.MULTILINE)


def test_task_add_update_list(db: str) -> None:
    ok(db, "campaign", "create", "prompt")
    ok(db, "task", "add", "-c", "prompt", "reco", "--max-retries", "2")
    ok(db, "task", "add", "-c", "prompt", "ped")
    assert "depends on reco, ped" in ok(db, "task", "add", "-c", "prompt", "calib", "--depends-on", "reco,ped").stdout
    ok(db, "task", "add", "-c", "prompt", "plots", "--depends-on", "calib", "--depends-on", "reco")
    tasks = {t["name"]: t for t in as_json(db, "task", "list", "-c", "prompt")}
    assert tasks["calib"]["depends_on"] == ["reco", "ped"] and tasks["reco"]["max_retries"] == 2
    assert tasks["plots"]["depends_on"] == ["reco", "calib"] and tasks["plots"]["max_retries"] == 3
    ok(db, "task", "update", "-c", "prompt", "calib", "--depends-on", "reco", "--max-retries", "5")
    ok(db, "task", "update", "-c", "prompt", "plots", "--no-depends")
    tasks = {t["name"]: t for t in as_json(db, "task", "list", "-c", "prompt")}
    assert (tasks["calib"]["depends_on"], tasks["calib"]["max_retries"]) == (["reco"], 5)
    assert tasks["plots"]["depends_on"] == []
    assert re.search(r"^calib\s+reco\s+5\s+-\s+-$", ok(db, "task", "list", "-c", "prompt").stdout, re.MULTILINE)


def test_rtype_filters_activate_tasks_and_backfill(db: str) -> None:
    ok(db, "campaign", "create", "prompt")
    ok(db, "task", "add", "-c", "prompt", "reco")
    ok(db, "task", "add", "-c", "prompt", "cosmics-reco")
    ok(db, "rtype", "create", "-c", "prompt", "coll", "--filter", "class=Collisions,nevents>=1000", "--task", "reco")
    ok(db, "rtype", "create", "-c", "prompt", "cosmics", "--filter", "class=Cosmics")
    ok(db, "run", "inject", "-c", "prompt", "--run", "1", "--meta", "class=Collisions", "--meta", "nevents=5000")
    ok(db, "run", "inject", "-c", "prompt", "--run", "2", "--meta", "class=Collisions", "--meta", "nevents=10")
    ok(db, "run", "inject", "-c", "prompt", "--run", "3", "--meta", "class=Cosmics")
    runs = {r["run_number"]: r for r in as_json(db, "run", "list", "-c", "prompt")}
    assert runs[1]["meta"] == {"class": "Collisions", "nevents": 5000}  # the number parsed as a number
    assert (runs[1]["rtypes"], runs[2]["rtypes"], runs[3]["rtypes"]) == (["all", "coll"], ["all"], ["all", "cosmics"])
    assert [r["run_number"] for r in as_json(db, "run", "list", "-c", "prompt", "--task", "reco")] == [1]
    out = ok(db, "rtype", "update", "-c", "prompt", "cosmics", "--add", "cosmics-reco", "--backfill").stdout
    assert "1 instances created" in out
    ok(db, "rtype", "update", "-c", "prompt", "coll", "--filter", "class=Collisions")
    rtypes = {r["name"]: r for r in as_json(db, "rtype", "list", "-c", "prompt")}
    assert rtypes["coll"] == {"name": "coll", "filter": "class=Collisions", "tasks": ["reco"]}
    assert rtypes["cosmics"]["tasks"] == ["cosmics-reco"] and rtypes["all"]["filter"] == ""
    ok(db, "rtype", "update", "-c", "prompt", "coll", "--remove", "reco")
    assert re.search(r"^coll\s+class=Collisions\s+-$", ok(db, "rtype", "list", "-c", "prompt").stdout, re.MULTILINE)


def test_run_inject_files_and_replay(chain: str, tmp_path: Path) -> None:
    runs_json = tmp_path / "runs.json"
    runs_json.write_text(json.dumps([{"run_number": 10, "fill": 20, "era": "2024C", "lumi": 1.5},
                                     {"run_number": 11, "fill": 20, "global": True}]))
    result = as_json(chain, "run", "inject", "-c", "prompt", "--file", str(runs_json))
    assert (result["new"], result["existing"], result["instances"]) == ([10, 11], [], 6)
    runs_csv = tmp_path / "runs.csv"
    runs_csv.write_text("run_number,fill,class,nevents\n11,20,,\n12,21,Collisions,300\n\n13,,Cosmics,7\n")
    result = as_json(chain, "run", "inject", "-c", "prompt", "--file", str(runs_csv))
    assert (result["new"], result["existing"]) == ([12, 13], [11])
    runs = {r["run_number"]: r for r in as_json(chain, "run", "list", "-c", "prompt")}
    assert runs[10]["meta"] == {"era": "2024C", "lumi": 1.5} and runs[11]["meta"] == {"global": True}
    assert (runs[12]["fill"], runs[12]["meta"]) == (21, {"class": "Collisions", "nevents": 300})
    assert (runs[13]["fill"], runs[13]["meta"]) == (None, {"class": "Cosmics", "nevents": 7})
    first = ok(chain, "run", "inject", "-c", "prompt", "--run", "14", "--request-id", "inject-14").stdout
    assert first.strip() == "injected 1 new runs (3 task instances); 0 already present"
    before = dump(chain)
    assert ok(chain, "run", "inject", "-c", "prompt", "--run", "14", "--request-id", "inject-14").stdout == first
    assert dump(chain) == before


def test_run_list_by_task_status(chain: str) -> None:
    process(chain, "reco", done=[1, 2], failed=[3])
    failed = as_json(chain, "run", "list", "-c", "prompt", "--task", "reco", "--status", "failed")
    assert [(r["run_number"], r["status"], r["generation"]) for r in failed] == [(3, "failed", 1)]
    text = ok(chain, "run", "list", "-c", "prompt", "--task", "reco").stdout
    assert re.search(r"^4\s+11\s+all\s+processing\s+1\s+-$", text, re.MULTILINE)


def test_status_matrix_totals_marks_and_filters(chain: str) -> None:
    process(chain, "reco", done=[1, 2], failed=[3])
    data = as_json(chain, "status", "-c", "prompt")
    assert data["tasks"] == ["reco", "calib", "plots"]
    assert {r["run_number"]: r["statuses"]["reco"] for r in data["rows"]} == {
        1: "done", 2: "done", 3: "failed", 4: "processing"}
    assert data["totals"]["reco"] == {"new": 0, "processing": 1, "done": 2, "failed": 1, "merged": 0, "reprocess": 0,
                                      "skipped": 0}
    assert data["totals"]["calib"]["new"] == 4
    assert data["blocked"] == [{"task": "calib", "run_number": 3}] and data["stuck"] == []
    stuck = as_json(chain, "status", "-c", "prompt", "--stuck-after", "0s")["stuck"]
    assert stuck == [{"task": "reco", "run_number": 4}]  # claimed, jobs never created: still caught

    text = ok(chain, "status", "-c", "prompt", "--stuck-after", "0").stdout
    assert re.search(r"^3\s+11\s+failed\s+new\*\s+new$", text, re.MULTILINE)
    assert re.search(r"^4\s+11\s+processing!\s+new\s+new$", text, re.MULTILINE)
    assert re.search(r"^done\s+2\s+0\s+0$", text, re.MULTILINE) and re.search(r"^blocked \*\s+0\s+1\s+0$", text, re.MULTILINE)
    assert "\x1b[" not in text  # plain when not a terminal

    coloured = ok(chain, "status", "-c", "prompt", color=True).stdout
    assert "\x1b[31m\x1b[1mfailed\x1b[0m" in coloured and "\x1b[32mdone\x1b[0m" in coloured

    subset = as_json(chain, "status", "-c", "prompt", "--task", "calib,reco", "--runs", "2-3")
    assert subset["tasks"] == ["calib", "reco"] and [r["run_number"] for r in subset["rows"]] == [2, 3]


def test_env_campaign_and_db(chain: str) -> None:
    result = invoke("unused.db", "--db", chain, "status", env={"ECALSTATE_CAMPAIGN": "prompt"})
    assert result.exit_code == 0 and "campaign prompt: 4 runs x 3 tasks" in result.stdout
    result = CliRunner(env={"ECALSTATE_DB": chain, "ECALSTATE_CAMPAIGN": "prompt"}).invoke(main, ["task", "list"])
    assert result.exit_code == 0 and result.stdout.splitlines()[1].startswith("reco")


def test_claim_text_json_grouping_and_limit(chain: str) -> None:
    assert ok(chain, "claim", "-c", "prompt", "--task", "calib").stdout.strip() == "nothing to claim for task calib"
    claims = as_json(chain, "claim", "-c", "prompt", "--task", "reco", "--group-by", "fill", "--limit", "1")
    assert claims == [{"task": "reco", "leader": 2, "fill": 10, "generation": 1, "merged": [1], "runs": [1, 2],
                       "meta": {}}]
    text = ok(chain, "claim", "-c", "prompt", "--task", "reco", "--request-id", "c1").stdout
    assert re.search(r"^3\s+11\s+1\s+-$", text, re.MULTILINE) and re.search(r"^4\s+11\s+1\s+-$", text, re.MULTILINE)
    assert ok(chain, "claim", "-c", "prompt", "--task", "reco", "--request-id", "c1").stdout == text  # replay
    with Store.open(chain) as store:
        statuses = {r["run_number"]: r["status"] for r in store.list_runs("prompt", "reco")}
    assert statuses == {1: "merged", 2: "processing", 3: "processing", 4: "processing"}


def test_job_create_list_set_fields_and_completion(chain: str) -> None:
    ok(chain, "claim", "-c", "prompt", "--task", "reco", "--limit", "1")
    assert "created jobs 0-1" in ok(chain, "job", "create", "-c", "prompt", "--task", "reco", "--run", "1",
                                     "--count", "2").stdout
    ok(chain, "job", "set", "-c", "prompt", "--task", "reco", "--run", "1", "--job", "0", "running",
       "--batch-id", "123.0")
    change = as_json(chain, "job", "set", "-c", "prompt", "--task", "reco", "--run", "1", "--job", "0", "done",
                     "--field", "output=/eos/reco_0.root", "--field", "nevents=5000", "--field", "ok=true",
                     "--field", "ratio=0.5", "--field", "tag=[1,2]", "--field", "note=")
    assert (change["current"], change["requested"], change["outcome"]) == ("running", "done", "changed")
    jobs = as_json(chain, "job", "list", "-c", "prompt", "--task", "reco", "--run", "1")
    assert jobs[0]["fields"] == {"output": "/eos/reco_0.root", "nevents": 5000, "ok": True, "ratio": 0.5,
                                 "tag": "[1,2]", "note": ""}
    assert (jobs[0]["status"], jobs[0]["batch_id"], jobs[1]["status"]) == ("done", "123.0", "idle")
    assert [j["jid"] for j in as_json(chain, "job", "list", "-c", "prompt", "--task", "reco", "--status", "idle")] == [1]
    text = ok(chain, "job", "set", "-c", "prompt", "--task", "reco", "--run", "1", "--job", "1", "done").stdout
    assert text.strip() == "changed: reco run 1 job 1: idle -> done"
    assert as_json(chain, "status", "-c", "prompt", "--runs", "1")["rows"][0]["statuses"]["reco"] == "done"
    assert re.search(r"^1\s+0\s+1\s+done\s+1\s+123\.0\s",
                     ok(chain, "job", "list", "-c", "prompt", "--task", "reco").stdout, re.MULTILINE)


def test_set_dry_run_writes_nothing_then_applies(chain: str) -> None:
    process(chain, "reco", done=[3])  # runs 1, 2 and 4 stay processing
    before = dump(chain)
    result = ok(chain, "set", "-c", "prompt", "--task", "reco", "--runs", "1-2,4", "failed", "--reason", "bad input",
                "--dry-run")
    assert dump(chain) == before
    assert result.stdout.splitlines() == [
        "dry run: nothing written",
        "would change  reco run 1  processing -> failed",
        "would change  reco run 2  processing -> failed",
        "would change  reco run 4  processing -> failed",
        "would change 3, unchanged 0, refused 0",
    ]
    applied = as_json(chain, "set", "-c", "prompt", "--task", "reco", "--runs", "1-2,4", "failed", "--reason", "bad input")
    assert applied["counts"] == {"changed": 3, "unchanged": 0, "refused": 0} and not applied["dry_run"]
    again = as_json(chain, "set", "-c", "prompt", "--task", "reco", "--runs", "1-2", "failed", "--reason", "bad input")
    assert again["counts"] == {"changed": 0, "unchanged": 2, "refused": 0}
    rows = as_json(chain, "history", "-c", "prompt", "--task", "reco", "--limit", "3")
    assert [(r["run_number"], r["from_status"], r["to_status"], r["reason"], r["actor"]) for r in rows] == [
        (n, "processing", "failed", "bad input", "tester") for n in (1, 2, 4)]
    assert as_json(chain, "status", "-c", "prompt")["totals"]["reco"]["failed"] == 3


def test_dry_run_with_refusals_shows_them_and_exits_1(chain: str) -> None:
    process(chain, "reco", done=[1])  # 1 done; 2, 3, 4 processing
    before = dump(chain)
    result = invoke(chain, "set", "-c", "prompt", "--task", "reco", "--runs", "1,2,9", "failed", "--reason", "x",
                    "--dry-run")
    assert result.exit_code == 1 and dump(chain) == before
    assert result.stdout.splitlines() == [
        "dry run: nothing written",
        "refused       reco run 9  - -> failed  (no such task instance)",
        "refused       reco run 1  done -> failed  (not in the task table (allowed from done: reprocess))",
        "would change  reco run 2  processing -> failed",
        "would change 1, unchanged 0, refused 2",
    ]
    assert result.stderr == "dry run: 2 of 3 transitions would be refused; the real run would write nothing\n"


def test_reprocess_failed_downstream_dry_run_then_replay(chain: str) -> None:
    process(chain, "reco", done=[1, 2, 4], failed=[3])
    process(chain, "calib", done=[1, 2])
    plan = as_json(chain, "reprocess", "-c", "prompt", "--task", "reco", "--failed", "--runs", "1", "--downstream",
                   "--reason", "new GT", "--dry-run")
    outcomes = {c["key"]: (c["current"], c["outcome"]) for c in plan["changes"]}
    assert outcomes == {"reco run 1": ("done", "changed"), "reco run 3": ("failed", "changed"),
                        "calib run 1": ("done", "changed"), "calib run 3": ("new", "unchanged"),
                        "plots run 1": ("new", "unchanged"), "plots run 3": ("new", "unchanged")}
    assert plan["counts"] == {"changed": 3, "unchanged": 3, "refused": 0} and plan["dry_run"]
    args = ["reprocess", "-c", "prompt", "--task", "reco", "--failed", "--runs", "1", "--downstream",
            "--reason", "new GT", "--request-id", "rp-1"]
    first = ok(chain, *args).stdout
    assert first.splitlines()[-1] == "changed 3, unchanged 3, refused 0"
    before = dump(chain)
    assert ok(chain, *args).stdout == first and dump(chain) == before
    statuses = as_json(chain, "status", "-c", "prompt", "--runs", "1,3")["rows"]
    assert [r["statuses"] for r in statuses] == [
        {"reco": "reprocess", "calib": "reprocess", "plots": "new"},
        {"reco": "reprocess", "calib": "new", "plots": "new"}]
    claims = as_json(chain, "claim", "-c", "prompt", "--task", "reco")
    assert [(c["leader"], c["generation"]) for c in claims] == [(1, 2), (3, 2)]  # a new generation of jobs


def test_history_filters(chain: str) -> None:
    process(chain, "reco", done=[1])
    rows = as_json(chain, "history", "-c", "prompt", "--run", "1", "--task", "reco")
    assert [(r["entity"], r["from_status"], r["to_status"]) for r in rows] == [
        ("task", None, "new"), ("task", "new", "processing"), ("job", None, "idle"), ("job", "idle", "done"),
        ("task", "processing", "done")]
    assert all(r["ts"].endswith("Z") and r["actor"] == "setup" and r["campaign"] == "prompt" for r in rows)
    assert len(as_json(chain, "history", "-c", "prompt", "--limit", "3")) == 3
    jobs = as_json(chain, "history", "-c", "prompt", "--entity", "job")
    assert {r["entity"] for r in jobs} == {"job"} and len(jobs) == 2
    text = ok(chain, "history", "-c", "prompt", "--run", "1", "--task", "reco").stdout
    assert re.search(r"^\S+Z\s+setup\s+\S+@\S+\s+task\s+reco\s+1\s+-\s+processing\s+done\s+all 1 jobs done\s+-$", text, re.MULTILINE)


def test_health_exit_codes_and_json(chain: str) -> None:
    healthy = ok(chain, "health", "-c", "prompt")
    assert healthy.stdout.strip() == "healthy: nothing stuck, silent, failing, blocked or failed"
    process(chain, "reco", failed=[3])
    with Store.open(chain, actor="jenkins") as store:
        store.heartbeat("prompt", "reco", "submit")
        store.heartbeat("prompt", "reco", "check", ok=False, message="schedd unreachable")
    result = invoke(chain, "--json", "health", "-c", "prompt", "--stuck-after", "0", "--silent-after", "1d")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert [(s["task"], s["run_number"], s["jobs"]) for s in report["stuck"]] == [
        ("reco", 1, 0), ("reco", 2, 0), ("reco", 4, 0)]
    assert report["blocked"] == [{"campaign": "prompt", "task": "calib", "run_number": 3}]
    assert [(f["stage"], f["message"]) for f in report["failing"]] == [("check", "schedd unreachable")]
    assert report["silent"] == []
    assert [(f["task"], f["run_number"], f["jobs"]) for f in report["failed"]] == [("reco", 3, 1)]
    assert result.stderr.strip() == "unhealthy: 3 stuck, 0 silent, 1 failing, 1 blocked, 1 failed; 4 problems, 1 warning"
    silent = invoke(chain, "health", "--silent-after", "0s")  # every campaign
    assert silent.exit_code == 1
    assert "silent handler stages: no recent heartbeat: 2" in silent.stdout and "silent after 0s" in silent.stdout
    assert re.search(r"^prompt\s+reco\s+submit\s+\S+Z$", silent.stdout, re.MULTILINE)


def test_health_counts_retries_apart_from_problems(chain: str) -> None:
    """Issue 13, item 3: failed jobs a resubmit will retry are counted, and do not make health red."""
    with Store.open(chain, actor="jenkins") as store:
        store.claim("prompt", "reco", limit=1)
        store.create_jobs("prompt", "reco", 1, [0, 1, 2])
        store.set_job_status("prompt", "reco", 1, 0, "failed")
        store.set_job_status("prompt", "reco", 1, 1, "failed")
    result = ok(chain, "health", "-c", "prompt")
    assert result.stdout.strip() == ("healthy: nothing stuck, silent, failing, blocked or failed; 2 failed job(s) of "
                                     "1 instance(s) wait for a retry (resubmit)")
    report = as_json(chain, "health", "-c", "prompt")
    assert report["ok"] and [(r["run_number"], r["jobs"]) for r in report["retrying"]] == [(1, 2)]


def test_report_html_command(chain: str, tmp_path: Path) -> None:
    out = tmp_path / "site" / "prompt.html"
    out.parent.mkdir()
    result = as_json(chain, "report", "html", "-c", "prompt", "--out", str(out))
    page = out.read_text()
    assert result == {"out": str(out), "bytes": len(page.encode())}
    assert page.count('<td class="s-new" title=') == 12 and "<title>ecalstate: prompt</title>" in page
    assert [p.name for p in out.parent.iterdir()] == ["prompt.html"]  # no temp file left


def test_actor_is_recorded(chain: str) -> None:
    ok(chain, "claim", "-c", "prompt", "--task", "reco", "--limit", "1")
    assert as_json(chain, "history", "-c", "prompt", "--limit", "1")[0]["actor"] == "tester"


def test_postgresql_url_and_its_password_never_printed(pg_url: str) -> None:
    """The same commands on PostgreSQL; a password (the test server trusts any) stays out of the output, and in
    ECALSTATE_DB it is refused, as inside --db (tests/test_db_secrets.py)."""
    refused = CliRunner().invoke(main, ["init"], env={"ECALSTATE_DB": pg_url.replace("postgres@", "postgres:s3cret@")})
    assert refused.exit_code == 2 and "s3cret" not in refused.output
    init = CliRunner().invoke(main, ["--json", "init"], env={"ECALSTATE_DB": pg_url, "ECALSTATE_DB_PASSWORD": "s3cret"})
    assert init.exit_code == 0, init.output
    assert "s3cret" not in init.output and "postgres@" in init.output
    url = pg_url
    ok(url, "campaign", "create", "prompt")
    ok(url, "task", "add", "-c", "prompt", "reco")
    ok(url, "rtype", "update", "-c", "prompt", "all", "--add", "reco")
    ok(url, "run", "inject", "-c", "prompt", "--run", "5", "--fill", "1")
    assert [c["leader"] for c in as_json(url, "claim", "-c", "prompt", "--task", "reco")] == [5]
    assert as_json(url, "status", "-c", "prompt")["totals"]["reco"]["processing"] == 1
    missing = invoke(url.rsplit("/", 1)[0] + "/no_such_database", "status", "-c", "prompt")
    assert missing.exit_code == 1 and "no_such_database" in missing.stderr
