"""What an instance's consumer does with each event a cluster broker delivers: hand it to the
hub once, in ``seq`` order, and never skip one (see the invariants in docs/operations.md)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from ratewire.broker.base import EventHandler, GapReader
from ratewire.domain import RatingEvent

log = logging.getLogger("ratewire.broker")


class OrderedDelivery:
    """Follows ``seq``: an event at or below the position was delivered already (republished
    after the broker lost its data), the next one goes to the handler, and one further on
    means a gap, read from the store (or, with no store, every subscriber asked to resume)."""

    def __init__(self) -> None:
        self.handler: EventHandler | None = None
        self.gap_reader: GapReader | None = None
        self.on_reset: Callable[[], None] | None = None
        #: The ``seq`` of the last event handed to the handler.
        self.consumed = 0

    async def deliver(self, event: RatingEvent) -> None:
        """Hand ``event`` on if it is new, after whatever it skipped."""
        seq = event.seq
        if seq <= self.consumed:
            return
        handler = self.handler
        assert handler is not None
        if seq != self.consumed + 1:
            await self._fill_gap(seq)
            if seq <= self.consumed:
                return
        handler(event)
        self.consumed = seq

    async def _fill_gap(self, next_seq: int) -> None:
        """The broker skips from our position to ``next_seq``: it was trimmed past a consumer
        that fell behind, or rebuilt from a store that no longer has them. Never skip
        silently: read the gap from the store, or, with no store, tell every subscriber to
        resume (their ``since`` then decides what they get)."""
        handler = self.handler
        assert handler is not None
        if self.gap_reader is not None:
            while self.consumed + 1 < next_seq:
                missing = await self.gap_reader(self.consumed, next_seq - self.consumed - 1)
                if not missing:
                    break
                for event in missing:
                    if event.seq > self.consumed:
                        handler(event)
                        self.consumed = event.seq
            if self.consumed + 1 >= next_seq:
                return
        log.warning(
            "event stream skips from seq %d to %d and no store holds the gap; "
            "asking subscribers to resume",
            self.consumed,
            next_seq,
        )
        self.consumed = next_seq - 1
        if self.on_reset is not None:
            self.on_reset()
