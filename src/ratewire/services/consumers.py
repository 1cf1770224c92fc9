"""Durable consumers (docs/protocol.md, "Durable consumers"): a named position on one topic,
owned by a token's ``sub``, whose members (WebSocket connections, REST callers) share the
work.

The position lives in the database (:mod:`ratewire.storage.consumer_store`), the events in the
topic's history every store already serves, so one mechanism works in every deployment: a
single SQLite node as a cluster of instances sharing PostgreSQL. This instance only moves
events from the history to its own members:

- every delivery on this instance (:meth:`ConsumerService.notify`, from
  :meth:`~ratewire.runtime.delivery.Delivery.deliver_batch`) wakes one pump task, and so does
  an ack, a member joining or leaving, and a timer (claims that came due on another instance,
  or ``ackWaitMs`` passing here, are looked for every quarter of ``ackWaitMs``, between
  :data:`POLL_SECONDS` and :data:`MAX_POLL_SECONDS`: each look is a write, which an idle
  consumer should not cost every second);
- the pump asks the store to claim offsets for each local member with room (fewest unacked
  first, ties in turn), a fair share each, and sends them; the store's claim is atomic, so
  members on two instances never hold the same offset;
- a member that leaves releases its claims (they go to another member at once); one whose
  instance died keeps them until ``ackWaitMs`` passes.

Every event goes through :func:`wanted` first: the consumer's filter (fixed at creation) is
applied there, and an event it filters out counts as acked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from ratewire.audit import AuditContext
from ratewire.audit.log import AuditLog
from ratewire.domain import RatingEvent, Topic, event_offset, parse_topic
from ratewire.domain.filters import BadFilter, compile_filter, subscription_filter
from ratewire.storage.base import RatingStore
from ratewire.storage.consumer_store import AckOutcome, Claim, Consumer, ConsumerKey

log = logging.getLogger("ratewire.consumers")

DEFAULT_ACK_WAIT_MS = 30_000
DEFAULT_MAX_IN_FLIGHT = 100
ACK_WAIT_RANGE = (100, 24 * 3600 * 1000)
MAX_IN_FLIGHT_RANGE = (1, 10_000)
#: Offsets one ack may carry (one frame or request acks a batch; see docs/protocol.md).
MAX_ACK_OFFSETS = 1000
#: How often claims that came due (an ``ackWaitMs`` passed, here or on another instance) are
#: looked for when nothing else wakes the pump.
POLL_SECONDS = 1.0
MAX_POLL_SECONDS = 5.0
#: How often the lag and pending counts /metrics shows are read again.
STATS_SECONDS = 5.0
#: How often a waiting REST fetch looks whether its caller hung up.
GONE_CHECK_SECONDS = 0.5
NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class ConsumerError(Exception):
    """Base of the refusals a caller is told about; the text names the input."""


class InvalidConsumer(ConsumerError):
    """A bad name, topic or setting."""


class UnknownConsumer(ConsumerError):
    """No consumer with that (sub, name, topic)."""


def now_ms() -> int:
    return int(time.time() * 1000)


def wanted(consumer: Consumer, event: RatingEvent, topic: str, offset: int) -> bool:
    """Whether ``consumer``'s filter lets ``event`` (at ``offset`` of ``topic``) through. Every
    event a consumer delivers is asked here, and only here; one filtered out is acked without
    being sent. The expression was checked at creation; compiling it again is a cache hit
    (domain.filters keeps the last ones), and one that no longer compiles passes nothing, as a
    filter that fails to evaluate does."""
    if consumer.filter is None:
        return True
    try:
        event_filter = compile_filter(consumer.filter)
    except BadFilter:
        return False
    return event_filter.matches(event.kind, topic, offset, event.data)


@dataclass(frozen=True, slots=True)
class Delivered:
    """One event handed to a member."""

    offset: int
    delivery: int
    event: RatingEvent

    def wire(self, topic: str, consumer: str) -> dict[str, object]:
        """The ``rating_update`` object with ``consumer`` and ``delivery`` (REST, MCP)."""
        return {
            "type": "rating_update",
            "topic": topic,
            "offset": self.offset,
            "event": self.event.kind,
            "data": self.event.data,
            "consumer": consumer,
            "delivery": self.delivery,
        }

    def frame(self, topic: str, consumer: str) -> bytes:
        """The same as a WebSocket frame."""
        return orjson.dumps(self.wire(topic, consumer))


class Member(Protocol):
    """One member of a consumer on this instance."""

    @property
    def member_id(self) -> str: ...

    def spare(self, now: int) -> int:
        """How many more events it may hold now (``maxInFlight`` minus unexpired unacked)."""

    def unacked(self, now: int) -> int:
        """Events it holds, not acked, not expired."""

    def deliver(self, consumer: Consumer, items: Sequence[Delivered], now: int) -> None:
        """Send ``items`` (claimed for it until ``now + ackWaitMs``)."""


@dataclass(frozen=True, slots=True)
class Opened:
    """A consumer as a member joins it: whether this made it, and whether history still
    reaches its floor (else ``first_offset`` is the first it can deliver)."""

    consumer: Consumer
    created: bool
    head: int
    recovered: bool
    first_offset: int


@dataclass(slots=True)
class _Group:
    """The members of one consumer on this instance."""

    consumer: Consumer
    topic: Topic
    members: list[Member] = field(default_factory=list)
    #: The consumer's cursor as last seen: nothing new to claim while the head is at it.
    cursor: int = 0
    #: When the store is asked again for claims that came due (epoch ms).
    next_poll: int = 0
    #: Rotates the member order, so members with equal load take turns.
    turn: int = 0
    #: (lag, pending) as last read for /metrics.
    stats: tuple[int, int] = (0, 0)


class ConsumerService:
    """The consumers of this instance: opens them, runs the pump that feeds local members,
    and serves acks, REST fetches and reads."""

    def __init__(
        self, store: RatingStore, *, retention_days: float = 7.0, audit: AuditLog | None = None
    ) -> None:
        self._history = store
        self._audit = audit
        self._store = store.consumers
        self._retention_ms = int(retention_days * 86_400_000)
        self._groups: dict[ConsumerKey, _Group] = {}
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._releases: set[asyncio.Task[None]] = set()

    # -- the pump ----------------------------------------------------------------------------

    def notify(self, *_: object) -> None:
        """Events were delivered on this instance: wake the pump (O(1): the hot path calls
        it once per batch)."""
        self._wake.set()

    def start(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(self._run(), name="consumers")

    async def stop(self) -> None:
        """Stop the pump; the closed connections' claims are released first (the caller
        bounds how long that may take), so other instances' members take them at once."""
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner
        for task in list(self._releases):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _run(self) -> None:
        last_retention = last_stats = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)
            self._wake.clear()
            for key, group in list(self._groups.items()):
                try:
                    await self._pump(group)
                except Exception as exc:  # the store is unreachable: try again on the next pass
                    log.warning("consumer %s on %s: %s", key.name, key.topic, exc)
            if time.monotonic() - last_stats > STATS_SECONDS:
                last_stats = time.monotonic()
                with contextlib.suppress(Exception):
                    await self._read_stats()
            if self._retention_ms and time.monotonic() - last_retention > 3600:
                last_retention = time.monotonic()
                with contextlib.suppress(Exception):
                    await self.remove_idle()

    async def _pump(self, group: _Group) -> None:
        now = now_ms()
        ready = [m for m in group.members if m.spare(now) > 0]
        if not ready:
            return
        head = await self._history.topic_head(group.topic)
        if head <= group.cursor and now < group.next_poll:
            return  # nothing new here, and not time to look for claims that came due
        every = group.consumer.ack_wait_ms // 4
        group.next_poll = now + min(
            max(every, int(POLL_SECONDS * 1000)), int(MAX_POLL_SECONDS * 1000)
        )
        group.turn += 1
        shift = group.turn % len(ready)
        ready = ready[shift:] + ready[:shift]
        ready.sort(key=lambda m: m.unacked(now))  # fewest unacked first; stable: in turn
        more = False
        for member in ready:
            spare = member.spare(now)
            backlog = head - group.cursor
            # New events are split fairly; with none, claims that came due go to whoever has
            # room (there is no telling how many there are).
            share = (
                spare
                if len(ready) == 1 or backlog <= 0
                else min(spare, math.ceil(backlog / len(ready)))
            )
            if share <= 0:
                continue  # it closed meanwhile
            claims, group.cursor = await self._store.claim(
                group.consumer.key, member.member_id, share, head, now
            )
            if not claims and group.cursor < head:
                # A live consumer's cursor reaches the head when nothing is held back: this
                # one was deleted (DELETE /consumers, retention). Its members get nothing more
                # (an ack answers that there is no such consumer; subscribing creates it anew).
                self._groups.pop(group.consumer.key, None)
                return
            if not claims:
                break
            # New events left, or as many due claims as asked: there may be more, so another
            # pass follows at once (members' room changed since this one began).
            more = more or group.cursor < head or (backlog <= 0 and len(claims) == share)
            items = await self._events(group, claims, now)
            if items and member in group.members:
                member.deliver(group.consumer, items, now)
            elif items:  # it left while the claim was made: another member takes them now
                await self._store.release(group.consumer.key, member.member_id)
                more = True
        if more:
            group.next_poll = 0
            self._wake.set()

    async def _events(self, group: _Group, claims: list[Claim], now: int) -> list[Delivered]:
        """The claimed offsets' events (contiguous runs read at once). Offsets history no
        longer holds, and events the filter leaves out, are acked at once."""
        by_offset: dict[int, RatingEvent] = {}
        start = 0
        while start < len(claims):
            end = start
            while end + 1 < len(claims) and claims[end + 1].offset == claims[end].offset + 1:
                end += 1
            first = claims[start].offset
            for event in await self._history.topic_events(group.topic, first - 1, end - start + 1):
                by_offset[event_offset(event, group.topic)] = event
            start = end + 1
        items: list[Delivered] = []
        skipped: list[int] = []
        for claim in claims:
            found = by_offset.get(claim.offset)
            if found is None or not wanted(group.consumer, found, group.topic.name, claim.offset):
                skipped.append(claim.offset)
            else:
                items.append(Delivered(claim.offset, claim.delivery, found))
        if skipped:
            await self._store.ack(group.consumer.key, skipped, now)
        return items

    # -- members -------------------------------------------------------------------------------

    async def open(
        self,
        key: ConsumerKey,
        *,
        since: int | None = None,
        ack_wait_ms: int | None = None,
        max_in_flight: int | None = None,
        event_filter: str | None = None,
        context: AuditContext | None = None,
    ) -> Opened:
        """The consumer ``key``, created if new (recorded in the audit log as
        ``consumer.create``, with ``context``): after ``since`` or, without it, at the topic's
        head. An existing one keeps its own position and settings (``since`` is ignored)."""
        topic = check_key(key)
        check_settings(ack_wait_ms, max_in_flight)
        try:  # its length, its fields and its cost, as for any subscription's filter
            subscription_filter(event_filter, topic.name)
        except BadFilter as exc:
            raise InvalidConsumer(f"filter: {exc.message}") from None
        head = await self._history.topic_head(topic)
        start = head if since is None else min(since, head)
        now = now_ms()
        consumer, created = await self._store.create(
            Consumer(
                key=key,
                ack_floor=start,
                cursor=start,
                ack_wait_ms=ack_wait_ms or DEFAULT_ACK_WAIT_MS,
                max_in_flight=max_in_flight or DEFAULT_MAX_IN_FLIGHT,
                created_at=now,
                active_at=now,
                filter=event_filter,
            )
        )
        if created and self._audit is not None:
            self._audit.record(
                "consumer.create",
                context,
                name=key.name,
                topic=key.topic,
                ackFloor=consumer.ack_floor,
                ackWaitMs=consumer.ack_wait_ms,
                maxInFlight=consumer.max_in_flight,
                filter=consumer.filter,
            )
        recovered, first = True, consumer.ack_floor + 1
        if head > consumer.ack_floor:
            oldest = await self._history.topic_events(topic, consumer.ack_floor, 1)
            if not oldest or (first := event_offset(oldest[0], topic)) != consumer.ack_floor + 1:
                recovered, first = False, first if oldest else head + 1
        return Opened(consumer, created, head, recovered, first)

    def join(self, consumer: Consumer, member: Member) -> None:
        """``member`` takes part in ``consumer`` on this instance from now on."""
        group = self._groups.get(consumer.key)
        if group is None:
            topic = parse_topic(consumer.key.topic)
            assert topic is not None  # open() checked it
            group = self._groups[consumer.key] = _Group(consumer, topic, cursor=consumer.cursor)
        group.members.append(member)
        group.next_poll = 0
        self._wake.set()

    def leave(self, key: ConsumerKey, member: Member, *, release: bool = True) -> None:
        """``member`` is gone: its claims go to the other members at once (``release``), or
        after ``ackWaitMs`` (a REST caller's, which may still ack them)."""
        group = self._groups.get(key)
        if group is not None and member in group.members:
            group.members.remove(member)
            if not group.members:
                del self._groups[key]
        if release:
            task = asyncio.get_running_loop().create_task(self._release(key, member.member_id))
            self._releases.add(task)
            task.add_done_callback(self._releases.discard)

    async def _release(self, key: ConsumerKey, member_id: str) -> None:
        try:
            await self._store.release(key, member_id)
        except Exception as exc:  # they come due after ackWaitMs instead
            log.warning("releasing %s's claims on %s: %s", member_id, key.name, exc)
        group = self._groups.get(key)
        if group is not None:
            group.next_poll = 0
        self._wake.set()

    async def ack(self, key: ConsumerKey, offsets: Sequence[int]) -> AckOutcome:
        """Ack ``offsets`` of ``key`` (:class:`UnknownConsumer` if there is none)."""
        if len(offsets) > MAX_ACK_OFFSETS:
            raise InvalidConsumer(f"an ack carries at most {MAX_ACK_OFFSETS} offsets")
        outcome = await self._store.ack(key, offsets, now_ms())
        if not outcome.found:
            raise UnknownConsumer(f"no consumer {key.name!r} on {key.topic}")
        self._wake.set()  # the members that acked have room again
        return outcome

    async def fetch(
        self,
        opened: Opened,
        most: int,
        wait_ms: int,
        *,
        gone: Callable[[], Awaitable[bool]] | None = None,
    ) -> list[Delivered]:
        """Up to ``most`` events for a REST caller, waiting up to ``wait_ms`` for the first.
        ``gone`` tells whether the caller has hung up: a long-poll it left stops taking events
        (else they would wait ``ackWaitMs`` to go to someone who can take them)."""
        waiter = _Waiter(f"rest-{uuid.uuid4().hex[:16]}", most)
        consumer, key = opened.consumer, opened.consumer.key
        # What is there now is taken at once; only an empty answer waits for the pump.
        topic = check_key(key)
        now = now_ms()
        head = await self._history.topic_head(topic)
        claims, _ = await self._store.claim(key, waiter.member_id, most, head, now)
        if claims:
            items = await self._events(_Group(consumer, topic), claims, now)
            if items:
                return items
        if wait_ms <= 0:
            return []
        self.join(consumer, waiter)
        deadline = asyncio.get_running_loop().time() + wait_ms / 1000
        try:
            while not waiter.filled.is_set():
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(left, GONE_CHECK_SECONDS)):
                        await waiter.filled.wait()
                if not waiter.filled.is_set() and gone is not None and await gone():
                    break
        finally:
            self.leave(key, waiter, release=False)
            waiter.closed = True
        if waiter.items and gone is not None and await gone():
            self.leave(key, waiter)  # handed to a caller that left: to the others at once
            return []
        return waiter.items

    # -- reads ---------------------------------------------------------------------------------

    async def get(self, key: ConsumerKey) -> Consumer:
        consumer = await self._store.get(key)
        if consumer is None:
            raise UnknownConsumer(f"no consumer {key.name!r} on {key.topic}")
        return consumer

    async def status(self, consumer: Consumer) -> dict[str, object]:
        """What GET /consumers/{name} shows (``members``: those on this instance)."""
        topic = parse_topic(consumer.key.topic)
        assert topic is not None
        head = await self._history.topic_head(topic)
        group = self._groups.get(consumer.key)
        return {
            "name": consumer.key.name,
            "topic": consumer.key.topic,
            "ackFloor": consumer.ack_floor,
            "pending": consumer.pending,
            "lag": max(0, head - consumer.ack_floor),
            "members": len(group.members) if group is not None else 0,
            "ackWaitMs": consumer.ack_wait_ms,
            "maxInFlight": consumer.max_in_flight,
            "filter": consumer.filter,
            "createdAt": consumer.created_at,
            "activeAt": consumer.active_at,
        }

    async def owned_by(self, sub: str) -> list[Consumer]:
        return await self._store.owned_by(sub)

    async def remove(self, key: ConsumerKey, context: AuditContext | None = None) -> bool:
        """Delete ``key`` with its position (audit action ``consumer.delete``)."""
        removed = await self._store.remove(key)
        if removed and self._audit is not None:
            self._audit.record("consumer.delete", context, name=key.name, topic=key.topic)
        return removed

    async def remove_idle(self) -> list[ConsumerKey]:
        """Delete the consumers idle for longer than the retention (and not joined here)."""
        gone = await self._store.remove_idle(now_ms() - self._retention_ms)
        if gone:
            log.info("removed %d idle consumer(s)", len(gone))
        if self._audit is not None:
            for key in gone:
                self._audit.record(
                    "consumer.delete",
                    AuditContext(actor=key.sub),
                    name=key.name,
                    topic=key.topic,
                    reason="idle",
                )
        return gone

    async def _read_stats(self) -> None:
        for key, group in list(self._groups.items()):
            consumer = await self._store.get(key)
            if consumer is not None:
                head = await self._history.topic_head(group.topic)
                group.stats = (max(0, head - consumer.ack_floor), consumer.pending)

    def gauges(self) -> dict[tuple[str, str, str], tuple[int, int, int]]:
        """(owner, name, topic) -> (lag, pending, members here) of the consumers with members
        on this instance, as last read (for /metrics)."""
        return {
            (key.sub, key.name, key.topic): (*group.stats, len(group.members))
            for key, group in self._groups.items()
        }


