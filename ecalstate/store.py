"""The typed API: one :class:`Store` over one database, every write one transaction.

Nothing but the store writes state. Each concern lives in its own module
(catalog, claims, jobs, transitions, queries, monitoring, deadlines); ``Store`` joins them.
"""

from __future__ import annotations

from typing import Optional

from .catalog import Catalog
from .claims import Claims
from .deadlines import Deadlines
from .schema import open_database
from .jobs import Jobs
from .monitoring import Monitoring
from .queries import Queries
from .transitions import Transitions


class Store(Catalog, Claims, Jobs, Transitions, Queries, Monitoring, Deadlines):
    """ecalstate's typed API over one database (a SQLite path or any SQLAlchemy URL)."""

    @classmethod
    def open(
        cls, db: str, actor: Optional[str] = None, create: bool = False, allow_network_fs: bool = False,
        read_only: bool = False,
    ) -> "Store":
        """Open ``db``; ``create`` makes the file and schema when missing (``ecalstate init``).

        ``allow_network_fs`` accepts a SQLite file on a network or FUSE mount (refused by default).
        ``read_only`` never changes the database, also works on a read-only file in a read-only folder (a
        shifter reading the service's database), and refuses every write.
        """
        return cls(open_database(db, create=create, allow_network_fs=allow_network_fs, read_only=read_only), actor)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
