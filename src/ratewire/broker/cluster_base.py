"""What both cluster brokers (Redis, NATS) share, written once: the consumer's ordered
delivery, waiting for the announced epoch, the follow loop with its backoff, the relay lease
loop, closing, and translating the library's errors into :class:`BrokerUnavailable`.

A backend says only how to do one step of each (read the announced epoch, follow one round,
take, renew and release the lease, disconnect) and which of its library's errors mean "the
broker cannot be reached" (``unreachable``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

from ratewire.broker.base import (
    BrokerUnavailable,
    EventHandler,
    GapReader,
    translated,
    unavailable,
)
from ratewire.broker.ordered_delivery import OrderedDelivery

log = logging.getLogger("ratewire.broker")

#: The follow loop's retry delay: from this, doubling (with jitter) up to FOLLOW_BACKOFF_MAX.
FOLLOW_BACKOFF_MIN = 0.05
FOLLOW_BACKOFF_MAX = 2.0
#: How often an instance without a database looks for the announced epoch.
EPOCH_POLL_SECONDS = 0.2


class FollowingBroker(ABC):
    """The lifecycle of a cluster broker; subclasses say how to follow, lease and read."""

    #: The backend's name in log lines.
    backend_name: ClassVar[str]
    #: The library's errors that mean the broker could not be reached or did not answer.
    unreachable: ClassVar[tuple[type[BaseException], ...]]

    def __init__(self, lease_seconds: float) -> None:
        self._delivery = OrderedDelivery()
        self._tasks: list[asyncio.Task[None]] = []
        self._leader = False
        self._lease_seconds = lease_seconds
        self._backoff = FOLLOW_BACKOFF_MIN
        self._down_since: float | None = None
        #: What a background step may raise when the broker is away (translated or not).
        self._away: tuple[type[BaseException], ...] = (BrokerUnavailable, *self.unreachable)

    @property
    def consumed(self) -> int:
        """The ``seq`` of the last event this instance's consumer handed to the hub."""
        return self._delivery.consumed

    def holds_lease(self) -> bool:
        """Whether this instance's relay is the one that polls the store."""
        return self._leader

    def translated(self) -> contextlib.AbstractContextManager[None]:
        """Raise :class:`BrokerUnavailable` for the library's ``unreachable`` errors."""
        return translated(self.backend_name, self.unreachable)

    def unavailable(self, exc: BaseException) -> BrokerUnavailable:
        """``exc`` (one of ``unreachable``) as ratewire's own error, naming the backend."""
        return unavailable(self.backend_name, exc)

    # -- what a backend provides -----------------------------------------------------------

    @abstractmethod
    async def cursor(self) -> int | None:
        """The ``seq`` of the last event published, or None if the broker holds none."""

    @abstractmethod
    async def _announced_epoch(self) -> str | None:
        """The epoch an instance with a database announced, or None (not yet)."""

    @abstractmethod
    async def _follow_step(self) -> None:
        """Hand the next events to ``self._delivery`` (one read, or one consumer's life);
        call :meth:`_following` once the broker answered."""

    @abstractmethod
    async def _take_lease(self) -> bool:
        """Try to take the free lease; whether this instance holds it now."""

    @abstractmethod
    async def _renew_lease(self) -> bool:
        """Renew the lease this instance holds; False if it was lost meanwhile."""

    async def _lease_unreachable(self, exc: BaseException) -> None:
        """The lease step failed with ``exc`` (one of ``unreachable``): the lease is taken as
        lost (the broker expires it by itself). A backend may repair what it lost here."""
        return None

    @abstractmethod
    async def _release_lease(self) -> None:
        """Give the held lease up at once (a clean stop: no one waits for it to expire)."""

    @abstractmethod
    async def _disconnect(self) -> None:
        """Close the broker's connections."""

    # -- the shared lifecycle --------------------------------------------------------------

    async def _wait_for_epoch(self) -> str:
        waited = False
        while True:
            with self.translated():
                epoch = await self._announced_epoch()
            if epoch:
                return epoch
            if not waited:
                log.info(
                    "waiting for an instance with a database to announce its epoch in %s",
                    self.backend_name,
                )
                waited = True
            await asyncio.sleep(EPOCH_POLL_SECONDS)

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

    async def _follow(self) -> None:
        while True:
            try:
                await self._follow_step()
            except asyncio.CancelledError:
                raise
            except self._away as exc:
                loop = asyncio.get_running_loop()
                if self._down_since is None:
                    self._down_since = loop.time()
                    log.warning(
                        "%s unreachable for following (%s); retrying with backoff",
                        self.backend_name,
                        exc or type(exc).__name__,
                    )
                await asyncio.sleep(self._backoff * (0.5 + random.random()))
                self._backoff = min(self._backoff * 2, FOLLOW_BACKOFF_MAX)
            except Exception:
                log.exception("broker: delivering events failed; retrying")
                await asyncio.sleep(0.5)

    def _following(self) -> None:
        """The broker answered a follow step: end an outage (logged once) and its backoff."""
        if self._down_since is not None:
            down = asyncio.get_running_loop().time() - self._down_since
            log.info("%s reachable again after %.1f s; following", self.backend_name, down)
            self._down_since = None
        self._backoff = FOLLOW_BACKOFF_MIN

    async def _hold_lease(self) -> None:
        while True:
            try:
                if self._leader:
                    self._leader = await self._renew_lease()
                    if not self._leader:
                        log.warning("relay lease lost; another instance polls the store now")
                else:
                    self._leader = await self._take_lease()
                    if self._leader:
                        log.info("this instance holds the relay lease")
            except self._away as exc:
                self._leader = False
                await self._lease_unreachable(exc)
            await asyncio.sleep(self._lease_seconds / 3)

    async def close(self) -> None:
        """Stop following and leasing, give the lease up, disconnect."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._leader:
            with contextlib.suppress(*self._away):
                await self._release_lease()
        self._leader = False
        await self._disconnect()
