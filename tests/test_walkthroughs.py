"""The documents' command blocks work word for word (issue 23): README's "look around" after the demo, and
docs/htcondor.md's "Try it on the test pool" on the real pool. Each block is read from the document and run by bash
as it is (``set -e``: every command must succeed), then what its comments promise is checked."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any


REPO = Path(__file__).resolve().parent.parent
VENV = Path(sys.executable).parent.parent


def block_after(document: Path, marker: str) -> str:
    """The first fenced bash block after the line holding ``marker``."""
    text = document.read_text()
    start = text.index(marker)
    found = re.search(r"```bash\n(.*?)```", text[start:], re.S)
    assert found, f"no bash block after {marker!r} in {document}"
    return found.group(1)


def run_block(block: str, cwd: Path, epilogue: str = "", timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECALSTATE_") and k != "VIRTUAL_ENV"}
    script = "set -e\n" + block + epilogue
    return subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def test_the_readmes_look_around_block_works_word_for_word(tmp_path: Path) -> None:
    block = block_after(REPO / "README.md", "look around with the `ecalstate`")
    assert "ecalstate history --since 1h --status failed" in block  # the block this test is about
    demo = subprocess.run([sys.executable, str(REPO / "handlers" / "demo.py"), "--out", str(tmp_path / "demo-output"),
                           "--fills", "2"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    (tmp_path / ".venv").symlink_to(VENV)  # the folder the README's commands run in: a clone after the demo
    (tmp_path / "handlers").symlink_to(REPO / "handlers")
    done = run_block(block, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "injected transient failure" in out  # the job logs command: the injected failure
    # ecalstate outputs: a merged run's map is its fill's, made by phisym-plots 1.2
    assert re.search(r"380001\s+merged\s+380003\s+\d+\s+version 1\.2\s+plots\s+\S+ic_map_fill9001_0\.png", out)
    assert re.search(r"exit code 3: injected transient failure", out)  # history --status failed
    # report shift: the injected failure and its fate, the skip with its reason, the fills calibrated (newest 20 groups)
    assert re.search(r"phisym-reco run 380002: 1 failed attempt, .* -> recovered by a retry: attempt 2 done", out)
    assert re.search(r"phisym-reco new -> skipped, run \d+: ", out) and "fill 9001: phisym-calib 2.1 from runs" in out
    assert "changed" in out and "phisym-calib run 380002" in out and "phisym-plots run 380003" in out  # reprocess
    assert re.search(r"prompt phisym-calib submit: claimed 1, merged 2", out), out[-2000:]  # the fill again
    assert "wrote demo-output/overview.html" in out
    assert "showing" in done.stderr and "Traceback" not in done.stderr


def test_the_htcondor_walkthrough_works_word_for_word(condor_pool: Any) -> None:
    block = block_after(REPO / "docs" / "htcondor.md", "## Try it on the test pool")
    assert "python handlers/phisym_reco.py submit" in block
    done = run_block(block, REPO, epilogue='\necho "WORKDIR=$ECALSTATE_WORKDIR"\necho "DB=$ECALSTATE_DB"\n')
    where = dict(re.findall(r"^(WORKDIR|DB)=(.*)$", done.stdout, re.M))
    try:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        out = done.stdout
        # what the block's comments promise
        assert "prompt phisym-reco submit: claimed 2, merged 0, jobs submitted 3" in out
        assert "prompt phisym-reco check: active 3, done 3, instances done 2" in out, out
        assert "fill 9100 waits: fill not ended" in out
        assert "prompt phisym-calib submit: claimed 1, merged 1, jobs submitted 1" in out
        assert "prompt phisym-calib check: active 1, done 1, instances done 1" in out, out
        assert re.search(r"390002 +9100 +done +done", out)
        assert "==> run 390002 job 0 attempt 1 stdout" in out
    finally:
        if where.get("WORKDIR", "").startswith("/tmp/ecalstate-htc/jobs/try-"):
            subprocess.run(["rm", "-rf", "--one-file-system", where["WORKDIR"]], check=True)
        if re.fullmatch(r"/tmp/try-\w+\.db", where.get("DB", "")):
            for suffix in ("", "-wal", "-shm"):
                Path(where["DB"] + suffix).unlink(missing_ok=True)
