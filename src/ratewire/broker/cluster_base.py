"""What both cluster brokers (Redis, NATS) share: the consumer's ordered delivery and the two
background tasks of an instance, following the events and holding the relay lease."""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable

from ratewire.broker.base import EventHandler, GapReader
from ratewire.broker.ordered_delivery import OrderedDelivery


class FollowingBroker(ABC):
    """The lifecycle of a cluster broker; subclasses say how to follow, lease and read."""

    def __init__(self) -> None:
        self._delivery = OrderedDelivery()
        self._tasks: list[asyncio.Task[None]] = []
        self._leader = False

    @property
    def consumed(self) -> int:
        """The ``seq`` of the last event this instance's consumer handed to the hub."""
        return self._delivery.consumed

    def holds_lease(self) -> bool:
        """Whether this instance's relay is the one that polls the store."""
        return self._leader

    @abstractmethod
    async def cursor(self) -> int | None:
        """The ``seq`` of the last event published, or None if the broker holds none."""

    @abstractmethod
    async def _follow(self) -> None:
        """Hand every event to ``self._delivery``, in order, until cancelled."""

    @abstractmethod
    async def _hold_lease(self) -> None:
        """Take and renew the relay lease (``self._leader``) until cancelled."""

    async def start(
        self,
        handler: EventHandler,
        *,
        follow: bool = True,
        relay: bool = True,
        gap_reader: GapReader | None = None,
        on_reset: Callable[[], None] | None = None,
        start_after: int | None = None,
    ) -> None:
        """Follow the event stream (``follow``) and compete for the relay lease (``relay``).

        The consumer starts after ``start_after``, else after the stream's cursor."""
        delivery = self._delivery
        delivery.handler, delivery.gap_reader, delivery.on_reset = handler, gap_reader, on_reset
        if follow:
            if start_after is None:
                start_after = await self.cursor() or 0
            delivery.consumed = start_after
            self._tasks.append(asyncio.create_task(self._follow(), name="broker-follow"))
        if relay:
            self._tasks.append(asyncio.create_task(self._hold_lease(), name="relay-lease"))

    async def _stop_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
