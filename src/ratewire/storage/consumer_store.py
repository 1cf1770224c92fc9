"""Where durable consumers are kept: the :class:`ConsumerStore` protocol every storage backend
provides (``store.consumers``), and the in-memory one.

A consumer is a named position on one topic owned by a token's ``sub``; its members (WebSocket
connections and REST callers, on any instance) compete for its events. The store keeps, per
consumer, everything that must survive the process and be shared by every instance:

- ``ack_floor``: every offset at or below it is acked;
- ``cursor``: every offset at or below it has been claimed at least once (new work starts
  after it);
- the claims: each offset in (``ack_floor``, ``cursor``] that is not acked is held by one
  member until a deadline (``ackWaitMs`` after it was handed out), with its delivery count;
- the acked offsets above the floor (acks arrive out of order: the floor moves once the
  offsets right above it are acked).

So every offset in (``ack_floor``, ``cursor``] is either acked or claimed: none can be lost.
:meth:`ConsumerStore.claim` and :meth:`ConsumerStore.ack` are atomic in the store (one
transaction, or one Lua script), which is what keeps two members on two instances from
holding the same offset.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ConsumerKey:
    """A consumer's identity: the owner's token ``sub``, the consumer's name, its topic."""

    sub: str
    name: str
    topic: str


@dataclass(frozen=True, slots=True)
class Consumer:
    """One consumer's row (times in epoch ms)."""

    key: ConsumerKey
    ack_floor: int
    cursor: int
    ack_wait_ms: int
    max_in_flight: int
    created_at: int
    active_at: int
    #: The event filter fixed at creation (a CEL expression; None: every event).
    filter: str | None = None
    #: Offsets delivered and not acked yet (filled in by reads, not stored).
    pending: int = 0


@dataclass(frozen=True, slots=True)
class Claim:
    """An offset handed to ``member`` for the ``delivery``-th time."""

    offset: int
    delivery: int


@dataclass(frozen=True, slots=True)
class AckOutcome:
    """What an ack did: ``acked`` (now acked, or acked already), ``refused`` (never delivered:
    above the consumer's cursor, so no member can have had them), and the floor after it."""

    acked: tuple[int, ...]
    refused: tuple[int, ...]
    ack_floor: int
    #: False: there is no such consumer (nothing was acked).
    found: bool = True


class ConsumerStore(Protocol):
    async def create(self, consumer: Consumer) -> tuple[Consumer, bool]:
        """The consumer with ``consumer.key``, made from ``consumer`` if there was none;
        True when this call created it (an existing one is returned unchanged)."""

    async def get(self, key: ConsumerKey) -> Consumer | None:
        """The consumer with its ``pending`` count, or None."""

    async def owned_by(self, sub: str) -> list[Consumer]:
        """Every consumer of ``sub``, by topic then name."""

    async def remove(self, key: ConsumerKey) -> bool:
        """Delete the consumer with its claims and acks; False if there was none."""

    async def claim(
        self, key: ConsumerKey, member: str, most: int, head: int, now_ms: int
    ) -> tuple[list[Claim], int]:
        """Hand ``member`` up to ``most`` offsets, atomically: first claims whose deadline
        passed (redeliveries, lowest offsets first), then new offsets after the cursor up to
        ``head``. Each is held until ``now_ms + ack_wait_ms``. Returns the claims (in offset
        order) and the cursor after them; nothing if the consumer is gone."""

    async def ack(self, key: ConsumerKey, offsets: Sequence[int], now_ms: int) -> AckOutcome:
        """Mark ``offsets`` acked (dropping their claims, whoever holds them) and move the
        floor past every acked offset right above it."""

    async def release(self, key: ConsumerKey, member: str) -> int:
        """``member`` left: its claims expire now (so they go to another member at once).
        Returns how many."""

    async def remove_idle(self, before_ms: int) -> list[ConsumerKey]:
        """Delete the consumers no member touched since ``before_ms``; returns them."""


def consumer_id(key: ConsumerKey) -> str:
    """The key a backend stores ``key`` under: exact (case and all) whatever a database's
    collation (MySQL compares strings without case by default, and ``Alice``'s consumer must
    never be ``alice``'s)."""
    joined = "\x00".join((key.sub, key.name, key.topic))
    return hashlib.sha256(joined.encode()).hexdigest()


