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

    async def start(self, handler: BatchHandler) -> None:
        """Deliver published events to ``handler`` a batch at a time (the hub writes a batch
        to each subscriber in one call)."""
        self._handler = handler

    async def publish(self, events: Sequence[RatingEvent], after: int) -> int | None:
        handler = self._handler
        if events and handler is not None:
            handler(events)
        self.appended = len(events)
        return events[-1].seq if events else after

    def holds_lease(self) -> bool:
        return True  # alone: this relay is the only one

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._handler = None
