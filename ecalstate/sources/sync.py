"""One sync: ask the source (I/O, no transaction open), then write its answer (one transaction)."""

from __future__ import annotations

from ..store import Store
from . import RunSource
from .store import RunSources, SyncResult


def sync(store: Store, campaign: str, source: RunSource) -> SyncResult:
    """Bring ``campaign``'s runs up to date with ``source``; safe to repeat and to run twice at once."""
    sources = RunSources(store)
    batch = source.fetch(sources.source_state(campaign, source.name))
    return sources.apply_sync(campaign, source.name, batch)
