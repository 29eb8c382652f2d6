"""The lean store (schema 6 and on, issue 14) on a simulated year: its bytes before and after the real migration.

bench/simulate.py writes a year of prompt processing in the layout of schema 5 (the wide ``audit`` table, text
times everywhere, each done instance's outputs stored). This VACUUMs it and records the file size and every
table's and index's bytes (SQLite's ``dbstat``), upgrades a copy with ``ecalstate.migrations.upgrade_database``
(what ``ecalstate db upgrade`` runs: texts once in ``string``, integer times, a job's creation fields kept once,
outputs derived from the jobs, ``ix_job_status`` dropped), VACUUMs it and records again: the gain measured, not
guessed, against the target of 800 MiB for a year of 2,000 runs.

Beside the sizes, what the layout costs readers and writers, on the same year before and after: an exporter page
(``ROWS_SQL``: the wide table before, the view ``audit`` after), the newest audit time (every write transaction
reads it), and 10,000 audit rows written as each schema's writers write them (texts before; ids resolved once
and integer times after).

``python -m bench lean [--runs N]``: 200 runs by default; a full year is ``--runs 2000`` (about 10 minutes).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

from ecalstate import Store
from ecalstate.auditlog import vocab_id
from ecalstate.base import AUDIT_SQL
from ecalstate.tables import SCHEMA_VERSION
from ecalstate.export import ROWS_SQL, _with_texts
from ecalstate.migrations import upgrade_database

from .common import median_ms, row, text_ids
from .simulate import simulate

TASKS, JOBS = 20, 50
#: the year of the target, and its size there
TARGET_RUNS, TARGET_MIB = 2000, 800
#: tables and indexes listed after the migration, biggest first
BIGGEST = 8
#: how schema 5 wrote an audit row: every text in the row, the time as text
WIDE_AUDIT_SQL = AUDIT_SQL.replace("INSERT INTO audit_log", "INSERT INTO audit")
#: an audit row's texts, for the writers' comparison
TEXTS = {"task": "t00", "actor": "jenkins-ecal-prompt-t00", "identity": "", "reason": ""}


@dataclass
class Size:
    """A database's file size and the bytes of each of its tables and indexes."""

    file_bytes: int
    objects: dict[str, int] = field(default_factory=dict)


def vacuum(path: str) -> None:
    """VACUUM with a rollback journal: the file holds everything, at its smallest."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("VACUUM")


def sizes(path: str) -> Size:
    with closing(sqlite3.connect(path)) as conn:
        objects = {name: int(size) for name, size in conn.execute(
            "SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC")}
    return Size(os.path.getsize(path), objects)


def _insert(path: str, sql: str, rows: Sequence[tuple[Any, ...]]) -> Callable[[], None]:
    """``rows`` through ``sql`` in one transaction, rolled back (sizes unchanged)."""
    def call() -> None:
        with closing(sqlite3.connect(path, isolation_level=None)) as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(sql, rows)
            conn.execute("ROLLBACK")
    return call


def _read(path: str, sql: str, params: Sequence[Any], count: int = 1) -> None:
    with closing(sqlite3.connect(path)) as conn:
        for _ in range(count):
            conn.execute(sql, params).fetchall()


#: the exporter's page query of schema 5 (the wide table)
WIDE_ROWS_SQL = (
    "SELECT a.id, a.ts, a.entity, a.task, a.run_number, a.jid, a.generation, a.from_status, a.to_status,"
    " a.actor, a.reason, a.detail, a.instance_id, a.job_pk, c.name, r.fill, COALESCE(r.tag_rtypes, r.rtypes)"
    " FROM audit a LEFT JOIN campaign c ON c.id = a.campaign_id"
    " LEFT JOIN run r ON r.campaign_id = a.campaign_id AND r.run_number = a.run_number"
    " WHERE a.id > ? AND a.id <= ? ORDER BY a.id LIMIT ?"
)


def _lean_page(path: str, page: Sequence[Any]) -> Callable[[], None]:
    """What the exporter reads for a page of the lean schema: audit_log's rows, their text ids resolved (cache cold)."""
    def call() -> None:
        with Store.open(path) as store, store.db.tx(write=False) as tx:
            _with_texts(tx, tx.all(ROWS_SQL, page), {})
    return call


