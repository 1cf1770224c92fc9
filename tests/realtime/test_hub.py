"""Fan-out: one encode per topic, the same bytes to every subscriber."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import pytest

from ratewire.realtime.frames import websocket_text
from ratewire.realtime.hub import Hub
from tests.realtime.harness import Harness


class Recorder:
    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.writes = 0

    def send(self, frame: bytes) -> None:
        self.frames.append(frame)
        self.writes += 1

    def send_frames(self, payloads: Sequence[bytes], framed: bytes) -> None:
        assert framed == b"".join(websocket_text(payload) for payload in payloads)
        self.frames.extend(payloads)
        self.writes += 1


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

    def send_frames(self, payloads: Sequence[bytes], framed: bytes) -> None:
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


def _offsets(frames: list[bytes]) -> list[tuple[str, int]]:
    return [(f["topic"], f["offset"]) for f in map(orjson.loads, frames)]


def _live(hub: Hub, *subscriptions: tuple[str, Recorder]) -> None:
    """Each (topic, subscriber) subscribed and live from the start."""
    for topic, subscriber in subscriptions:
        hub.begin(topic, subscriber)
        hub.ready(topic, subscriber, 0, 0)


async def test_a_batch_reaches_each_subscriber_in_one_write_per_topic_in_order(
    harness: Harness,
) -> None:
    """A group commit's events: one socket write per subscriber and topic, every frame once,
    in offset order; a single event still goes out as a plain send."""
    hub = Hub()
    both, game_only = Recorder(), Recorder()
    _live(hub, ("rating.global", both), ("rating.game.42", both), ("rating.game.42", game_only))
    events = [await harness.commit(game, f"u{n}") for n, game in enumerate(["42", "43", "42"])]
    hub.publish_batch(events)
    assert both.writes == 2, "one write for rating.global, one for rating.game.42"
    assert sorted(_offsets(both.frames)) == [
        ("rating.game.42", 1),
        ("rating.game.42", 2),
        ("rating.global", 1),
        ("rating.global", 2),
        ("rating.global", 3),
    ]
    assert _offsets(game_only.frames) == [("rating.game.42", 1), ("rating.game.42", 2)]
    assert hub.deliveries == 7, "frames written: 3 + 2 to one, 2 to the other"
    assert hub.published_seq == 3
    hub.publish_batch([await harness.commit("42", "u9")])
    assert game_only.writes == 2 and _offsets(game_only.frames)[-1] == ("rating.game.42", 3)


async def test_a_batch_serves_wildcard_subscribers_each_game_event_once(
    harness: Harness,
) -> None:
    hub = Hub()
    wild, wild_and_42 = Recorder(), Recorder()
    _live(
        hub,
        ("rating.game.*", wild),
        ("rating.game.*", wild_and_42),
        ("rating.game.42", wild_and_42),
    )
    events = [await harness.commit(game, f"u{n}") for n, game in enumerate(["42", "43", "42"])]
    hub.publish_batch(events)
    expected = [("rating.game.42", 1), ("rating.game.43", 1), ("rating.game.42", 2)]
    assert _offsets(wild.frames) == expected and wild.writes == 1
    assert sorted(_offsets(wild_and_42.frames)) == sorted(expected), "each game event once"


async def test_a_subscriber_still_reading_history_gets_a_batch_after_it(
    harness: Harness,
) -> None:
    hub = Hub()
    late = Recorder()
    hub.begin("rating.game.42", late)
    events = [await harness.commit("42", f"u{n}") for n in range(3)]
    hub.publish_batch(events)
    assert late.frames == [], "pending: buffered, not sent"
    hub.ready("rating.game.42", late, 1, 1)  # history showed offset 1
    assert _offsets(late.frames) == [("rating.game.42", 2), ("rating.game.42", 3)]


async def test_subscribers_sharing_a_filter_cost_one_evaluation_per_event(
    harness: Harness,
) -> None:
    from ratewire.domain.filters import compile_filter

    hub = Hub()
    low, high = compile_filter("data.score <= 2"), compile_filter("data.score >= 4")
    lows = [Recorder() for _ in range(100)]
    highs = [Recorder() for _ in range(100)]
    plain = Recorder()
    for subscriber, event_filter in [(s, low) for s in lows] + [(s, high) for s in highs]:
        hub.begin("rating.global", subscriber, event_filter)
        hub.ready("rating.global", subscriber, 0, 0)
    hub.begin("rating.global", plain)
    hub.ready("rating.global", plain, 0, 0)
    for user, score in (("1", 1), ("2", 5), ("3", 3), ("4", 2)):
        hub.publish(await harness.commit("42", user, score))
    assert hub.filter_evaluations == 2 * 4, "one per event and distinct expression"
    assert hub.filter_groups("rating.global") == {low.source: 100, high.source: 100}
    assert all([orjson.loads(f)["offset"] for f in s.frames] == [1, 4] for s in lows)
    assert all([orjson.loads(f)["offset"] for f in s.frames] == [2] for s in highs)
    assert len(plain.frames) == 4
    assert lows[0].frames[0] is lows[99].frames[0], "encoded once, shared"
    assert hub.subscriber_count("rating.global") == 201


async def test_filtered_subscribers_are_not_in_the_plain_sets_and_are_dropped(
    harness: Harness,
) -> None:
    from ratewire.domain.filters import compile_filter

    hub = Hub()
    subscriber = Recorder()
    hub.begin("rating.game.42", subscriber, compile_filter("data.score == 1"))
    hub.ready("rating.game.42", subscriber, 0, 0)
    assert "rating.game.42" not in hub._live
    hub.publish(await harness.commit("42", "1", 1))
    hub.drop("rating.game.42", subscriber)
    hub.publish(await harness.commit("42", "2", 1))
    assert len(subscriber.frames) == 1 and hub.subscriber_count("rating.game.42") == 0
    assert hub.filter_evaluations == 1, "no group left: nothing evaluated"
    assert hub.known_head("rating.game.42") is None


async def test_a_pending_filtered_subscriber_gets_matching_events_without_gap_or_duplicate(
    harness: Harness,
) -> None:
    from ratewire.domain.filters import compile_filter

    hub = Hub()
    subscriber = Recorder()
    events = [await harness.commit("42", str(user), 1 + user % 2) for user in range(1, 7)]
    hub.begin("rating.game.42", subscriber, compile_filter("data.score == 2"))
    for event in events[:4]:  # published while the subscription reads history
        hub.publish(event)
    # History reached offset 2 (events 1-2 were read from the store).
    hub.ready("rating.game.42", subscriber, 2, events[1].seq)
    for event in events[4:]:
        hub.publish(event)
    offsets = [orjson.loads(f)["offset"] for f in subscriber.frames]
    assert offsets == [3, 5], "odd users score 2: 3 and 5 after the history point"
    assert hub.known_head("rating.game.42") == 6, "the head stays known past non-matching frames"
