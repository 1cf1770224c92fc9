"""Two relays publishing overlapping batches into one Redis stream (two workers, or two
instances, both told of the same commits): the stream gets each event once, and each relay
counts only the events it appended itself. The count is ``ratewire_events_published_total``;
it used to add the whole move of the cursor, so the workers' sum came out above the number of
events (seen as 13 for 12 in the workers test under CI load)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from tests.support.redis_server import RedisServer

from ratewire.broker.redis import RedisBroker
from ratewire.domain import RatingEvent, Topic, TopicKind


def _event(seq: int) -> RatingEvent:
    data = {"id": f"r{seq}", "gameId": "g", "userId": "u", "score": 3, "version": 1}
    return RatingEvent(seq, "created", "g", "u", seq, seq, data, datetime.now(UTC))


async def test_each_publisher_counts_only_the_events_it_appended(
    redis_server: RedisServer,
) -> None:
    first = RedisBroker(redis_server.url, prefix="count")
    second = RedisBroker(redis_server.url, prefix="count")
    try:
        for broker in (first, second):
            await broker.connect("epoch1")
        await first.start(lambda event: None, follow=False)  # takes the lease: may seed
        for _ in range(50):
            if first.holds_lease():
                break
            await asyncio.sleep(0.05)
        events = [_event(seq) for seq in (1, 2, 3)]
        assert await first.publish(events[:2], 0) == 2
        assert first.appended == 2
        assert await second.publish(events, 0) == 3  # 1 and 2 were there already
        assert second.appended == 1
        assert await second.publish(events, 0) == 3
        assert second.appended == 0
        stream = await first.topic_events(Topic(TopicKind.GLOBAL), 0, 10)
        assert [event.seq for event in stream] == [1, 2, 3]  # each once
    finally:
        await first.close()
        await second.close()
