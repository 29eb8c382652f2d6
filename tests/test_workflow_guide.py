"""docs/workflows.md, the expert's guide, cannot rot: its code blocks are run or checked against the files they show.

Every fenced block of the guide carries a marker on the line before it: ``<!-- run -->`` (a command block: run, in
order, in one ``bash`` in an empty folder holding a copy of the repository's ``handlers/``, against a real SQLite
store and the local backend), or ``<!-- PATH -->`` (a piece of that repository file, verbatim: the guide shows the
timing workflow, ``handlers/timing.py`` is it). After the run, the store says what the guide says happened: a test
campaign ran the task on prompt's inputs, production's one failure was recovered, version 1.1 reprocessed what 1.0
made (issue 25: the demo's test exercises a version change and a test campaign on another campaign's inputs).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from ecalstate import Store

REPO = Path(__file__).resolve().parent.parent
GUIDE = REPO / "docs" / "workflows.md"
#: a marker, then a fenced block: (marker, language, body)
BLOCK = re.compile(r"^<!-- (\S+) -->\n```(\w+)\n(.*?)^```$", re.S | re.M)
FENCE = re.compile(r"^```(\w+)$", re.M)


def blocks(text: str) -> list[tuple[str, str, str]]:
    """The guide's marked blocks, in order; every fenced block must be marked."""
    found = [(m.group(1), m.group(2), m.group(3)) for m in BLOCK.finditer(text)]
    assert len(found) == len(FENCE.findall(text)), "a code block of docs/workflows.md has no <!-- run|PATH --> marker"
    return found


def script(text: str) -> str:
    """The guide's command blocks as one bash script that names the block (and its first line) that failed."""
    lines = ["set -euo pipefail", "trap 'echo \"guide block $BLOCK failed: $BLOCK_LINE\" >&2' ERR"]
    for n, (marker, lang, body) in enumerate(blocks(text), 1):
        if marker == "run":
            assert lang == "bash", f"block {n}: a run block is bash, not {lang}"
            first = body.splitlines()[0].replace("'", "")
            lines += [f"BLOCK={n} BLOCK_LINE='{first}'", body]
    return "\n".join(lines) + "\n"


def test_the_guides_file_blocks_are_the_files() -> None:
    shown = [(marker, body) for marker, _, body in blocks(GUIDE.read_text()) if marker != "run"]
    assert {m for m, _ in shown} == {"handlers/timing.py", "handlers/jobs/timing_job.sh",
                                     "Jenkinsfiles/timing.Jenkinsfile"}
    for marker, body in shown:
        assert body in (REPO / marker).read_text(), f"docs/workflows.md's block of {marker} is not in {marker}:\n{body}"
    # the whole handler is shown, piece by piece: its file is the blocks, its docstring and its shebang aside
    handler = "".join(body for marker, body in shown if marker == "handlers/timing.py")
    code = re.sub(r'\A#!.*?\n""".*?"""\n', "", (REPO / "handlers" / "timing.py").read_text(), flags=re.S)
    assert [line for line in code.splitlines() if line] == [line for line in handler.splitlines() if line]


def test_the_guides_commands_run_and_do_what_it_says(tmp_path: Path) -> None:
    shutil.copytree(REPO / "handlers", tmp_path / "handlers", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECALSTATE_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # python and ecalstate of this venv
    done = subprocess.run(["bash", "-c", script(GUIDE.read_text())], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    # the dry run listed each job with its arguments: prompt's sums of fill 9100's runs
    sums = [f"{tmp_path}/guide-work/data/prompt/phisym-reco/{r}/g1/phisym_sums_0.csv" for r in (390001, 390002)]
    assert f"  run 390002 job 1: {tmp_path}/handlers/jobs/timing_job.sh --half 1 --out {tmp_path}/guide-work/data/" \
           f"test-timing/timing/390002/g1/timing_1.csv {sums[0]} {sums[1]}" in out.splitlines()

    with Store.open(str(tmp_path / "guide.db")) as store:
        # the test campaign ran timing on prompt's inputs, with the option given to its submit
        test = {o.run_number: o for o in store.outputs("test-timing", "timing")}
        assert {r: (o.status, o.from_run) for r, o in test.items()} == {
            390001: ("merged", 390002), 390002: ("done", 390002), 390003: ("done", 390003)}
        assert str(test[390002].made_by) == "version 1.0; min_hits=5"
        assert store.list_tasks("test-timing")[0].inputs_from == "prompt"
        # production: fill 9101's failure was recovered by resubmit
        failed = [a.reason for a in store.history("prompt", "timing", 390003, limit=None)
                  if a.entity == "job" and a.to_status == "failed"]
        assert len(failed) == 2 and all("phisym_sums_0.csv not found" in r for r in failed), failed
        first = [(j.jid, j.attempts, j.status) for j in store.list_jobs("prompt", "timing", run=390003,
                                                                         all_generations=True) if j.generation == 1]
        assert first == [(0, 2, "done"), (1, 2, "done")]
        # version 1.1 reprocessed what 1.0 made: a second generation, in its own folder, the first one kept
        prompt = {o.run_number: o for o in store.outputs("prompt", "timing")}
        assert {r: (o.status, o.generation, str(o.made_by)) for r, o in prompt.items()} == {
            390001: ("merged", 2, "version 1.1; min_hits=10"), 390002: ("done", 2, "version 1.1; min_hits=10"),
            390003: ("done", 2, "version 1.1; min_hits=10")}
        assert all("/g2/timing_" in p for o in prompt.values() for _, p in o.paths())  # the cosmics run: none
        assert {a.reason for a in store.history("prompt", "timing", 390003, limit=None)
                if a.to_status == "reprocess"} == {"timing 1.1: new fit"}


def test_a_broken_block_fails_the_run_and_is_named(tmp_path: Path) -> None:
    """The harness itself: a command that fails stops the script, naming its block."""
    text = "<!-- run -->\n```bash\ntrue\n```\n\n<!-- run -->\n```bash\necho one\nfalse\necho never\n```\n"
    done = subprocess.run(["bash", "-c", script(text)], cwd=tmp_path, capture_output=True, text=True, timeout=10)
    assert done.returncode != 0 and "never" not in done.stdout
    assert "guide block 2 failed: echo one" in done.stderr
