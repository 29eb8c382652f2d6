"""Retention: prune what is old and safe to drop, and measure what the database holds.

``prune`` removes, older than a cut-off date:

* audit rows the exporter has sent to every registered target (id <= the smallest
  ``export_cursor``; rows above it are never pruned, whatever their age). A job's rows
  are kept while that job can still change (current generation of a ``processing``
  instance, not ``done``): the exporter rebuilds a job's attempts from its earlier rows,
  and must still find them when the job moves again;
* jobs of finished older generations: superseded by a newer generation of their task
  instance, every job of the generation ``done`` or ``failed``, none updated since;
* request-id records (replays of calls that old are not retries any more).

Work goes in chunks, one short write transaction each, so Jenkins stages are never
locked out for long. With ``archive`` the rows of each chunk are appended to a JSON-lines
file and flushed to disk before the chunk's delete commits, all or nothing with it
(:mod:`ecalstate.appendfile`): a chunk the disk cannot take, or whose commit fails, is cut
from the file again and not deleted; a prune killed between its archive write and its commit
leaves a note that the next prune settles (the chunk's first row still in the database: its
lines are cut off, to be archived again with the chunk). So the archive holds each removed
row once, never a torn line nor a row that is still in the database. ``dry_run`` counts the
same sets with the same predicates and writes nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

from sqlmodel import SQLModel

from . import clock
from .appendfile import Batch, append_whole, batch, settle
from .auditlog import KEEP_CREATION_FIELDS
from .clock import to_micros
from .db import Database, Tx
from .errors import Invalid, StorageError
from .limits import MAX_DURATION, chunks

CHUNK = 20_000

_AGE = re.compile(r"^(\d+)([dw])$")

# a job can still move: current generation of a processing instance, and not done
_LIVE_JOB = (
    "EXISTS (SELECT 1 FROM job j JOIN task_instance ti ON ti.id = j.instance_id WHERE j.id = a.job_pk"
    " AND j.generation = ti.generation AND ti.status = 'processing' AND j.status <> 'done')"
)
AUDIT_WHERE = f"a.ts < ? AND a.id <= ? AND NOT (a.entity = 'job' AND {_LIVE_JOB})"
# generations superseded by a newer one, every job done or failed, none updated since the cut-off
FINISHED_GENERATIONS = """
SELECT k.instance_id, k.generation, COUNT(*) FROM job k JOIN task_instance ti ON ti.id = k.instance_id
WHERE k.generation < ti.generation
GROUP BY k.instance_id, k.generation
HAVING MAX(k.updated_at) < ? AND SUM(CASE WHEN k.status IN ('done', 'failed') THEN 0 ELSE 1 END) = 0
ORDER BY k.instance_id, k.generation
"""


def parse_before(text: str, now: Optional[datetime] = None) -> str:
    """A cut-off in the store's timestamp format from ``YYYY-MM-DD``, an ISO date-time, or an age (``90d``, ``8w``)."""
    value = text.strip()
    age = _AGE.match(value)
    if age:
        days = int(age.group(1)) * (7 if age.group(2) == "w" else 1)
        if days * 86400 > MAX_DURATION:
            raise Invalid(f"invalid age {text!r}: at most 100 years ({MAX_DURATION // 86400} days)")
        moment = (now or clock.now()) - timedelta(days=days)
    else:
        try:
            moment = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            moment = moment.astimezone(timezone.utc)
        except (ValueError, OverflowError):  # OverflowError: year 1 moved before year 1 by its offset
            raise Invalid(f"invalid date {text!r}: expected YYYY-MM-DD, an ISO date-time or an age like 90d") from None
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class PruneResult:
    """What was (or, in a dry run, would be) removed, and what was kept back because it is not exported yet."""

    before: str
    dry_run: bool
    audit: int
    jobs: int
    requests: int
    unexported_kept: int
    export_floor: Optional[int]
    archive: Optional[str] = None


def export_floor(tx: Tx) -> Optional[int]:
    """The smallest export cursor of any registered target (None: no target, nothing holds rows back)."""
    value = tx.scalar("SELECT MIN(audit_id) FROM export_cursor")
    return None if value is None else int(value)


