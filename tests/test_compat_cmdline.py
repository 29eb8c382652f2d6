"""The original's command lines, ``ecalrunctrl.py`` and ``ecalautomation.py``, run as processes the way the
original's documentation and scripts call them, over the same store (SQLite file and PostgreSQL), with the
original's database names mapped by the databases file. Bad input: one line on stderr, non-zero exit, nothing
written, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
from drive import snapshot

from ecalstate import RunSpec, Store

BIN = Path(sys.executable).parent
RUNCTRL = str(BIN / "ecalrunctrl.py")
AUTOMATION = str(BIN / "ecalautomation.py")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A clean environment, a home and a working folder of the test's own (nothing to find but what it writes)."""
    (tmp_path / "work").mkdir()
    (tmp_path / "home").mkdir()
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("ECALSTATE_", "XDG_"))}
    return {**keep, "HOME": str(tmp_path / "home"), "ECALSTATE_ACTOR": "jenkins-42"}


@pytest.fixture
def named(db_url: str, tmp_path: Path, env: dict[str, str]) -> Iterator[str]:
    """``ecal_prompt_v1`` names ``db_url`` in a databases file (relative paths resolve against its folder)."""
    target = "state.db" if "://" not in db_url else db_url
    if "://" not in db_url:
        assert Path(db_url).parent == tmp_path
    conf = tmp_path / "databases.conf"
    conf.write_text(f"ecal_prompt_v1 = {target}\necal_rerecos_v1 = rereco.db\n")
    env["ECALSTATE_DATABASES"] = str(conf)
    yield db_url