@dataclass(eq=False, slots=True)
class _Waiter:
    """A REST fetch as a member for as long as it waits: filled by the first delivery."""

    member_id: str
    most: int
    items: list[Delivered] = field(default_factory=list)
    filled: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False

    def spare(self, now: int) -> int:
        return 0 if self.items or self.closed else self.most

    def unacked(self, now: int) -> int:
        return 0

    def deliver(self, consumer: Consumer, items: Sequence[Delivered], now: int) -> None:
        self.items.extend(items)
        self.filled.set()


def check_key(key: ConsumerKey) -> Topic:
    """The consumer's topic, or :class:`InvalidConsumer` naming what is wrong."""
    if not NAME.fullmatch(key.name):
        raise InvalidConsumer(
            f"consumer name {key.name[:80]!r} must be 1 to 64 of A-Z a-z 0-9 _ . -"
        )
    topic = parse_topic(key.topic)
    if topic is None or not topic.has_history:
        raise InvalidConsumer(
            f"a consumer follows a topic with offsets (rating.global, rating.game.{{id}}, "
            f"rating.user.{{id}}), not {key.topic[:80]!r}"
        )
    return topic


def check_settings(ack_wait_ms: int | None, max_in_flight: int | None) -> None:
    """:class:`InvalidConsumer` if a setting is out of range."""
    low, high = ACK_WAIT_RANGE
    if ack_wait_ms is not None and not low <= ack_wait_ms <= high:
        raise InvalidConsumer(f"ackWaitMs must be {low} to {high}, not {ack_wait_ms}")
    low, high = MAX_IN_FLIGHT_RANGE
    if max_in_flight is not None and not low <= max_in_flight <= high:
        raise InvalidConsumer(f"maxInFlight must be {low} to {high}, not {max_in_flight}")
