"""PostgreSQL's group commit without a savepoint per write: a batch of writes that each take
one statement, where a create of a pair already rated writes nothing instead of failing, and
a write the server rejects is found by running the batch again with savepoints, so that only
that write fails."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from ratewire.audit import AuditChain
from ratewire.audit.verify import verify_chain
from ratewire.domain import RatingChanges, RatingDraft, Topic, TopicKind, utc_now
from ratewire.storage.base import AlreadyExists, StorageUnavailable, VersionMismatch
from ratewire.storage.sql import SqlStore
from tests.support.schema import drop_schema

pytestmark = pytest.mark.postgresql
GLOBAL = Topic(TopicKind.GLOBAL)


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[SqlStore]:
    await drop_schema(postgres_url)
    opened = SqlStore(postgres_url)
    await opened.start()
    opened.use_audit(AuditChain("pg-batches-key-0123456789abcdef01234"))
    yield opened
    await opened.close()


async def _outcomes(writes: list) -> list:  # type: ignore[type-arg]
    return await asyncio.gather(*writes, return_exceptions=True)


async def test_a_rejected_write_fails_alone_and_the_rest_of_its_batch_commits(
    store: SqlStore,
) -> None:
    now = utc_now()
    drafts = [RatingDraft(f"g{i % 3}", f"u{i}", 1 + i % 5) for i in range(12)]
    # 70 characters: longer than the column, so PostgreSQL rejects the statement (22001).
    drafts[5] = RatingDraft("g" * 70, "u5", 4)
    results = await _outcomes([store.create(draft, now) for draft in drafts])
    assert isinstance(results[5], StorageUnavailable)
    stored = [r for i, r in enumerate(results) if i != 5]
    assert all(not isinstance(r, BaseException) for r in stored), stored
    assert sorted(r.event.seq for r in stored) == list(range(1, 12))  # no hole at the refusal
    counts = [(await store.summary(f"g{g}")).count for g in range(3)]
    assert counts == [4, 4, 3]
    assert (await verify_chain(store, store._audit_chain)).problem is None  # type: ignore[arg-type]
    assert len(await store.events_after(0, 100)) == 11


async def test_refusals_in_a_batch_leave_its_other_writes_standing(store: SqlStore) -> None:
    now = utc_now()
    first = await store.create(RatingDraft("g1", "taken", 3), now)
    writes = [
        store.create(RatingDraft("g1", "taken", 5), now),  # the pair exists: 409
        store.create(RatingDraft("g1", "new", 2), now),
        store.update(first.rating.id, RatingChanges(score=4), 7, now),  # stale version: 412
        store.update(first.rating.id, RatingChanges(score=1), 1, now),
        store.update(first.rating.id, RatingChanges(score=1), None, now),  # changes nothing
        store.delete(first.rating.id, 99, now),  # stale version
    ]
    taken, new, stale, updated, unchanged, stale_delete = await _outcomes(writes)
    assert isinstance(taken, AlreadyExists) and taken.existing_id == first.rating.id
    assert isinstance(stale, VersionMismatch) and isinstance(stale_delete, VersionMismatch)
    assert new.event.seq == 2 and updated.event.seq == 3 and updated.rating.version == 2
    assert unchanged.event is None and unchanged.rating.score == 1
    summary = await store.summary("g1")
    assert (summary.count, summary.total, summary.offset) == (2, 3, 3)
    events = await store.topic_events(GLOBAL, 0, 10)
    assert [(e.seq, e.kind) for e in events] == [(1, "created"), (2, "created"), (3, "updated")]
    assert (await verify_chain(store, store._audit_chain)).problem is None  # type: ignore[arg-type]
