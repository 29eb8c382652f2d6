"""Bookmarks in the audit: how far each of its consumers (an export target, a notification channel) has read.

A consumer's bookmark is the last audit id it acknowledged (table ``export_cursor``, one row per target name);
``db prune`` keeps every audit row above the lowest bookmark. The exporter and the notifier are wings over the
store: they read and move their bookmarks here, in the store's transactions, stamped by the store's clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Optional

from .base import Ctx, StoreBase
from .db import Tx

_UPSERT = ("INSERT INTO export_cursor (target, audit_id, updated_at) VALUES (?,?,?)"
           " ON CONFLICT (target) DO UPDATE SET audit_id = excluded.audit_id, updated_at = excluded.updated_at")


def read_cursor(tx: Tx, target: str) -> Optional[int]:
    """The bookmark of ``target``, None when it has none."""
    value = tx.scalar("SELECT audit_id FROM export_cursor WHERE target = ?", (target,))
    return None if value is None else int(value)


def move_cursor(ctx: Ctx, target: str, audit_id: int, forward_only: bool = True) -> None:
    """Set the bookmark of ``target`` (made when missing); never back unless ``forward_only`` is False."""
    guard = " WHERE export_cursor.audit_id < excluded.audit_id" if forward_only else ""
    ctx.tx.run(_UPSERT + guard, (target, audit_id, ctx.now))


def drop_cursors(ctx: Ctx, targets: Iterable[str]) -> None:
    """Forget the bookmarks of ``targets`` (a consumer that was removed)."""
    ctx.tx.many("DELETE FROM export_cursor WHERE target = ?", [(t,) for t in targets])


def read_mark(tx: Tx, key: str) -> Optional[str]:
    """A consumer's note beside its bookmark (``meta`` key ``key``: what a notification channel was already told)."""
    return tx.scalar("SELECT value FROM meta WHERE key = ?", (_mark(key),))


def write_mark(ctx: Ctx, key: str, value: Optional[str]) -> None:
    """Replace (or with None remove) a consumer's note."""
    ctx.tx.run("DELETE FROM meta WHERE key = ?", (_mark(key),))
    if value is not None:
        ctx.tx.run("INSERT INTO meta (key, value) VALUES (?, ?)", (_mark(key), value))


def _mark(key: str) -> str:
    if key == "schema_version":  # the schema's own key is never a consumer's
        raise ValueError("schema_version is not a consumer's note")
    return key


class Cursors(StoreBase):
    """The audit's bookmarks, one short transaction each."""

    def cursor(self, target: str) -> int:
        """The last audit id ``target`` acknowledged (0 when it never received anything)."""
        with self.db.tx(write=False) as tx:
            return read_cursor(tx, target) or 0

    def set_cursor(self, target: str, audit_id: int, forward_only: bool = True) -> None:
        """Move ``target``'s bookmark to ``audit_id`` in its own short write transaction (never back unless told)."""
        self._write("cursor", None, lambda ctx: move_cursor(ctx, target, audit_id, forward_only))
