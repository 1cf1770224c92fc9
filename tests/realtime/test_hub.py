"""Fan-out: one encode per topic, the same bytes to every subscriber."""

from __future__ import annotations

import pytest

from ratewire.realtime.hub import Hub
from tests.realtime.harness import Harness


class Recorder:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send(self, frame: bytes) -> None:
        self.frames.append(frame)


async def test_every_subscriber_gets_the_same_encoded_frame(harness: Harness) -> None:
    hub = Hub()
    subscribers = [Recorder() for _ in range(50)]
    for subscriber in subscribers:
        hub.begin("rating.game.42", subscriber)
        hub.ready("rating.game.42", subscriber, 0, 0)
    event = await harness.commit("42", "7")
    hub.publish(event)
    first = subscribers[0].frames[0]
    assert all(s.frames[0] is first for s in subscribers), "encoded once, shared"
    assert hub.deliveries == 50


async def test_topics_without_subscribers_cost_no_encoding(harness: Harness) -> None:
    hub = Hub()
    event = await harness.commit("42", "7")
    hub.publish(event)
    assert hub.deliveries == 0 and hub.published_seq == event.seq


class Broken:
    def send(self, frame: bytes) -> None:
        raise OSError("peer vanished")


async def test_a_failing_subscriber_does_not_stop_the_others(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    hub = Hub()
    before, broken, after = Recorder(), Broken(), Recorder()
    for subscriber in (before, broken, after):
        hub.begin("rating.global", subscriber)
        hub.ready("rating.global", subscriber, 0, 0)
    hub.publish(await harness.commit("42", "7"))
    hub.publish(await harness.commit("42", "8"))
    assert len(before.frames) == 2 and len(after.frames) == 2
    assert hub.subscriber_count("rating.global") == 2, "the broken one is dropped"
    assert "whose send failed" in caplog.text


async def test_a_wildcard_subscriber_that_fails_is_dropped_and_the_rest_still_get_it(
    harness: Harness,
) -> None:
    hub = Hub()
    game, wild, broken = Recorder(), Recorder(), Broken()
    hub.begin("rating.game.42", game)
    hub.ready("rating.game.42", game, 0, 0)
    for subscriber in (broken, wild):
        hub.begin("rating.game.*", subscriber)
        hub.ready("rating.game.*", subscriber, 0, 0)
    hub.publish(await harness.commit("42", "7"))
    assert len(game.frames) == 1 and len(wild.frames) == 1
    assert hub.subscriber_count("rating.game.*") == 1
    assert hub.deliveries == 2


async def test_publish_records_when_the_first_and_last_writes_happened(harness: Harness) -> None:
    """The latency budget reads these once per event (ratewire_delivery_stage_seconds)."""
    hub = Hub()
    hub.publish(await harness.commit("42", "6"))
    assert hub.encoded_at == 0.0, "nobody subscribed: nothing encoded, nothing timed"
    subscriber = Recorder()
    hub.begin("rating.global", subscriber)
    hub.ready("rating.global", subscriber, 0, 1)
    hub.publish(await harness.commit("42", "7"))
    assert 0 < hub.encoded_at <= hub.first_write_at <= hub.last_write_at
