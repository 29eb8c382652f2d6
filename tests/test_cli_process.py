"""The installed ``ecalstate`` script in real processes: a whole workflow, concurrent claims, the import path."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import ECALSTATE, dump

from ecalstate import RunSpec, Store

ENV = {**os.environ, "ECALSTATE_CAMPAIGN": "prompt", "ECALSTATE_ACTOR": "jenkins-prompt-42"}


def sh(db: str, *args: str, code: int = 0) -> str:
    proc = subprocess.run([ECALSTATE, "--db", db, *args], capture_output=True, text=True, env=ENV, timeout=60,
                          check=False)
    assert proc.returncode == code, (args, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    return proc.stdout


@pytest.mark.slow
def test_every_command_group_in_a_real_process(tmp_path: Path) -> None:
    """The shell commands a Jenkinsfile runs, one process each, against a temp database."""
    db = str(tmp_path / "state.db")
    sh(db, "status", code=1)
    assert not Path(db).exists()  # a read never creates the database
    sh(db, "init")
    sh(db, "campaign", "create", "prompt")
    sh(db, "task", "add", "reco", "--max-retries", "0")
    sh(db, "task", "add", "calib", "--depends-on", "reco")
    sh(db, "rtype", "update", "all", "--add", "reco,calib")
    (tmp_path / "runs.csv").write_text("run_number,fill,class\n101,7,Collisions\n102,7,Collisions\n103,8,Cosmics\n")
    assert json.loads(sh(db, "--json", "run", "inject", "--file", str(tmp_path / "runs.csv")))["instances"] == 6
    sh(db, "run", "close-fill", "--fill", "8", "--reason", "beam dumped")  # fill 7 ended when fill 8 started
    claims = json.loads(sh(db, "--json", "claim", "--task", "reco", "--group-by", "fill"))
    assert [(c["leader"], c["merged"]) for c in claims] == [(102, [101]), (103, [])]
    sh(db, "job", "create", "--task", "reco", "--run", "102", "--count", "1")
    sh(db, "job", "set", "--task", "reco", "--run", "102", "--job", "0", "done", "--field", "output=/eos/102.root")
    assert json.loads(sh(db, "--json", "job", "list", "--task", "reco"))[0]["fields"] == {"output": "/eos/102.root"}
    sh(db, "set", "--task", "reco", "--runs", "103", "failed", "--reason", "corrupt input")
    assert "would change  reco run 103" in sh(db, "reprocess", "--task", "reco", "--failed", "--reason", "x",
                                                "--dry-run")
    status = sh(db, "status")
    assert re.search(r"^102\s+7\s+done\s+new$", status, re.MULTILINE) and re.search(r"^103\s+8\s+failed\s+new\*$", status, re.MULTILINE)
    assert "calib run 103 is blocked: its upstream task reco failed for the run [blocked" in sh(db, "health", code=1)
    rows = json.loads(sh(db, "--json", "history", "--task", "reco", "--run", "103"))
    assert (rows[-1]["to_status"], rows[-1]["actor"], rows[-1]["reason"]) == ("failed", "jenkins-prompt-42",
                                                                             "corrupt input")
    sh(db, "report", "html", "--out", str(tmp_path / "prompt.html"))
    page = (tmp_path / "prompt.html").read_text()
    assert re.search(r'<td class="s-failed" title="reco run 103: failed[^"]*">failed</td>', page)


@pytest.mark.slow
def test_concurrent_claim_processes_never_share_a_run(tmp_path: Path) -> None:
    """Four shells claim at once, four times each: every run is claimed exactly once."""
    db = str(tmp_path / "state.db")
    with Store.open(db, create=True) as store:
        store.create_campaign("prompt")
        store.add_task("prompt", "reco")
        store.update_rtype("prompt", "all", add=["reco"])
        store.inject_runs("prompt", [RunSpec(n, n // 10) for n in range(1, 41)])
    go = tmp_path / "go"
    loop = (f'while [ ! -e "{go}" ]; do sleep 0.01; done; '
            f'for i in 1 2 3 4; do "{ECALSTATE}" --db "{db}" --json claim --task reco --limit 3 || exit 1; done')
    workers = [subprocess.Popen(["bash", "-c", loop], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=ENV) for _ in range(4)]
    go.touch()
    claimed: list[int] = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        decoder, pos = json.JSONDecoder(), 0
        while pos < len(out.strip()):
            batch, pos = decoder.raw_decode(out, pos)
            claimed += [c["leader"] for c in batch]
            while pos < len(out) and out[pos].isspace():
                pos += 1
    assert sorted(claimed) == list(range(1, 41))  # all claimed, none twice
    statuses = json.loads(sh(db, "--json", "run", "list", "--task", "reco"))
    assert {r["status"] for r in statuses} == {"processing"}
    history = json.loads(sh(db, "--json", "history", "--entity", "task", "--limit", "1000"))
    assert sorted(r["run_number"] for r in history if r["to_status"] == "processing") == list(range(1, 41))


def test_cli_path_never_imports_influxdb_or_htcondor() -> None:
    """Rendering the help of every command (which imports every command module) stays clear of the heavy clients."""
    code = (
        "import sys\n"
        "from ecalstate.cli.docs import render\n"
        "render()\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('influxdb_client', 'htcondor', 'htcondor2',"
        " 'matplotlib', 'numpy'))\n"
        "print(','.join(heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


def test_help_runs_without_a_database(tmp_path: Path) -> None:
    proc = subprocess.run([ECALSTATE, "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=60,
                          check=False)
    assert proc.returncode == 0 and "Commands:" in proc.stdout and list(tmp_path.iterdir()) == []


def test_shell_completion(tmp_path: Path) -> None:
    db = str(tmp_path / "state.db")
    with Store.open(db, create=True) as store:
        store.create_campaign("prompt")
        store.create_campaign("pilot")
    before = dump(db)

    def complete(words: str) -> list[str]:
        env = {**ENV, "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - 1),
               "_ECALSTATE_COMPLETE": "bash_complete"}
        proc = subprocess.run([ECALSTATE], capture_output=True, text=True, env=env, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()

    assert "plain,status" in complete("ecalstate sta")
    assert complete(f"ecalstate --db {db} status -c p") == ["plain,pilot", "plain,prompt"]
    assert complete(f"ecalstate --db {db} set --task reco --runs 1 f") == ["plain,failed"]
    assert complete(f"ecalstate --db {tmp_path}/none.db status -c p") == []
    assert dump(db) == before and not (tmp_path / "none.db").exists()
    script = subprocess.run([ECALSTATE], capture_output=True, text=True, timeout=60, check=True,
                            env={**ENV, "_ECALSTATE_COMPLETE": "bash_source"}).stdout
    assert "_ecalstate_completion" in script and "complete " in script


def test_bare_group_prints_its_help(tmp_path: Path) -> None:
    proc = subprocess.run([ECALSTATE, "job"], capture_output=True, text=True, cwd=tmp_path, timeout=60,
                          check=False)
    assert proc.returncode == 2 and "Usage: ecalstate job [OPTIONS] COMMAND" in proc.stdout + proc.stderr
    assert "  set     Set the STATUS" in proc.stdout + proc.stderr


@pytest.mark.skipif(shutil.which("script") is None, reason="util-linux script (a pseudo-terminal) is not installed")
def test_long_injection_shows_a_progress_bar_on_a_terminal_only(tmp_path: Path) -> None:
    db = str(tmp_path / "state.db")
    with Store.open(db, create=True) as store:
        store.create_campaign("prompt")
    runs = tmp_path / "runs.json"
    runs.write_text(json.dumps([{"run_number": n} for n in range(1, 1201)]))
    command = f'"{ECALSTATE}" --db "{db}" run inject --file "{runs}"'
    tty = subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True, text=True, env=ENV,
                         timeout=60, check=False)
    assert tty.returncode == 0 and "checking 1200 runs" in tty.stdout and "100%" in tty.stdout
    (tmp_path / "second.json").write_text(json.dumps([{"run_number": n} for n in range(1201, 2401)]))
    piped = subprocess.run([ECALSTATE, "--db", db, "run", "inject", "--file", str(tmp_path / "second.json")],
                           capture_output=True, text=True, env=ENV, timeout=60, check=False)
    assert piped.returncode == 0 and piped.stderr == "" and piped.stdout.startswith("injected 1200 new runs")
