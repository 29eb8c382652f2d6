"""The Jenkins pipelines: linted offline, and every `sh` step run as Jenkins would, against a temp database.

No Jenkins can run here, so the contract is checked from both sides: the Groovy
parses (npm-groovy-lint), and each shell step, with the pipeline's environment
(database, backend and work folder pointed at temp paths, InfluxDB at the real
test servers), runs twice, as two builds would, and succeeds. A renamed option
or command breaks this test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ecalstate import RunSpec, Store

REPO = Path(__file__).resolve().parent.parent
JENKINSFILES = sorted((REPO / "Jenkinsfiles").glob("*.Jenkinsfile"))
RUN_SYNC = REPO / "Jenkinsfiles" / "run-sync.Jenkinsfile"
#: one pipeline per workflow script; run-sync feeds them runs
WORKFLOWS = [p for p in JENKINSFILES if p != RUN_SYNC]
CREDENTIALS = {"ECALSTATE_INFLUX_TOKEN", "ECALSTATE_INFLUX_USER", "ECALSTATE_INFLUX_PASSWORD"}


def sh_steps(text: str) -> list[str]:
    """Every command a pipeline runs: its ``sh`` steps and its handler stages (``handlerStage('...')``)."""
    return re.findall(r"""\b(?:sh|handlerStage)\s*\(?\s*(?:script:\s*)?'([^']*)'""", text)


def handler_stage_function(text: str) -> str:
    found = re.search(r"^void handlerStage\(String command\) \{\n.*?^\}\n", text, re.M | re.S)
    assert found, "no handlerStage function"
    return found.group(0)


def environment(text: str) -> dict[str, str]:
    block = re.search(r"environment\s*\{(.*?)\}", text, re.S)
    assert block, "no environment block"
    return dict(re.findall(r"^\s*(\w+)\s*=\s*'([^']*)'", block.group(1), re.M))


def handlers_of(text: str) -> list[str]:
    """The workflow scripts a pipeline runs, in the order its stages first run them (``handlers/phisym_calib.py``)."""
    return list(dict.fromkeys(re.findall(r"handlers/\w+\.py", " ".join(sh_steps(text)))))


def task_of(handler: str) -> str:
    return handler.removeprefix("handlers/").removesuffix(".py").replace("_", "-")


def credential_variables(text: str) -> set[str]:
    return set(re.findall(r"(?:usernameVariable|passwordVariable|variable):\s*'(\w+)'", text))


def test_one_pipeline_per_workflow_script() -> None:
    """Each workflow script runs in exactly one pipeline, named after its last one (phisym-upload also validates)."""
    scripts = {p.stem.replace("_", "-") for p in (REPO / "handlers").glob("*.py") if p.stem != "demo"}
    run = [task_of(h) for p in WORKFLOWS for h in handlers_of(p.read_text())]
    assert sorted(run) == sorted(scripts)
    assert [p.name.removesuffix(".Jenkinsfile") for p in WORKFLOWS] == [
        task_of(handlers_of(p.read_text())[-1]) for p in WORKFLOWS]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_pipeline_shape_and_no_inline_secrets(path: Path) -> None:
    text = path.read_text()
    assert re.search(r"triggers\s*\{\s*cron\('[^']+'\)", text)
    assert "disableConcurrentBuilds()" in text
    assert re.findall(r"stage\('(\w+)'\)", text) == ["check", "resubmit", "submit", "export", "health"]
    for handler in handlers_of(text):
        stages = [s for s in sh_steps(text) if handler in s]
        assert [re.search(r"(submit|resubmit|check)", s.split(handler)[1]).group(1) for s in stages] == [
            "check", "resubmit", "submit"]
    # credentials only ever come from withCredentials bindings, into the variables the exporter reads
    assert credential_variables(text) and credential_variables(text) <= CREDENTIALS
    assert not set(environment(text)) & CREDENTIALS
    for step in sh_steps(text):
        assert not re.search(r"--(token|password|user)\b|://[^/\s]*@", step), step


def test_a_stage_that_left_a_run_failed_for_good_makes_the_build_unstable() -> None:
    """Issue 22 item 4: check, resubmit and submit exit 3 when they left an instance failed for good; the pipelines
    turn that code, and only it, into UNSTABLE (any other failure fails the build), in one function per pipeline,
    the same in every one."""
    functions = {handler_stage_function(p.read_text()) for p in WORKFLOWS}
    assert len(functions) == 1
    (body,) = functions
    assert "int code = sh(script: command, returnStatus: true)" in body
    assert re.search(r"if \(code == 3\) \{\s+unstable\('[^']+'\)\s+\} else if \(code != 0\) \{\s+error\(", body)
    for path in WORKFLOWS:
        text = path.read_text()
        for handler in handlers_of(text):
            stages = [s for s in re.findall(r"handlerStage\('([^']*)'\)", text) if handler in s]
            assert [s.split(handler)[1].split()[2] for s in stages] == ["check", "resubmit", "submit"]
            assert not re.search(rf"\bsh\s*\(?\s*'[^']*{re.escape(handler)}", text)  # never a plain sh: exit 3 fails


