"""SQLite's hot reads (a rating by id, a summary) run on the driver in reader threads of their
own: they see every committed write, and a driver error is a StorageUnavailable like any other
store error, never a raw sqlite3 exception."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ratewire.domain import RatingChanges, RatingDraft
from ratewire.storage.base import NotFound, StorageUnavailable
from ratewire.storage.sql import SqlStore

NOW = datetime(2026, 11, 30, 12, 0, 0, 123000, tzinfo=UTC)  # stored to the millisecond


async def test_reads_on_the_driver_see_each_commit(tmp_path: Path) -> None:
    store = SqlStore(f"sqlite:///{tmp_path / 'reads.db'}")
    await store.start()
    try:
        created = (await store.create(RatingDraft("g", "u", 4, "ok"), NOW)).rating
        assert await store.get(created.id) == created
        updated = await store.update(created.id, RatingChanges(score=2), None, NOW)
        assert await store.get(created.id) == updated.rating
        summary = await store.summary("g")
        assert (summary.count, summary.total, summary.histogram) == (1, 2, (0, 1, 0, 0, 0))
        assert (await store.summary("nobody-rated-this")).count == 0
        with pytest.raises(NotFound):
            await store.get("r_missing")
    finally:
        await store.close()


async def test_a_driver_error_is_storage_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "broken.db"
    store = SqlStore(f"sqlite:///{path}")
    await store.start()
    try:
        with sqlite3.connect(path) as other:  # the schema taken away under the server
            other.execute("DROP TABLE ratings")
            other.execute("DROP TABLE game_summaries")
        with pytest.raises(StorageUnavailable, match=r"^sqlite: no such table: ratings$"):
            await store.get("r_1")
        with pytest.raises(StorageUnavailable, match="no such table: game_summaries"):
            await store.summary("g")
    finally:
        await store.close()


@pytest.mark.parametrize(("setting", "pragma"), [("full", 2), ("normal", 1)])
async def test_sqlite_synchronous_reaches_the_writer_connection(
    tmp_path: Path, setting: str, pragma: int
) -> None:
    """storage.sqlite_synchronous is what the write transaction runs under (SQLite's
    PRAGMA synchronous: 2 FULL, 1 NORMAL), and writes read back the same either way."""
    store = SqlStore(f"sqlite:///{tmp_path / 'sync.db'}", sqlite_synchronous=setting)  # type: ignore[arg-type]
    await store.start()
    try:
        assert store._sqlite_writer is not None
        with store._sqlite_writer.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == pragma
        created = (await store.create(RatingDraft("g", "u", 4), NOW)).rating
        assert await store.get(created.id) == created
    finally:
        await store.close()
