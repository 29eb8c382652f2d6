"""The ``ecalstate`` command line: parse, make one library call, format.

Commands live in modules named for their group and are imported only when
used (:data:`COMMANDS`), so ``ecalstate --help`` stays as fast as importing
click and sqlmodel. Library refusals (:class:`~ecalstate.errors.EcalStateError`)
become one clean line and exit code 1 here, in one place.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Optional

import click

from ..errors import EcalStateError
from ..secrets import no_password_in_argument
from .app import App

#: command name -> "module:attribute", relative to this package
COMMANDS: dict[str, str] = {
    "init": ".setup:init",
    "campaign": ".setup:campaign",
    "task": ".setup:task",
    "rtype": ".setup:rtype",
    "run": ".runs:run",
    "status": ".runs:status",
    "set": ".operator:set_status",
    "reprocess": ".operator:reprocess",
    "approve": ".operator:approve",
    "reject": ".operator:reject",
    "claim": ".runs:claim",
    "job": ".jobs:job",
    "outputs": ".jobs:outputs",
    "history": ".runs:history",
    "health": ".runs:health",
    "latency": ".latency:latency",
    "report": ".report:report",
    "export": ".export:export",
    "db": ".dbadmin:db",
    "import-influx": ".legacy:import_influx",
    "notify": ".notify:notify",
    "serve": ".serve:serve",
}

#: command name -> its one-line summary (its docstring's first sentence; tests/test_cli_docs.py checks them),
#: so that ``ecalstate --help`` lists the commands without importing their modules
SUMMARIES: dict[str, str] = {
    "approve": "Approve a gate task's instances for a set of runs, with a reason (an expert's act).",
    "campaign": "Create and list campaigns; their policies.",
    "claim": "Claim eligible runs of a task for a submit stage.",
    "db": "Maintain the database: schema upgrades, pruning old history, sizes.",
    "export": "Export state changes to InfluxDB as run, job and handler points.",
    "health": "Report what needs action: each waiting task instance with its command; exit 1 on any problem.",
    "history": "The audit trail: who, when, from, to, why.",
    "import-influx": "Import campaigns, runs, task statuses and job histories from the original's InfluxDB.",
    "init": "Create or upgrade the database schema.",
    "job": "Batch jobs of a task instance (one claimed run of a task).",
    "latency": "Latency of tasks against their deadlines: p50, p95, max, share within.",
    "notify": "Webhook notifications (Mattermost/Slack) of failures and health problems.",
    "outputs": "Each run's current outputs of a task, and the version that made them.",
    "report": "Write static reports of a campaign.",
    "reject": "Reject a gate task's instances for a set of runs, with a reason (an expert's act).",
    "reprocess": "Mark runs of a task for reprocessing.",
    "rtype": "Run types: filters on run metadata that activate tasks.",
    "run": "Inject runs into a campaign and list them.",
    "serve": "Serve a live, read-only web view of the database until Ctrl-C.",
    "set": "Set the STATUS (done, failed, reprocess or skipped) of a task for a set of runs.",
    "status": "The run x task overview, with totals per task and status.",
    "task": "Declare tasks, their dependencies and retry limits.",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use; library errors exit 1 with one line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | {n for n in COMMANDS if _available(n)})

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from :data:`SUMMARIES`; only a command without a summary is imported for it."""
        rows = []
        for name in self.list_commands(ctx):
            summary = SUMMARIES.get(name)
            if summary is None:
                command = self.get_command(ctx, name)
                if command is None or command.hidden:
                    continue
                summary = command.get_short_help_str(limit=1000)
            rows.append((name, summary))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def get_command(self, ctx: click.Context, cmd_name: str) -> Optional[click.Command]:
        if cmd_name in COMMANDS and _available(cmd_name):
            module_name, attr = COMMANDS[cmd_name].split(":")
            command = getattr(importlib.import_module(module_name, __name__), attr)
            assert isinstance(command, click.Command)
            return command
        return super().get_command(ctx, cmd_name)

    def make_context(
        self, info_name: Optional[str], args: list[str], parent: Optional[click.Context] = None, **extra: Any
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as err:
            raise _one_line(err) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EcalStateError as err:  # its text may quote stored data (a job's reason): made inert for the terminal
            from .fmt import printable

            raise click.ClickException(printable(str(err))) from None
        except click.UsageError as err:
            raise _one_line(err) from None


def _one_line(err: click.UsageError) -> click.UsageError:
    """A usage error as one stderr line (exit 2) that names the command's --help, instead of click's four."""
    if isinstance(err, click.exceptions.NoArgsIsHelpError):  # a bare group prints its help
        return err
    where = f" (see '{err.ctx.command_path} --help')" if err.ctx is not None else ""
    return click.UsageError(err.format_message() + where)


def _available(name: str) -> bool:
    module_name = COMMANDS[name].split(":")[0]
    return importlib.util.find_spec(module_name, __name__) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--db", envvar="ECALSTATE_DB", default="./ecalstate.db", show_default=True, metavar="URL|PATH",
              callback=no_password_in_argument,
              help="SQLite file or SQLAlchemy URL (env ECALSTATE_DB); no password in it: see"
                   " ECALSTATE_DB_PASSWORD_FILE.")
@click.option("--actor", metavar="NAME",
              help="Who acts, for the audit (env ECALSTATE_ACTOR, else BUILD_TAG, else user@host).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")
@click.option("--allow-network-fs", is_flag=True,
              help="Accept a SQLite file on a network or FUSE mount (AFS, EOS, NFS...), with a warning.")
@click.version_option(package_name="ecalstate")
@click.pass_context
def main(ctx: click.Context, db: str, actor: Optional[str], as_json: bool, allow_network_fs: bool) -> None:
    """Keep track of calibration workflows: campaigns, runs, tasks and jobs.

    Every state change is validated against the transition tables and
    audited. Exit codes: 0 success, 1 refused or failed, 2 usage error.

    \b
    Example:
        ecalstate --db state.db init
        ecalstate --db state.db status -c prompt
    """
    given = ctx.get_parameter_source("db")
    source = ("from --db" if given == click.core.ParameterSource.COMMANDLINE else "from ECALSTATE_DB"
              if given == click.core.ParameterSource.ENVIRONMENT else "neither --db nor ECALSTATE_DB is set")
    ctx.obj = App(db=db, actor=actor, as_json=as_json, allow_network_fs=allow_network_fs, db_source=source)
    ctx.call_on_close(ctx.obj.close)