def test_lint(groovy_lint: str, tmp_path: Path) -> None:
    def lint(*files: Path) -> tuple[int, dict[str, Any]]:
        result = subprocess.run([groovy_lint, "--noserver", "--failon", "error", "--output", "json",
                                 *map(str, files)], capture_output=True, text=True, timeout=240, cwd=tmp_path)
        return result.returncode, json.loads(result.stdout)

    code, report = lint(*JENKINSFILES)
    assert code == 0, report["summary"]
    assert sorted(report["files"]) == [str(p) for p in JENKINSFILES]
    assert [e for f in report["files"].values() for e in f["errors"] if e["severity"] == "error"] == []
    # the linter does catch a broken pipeline (one closing brace missing)
    broken = tmp_path / "broken.Jenkinsfile"
    broken.write_text(JENKINSFILES[0].read_text().rstrip().removesuffix("}"))
    code, report = lint(broken)
    assert code == 1 and report["summary"]["totalFoundErrorNumber"] >= 1


def prepare(db: Path) -> dict[str, int]:
    """A campaign where each pipeline has work: reco for run 4, calib for fill 7 (run 3), plots for fill 5 (run 2),
    validate for fill 8 (run 5, calibrated with a constant for every crystal), the upload of fill 5 (validated),
    timing for fill 5 (run 2), fill 7 and fill 8.

    Returns the run each task's pipeline should claim.
    """
    sums = db.parent / "sums.csv"
    sums.write_text("ieta,iphi,hits,sum_et\n1,1,10,10.5\n1,2,12,11.5\n")
    constants = db.parent / "ic.csv"
    constants.write_text("ieta,iphi,ic\n1,1,1.01\n1,2,0.99\n")
    barrel = db.parent / "ic-barrel.csv"
    barrel.write_text("ieta,iphi,ic\n" + "".join(f"{e},{p},1.0\n" for e in range(1, 21) for p in range(1, 73)))
    tasks = ["phisym-reco", "phisym-calib", "phisym-plots", "phisym-validate", "phisym-upload"]
    with Store.open(str(db), actor="setup", create=True) as store:
        store.create_campaign("prompt")
        for task, upstream in zip(tasks, [None, "phisym-reco", "phisym-calib", "phisym-calib", "phisym-validate"]):
            store.add_task("prompt", task, depends_on=[upstream] if upstream else [], max_retries=1)
        store.add_task("prompt", "timing", depends_on=["phisym-reco"], max_retries=1)
        store.update_rtype("prompt", "all", add=tasks + ["timing"])
        store.inject_runs("prompt", [RunSpec(1, 5, {"nevents": 10000}), RunSpec(2, 5, {"nevents": 10000}),
                                     RunSpec(3, 7, {"nevents": 10000}), RunSpec(4, 6, {"nevents": 10000}),
                                     RunSpec(5, 8, {"nevents": 10000})])
        store.close_fill("prompt", 7, "beam dumped")  # fills 5 and 6 ended when fill 7 started
        store.close_fill("prompt", 8, "beam dumped")
        for task, group_by, limit, exclude, output in (
                ("phisym-reco", None, 3, [], sums), ("phisym-calib", "fill", 1, [], constants),
                ("phisym-reco", None, 1, [4], sums), ("phisym-calib", "fill", 1, [3], barrel),
                ("phisym-validate", "fill", 1, [5], constants)):
            for claim in store.claim("prompt", task, limit=limit, group_by=group_by, exclude=exclude):
                store.create_jobs("prompt", task, claim.run_number, [0])
                store.set_job_status("prompt", task, claim.run_number, 0, "done", fields={"output": str(output)})
    return {"phisym-reco": 4, "phisym-calib": 3, "phisym-plots": 2, "phisym-validate": 5, "phisym-upload": 2,
            "timing": 2}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_sh_step_runs_against_a_temp_database(path: Path, tmp_path: Path,
                                                    request: pytest.FixtureRequest) -> None:
    text = path.read_text()
    workspace = tmp_path / "workspace"  # what Jenkins checks out: the handlers, nothing written in the repo
    workspace.mkdir()
    (workspace / "handlers").symlink_to(REPO / "handlers")
    db = tmp_path / "state.db"
    expected = prepare(db)
    env = {**os.environ, **environment(text)}
    env.update({
        "ECALSTATE_DB": str(db), "ECALSTATE_BACKEND": "local", "ECALSTATE_WORKDIR": str(tmp_path / "work"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "BUILD_TAG": "jenkins-test-1",
        "ECALSTATE_INFLUX_TOKEN": "test:token", "ECALSTATE_INFLUX_USER": "writer",
        "ECALSTATE_INFLUX_PASSWORD": "secret-password",
    })
    standin_log = tmp_path / "conddb.jsonl"  # the upload command on lxplus is the real uploader; here the stand-in
    if "PHISYM_UPLOAD_COMMAND" in env:
        env["PHISYM_UPLOAD_COMMAND"] = f"{sys.executable} {REPO / 'handlers' / 'jobs' / 'conddb_standin.py'}" \
            f" --log {standin_log}"
    steps = sh_steps(text)
    if any("--protocol v1" in s for s in steps):
        influx = request.getfixturevalue("influx")
        influx.create_database(env["INFLUX_DATABASE"])
        env["INFLUX_URL"] = influx.url
    elif any("--url" in s for s in steps):
        env["INFLUX_URL"] = request.getfixturevalue("victoria").url
    for build in (1, 2):
        env["BUILD_TAG"] = f"jenkins-test-{build}"
        for step in steps:
            result = subprocess.run(["bash", "-ec", step], cwd=workspace, env=env, capture_output=True, text=True,
                                    timeout=120)
            assert result.returncode == 0, f"build {build}: {step}\n{result.stdout}\n{result.stderr}"
            assert "secret-password" not in result.stdout + result.stderr
    with Store.open(str(db)) as store:
        for task in map(task_of, handlers_of(text)):
            beats = [a for a in store.history("prompt", entity="handler", limit=None) if a.task == task]
            assert {(a.actor, a.to_status) for a in beats} == {("jenkins-test-1", "ok"), ("jenkins-test-2", "ok")}
            assert len(beats) == 6
            claimed = store.instance("prompt", task, expected[task])
            assert claimed.status in ("processing", "done") and store.list_jobs("prompt", task, run=expected[task])
    if "PHISYM_UPLOAD_COMMAND" in env:  # the upload job ran the command the pipeline names: fill 5 since run 1
        deadline = time.monotonic() + 60
        while not standin_log.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [json.loads(line)["since"] for line in standin_log.read_text().splitlines()] == [1]


def test_run_sync_pipeline_steps_run_twice_against_a_local_oms(tmp_path: Path) -> None:
    """The OMS sync pipeline: cron, no concurrent builds, OMS credentials only from withCredentials (a file for the
    secret); its steps run as two builds against the local OMS-format server: runs injected once."""
    from oms_server import oms_server

    text = RUN_SYNC.read_text()
    assert re.search(r"triggers\s*\{\s*cron\('[^']+'\)", text) and "disableConcurrentBuilds()" in text
    assert credential_variables(text) == {"ECALSTATE_OMS_CLIENT_ID", "ECALSTATE_OMS_CLIENT_SECRET_FILE"}
    assert not set(environment(text)) & credential_variables(text)
    db = tmp_path / "state.db"
    with Store.open(str(db), actor="setup", create=True) as store:
        store.create_campaign("prompt")
    secret = tmp_path / "oms-secret"
    secret.write_text("oms-secret-value")
    secret.chmod(0o400)  # as Jenkins' credentials binding leaves a secret file: readable by its owner only
    with oms_server("ecal-automation", "oms-secret-value") as oms:
        for number in range(390001, 390004):
            oms.run(number, 9100)
        env = {**os.environ, **environment(text), "ECALSTATE_DB": str(db), "ECALSTATE_OMS_URL": oms.api_url,
               "ECALSTATE_OMS_TOKEN_URL": oms.token_url, "ECALSTATE_OMS_CLIENT_ID": "ecal-automation",
               "ECALSTATE_OMS_CLIENT_SECRET_FILE": str(secret),
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        outputs = []
        for build in (1, 2):
            env["BUILD_TAG"] = f"jenkins-sync-{build}"
            for step in sh_steps(text):
                result = subprocess.run(["bash", "-ec", step], cwd=tmp_path, env=env, capture_output=True, text=True,
                                        timeout=120)
                assert result.returncode == 0, f"build {build}: {step}\n{result.stdout}\n{result.stderr}"
                assert "oms-secret-value" not in result.stdout + result.stderr
                outputs.append(result.stdout)
    assert outputs[0].startswith("oms: 3 new runs") and outputs[2].startswith("oms: 0 new runs")
    with Store.open(str(db)) as store:
        assert [r["run_number"] for r in store.list_runs("prompt", None, None)] == [390001, 390002, 390003]
