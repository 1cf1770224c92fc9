"""Running a copy: the source and the target a URL names, and the rows from one to the other."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence

from sqlalchemy import Table

from ratewire import extras
from ratewire.transfer.tables import TABLES, Counts, Row, Source, Target, TransferError

Advance = Callable[[str, int], None]

_BACKENDS = {
    "sqlite": "sqlite",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
    "redis": "redis",
    "rediss": "redis",
}


def backend_of(url: str) -> str:
    """The backend a storage URL names; :class:`TransferError` for one a copy cannot use."""
    scheme = url.partition("://")[0].partition("+")[0]
    if scheme == "memory":
        raise TransferError("memory://: the memory store lives inside one process; nothing to copy")
    backend = _BACKENDS.get(scheme)
    if backend is None or "://" not in url:
        raise TransferError(
            f"{url!r}: not a storage URL (sqlite:///file.db, postgresql://, mysql://, redis://)"
        )
    if backend != "sqlite":
        try:
            extras.require(backend, url.partition("://")[0])
        except extras.MissingExtra as exc:
            raise TransferError(str(exc)) from None
    return backend


def open_source(url: str) -> Source:
    if backend_of(url) == "redis":
        from ratewire.transfer.redis import RedisSource

        return RedisSource(url)
    from ratewire.transfer.sql import SqlSource

    return SqlSource(url)


def open_target(url: str) -> Target:
    if backend_of(url) == "redis":
        from ratewire.transfer.redis import RedisTarget

        return RedisTarget(url)
    from ratewire.transfer.sql import SqlTarget

    return SqlTarget(url)


#: Batches read ahead of the load: reading the source and writing the target overlap, and
#: memory stays at a few batches whatever the size.
READ_AHEAD = 4


async def transfer(source: Source, target: Target, advance: Advance) -> None:
    """Load every row of the opened ``source`` into the opened, empty ``target``."""
    queue: asyncio.Queue[tuple[Table, Sequence[Row]] | None] = asyncio.Queue(READ_AHEAD)

    async def read() -> None:
        for table in TABLES:
            async for rows in source.rows(table):
                if rows:
                    await queue.put((table, rows))
        await queue.put(None)

    async def batches() -> AsyncIterator[tuple[Table, Sequence[Row]]]:
        while (item := await queue.get()) is not None:
            yield item
            advance(item[0].name, len(item[1]))

    reader = asyncio.create_task(read())
    try:
        loading = asyncio.create_task(target.load(batches()))
        done, _ = await asyncio.wait({reader, loading}, return_when=asyncio.FIRST_EXCEPTION)
        failed = reader.exception() if reader in done else None
        if failed is not None:
            loading.cancel()  # the load's transaction rolls back
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            raise failed
        await loading
    except TransferError:
        raise
    except Exception as exc:  # the database refused a row: its transaction rolled back
        raise TransferError(
            f"{target.description}: {type(exc).__name__}: {exc}; nothing was written"
        ) from exc
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def counts_match(source_counts: Counts, target_url: str) -> None:
    """Read the target back: it must hold as many rows of each table as the source had."""
    copied = open_source(target_url)
    try:
        found = await copied.open()
    finally:
        await copied.close()
    wrong = {
        name: (n, found.rows.get(name, 0))
        for name, n in source_counts.rows.items()
        if found.rows.get(name, 0) != n
    }
    if wrong:
        what = ", ".join(f"{name}: {a} in the source, {b} copied" for name, (a, b) in wrong.items())
        raise TransferError(f"the target does not hold what was copied ({what})")
