"""Progress on long work (issue 23, item 6): ``db upgrade``, ``db prune``, ``import-influx``, ``export --full`` and
``run sync`` draw a progress bar on stderr when it is a terminal (a real pseudo-terminal here), and print nothing
more when it is not (Jenkins logs, pipes)."""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from cli_support import ECALSTATE, build_chain, process
from test_import_influx import dataset
from test_migrations import load_v1

from ecalstate import Store
from ecalstate.tables import SCHEMA_VERSION


def on_a_terminal(args: Sequence[str], cwd: Path) -> tuple[int, str, str]:
    """``ecalstate ARGS`` with its stderr on a pseudo-terminal (stdout a pipe): exit code, stdout, what the terminal
    showed."""
    master, slave = os.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECALSTATE_")}
    proc = subprocess.Popen([ECALSTATE, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=slave,
                            stdin=subprocess.DEVNULL, env={**env, "COLUMNS": "100", "TERM": "xterm"})
    os.close(slave)
    shown = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal's other end closed: the process is gone
                break
            if not chunk:
                break
            shown += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    out = proc.stdout.read().decode() if proc.stdout else ""
    return proc.wait(30), out, shown.decode(errors="replace")


def in_a_pipe(args: Sequence[str], cwd: Path) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECALSTATE_")}
    done = subprocess.run([ECALSTATE, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env)
    return done.returncode, done.stdout, done.stderr


def both(args: Sequence[str], make: Any, tmp_path: Path) -> tuple[tuple[int, str, str], tuple[int, str, str]]:
    """The same command on two copies of the same start (``make(folder)``): on a terminal, and in a pipe."""
    results = []
    for name, run in (("tty", on_a_terminal), ("pipe", in_a_pipe)):
        folder = tmp_path / name
        folder.mkdir()
        make(folder)
        results.append(run(args, folder))
    return results[0], results[1]


def bar_of(shown: str, label: str) -> None:
    assert label in shown and "100%" in shown, shown
    assert "\r" in shown  # redrawn in place, not line after line


def chain(folder: Path) -> None:
    build_chain(str(folder / "state.db"))
    process(str(folder / "state.db"), "reco", done=[1, 2, 3], failed=[4])


def test_db_upgrade(tmp_path: Path) -> None:
    tty, pipe = both(["--db", "state.db", "db", "upgrade"], lambda f: load_v1(str(f / "state.db")), tmp_path)
    assert tty[0] == pipe[0] == 0 and tty[1] == pipe[1] and f"schema 1 -> {SCHEMA_VERSION}" in tty[1]
    bar_of(tty[2], "upgrading the schema")
    assert pipe[2] == ""


def test_db_prune(tmp_path: Path) -> None:
    args = ["--db", "state.db", "db", "prune", "--before", "2999-01-01"]
    tty, pipe = both(args, chain, tmp_path)
    assert tty[0] == pipe[0] == 0 and tty[1] == pipe[1] and "removed (older than 2999" in tty[1]
    bar_of(tty[2], "pruning")
    assert pipe[2] == ""


def test_export_full(tmp_path: Path) -> None:
    def exported_once(folder: Path) -> None:
        chain(folder)
        assert in_a_pipe(["--db", "state.db", "export", "--out", "state.lp"], folder)[0] == 0

    tty, pipe = both(["--db", "state.db", "export", "--full", "--out", "state.lp"], exported_once, tmp_path)
    assert tty[0] == pipe[0] == 0 and tty[1].replace("/tty/", "/") == pipe[1].replace("/pipe/", "/")
    assert "exported 30 points" in tty[1]
    bar_of(tty[2], "exporting")
    assert pipe[2] == ""


def test_a_first_run_sync(tmp_path: Path) -> None:
    def campaign(folder: Path) -> None:
        with Store.open(str(folder / "state.db"), create=True) as store:
            store.create_campaign("prompt")
        rows = ",".join(f'{{"run_number": {n}, "fill": {n // 10}}}' for n in range(1, 3001))
        (folder / "runs.json").write_text(f"[{rows}]")

    args = ["--db", "state.db", "run", "sync", "-c", "prompt", "--source", "file", "--path", "runs.json"]
    tty, pipe = both(args, campaign, tmp_path)
    assert tty[0] == pipe[0] == 0 and tty[1] == pipe[1] and "3000 new runs" in tty[1]
    bar_of(tty[2], "syncing the runs")
    assert pipe[2] == ""


@pytest.fixture
def legacy_db(influx: Any) -> Any:
    name = "ecal_progress"
    influx.query(f'DROP DATABASE "{name}"')
    influx.create_database(name)
    influx.write(dataset().lines, name, precision="s")
    yield influx.url, name
    influx.query(f'DROP DATABASE "{name}"')


def test_import_influx(tmp_path: Path, legacy_db: Any) -> None:
    url, name = legacy_db
    tty, pipe = both(["--db", "state.db", "import-influx", "--url", url, "--database", name], lambda f: None,
                     tmp_path)
    assert tty[0] == pipe[0] == 0 and tty[1] == pipe[1] and "rereco-2022" in tty[1]
    bar_of(tty[2], "importing")
    assert pipe[2] == ""
