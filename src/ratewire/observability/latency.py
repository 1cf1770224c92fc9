"""Where the time goes between a write's request and its subscribers' sockets: the latency
budget of one event, stage by stage, and the garbage collector's pauses that cut across it.

Stages, each timed once per event (never per subscriber):

- ``commit``: the service took the write (the event's ``began_at``, or ``occurred_at`` cut to
  the millisecond for an event that has none) -> the store's transaction committed and the
  request's task resumed;
- ``relay``: committed -> the event reached this instance's hub (the relay's hand-off, or in a
  cluster the broker's round trip; events committed by another instance have no local commit
  time and skip ``commit`` and ``relay``);
- ``encode``: reached the hub -> the first topic's frame was encoded;
- ``first_write``: encoded -> the first subscriber's socket write returned;
- ``fan_out``: first -> last socket write of the event (all three topics).

``ratewire_delivery_stage_seconds{stage}`` holds them (docs/operations.md, the README's
latency budget). ``ratewire_gc_pause_seconds{generation}`` holds each collection's pause.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from ratewire.domain import RatingEvent

STAGES = ("commit", "relay", "encode", "first_write", "fan_out")
#: The parts of ``commit`` the SQL stores time per write (RatingStore.observe_commits): the
#: wait for its batch, the batch's transaction (its fsync included), and the wait for the
#: loop after it; the rest of ``commit`` is the request's task resuming after its answer.
COMMIT_PARTS = ("commit_queue", "commit_transaction", "commit_wake")
#: Fine enough at the low end to tell 0.2 ms from 1 ms, wide enough for a GC-sized tail.
STAGE_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.1,
    0.25,
    1.0,
)
#: Commit times kept for events not delivered here yet; past this, the oldest are forgotten
#: (an api-only instance never delivers, so nothing would ever take them).
_MAX_PENDING = 4096

Observe = Callable[[str, float], None]


class DeliveryTimer:
    """Collects one event's stage times and reports them through ``observe(stage, seconds)``."""

    __slots__ = ("_committed_at", "_delivered_through", "_observe")

    def __init__(self, observe: Observe) -> None:
        self._observe = observe
        self._committed_at: dict[int, float] = {}
        self._delivered_through = 0  # events are delivered in seq order

    def committed(self, event: RatingEvent) -> None:
        """The service committed ``event`` (an after-commit step, before the relay's)."""
        now = time.time()
        began = event.began_at or event.occurred_at.timestamp()
        self._observe("commit", max(0.0, now - began))
        if event.seq <= self._delivered_through:
            # Delivered before its request resumed (the relay's poll or the broker found it in
            # the outbox first): nothing was left to wait for.
            self._observe("relay", 0.0)
            return
        pending = self._committed_at
        if len(pending) >= _MAX_PENDING:
            pending.clear()
        pending[event.seq] = now

    def delivered(
        self, event: RatingEvent, reached_hub: float, encoded: float, first: float, last: float
    ) -> None:
        """The hub wrote ``event``: ``reached_hub`` and the write times are wall-clock seconds
        (``encoded`` is 0 when no local subscriber wanted the event)."""
        committed = self._committed_at.pop(event.seq, None)
        if event.seq > self._delivered_through:
            self._delivered_through = event.seq
        observe = self._observe
        if committed is not None:
            observe("relay", max(0.0, reached_hub - committed))
        if encoded:
            observe("encode", encoded - reached_hub)
            observe("first_write", first - encoded)
            observe("fan_out", last - first)


class GcPauses:
    """Times each garbage collection of this process (gc.callbacks) into ``observe``."""

    def __init__(self, observe: Callable[[int, float], None]) -> None:
        self._observe = observe
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._observe(int(info["generation"]), time.perf_counter() - self._started)

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def uninstall(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
