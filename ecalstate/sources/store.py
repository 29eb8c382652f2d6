"""Run sources' side of the store: their cursors, and a sync written through the store in one transaction.

A wing over :class:`~ecalstate.store.Store`: new runs are injected (a run still being taken is recorded but
activates no task until it ends, so no handler processes half a run), runs that were ongoing take their final
metadata and activate their tasks, ended fills are recorded and the source's cursor (table ``run_source``, this
wing's own) moves on, or nothing at all. Runs and fills are the core's, written through its public functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..base import Ctx, campaign_id, loads
from ..catalog import activate_runs, check_fill, check_run, check_specs, end_fills, insert_runs, update_runs
from ..limits import check_int64, chunks
from ..results import ONGOING, RunSpec
from ..store import Store
from . import Rejected, SourceBatch, SourceState

#: how many of the newest fills not known to have ended a source is asked about
OPEN_FILLS = 50
_ONGOING_LIKE = f'%"{ONGOING}": true%'


@dataclass(frozen=True)
class SyncResult:
    """What one sync changed: runs by outcome, task instances created, fills recorded as ended, the cursor, and
    the rows the source rejected (skipped, written nowhere)."""

    source: str
    new: list[int] = field(default_factory=list)
    ongoing: list[int] = field(default_factory=list)
    ended: list[int] = field(default_factory=list)
    existing: list[int] = field(default_factory=list)
    instances: int = 0
    fills_ended: list[int] = field(default_factory=list)
    last_run: int = 0
    rejected: list[Rejected] = field(default_factory=list)


class RunSources:
    """The run sources of a store: their cursors, and their answers written in one transaction each."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def source_state(self, campaign: str, source: str) -> SourceState:
        """The cursor of ``source`` in ``campaign``, its runs still ongoing and the newest fills still open."""
        with self.store.db.tx(write=False) as tx:
            cid = campaign_id(tx, campaign)
            last = tx.scalar("SELECT last_run FROM run_source WHERE campaign_id = ? AND source = ?", (cid, source))
            ongoing = [r[0] for r in tx.all(
                "SELECT run_number, meta FROM run WHERE campaign_id = ? AND meta LIKE ? ORDER BY run_number",
                (cid, _ONGOING_LIKE)) if loads(r[1]).get(ONGOING) is True]
            fills = [r[0] for r in tx.all(
                "SELECT DISTINCT r.fill FROM run r WHERE r.campaign_id = ? AND r.fill IS NOT NULL AND NOT EXISTS"
                " (SELECT 1 FROM fill_end f WHERE f.campaign_id = r.campaign_id AND f.fill = r.fill)"
                " ORDER BY r.fill DESC LIMIT ?", (cid, OPEN_FILLS))]
        return SourceState(int(last or 0), ongoing, fills)

    def apply_sync(self, campaign: str, source: str, batch: SourceBatch) -> SyncResult:
        """Write what a source answered, in one transaction; a repeated answer changes nothing."""
        specs = check_specs(r.spec for r in batch.runs)
        ongoing = {check_run(r.spec.run_number)[0] for r in batch.runs if r.ongoing}
        fills = {check_fill(f): str(reason) for f, reason in batch.fills_ended.items()}
        dumped = {check_fill(f): str(when) for f, when in batch.fills_dumped.items()}
        check_int64(batch.last_run, "cursor run number", 0)

        def body(ctx: Ctx) -> SyncResult:
            tx = ctx.tx
            cid = campaign_id(tx, campaign)
            tx.serialize("runs", cid)  # with injections and other syncs: each sees the other's runs
            present: dict[int, tuple[int, dict[str, Any]]] = {}
            numbers = sorted(specs)
            for chunk in chunks(numbers):
                marks = ",".join("?" * len(chunk))
                present.update((r[0], (r[1], loads(r[2]))) for r in tx.all(
                    f"SELECT run_number, id, meta FROM run WHERE campaign_id = ? AND run_number IN ({marks})",
                    (cid, *chunk)))
            fresh = {n: _marked(s, n in ongoing) for n, s in specs.items() if n not in present}
            done = insert_runs(ctx, cid, {n: s for n, s in fresh.items() if n not in ongoing})
            insert_runs(ctx, cid, {n: s for n, s in fresh.items() if n in ongoing}, activate=False)
            updates: list[tuple[int, RunSpec]] = []
            ended: list[tuple[int, RunSpec]] = []
            still: list[tuple[int, RunSpec]] = []
            existing: list[int] = []
            for number, (run_id, meta) in sorted(present.items()):
                if meta.get(ONGOING) is not True:
                    if number > batch.known_below:  # injected by hand, or already ended: left as it is
                        existing.append(number)
                    continue
                spec = _marked(specs[number], number in ongoing)
                updates.append((run_id, spec))
                (still if number in ongoing else ended).append((run_id, spec))
            update_runs(ctx, updates)
            instances = done.instances + activate_runs(ctx, cid, ended)
            closed = end_fills(ctx, cid, fills, dumped)
            last = max(batch.last_run, int(tx.scalar(
                "SELECT last_run FROM run_source WHERE campaign_id = ? AND source = ?", (cid, source)) or 0))
            if not tx.execute("UPDATE run_source SET last_run = ?, updated_at = ? WHERE campaign_id = ? AND source = ?",
                              (last, ctx.now, cid, source)):
                tx.execute("INSERT INTO run_source (campaign_id, source, last_run, updated_at) VALUES (?,?,?,?)",
                           (cid, source, last, ctx.now))
            return SyncResult(source, sorted(n for n in fresh if n not in ongoing), sorted(
                [n for n in fresh if n in ongoing] + [s.run_number for _, s in still]),
                [s.run_number for _, s in ended], existing, instances, closed, last, list(batch.rejected))

        return self.store.write("run.sync", body)


def _marked(spec: RunSpec, ongoing: bool) -> RunSpec:
    """The run's metadata with the ongoing flag while it is being taken, without it once it ended."""
    meta = {k: v for k, v in spec.meta.items() if k != ONGOING}
    return RunSpec(spec.run_number, spec.fill, {**meta, ONGOING: True} if ongoing else meta)
