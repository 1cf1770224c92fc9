"""The one upsert (``PUT /games/{game}/ratings/{user}``) every store runs: look up the
(game, user) pair's rating, then create it or replace it.

Between the look-up and the write another writer may create or delete that rating: the
create then meets :class:`AlreadyExists`, or the update :class:`NotFound`, and the upsert
looks again. Each store says how many looks it allows (``upsert_attempts``) and what it
answers when they run out (a 503, :class:`StorageUnavailable`, in the store's own words,
``upsert_gave_up``).
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Protocol

from ratewire.audit import AuditContext
from ratewire.domain import RatingChanges, RatingDraft
from ratewire.storage.base import (
    AlreadyExists,
    NotFound,
    RatingStore,
    StorageUnavailable,
    VersionMismatch,
    WriteResult,
)


class _Upserting(RatingStore, Protocol):
    """What :class:`PairUpsert` needs of the store it is mixed into: a whole store and its
    look-up of a pair's rating."""

    upsert_attempts: ClassVar[int]
    upsert_gave_up: ClassVar[str]

    async def _pair_id(self, game_id: str, user_id: str) -> str | None:
        """The id of that pair's rating, or None."""


class PairUpsert:
    """Mixin: a store's ``upsert``, made of its ``_pair_id``, ``create`` and ``update``."""

    #: How many look-ups an upsert makes before it gives up.
    upsert_attempts: ClassVar[int]
    #: What the 503 says when they run out (``{pair}`` is ``game/user``).
    upsert_gave_up: ClassVar[str]

    async def upsert(
        self: _Upserting,
        draft: RatingDraft,
        expected_version: int | None,
        now: datetime,
        audit: AuditContext | None = None,
    ) -> WriteResult:
        """Create ``draft``'s rating, or replace the one its pair has (its comment cleared
        when the draft has none). ``expected_version`` (``If-Match``) must name the current
        version; one given for a pair without a rating is a :class:`VersionMismatch`. After
        ``upsert_attempts`` looks that each lost a race: :class:`StorageUnavailable` with
        ``upsert_gave_up`` formatted with ``pair`` (``"game/user"``)."""
        pair = f"{draft.game_id}/{draft.user_id}"
        changes = RatingChanges(
            score=draft.score, comment=draft.comment, clear_comment=draft.comment is None
        )
        for _ in range(self.upsert_attempts):
            existing_id = await self._pair_id(draft.game_id, draft.user_id)
            if existing_id is None:
                if expected_version is not None:
                    raise VersionMismatch(pair, expected_version, None)
                try:
                    return await self.create(draft, now, audit)
                except AlreadyExists:
                    continue  # a concurrent writer created it first: update that one instead
            try:
                return await self.update(existing_id, changes, expected_version, now, audit)
            except NotFound:
                continue  # deleted between the look-up and the update: create it again
        raise StorageUnavailable(self.upsert_gave_up.format(pair=pair))
