"""The broker protocol: relays publish committed events in ``seq`` order; every instance's hub
receives them in the same order."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Protocol

from ratewire.domain import RatingEvent, Topic

EventHandler = Callable[[RatingEvent], None]


class BrokerUnavailable(Exception):
    """The broker could not be reached or did not answer in time. Every backend raises this
    for its library's connection errors (the original is the ``__cause__``), so callers
    catch one type whatever ``broker.backend`` is."""


def unavailable(backend: str, exc: BaseException) -> BrokerUnavailable:
    """``exc``, a library's connection error, as ratewire's own, naming the backend."""
    return BrokerUnavailable(f"{backend}: {exc or type(exc).__name__}")


@contextlib.contextmanager
def translated(backend: str, errors: tuple[type[BaseException], ...]) -> Iterator[None]:
    """Raise :class:`BrokerUnavailable` for ``errors`` (the translation at the boundary, as
    httpx maps httpcore's transport errors: nothing above it sees a library's types)."""
    try:
        yield
    except errors as exc:
        raise unavailable(backend, exc) from exc


class Broker(Protocol):
    #: How many events the last ``publish`` call appended itself (others may have appended
    #: some of the batch first: those are skipped, and not counted here).
    appended: int

    async def publish(self, events: Sequence[RatingEvent], after: int) -> int | None:
        """Publish ``events``: every committed event with ``seq`` in ``(after, events[-1].seq]``,
        ascending. Events already published are skipped, so publishing twice is harmless.

        Returns the broker's cursor (the last ``seq`` published) afterwards: below the batch's
        end when the broker's cursor is below ``after`` (publish from the cursor first). None
        when the broker has no cursor and this publisher may not start one."""

    def holds_lease(self) -> bool:
        """Whether this instance's relay should poll the store for events nobody announced."""

    async def ping(self) -> None:
        """Raise if the broker cannot be reached."""

    async def close(self) -> None: ...


#: Reads events the broker no longer holds (``seq`` above the first argument, at most the
#: second argument of them, in order), if a store is configured: a consumer that fell behind
#: the broker's retention fills its gap from it.
GapReader = Callable[[int, int], Awaitable[list[RatingEvent]]]


class ClusterBroker(Broker, Protocol):
    """A broker that every instance of a cluster shares (Redis Streams, NATS JetStream): it
    carries the events between instances, keeps the relay lease, and holds the recent history
    that an instance without a database serves (see realtime.history)."""

    #: The store's epoch the broker's names are under (two databases never mix histories).
    epoch: str

    @property
    def consumed(self) -> int:
        """The ``seq`` of the last event this instance's consumer handed to the hub."""

    async def connect(self, epoch: str | None) -> None:
        """Reach the broker and settle the epoch: the store's when this instance has one (it
        is announced for the others), else the announced one (waiting for an announcement)."""

    async def cursor(self) -> int | None:
        """The ``seq`` of the last event published, or None if the broker holds no events
        (new, or it lost them)."""

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
        """Follow the events (``follow``: hand each to ``handler`` in ``seq`` order, after
        ``start_after``, else after the cursor) and compete for the relay lease (``relay``).
        A gap the broker cannot fill is read through ``gap_reader``; without one,
        ``on_reset`` asks every subscriber to resume."""

    async def topic_position(self, topic: Topic) -> tuple[int, int]:
        """(the topic's last offset, the last ``seq``) as the broker holds them, at one
        instant."""

    async def topic_events(self, topic: Topic, since: int, limit: int) -> list[RatingEvent]:
        """The topic's events the broker holds with offset above ``since``, in order."""
