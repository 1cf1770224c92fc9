"""The single-process broker: publishing is a direct, synchronous hand-off to the hub."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ratewire.broker.base import EventHandler
from ratewire.domain import RatingEvent

BatchHandler = Callable[[Sequence[RatingEvent]], None]


class LocalBroker:
    """In-process broker; history lives in the store's event log."""

    def __init__(self) -> None:
        self._handler: EventHandler | None = None
        self._batch_handler: BatchHandler | None = None

    async def start(self, handler: EventHandler, batch_handler: BatchHandler | None = None) -> None:
        """Deliver published events to ``handler``, or as whole batches to ``batch_handler``
        (the hub writes a batch to each subscriber in one call)."""
        self._handler = handler
        self._batch_handler = batch_handler

    async def publish(self, events: Sequence[RatingEvent], after: int) -> int | None:
        if events and self._batch_handler is not None:
            self._batch_handler(events)
        elif (handler := self._handler) is not None:
            for event in events:
                handler(event)
        return events[-1].seq if events else after

    def holds_lease(self) -> bool:
        return True  # alone: this relay is the only one

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._handler = self._batch_handler = None
