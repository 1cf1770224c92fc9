"""What a copy moves: the SQL schema's tables, in load order, as rows in column order.

The SQL schema is the one every backend maps to and from: the Redis store's keys are read
into these rows and written back from them (:mod:`ratewire.transfer.redis`). The webhooks'
delivery attempts are not moved (a recent-history diagnostic, rebuilt by the next
deliveries); of ``ratewire_meta`` only the epoch is (the schema version is the target's).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Delete, Table, delete

from ratewire.storage.sql.schema import (
    audit_tables,
    events,
    game_summaries,
    global_head,
    ratings,
    revocations,
    store_meta,
    user_heads,
)
from ratewire.storage.sql.webhooks import webhooks

Row = tuple[Any, ...]

#: Load order: the epoch first (Redis lays out the event streams under it).
TABLES: tuple[Table, ...] = (
    store_meta,
    ratings,
    game_summaries,
    user_heads,
    global_head,
    events,
    revocations,
    audit_tables.log,
    audit_tables.head,
    webhooks,
)
BY_NAME = {table.name: table for table in TABLES}
#: The tables whose rows are a store's data: a target holding any of them is refused.
DATA_TABLES = ("ratings", "rating_events", "audit_log", "webhooks", "token_revocations")
#: A new database's seed rows (the epoch, the heads): they give way to the source's.
CLEAR_SEEDS: tuple[Delete, ...] = (
    delete(store_meta).where(store_meta.c.key == "epoch"),
    delete(global_head),
    delete(audit_tables.head),
)
#: Rows per batch read or written: large enough that per-batch costs vanish, small enough
#: that memory stays flat.
BATCH_ROWS = 20_000


def columns(table: Table) -> list[str]:
    return [str(column.name) for column in table.columns]


class TransferError(Exception):
    """A copy, export or import that cannot go on; the message names what and where."""


class TargetNotEmpty(TransferError):
    """The target holds data already: nothing was written."""


@dataclass(frozen=True, slots=True)
class Counts:
    """Rows per table, in :data:`TABLES` order."""

    rows: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.rows.values())

    def describe(self) -> str:
        return ", ".join(f"{self.rows.get(name, 0)} {name}" for name in DATA_TABLES)


class Source(Protocol):
    """A backend read as rows, from one consistent state (see each one's ``consistency``)."""

    description: str
    #: How the source is kept consistent while it is read (said by ``ratewire copy``).
    consistency: str

    async def open(self) -> Counts:
        """Begin the read (a snapshot where the backend has one); the rows per table."""

    def rows(self, table: Table) -> AsyncIterator[Sequence[Row]]:
        """The table's rows, in batches, in primary-key order."""

    async def close(self) -> None:
        """End the read and release connections."""


class Target(Protocol):
    """A backend written from rows, all or nothing."""

    description: str

    async def open(self) -> None:
        """Create the schema if needed; :class:`TargetNotEmpty` if it holds any data."""

    async def load(self, batches: AsyncIterator[tuple[Table, Sequence[Row]]]) -> None:
        """Write every batch (in :data:`TABLES` order); on any error nothing stays."""

    async def close(self) -> None:
        """Release connections."""
