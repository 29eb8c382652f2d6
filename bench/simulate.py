"""A year of prompt processing, written straight into a SQLite database with the store's own rows.

Driving 2 million jobs through the API would take the whole benchmark budget, so this writes
what the API would have written (same tables, same columns, same text formats, one audit row per
transition) with ``INSERT ... SELECT`` over generated series: ``runs`` runs spread over a year,
``tasks`` tasks each, ``jobs`` jobs per task instance, every job idle -> running -> done with an
output path field, every instance new -> processing -> done with its outputs gathered, and one
instance in ``reprocessed_every`` reprocessed once (a second generation of jobs; the first one
stays, finished). tests of the real API's rows are in tests/; this is for sizes and query times.

The rows are written in the layout of schema 5 (the wide ``audit`` table, tests/data/schema_v5.sqlite.sql) and
the file is then upgraded by the real migration (``ecalstate.migrations``): a year's database as a store that
has run for a year on schema 5 would hold it, and the migration's own time on it.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from ecalstate.migrations import upgrade_database

YEAR_DAYS = 365.0
BASE = "2460676.5"  # julian day of 2025-01-01T00:00:00 UTC; ``_ts(day)`` adds days to it
SCHEMA_V5 = Path(__file__).resolve().parent.parent / "tests" / "data" / "schema_v5.sqlite.sql"
OUTPUT = "/eos/cms/store/group/dpg_ecal/alca_ecalcalib/automation/prompt/{task}/{run}/out_{jid}.root"


def _ts(day: str) -> str:
    """SQL for the store's timestamp text of ``BASE + day`` (microseconds, Z)."""
    return f"strftime('%Y-%m-%dT%H:%M:%f', {BASE} + ({day})) || '000Z'"


def _output(jid: str) -> str:
    """SQL for the output path of job ``jid`` (an SQL expression) of task ``t`` on run ``r``."""
    return "'" + OUTPUT.format(task="' || t.name || '", run="' || r.run_number || '", jid=f"' || ({jid}) || '") + "'"


def _seq(name: str, count: str) -> str:
    return f"{name}(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM {name} WHERE i < {count})"


