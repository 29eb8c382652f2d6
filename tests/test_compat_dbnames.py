"""The original's database names (``ecal_prompt_v1``) as ``dbname=``/``--db``: a name maps to a store through the
databases file (ECALSTATE_DATABASES, else ~/.config/ecalstate/databases.conf, else /etc/ecalstate/databases.conf);
an unknown name is one clear error naming where it looked, and never a new file in the current folder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ecalstate import RunSpec, Store
from ecalstate.compat import JobCtrl, RunCtrl, close_stores
from ecalstate.compat.dbnames import resolve_dbname
from ecalstate.errors import EcalStateError, Invalid, NotFound


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A working folder and a home of their own: no databases file but the test's."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("ECALSTATE_DATABASES", raising=False)
    yield tmp_path
    close_stores()


def write_conf(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def make_db(url: str) -> None:
    with Store.open(url, actor="setup", create=True) as store:
        store.create_campaign("prompt")
        store.add_task("prompt", "reco")
        store.update_rtype("prompt", "all", add=["reco"])
        store.inject_runs("prompt", [RunSpec(357889, 8000)])


def test_a_name_from_the_databases_file_opens_its_store(home: Path, db_url: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``RunCtrl(dbname='ecal_prompt_v1')`` and ``JobCtrl(..., dbname='ecal_prompt_v1')`` as real scripts pass it,
    on a SQLite path and a PostgreSQL URL; before, the name was taken for a file in the current folder."""
    make_db(db_url)
    conf = write_conf(home / "conf" / "databases.conf",
                      f"# ECAL databases\n\necal_prompt_v1 = {db_url}   # the prompt store\necal_rerecos_v1=x.db\n")
    monkeypatch.setenv("ECALSTATE_DATABASES", str(conf))
    rctrl = RunCtrl(dbname="ecal_prompt_v1", campaign="prompt")
    assert [r["run_number"] for r in rctrl.getRuns(status={"reco": "new"})] == ["357889"]
    jctrl = JobCtrl(workflow="reco", campaign="prompt", tags={"run_number": 357889}, dbname="ecal_prompt_v1")
    jctrl.createTask(jids=[0])
    with Store.open(db_url) as store:
        assert store.instance("prompt", "reco", 357889).status == "processing"
    assert os.listdir(".") == []
    # a relative path in the file is relative to the file's folder, not to the current one
    assert resolve_dbname("ecal_rerecos_v1") == str(home / "conf" / "x.db")
    # paths and URLs pass as they are
    assert resolve_dbname("./ecal_prompt_v1") == "./ecal_prompt_v1"
    assert resolve_dbname("state.db") == "state.db" and resolve_dbname("/a/b") == "/a/b"
    assert resolve_dbname("postgresql+psycopg://u@h/ecal_prompt_v1") == "postgresql+psycopg://u@h/ecal_prompt_v1"


def test_the_user_file_then_the_system_file(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_conf(home / "home" / ".config" / "ecalstate" / "databases.conf", "ecal_prompt_v1 = /srv/ecal/prompt.db\n")
    assert resolve_dbname("ecal_prompt_v1") == "/srv/ecal/prompt.db"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "xdg"))
    write_conf(home / "xdg" / "ecalstate" / "databases.conf", "ecal_prompt_v1 = /srv/ecal/other.db\n")
    assert resolve_dbname("ecal_prompt_v1") == "/srv/ecal/other.db"


def test_an_unknown_name_is_one_clear_error_and_no_file(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, ``dbname='ecal_prompt_v1'`` said 'no database at <cwd>/ecal_prompt_v1; create it with ecalstate
    init': the advice to make an empty store in the current folder."""
    with pytest.raises(NotFound) as info:
        RunCtrl(dbname="ecal_prompt_v1", campaign="prompt")
    message = str(info.value)
    assert "unknown database name 'ecal_prompt_v1'" in message and "\n" not in message
    assert str(home / "home" / ".config" / "ecalstate" / "databases.conf") in message
    assert "/etc/ecalstate/databases.conf" in message and "ECALSTATE_DATABASES" in message
    assert "ecalstate init" not in message
    conf = write_conf(home / "databases.conf", "ecal_rerecos_v1 = /srv/r.db\n")
    monkeypatch.setenv("ECALSTATE_DATABASES", str(conf))
    with pytest.raises(NotFound, match=f"not in {conf} .ECALSTATE_DATABASES.: add a line"):
        JobCtrl(workflow="reco", campaign="prompt", tags={"run_number": 1}, dbname="ecal_prompt_v1")
    monkeypatch.setenv("ECALSTATE_DATABASES", str(home / "missing.conf"))
    with pytest.raises(NotFound, match="ECALSTATE_DATABASES names .*missing.conf, which does not exist"):
        resolve_dbname("ecal_prompt_v1")
    assert os.listdir(".") == []


@pytest.mark.parametrize("text, mode, message", [
    ("ecal_prompt_v1 /srv/a.db\n", 0o644, r"line 1: expected NAME = URL\|PATH"),
    ("ecal_prompt_v1 = /srv/a.db\necal_prompt_v1 = /srv/b.db\n", 0o644, "line 2: ecal_prompt_v1 is named twice"),
    ("ecal/prompt = /srv/a.db\n", 0o644, "line 1: 'ecal/prompt' is not a database name"),
    ("ecal_prompt_v1 =\n", 0o644, "line 1: ecal_prompt_v1 names no database"),
    ("ecal_prompt_v1 = postgresql+psycopg://ecal:s3cret-pw@db/ecal\n", 0o644, "line 1: the URL holds a password"),
    ("ecal_prompt_v1 = /srv/a.db\n", 0o664, "may be changed by other users .mode 0664.: `chmod go-w"),
    ("ecal_prompt_v1 = /srv/a.db\n", 0o646, "may be changed by other users .mode 0646."),
])
def test_a_bad_databases_file_is_refused_naming_its_line(home: Path, monkeypatch: pytest.MonkeyPatch, text: str,
                                                         mode: int, message: str) -> None:
    """A file others may change could send the automation's writes to a store of theirs; a password would be
    printed by every error that quotes the line: both refused, the line never quoted."""
    conf = write_conf(home / "databases.conf", text, mode)
    monkeypatch.setenv("ECALSTATE_DATABASES", str(conf))
    with pytest.raises(Invalid, match=message) as info:
        resolve_dbname("ecal_prompt_v1")
    assert "s3cret-pw" not in str(info.value) and str(conf) in str(info.value)
    assert "\n" not in str(info.value)


def test_a_databases_file_of_another_user_is_refused(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                     other_user: str) -> None:
    import pwd

    conf = write_conf(home / "databases.conf", "ecal_prompt_v1 = /srv/a.db\n")
    os.chown(conf, pwd.getpwnam(other_user).pw_uid, -1)
    monkeypatch.setenv("ECALSTATE_DATABASES", str(conf))
    with pytest.raises(Invalid, match=f"{conf} belongs to {other_user}, not to you or root"):
        resolve_dbname("ecal_prompt_v1")


def test_every_refusal_is_an_ecalstate_error(home: Path) -> None:
    """The command lines and TaskHandler turn these into one line: nothing else may escape."""
    for bad in ("", "   "):
        with pytest.raises(EcalStateError):
            resolve_dbname(bad)
