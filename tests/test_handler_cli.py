"""A handler script's command line as Jenkins and operators call it: help without a campaign (issue 13, item 5), and
no database password on the command line (the main CLI's rule)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HANDLER = str(REPO / "handlers" / "phisym_reco.py")


def handler(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd)}  # no ECALSTATE_* from the caller
    return subprocess.run([sys.executable, HANDLER, *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=60)


@pytest.mark.parametrize("stage", ["submit", "check", "resubmit"])
def test_each_stage_answers_help_without_a_campaign(stage: str, tmp_path: Path) -> None:
    result = handler(stage, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: phisym_reco.py {stage} [OPTIONS]") and "Example:" in result.stdout
    assert list(tmp_path.iterdir()) == []  # no database, no work folder


def test_a_stage_without_a_campaign_is_a_usage_error(tmp_path: Path) -> None:
    result = handler("check", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "Error: Missing option '-c' / '--campaign': give at least one."
    assert list(tmp_path.iterdir()) == []


def test_a_password_in_db_is_refused(tmp_path: Path) -> None:
    result = handler("-c", "prompt", "--db", "postgresql+psycopg://ecal:s3cret-pw-77@127.0.0.1:9/ecal", "check",
                     cwd=tmp_path)
    assert result.returncode == 2 and "the URL holds a password" in result.stderr
    assert "s3cret-pw-77" not in result.stderr + result.stdout and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


WORKFLOW = '''
import sys
sys.path.insert(0, {tests!r})
from handler_support import Probe
from ecalstate.backends import JobSpec

class Declaring(Probe):
    job_env = ("ECAL_DECLARED",)
    def jobs(self, campaign, claim):
        return [JobSpec(0, {payload!r})]

Declaring.main()
'''
DUMP_ENV = '''import json, os
json.dump(dict(os.environ), open("seen_env.json", "w"))
'''


def test_jobs_started_by_the_handler_cli_get_the_declared_variables_and_no_secret(tmp_path: Path) -> None:
    """As Jenkins runs it: the database and the passwords are in the handler's environment, never in the job's."""
    from handler_support import make_campaign

    from ecalstate import Store

    db = str(tmp_path / "state.db")
    with Store.open(db, actor="setup", create=True) as store:
        make_campaign(store, [5], meta={"jobs": 1})
    payload = tmp_path / "payload" / "dump_env.py"
    payload.parent.mkdir()
    payload.write_text(DUMP_ENV)
    script = tmp_path / "declaring.py"
    script.write_text(WORKFLOW.format(tests=str(Path(__file__).parent), payload=str(payload)))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "ECALSTATE_DB": db, "ECALSTATE_CAMPAIGN": "prompt",
           "ECALSTATE_WORKDIR": str(tmp_path / "work"), "ECALSTATE_DB_PASSWORD": "db-pass-5555-xyz",
           "PGPASSWORD": "pg-pass-5555-xyz", "ECAL_DECLARED": "/tmp/x509up_u1000", "OTHER_TOOL_TOKEN": "t"}
    submitted = subprocess.run([sys.executable, str(script), "submit"], capture_output=True, text=True, env=env,
                               timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    seen_file = tmp_path / "work" / "jobs" / "prompt" / "probe" / "5" / "g1" / "j0.a1" / "seen_env.json"
    stop = time.monotonic() + 30
    while not seen_file.exists() and time.monotonic() < stop:
        time.sleep(0.05)
    seen = json.loads(seen_file.read_text())
    assert seen["ECAL_DECLARED"] == "/tmp/x509up_u1000" and seen["ECALSTATE_RUN"] == "5"
    assert seen["ECALSTATE_CAMPAIGN"] == "prompt"  # the job's own variable, set by the backend
    withheld = {"ECALSTATE_DB", "ECALSTATE_DB_PASSWORD", "PGPASSWORD", "OTHER_TOOL_TOKEN", "ECALSTATE_WORKDIR"}
    assert not withheld & set(seen)
