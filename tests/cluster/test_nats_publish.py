"""What only the NATS broker has, against a real nats-server (the contract every broker keeps,
racing publishers and gaps included, is tests/contract/test_broker_contract.py): a stream that
has forgotten its last message id (what a nats-server restarted after the duplicate window
knows), topic history read from the one shared stream, and the stream's storage setting."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import nats
import pytest
from tests.support.nats_server import NatsServer

from ratewire.broker.event_codec import encode_event
from ratewire.broker.nats.broker import NatsBroker
from ratewire.config import BrokerSettings
from ratewire.domain import RatingEvent, Topic, TopicKind


def _event(seq: int, game: str = "g", user: str = "u") -> RatingEvent:
    data = {"id": f"r{seq}", "gameId": game, "userId": user, "score": 3, "version": 1}
    return RatingEvent(seq, "created", game, user, seq, seq, data, datetime.now(UTC))


async def _brokers(server: NatsServer, count: int) -> list[NatsBroker]:
    settings = BrokerSettings(backend="nats", url=server.url, prefix="count")
    brokers = [NatsBroker(settings) for _ in range(count)]
    for broker in brokers:
        await broker.connect("epoch1")
    await brokers[0].start(lambda event: None, follow=False)  # takes the lease: may seed
    for _ in range(100):
        if brokers[0].holds_lease():
            break
        await asyncio.sleep(0.05)
    assert brokers[0].holds_lease()
    return brokers


async def _stream_seqs(broker: NatsBroker) -> list[int]:
    return [event.seq for event in await broker.topic_events(Topic(TopicKind.GLOBAL), 0, 100)]


async def test_a_stream_that_forgot_its_last_message_id_still_takes_the_next_event_once(
    nats_server: NatsServer,
) -> None:
    (broker,) = await _brokers(nats_server, 1)
    raw = await nats.connect(nats_server.url)
    try:
        assert await broker.publish([_event(1), _event(2)], 0) == 2
        # Event 3 appended without a message id: the stream's last id is now unknown.
        js = raw.jetstream()
        await js.publish("count.epoch1.ev.g.u", encode_event(_event(3)))
        # A relay that saw only 1 and 2 publishes 3 and 4: 3 is recognised as there, 4 goes
        # in after it, anchored on the stream's sequence.
        assert await broker.publish([_event(3), _event(4)], 2) == 4
        assert broker.appended == 1
        assert await _stream_seqs(broker) == [1, 2, 3, 4]
        assert await broker.publish([_event(5)], 4) == 5  # and the chain holds again
        assert await _stream_seqs(broker) == [1, 2, 3, 4, 5]
    finally:
        await raw.close()
        await broker.close()


async def test_topic_history_reads_each_topic_from_the_shared_stream(
    nats_server: NatsServer,
) -> None:
    (broker,) = await _brokers(nats_server, 1)
    try:
        events = []
        offsets = {"a": 0, "b": 0}
        for seq in range(1, 41):
            game = "a" if seq % 3 else "b"
            offsets[game] += 1
            data = {"id": f"r{seq}", "gameId": game, "userId": "u", "score": 3, "version": 1}
            events.append(
                RatingEvent(seq, "created", game, "u", offsets[game], seq, data, datetime.now(UTC))
            )
        assert await broker.publish(events, 0) == 40
        game_b = Topic(TopicKind.GAME, "b")
        assert await broker.topic_position(game_b) == (13, 40)
        replay = await broker.topic_events(game_b, 10, 100)
        assert [(e.game_offset, e.seq) for e in replay] == [(11, 33), (12, 36), (13, 39)]
        page = await broker.topic_events(Topic(TopicKind.GAME, "a"), 0, 5)
        assert [e.game_offset for e in page] == [1, 2, 3, 4, 5]
        assert await broker.topic_events(game_b, 13, 100) == []
        assert await broker.topic_position(Topic(TopicKind.USER, "nobody")) == (0, 40)
    finally:
        await broker.close()


async def test_the_stream_is_made_with_the_configured_storage_and_kept_when_it_differs(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    for storage in ("memory", "file"):
        settings = BrokerSettings(
            backend="nats", url=nats_server.url, prefix="kept", stream_storage=storage
        )
        broker = NatsBroker(settings)
        try:
            await broker.connect("epoch1")  # the second time: the stream exists, in memory
        finally:
            await broker.close()
    raw = await nats.connect(nats_server.url)
    try:
        info = await raw.jetstream().stream_info("kept_epoch1")
    finally:
        await raw.close()
    assert info.config.storage == "memory"
    assert "keeps its configuration" in caplog.text
