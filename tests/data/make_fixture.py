"""Regenerate the frozen fixtures of an older schema in this folder. Run once per release; the output is committed.

Two releases are frozen: the first one (commit c0ae7c8, schema version 1, before ``campaign.settings``) and the
last one of schema version 5 (commit d673d2e, before the lean audit of issue 14). This script extracts the release
with ``git archive``, writes its DDL for SQLite and PostgreSQL (``schema_vN.sqlite.sql``,
``schema_vN.postgresql.sql``), runs a small but complete workflow with that release's own store and dumps every
row as portable INSERTs (``data_vN.sql``). For version 5 it also writes what that release's readers made of the
rows (``expected_v5.json``: the history and the exporter's line protocol), which an upgraded database must give
back unchanged. tests/test_migrations.py loads these files, upgrades, and checks that nothing is lost.

    .venv/bin/python tests/data/make_fixture.py 1
    .venv/bin/python tests/data/make_fixture.py 5
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
RELEASES = {"1": "c0ae7c8", "5": "d673d2e"}

SCENARIO_V1 = '''
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

# version 5: what schema 6 converts (the audit's texts and times), with every kind of audit row the store writes
SCENARIO_V5 = SCENARIO_V1.replace('s.claim("rereco-2023", "reco", limit=4)', '''s.claim("rereco-2023", "reco", limit=4)
from ecalstate.results import BatchRecord
from ecalstate.retention import prune
s.add_task("prompt", "phisym", max_retries=1)
s.update_rtype("prompt", "all", add=["phisym"])
s.inject_runs("prompt", [RunSpec(356020, 8003), RunSpec(356021, 8003)])
c = s.claim("prompt", "phisym", limit=1)[0]
s.create_jobs("prompt", "phisym", c.run_number, [0, 1], fields=[{"output": "/eos/a.root"}, {}], generation=c.generation)
s.record_batch_ids("prompt", "phisym", c.run_number, c.generation,
                   [BatchRecord(0, 1, "7.0", {"logs": "/logs/7.0"}), BatchRecord(1, 1, "7.1")])
s.update_jobs("prompt", "phisym", [JobUpdate(c.run_number, 0, "running", fields={"events": 1200, "lumi": 1.5}),
                                   JobUpdate(c.run_number, 1, "failed", reason="x" * 3000)])
s.update_jobs("prompt", "phisym", [JobUpdate(c.run_number, 0, "done", fields={"output": "/eos/b.root"})])
s.set_status("prompt", "phisym", [356021], "skipped", reason="cosmics: nothing to calibrate, d\u00e9j\u00e0")
s.close_fill("prompt", 8001, "operator: beam dumped")
Store.open(sys.argv[1], actor="op\u00e9rateur \u2603").reprocess("rereco-2023", "reco", runs=[360000],
                                                               reason="shifter: \\n not a newline")
with s.db.tx() as tx:
    tx.run("UPDATE export_cursor SET audit_id = 20")
print(prune(s.db, "2999-01-01").audit, "audit rows pruned", file=sys.stderr)
''')

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
    open(f"{out}/schema_v{sys.argv[3]}.{name}.sql", "w").write("\\n\\n".join(ddl) + "\\n")
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
open(f"{out}/data_v{sys.argv[3]}.sql", "w", encoding="utf-8").write("\\n".join(lines) + "\\n")
'''

# what the release's readers give: history (every column) and the exporter's lines, as JSON
READ = '''
import dataclasses, json, sys
from ecalstate import Store
from ecalstate.export import read_batch
s = Store.open(sys.argv[1])
history = [dataclasses.asdict(h) for h in s.history(limit=None)]
lines = read_batch(s.db, 0, 10**9, 10**6)[0]
json.dump({"history": history, "lines": [list(line) for line in lines]}, open(sys.argv[2], "w", encoding="utf-8"),
          indent=1, sort_keys=True, ensure_ascii=True)
'''


def main() -> None:
    version = sys.argv[1] if len(sys.argv) > 1 else "1"
    release = RELEASES[version]
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", release, "ecalstate"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        env = {"PYTHONPATH": tmp, "PATH": "/usr/bin:/bin", "ECALSTATE_ACTOR": "", "BUILD_TAG": ""}
        dbfile = str(Path(tmp) / f"v{version}.db")
        scenario = SCENARIO_V1 if version == "1" else SCENARIO_V5
        subprocess.run([sys.executable, "-c", scenario, dbfile], check=True, cwd=tmp, env=env)
        subprocess.run([sys.executable, "-c", DUMP, dbfile, str(HERE), version], check=True, cwd=tmp, env=env)
        if version == "5":
            subprocess.run([sys.executable, "-c", READ, dbfile, str(HERE / "expected_v5.json")], check=True, cwd=tmp,
                           env=env)
    print(f"wrote {HERE}/schema_v{version}.*.sql and data_v{version}.sql from release {release}")


if __name__ == "__main__":
    main()
