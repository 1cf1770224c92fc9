"""The broker protocol: the relay publishes committed events in order; every instance's hub
receives them in the same order."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from ratewire.domain import RatingEvent

EventHandler = Callable[[RatingEvent], None]


class Broker(Protocol):
    async def start(self, handler: EventHandler) -> None:
        """Begin delivering published events to ``handler``, in ``seq`` order."""

    async def publish(self, events: Sequence[RatingEvent]) -> None:
        """Publish committed events (ascending ``seq``)."""

    async def ping(self) -> None:
        """Raise if the broker cannot be reached."""

    async def close(self) -> None: ...