def prune(
    db: Database, before: str, dry_run: bool = False, archive: Optional[str] = None, chunk: int = CHUNK,
    progress: Optional[Callable[[int, int], None]] = None,
) -> PruneResult:
    """Remove old audit rows, finished older job generations and request records (see the module doc).

    ``progress(done, total)``: rows removed of those counted first (the dry run's counts), after each chunk."""
    cutoff = parse_before(before)
    if chunk < 1:
        raise Invalid(f"invalid chunk size {chunk}")
    with db.tx(write=False) as tx:
        floor = export_floor(tx)
        limit = int(tx.scalar("SELECT COALESCE(MAX(id), 0) FROM audit")) if floor is None else floor
        kept = int(tx.scalar("SELECT COUNT(*) FROM audit WHERE ts < ? AND id > ?", (cutoff, limit)))
        generations = [(r[0], r[1], int(r[2])) for r in tx.all(FINISHED_GENERATIONS, (to_micros(cutoff),))]
        if dry_run or progress is not None:  # (a progress bar needs the totals too)
            audit = int(tx.scalar(f"SELECT COUNT(*) FROM audit a WHERE {AUDIT_WHERE}", (cutoff, limit)))
            requests = int(tx.scalar("SELECT COUNT(*) FROM request WHERE created_at < ?", (cutoff,)))
            jobs = sum(g[2] for g in generations)
    if not dry_run:
        removed, total = [0], (audit + jobs + requests) if progress is not None else 0

        def tick(rows: int) -> None:
            removed[0] += rows
            if progress is not None:
                progress(min(removed[0], total), total)

        out = _archive_file(db, archive)
        audit = _delete_where(db, "audit a", "id", AUDIT_WHERE, (cutoff, limit), chunk, out, "audit_log", tick)
        jobs = _delete_generations(db, generations, cutoff, chunk, out, tick)
        requests = _delete_where(db, "request r", "request_id", "r.created_at < ?", (cutoff,), chunk, out,
                                 on_chunk=tick)
    return PruneResult(cutoff, dry_run, audit, jobs, requests, kept, floor, archive)


#: the key of each table rows are archived from (by the name they are archived under)
_KEYS = {"audit": "id", "job": "id", "request": "request_id"}


@dataclass(frozen=True)
class _Archive:
    """The JSON-lines file removed rows go to: each chunk is appended (and fsynced) with its delete's commit, or
    not at all."""

    path: str

    def chunk(self) -> AbstractContextManager[Batch]:
        """The appends of one chunk: the block's last statement is the commit of its delete."""
        return _storage_errors(self.path, batch(self.path))

    def write(self, out: Batch, table: str, rows: Sequence[dict[str, Any]]) -> None:
        lines = [_line(table, row) for row in rows]
        try:  # the first row is what the next prune looks for, should this one die before its commit
            out.write("".join(lines).encode("utf-8"), {"table": table, "line": lines[0]})
        except OSError as err:
            raise StorageError(f"cannot write the archive {self.path}: {err.strerror or err}; this chunk was not "
                               "deleted, and the archive holds exactly the rows deleted so far") from None

    def settle(self, db: Database) -> None:
        """Cut off the rows a prune killed before its commit appended (their first is still in the database)."""

        def committed(note: Mapping[str, Any]) -> bool:
            table, line = note["table"], note["line"]
            if table not in _KEYS:  # not a note of ours: its lines are kept
                return True
            key = _KEYS[table]
            with db.tx(write=False) as tx:
                found = _take(tx, f"SELECT * FROM {table} WHERE {key} = ?", (json.loads(line)["row"][key],))
            return not found or _line(table, found[0]) != line

        with _storage_errors(self.path, contextlib.nullcontext()):
            settle(self.path, committed)


def _line(table: str, row: dict[str, Any]) -> str:
    return json.dumps({"table": table, "row": row}, sort_keys=True, default=str) + "\n"


@contextlib.contextmanager
def _storage_errors(path: str, inner: AbstractContextManager[Any]) -> Iterator[Any]:
    """``inner``, with a file error as one clear :class:`StorageError`."""
    try:
        with inner as value:
            yield value
    except OSError as err:
        raise StorageError(f"cannot write the archive {path}: {err.strerror or err}") from None


def _archive_file(db: Database, path: Optional[str]) -> Optional[_Archive]:
    """The archive, settled with the database and checked writable before anything is deleted."""
    if path is None:
        return None
    archive = _Archive(os.path.expanduser(path))
    archive.settle(db)
    try:
        append_whole(archive.path, b"")
    except OSError as err:
        raise StorageError(f"cannot write the archive {path}: {err.strerror or err}") from None
    return archive


