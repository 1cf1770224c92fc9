"""A WebSocket connection's side of durable consumers (docs/protocol.md): ``subscribe`` with
``consumer`` makes the connection a member, ``ack`` acks a batch of offsets, ``unsubscribe``
with ``consumer`` (or the connection closing) leaves, and the member's claims go to the other
members at once.

Acks are batched (one ``ack`` frame names many offsets) rather than counted apart from the
per-connection message rate: a member acking as fast as events arrive sends a frame per batch,
not per event, and the rate limit keeps protecting the server from any other flood.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Protocol

from ratewire.audit import AuditContext
from ratewire.domain import Topic
from ratewire.realtime import frames
from ratewire.realtime.messages import ClientMessage
from ratewire.security.tokens import Principal
from ratewire.services.consumers import (
    ConsumerError,
    ConsumerService,
    Delivered,
    check_settings,
)
from ratewire.storage.consumer_store import Consumer, ConsumerKey

log = logging.getLogger("ratewire.realtime")


class Session(Protocol):
    """What a membership needs of its connection (a :class:`~ratewire.realtime.session.Session`
    is one)."""

    client_id: str
    closed: bool
    principal: Principal | None
    consumers: dict[tuple[str, str], SocketMember]

    def send(self, data: bytes) -> None: ...


class SocketMember:
    """One connection's membership of one consumer: what it holds, unacked, until when."""

    __slots__ = ("_held", "key", "max_in_flight", "member_id", "session")

    def __init__(self, session: Session, key: ConsumerKey, max_in_flight: int) -> None:
        self.session = session
        self.key = key
        self.max_in_flight = max_in_flight
        # One id per membership: a connection that subscribes again must not have the old
        # membership's release (which runs later) take back the new one's claims.
        self.member_id = f"ws-{session.client_id[:12]}-{uuid.uuid4().hex[:12]}"
        #: Offset -> when its claim runs out (epoch ms); past it, it no longer counts.
        self._held: dict[int, int] = {}

    def unacked(self, now: int) -> int:
        if any(deadline < now for deadline in self._held.values()):
            self._held = {o: d for o, d in self._held.items() if d >= now}
        return len(self._held)

    def spare(self, now: int) -> int:
        return 0 if self.session.closed else self.max_in_flight - self.unacked(now)

    def deliver(self, consumer: Consumer, items: Sequence[Delivered], now: int) -> None:
        deadline = now + consumer.ack_wait_ms
        name, topic = self.key.name, self.key.topic
        for item in items:
            self._held[item.offset] = deadline
            self.session.send(item.frame(topic, name))

    def acked(self, offsets: Sequence[int]) -> None:
        for offset in offsets:
            self._held.pop(offset, None)


def _service(
    session: Session, service: ConsumerService | None, message: ClientMessage
) -> ConsumerService | None:
    if service is None:
        session.send(
            frames.error(
                "bad_request", "consumers need a database; this instance has none", message.id
            )
        )
    return service


async def subscribe(
    session: Session,
    service: ConsumerService | None,
    epoch: str,
    message: ClientMessage,
    topic: Topic,
    context: AuditContext,
    most: int,
) -> None:
    """``subscribe`` with ``consumer``: join it (creating it if new) and answer ``subscribed``
    (``epoch``: the topic history's; ``most``: memberships a connection may hold)."""
    service = _service(session, service, message)
    if service is None:
        return
    assert session.principal is not None and message.consumer is not None
    key = ConsumerKey(session.principal.sub, message.consumer, topic.name)
    if (topic.name, key.name) not in session.consumers and len(session.consumers) >= most:
        # Each membership may create a consumer row: one connection may not hold unbounded.
        session.send(
            frames.error(
                "too_many_subscriptions",
                f"a connection is a member of at most {most} consumers; unsubscribe first",
                message.id,
            )
        )
        return
    try:
        check_settings(message.ack_wait_ms, message.max_in_flight)
        opened = await service.open(
            key,
            since=message.since,
            ack_wait_ms=message.ack_wait_ms,
            max_in_flight=message.max_in_flight,
            event_filter=message.filter,
            context=context,
        )
    except ConsumerError as exc:
        session.send(frames.error("bad_request", str(exc), message.id))
        return
    if session.closed:
        return
    previous = session.consumers.pop((topic.name, key.name), None)
    if previous is not None:  # subscribing again restarts the membership
        service.leave(key, previous)
    consumer = opened.consumer
    member = SocketMember(session, key, message.max_in_flight or consumer.max_in_flight)
    session.consumers[(topic.name, key.name)] = member
    extra: dict[str, object] = {}
    if not opened.recovered:
        extra = {"recovered": False, "firstOffset": opened.first_offset}
    session.send(
        frames.control(
            "subscribed",
            message.id,
            topic=topic.name,
            consumer=key.name,
            offset=consumer.ack_floor,
            epoch=epoch,
            ackFloor=consumer.ack_floor,
            pending=consumer.pending,
            created=opened.created,
            ackWaitMs=consumer.ack_wait_ms,
            maxInFlight=member.max_in_flight,
            **extra,
        )
    )
    service.join(consumer, member)


async def ack(session: Session, service: ConsumerService | None, message: ClientMessage) -> None:
    """``{"action":"ack","topic":T,"consumer":NAME,"offsets":[...]}`` -> ``acked``."""
    member = session.consumers.get((message.topic or "", message.consumer or ""))
    if member is None or not message.offsets:
        what = (
            f"not a member of consumer {message.consumer!r} on {message.topic!r}; subscribe first"
        )
        if not message.offsets:
            what = "ack needs topic, consumer and offsets"
        session.send(frames.error("bad_request", what, message.id))
        return
    service = _service(session, service, message)
    if service is None:
        return
    try:
        outcome = await service.ack(member.key, message.offsets)
    except ConsumerError as exc:
        session.send(frames.error("bad_request", str(exc), message.id))
        return
    except Exception as exc:  # the store is unreachable: the client acks again
        log.warning("ack on consumer %s failed: %s", member.key.name, exc)
        session.send(
            frames.error("unavailable", "the ack could not be stored; send it again", message.id)
        )
        return
    member.acked(outcome.acked)
    extra: dict[str, object] = {"refused": list(outcome.refused)} if outcome.refused else {}
    session.send(
        frames.control(
            "acked",
            message.id,
            topic=member.key.topic,
            consumer=member.key.name,
            offsets=list(outcome.acked),
            ackFloor=outcome.ack_floor,
            **extra,
        )
    )


def unsubscribe(session: Session, service: ConsumerService | None, message: ClientMessage) -> None:
    """``unsubscribe`` with ``consumer``: leave it (the consumer and its position stay)."""
    member = session.consumers.pop((message.topic or "", message.consumer or ""), None)
    if member is not None and service is not None:
        service.leave(member.key, member)
    session.send(
        frames.control("unsubscribed", message.id, topic=message.topic, consumer=message.consumer)
    )


def leave_all(session: Session, service: ConsumerService | None) -> None:
    """The connection is gone: every membership ends and its claims go to other members."""
    members, session.consumers = session.consumers, {}
    if service is not None:
        for member in members.values():
            service.leave(member.key, member)
