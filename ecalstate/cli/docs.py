"""Generate docs/cli.md from the ``--help`` of every command: ``python -m ecalstate.cli.docs > docs/cli.md``.

The reference is generated, never hand-written, so it cannot drift from the
code; tests/test_cli_docs.py fails when the committed file is stale.
"""

from __future__ import annotations

from collections.abc import Iterator

import click

from . import main

WIDTH = 100

INTRO = """\
# ecalstate command line

Generated from `--help` by `python -m ecalstate.cli.docs > docs/cli.md`; do not edit by hand.

Conventions shared by every command:

- Global options go before the command: `ecalstate --db state.db --actor shifter --json status -c prompt`.
  `--db` defaults to `./ecalstate.db` (env `ECALSTATE_DB`); any SQLAlchemy URL works
  (`postgresql+psycopg://user@host/db`, the password from `~/.pgpass` or `PGPASSWORD`, never on the command line).
- `-c/--campaign` falls back to the environment variable `ECALSTATE_CAMPAIGN`.
- The actor recorded in the audit is `--actor`, else `ECALSTATE_ACTOR`, else Jenkins' `BUILD_TAG`, else user@host.
- Run sets: `356001-356100,356200`. Multi-valued options take repetition or comma lists:
  `--add reco --add calib` is `--add reco,calib`.
- Durations: `90s`, `30m`, `6h`, `2d`, `1w`, or combinations like `1h30m`.
- `--json` prints machine-readable JSON on stdout for every command that prints data.
- Mutating commands accept `--request-id ID`: replaying the same id returns the first outcome and writes nothing.
- Exit codes: 0 success; 1 refused or failed (one line on stderr, nothing written); 2 usage error.
  `health` exits 1 when anything is a problem (each named with the command that resolves it); a `--dry-run` with
  refusals exits 1. A workflow's stages (`python handlers/<workflow>.py check|submit|resubmit`, below) exit 3 when
  the stage worked but left a task instance failed for good (no retry left): the Jenkinsfiles mark the build UNSTABLE.
- Reads never create a database; `ecalstate init` (or `campaign create`) does.

## Shell completion

Commands, options and choices complete in bash, zsh and fish (campaign names too, read from `--db`):

```
# bash, in ~/.bashrc
eval "$(_ECALSTATE_COMPLETE=bash_source ecalstate)"
# zsh, in ~/.zshrc
eval "$(_ECALSTATE_COMPLETE=zsh_source ecalstate)"
# fish, in ~/.config/fish/completions/ecalstate.fish
_ECALSTATE_COMPLETE=fish_source ecalstate | source
```
"""


def walk(command: click.Command, ctx: click.Context) -> Iterator[tuple[click.Context, click.Command]]:
    """Every command under ``command`` (itself first), depth first in name order, with its context."""
    yield ctx, command
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                yield from walk(sub, click.Context(sub, info_name=name, parent=ctx, terminal_width=WIDTH,
                                                   max_content_width=WIDTH))


def commands() -> Iterator[tuple[click.Context, click.Command]]:
    """Every command of ``ecalstate`` with a context fit for rendering its help."""
    settings = {**main.context_settings, "terminal_width": WIDTH, "max_content_width": WIDTH}
    root = click.Context(main, info_name="ecalstate", **settings)
    yield from walk(main, root)


#: the stages every workflow script has (a :class:`~ecalstate.handler.TaskHandler`'s command line)
HANDLER_INTRO = """\
## python handlers/<workflow>.py

Every workflow script (a `TaskHandler`: `handlers/phisym_reco.py`, `handlers/phisym_calib.py`...) has the same
command line, its three stages run by Jenkins; shown here for a task named `<task>` (its examples name the script
`<task>.py`).
"""


def handler_commands() -> Iterator[tuple[click.Context, click.Command]]:
    """The stages of a workflow script, for a task named ``<task>``."""
    from ..handler import TaskHandler

    workflow: type[TaskHandler] = type("Workflow", (TaskHandler,), {"task": "<task>", "__module__": "<workflow>"})
    group = workflow.cli()
    settings = {**(group.context_settings or {}), "terminal_width": WIDTH, "max_content_width": WIDTH}
    yield from walk(group, click.Context(group, info_name="python handlers/<workflow>.py", **settings))


def render() -> str:
    """The whole markdown reference."""
    parts = [INTRO]
    for ctx, command in commands():
        parts.append(f"## {ctx.command_path}\n\n```\n{command.get_help(ctx).rstrip()}\n```\n")
    parts.append(HANDLER_INTRO)
    for ctx, command in handler_commands():
        parts.append(f"### {ctx.command_path}\n\n```\n{command.get_help(ctx).rstrip()}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    click.echo(render(), nl=False)
