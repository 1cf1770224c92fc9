"""The single-process broker: publishing is a direct, synchronous hand-off to the hub."""

from __future__ import annotations

from collections.abc import Sequence

from ratewire.broker.base import EventHandler
from ratewire.domain import RatingEvent


class LocalBroker:
    """In-process broker; history lives in the store's event log."""

    def __init__(self) -> None:
        self._handler: EventHandler | None = None

    async def start(self, handler: EventHandler) -> None:
        self._handler = handler

    async def publish(self, events: Sequence[RatingEvent], after: int) -> int | None:
        handler = self._handler
        if handler is not None:
            for event in events:
                handler(event)
        return events[-1].seq if events else after

    def holds_lease(self) -> bool:
        return True  # alone: this relay is the only one

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._handler = None
