"""docs/cli.md is generated from --help; every command documents itself with help and an example."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from ecalstate.cli import COMMANDS, SUMMARIES
from ecalstate.cli.docs import commands, render

DOCS = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
ALL = [(ctx.command_path, command) for ctx, command in commands()]


def test_docs_cli_md_is_current() -> None:
    assert DOCS.read_text() == render(), "docs/cli.md is stale: run `python -m ecalstate.cli.docs > docs/cli.md`"


def test_docs_cover_every_command_and_completion() -> None:
    text = DOCS.read_text()
    assert len(ALL) >= 25
    for path, _ in ALL:
        assert f"\n## {path}\n" in text
    assert 'eval "$(_ECALSTATE_COMPLETE=bash_source ecalstate)"' in text


@pytest.mark.parametrize(("path", "command"), ALL, ids=[p for p, _ in ALL])
def test_command_has_help_and_example(path: str, command: click.Command) -> None:
    help_text = command.help or ""
    summary = help_text.strip().splitlines()[0] if help_text.strip() else ""
    assert len(summary) > 10, f"{path}: no help text"
    found = re.search(r"\x08\n\s*Example:\n((?:[ \t]+\S.*\n?)+)\s*$", help_text)
    assert found, f"{path}: the docstring must end with a \\b Example: block"
    examples = found.group(1).strip().splitlines()
    assert any(line.strip().startswith("ecalstate ") for line in examples), f"{path}: the example must call ecalstate"
    for param in command.params:
        if isinstance(param, click.Option) and param.name not in ("help", "version"):
            assert param.help, f"{path}: option {param.opts[0]} has no help"


def test_summaries_match_the_commands() -> None:
    """``ecalstate --help`` lists commands from SUMMARIES without importing them: they must say what the commands say."""
    top = {ctx.info_name: command for ctx, command in commands() if ctx.parent is not None and ctx.parent.parent is None}
    assert set(SUMMARIES) == set(COMMANDS), "every command in COMMANDS needs its summary in SUMMARIES"
    for name, command in top.items():
        assert SUMMARIES[name] == command.get_short_help_str(limit=1000), name
