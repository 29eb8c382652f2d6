"""Regenerate the frozen first-release (schema v1) fixtures in this folder. Run once; the output is committed.

The first released ecalstate is commit c0ae7c8 (schema version 1, before ``campaign.settings``).
This script extracts that release with ``git archive``, writes its DDL for SQLite and PostgreSQL
(``schema_v1.sqlite.sql``, ``schema_v1.postgresql.sql``), runs a small but complete workflow with
that release's own store (injections, grouped claims, jobs with fields and a retry, a downstream
reprocess, heartbeats, request ids) and dumps every row as portable INSERTs (``data_v1.sql``).
tests/test_migrations.py loads these files, upgrades, and checks that nothing is lost.

    .venv/bin/python tests/data/make_v1_fixture.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
RELEASE = "c0ae7c8"

SCENARIO = '''
import sys
from ecalstate import JobUpdate, RunSpec, Store
s = Store.open(sys.argv[1], actor="jenkins-prompt-42", create=True)
s.create_campaign("prompt", description="2024 prompt")
s.create_campaign("rereco-2023", kind="reprocessing")
s.add_task("prompt", "reco", max_retries=2)
s.add_task("prompt", "calib", depends_on=["reco"], max_retries=1)
s.add_task("prompt", "plots", depends_on=["calib"], max_retries=0)
s.update_rtype("prompt", "all", add=["reco"])
s.create_rtype("prompt", "physics", filter="class=Collisions,nevents>=1000", tasks=["calib", "plots"])
s.inject_runs("prompt", [RunSpec(356001, 8001, {"class": "Collisions", "nevents": 5000, "era": "2024C"}),
                         RunSpec(356002, 8001, {"class": "Collisions", "nevents": 20}),
                         RunSpec(356003, 8002, {"class": "Cosmics", "nevents": 9000}),
                         RunSpec(356004, 8002, {"class": "Collisions", "nevents": 1200, "note": "quote ' and \\u00e9"})],
              request_id="inject-1")
s.add_task("rereco-2023", "reco")
s.update_rtype("rereco-2023", "all", add=["reco"])
s.inject_runs("rereco-2023", [RunSpec(n, 7000 + n % 3) for n in range(360000, 360010)])
claims = s.claim("prompt", "reco", group_by="fill", request_id="claim-1")
for c in claims:
    s.create_jobs("prompt", "reco", c.run_number, [0, 1, 2],
                  fields=[{"output": f"/eos/r{c.run_number}_{j}.root"} for j in range(3)])
lead = claims[0].run_number
s.update_jobs("prompt", "reco", [JobUpdate(lead, 0, "running", batch_id="101.0"), JobUpdate(lead, 1, "done"),
                                 JobUpdate(lead, 2, "failed", reason="held: memory")])
s.update_jobs("prompt", "reco", [JobUpdate(lead, 2, "idle"), JobUpdate(lead, 0, "done", fields={"plots": "https://x/p.png"})])
s.set_job_status("prompt", "reco", lead, 2, "done")
s.claim("prompt", "calib")
s.reprocess("prompt", "reco", runs=[lead], reason="bad alignment", downstream=True)
s.claim("prompt", "reco", group_by="fill")
s.heartbeat("prompt", "reco", "submit")
s.heartbeat("prompt", "reco", "check", ok=False, message="schedd unreachable")
with s.db.tx() as tx:
    tx.run("INSERT INTO export_cursor (target, audit_id, updated_at) VALUES ('influx-main', 12, ?)",
           ("2024-05-01T00:00:00.000000Z",))
s.claim("rereco-2023", "reco", limit=4)
'''

DUMP = '''
import sqlite3, sys
from sqlmodel import SQLModel
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.schema import CreateIndex, CreateTable
from ecalstate import db

def literal(value, column):
    if value is None:
        return "NULL"
    if column.type.python_type is bool:
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"

out = sys.argv[2]
for name, dialect in (("sqlite", sqlite.dialect()), ("postgresql", postgresql.dialect())):
    ddl = []
    for table in SQLModel.metadata.sorted_tables:
        ddl.append(str(CreateTable(table).compile(dialect=dialect)).strip() + ";")
        ddl += [str(CreateIndex(ix).compile(dialect=dialect)).strip() + ";" for ix in sorted(table.indexes, key=lambda i: i.name)]
    open(f"{out}/schema_v1.{name}.sql", "w").write("\\n\\n".join(ddl) + "\\n")
conn = sqlite3.connect(sys.argv[1])
lines = []
for table in SQLModel.metadata.sorted_tables:
    cols = list(table.columns)
    order = ", ".join(c.name for c in table.primary_key.columns)
    if table.name == "task_instance":  # leaders (leader_id NULL) before the runs merged into them
        order = "leader_id IS NOT NULL, " + order
    for row in conn.execute(f"SELECT {', '.join(c.name for c in cols)} FROM {table.name} ORDER BY {order}"):
        values = ", ".join(literal(v, c) for v, c in zip(row, cols))
        lines.append(f"INSERT INTO {table.name} ({', '.join(c.name for c in cols)}) VALUES ({values});")
open(f"{out}/data_v1.sql", "w", encoding="utf-8").write("\\n".join(lines) + "\\n")
'''


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", RELEASE, "ecalstate"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        env = {"PYTHONPATH": tmp, "PATH": "/usr/bin:/bin"}
        dbfile = str(Path(tmp) / "v1.db")
        subprocess.run([sys.executable, "-c", SCENARIO, dbfile], check=True, cwd=tmp, env=env)
        subprocess.run([sys.executable, "-c", DUMP, dbfile, str(HERE)], check=True, cwd=tmp, env=env)
    print(f"wrote {HERE}/schema_v1.*.sql and data_v1.sql from release {RELEASE}")


if __name__ == "__main__":
    main()
