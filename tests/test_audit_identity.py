"""The audit names who really acted (issue 11, item 5).

``--actor`` is a free-text label anyone can set (and ``$USER`` too); every audit row also records the
identity the system authenticated: the process's effective account at its host, Jenkins' build tag when
present, and on PostgreSQL the role the server logged in. ``history`` shows both.
"""

from __future__ import annotations

import os
import pwd
import socket

import pytest

from cli_support import as_json, build_chain, ok
from ecalstate import RunSpec, Store
from ecalstate.base import os_identity


def test_identity_is_the_effective_account_not_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER", "somebody-else")
    monkeypatch.setenv("LOGNAME", "somebody-else")
    monkeypatch.delenv("BUILD_TAG", raising=False)
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert os_identity() == f"{me}@{socket.gethostname()}"
    monkeypatch.setenv("BUILD_TAG", "jenkins-phisym-reco-42")
    assert os_identity() == f"{me}@{socket.gethostname()} (jenkins-phisym-reco-42)"


def test_a_forged_actor_label_does_not_hide_who_wrote(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BUILD_TAG", raising=False)
    monkeypatch.setenv("USER", "shift-leader")
    with Store.open(db_url, actor="jenkins-prompt-1", create=True) as store:
        store.create_campaign("prompt")
        store.add_task("prompt", "reco")
        store.update_rtype("prompt", "all", add=["reco"])
        store.inject_runs("prompt", [RunSpec(1, 10)])
        rows = store.history("prompt")
        role = None
        if not store.db.is_sqlite:
            with store.db.tx(write=False) as tx:
                role = tx.scalar("SELECT session_user")
    me = pwd.getpwuid(os.geteuid()).pw_name
    expected = f"{me}@{socket.gethostname()}" + (f" db:{role}" if role else "")
    assert rows and all(r.actor == "jenkins-prompt-1" for r in rows)
    assert {r.identity for r in rows} == {expected}


def test_history_shows_actor_and_identity(tmp_path) -> None:
    db = str(tmp_path / "state.db")
    build_chain(db)
    ok(db, "claim", "-c", "prompt", "--task", "reco", "--limit", "1", env={"BUILD_TAG": "jenkins-ops-7"})
    last = as_json(db, "history", "-c", "prompt")[-1]
    assert (last["actor"], last["to_status"]) == ("tester", "processing")
    assert last["identity"].endswith(" (jenkins-ops-7)")
    text = ok(db, "history", "-c", "prompt", "--limit", "1").stdout
    assert "identity" in text.splitlines()[0] and "tester" in text and "(jenkins-ops-7)" in text
