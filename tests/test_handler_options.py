"""A handler's own command-line options (issue 25 item 4): declared with click like the rest, shown in a stage's
``--help``, checked by click (a bad value is a usage error and nothing is claimed), reaching ``jobs()`` as
``self.option_values`` and the jobs as ``ECALSTATE_OPTION_<NAME>``; a resubmitted job runs with the options it was made
with, whatever the resubmitting build passes. Through the handler's real command line, on the local backend."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from handler_support import Probe, make_campaign

from ecalstate import Store
from ecalstate.backends.local import LocalBackend
from ecalstate.errors import Invalid
from ecalstate.handler import StageFailed

TESTS = Path(__file__).resolve().parent

WORKFLOW = '''
import sys
import click
sys.path.insert(0, {tests!r})
from handler_support import Probe
from ecalstate.backends import JobSpec

class Tagged(Probe):
    options = [
        click.option("--global-tag", required=True, metavar="TAG", help="The conditions' global tag the jobs read."),
        click.option("--events", type=click.IntRange(min=1), default=1000, show_default=True, help="Events per job."),
    ]

    def jobs(self, campaign, claim):
        given = self.option_values
        return [JobSpec(0, {payload!r}, ["--gt", given["global_tag"], "--events", str(given["events"])])]

Tagged.main()
'''
#: writes what it was given into its folder; fails its first attempt
PAYLOAD = '''import json, os, sys
attempt = os.environ["ECALSTATE_ATTEMPT"]
json.dump({"argv": sys.argv[1:], "env": dict(os.environ)}, open("seen.json", "w"))
sys.exit(3 if attempt == "1" else 0)
'''


@pytest.fixture
def workflow(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    db = str(tmp_path / "state.db")
    with Store.open(db, actor="setup", create=True) as store:
        make_campaign(store, [7], retries=2)
    payload = tmp_path / "payload" / "seen.py"
    payload.parent.mkdir()
    payload.write_text(PAYLOAD)
    script = tmp_path / "tagged.py"
    script.write_text(WORKFLOW.format(tests=str(TESTS), payload=str(payload)))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "ECALSTATE_DB": db, "ECALSTATE_CAMPAIGN": "prompt",
           "ECALSTATE_WORKDIR": str(tmp_path / "work")}
    return script, env


def call(workflow: tuple[Path, dict[str, str]], *args: str) -> subprocess.CompletedProcess[str]:
    script, env = workflow
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=60)


def seen(workdir: Path, attempt: int) -> dict[str, object]:
    path = workdir / "jobs" / "prompt" / "probe" / "7" / "g1" / f"j0.a{attempt}" / "seen.json"
    stop = time.monotonic() + 30
    while time.monotonic() < stop:
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            time.sleep(0.05)
    raise AssertionError(f"{path} never written")


def wait_exit(workdir: Path, attempt: int) -> None:
    path = workdir / "jobs" / "prompt" / "probe" / "7" / "g1" / f"j0.a{attempt}" / "exit"
    stop = time.monotonic() + 30
    while not path.exists() and time.monotonic() < stop:
        time.sleep(0.05)


@pytest.mark.parametrize("stage", ["submit", "resubmit", "check"])
def test_declared_options_are_in_each_stages_help(stage: str, workflow: tuple[Path, dict[str, str]]) -> None:
    result = call(workflow, stage, "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "--global-tag TAG The conditions' global tag the jobs read. [required]" in text
    assert "--events INTEGER RANGE Events per job. [default: 1000; x>=1]" in text


def test_the_values_reach_jobs_and_the_job_and_a_resubmit_keeps_them(workflow: tuple[Path, dict[str, str]],
                                                                      tmp_path: Path) -> None:
    tag = 'GT "2026" $HOME\'s v1 ü'
    first = call(workflow, "submit", "--global-tag", tag, "--events", "500")
    assert first.returncode == 0, first.stderr
    work = tmp_path / "work"
    one = seen(work, 1)
    assert one["argv"] == ["--gt", tag, "--events", "500"]
    env = one["env"]
    assert isinstance(env, dict)
    assert env["ECALSTATE_OPTION_GLOBAL_TAG"] == tag and env["ECALSTATE_OPTION_EVENTS"] == "500"
    wait_exit(work, 1)
    assert call(workflow, "check", "--global-tag", "ignored").returncode == 0
    # the next build passes other values: the job made with the first ones runs again as it was made
    again = call(workflow, "resubmit", "--global-tag", "OTHER", "--events", "9")
    assert again.returncode == 0 and "jobs resubmitted 1" in again.stdout, again.stdout + again.stderr
    two = seen(work, 2)
    assert two["argv"] == ["--gt", tag, "--events", "500"]
    assert isinstance(two["env"], dict) and two["env"]["ECALSTATE_OPTION_GLOBAL_TAG"] == tag


@pytest.mark.parametrize("args, said", [
    (["--events", "0", "--global-tag", "X"], "Invalid value for '--events': 0 is not in the range x>=1."),
    (["--events", "many", "--global-tag", "X"], "Invalid value for '--events': 'many' is not a valid integer range."),
    ([], "Missing option '--global-tag'."),
])
def test_a_bad_or_missing_value_is_a_usage_error_and_nothing_is_claimed(
        args: list[str], said: str, workflow: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    result = call(workflow, "submit", *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"Error: {said}"
    with Store.open(str(tmp_path / "state.db")) as store:
        assert store.instance("prompt", "probe", 7).status == "new"
    assert not (tmp_path / "work").exists()


class Declared(Probe):
    options = [click.option("--global-tag", required=True), click.option("--events", type=int, default=1000)]


def test_the_library_fills_defaults_and_refuses_a_missing_required_option(tmp_path: Path) -> None:
    with Store.open(str(tmp_path / "s.db"), create=True) as store:
        backend = LocalBackend(tmp_path / "work")
        handler = Declared(store, backend, options={"global_tag": "GT1"})
        assert handler.option_values == {"global_tag": "GT1", "events": 1000}
        with pytest.raises(Invalid, match="Declared: Missing option '--global-tag'"):
            Declared(store, backend)
        with pytest.raises(Invalid, match="Declared: no option 'global_tga'"):
            Declared(store, backend, options={"global_tag": "GT1", "global_tga": "x"})


def test_an_option_that_hides_a_stages_own_is_refused() -> None:
    class Clashing(Probe):
        options = [click.option("--limit", default=3)]

    with pytest.raises(Invalid, match="Clashing: option --limit is a stage's own"):
        Clashing.cli()


def test_a_value_holding_a_secret_of_the_handler_never_reaches_a_job(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """An option read from the environment could carry the database password into every job's environment."""
    monkeypatch.setenv("ECALSTATE_DB_PASSWORD", "pw-0f-the-db-77")
    with Store.open(str(tmp_path / "s.db"), create=True) as store:
        make_campaign(store, [7])
        handler = Declared(store, LocalBackend(tmp_path / "work"), options={"global_tag": "x-pw-0f-the-db-77"})
        handler.payload = tmp_path / "never.py"
        with pytest.raises(StageFailed, match="run 7: an option's value holds a secret of this process"):
            handler.submit("prompt")
        assert store.instance("prompt", "probe", 7).status == "new" and store.list_jobs("prompt", "probe") == []


@pytest.mark.parametrize("name", ["ECALSTATE_DB", "PGPASSWORD", "ECALSTATE_DB_PASSWORD_FILE", "1BAD", "A=B"])
def test_a_job_cannot_be_given_the_database_or_a_secrets_variable(name: str) -> None:
    from ecalstate.backends import JobSpec

    with pytest.raises(Invalid, match=f"job 0: {name!r} is not a variable a job may be given"):
        JobSpec(0, "sh", env={name: "x"})
