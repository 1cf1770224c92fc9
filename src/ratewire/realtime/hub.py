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

A subscription with a filter (domain.filters) is held apart from the plain ones, in a group per
topic and expression text: each event is tested once per group, whatever its size, and the
plain path pays one dict lookup per topic for it (none when no filter is held at all). While
pending, a filtered subscription buffers every frame of its topic with the non-matching ones
blanked, so promotion drops what history covered exactly as for a plain one and the topic's
head stays known; after promotion it receives only matching frames, without gap or duplicate
among them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import islice
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
from ratewire.domain.filters import EventFilter, FilterInput
from ratewire.realtime import frames

log = logging.getLogger("ratewire.hub")


class Subscriber(Protocol):
    """What the hub needs of a connection: non-blocking sends of encoded frames."""

    def send(self, frame: bytes) -> None:
        """Write one frame (its payload; the connection frames it)."""

    def send_frames(self, payloads: Sequence[bytes], framed: bytes) -> None:
        """Write several frames: ``framed`` is ``payloads`` as complete WebSocket text frames
        back to back (frames.websocket_text), for a connection that can write it in one call."""


@dataclass(slots=True)
class _Pending:
    # (seq, offset, frame); frame None: the event did not pass the subscription's filter.
    buffer: list[tuple[int, int, bytes | None]] = field(default_factory=list)
    ready: bool = False
    after_offset: int = 0
    min_seq: int = 0
    filter: EventFilter | None = None


@dataclass(slots=True)
class _FilterGroup:
    """The live subscribers of one topic that share one filter expression."""

    filter: EventFilter
    live: set[Subscriber] = field(default_factory=set)


