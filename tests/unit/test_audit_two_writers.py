"""Two stores writing one database's audit log in turn (two instances of a cluster): each
assumes the head it wrote last, finds it moved, seals again after the real head, and the
chain stays one valid chain. On PostgreSQL the head's move and the entries' insert are one
statement that inserts nothing when the head moved (the store then seals again)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ratewire.audit import AuditChain, AuditContext, AuditQuery, AuditRecord
from ratewire.audit.verify import verify_chain
from ratewire.storage.sql import SqlStore
from tests.support.schema import drop_schema


# Synchronous: the session's postgres_url fixture may be set up here first, and it runs
# asyncio.run(), which cannot run inside an async fixture's loop.
@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    url = str(request.getfixturevalue("postgres_url"))
    asyncio.run(drop_schema(url))
    return url


async def test_interleaved_writers_keep_one_valid_chain(shared_url: str) -> None:
    chain = AuditChain("two-writers-key-0123456789abcdef0123")
    url = shared_url
    first, second = SqlStore(url), SqlStore(url)
    for store in (first, second):
        await store.start()
        store.use_audit(chain)
    try:
        for turn in range(6):
            writer = (first, second)[turn % 2]
            record = AuditRecord.now("ws.connect", AuditContext(actor=f"w{turn}"))
            await writer.append_audit([record, record])
        entries = await first.audit_entries(AuditQuery(limit=100, oldest_first=True))
        assert [e.seq for e in entries] == list(range(1, 13))
        assert [e.actor for e in entries][::2] == [f"w{turn}" for turn in range(6)]
        assert (await verify_chain(first, chain)).problem is None
    finally:
        await first.close()
        await second.close()
