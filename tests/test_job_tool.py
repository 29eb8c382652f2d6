"""The report command shipped with every job (issue 25 item 6): a ``#!/bin/sh`` payload records fields, outputs,
plots and its failure with ``ecalstate-job``, on the local backend and on the real HTCondor pool (where it runs
under the chroot's python3, without ecalstate). Quotes, newlines, unicode and long values arrive as written; what
cannot be honoured is one line on stderr, exit 1, and the report stays as it was; calls at once all land."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from handler_support import condor_workdir, make_campaign, settle

from ecalstate import Store
from ecalstate.backends import MAX_REPORT_BYTES, Backend, JobSpec, read_report
from ecalstate.backends.htcondor import CondorBackend
from ecalstate.backends.local import LocalBackend
from ecalstate.handler import TaskHandler
from ecalstate.results import STARTED, Claim

QUOTED = 'he said "hi" \\ and $HOME\'s `date` ; rm -rf /'
MULTILINE = "line one\nline two\twith a tab"  # written in the script (HTCondor arguments hold no newline)
LONG_OK = 30_000  # accepted: the bound is on the whole report
PAYLOAD = r'''#!/bin/sh
# a non-Python payload: everything it reports goes through ecalstate-job
ecalstate-job field quote "$1" || exit 10
ecalstate-job field multiline "line one
line two	with a tab" || exit 11
ecalstate-job field unicode 'ηφ ✓ ü' || exit 12
ecalstate-job number events 1234 || exit 13
ecalstate-job number ratio -2.5e-3 || exit 14
printf 'ieta,iphi,ic\n' > constants.csv
ecalstate-job output constants.csv || exit 15
ecalstate-job output "$(pwd)/second.csv" || exit 16
ecalstate-job plot map.png || exit 17
ecalstate-job field long_ok "$(head -c 30000 /dev/zero | tr '\0' x)" || exit 18
i=0
while [ $i -lt 20 ]; do ecalstate-job field "k$i" "v$i" & i=$((i+1)); done
wait
r() { "$@" 2>>refused.err; echo "$?" >> refused.codes; }
r ecalstate-job field logs /etc
r ecalstate-job field started 2020-01-01
r ecalstate-job field output /elsewhere
r ecalstate-job number nan NaN
r ecalstate-job number big 1e999
r ecalstate-job number word twelve
r ecalstate-job field "bad key" x
r ecalstate-job output "a,b.csv"
r ecalstate-job field too_long "$(head -c 40000 /dev/zero | tr '\0' y)"
r ecalstate-job field binary "$(printf 'a\377b')"
r ecalstate-job nonsense
r ecalstate-job field lonely
r ecalstate-job field dash -starts-with-a-dash
exit 0
'''
REFUSALS = [
    (1, "ecalstate-job: the field 'logs' is the handler's: a job's report may not set it"),
    (1, "ecalstate-job: the field 'started' is the handler's: a job's report may not set it"),
    (1, "ecalstate-job: the field 'output' is made by 'ecalstate-job output PATH'"),
    (1, "ecalstate-job: not a number: 'NaN'"),
    (1, "ecalstate-job: not a finite number: '1e999'"),
    (1, "ecalstate-job: not a number: 'twelve'"),
    (1, "ecalstate-job: invalid key 'bad key': a letter, then letters, digits, '_', '.' or '-' (at most 64)"),
    (1, "ecalstate-job: the path '{folder}/a,b.csv' holds a comma: outputs are a comma-joined list"),
    (1, "ecalstate-job: the report would hold {size} bytes, more than 65536 (check would not store it): not changed"),
    (1, "ecalstate-job: the value is not UTF-8 text"),
    (2, "ecalstate-job: unknown command 'nonsense' (valid: field, number, output, plot, fail, show)"),
    (2, "ecalstate-job: field takes KEY VALUE, got 1 argument"),
    (0, ""),
]
FAILING = '''#!/bin/sh
ecalstate-job output partial.csv
ecalstate-job fail 'calibration input "GT_X" missing'
exit 3
'''


class ShellJob(TaskHandler):
    task = "probe"
    script: Path

    def jobs(self, campaign: str, claim: Claim) -> list[JobSpec]:
        return [JobSpec(0, str(self.script), [QUOTED])]


def write(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "payload.sh"
    path.write_text(text)
    path.chmod(0o755)
    return path


def run_shell_payload(store: Store, backend: Backend, tmp_path: Path, text: str, retries: int = 0) -> Path:
    """Submit the one job of run 5 running ``text`` and check it to its end; its attempt folder."""
    make_campaign(store, [5], retries=retries)
    handler = ShellJob(store, backend)
    handler.script = write(tmp_path / "payload", text)
    handler.submit("prompt")
    settle(handler, deadline=120)
    job = store.list_jobs("prompt", "probe", run=5)[0]
    return Path(str(job.fields["logs"]))


def check_the_report(store: Store, folder: Path) -> None:
    job = store.list_jobs("prompt", "probe", run=5)[0]
    assert job.status == "done", (folder / "stderr").read_text()
    fields = {k: v for k, v in job.fields.items() if k not in ("logs", STARTED)}
    assert fields == {
        "quote": QUOTED, "multiline": MULTILINE, "unicode": "ηφ ✓ ü", "events": 1234, "ratio": -0.0025,
        "output": f"{folder}/constants.csv,{folder}/second.csv", "plots": f"{folder}/map.png",
        "long_ok": "x" * LONG_OK, "dash": "-starts-with-a-dash", **{f"k{i}": f"v{i}" for i in range(20)},
    }
    assert store.instance("prompt", "probe", 5).outputs == {"output": fields["output"], "plots": fields["plots"]}
    before = {k: v for k, v in fields.items() if k != "dash"}  # (recorded after the refusal)
    size = len(json.dumps({"fields": {**before, "too_long": "y" * 40_000}}, sort_keys=True, ensure_ascii=False)
               .encode())
    codes = [int(c) for c in (folder / "refused.codes").read_text().split()]
    lines = (folder / "refused.err").read_text().splitlines() + [""]
    assert list(zip(codes, lines)) == [(code, line.format(folder=folder, size=size)) for code, line in REFUSALS]
    assert size > MAX_REPORT_BYTES and len((folder / "report.json").read_bytes()) <= MAX_REPORT_BYTES
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".report")) == [".report.json.lock"]


def test_a_shell_payload_reports_through_ecalstate_job_on_the_local_backend(tmp_path: Path) -> None:
    with Store.open(str(tmp_path / "s.db"), actor="tester", create=True) as store:
        folder = run_shell_payload(store, LocalBackend(tmp_path / "work", slots=2), tmp_path, PAYLOAD)
        check_the_report(store, folder)


def test_a_failing_shell_payload_says_why_and_keeps_its_outputs(tmp_path: Path) -> None:
    with Store.open(str(tmp_path / "s.db"), actor="tester", create=True) as store:
        folder = run_shell_payload(store, LocalBackend(tmp_path / "work"), tmp_path, FAILING)
        job = store.list_jobs("prompt", "probe", run=5)[0]
        assert job.status == "failed" and job.fields["output"] == f"{folder}/partial.csv"
        failed = [a for a in store.history("prompt", "probe", 5) if a.entity == "job" and a.to_status == "failed"]
        assert failed[-1].reason == 'exit code 3: calibration input "GT_X" missing'


@pytest.fixture
def condor_work(condor_pool: Any) -> Iterator[Path]:
    with condor_workdir(condor_pool, "jobtool-") as folder:
        yield folder


def test_a_shell_payload_reports_through_ecalstate_job_on_the_pool(condor_work: Path, tmp_path: Path) -> None:
    """On the pool the command runs under the chroot's python3 (no ecalstate there), as the pool's job user."""
    with Store.open(str(tmp_path / "s.db"), actor="tester", create=True) as store:
        backend = CondorBackend(condor_work, template={"request_memory": "64MB"})
        folder = run_shell_payload(store, backend, tmp_path, PAYLOAD)
        check_the_report(store, folder)
        assert backend.stage_tool().read_text().startswith("#!/usr/bin/python3\n")


def tool(folder: Path, *args: str, report: str = "report.json") -> subprocess.CompletedProcess[str]:
    """The staged command, run by hand in ``folder`` as a payload would."""
    command = LocalBackend(folder / "work").stage_tool()
    env = {"PATH": "/usr/bin:/bin", "ECALSTATE_REPORT": str(folder / report)}
    return subprocess.run([str(command), *args], capture_output=True, text=True, env=env, cwd=folder, timeout=30)


def test_a_report_it_cannot_trust_is_left_alone(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the job")
    (tmp_path / "report.json").symlink_to(secret)
    result = tool(tmp_path, "field", "a", "b")
    assert (result.returncode, result.stderr) == (1, "ecalstate-job: report.json is a symbolic link: not changed\n")
    assert secret.read_text() == "not for the job"
    (tmp_path / "report.json").unlink()
    (tmp_path / "report.json").write_text("[1, 2]")
    result = tool(tmp_path, "number", "a", "1")
    assert result.returncode == 1 and "report.json holds no report" in result.stderr
    assert (tmp_path / "report.json").read_text() == "[1, 2]"
    unset = subprocess.run([str(LocalBackend(tmp_path / "work").stage_tool()), "show"], capture_output=True,
                           text=True, env={"PATH": "/usr/bin:/bin"}, timeout=30)
    assert (unset.returncode, unset.stderr) == (2, "ecalstate-job: ECALSTATE_REPORT is not set: run inside a job\n")


def test_what_it_writes_is_what_check_reads(tmp_path: Path) -> None:
    """The command writes what ``read_report`` reads: its fields and its error, one spelling of each rule."""
    folder = tmp_path / "work" / "jobs" / "c" / "t" / "1" / "g1" / "j0.a1"
    folder.mkdir(parents=True)
    for args in (["field", "gt", "GT_1"], ["number", "n", "7"], ["plot", "m.png"], ["fail", "no input"]):
        assert tool(folder, *args).returncode == 0
    assert read_report(folder).fields == {"gt": "GT_1", "n": 7, "plots": f"{folder}/m.png"}
    assert read_report(folder).error == "no input"
    shown = tool(folder, "show")
    assert json.loads(shown.stdout) == json.loads((folder / "report.json").read_text())


def test_the_command_is_standard_library_only() -> None:
    """It runs where ecalstate is not installed: under ``python3 -I`` (no site packages, no current folder)."""
    source = Path(sys.modules[ShellJob.__module__].__file__ or "").parent.parent / "ecalstate" / "backends"
    result = subprocess.run(["/usr/bin/python3", "-I", str(source / "jobtool.py"), "--help"], capture_output=True,
                            text=True, env={"PATH": "/usr/bin:/bin"}, timeout=30, cwd="/")
    assert result.returncode == 0 and "usage: ecalstate-job COMMAND ARGS" in result.stdout, result.stderr
    assert os.path.basename(str(source / "jobtool.py")) == "jobtool.py"
