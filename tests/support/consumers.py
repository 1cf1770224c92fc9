"""Members of durable consumers over WebSocket, for the e2e and cluster tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from tests.e2e.wsclient import WsClient

#: Long enough for a loaded machine; a wait is for an event, never an assertion on time.
WAIT = 15.0


async def member(url: str, token: str, topic: str, name: str, **options: Any) -> WsClient:
    client = await WsClient.open(url, token)
    await client.recv_type("connection_success")
    subscribed = await client.subscribe(topic, consumer=name, **options)
    assert subscribed["consumer"] == name and subscribed["topic"] == topic, subscribed
    return client


async def collect(clients: list[WsClient], total: int) -> list[list[dict[str, Any]]]:
    """Read every client's ``rating_update`` frames until ``total`` arrived in all."""
    got: list[list[dict[str, Any]]] = [[] for _ in clients]
    done = asyncio.Event()

    async def read(index: int) -> None:
        while not done.is_set():
            frame = await clients[index].recv_type("rating_update", WAIT)
            got[index].append(frame)
            if sum(map(len, got)) >= total:
                done.set()

    tasks = [asyncio.create_task(read(i)) for i in range(len(clients))]
    await asyncio.wait_for(done.wait(), WAIT)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return got


@dataclass
class AckLedger:
    """What a fleet of :class:`AckingMember` saw, to check the consumer's promise from the
    members' side: every offset acked by some member, none delivered after its ack.

    An ack is judged "in time" when its answer came within half of ``ackWaitMs`` of the
    delivery it acks: unless that delivery took the other half to arrive, its claim had not run
    out when the ack was stored, so the server may not hand the offset out again. (A later ack
    may legitimately cross a redelivery already on its way: delivery is at least once.)"""

    ack_wait_ms: int
    #: Offset -> the ``delivery`` numbers it came with, in the order they arrived.
    deliveries: dict[int, list[int]] = field(default_factory=dict)
    #: Offsets whose ack was answered.
    acked: set[int] = field(default_factory=set)
    #: Offsets acked in time (see above): none may be delivered again.
    settled: set[int] = field(default_factory=set)
    #: (offset, delivery) of every frame that came after its offset was settled.
    after_ack: list[tuple[int, int]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def delivered(self, frame: dict[str, Any]) -> None:
        offset = frame["offset"]
        if offset in self.settled:
            self.after_ack.append((offset, frame["delivery"]))
        self.deliveries.setdefault(offset, []).append(frame["delivery"])

    def confirmed(self, offsets: list[int], in_time: set[int]) -> None:
        self.acked.update(offsets)
        self.settled.update(in_time)
        self.changed.set()

    async def until_acked(self, offsets: set[int], within: float = 60) -> None:
        """Until every one of ``offsets`` is acked (or ``within`` seconds passed: the test's
        assertions then say what is missing)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while not offsets <= self.acked:
                    self.changed.clear()
                    await self.changed.wait()


class AckingMember:
    """A member of a durable consumer that acks everything it is given at once, as a client of
    the protocol is told to: one ``ack`` frame per batch, one in flight; when its connection
    is lost it joins again on the next URL and sends once more the acks it never saw
    answered (the server may have stored them, or not: acking again is allowed)."""

    def __init__(
        self,
        ledger: AckLedger,
        urls: list[str],
        token: str,
        topic: str,
        name: str,
        **options: Any,
    ) -> None:
        self.ledger = ledger
        self.urls, self.token, self.topic, self.name = urls, token, topic, name
        self.options = {"ackWaitMs": ledger.ack_wait_ms, **options}
        self.joined = asyncio.Event()
        #: How many times it joined (1: its connection never broke).
        self.connections = 0
        #: Why each connection (or attempt) ended, for a failing test's message.
        self.losses: list[str] = []
        #: Offsets received, their ack not yet answered -> when the last delivery came.
        self._unanswered: dict[int, float] = {}
        self._client: WsClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    def start(self) -> AckingMember:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        self._stopped = True
        if self._client is not None:
            self._client.connection.transport.abort()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        attempt = 0
        while not self._stopped:
            url = self.urls[attempt % len(self.urls)]
            attempt += 1
            try:
                await self._member(url)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # refused, reset, closed: join again elsewhere
                self.losses.append(f"{url}: {exc!r}")
                await asyncio.sleep(0.1)

    async def _member(self, url: str) -> None:
        client = self._client = await WsClient.open(url, self.token)
        try:
            await client.recv_type("connection_success")
            await client.send(
                action="subscribe", topic=self.topic, consumer=self.name, **self.options
            )
            to_ack, in_flight = sorted(self._unanswered), list[int]()
            subscribed = False
            while True:
                frame = orjson.loads(await client.connection.recv())
                kind = frame["type"]
                if kind == "rating_update" and frame.get("consumer") == self.name:
                    self.ledger.delivered(frame)
                    self._unanswered[frame["offset"]] = time.monotonic()
                    to_ack.append(frame["offset"])
                elif kind == "acked":
                    self._answered(frame["offsets"])
                    in_flight = []
                elif kind == "error":  # e.g. "unavailable": the ack was not stored
                    to_ack, in_flight = in_flight + to_ack, []
                elif kind == "subscribed":
                    subscribed = True
                    self.connections += 1
                    self.joined.set()
                if subscribed and to_ack and not in_flight:
                    in_flight, to_ack = to_ack[:1000], to_ack[1000:]
                    await client.send(
                        action="ack", topic=self.topic, consumer=self.name, offsets=in_flight
                    )
        finally:
            with contextlib.suppress(Exception):
                await client.close()

    def _answered(self, offsets: list[int]) -> None:
        now, half = time.monotonic(), self.ledger.ack_wait_ms / 2000
        in_time = {o for o in offsets if now - self._unanswered.get(o, now - half) < half}
        for offset in offsets:
            self._unanswered.pop(offset, None)
        self.ledger.confirmed(offsets, in_time)
