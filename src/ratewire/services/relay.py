"""The relay: hands committed events from the store's outbox to the broker, in commit order.

Fast path: the service tells the relay about each event it committed, so publishing needs no
read; with the in-process broker, events told in order are delivered at the end of that loop
pass, together.
Events the relay was not told about (committed by another process, or by a request that was
cancelled between commit and notify) are found by reading the outbox after a short grace
period, and by a periodic poll. ``seq`` is gapless and in commit order (see storage.sql.store), so
"the next seq" is always well defined. On start the relay resumes at the store's head: earlier
events are served from history (resume with ``since``), never lost.

In cluster mode every instance runs a relay: each publishes the events its own requests
committed at once (low latency), and the one holding the broker's lease also polls the store
for events nobody announced (an instance killed between commit and publish). The broker takes
each batch with the ``seq`` it is complete after, so a second publish of an event is skipped
and a batch that would leave a gap is refused (see broker.redis.broker); the relay then reads
the gap from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from ratewire.broker.base import Broker
from ratewire.domain import RatingEvent, Topic, TopicKind
from ratewire.storage.base import RatingStore

log = logging.getLogger("ratewire.relay")
READ_BATCH = 500


class Relay:
    """Publishes every committed event exactly once, in ``seq`` order."""

    def __init__(
        self,
        store: RatingStore,
        broker: Broker,
        *,
        poll_interval: float = 0.5,
        gap_grace: float = 0.005,
        publish_now: Callable[[list[RatingEvent]], None] | None = None,
    ) -> None:
        self._store = store
        self._broker = broker
        # An in-process broker's hand-off: events told in order are delivered at the end of
        # the loop pass that told them (no task switch, no wake-up of the run loop), all of
        # that pass at once: a group commit's events go out as one batch.
        self._publish_now = publish_now
        self._handing: list[RatingEvent] = []
        self._poll_interval = poll_interval
        self._gap_grace = gap_grace
        self._told: dict[int, RatingEvent] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._failing = False
        self._draining = asyncio.Lock()  # the run loop and flush() must not publish twice
        #: The ``seq`` of the last event published.
        self.cursor = 0
        #: Events this relay published (another instance's are not counted).
        self.published = 0
        #: Store reads or publishes that failed.
        self.failures = 0
        # Commit time (epoch seconds) of the oldest event known to wait for publishing.
        self._oldest_waiting_at: float | None = None

    def lag_seconds(self) -> float:
        """How long the oldest committed event the relay knows of has waited to be
        published (0 when it is caught up)."""
        oldest = self._oldest_waiting_at
        return 0.0 if oldest is None else max(0.0, time.time() - oldest)

    async def start(self, cursor: int | None = None) -> None:
        """Begin relaying after ``cursor`` (default: the store's current head)."""
        if cursor is None:
            cursor = await self._store.topic_head(Topic(TopicKind.GLOBAL))
        self.cursor = cursor
        self._task = asyncio.create_task(self._run(), name="relay")

    def advance(self, seq: int) -> None:
        """The broker delivered ``seq`` (published by any instance): nothing up to it needs
        publishing by this relay."""
        if seq > self.cursor:
            self.cursor = seq
            self._forget_published()

    def notify(self, event: RatingEvent) -> None:
        """Called by the service right after it committed ``event``."""
        if self._publish_now is not None and not self._told and not self._draining.locked():
            handing = self._handing
            if event.seq == (handing[-1].seq if handing else self.cursor) + 1:
                # The next event, nothing waiting before it and no drain under way: handing
                # it over this pass keeps seq order, as the run loop would a moment later.
                if not handing:
                    asyncio.get_running_loop().call_soon(self._hand_over)
                handing.append(event)
                return
        self._wait_for_run_loop(event)

    def _wait_for_run_loop(self, event: RatingEvent) -> None:
        if event.seq > self.cursor:
            self._told[event.seq] = event
            if self._oldest_waiting_at is None:
                self._oldest_waiting_at = event.occurred_at.timestamp()
            self._wake.set()

    def _hand_over(self) -> None:
        batch = [event for event in self._handing if event.seq > self.cursor]
        self._handing = []
        if not batch:
            return  # a drain (flush, a store read) published them first
        if self._draining.locked() or batch[0].seq != self.cursor + 1:
            for event in batch:  # a drain is under way: it takes them, in order
                self._wait_for_run_loop(event)
            return
        publish = self._publish_now
        assert publish is not None  # nothing is handed over without it
        publish(batch)
        self.cursor = batch[-1].seq
        self.published += len(batch)

    async def flush(self) -> None:
        """Publish everything committed so far (the relay keeps running)."""
        await self._drain(read_store=True)

    async def stop(self) -> None:
        """Publish everything committed so far, then stop."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    async def _run(self) -> None:
        while not self._stopping:
            woken = False
            with contextlib.suppress(TimeoutError):
                woken = await asyncio.wait_for(self._wake.wait(), self._poll_interval)
            self._wake.clear()
            if self._stopping:
                return
            try:
                await self._drain(read_store=not woken and self._broker.holds_lease())
            except Exception as exc:
                self.failures += 1
                # The store or broker failed: keep the cursor, retry on the next tick. One line
                # per outage, not one per tick (the broker's reader logs when it is back).
                if not self._failing:
                    log.warning(
                        "relay: publishing failed (%s: %s); retrying", type(exc).__name__, exc
                    )
                    log.debug("relay failure", exc_info=exc)
                self._failing = True
                await asyncio.sleep(self._poll_interval)
            else:
                if self._failing:
                    log.info("relay: publishing again")
                self._failing = False

    async def _drain(self, *, read_store: bool) -> None:
        async with self._draining:
            await self._drain_locked(read_store=read_store)

    async def _drain_locked(self, *, read_store: bool) -> None:
        while True:
            batch: list[RatingEvent] = []
            while (event := self._told.pop(self.cursor + 1 + len(batch), None)) is not None:
                batch.append(event)
            if batch:
                if await self._publish(batch):
                    continue
                read_store = True  # the broker is behind what we were told: fill from the store
            if self._told and not read_store:
                # A later event arrived first; give the earlier one's notify a moment.
                await asyncio.sleep(self._gap_grace)
                if self.cursor + 1 in self._told:
                    continue
                read_store = True
            if not (read_store or self._told):
                return
            events = await self._store.events_after(self.cursor, READ_BATCH)
            if not events:
                self._forget_published()
                return
            if self._oldest_waiting_at is None:
                self._oldest_waiting_at = events[0].occurred_at.timestamp()
            if not await self._publish(events) and self.cursor == 0:
                return  # the broker waits for the lease holder to seed it
            if len(events) < READ_BATCH:
                read_store = False

    async def _publish(self, events: list[RatingEvent]) -> bool:
        """Publish a batch complete after the cursor; False if the broker refused part of it
        (its cursor, now ours, is behind: the caller reads the store from there)."""
        after = self.cursor
        result = await self._broker.publish(events, after)
        if result is None:
            # The broker has no cursor (Redis lost its data) and we may not seed it. The lease
            # holder seeds it from the start of the store; that needs a read from seq 0.
            if self.cursor != 0 and self._broker.holds_lease():
                log.warning("relay: the broker lost its stream; republishing the outbox")
            self.cursor = 0
            return False
        self.published += self._broker.appended
        self.cursor = result
        self._forget_published()
        return result >= events[-1].seq

    def _forget_published(self) -> None:
        if not self._told:
            # The common case, once per event in cluster mode: nothing to scan.
            self._oldest_waiting_at = None
            return
        for seq in [s for s in self._told if s <= self.cursor]:
            del self._told[seq]
        self._oldest_waiting_at = (
            self._told[min(self._told)].occurred_at.timestamp() if self._told else None
        )