def simulate(path: str, runs: int, tasks: int, jobs: int, reprocessed_every: int = 20, upgrade: bool = True) -> float:
    """Create ``path`` (a new SQLite file) holding the simulated campaign ``prompt`` in schema 5, then upgrade it
    to the current schema (unless not ``upgrade``); returns the seconds the upgrade took (0 without it)."""
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA_V5.read_text(encoding="utf-8"))
    conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '5')")
    conn.commit()
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    params = {"runs": runs, "tasks": tasks, "jobs": jobs, "every": reprocessed_every, "days": YEAR_DAYS}
    with conn:
        conn.execute("INSERT INTO campaign (id, name, kind, description, created_at) VALUES "
                     f"(1, 'prompt', 'prompt', 'simulated year', {_ts('0')})")
        conn.execute(f"WITH RECURSIVE {_seq('n', ':tasks')} INSERT INTO task (id, campaign_id, name, max_retries,"
                     f" created_at) SELECT i, 1, printf('t%02d', i - 1), 3, {_ts('0')} FROM n", params)
        conn.execute("INSERT INTO rtype (id, campaign_id, name, filter) VALUES (1, 1, 'all', '')")
        conn.execute("INSERT INTO rtype_task (rtype_id, task_id) SELECT 1, id FROM task")
        conn.execute("INSERT INTO task_dep (task_id, depends_on_id) SELECT id, id - 1 FROM task WHERE id > 1")
        conn.execute(
            f"WITH RECURSIVE {_seq('n', ':runs')} INSERT INTO run (id, campaign_id, run_number, fill, meta, rtypes,"
            " injected_at) SELECT i, 1, 380000 + i, 9000 + i / 8, '{\"class\": \"Collisions\", \"era\": \"2025C\","
            " \"lumi\": 152.25, \"nevents\": ' || (100000 + i) || '}', 'all',"
            f" {_ts('(i - 1) * :days / :runs')} FROM n", params)
        # outputs: the jobs' output fields gathered in job order, as schema 5 stored them in a done instance
        conn.execute(
            f"WITH RECURSIVE {_seq('j', ':jobs')}"
            " INSERT INTO task_instance (id, campaign_id, task_id, run_id, status, version, generation, leader_id,"
            " outputs, created_at, updated_at, progress_at)"
            " SELECT (r.id - 1) * :tasks + t.id, 1, t.id, r.id, 'done',"
            " CASE WHEN ((r.id - 1) * :tasks + t.id) % :every = 0 THEN 6 ELSE 3 END,"
            " CASE WHEN ((r.id - 1) * :tasks + t.id) % :every = 0 THEN 2 ELSE 1 END, NULL,"
            f" '{{\"output\": \"' || (SELECT group_concat({_output('k')}, ',')"
            " FROM (SELECT i - 1 AS k FROM j ORDER BY i)) || '\"}',"
            " r.injected_at, r.injected_at, r.injected_at FROM run r, task t ORDER BY r.id, t.id", params)
        # jobs: the current generation of every instance, and the finished first one of reprocessed instances
        conn.execute(
            f"WITH RECURSIVE {_seq('j', ':jobs')}, gen(g) AS (SELECT 1 UNION ALL SELECT 2)"
            " INSERT INTO job (instance_id, generation, jid, status, version, attempts, batch_id, fields, created_at,"
            " updated_at, started_at, finished_at)"
            " SELECT ti.id, gen.g, j.i - 1, 'done', 3, 1, (ti.id * 10 + gen.g) || '.' || (j.i - 1),"
            f" '{{\"output\": \"' || {_output('j.i - 1')} || '\"}}',"
            " r.injected_at, r.injected_at, r.injected_at, r.injected_at"
            " FROM task_instance ti JOIN run r ON r.id = ti.run_id JOIN task t ON t.id = ti.task_id, j, gen"
            " WHERE gen.g <= ti.generation ORDER BY ti.id, gen.g, j.i", params)
        audit = ("INSERT INTO audit (ts, campaign_id, entity, instance_id, job_pk, task, run_number, jid, generation,"
                 " from_status, to_status, actor, reason, request_id, detail) ")
        # one row per transition, ids in time order as the store hands them out: run by run, a task
        # instance's rows, then its jobs' rows
        conn.execute(
            audit + "SELECT ts, 1, entity, iid, job_pk, task, run_number, jid, gen, f, t, actor, why, NULL, detail"
            " FROM (SELECT r.injected_at AS ts, 'task' AS entity, ti.id AS iid, NULL AS job_pk, t.name AS task,"
            "  r.run_number, NULL AS jid, s.gen, s.f, s.t, 'jenkins-ecal-prompt-' || t.name AS actor, s.why,"
            "  NULL AS detail, r.id AS o1, ti.id AS o2, 0 AS o3, s.k AS o4"
            "  FROM task_instance ti JOIN run r ON r.id = ti.run_id JOIN task t ON t.id = ti.task_id,"
            "  (SELECT 1 AS k, 0 AS gen, NULL AS f, 'new' AS t, 'run injected' AS why UNION ALL"
            "   SELECT 2, 1, 'new', 'processing', 'claimed by submit' UNION ALL"
            "   SELECT 3, 1, 'processing', 'done', 'all jobs done' UNION ALL"
            "   SELECT 4, 1, 'done', 'reprocess', 'recalibration' UNION ALL"
            "   SELECT 5, 2, 'reprocess', 'processing', 'claimed by submit' UNION ALL"
            "   SELECT 6, 2, 'processing', 'done', 'all jobs done') s"
            "  WHERE s.k <= 3 OR ti.generation = 2"
            " UNION ALL"
            " SELECT jb.created_at, 'job', jb.instance_id, jb.id, t.name, r.run_number, jb.jid, jb.generation, s.f,"
            "  s.t, 'jenkins-ecal-prompt-' || t.name, s.why, CASE WHEN s.k = 1 THEN jb.fields END,"
            "  r.id, ti.id, jb.id, s.k"
            "  FROM job jb JOIN task_instance ti ON ti.id = jb.instance_id JOIN run r ON r.id = ti.run_id"
            "  JOIN task t ON t.id = ti.task_id,"
            "  (SELECT 1 AS k, NULL AS f, 'idle' AS t, 'created by submit' AS why UNION ALL"
            "   SELECT 2, 'idle', 'running', '' UNION ALL SELECT 3, 'running', 'done', '') s)"
            " ORDER BY o1, o2, o3, o4", params)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    if not upgrade:
        return 0.0
    t0 = time.perf_counter()
    upgrade_database(path)
    return time.perf_counter() - t0
