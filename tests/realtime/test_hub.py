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
