"""``ecalstate serve``: a live, read-only web view of a database for shifters.

A package above the store: it reads through the store's public queries (overview, runs, jobs, history,
health, job logs) and never writes. The grid pages newest runs first, cells open the task instance with its
jobs, failure reasons and log tails, and the pages update themselves by polling the audit trail's newest id.
"""

from __future__ import annotations

from .app import create_app, forbid_writes, serve

__all__ = ["create_app", "forbid_writes", "serve"]