def _take(tx: Tx, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
    cursor = tx.run(sql, params)
    columns = [d[0] for d in cursor.description]
    return [dict(zip(columns, r)) for r in cursor.fetchall()]


def _chunk(out: Optional[_Archive]) -> AbstractContextManager[Optional[Batch]]:
    return out.chunk() if out is not None else contextlib.nullcontext()


def _remove(tx: Tx, table: str, key: str, rows: Sequence[dict[str, Any]], out: Optional[_Archive],
            appends: Optional[Batch], archived_as: Optional[str] = None) -> None:
    """Archive ``rows`` (on disk before the delete commits; under the name ``archived_as``, the table's by default)
    and delete them, inside the caller's transaction (and ``appends``, the chunk's appends to the archive)."""
    if out is not None and appends is not None and rows:
        out.write(appends, archived_as or table, rows)
    keys = [r[key] for r in rows]
    for part in chunks(keys):
        tx.run(f"DELETE FROM {table} WHERE {key} IN ({','.join('?' * len(part))})", part)


def _delete_where(
    db: Database, source: str, key: str, where: str, params: Sequence[Any], chunk: int, out: Optional[_Archive],
    table: Optional[str] = None, on_chunk: Optional[Callable[[int], None]] = None,
) -> int:
    """Delete the rows of ``source`` ("table alias") matching ``where`` in key order, ``chunk`` per transaction;
    ``table``: where they are deleted when ``source`` is a view of it (the archive keeps the view's columns)."""
    name, alias = source.split()
    total = 0
    last: Any = "" if key == "request_id" else -1
    while True:
        with _chunk(out) as appends, db.tx(write=True) as tx:
            columns = f"{alias}.*" if out is not None else f"{alias}.{key}"  # whole rows only to archive them
            rows = _take(tx, f"SELECT {columns} FROM {source} WHERE {where} AND {alias}.{key} > ?"
                             f" ORDER BY {alias}.{key} LIMIT ?", (*params, last, chunk))
            _remove(tx, table or name, key, rows, out, appends, name)
        total += len(rows)
        if on_chunk is not None:
            on_chunk(len(rows))
        if len(rows) < chunk:
            return total
        last = rows[-1][key]


def _delete_generations(
    db: Database, generations: Sequence[tuple[int, int, int]], cutoff: str, chunk: int, out: Optional[_Archive],
    on_chunk: Optional[Callable[[int], None]] = None,
) -> int:
    """Delete the jobs of the given (instance, generation) pairs, about ``chunk`` jobs per transaction.

    Each generation is checked again in the deleting transaction: one that moved since it was
    chosen (a job updated after the cut-off, or not finished) is left alone.
    """
    total = 0
    start = 0
    newest = to_micros(cutoff)  # job times are integer microseconds
    while start < len(generations):
        with _chunk(out) as appends, db.tx(write=True) as tx:
            taken = 0
            while start < len(generations) and taken < chunk:
                iid, gen, _ = generations[start]
                rows = _take(tx, "SELECT * FROM job WHERE instance_id = ? AND generation = ? ORDER BY id"
                             + tx.lock("job"), (iid, gen))
                start += 1
                if any(r["status"] not in ("done", "failed") or r["updated_at"] >= newest for r in rows):
                    continue
                tx.many(KEEP_CREATION_FIELDS, [(r["fields"], r["id"]) for r in rows])  # their creation rows stay
                _remove(tx, "job", "id", rows, out, appends)
                taken += len(rows)
        total += taken
        if on_chunk is not None:
            on_chunk(taken)
    return total


# --------------------------------------------------------------------------------------------- stats


@dataclass(frozen=True)
class DbStats:
    """Rows per table and bytes on disk (SQLite: file, WAL, free pages; PostgreSQL: database and tables)."""

    url: str
    engine: str
    rows: dict[str, int]
    size_bytes: int
    wal_bytes: Optional[int] = None
    free_bytes: Optional[int] = None
    table_bytes: dict[str, int] = field(default_factory=dict)
    schema_version: Optional[int] = None


#: tables shown by the name users know them by: the audit's rows are those of the view ``audit``
SHOWN = {"audit_log": "audit"}


def stats(db: Database) -> DbStats:
    """Count the rows of every table and measure the database's size."""
    names = sorted(t.name for t in SQLModel.metadata.sorted_tables)
    with db.tx(write=False) as tx:
        rows = {SHOWN.get(name, name): int(tx.scalar(f"SELECT COUNT(*) FROM {name}")) for name in names}
    usage = db.disk_usage(names)
    return DbStats(db.url, usage.engine, rows, usage.size_bytes, usage.wal_bytes, usage.free_bytes,
                   {SHOWN.get(n, n): size for n, size in usage.table_bytes.items()}, db.schema_version())


def vacuum(db: Database) -> None:
    """Give the space of deleted rows back to the file system (after a large prune)."""
    db.vacuum()
