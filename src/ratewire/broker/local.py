"""The single-process broker: publishing is a direct, synchronous hand-off to the hub."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ratewire.domain import RatingEvent

BatchHandler = Callable[[Sequence[RatingEvent]], None]


class LocalBroker:
    """In-process broker; history lives in the store's event log."""

    def __init__(self) -> None:
        self._handler: BatchHandler | None = None
        self.appended = 0
        #: The last ``seq`` handed on through ``publish`` (the relay's fast path hands the
        #: hub events directly and does not pass here).
        self._cursor = 0

    async def start(self, handler: BatchHandler) -> None:
        """Deliver published events to ``handler`` a batch at a time (the hub writes a batch
        to each subscriber in one call)."""
        self._handler = handler

    async def publish(self, events: Sequence[RatingEvent], after: int) -> int | None:
        """Hand ``events`` to the hub, skipping those handed on already (a batch holds
        consecutive ``seq``), so publishing twice is harmless here too."""
        if events and events[0].seq <= self._cursor:
            events = events[self._cursor - events[0].seq + 1 :]
        handler = self._handler
        if events and handler is not None:
            handler(events)
        self.appended = len(events)
        if events:
            self._cursor = events[-1].seq
        return max(self._cursor, after)

    def holds_lease(self) -> bool:
        return True  # alone: this relay is the only one

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._handler = None
