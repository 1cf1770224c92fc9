"""The broker protocol: relays publish committed events in ``seq`` order; every instance's hub
receives them in the same order."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from ratewire.domain import RatingEvent

EventHandler = Callable[[RatingEvent], None]


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