def run(cmd: str, *args: str, env: dict[str, str], code: int = 0, cwd: Optional[Path] = None) -> str:
    proc = subprocess.run([cmd, *args], capture_output=True, text=True, env=env, timeout=120, check=False,
                          cwd=cwd or Path(env["HOME"]).parent / "work", stdin=subprocess.DEVNULL)
    assert proc.returncode == code, (args, proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    if code:
        assert proc.stderr.count("\n") == 1 and proc.stdout == "", (args, proc.stdout, proc.stderr)
        return proc.stderr
    return proc.stdout


def state(db: str) -> dict[str, Any]:
    with Store.open(db) as store:
        return snapshot(store)


def test_the_documented_set_up_of_a_campaign(named: str, env: dict[str, str]) -> None:
    """``create --campaign``, then ``rtype-update --campaign C --add t1 t2 --type=all`` and the docs' activation
    ``rtype-update --campaign 'mycamp' --add 'task1'``: runs injected later get the tasks, as in the original."""
    out = run(RUNCTRL, "--db", "ecal_prompt_v1", "create", "--campaign", "prompt", env=env)
    assert "created campaign prompt" in out
    out = run(RUNCTRL, "--db", "ecal_prompt_v1", "rtype-update", "--campaign", "prompt", "--add", "phisym-reco",
              "phisym-calib", "--type=all", env=env)
    assert "declared task phisym-reco" in out and "declared task phisym-calib" in out
    assert "run type all: added phisym-reco, phisym-calib" in out
    run(RUNCTRL, "--db", "ecal_prompt_v1", "-c", "prompt", "rtype-update", "--add", "pi0-mon", env=env)
    run(RUNCTRL, "--db", "ecal_prompt_v1", "rtype-create", "--campaign", "prompt", "--type", "cosmics",
        "--add", "timing-reco", env=env)
    run(RUNCTRL, "--db", "ecal_prompt_v1", "rtype-update", "--campaign=prompt", "--type", "cosmics", "--add",
        "phisym-reco", env=env)
    with Store.open(named, actor="setup") as store:
        assert {r.name: sorted(r.tasks) for r in store.list_rtypes("prompt")} == {
            "all": ["phisym-calib", "phisym-reco", "pi0-mon"], "cosmics": ["phisym-reco", "timing-reco"]}
        assert {t.name: (t.depends_on, t.max_retries) for t in store.list_tasks("prompt")} == {
            t: ([], 3) for t in ("phisym-calib", "phisym-reco", "pi0-mon", "timing-reco")}
        store.inject_runs("prompt", [RunSpec(357889, 8000)])
        assert store.overview("prompt").rows[0].statuses == {
            t: "new" for t in ("phisym-calib", "phisym-reco", "pi0-mon", "timing-reco")}
    listing = run(RUNCTRL, "--db", "ecal_prompt_v1", "rtype-list", "--campaign", "prompt", env=env)
    assert [line.split()[:2] for line in listing.splitlines()[1:]] == [["all", "(every"], ["cosmics", "(every"]]
    assert "phisym-reco,phisym-calib,pi0-mon" in listing
    everything = run(RUNCTRL, "--db", "ecal_prompt_v1", "rtype-list", env=env)
    assert "prompt" in everything and "cosmics" in everything
    # the same again changes nothing
    before = state(named)
    run(RUNCTRL, "--db", "ecal_prompt_v1", "rtype-update", "--campaign", "prompt", "--add", "pi0-mon", env=env)
    after = state(named)
    assert {k: v for k, v in after.items() if k not in ("audit_log", "string")} == \
        {k: v for k, v in before.items() if k not in ("audit_log", "string")}


def test_a_path_or_url_works_as_db_and_create_makes_only_the_store_it_names(
        tmp_path: Path, env: dict[str, str], db_url: str) -> None:
    target = db_url if "://" in db_url else str(tmp_path / "fresh.db")
    run(RUNCTRL, "--db", target, "create", "--campaign", "prompt", env=env)
    with Store.open(target) as store:
        assert [c.name for c in store.list_campaigns()] == ["prompt"]
    assert os.listdir(tmp_path / "work") == []


BAD_RUNCTRL = [
    # (arguments, exit code, what the one line says)
    (["rtype-update", "--campaign", "prompt", "--add"], 2, "--add needs at least one task"),
    (["rtype-update", "--campaign", "prompt", "--add", "a", "--add", "b"], 2, "give --add once"),
    (["rtype-update", "--campaign", "prompt", "--add", "a", "--type"], 2, "--type"),
    (["rtype-update", "--add", "a"], 2, "give the campaign"),
    (["-c", "prompt", "rtype-update", "--campaign", "rereco", "--add", "a"], 2, "two campaigns"),
    (["rtype-update", "--campaign", "prompt", "--add", "a", "--type", "nosuch"], 1,
     "unknown run type 'nosuch' in campaign 'prompt'"),
    (["rtype-update", "--campaign", "nosuch", "--add", "a"], 1, "unknown campaign 'nosuch'"),
    (["rtype-update", "--campaign", "prompt", "--add", "bad name"], 1, "invalid task name"),
    (["rtype-update", "--campaign", "prompt", "--add", "a", "--remove", "b"], 2,
     "no option --remove here; ecalstate does it: ecalstate --db DB rtype update -c CAMPAIGN NAME --remove TASK"),
    (["rtype-create", "--campaign", "prompt", "--type", "collisions", "--filter", "class=Collisions"], 2,
     "ecalstate --db DB rtype create -c CAMPAIGN NAME --filter EXPR"),
    (["rtype-create", "--campaign", "prompt", "--type", "all"], 1, "run type 'all' already exists"),
    (["rtype-create", "--campaign", "prompt"], 2, "--type"),
    (["create", "--campaign", "prompt"], 1, "campaign 'prompt' already exists"),
    (["inject", "--campaign", "prompt", "--runs", "357889"], 2,
     "no command 'inject' here (create, rtype-create, rtype-update, rtype-list); ecalstate does the rest"),
    (["rtype-list", "--campaign", "nosuch"], 1, "unknown campaign 'nosuch'"),
    ([], 2, "give a command"),
]


@pytest.mark.parametrize("args, code, message", BAD_RUNCTRL, ids=[" ".join(a[0]) or "none" for a in BAD_RUNCTRL])
def test_bad_runctrl_input_is_one_line_and_writes_nothing(named: str, env: dict[str, str], args: list[str],
                                                          code: int, message: str) -> None:
    with Store.open(named, actor="setup", create=True) as store:
        store.create_campaign("prompt")
    before = state(named)
    err = run(RUNCTRL, "--db", "ecal_prompt_v1", *args, env=env, code=code)
    assert message in err and err.startswith("ecalrunctrl.py: "), err
    assert state(named) == before


def test_an_unknown_database_name_is_one_line_and_no_file(tmp_path: Path, env: dict[str, str]) -> None:
    """``--db ecal_prompt_v1`` with no databases file naming it: before, no such script was installed."""
    work = tmp_path / "work"
    err = run(RUNCTRL, "--db", "ecal_prompt_v1", "create", "--campaign", "prompt", env=env, code=1)
    assert "unknown database name 'ecal_prompt_v1'" in err and ".config/ecalstate/databases.conf" in err
    err = run(AUTOMATION, "--db", "ecal_rerecos_v1", "-c", "prompt", "-w", "reco", "wait", env=env, code=1)
    assert "unknown database name 'ecal_rerecos_v1'" in err
    assert os.listdir(work) == []
    err = run(RUNCTRL, "create", "--campaign", "prompt", env=env, code=2)
    assert "give --db" in err and "ECALSTATE_DB" in err
    assert os.listdir(work) == []
    # a campaign name the store refuses creates no database file either
    err = run(RUNCTRL, "--db", str(tmp_path / "new.db"), "create", "--campaign", "bad name", env=env, code=1)
    assert "invalid campaign name" in err and not (tmp_path / "new.db").exists()


def test_a_password_in_db_is_refused_and_never_printed(env: dict[str, str]) -> None:
    err = run(RUNCTRL, "--db", "postgresql+psycopg://ecal:s3cret-pw@127.0.0.1:1/ecal", "rtype-list", env=env,
              code=2)
    assert "the URL holds a password" in err and "s3cret-pw" not in err


def test_ecalautomation_wait_names_what_ecalstate_does_instead(named: str, env: dict[str, str],
                                                                tmp_path: Path) -> None:
    """The early scripts' ``wait`` (resubmit failed jobs with a command of theirs, behind the store's back): taken
    whole, then answered with one line naming the handler stages and ``ecalstate`` commands that do it here; the
    command given is never run."""
    run(RUNCTRL, "--db", "ecal_prompt_v1", "create", "--campaign", "prompt", env=env)
    before = state(named)
    err = run(AUTOMATION, "--db", "ecal_prompt_v1", "-c", "prompt", "-w", "phisym-reco", "--dataPeriod", "Run2022C",
              "wait", "--resubcmd", f"touch {tmp_path / 'ran'}", "--howManyAttempts", "1", "-s", "0",
              env=env, code=2)
    assert not (tmp_path / "ran").exists()
    assert err.startswith("ecalautomation.py: wait is not available in ecalstate")
    assert "python HANDLER.py --db ecal_prompt_v1 -c prompt check" in err
    assert "ecalstate --db DB task update -c prompt phisym-reco --max-retries 1" in err
    assert "ecalstate --db DB job list -c prompt --task phisym-reco" in err
    assert state(named) == before
    for args, message in [
        (["-c", "prompt", "-w", "reco", "wait", "--howManyAttempts", "x"], "'x' is not a valid integer"),
        (["-c", "prompt", "-w", "reco", "wait", "--resubcmd"], "--resubcmd"),
        (["-c", "prompt", "-w", "reco", "status"], "no command 'status' here (wait)"),
        (["-c", "prompt", "-w", "reco", "wait", "--sleep", "3"], "no option --sleep here"),
    ]:
        err = run(AUTOMATION, "--db", "ecal_prompt_v1", *args, env=env, code=2)
        assert err.startswith("ecalautomation.py: ") and message in err, err
    assert state(named) == before


def test_help_names_the_original_forms(env: dict[str, str]) -> None:
    out = run(RUNCTRL, "--help", env=env)
    for command in ("create", "rtype-create", "rtype-update", "rtype-list"):
        assert command in out
    assert "ECALSTATE_DATABASES" in out
    out = run(RUNCTRL, "rtype-update", "--help", env=env)
    assert "--add TASK [TASK ...]" in out and "--type NAME" in out
    out = run(AUTOMATION, "wait", "--help", env=env)
    assert "--resubcmd" in out and "--howManyAttempts" in out
