"""Stored text never reaches a terminal raw (issue 11, item 6).

A job's failure reason can quote its stderr, an actor is free text, a field is whatever a job reported:
any of them may carry escape sequences that retitle the window, clear the screen or hide lines, or
bidirectional overrides that reorder what the shifter reads. Every command that prints stored text shows
their escapes instead; the only escape sequences on stdout are the status colours the CLI adds itself.
"""

from __future__ import annotations

import re

import pytest

from cli_support import build_chain, invoke, ok
from ecalstate import Store
from ecalstate.cli.fmt import Styled, printable, styled, table

#: clear screen, set the window title, cursor up, a bell, a bidi override, a C1 CSI
HOSTILE = "boom\x1b[2J\x1b]0;pwned\x07\x1b[1A\u202eevil\x9b31m\ttab\nline2"
#: the SGR colour sequences click.style writes (the CLI's own)
SGR = re.compile(r"\x1b\[[0-9;]*m")
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _raw_controls(text: str) -> list[str]:
    """Control characters left after removing the CLI's own colour codes (newlines between lines are layout)."""
    return RAW.findall(SGR.sub("", text))


def test_printable_shows_each_control_as_its_escape() -> None:
    assert printable("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert printable("x\ny\tz\x07") == "x\\ny\\tz\\x07"
    assert printable("\u202eabc") == "\\u202eabc"
    assert printable("plain ünïcode text") == "plain ünïcode text"


def test_only_styled_text_keeps_escapes_in_tables() -> None:
    coloured = styled("failed")
    assert isinstance(coloured, Styled)
    out = table(["status", "reason"], [(coloured, HOSTILE)])
    assert "\x1b[2J" not in out and "\\x1b[2J" in out
    assert "\x1b" not in SGR.sub("", out)


@pytest.fixture
def hostile_db(tmp_path) -> str:
    """A chain campaign where the hostile text sits in a job's reason and field, an actor, and an abort reason."""
    db = str(tmp_path / "state.db")
    build_chain(db)
    with Store.open(db, actor=f"jenkins{HOSTILE}") as store:
        store.claim("prompt", "reco")
        store.create_jobs("prompt", "reco", 1, [0])
        store.set_job_status("prompt", "reco", 1, 0, "failed", {"note": HOSTILE}, reason=HOSTILE)
    return db


@pytest.mark.parametrize("color", [False, True], ids=["pipe", "terminal"])
@pytest.mark.parametrize("args", [
    ("history", "-c", "prompt"),
    ("job", "list", "-c", "prompt", "--task", "reco"),
    ("run", "list", "-c", "prompt", "--task", "reco"),
], ids=lambda a: " ".join(a[:2]))
def test_commands_print_stored_text_inert(hostile_db: str, args: tuple[str, ...], color: bool) -> None:
    result = ok(hostile_db, *args, color=color)
    assert _raw_controls(result.stdout) == [], result.stdout
    if args[0] != "run":
        assert re.search(r"\\(x1b|u001b)\[2J", result.stdout), result.stdout  # shown, as text


def test_refusal_quoting_stored_text_is_one_inert_line(hostile_db: str) -> None:
    # a reason supplied on the command line comes back in the refusal
    result = invoke(hostile_db, "set", "-c", "prompt", "--task", "plots", "--runs", "1", "done", "--reason", HOSTILE)
    assert result.exit_code == 1
    assert _raw_controls(result.stderr.rstrip("\n")) == [], result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bulk_change_lines_are_inert(hostile_db: str) -> None:
    result = ok(hostile_db, "reprocess", "-c", "prompt", "--task", "reco", "--runs", "1", "--reason", HOSTILE,
                color=True)
    assert _raw_controls(result.stdout) == [], result.stdout