def read_costs(wide: str, lean: str, count: int = 10_000) -> list[dict[str, Any]]:
    """The same reads and writes on the year in schema 5 (``wide``) and in the current schema (``lean``, migrated)."""
    with closing(sqlite3.connect(lean)) as conn:
        top = int(conn.execute("SELECT MAX(id) FROM audit_log").fetchone()[0])
    page = (top // 2, top // 2 + 5000, 5000)
    ids = text_ids(lean, TEXTS.values())
    micros = 1767225599000001  # 2025-12-31T23:59:59.000001Z
    wide_rows = [("2025-12-31T23:59:59.000001Z", 1, "job", 1, 1, TEXTS["task"], 380001, j, 1, "running", "done",
                  TEXTS["actor"], TEXTS["identity"], TEXTS["reason"], None, None) for j in range(count)]
    lean_rows = [(micros, 1, vocab_id("job"), 1, 1, ids[TEXTS["task"]], 380001, j, 1, vocab_id("running"),
                  vocab_id("done"), ids[TEXTS["actor"]], ids[TEXTS["identity"]], ids[TEXTS["reason"]], None, None)
                 for j in range(count)]
    calls: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = [
        ("exporter page of 5,000 audit rows (schema 5: its ROWS_SQL; 6: ROWS_SQL on audit_log and the texts)",
         lambda: _read(wide, WIDE_ROWS_SQL, page), _lean_page(lean, page)),
        ("newest audit time, 1,000 reads (every write transaction makes one)",
         lambda: _read(wide, "SELECT ts FROM audit ORDER BY id DESC LIMIT 1", (), 1000),
         lambda: _read(lean, "SELECT ts FROM audit_log ORDER BY id DESC LIMIT 1", (), 1000)),
        (f"{count:,} audit rows inserted by the writers (one transaction)",
         _insert(wide, WIDE_AUDIT_SQL, wide_rows), _insert(lean, AUDIT_SQL, lean_rows)),
    ]
    out = []
    for name, before, after in calls:
        anchor = row(f"{name}: schema 5", median_ms(before, 5), "ms")
        out += [anchor, row(f"{name}: schema {SCHEMA_VERSION}", median_ms(after, 5), "ms", anchor)]
    return out


def biggest(label: str, before: Size, after: Size) -> list[dict[str, Any]]:
    """The biggest tables and indexes after the migration, each beside what it was (``audit`` for audit_log); then
    those the migration dropped."""
    out = []
    for name, size in list(after.objects.items())[:BIGGEST]:
        old = "audit" if name == "audit_log" else name
        anchor = None
        if old in before.objects:
            anchor = row(f"{label}, schema 5: {old}", before.objects[old] / 2**20, "MiB")
            out.append(anchor)
        out.append(row(f"{label}, schema {SCHEMA_VERSION}: {name}", size / 2**20, "MiB", anchor))
    dropped = [name for name in before.objects if name != "audit" and name not in after.objects]
    return out + [row(f"{label}, schema 5: {name} (dropped)", before.objects[name] / 2**20, "MiB") for name in dropped]


def run(runs: int = 200) -> list[dict[str, Any]]:
    """The year's size in schema 5 and 6 (``runs`` x 20 tasks x 50 jobs), the migration's time, the biggest
    tables and indexes, and what the layout costs readers and writers."""
    with tempfile.TemporaryDirectory(prefix="ecalstate-lean-", dir=os.environ.get("ECALSTATE_BENCH_DIR")) as tmp:
        wide, lean = os.path.join(tmp, "year-v5.db"), os.path.join(tmp, "year-v6.db")
        simulate(wide, runs, TASKS, JOBS, upgrade=False)
        vacuum(wide)
        before = sizes(wide)
        with closing(sqlite3.connect(wide)) as conn:
            counts = "SELECT (SELECT COUNT(*) FROM audit), (SELECT COUNT(*) FROM job)"
            audit_rows, jobs = conn.execute(counts).fetchone()
        shutil.copyfile(wide, lean)
        t0 = time.perf_counter()
        upgraded = upgrade_database(lean)
        seconds = time.perf_counter() - t0
        if (upgraded.from_version, upgraded.to_version) != (5, SCHEMA_VERSION):
            raise RuntimeError(f"the simulated year went from schema {upgraded.from_version} to {upgraded.to_version}")
        vacuum(lean)
        after = sizes(lean)
        costs = read_costs(wide, lean)
    label = f"simulated year ({runs:,} runs x {TASKS} tasks x {JOBS} jobs)"
    base = row(f"{label}, schema 5 ({jobs:,} jobs, {audit_rows:,} audit rows), VACUUMed",
               before.file_bytes / 2**20, "MiB")
    target = row(f"{label}: target ({TARGET_MIB} MiB for {TARGET_RUNS:,} runs, in proportion)",
                 TARGET_MIB * runs / TARGET_RUNS, "MiB")
    return [base,
            row(f"{label}, schema {SCHEMA_VERSION} (migrated), VACUUMed", after.file_bytes / 2**20, "MiB", base),
            target,
            row(f"{label}, schema {SCHEMA_VERSION} against the target", after.file_bytes / 2**20, "MiB", target),
            row(f"{label}: migration 5 -> {SCHEMA_VERSION} (upgrade_database, one transaction)", seconds, "s"),
            *biggest(f"year of {runs:,} runs", before, after), *costs]


def main() -> None:
    parser = argparse.ArgumentParser(description="a simulated year's bytes before and after the schema-6 migration")
    parser.add_argument("--runs", type=int, default=200, help="runs of the simulated year (a full year: 2000)")
    for r in run(parser.parse_args().runs):
        ratio = "" if r["ratio"] is None else f"  x{r['ratio']:g}"
        print(f"{r['value']:10,.1f} {r['unit']:<4} {r['name']}{ratio}")


if __name__ == "__main__":
    main()
