"""Fills: which ones ended, recorded by a run source or an operator, or implied by a later fill's run.

A per-fill group is claimed only once its fill ended (:mod:`ecalstate.claims`); a run source records the dumps
it hears of (:func:`end_fills`, inside its sync's transaction), an operator closes a fill by hand.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .base import Ctx, StoreBase, campaign_id
from .db import Tx
from .errors import Invalid
from .limits import check_int64
from .results import FillEnd


def check_fill(fill: Any) -> int:
    """A fill number, checked (an integer >= 0)."""
    return check_int64(fill, "fill", 0)


def ended_fills(tx: Tx, cid: int, fills: Sequence[int]) -> set[int]:
    """The fills of ``fills`` that ended: recorded (a source, ``run close-fill``), or a later fill has a run."""
    newest = tx.scalar("SELECT MAX(fill) FROM run WHERE campaign_id = ?", (cid,))
    marks = ",".join("?" * len(fills))
    recorded = {r[0] for r in tx.all(f"SELECT fill FROM fill_end WHERE campaign_id = ? AND fill IN ({marks})",
                                     (cid, *fills))}
    return recorded | {f for f in fills if newest is not None and f < newest}


def end_fills(ctx: Ctx, cid: int, fills: Mapping[int, str]) -> list[int]:
    """Record the fills of ``fills`` (fill -> why) not known to have ended yet; the ones it recorded, in order."""
    closed = [f for f in sorted(fills) if not ctx.tx.scalar(
        "SELECT 1 FROM fill_end WHERE campaign_id = ? AND fill = ?", (cid, f))]
    ctx.tx.many("INSERT INTO fill_end (campaign_id, fill, ended_at, reason, actor) VALUES (?,?,?,?,?)",
                [(cid, f, ctx.now, str(fills[f])[:500], ctx.actor) for f in closed])
    return closed


class Fills(StoreBase):
    """Fills known to have ended."""

    def close_fill(self, campaign: str, fill: int, reason: str) -> bool:
        """Record that ``fill`` ended (an operator saw the dump); False when it was known already."""
        number = check_fill(fill)
        if not str(reason).strip():
            raise Invalid("closing a fill needs a reason")

        def body(ctx: Ctx) -> bool:
            cid = campaign_id(ctx.tx, campaign)
            ctx.tx.serialize("runs", cid)  # with syncs recording the same fill: one inserts, the other sees it
            return bool(end_fills(ctx, cid, {number: str(reason)}))

        return self._write("fill.close", None, body)

    def fill_ended(self, campaign: str, fill: int) -> bool:
        """Whether ``fill`` ended, by the rule grouping by fill uses: recorded (a source, ``run close-fill``), or a
        run of a later fill exists."""
        with self.db.tx(write=False) as tx:
            return check_fill(fill) in ended_fills(tx, campaign_id(tx, campaign), [fill])

    def ended_fills(self, campaign: str) -> list[FillEnd]:
        """Every fill known to have ended, with when, why and who recorded it, by fill."""
        with self.db.tx(write=False) as tx:
            cid = campaign_id(tx, campaign)
            return [FillEnd(*r) for r in tx.all(
                "SELECT fill, ended_at, reason, actor FROM fill_end WHERE campaign_id = ? ORDER BY fill", (cid,))]
