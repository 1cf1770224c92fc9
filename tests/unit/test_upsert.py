"""The upsert every store shares: look up the pair, create or replace, look again after a
lost race, and give up with the store's own 503 after its number of attempts."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import pytest

from ratewire.audit import AuditContext
from ratewire.domain import Rating, RatingChanges, RatingDraft, utc_now
from ratewire.storage.base import (
    AlreadyExists,
    NotFound,
    StorageUnavailable,
    VersionMismatch,
    WriteResult,
)
from ratewire.storage.memory import MemoryStore

DRAFT = RatingDraft("42", "7", 4, None)


class Racing(MemoryStore):
    """A store whose look-ups answer from a script and whose writes lose the races the
    script says (another writer created or deleted the pair in between): the memory store
    cannot race, so its writes are replaced here."""

    upsert_attempts = 3
    upsert_gave_up = "upsert of {pair} kept racing; retry"

    def __init__(
        self, lookups: list[str | None], creates_lose: int = 0, updates_lose: int = 0
    ) -> None:
        super().__init__()
        self._lookups: Iterator[str | None] = iter(lookups)
        self.creates_lose, self.updates_lose = creates_lose, updates_lose
        self.calls: list[str] = []
        self.changes: list[RatingChanges] = []

    async def _pair_id(self, game_id: str, user_id: str) -> str | None:
        assert (game_id, user_id) == ("42", "7")
        self.calls.append("lookup")
        return next(self._lookups)

    async def create(
        self, draft: RatingDraft, now: datetime, audit: AuditContext | None = None
    ) -> WriteResult:
        self.calls.append("create")
        if self.creates_lose:
            self.creates_lose -= 1
            raise AlreadyExists(draft.game_id, draft.user_id, "r_other")
        return WriteResult(Rating.new(draft, now), None, created=True)

    async def update(
        self,
        rating_id: str,
        changes: RatingChanges,
        expected_version: int | None,
        now: datetime,
        audit: AuditContext | None = None,
    ) -> WriteResult:
        self.calls.append(f"update {rating_id}")
        self.changes.append(changes)
        if self.updates_lose:
            self.updates_lose -= 1
            raise NotFound(rating_id)
        return WriteResult(Rating.new(DRAFT, now), None)


class OneAttempt(Racing):
    upsert_attempts = 1


async def upsert(store: Racing, expected: int | None = None) -> WriteResult:
    return await store.upsert(DRAFT, expected, utc_now())


async def test_a_create_that_loses_the_race_replaces_the_winner() -> None:
    store = Racing([None, "r_other"], creates_lose=1)
    result = await upsert(store)
    assert not result.created
    assert store.calls == ["lookup", "create", "lookup", "update r_other"]
    # A draft without a comment clears the one the rating had.
    assert store.changes == [RatingChanges(score=4, comment=None, clear_comment=True)]


async def test_an_update_of_a_rating_deleted_meanwhile_creates_it_again() -> None:
    store = Racing(["r_gone", None], updates_lose=1)
    assert (await upsert(store)).created
    assert store.calls == ["lookup", "update r_gone", "lookup", "create"]


async def test_after_its_attempts_the_upsert_gives_up_with_the_stores_words() -> None:
    store = Racing(["r1", None, "r2", None], creates_lose=9, updates_lose=9)
    with pytest.raises(StorageUnavailable, match=r"^upsert of 42/7 kept racing; retry$"):
        await upsert(store)
    assert store.calls.count("lookup") == 3


async def test_one_attempt_is_one_look_up() -> None:
    store = OneAttempt([None], creates_lose=1)
    with pytest.raises(StorageUnavailable):
        await upsert(store)
    assert store.calls == ["lookup", "create"]


async def test_a_version_named_for_a_pair_without_a_rating_is_a_mismatch() -> None:
    store = Racing([None])
    with pytest.raises(VersionMismatch) as raised:
        await upsert(store, expected=2)
    mismatch = raised.value
    assert (mismatch.rating_id, mismatch.expected, mismatch.current) == ("42/7", 2, None)
    assert store.calls == ["lookup"]