def advance_floor(floor: int, acked: set[int]) -> int:
    """The floor after ``acked`` offsets above it: past every one right above it (the ones
    passed are removed from ``acked``)."""
    while floor + 1 in acked:
        floor += 1
        acked.discard(floor)
    return floor


@dataclass(slots=True)
class _Held:
    member: str
    delivery: int
    deadline: int


@dataclass(slots=True)
class _State:
    consumer: Consumer
    claims: dict[int, _Held]
    acked: set[int]


class MemoryConsumerStore:
    """A :class:`ConsumerStore` in this process (the memory backend, and tests)."""

    def __init__(self) -> None:
        self._consumers: dict[ConsumerKey, _State] = {}

    def _view(self, state: _State) -> Consumer:
        return replace(state.consumer, pending=len(state.claims))

    async def create(self, consumer: Consumer) -> tuple[Consumer, bool]:
        state = self._consumers.get(consumer.key)
        if state is not None:
            return self._view(state), False
        self._consumers[consumer.key] = _State(replace(consumer, pending=0), {}, set())
        return replace(consumer, pending=0), True

    async def get(self, key: ConsumerKey) -> Consumer | None:
        state = self._consumers.get(key)
        return None if state is None else self._view(state)

    async def owned_by(self, sub: str) -> list[Consumer]:
        mine = [self._view(s) for k, s in self._consumers.items() if k.sub == sub]
        return sorted(mine, key=lambda c: (c.key.topic, c.key.name))

    async def remove(self, key: ConsumerKey) -> bool:
        return self._consumers.pop(key, None) is not None

    async def claim(
        self, key: ConsumerKey, member: str, most: int, head: int, now_ms: int
    ) -> tuple[list[Claim], int]:
        state = self._consumers.get(key)
        if state is None:
            return [], 0
        consumer = state.consumer
        deadline = now_ms + consumer.ack_wait_ms
        expired = sorted(o for o, held in state.claims.items() if held.deadline < now_ms)
        claims: list[Claim] = []
        for offset in expired[:most]:
            held = state.claims[offset]
            state.claims[offset] = _Held(member, held.delivery + 1, deadline)
            claims.append(Claim(offset, held.delivery + 1))
        fresh = range(consumer.cursor + 1, min(head, consumer.cursor + most - len(claims)) + 1)
        for offset in fresh:
            state.claims[offset] = _Held(member, 1, deadline)
            claims.append(Claim(offset, 1))
        cursor = max(consumer.cursor, fresh.stop - 1)
        state.consumer = replace(consumer, cursor=cursor, active_at=now_ms)
        return sorted(claims, key=lambda c: c.offset), cursor

    async def ack(self, key: ConsumerKey, offsets: Sequence[int], now_ms: int) -> AckOutcome:
        state = self._consumers.get(key)
        if state is None:
            return AckOutcome((), tuple(sorted(set(offsets))), 0, found=False)
        acked, refused = split_acks(state.consumer.cursor, offsets)
        for offset in acked:
            state.claims.pop(offset, None)
            if offset > state.consumer.ack_floor:
                state.acked.add(offset)
        floor = advance_floor(state.consumer.ack_floor, state.acked)
        state.consumer = replace(state.consumer, ack_floor=floor, active_at=now_ms)
        return AckOutcome(acked, refused, floor)

    async def release(self, key: ConsumerKey, member: str) -> int:
        state = self._consumers.get(key)
        if state is None:
            return 0
        released = 0
        for held in state.claims.values():
            if held.member == member:
                held.deadline = 0
                released += 1
        return released

    async def remove_idle(self, before_ms: int) -> list[ConsumerKey]:
        idle = [k for k, s in self._consumers.items() if s.consumer.active_at < before_ms]
        for key in idle:
            del self._consumers[key]
        return idle


def split_acks(cursor: int, offsets: Iterable[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``offsets`` (deduplicated, in order) as (those that may be acked: at or below the
    cursor, so delivered at some time; those above it: never delivered)."""
    unique = sorted(set(offsets))
    return (
        tuple(o for o in unique if 1 <= o <= cursor),
        tuple(o for o in unique if not 1 <= o <= cursor),
    )
