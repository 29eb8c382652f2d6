"""A handler script's command line as Jenkins and operators call it: help without a campaign (issue 13, item 5), and
no database password on the command line (the main CLI's rule)."""

from __future__ import annotations

import subprocess
import sys
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
