"""The package's shape, held by tests (issue 21): rooms that import downwards only, no import circle, no private
name taken from another module, a Store made of the core alone, one clock, and the engines told apart in the
database layer only.

A room is a module, or a sub-package folder taken whole (``cli/``, ``compat/``...): what a reader of the code meets
first. The layers, from the bottom: what everything uses (errors, statuses, limits, the clock), the database
(engine, connections, transactions), the schema room (tables, their creation and upgrades, the audit's storage),
the core (``Store``: campaigns, tasks, runs, claims, jobs, transitions, queries, monitoring), its wings (the
exporter, the drop-in, notifications, run sources, the web view, handlers and their backends), and the command
line on top.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ecalstate"

LAYERS: list[set[str]] = [
    {"errors", "limits", "paths", "results", "statemachine", "secrets", "clock", "filters", "lineprotocol",
     "appendfile", "dialect"},
    {"db"},
    {"tables", "outputs", "auditlog", "pgjobs", "migrations", "schema", "guards", "roles"},
    {"base", "catalog", "claims", "jobs", "transitions", "queries", "monitoring", "deadlines", "inputs", "store"},
    {"compat/", "notify/", "sources/", "export", "retention", "report", "logs", "backends/", "handler", "web/",
     "attention", "latency", "shiftreport", "__init__"},
    {"cli/"},
]
#: the database layer: the only rooms that may ask which engine they run on
DATABASE_LAYER = LAYERS[1] | LAYERS[2] | {"dialect"}
#: files that read the time of day themselves: the clock, and the local backend's job runner (a script of the
#: batch system's, run beside the payload without ecalstate: it stamps a job's start as HTCondor's schedd does)
OWN_CLOCKS = {"clock.py", "_runner.py"}
#: the parts ``Store`` may be made of
CORE_PARTS = {"Catalog", "Claims", "Jobs", "Transitions", "Queries", "Monitoring", "Deadlines"}


def room(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] + "/" if len(rel.parts) > 1 else rel.stem


def imports() -> dict[tuple[str, str], set[str]]:
    """(room, room it imports from) -> names, for every ``from ... import`` of the package, at any depth."""
    out: dict[tuple[str, str], set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        here = list(path.relative_to(PACKAGE).parent.parts)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = here[:len(here) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            elif (node.module or "").split(".")[0] == PACKAGE.name:
                base = (node.module or "").split(".")[1:]
            else:
                continue
            targets = [base + [a.name] for a in node.names] if not node.module or not base else [base]
            for parts in targets:
                if not parts:
                    continue
                name = parts[0]
                target = f"{name}/" if (PACKAGE / name).is_dir() else name if (PACKAGE / f"{name}.py").exists() else None
                if target is not None and target != room(path):
                    out[(room(path), target)] |= {a.name for a in node.names}
    return out


def layer(name: str) -> int:
    for i, rooms in enumerate(LAYERS):
        if name in rooms:
            return i
    raise AssertionError(f"room {name} has no layer: add it to LAYERS in tests/test_architecture.py")


def test_every_room_has_a_layer_and_imports_downwards() -> None:
    rooms = {room(p) for p in PACKAGE.rglob("*.py")}
    for name in rooms:
        layer(name)
    upward = sorted(f"{a} -> {b}" for a, b in imports() if layer(a) < layer(b))
    assert upward == [], upward


def test_no_import_circle() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in imports():
        graph[a].add(b)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph[start])

    circles = sorted(a for a in list(graph) if reaches(a, a, {a}))
    assert circles == [], f"rooms in an import circle: {circles}"


def test_no_private_name_is_taken_from_another_room() -> None:
    taken = sorted(f"{a} takes {n} from {b}" for (a, b), names in imports().items() for n in names
                   if n.startswith("_") and not n.startswith("__"))
    assert taken == [], taken


def test_the_store_is_made_of_the_core_only() -> None:
    tree = ast.parse((PACKAGE / "store.py").read_text())
    (store,) = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "Store"]
    assert {ast.unparse(b) for b in store.bases} <= CORE_PARTS


def test_only_the_database_layer_tells_the_engines_apart() -> None:
    """Above it, code asks a transaction what it can do (``tx.skip_locked``, ``db.sql.job_function``)."""
    engine = re.compile(r"\bis_sqlite\b|dialect\.name\b|== ['\"](sqlite|postgresql)['\"]")
    found = [f"{p.relative_to(PACKAGE)}:{i}" for p in PACKAGE.rglob("*.py") if room(p) not in DATABASE_LAYER
             for i, line in enumerate(p.read_text().splitlines(), 1) if engine.search(line)]
    assert found == [], found


def test_every_time_of_day_comes_from_the_clock() -> None:
    """Durations may use a monotonic timer; what time it is comes from ``ecalstate.clock`` (a store's ``clock()``
    reads it, tests replace that)."""
    wall = {("datetime", "now"), ("datetime", "utcnow"), ("date", "today"), ("time", "time"), ("time", "time_ns"),
            ("time", "gmtime"), ("time", "localtime")}
    found = [f"{p.relative_to(PACKAGE)}:{node.lineno}" for p in PACKAGE.rglob("*.py") if p.name not in OWN_CLOCKS
             for node in ast.walk(ast.parse(p.read_text())) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)
             and (node.func.value.id, node.func.attr) in wall]
    assert found == [], found


def test_the_library_never_imports_the_command_line() -> None:
    assert sorted(a for a, b in imports() if b == "cli/" and a != "cli/") == []
