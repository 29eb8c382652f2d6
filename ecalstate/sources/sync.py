"""One sync: ask the source (I/O, no transaction open), then write its answer (one transaction)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import RunSource
from .store import SyncResult

if TYPE_CHECKING:
    from ..store import Store


def sync(store: "Store", campaign: str, source: RunSource) -> SyncResult:
    """Bring ``campaign``'s runs up to date with ``source``; safe to repeat and to run twice at once."""
    batch = source.fetch(store.source_state(campaign, source.name))
    return store.apply_sync(campaign, source.name, batch)
