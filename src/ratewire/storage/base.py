"""The ``RatingStore`` protocol every backend implements, and the errors it raises.

A store owns the things that change together in one transaction per write: the rating row,
its game's summary counters, the change's event (the outbox) with its offset on each of the
three topics, and (with the audit log on) the change's audit entry. The event log doubles as
each topic's history on a single node.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from ratewire.audit import AuditChain, AuditContext, AuditEntry, AuditQuery, AuditRecord
from ratewire.audit.entry import AuditHead
from ratewire.audit.store import AuditStoreError
from ratewire.domain import GameSummary, Rating, RatingChanges, RatingDraft, RatingEvent, Topic
from ratewire.security.revocation import Revocation
from ratewire.storage.consumer_store import ConsumerStore
from ratewire.storage.webhook_store import WebhookStore


class StorageError(AuditStoreError):
    """Base of every error a store raises on purpose (an :class:`AuditStoreError` too: the
    store keeps the audit chain)."""


class NotFound(StorageError):
    """No rating with that id."""

    def __init__(self, rating_id: str) -> None:
        super().__init__(f"rating {rating_id!r} not found")
        self.rating_id = rating_id


class AlreadyExists(StorageError):
    """A rating for that (game_id, user_id) exists already."""

    def __init__(self, game_id: str, user_id: str, existing_id: str | None) -> None:
        super().__init__(f"user {user_id!r} has already rated game {game_id!r}")
        self.game_id, self.user_id, self.existing_id = game_id, user_id, existing_id


class VersionMismatch(StorageError):
    """``If-Match`` named a version that is not the current one."""

    def __init__(self, rating_id: str, expected: int, current: int | None) -> None:
        super().__init__(f"rating {rating_id!r} is at version {current}, not {expected}")
        self.rating_id, self.expected, self.current = rating_id, expected, current


class StorageUnavailable(StorageError):
    """The backend cannot be reached."""


@dataclass(frozen=True, slots=True)
class WriteResult:
    """A write's outcome; ``event`` is None when the write changed nothing (a repeat)."""

    rating: Rating
    event: RatingEvent | None
    created: bool = False


class RatingStore(Protocol):
    """Storage of ratings, summaries and the event log. Every method is safe to call
    concurrently; writes are atomic and their events get gapless per-topic offsets in commit
    order."""

    @property
    def webhooks(self) -> WebhookStore:
        """The webhooks and their cursors, kept in the same database (ratewire.webhooks)."""

    @property
    def consumers(self) -> ConsumerStore:
        """The durable consumers' positions and claims, in the same database
        (ratewire.services.consumers)."""

    #: Identifies this store's history; changes only if the history was lost (a new database).
    epoch: str

    async def start(self) -> None:
        """Connect, and create or migrate the schema."""

    async def close(self) -> None:
        """Release connections."""

    async def ping(self) -> None:
        """Raise :class:`StorageUnavailable` if the backend does not answer."""

    async def create(
        self, draft: RatingDraft, now: datetime, audit: AuditContext | None = None
    ) -> WriteResult:
        """Store a new rating; :class:`AlreadyExists` if (game, user) has one."""

    async def upsert(
        self,
        draft: RatingDraft,
        expected_version: int | None,
        now: datetime,
        audit: AuditContext | None = None,
    ) -> WriteResult:
        """Create or replace the (game, user) rating; ``created`` tells which."""

    async def get(self, rating_id: str) -> Rating:
        """The rating, or :class:`NotFound`."""

    async def update(
        self,
        rating_id: str,
        changes: RatingChanges,
        expected_version: int | None,
        now: datetime,
        audit: AuditContext | None = None,
    ) -> WriteResult:
        """Apply ``changes``; :class:`NotFound` / :class:`VersionMismatch`."""

    async def delete(
        self,
        rating_id: str,
        expected_version: int | None,
        now: datetime,
        audit: AuditContext | None = None,
    ) -> WriteResult:
        """Remove the rating; the event carries it as it was."""

    async def list_ratings(
        self, game_id: str | None, user_id: str | None, limit: int, before_id: str | None
    ) -> list[Rating]:
        """Up to ``limit`` ratings, newest (highest id) first, with ids below ``before_id``."""

    async def summary(self, game_id: str) -> GameSummary:
        """The game's counters (all zero for a game nobody rated)."""

    async def top_games(
        self, limit: int, min_count: int, prior_mean: float, prior_weight: float
    ) -> list[GameSummary]:
        """Games with at least ``min_count`` ratings, best Bayesian mean first."""

    async def events_after(self, seq: int, limit: int) -> list[RatingEvent]:
        """Events with ``seq`` above ``seq``, in order (what the relay reads)."""

    async def topic_events(self, topic: Topic, since: int, limit: int) -> list[RatingEvent]:
        """The topic's retained events with offset above ``since``, in offset order."""

    async def topic_head(self, topic: Topic) -> int:
        """The topic's last offset (0 if it never had an event)."""

    async def topic_position(self, topic: Topic) -> tuple[int, int]:
        """(the topic's last offset, the global last offset), read at one instant: every event
        up to that topic offset has a ``seq`` at or below the global one."""

    async def prune_history(self, keep_per_topic: int, older_than: datetime) -> int:
        """Drop events that are older than ``older_than`` or outside the last ``keep_per_topic``
        of every topic they belong to; returns how many went."""

    async def add_revocation(
        self, revocation: Revocation, audit: AuditContext | None = None
    ) -> None:
        """Keep ``revocation``, replacing an entry of the same kind and value (and record it in
        the audit log, in the same transaction)."""

    async def revocations(self, now: float) -> list[Revocation]:
        """The entries still in force at ``now`` (UNIX seconds). Expired entries are never
        returned (and deleted when the next one is added)."""

    def use_audit(self, chain: AuditChain | None) -> None:
        """Record every change in the audit log, sealed with ``chain`` (None: no audit log)."""

    def observe_commits(self, observe: Callable[[str, float], None]) -> None:
        """Report the parts of each write's commit as ``observe(part, seconds)``
        (``commit_queue``, ``commit_transaction``, ``commit_wake``), where the store has them:
        the SQL stores' group commit; the others report nothing."""

    async def append_audit(self, records: Sequence[AuditRecord]) -> None:
        """Append ``records`` to the audit chain, in order, in one transaction."""

    async def audit_entries(self, query: AuditQuery) -> list[AuditEntry]:
        """Audit entries matching ``query``, newest first unless ``query.oldest_first``."""

    async def audit_head(self) -> AuditHead:
        """The chain's last entry and its pruning checkpoint."""

    async def prune_audit(self, older_than_ms: int, record: AuditRecord) -> int:
        """Drop entries older than ``older_than_ms`` (epoch ms), keeping the chain verifiable:
        the last dropped entry becomes the checkpoint, recorded as ``record`` (action
        ``audit.pruned``) with ``throughSeq``/``throughMac`` added. Returns how many went."""
