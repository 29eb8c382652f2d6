"""What every command shares: the database, the actor, the output mode."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from typing import TYPE_CHECKING, Any, Optional

import click

if TYPE_CHECKING:
    from ..store import Store


class App:
    """Opens the store lazily, once, and prints results as text or JSON."""

    def __init__(self, db: str, actor: Optional[str], as_json: bool, allow_network_fs: bool = False,
                 db_source: str = "") -> None:
        self.db = db
        #: where ``db`` came from, for a database that is not there: "from --db", "from ECALSTATE_DB", or the default
        self.db_source = db_source
        self.actor = actor
        self.as_json = as_json
        self.allow_network_fs = allow_network_fs
        self._store: Optional[Store] = None

    def store(self, create: bool = False, read_only: bool = False) -> Store:
        """The store, opened on first use; ``read_only`` for commands that only read (the file stays unchanged)."""
        if self._store is not None and self._store.db.read_only and not read_only:
            self.close()  # a write after a read: reopen writable
        if self._store is None:
            # imported here, not for --help: the schema takes longer to load than click
            from ..db import no_database
            from ..errors import NotFound
            from ..store import Store

            try:
                self._store = Store.open(self.db, actor=self.actor, create=create,
                                         allow_network_fs=self.allow_network_fs, read_only=read_only)
            except NotFound:
                if "://" in self.db or os.path.exists(os.path.expanduser(self.db)):
                    raise
                raise NotFound(no_database(self.db, self.db_source)) from None
        return self._store

    def reader(self) -> Store:
        """The store for a command that only reads: it never changes the database, and works read-only."""
        return self.store(read_only=True)

    def close(self) -> None:
        """Release the database (on SQLite the last connection out checkpoints the WAL)."""
        if self._store is not None:
            self._store.close()
            self._store = None

    def emit(self, data: Any, text: Callable[[], None] | str | None = None) -> None:
        """Print ``data`` as JSON with ``--json``; otherwise call ``text`` (or echo it)."""
        if self.as_json:
            click.echo(json.dumps(to_jsonable(data), indent=2, sort_keys=True))
        elif callable(text):
            text()
        elif text is not None:
            click.echo(text)


_SCALARS = (str, int, float, bool, type(None))


def to_jsonable(data: Any) -> Any:
    """Dataclasses as dicts, tuples as lists, keys as text; plain values first (200,000 of them in ``status``)."""
    if type(data) in _SCALARS:
        return data
    if isinstance(data, dict):
        return {str(k): to_jsonable(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [to_jsonable(v) for v in data]
    if is_dataclass(data) and not isinstance(data, type):
        if hasattr(data, "to_dict"):
            return data.to_dict()
        return {k: to_jsonable(v) for k, v in asdict(data).items()}
    return data


pass_app = click.make_pass_decorator(App)
