"""A durable consumer as an async iterator (docs/client.md, "Durable consumers"): the server
keeps the position, the iterator fetches batches (long-polling) and sends the acks the caller
gave, many offsets per request, before each fetch and when it is closed."""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import quote

from ratewire.client.models import Update

Request = Callable[..., Awaitable[Any]]


def consumer_path(name: str) -> str:
    """The REST path of the durable consumer ``name``."""
    return f"/consumers/{quote(name, safe='')}"


async def fetch_events(request: Request, name: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """One fetch of the consumer ``name`` (``body``: ``topic``, ``max``, ``waitMs`` and the
    options a new consumer is made with): its ``rating_update`` objects, each with
    ``consumer`` and ``delivery``. The request may take ``waitMs`` longer than most."""
    answer = await request(
        "POST", f"{consumer_path(name)}/fetch", auth=True, json=body, wait=body["waitMs"] / 1000
    )
    events: list[dict[str, Any]] = answer.json()["events"]
    return events


async def send_acks(request: Request, topic: str, name: str, offsets: list[int]) -> None:
    """Ack ``offsets`` of the consumer ``name`` on ``topic`` in one request."""
    await request(
        "POST", f"{consumer_path(name)}/ack", auth=True, json={"topic": topic, "offsets": offsets}
    )


@dataclass(frozen=True, slots=True)
class ConsumedUpdate:
    """An :class:`~ratewire.client.Update` handed to this member of ``consumer``, for the
    ``delivery``-th time (2 or more: a member before did not ack it in time). Call :meth:`ack`
    once it is handled; unacked, it is delivered again after the consumer's ``ackWaitMs``."""

    update: Update
    consumer: str
    delivery: int
    _acks: list[int] = field(repr=False, compare=False)

    @property
    def offset(self) -> int:
        return self.update.offset

    def ack(self) -> None:
        """Mark it handled: sent with the next batch of acks (before the next fetch, or on
        :meth:`Consumer.flush` / leaving the ``async with``)."""
        self._acks.append(self.update.offset)


class Consumer:
    """``async for item in consumer``: the updates of a durable consumer, shared with its other
    members. With ``auto_ack``, taking the next item acks the one before."""

    def __init__(
        self, request: Request, name: str, fetch: dict[str, Any], *, auto_ack: bool = False
    ) -> None:
        """Made by :meth:`~ratewire.client.Client.consume`. ``fetch``: the body of every fetch
        request (``topic``, ``max``, ``waitMs``, and the options a new consumer is made with)."""
        self.topic, self.name = str(fetch["topic"]), name
        self._request = request
        self._path = consumer_path(name)
        self._fetch = fetch
        self._auto_ack = auto_ack
        self._buffer: deque[ConsumedUpdate] = deque()
        self._acks: list[int] = []
        self._last: ConsumedUpdate | None = None

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ConsumedUpdate:
        if self._auto_ack and self._last is not None:
            self._last.ack()
        while not self._buffer:
            await self.flush()
            for frame in await fetch_events(self._request, self.name, self._fetch):
                self._buffer.append(
                    ConsumedUpdate(
                        Update.from_wire(frame), frame["consumer"], frame["delivery"], self._acks
                    )
                )
        self._last = self._buffer.popleft()
        return self._last

    async def flush(self) -> None:
        """Send the acks given so far, in one request."""
        if not self._acks:
            return
        offsets, self._acks[:] = sorted(set(self._acks)), []
        await send_acks(self._request, self.topic, self.name, offsets)

    async def status(self) -> dict[str, Any]:
        """The consumer as the server sees it: ``ackFloor``, ``pending``, ``lag``, ``members``."""
        answer = await self._request("GET", self._path, auth=True, params={"topic": self.topic})
        found: dict[str, Any] = answer.json()
        return found

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, failure: type[BaseException] | None, *_: object) -> None:
        # The item being handled when the body raised is left unacked: it comes again.
        if self._auto_ack and self._last is not None and failure is None:
            self._last.ack()
            self._last = None
        await self.flush()


__all__ = ["ConsumedUpdate", "Consumer", "consumer_path", "fetch_events", "send_acks"]
