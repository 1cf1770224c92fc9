"""In-memory store: the reference behaviour and the test double. Not durable.

Every method runs without awaiting in the middle, so on one event loop each write is atomic
without a lock.
"""

from __future__ import annotations

import bisect
import secrets
from collections.abc import Callable, Sequence
from datetime import datetime

from ratewire.audit import GENESIS, AuditChain, AuditContext, AuditEntry, AuditQuery, AuditRecord
from ratewire.audit.entry import AuditHead
from ratewire.audit.records import rating_audit_record, revocation_audit_record
from ratewire.domain import (
    GameSummary,
    Rating,
    RatingChanges,
    RatingDraft,
    RatingEvent,
    SummaryDelta,
    Topic,
    TopicKind,
    event_offset,
    game_topic,
    user_topic,
)
from ratewire.domain.rating import EventKind
from ratewire.domain.topics import GLOBAL_TOPIC
from ratewire.security.revocation import Revocation
from ratewire.storage.base import AlreadyExists, NotFound, VersionMismatch, WriteResult
from ratewire.storage.consumer_store import MemoryConsumerStore
from ratewire.storage.upsert import PairUpsert
from ratewire.storage.webhook_store import MemoryWebhookStore


class MemoryStore(PairUpsert):
    """A :class:`~ratewire.storage.base.RatingStore` in process memory."""

    #: One: nothing awaits between an upsert's look-up and its write, so it loses no race
    #: (and never gives up).
    upsert_attempts = 1
    upsert_gave_up = "rating {pair} kept changing"

    def __init__(self) -> None:
        self.epoch = secrets.token_hex(8)
        self.webhooks = MemoryWebhookStore()
        self.consumers = MemoryConsumerStore()
        self._ratings: dict[str, Rating] = {}
        self._by_pair: dict[tuple[str, str], str] = {}
        self._summaries: dict[str, GameSummary] = {}
        self._heads: dict[str, int] = {}
        self._events: list[RatingEvent] = []  # ordered by seq
        self._by_topic: dict[str, list[RatingEvent]] = {}  # ordered by that topic's offset
        self._revocations: dict[str, Revocation] = {}
        self._audit_chain: AuditChain | None = None
        self._audit_log: list[AuditEntry] = []
        self._audit_head = AuditHead(0, GENESIS, 0, GENESIS)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    # -- writes ---------------------------------------------------------------------------

    def _next(self, topic: str) -> int:
        offset = self._heads.get(topic, 0) + 1
        self._heads[topic] = offset
        return offset

    def _commit(
        self,
        kind: EventKind,
        old: Rating | None,
        new: Rating | None,
        now: datetime,
        audit: AuditContext | None,
    ) -> RatingEvent:
        current = new or old
        assert current is not None
        if new is None:
            del self._ratings[current.id]
            del self._by_pair[(current.game_id, current.user_id)]
        else:
            self._ratings[new.id] = new
            self._by_pair[(new.game_id, new.user_id)] = new.id
        game_offset = self._next(game_topic(current.game_id))
        delta = SummaryDelta.between(
            None if old is None else old.score, None if new is None else new.score
        )
        summary = self._summaries.get(current.game_id) or GameSummary.empty(current.game_id)
        self._summaries[current.game_id] = delta.applied_to(summary, game_offset)
        event = RatingEvent(
            seq=self._next(GLOBAL_TOPIC),
            kind=kind,
            game_id=current.game_id,
            user_id=current.user_id,
            game_offset=game_offset,
            user_offset=self._next(user_topic(current.user_id)),
            data=current.to_wire(),
            occurred_at=now,
        )
        self._events.append(event)
        for name in (GLOBAL_TOPIC, game_topic(event.game_id), user_topic(event.user_id)):
            self._by_topic.setdefault(name, []).append(event)
        self._audit([rating_audit_record(kind, old, new, now, event.seq, audit)])
        return event

    def _current(self, rating_id: str, expected_version: int | None) -> Rating:
        rating = self._ratings.get(rating_id)
        if rating is None:
            raise NotFound(rating_id)
        if expected_version is not None and expected_version != rating.version:
            raise VersionMismatch(rating_id, expected_version, rating.version)
        return rating

    async def create(
        self, draft: RatingDraft, now: datetime, audit: AuditContext | None = None
    ) -> WriteResult:
        existing = self._by_pair.get((draft.game_id, draft.user_id))
        if existing is not None:
            raise AlreadyExists(draft.game_id, draft.user_id, existing)
        rating = Rating.new(draft, now)
        return WriteResult(rating, self._commit("created", None, rating, now, audit), created=True)

    async def _pair_id(self, game_id: str, user_id: str) -> str | None:
        return self._by_pair.get((game_id, user_id))

    async def update(
        self,
        rating_id: str,
        changes: RatingChanges,
        expected_version: int | None,
        now: datetime,
        audit: AuditContext | None = None,
    ) -> WriteResult:
        old = self._current(rating_id, expected_version)
        new = changes.apply(old, now)
        if new is None:
            return WriteResult(old, None)
        return WriteResult(new, self._commit("updated", old, new, now, audit))

    async def delete(
        self,
        rating_id: str,
        expected_version: int | None,
        now: datetime,
        audit: AuditContext | None = None,
    ) -> WriteResult:
        old = self._current(rating_id, expected_version)
        return WriteResult(old, self._commit("deleted", old, None, now, audit))

    # -- reads ----------------------------------------------------------------------------

    async def get(self, rating_id: str) -> Rating:
        return self._current(rating_id, None)

    async def list_ratings(
        self, game_id: str | None, user_id: str | None, limit: int, before_id: str | None
    ) -> list[Rating]:
        page: list[Rating] = []
        for rating_id in sorted(self._ratings, reverse=True):
            if before_id is not None and rating_id >= before_id:
                continue
            rating = self._ratings[rating_id]
            if (game_id is None or rating.game_id == game_id) and (
                user_id is None or rating.user_id == user_id
            ):
                page.append(rating)
                if len(page) == limit:
                    break
        return page

    async def summary(self, game_id: str) -> GameSummary:
        return self._summaries.get(game_id) or GameSummary.empty(game_id)

    async def top_games(
        self, limit: int, min_count: int, prior_mean: float, prior_weight: float
    ) -> list[GameSummary]:
        eligible = [s for s in self._summaries.values() if s.count >= max(min_count, 1)]
        eligible.sort(key=lambda s: (-(s.bayesian_mean(prior_mean, prior_weight) or 0), s.game_id))
        return eligible[:limit]

    # -- event log ------------------------------------------------------------------------

    async def events_after(self, seq: int, limit: int) -> list[RatingEvent]:
        start = bisect.bisect_right(self._events, seq, key=lambda e: e.seq)
        return self._events[start : start + limit]

    async def topic_events(self, topic: Topic, since: int, limit: int) -> list[RatingEvent]:
        events = self._by_topic.get(topic.name, [])
        start = bisect.bisect_right(events, since, key=lambda e: event_offset(e, topic))
        return events[start : start + limit]

    async def topic_head(self, topic: Topic) -> int:
        if topic.kind is TopicKind.ALL_GAMES:
            return 0
        return self._heads.get(topic.name, 0)

    async def topic_position(self, topic: Topic) -> tuple[int, int]:
        return await self.topic_head(topic), self._heads.get(GLOBAL_TOPIC, 0)

    async def prune_history(self, keep_per_topic: int, older_than: datetime) -> int:
        def kept(event: RatingEvent) -> bool:
            if event.occurred_at < older_than:
                return False
            return (
                event.seq > self._heads[GLOBAL_TOPIC] - keep_per_topic
                or event.game_offset > self._heads[game_topic(event.game_id)] - keep_per_topic
                or event.user_offset > self._heads[user_topic(event.user_id)] - keep_per_topic
            )

        before = len(self._events)
        self._events = [e for e in self._events if kept(e)]
        for name, events in self._by_topic.items():
            self._by_topic[name] = [e for e in events if kept(e)]
        self._by_topic = {name: events for name, events in self._by_topic.items() if events}
        return before - len(self._events)

    # -- revocations ----------------------------------------------------------------------

    async def add_revocation(
        self, revocation: Revocation, audit: AuditContext | None = None
    ) -> None:
        self._revocations[revocation.key] = revocation
        self._audit([revocation_audit_record(revocation, audit)])

    async def revocations(self, now: float) -> list[Revocation]:
        for key in [k for k, entry in self._revocations.items() if entry.expires_at <= now]:
            del self._revocations[key]
        return list(self._revocations.values())

    # -- audit log ------------------------------------------------------------------------

    def use_audit(self, chain: AuditChain | None) -> None:
        self._audit_chain = chain

    def observe_commits(self, observe: Callable[[str, float], None]) -> None:
        """Nothing to report: a write here is a dict update."""

    def _audit(self, records: Sequence[AuditRecord]) -> None:
        chain = self._audit_chain
        if chain is None:
            return
        head = self._audit_head
        seq, mac = head.seq, head.mac
        for record in records:
            seq += 1
            entry = chain.seal(mac, seq, record)
            mac = entry.mac
            self._audit_log.append(entry)
        self._audit_head = AuditHead(seq, mac, head.pruned_seq, head.pruned_mac)

    async def append_audit(self, records: Sequence[AuditRecord]) -> None:
        self._audit(records)

    async def audit_entries(self, query: AuditQuery) -> list[AuditEntry]:
        ordered = self._audit_log if query.oldest_first else reversed(self._audit_log)
        found: list[AuditEntry] = []
        for entry in ordered:
            if query.matches(entry):
                found.append(entry)
                if len(found) == query.limit:
                    break
        return found

    async def audit_head(self) -> AuditHead:
        return self._audit_head

    async def prune_audit(self, older_than_ms: int, record: AuditRecord) -> int:
        old = [entry for entry in self._audit_log if entry.at_ms < older_than_ms]
        if self._audit_chain is None or not old:
            return 0
        through = old[-1]
        detail = {**record.detail, "throughSeq": through.seq, "throughMac": through.mac}
        self._audit([AuditRecord(record.action, record.at_ms, record.context, None, detail)])
        self._audit_log = [entry for entry in self._audit_log if entry.seq > through.seq]
        head = self._audit_head
        self._audit_head = AuditHead(head.seq, head.mac, through.seq, through.mac)
        return through.seq - head.pruned_seq


__all__ = ["MemoryStore"]