class Hub:
    """Delivers each published event to the subscribers of its three topics (and of
    ``rating.game.*`` for game topics), encoding it once per topic."""

    def __init__(self) -> None:
        self._live: dict[str, set[Subscriber]] = {}
        self._pending: dict[str, dict[Subscriber, _Pending]] = {}
        self._waiting: set[tuple[str, Subscriber]] = set()
        self._heads: dict[str, int] = {}  # last published offset, for topics with subscribers
        #: topic -> filter expression -> its live subscribers (never in ``_live``).
        self._filtered: dict[str, dict[str, _FilterGroup]] = {}
        #: Filter evaluations made (one per event, topic and distinct expression).
        self.filter_evaluations = 0
        self._filter_input: FilterInput | None = None  # made on first use (imports CEL)
        self._loaded: RatingEvent | None = None  # the event loaded in _filter_input
        #: The ``seq`` of the last event published; history reads compare against it.
        self.published_seq = 0
        #: rating_update frames written (a write of three frames counts three).
        self.deliveries = 0
        #: Wall-clock times of the last published batch (see publish_batch()).
        self.encoded_at = self.first_write_at = self.last_write_at = 0.0

    # -- subscription lifecycle ------------------------------------------------------------

    def begin(self, topic: str, subscriber: Subscriber, filter: EventFilter | None = None) -> None:
        """Start buffering ``topic`` for ``subscriber`` (before reading its history); with a
        ``filter``, only the events it passes are delivered."""
        self._pending.setdefault(topic, {})[subscriber] = _Pending(filter=filter)

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
        groups = self._filtered.get(topic)
        if groups is not None:
            for source, group in tuple(groups.items()):
                group.live.discard(subscriber)
                if not group.live:
                    del groups[source]
            if not groups:
                del self._filtered[topic]
        if topic not in self._live and topic not in self._pending and topic not in self._filtered:
            self._heads.pop(topic, None)

    def subscriber_count(self, topic: str) -> int:
        filtered = sum(len(group.live) for group in self._filtered.get(topic, {}).values())
        return len(self._live.get(topic, ())) + len(self._pending.get(topic, ())) + filtered

    def filter_groups(self, topic: str) -> dict[str, int]:
        """Filter expression -> live subscribers holding it, on ``topic``."""
        return {source: len(g.live) for source, g in self._filtered.get(topic, {}).items()}

    def filter_group_count(self) -> int:
        """Distinct (topic, expression) pairs held by live filtered subscriptions."""
        return sum(len(groups) for groups in self._filtered.values())

    def subscriptions_by_kind(self) -> dict[str, int]:
        """Subscriptions held, by topic kind (O(topics): for /metrics, not the hot path)."""
        counts = dict.fromkeys((kind.value for kind in TopicKind), 0)
        for held in (self._live, self._pending):
            for topic, subscribers in held.items():
                parsed = parse_topic(topic)
                if parsed is not None:
                    counts[parsed.kind.value] += len(subscribers)
        for topic, groups in self._filtered.items():
            parsed = parse_topic(topic)
            if parsed is not None:
                counts[parsed.kind.value] += sum(len(group.live) for group in groups.values())
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
                if frame is not None:
                    subscriber.send(frame)
                last = offset
        if pending.filter is None:
            self._live.setdefault(topic, set()).add(subscriber)
        else:
            groups = self._filtered.setdefault(topic, {})
            group = groups.get(pending.filter.source)
            if group is None:
                group = groups[pending.filter.source] = _FilterGroup(pending.filter)
            group.live.add(subscriber)
        if not wildcard:
            self._heads.setdefault(topic, last)

    # -- fan-out ---------------------------------------------------------------------------

    def _write(
        self,
        topic: str,
        subscribers: tuple[Subscriber, ...],
        payloads: Sequence[bytes],
        framed: bytes | None = None,
        skip: int = 0,
    ) -> None:
        """Hand ``payloads`` to every subscriber after the first ``skip``: one ``send`` (a
        single frame, ``framed`` None) or one ``send_frames``. Per delivery this is that one
        call and nothing else (a method call in the loop: operator.methodcaller measured
        0.05-0.09 us slower): the count is kept per call, and the error handling costs
        nothing until a send raises."""
        remaining = islice(subscribers, skip, None)  # no copy of the tuple
        failed = 0
        frame = payloads[0]
        while True:
            try:
                if framed is None:
                    for subscriber in remaining:
                        subscriber.send(frame)
                else:
                    for subscriber in remaining:
                        subscriber.send_frames(payloads, framed)
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
        self.deliveries += (len(subscribers) - skip - failed) * len(payloads)

    def publish(self, event: RatingEvent) -> None:
        """Deliver ``event`` on its three topics (see :meth:`publish_batch`)."""
        self.publish_batch((event,))

    def publish_batch(self, events: Sequence[RatingEvent]) -> None:
        """Deliver ``events`` (consecutive, in ``seq`` order) on their topics. Never awaits: a
        slow subscriber's send only grows its own buffer (and is cut when that overflows).

        Each event is encoded once per topic. Each subscriber then gets one write per topic
        for the whole batch: under load, when a group commit hands over several events at
        once, the socket writes (the fan-out's real cost: a syscall each) drop by the batch's
        size.

        Afterwards ``encoded_at``, ``first_write_at`` and ``last_write_at`` hold when (wall
        clock) the frames were ready and the first and last socket writes returned
        (``encoded_at`` 0: nobody here wanted them); read once per batch for the latency
        budget."""
        live_frames: dict[str, list[bytes]] = {}  # topic -> its frames, in order
        wild_frames: list[tuple[str, bytes]] = []  # (game topic, frame) for rating.game.*
        wild_live = self._live.get(GAME_WILDCARD)
        wild_pending = self._pending.get(GAME_WILDCARD)
        filtered = self._filtered
        wild_groups = filtered.get(GAME_WILDCARD) if filtered else None
        # (topic, expression) -> the frames that passed it, in order.
        filtered_frames: dict[tuple[str, str], list[bytes]] = {}
        # rating.game.* expression -> the (game topic, frame) pairs that passed it.
        wild_filtered: dict[str, list[tuple[str, bytes]]] = {}
        for event in events:
            data: bytes | None = None
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
                wild = topic is game and (wild_live or wild_pending or wild_groups)
                groups = filtered.get(topic) if filtered else None
                if not (live or pending or wild or groups):
                    continue
                if data is None:
                    data = orjson.dumps(event.data)
                frame = frames.rating_update(topic, offset, event.kind, data)
                if live:
                    listed = live_frames.get(topic)
                    if listed is None:
                        live_frames[topic] = [frame]
                    else:
                        listed.append(frame)
                if wild and wild_live:
                    wild_frames.append((topic, frame))
                # Expression -> passed, for this event and topic; made only when a filter is
                # held here (the unfiltered path allocates nothing for filters).
                verdicts: dict[str, bool] | None = None
                if groups:
                    verdicts = {}
                    for source, group in groups.items():
                        if self._verdict(group.filter, event, topic, offset, verdicts):
                            filtered_frames.setdefault((topic, source), []).append(frame)
                if wild and wild_groups:
                    if verdicts is None:
                        verdicts = {}
                    # A wildcard frame is the game topic's own, so its verdicts are shared.
                    for source, group in wild_groups.items():
                        if self._verdict(group.filter, event, topic, offset, verdicts):
                            wild_filtered.setdefault(source, []).append((topic, frame))
                for buffered in (pending, wild_pending if wild else None):
                    if buffered:
                        for entry in buffered.values():
                            if entry.filter is None:
                                entry.buffer.append((event.seq, offset, frame))
                                continue
                            if verdicts is None:
                                verdicts = {}
                            passed = self._verdict(entry.filter, event, topic, offset, verdicts)
                            entry.buffer.append((event.seq, offset, frame if passed else None))
        self._loaded = None
        wanted = live_frames or wild_frames or filtered_frames or wild_filtered
        self.encoded_at = time.time() if wanted else 0.0
        first_write_at = 0.0
        for topic, topic_frames in live_frames.items():
            # Over a copy: a send may lead to the subscriber being dropped (4009).
            targets = tuple(self._live.get(topic, ()))
            first_write_at = self._deliver(topic, targets, topic_frames, first_write_at)
        if wild_frames and (wild_live := self._live.get(GAME_WILDCARD)):
            first_write_at = self._deliver_wildcard(wild_live, wild_frames, first_write_at)
        for (topic, source), group_frames in filtered_frames.items():
            sharing = self._filtered.get(topic, {}).get(source)
            if sharing is not None:
                targets = tuple(sharing.live)
                first_write_at = self._deliver(topic, targets, group_frames, first_write_at)
        for source, wild_passed in wild_filtered.items():
            sharing = self._filtered.get(GAME_WILDCARD, {}).get(source)
            if sharing is not None and sharing.live:
                first_write_at = self._deliver_wildcard(sharing.live, wild_passed, first_write_at)
        self.first_write_at = first_write_at
        self.last_write_at = time.time() if first_write_at else 0.0
        self.published_seq = events[-1].seq
        self._promote_waiting()

    def _verdict(
        self,
        event_filter: EventFilter,
        event: RatingEvent,
        topic: str,
        offset: int,
        verdicts: dict[str, bool],
    ) -> bool:
        """Whether ``event`` on ``topic`` passes ``event_filter``: evaluated once per event,
        topic and expression (``verdicts`` keeps them for this event and topic), on the one
        FilterInput the hub loads once per event."""
        passed = verdicts.get(event_filter.source)
        if passed is None:
            frame = self._filter_input
            if frame is None:
                frame = self._filter_input = FilterInput()
            if not verdicts:  # the first expression tested for this event and topic
                if self._loaded is not event:
                    frame.load(event.kind, event.data)
                    self._loaded = event
                frame.place(topic, offset)
            self.filter_evaluations += 1
            passed = verdicts[event_filter.source] = event_filter.test(frame)
        return passed

    def _deliver(
        self,
        topic: str,
        targets: tuple[Subscriber, ...],
        payloads: Sequence[bytes],
        first_write_at: float,
    ) -> float:
        """Write ``payloads`` to ``targets``; returns when the batch's first socket write
        returned (timed here, once per batch, if no earlier topic wrote)."""
        if not targets:
            return first_write_at
        framed = None
        if len(payloads) > 1:
            framed = b"".join([frames.websocket_text(payload) for payload in payloads])
        skip = 0
        if not first_write_at:
            self._write(topic, targets[:1], payloads, framed)
            first_write_at = time.time()
            skip = 1
        self._write(topic, targets, payloads, framed, skip)
        return first_write_at

    def _deliver_wildcard(
        self,
        wild_live: set[Subscriber],
        wild_frames: list[tuple[str, bytes]],
        first_write_at: float,
    ) -> float:
        """Write ``wild_frames`` ((game topic, frame) pairs) to the ``rating.game.*``
        subscribers ``wild_live`` (the plain ones, or one filter's group)."""
        # A rating.game.* subscriber that also follows one of these games (with or without a
        # filter) gets that game's frames there, once, as that subscription decides: it is
        # served frame by frame (rare); the others in one write.
        following = {topic: self._followers(topic) for topic, _ in wild_frames}
        overlap: set[Subscriber] = set()
        for followers in following.values():
            if followers:
                overlap |= wild_live & followers
        plain = tuple(wild_live - overlap) if overlap else tuple(wild_live)
        first_write_at = self._deliver(
            GAME_WILDCARD, plain, [frame for _, frame in wild_frames], first_write_at
        )
        for subscriber in tuple(overlap):
            for topic, frame in wild_frames:
                if subscriber not in following[topic]:
                    self._write(GAME_WILDCARD, (subscriber,), (frame,))
        return first_write_at

    def _followers(self, topic: str) -> set[Subscriber]:
        """The live subscribers of ``topic``, plain or filtered."""
        followers = self._live.get(topic, set())
        groups = self._filtered.get(topic)
        if groups:
            followers = followers.union(*(group.live for group in groups.values()))
        return followers

    def _promote_waiting(self) -> None:
        if self._waiting:
            for topic, subscriber in tuple(self._waiting):
                waiting = self._pending.get(topic, {}).get(subscriber)
                if waiting is not None and self.published_seq >= waiting.min_seq:
                    self._promote(topic, subscriber)
