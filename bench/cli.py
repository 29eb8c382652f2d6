"""Command-line figures: start-up against its own imports, and ``status`` on 10,000 runs x 20 tasks.

Run ``python -m bench.cli``. Each figure is the median of several runs of the
real ``ecalstate`` script in a subprocess; wall time and CPU time (user + system
of the child) are both given, because the CPU time is the one that other work
on a shared machine does not inflate.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import row

PYTHON = sys.executable
ECALSTATE = str(Path(PYTHON).parent / "ecalstate")
HEAVY = ("influxdb_client", "htcondor", "htcondor2")
RUNS, TASKS = 10_000, 20


def timed(cmd: Sequence[str], repeat: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``repeat`` runs of ``cmd`` (which must succeed)."""
    walls, cpus = [], []
    for _ in range(repeat):
        before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
        walls.append(wall)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def heavy_imports() -> list[str]:
    """Heavy client modules that ``python -X importtime`` sees while the help of every command is rendered."""
    proc = subprocess.run([PYTHON, "-X", "importtime", "-m", "ecalstate.cli.docs"], capture_output=True, text=True,
                          check=True)
    names = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    return sorted({n for n in names if n.split(".")[0] in HEAVY})


def build_status_db(path: str) -> float:
    """10,000 runs x 20 tasks in chains of four, a quarter of the tasks processed (done, failed, processing)."""
    from ecalstate import RunSpec, Store

    start = time.perf_counter()
    with Store.open(path, actor="bench", create=True) as store:
        store.create_campaign("bench")
        tasks = [f"task{i:02d}" for i in range(TASKS)]
        for i, task in enumerate(tasks):
            store.add_task("bench", task, depends_on=[tasks[i - 1]] if i % 4 else [])
        store.update_rtype("bench", "all", add=tasks)
        numbers = list(range(300_000, 300_000 + RUNS))
        store.inject_runs("bench", [RunSpec(n, 8000 + i // 20, {"class": "Collisions"}) for i, n in enumerate(numbers)])
        for task in tasks[::4]:
            store.claim("bench", task)
            store.set_status("bench", task, numbers[:8000], "done", reason="bench")
            store.set_status("bench", task, numbers[8000:8500], "failed", reason="bench")
    return time.perf_counter() - start


def run(repeat: int = 10) -> list[dict[str, Any]]:
    """Every figure of the command line, as rows {name, value, unit, anchor, ratio}."""
    imports_wall, imports_cpu = timed([PYTHON, "-c", "import click, sqlmodel"], repeat)
    anchor = row("python -c 'import click, sqlmodel' (wall)", imports_wall, "s")
    anchor_cpu = row("python -c 'import click, sqlmodel' (cpu)", imports_cpu, "s")
    one_second = {"name": "target 1 s", "value": 1.0}
    help_wall, help_cpu = timed([ECALSTATE, "--help"], repeat)
    rows = [anchor, anchor_cpu,
            row("ecalstate --help (wall)", help_wall, "s", anchor, note="target ratio <= 1.3"),
            row("ecalstate --help (cpu)", help_cpu, "s", anchor_cpu, note="target ratio <= 1.3")]
    with tempfile.TemporaryDirectory(prefix="ecalstate-bench-cli-") as tmp:
        small = os.path.join(tmp, "small.db")
        subprocess.run([ECALSTATE, "--db", small, "init"], stdout=subprocess.DEVNULL, check=True)
        list_wall, list_cpu = timed([ECALSTATE, "--db", small, "campaign", "list"], repeat)
        rows += [row("ecalstate campaign list, empty db (wall)", list_wall, "s", anchor,
                     note="a command that loads the schema"),
                 row("ecalstate campaign list, empty db (cpu)", list_cpu, "s", anchor_cpu),
                 row("heavy client modules on the CLI path", len(heavy_imports()), "modules",
                     note="python -X importtime while the help of every command renders; target 0")]
        big = os.path.join(tmp, "big.db")
        rows.append(row(f"build {RUNS} runs x {TASKS} tasks (bulk API)", build_status_db(big), "s"))
        status = [ECALSTATE, "--db", big, "status", "-c", "bench"]
        status_wall, status_cpu = timed(status, max(3, repeat // 2))
        json_wall, _ = timed([ECALSTATE, "--db", big, "--json", "status", "-c", "bench"], max(3, repeat // 2))
        report_wall, _ = timed([ECALSTATE, "--db", big, "report", "html", "-c", "bench", "--out",
                                os.path.join(tmp, "bench.html")], 3)
        rows += [row(f"ecalstate status, {RUNS} runs x {TASKS} tasks (wall)", status_wall, "s", one_second),
                 row(f"ecalstate status, {RUNS} runs x {TASKS} tasks (cpu)", status_cpu, "s", one_second),
                 row(f"ecalstate --json status, {RUNS} runs x {TASKS} tasks (wall)", json_wall, "s", one_second),
                 row(f"ecalstate report html, {RUNS} runs x {TASKS} tasks (wall)", report_wall, "s",
                     note=f"{os.path.getsize(os.path.join(tmp, 'bench.html')) / 1e6:.1f} MB page")]
    return rows


def main() -> None:
    for r in run():
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f} x {r['anchor']}"
        print(f"{r['name']:<58} {r['value']:>9.3f} {r['unit']:<8} {ratio}  {r.get('note', '')}".rstrip())


if __name__ == "__main__":
    main()
