"""SQLite's rating writes commit on the writer thread's own driver connection and checkpoint
when the writer is idle: the log stays small (SQLite's default lets it reach 1,000 pages and
copies them inside a write's COMMIT), every acknowledged write is there after the process
goes away without closing the store, and a failed write leaves nothing behind."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ratewire.audit.chain import AuditChain
from ratewire.domain import RatingDraft
from ratewire.storage.base import AlreadyExists
from ratewire.storage.sql import SqlStore

NOW = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
PAGE_AND_HEADER = 4096 + 24  # one WAL frame


def log_pages(database: Path) -> int:
    """How many pages the database's write-ahead log file holds."""
    return Path(f"{database}-wal").stat().st_size // PAGE_AND_HEADER


async def test_the_log_stays_small_while_writes_go_on(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    store = SqlStore(f"sqlite:///{path}")
    store.use_audit(AuditChain("k" * 32))
    await store.start()
    try:
        largest = 0
        for n in range(600):  # ~20 pages each: 12,000 pages of log without checkpoints
            await store.create(RatingDraft(f"g{n % 50}", f"u{n}", 1 + n % 5), NOW)
            largest = max(largest, log_pages(path))
        # Concurrent writers (group commits) too.
        await asyncio.gather(
            *(store.create(RatingDraft("busy", f"c{n}", 3), NOW) for n in range(200))
        )
        largest = max(largest, log_pages(path))
        assert (await store.summary("busy")).count == 200
    finally:
        await store.close()
    # SQLite's own rule would have let it reach 1,000 pages before the first checkpoint.
    assert largest < 600, f"the write-ahead log grew to {largest} pages"


async def test_acknowledged_writes_survive_the_process_vanishing(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    store = SqlStore(f"sqlite:///{path}")
    await store.start()
    ids = [(await store.create(RatingDraft("g", f"u{n}", 4), NOW)).rating.id for n in range(30)]
    # No close(): a second process opens the files as a SIGKILL would have left them.
    with sqlite3.connect(path) as other:
        stored = {row[0] for row in other.execute("select id from ratings")}
    assert stored == set(ids)
    await store.close()


async def test_a_refused_write_leaves_nothing_and_the_next_one_commits(tmp_path: Path) -> None:
    store = SqlStore(f"sqlite:///{tmp_path / 'refused.db'}")
    await store.start()
    try:
        first = await store.create(RatingDraft("g", "u", 4), NOW)
        with pytest.raises(AlreadyExists):
            await store.create(RatingDraft("g", "u", 2), NOW)  # the pair is taken
        second = await store.create(RatingDraft("g", "v", 2), NOW)
        summary = await store.summary("g")
        assert (summary.count, summary.total) == (2, 6)
        # Offsets stay gapless: the refused write took none.
        assert second.event.game_offset == first.event.game_offset + 1
        assert second.event.seq == first.event.seq + 1
    finally:
        await store.close()
