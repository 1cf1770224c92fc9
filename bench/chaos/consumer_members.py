"""The members of a durable consumer in a chaos run: raw WebSocket clients written against
docs/protocol.md ("Durable consumers") alone. Each joins the group, acks what it is given in
batches, now and then keeps an event without ever acking it (the server hands it to a member
again once ``ackWaitMs`` passes), and crashes at random moments: it drops its connection
without acking what it holds, and joins again through HAProxy, often on another instance.
Every delivery, every ``acked`` answer and every membership is recorded for the checker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import time
from typing import Any

import websockets

from bench.chaos.history import AckAnswer, ConsumerGroup, Delivery, Membership
from bench.servers import token

#: Short, so that the events of a member whose instance died, and those it keeps, come
#: back within a 30-second run (the default is 30 s).
ACK_WAIT_MS = 2000
#: Small, so that the group shares the work rather than one member taking it all.
MAX_IN_FLIGHT = 20
#: How long (seconds) a member's connection lasts before the member crashes, unless calm.
LIFETIME = (1.5, 8.0)
#: The share of deliveries a member keeps without acking.
KEEP_SHARE = 0.08
#: How long (seconds) acks gather before they go out in one frame: batched, as the protocol
#: asks, so acking stays far below the per-connection message rate.
ACK_BATCH = (0.05, 0.4)
#: The most offsets one ack frame may name.
MAX_ACK_OFFSETS = 1000


class ConsumerMember:
    """One member of ``group``: joins, acks, keeps, crashes and joins again, until the run
    ends. Once :attr:`calm` is set it stops crashing and acks everything it is given."""

    def __init__(
        self, group: ConsumerGroup, name: str, url: str, owner: str, rng: random.Random
    ) -> None:
        self.group = group
        self.name = name
        self.url = url
        self.owner = owner  # every member's token has this sub: they share one consumer
        self.rng = rng
        self.session = 0
        self.calm = asyncio.Event()
        self.joined = asyncio.Event()

    async def run(self) -> None:
        backoff = 0.1
        while True:
            try:
                async with websockets.connect(
                    f"{self.url}?token={token(self.owner)}", open_timeout=5, close_timeout=1
                ) as socket:
                    backoff = 0.1
                    await self._member(socket)
            except (OSError, websockets.WebSocketException, TimeoutError, ValueError, KeyError):
                pass
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _member(self, socket: Any) -> None:
        hello = json.loads(await asyncio.wait_for(socket.recv(), 10))
        if hello.get("type") != "connection_success":
            return
        self.session += 1
        membership = Membership(self.name, self.session, time.time())
        self.group.memberships.append(membership)
        await socket.send(
            json.dumps(
                {
                    "action": "subscribe",
                    "topic": self.group.topic,
                    "consumer": self.group.name,
                    "since": 0,
                    "ackWaitMs": ACK_WAIT_MS,
                    "maxInFlight": MAX_IN_FLIGHT,
                    "id": "join",
                }
            )
        )
        link = _Link(self, socket, membership)
        try:
            await link.follow()
        except (OSError, websockets.WebSocketException, TimeoutError):
            membership.ended = membership.ended or "lost"
            raise
        finally:
            self.group.acks_unanswered += len(link.waiting)


class _Link:
    """One connection of a member: what it was given and has not acked yet, and its acks
    waiting for an answer."""

    def __init__(self, member: ConsumerMember, socket: Any, membership: Membership) -> None:
        self.member = member
        self.group = member.group
        self.socket = socket
        self.membership = membership
        self.to_ack: list[int] = []
        self.kept: list[int] = []  # never acked on this connection (unless the run calms)
        #: Ack id -> its offsets, until the answer comes.
        self.waiting: dict[str, list[int]] = {}
        self.flush_at = math.inf
        self.crash_at = time.monotonic() + member.rng.uniform(*LIFETIME)
        self._acks = 0

    async def follow(self) -> None:
        while True:
            now = time.monotonic()
            calm = self.member.calm.is_set()
            if calm and self.kept:
                self._to_ack(self.kept)
                self.kept = []
            if not calm and now >= self.crash_at:
                self.membership.ended = "crash"
                self.socket.transport.abort()  # no close frame, no ack: as a process dies
                return
            if now >= self.flush_at:
                await self._flush()
            wake = min(self.flush_at, math.inf if calm else self.crash_at, now + 0.5)
            message = None
            with contextlib.suppress(TimeoutError):
                message = await asyncio.wait_for(self.socket.recv(), max(wake - now, 0.01))
            if message is not None:
                self._on(json.loads(message))

    def _on(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "rating_update" and frame.get("consumer") == self.group.name:
            offset = int(frame["offset"])
            data = frame["data"]
            self.group.deliveries.append(
                Delivery(
                    self.member.name,
                    self.membership.session,
                    offset,
                    int(frame["delivery"]),
                    frame["event"],
                    data["id"],
                    int(data["version"]),
                    time.time(),
                )
            )
            if self.member.calm.is_set() or self.member.rng.random() >= KEEP_SHARE:
                self._to_ack([offset])
            else:
                self.kept.append(offset)
        elif kind == "acked" and frame.get("id") in self.waiting:
            del self.waiting[frame["id"]]
            self.group.answers.append(
                AckAnswer(
                    self.member.name,
                    self.membership.session,
                    [int(o) for o in frame["offsets"]],
                    int(frame["ackFloor"]),
                    [int(o) for o in frame.get("refused", [])],
                    time.time(),
                )
            )
        elif kind == "subscribed" and frame.get("consumer") == self.group.name:
            self.membership.answered = time.time()
            self.membership.ack_floor = int(frame["ackFloor"])
            self.membership.created = bool(frame.get("created"))
            self.membership.recovered = frame.get("recovered") is not False
            if "firstOffset" in frame:
                self.membership.first_offset = int(frame["firstOffset"])
            self.member.joined.set()
        elif kind == "error" and frame.get("id") in self.waiting:
            # The ack could not be stored ("unavailable"): it goes again with the next batch.
            self.group.acks_unanswered += 1
            self._to_ack(self.waiting.pop(frame["id"]))
        elif kind == "error" and frame.get("id") == "join":
            raise websockets.WebSocketException(f"join refused: {frame}")

    def _to_ack(self, offsets: list[int]) -> None:
        self.to_ack += offsets
        if self.flush_at == math.inf:
            self.flush_at = time.monotonic() + self.member.rng.uniform(*ACK_BATCH)

    async def _flush(self) -> None:
        self.flush_at = math.inf
        if not self.to_ack:
            return
        given = sorted(set(self.to_ack))
        offsets, self.to_ack = given[:MAX_ACK_OFFSETS], given[MAX_ACK_OFFSETS:]
        if self.to_ack:
            self.flush_at = time.monotonic()  # the rest goes in the next frame
        self._acks += 1
        ack_id = f"ack-{self.membership.session}-{self._acks}"
        self.waiting[ack_id] = offsets
        await self.socket.send(
            json.dumps(
                {
                    "action": "ack",
                    "topic": self.group.topic,
                    "consumer": self.group.name,
                    "offsets": offsets,
                    "id": ack_id,
                }
            )
        )
