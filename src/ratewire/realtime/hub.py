"""Topic -> subscribers, and the fan-out of each published event.

A subscription starts *pending*: frames for its topic are buffered while the session reads
history (snapshot, head or replay) from the store. It goes *live* once the hub has published
every event that history read could have seen (``published_seq >= min_seq``); buffered frames
at or below the point history reached are dropped then. So a subscriber never sees a gap or a
duplicate, and live delivery needs no per-subscriber offset check.

At that moment every event up to the subscription's starting offset has been published, so the
hub knows the topic's last published offset exactly; it keeps it while the topic has
subscribers. The next subscribe to that topic starts there and goes live at once, without
reading the store (10,000 subscribers of one game cost one read, not 10,000).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from ratewire.domain import (
    GAME_WILDCARD,
    GLOBAL_TOPIC,
    RatingEvent,
    TopicKind,
    game_topic,
    parse_topic,
    user_topic,
)
from ratewire.realtime import frames

log = logging.getLogger("ratewire.hub")


class Subscriber(Protocol):
    """What the hub needs of a connection: a non-blocking send of one encoded frame."""

    def send(self, frame: bytes) -> None: ...


@dataclass(slots=True)
class _Pending:
    buffer: list[tuple[int, int, bytes]] = field(default_factory=list)  # (seq, offset, frame)
    ready: bool = False
    after_offset: int = 0
    min_seq: int = 0


class Hub:
    """Delivers each published event to the subscribers of its three topics (and of
    ``rating.game.*`` for game topics), encoding it once per topic."""

    def __init__(self) -> None:
        self._live: dict[str, set[Subscriber]] = {}
        self._pending: dict[str, dict[Subscriber, _Pending]] = {}
        self._waiting: set[tuple[str, Subscriber]] = set()
        self._heads: dict[str, int] = {}  # last published offset, for topics with subscribers
        #: The ``seq`` of the last event published; history reads compare against it.
        self.published_seq = 0
        self.deliveries = 0
        #: Wall-clock times of the last published event (see publish()).
        self.encoded_at = self.first_write_at = self.last_write_at = 0.0

    # -- subscription lifecycle ------------------------------------------------------------

    def begin(self, topic: str, subscriber: Subscriber) -> None:
        """Start buffering ``topic`` for ``subscriber`` (before reading its history)."""
        self._pending.setdefault(topic, {})[subscriber] = _Pending()

    def ready(self, topic: str, subscriber: Subscriber, after_offset: int, min_seq: int) -> None:
        """History reached ``after_offset`` (read when the store's global head was ``min_seq``):
        go live as soon as the hub has published up to ``min_seq``."""
        pending = self._pending.get(topic, {}).get(subscriber)
        if pending is None:
            return
        pending.ready, pending.after_offset, pending.min_seq = True, after_offset, min_seq
        if self.published_seq >= min_seq:
            self._promote(topic, subscriber)
        else:
            self._waiting.add((topic, subscriber))

    def known_head(self, topic: str) -> int | None:
        """The topic's last published offset, if the hub tracks it (the topic has subscribers)."""
        return self._heads.get(topic)

    def drop(self, topic: str, subscriber: Subscriber) -> None:
        """Stop delivering ``topic`` to ``subscriber`` (unsubscribe, close)."""
        live = self._live.get(topic)
        if live is not None:
            live.discard(subscriber)
            if not live:
                del self._live[topic]
        pending = self._pending.get(topic)
        if pending is not None and pending.pop(subscriber, None) is not None:
            self._waiting.discard((topic, subscriber))
            if not pending:
                del self._pending[topic]
        if topic not in self._live and topic not in self._pending:
            self._heads.pop(topic, None)

    def subscriber_count(self, topic: str) -> int:
        return len(self._live.get(topic, ())) + len(self._pending.get(topic, ()))

    def subscriptions_by_kind(self) -> dict[str, int]:
        """Subscriptions held, by topic kind (O(topics): for /metrics, not the hot path)."""
        counts = dict.fromkeys((kind.value for kind in TopicKind), 0)
        for held in (self._live, self._pending):
            for topic, subscribers in held.items():
                parsed = parse_topic(topic)
                if parsed is not None:
                    counts[parsed.kind.value] += len(subscribers)
        return counts

    def _promote(self, topic: str, subscriber: Subscriber) -> None:
        pending = self._pending[topic].pop(subscriber)
        if not self._pending[topic]:
            del self._pending[topic]
        self._waiting.discard((topic, subscriber))
        wildcard = topic == GAME_WILDCARD
        last = pending.after_offset
        for seq, offset, frame in pending.buffer:
            if (seq > pending.min_seq) if wildcard else (offset > pending.after_offset):
                subscriber.send(frame)
                last = offset
        self._live.setdefault(topic, set()).add(subscriber)
        if not wildcard:
            self._heads.setdefault(topic, last)

    # -- fan-out ---------------------------------------------------------------------------

    def _write(self, topic: str, subscribers: tuple[Subscriber, ...], frame: bytes) -> None:
        """Hand ``frame`` to every subscriber. Per delivery this is one call and nothing else:
        the count is kept per topic, and the error handling costs nothing until a send raises."""
        remaining = iter(subscribers)
        failed = 0
        while True:
            try:
                for subscriber in remaining:
                    subscriber.send(frame)
            except Exception:
                # A failing peer must not stop the loop: the relay would publish the event
                # again and every subscriber before it would get it twice. The loop variable
                # is the one that raised; the iterator goes on after it.
                log.exception("dropping a subscriber of %s whose send failed", topic)
                self.drop(topic, subscriber)
                self.drop(GAME_WILDCARD, subscriber)  # for a game topic, it may be there
                failed += 1
                continue
            break
        self.deliveries += len(subscribers) - failed

    def publish(self, event: RatingEvent) -> None:
        """Deliver ``event`` on its three topics. Never awaits: a slow subscriber's send only
        grows its own buffer (and is cut when that overflows).

        Afterwards ``encoded_at``, ``first_write_at`` and ``last_write_at`` hold when (wall
        clock) its first frame was ready and its first and last socket writes returned
        (``encoded_at`` 0: nobody here wanted it); read once per event for the latency budget."""
        data: bytes | None = None
        encoded_at = first_write_at = 0.0
        game = game_topic(event.game_id)
        for topic, offset in (
            (GLOBAL_TOPIC, event.seq),
            (game, event.game_offset),
            (user_topic(event.user_id), event.user_offset),
        ):
            if topic in self._heads:
                self._heads[topic] = offset
            live = self._live.get(topic)
            pending = self._pending.get(topic)
            wild_live = wild_pending = None
            if topic is game:
                wild_live = self._live.get(GAME_WILDCARD)
                wild_pending = self._pending.get(GAME_WILDCARD)
            if not (live or pending or wild_live or wild_pending):
                continue
            if data is None:
                data = orjson.dumps(event.data)
            frame = frames.rating_update(topic, offset, event.kind, data)
            # Over copies: a send may lead to the subscriber being dropped (4009).
            targets = tuple(live) if live else ()
            if wild_live:
                targets += tuple(wild_live - live) if live else tuple(wild_live)
            if targets:
                if not first_write_at:
                    # The first write of the event, timed on its own (once per event).
                    encoded_at = time.time()
                    self._write(topic, targets[:1], frame)
                    first_write_at = time.time()
                    targets = targets[1:]
                self._write(topic, targets, frame)
            for buffered in (pending, wild_pending):
                if buffered:
                    for entry in buffered.values():
                        entry.buffer.append((event.seq, offset, frame))
        self.encoded_at = encoded_at
        self.first_write_at = first_write_at
        self.last_write_at = time.time() if first_write_at else 0.0
        self.published_seq = event.seq
        if self._waiting:
            for topic, subscriber in tuple(self._waiting):
                waiting = self._pending.get(topic, {}).get(subscriber)
                if waiting is not None and self.published_seq >= waiting.min_seq:
                    self._promote(topic, subscriber)
