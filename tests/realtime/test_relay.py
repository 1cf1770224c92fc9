"""The relay publishes every committed event once, in commit order."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from ratewire.broker import LocalBroker
from ratewire.domain import RatingEvent
from ratewire.services.relay import Relay
from tests.realtime.harness import Harness


async def _relay(harness: Harness, published: list[int]) -> Relay:
    broker = LocalBroker()
    await broker.start(lambda events: published.extend(e.seq for e in events))
    relay = Relay(harness.store, broker, poll_interval=0.05)
    await relay.start()
    return relay


async def test_out_of_order_notifications_are_published_in_order(harness: Harness) -> None:
    published: list[int] = []
    relay = await _relay(harness, published)
    events: list[RatingEvent] = [await harness.commit("42", str(u)) for u in range(5)]
    for event in reversed(events):
        relay.notify(event)
    await asyncio.sleep(0.05)
    await relay.stop()
    assert published == [1, 2, 3, 4, 5]


async def test_events_nobody_announced_are_found_in_the_outbox(harness: Harness) -> None:
    published: list[int] = []
    relay = await _relay(harness, published)
    events = [await harness.commit("42", str(u)) for u in range(3)]
    relay.notify(events[2])  # 1 and 2 were committed elsewhere (another process, a cancel)
    await asyncio.sleep(0.2)
    assert published == [1, 2, 3]
    await harness.commit("43", "9")  # never announced at all: the poll finds it
    await asyncio.sleep(0.2)
    await relay.stop()
    assert published == [1, 2, 3, 4]


async def test_restart_resumes_at_the_head_without_republishing(harness: Harness) -> None:
    await harness.commit("42", "1")
    published: list[int] = []
    relay = await _relay(harness, published)
    assert relay.cursor == 1
    relay.notify(await harness.commit("42", "2"))
    await relay.stop()
    assert published == [2]


class _DownBroker(LocalBroker):
    """A broker that refuses every publish until ``up`` is set."""

    up = False

    async def publish(self, events: Sequence[RatingEvent], after: int) -> int | None:
        if not self.up:
            raise ConnectionError("broker down")
        return await super().publish(events, after)


async def test_relay_lag_grows_while_events_wait_and_is_zero_once_published(
    harness: Harness,
) -> None:
    broker = _DownBroker()
    published: list[int] = []
    await broker.start(lambda events: published.extend(e.seq for e in events))
    relay = Relay(harness.store, broker, poll_interval=0.05)
    await relay.start()
    assert relay.lag_seconds() == 0
    relay.notify(await harness.commit("42", "1"))
    await asyncio.sleep(0.3)
    waited = relay.lag_seconds()
    assert waited >= 0.25  # the operator's alert sees the event waiting
    assert relay.failures >= 1 and published == []
    broker.up = True
    for _ in range(50):
        if published:
            break
        await asyncio.sleep(0.05)
    await relay.stop()
    assert published == [1]
    assert relay.lag_seconds() == 0
    assert relay.published == 1


async def test_an_in_process_broker_gets_the_events_of_one_loop_pass_as_one_batch(
    harness: Harness,
) -> None:
    """The fast path: no wake-up of the run loop between the commit and the hand-off; the
    events told in one loop pass (a group commit's) go out together, and an event told ahead
    of its predecessor still waits for it (order before speed)."""
    batches: list[list[int]] = []
    broker = LocalBroker()
    await broker.start(lambda events: batches.append([e.seq for e in events]))
    relay = Relay(
        harness.store,
        broker,
        poll_interval=0.05,
        publish_now=lambda events: batches.append([e.seq for e in events]),
    )
    await relay.start()
    events = [await harness.commit("42", str(u)) for u in range(6)]
    for event in events[:3]:
        relay.notify(event)
    assert batches == [], "handed over at the end of the pass, not during notify()"
    await asyncio.sleep(0)
    assert batches == [[1, 2, 3]]
    relay.notify(events[4])
    await asyncio.sleep(0)
    assert batches == [[1, 2, 3]], "5 waits for 4"
    relay.notify(events[3])
    relay.notify(events[5])
    await asyncio.sleep(0.05)
    await relay.stop()
    assert [seq for batch in batches for seq in batch] == [1, 2, 3, 4, 5, 6]
    assert relay.published == 6
