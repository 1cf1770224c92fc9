"""The latency budget's bookkeeping: each stage once per event, whichever path delivered it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ratewire.domain import RatingEvent
from ratewire.observability.latency import DeliveryTimer


def _event(seq: int, at: datetime) -> RatingEvent:
    return RatingEvent(seq, "created", "g", "u", seq, 1, {}, at)


def test_each_stage_is_observed_once_per_event_even_when_delivery_beats_the_commit() -> None:
    seen: list[tuple[str, float]] = []
    timer = DeliveryTimer(lambda stage, seconds: seen.append((stage, seconds)))
    now = datetime.now(UTC)
    first, second = _event(1, now - timedelta(milliseconds=3)), _event(2, now)
    timer.committed(first)  # the usual order: commit, then delivery
    at = now.timestamp()
    timer.delivered(first, at, at + 0.001, at + 0.002, at + 0.009)
    # The relay's poll found the second event in the outbox before its request resumed.
    timer.delivered(second, at, at + 0.001, at + 0.002, at + 0.004)
    timer.committed(second)
    stages = [stage for stage, _ in seen]
    assert sorted(stages) == sorted(["commit", "relay", "encode", "first_write", "fan_out"] * 2), (
        "every stage once per event"
    )
    assert seen[0][0] == "commit" and 0.003 <= seen[0][1] < 1
    assert ("fan_out", 0.007) in [(stage, round(s, 3)) for stage, s in seen]
    assert [s for stage, s in seen if stage == "relay"][-1] == 0.0
