"""The use cases: the only writer of ratings. Checks rights, applies the change through the
store, and hands each committed event to the after-commit steps it was given (the delivery
path: ratewire.runtime.delivery)."""

from __future__ import annotations

import base64
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, replace

from ratewire.audit import AuditContext
from ratewire.broker.base import EventHandler
from ratewire.config import RatingsSettings
from ratewire.domain import (
    GameSummary,
    Rating,
    RatingChanges,
    RatingDraft,
    utc_now,
)
from ratewire.security.tokens import Principal
from ratewire.services.summaries import SummaryCache
from ratewire.storage.base import RatingStore, WriteResult


class Forbidden(Exception):
    """The principal may not do this."""


class BadCursor(ValueError):
    """A list cursor that this service did not hand out."""


@dataclass(frozen=True, slots=True)
class RatingPage:
    items: list[Rating]
    next_cursor: str | None


def encode_cursor(rating_id: str) -> str:
    return base64.urlsafe_b64encode(rating_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        decoded = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):  # binascii.Error, and non-ASCII input
        raise BadCursor(f"cursor {cursor!r} is not one this server handed out") from None
    if not decoded.startswith("r_"):
        raise BadCursor(f"cursor {cursor!r} is not one this server handed out")
    return decoded


class RatingService:
    """Create, read, change and delete ratings; summaries and rankings."""

    def __init__(
        self,
        store: RatingStore,
        settings: RatingsSettings,
        cache: SummaryCache | None = None,
        *,
        after_commit: Sequence[EventHandler] = (),
    ) -> None:
        """``after_commit``: called in order with every event this service commits, right
        after the commit and before the request is answered (the delivery path: see
        ratewire.runtime.delivery)."""
        self.store = store
        self._settings = settings
        #: Summaries and top games from memory (None: every read goes to the store).
        self.cache = cache
        steps = tuple(after_commit)
        if cache is not None:
            # Before the rest, and before the 2xx: a read after the write sees it.
            steps = (lambda event: cache.saw(event.game_id, event.game_offset), *steps)
        self._after_commit = steps

    def _committed(self, result: WriteResult, began: float) -> WriteResult:
        """Run the after-commit steps on ``result``'s event, which learns ``began`` (when the
        write was taken, for the commit stage's timing)."""
        if result.event is not None:
            event = replace(result.event, began_at=began)
            for step in self._after_commit:
                step(event)
        return result

    @staticmethod
    def _check_owner(principal: Principal, user_id: str) -> None:
        if principal.read_only:
            raise Forbidden(
                f"the token of user {principal.sub!r} is read-only (scope ratings:read): "
                "writing ratings needs a token without it, or with scope ratings:write"
            )
        if not principal.may_write_for(user_id):
            raise Forbidden(
                f"token of user {principal.sub!r} may not write ratings of user {user_id!r} "
                "(needs scope ratings:admin or ratings:write:any)"
            )

    async def _check_owner_of(self, principal: Principal, rating_id: str) -> None:
        """:meth:`_check_owner` for the owner of a stored rating (:class:`NotFound` if none)."""
        self._check_owner(principal, (await self.store.get(rating_id)).user_id)

    async def create(
        self, principal: Principal, draft: RatingDraft, audit: AuditContext | None = None
    ) -> WriteResult:
        self._check_owner(principal, draft.user_id)
        began = time.time()
        return self._committed(await self.store.create(draft, utc_now(), audit), began)

    async def upsert(
        self,
        principal: Principal,
        draft: RatingDraft,
        expected_version: int | None,
        audit: AuditContext | None = None,
    ) -> WriteResult:
        self._check_owner(principal, draft.user_id)
        began = time.time()
        written = await self.store.upsert(draft, expected_version, utc_now(), audit)
        return self._committed(written, began)

    async def get(self, rating_id: str) -> Rating:
        return await self.store.get(rating_id)

    async def update(
        self,
        principal: Principal,
        rating_id: str,
        changes: RatingChanges,
        expected_version: int | None,
        audit: AuditContext | None = None,
    ) -> WriteResult:
        await self._check_owner_of(principal, rating_id)
        began = time.time()
        written = await self.store.update(rating_id, changes, expected_version, utc_now(), audit)
        return self._committed(written, began)

    async def delete(
        self,
        principal: Principal,
        rating_id: str,
        expected_version: int | None,
        audit: AuditContext | None = None,
    ) -> WriteResult:
        await self._check_owner_of(principal, rating_id)
        began = time.time()
        written = await self.store.delete(rating_id, expected_version, utc_now(), audit)
        return self._committed(written, began)

    async def list_ratings(
        self, game_id: str | None, user_id: str | None, limit: int, cursor: str | None
    ) -> RatingPage:
        before = decode_cursor(cursor) if cursor else None
        items = await self.store.list_ratings(game_id, user_id, limit + 1, before)
        more = len(items) > limit
        items = items[:limit]
        return RatingPage(items, encode_cursor(items[-1].id) if more else None)

    async def summary(self, game_id: str) -> GameSummary:
        if self.cache is None:
            return await self.store.summary(game_id)
        return await self.cache.summary(game_id, self.store.summary)

    def summary_wire(self, summary: GameSummary) -> dict[str, object]:
        """The summary as sent over REST and in WebSocket snapshots."""
        return summary.to_wire(
            self._settings.bayesian_prior_mean, self._settings.bayesian_prior_weight
        )

    async def top_games(self, limit: int, min_count: int) -> list[GameSummary]:
        def read() -> Awaitable[list[GameSummary]]:
            return self.store.top_games(
                limit,
                min_count,
                self._settings.bayesian_prior_mean,
                self._settings.bayesian_prior_weight,
            )

        if self.cache is None:
            return await read()
        return await self.cache.top_games((limit, min_count), read)
