"""Emptying a shared test database between tests."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from ratewire.storage.sql import async_url, metadata
from ratewire.storage.sql.migrate import VERSION_TABLE


async def drop_schema(url: str) -> None:
    """Drop every ratewire table, the migrations' version table too: a database left with
    the version and none of the tables would claim a schema it does not have."""
    engine = create_async_engine(async_url(url))
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
        await conn.execute(text(f"DROP TABLE IF EXISTS {VERSION_TABLE}"))
    await engine.dispose()
