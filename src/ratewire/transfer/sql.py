"""SQLite, PostgreSQL and MariaDB as a copy's source and target.

A source is read in one read-only transaction, so the copy is one committed state even while
its server keeps writing: SQLite's WAL snapshot (``BEGIN`` then the first read), PostgreSQL's
``REPEATABLE READ``, MariaDB's ``START TRANSACTION WITH CONSISTENT SNAPSHOT``. A target is
written in one transaction: PostgreSQL loads with ``COPY`` (asyncpg's
``copy_records_to_table``), the others with multi-row inserts; a failure rolls all of it back.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from typing import Any

from sqlalchemy import Table, func, insert, select
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ratewire.storage.base import StorageError
from ratewire.storage.sql import SqlStore, async_url
from ratewire.storage.sql.backup import sqlite_path
from ratewire.storage.sql.schema import global_head, store_meta
from ratewire.transfer.tables import (
    BATCH_ROWS,
    BY_NAME,
    CLEAR_SEEDS,
    DATA_TABLES,
    TABLES,
    Counts,
    Row,
    TargetNotEmpty,
    TransferError,
    columns,
)


def _moved(query: Any, table: Table) -> Any:
    """``query`` limited to the rows a copy moves (of ``ratewire_meta``, the epoch)."""
    return query.where(store_meta.c.key == "epoch") if table is store_meta else query


def _rows_of(table: Table) -> Any:
    return _moved(select(table).order_by(*table.primary_key.columns), table)


def _count(table: Table) -> Any:
    return _moved(select(func.count()).select_from(table), table)


def _safe(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


class SqlSource:
    """Rows of a SQL database, read from one snapshot."""

    def __init__(self, url: str) -> None:
        self.url = async_url(url)
        self.dialect = make_url(self.url).get_backend_name()
        self.description = _safe(url)
        self.consistency = "one read-only transaction: a consistent snapshot, servers may run"
        self._engine: AsyncEngine = create_async_engine(self.url)
        self._conn: AsyncConnection | None = None
        #: SQLite is read with the stdlib driver in a worker thread: a fetch there returns
        #: tuples, without a Row object per row, which doubled a copy's reading speed.
        self._sqlite: sqlite3.Connection | None = None

    async def open(self) -> Counts:
        try:
            if self.dialect == "sqlite":
                return await asyncio.to_thread(self._open_sqlite)
            return await self._open_server()
        except TransferError:
            raise
        except Exception as exc:  # the driver's errors, each its own class
            raise TransferError(f"{self.description}: {type(exc).__name__}: {exc}") from exc

    def _open_sqlite(self) -> Counts:
        path = sqlite_path(self.url)
        if not path.is_file():
            raise TransferError(f"{self.description}: no such database")
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        conn.isolation_level = None
        conn.execute("BEGIN")  # WAL: the first read fixes the snapshot the whole copy reads
        self._sqlite = conn
        found = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        self._check_tables(found)
        return Counts(
            {
                table.name: conn.execute(*_compiled(_count(table))).fetchone()[0]
                if table.name in found
                else 0
                for table in TABLES
            }
        )

    async def _open_server(self) -> Counts:
        conn = await self._engine.connect()
        if self.dialect == "postgresql":
            conn = await conn.execution_options(isolation_level="REPEATABLE READ")
            await conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        else:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        self._conn = conn
        found = set(await conn.run_sync(lambda sync: sync.dialect.get_table_names(sync)))
        self._check_tables(found)
        counts = {}
        for table in TABLES:
            if table.name in found:  # a database from before webhooks has none to copy
                counts[table.name] = int((await conn.execute(_count(table))).scalar_one())
        return Counts({table.name: counts.get(table.name, 0) for table in TABLES})

    def _check_tables(self, found: set[str]) -> None:
        if "ratings" not in found:
            raise TransferError(f"{self.description}: no ratewire database there")

    async def rows(self, table: Table) -> AsyncIterator[Sequence[Row]]:
        if self._sqlite is not None:
            cursor = await asyncio.to_thread(self._sqlite.execute, *_compiled(_rows_of(table)))
            while batch := await asyncio.to_thread(cursor.fetchmany, BATCH_ROWS):
                yield batch
            return
        assert self._conn is not None, "open() first"
        result = await self._conn.stream(_rows_of(table))
        async for partition in result.partitions(BATCH_ROWS):
            yield [tuple(row) for row in partition]

    async def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        if self._conn is not None:
            await self._conn.close()
        await self._engine.dispose()


def _compiled(query: Any) -> tuple[str, Any]:
    """A query as SQLite's stdlib driver takes it: (SQL, positional parameters)."""
    compiled = query.compile(dialect=sqlite_dialect.dialect(paramstyle="qmark"))
    return str(compiled), tuple(compiled.params[name] for name in compiled.positiontup or ())


class SqlTarget:
    """An empty SQL database (the schema is created or upgraded first), loaded at once."""

    def __init__(self, url: str) -> None:
        self.url = async_url(url)
        self.dialect = make_url(self.url).get_backend_name()
        self.description = _safe(url)
        self._engine: AsyncEngine = create_async_engine(self.url)

    async def open(self) -> None:
        store = SqlStore(self.url)  # creates or migrates the schema, seeds the heads
        try:
            await store.start()
        except StorageError as exc:
            raise TransferError(str(exc)) from exc
        finally:
            await store.close()
        async with self._engine.connect() as conn:
            held = {
                name: int((await conn.execute(_count(BY_NAME[name]))).scalar_one())
                for name in DATA_TABLES
            }
            head = (await conn.execute(select(global_head.c.last_offset))).scalar()
        if any(held.values()) or (head or 0) > 0:
            what = ", ".join(f"{n} {name}" for name, n in held.items() if n)
            raise TargetNotEmpty(
                f"{self.description} is not empty ({what or f'global offset {head}'}): "
                "copies and imports go into an empty database only; nothing was written"
            )

    async def load(self, batches: AsyncIterator[tuple[Table, Sequence[Row]]]) -> None:
        if self.dialect == "postgresql":
            await self._load_with_copy(batches)
            return
        async with self._engine.begin() as conn:
            for statement in CLEAR_SEEDS:
                await conn.execute(statement)
            async for table, rows in batches:
                names = columns(table)
                await conn.execute(
                    insert(table), [dict(zip(names, row, strict=True)) for row in rows]
                )

    async def _load_with_copy(self, batches: AsyncIterator[tuple[Table, Sequence[Row]]]) -> None:
        from ratewire.transfer.pg_load import load_postgres

        _, options = self._engine.dialect.create_connect_args(make_url(self.url))
        await load_postgres(dict(options), batches)

    async def close(self) -> None:
        await self._engine.dispose()
