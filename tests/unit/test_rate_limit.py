"""The REST limiter's sliding-window counter: the numbers of the ``limits`` library's
SlidingWindowCounterRateLimiter (its algorithm, which ratewire runs in process), at a cost
that does not grow with the number of clients."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from ratewire.security.ratelimit import SlidingWindowCounter

START = 1_699_999_990.0  # ten seconds into a minute (1_699_999_980 is a multiple of 60)


def test_a_client_gets_its_limit_then_429_with_when_to_retry() -> None:
    counter = SlidingWindowCounter(3)
    decisions = [counter.hit("alice", START + n * 0.1) for n in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert decisions[-1].reset_seconds == 50, "the current minute's hits stop counting then"
    assert counter.hit("bob", START).allowed, "another client has a quota of its own"


def test_the_previous_minute_still_weighs_as_the_window_slides() -> None:
    counter = SlidingWindowCounter(10)
    for n in range(10):
        assert counter.hit("alice", START + n).allowed
    # 15 s into the next minute three quarters of the last one still count: 7.5 of 10.
    allowed = [counter.hit("alice", START + 65 + n / 10).allowed for n in range(4)]
    assert allowed == [True, True, True, False]
    later = counter.hit("alice", START + 85)  # 35 s in: 25/60 of 10, and 4 of this minute
    assert later.allowed and later.remaining == 2


def test_clients_gone_for_two_minutes_are_forgotten() -> None:
    counter = SlidingWindowCounter(5)
    for n in range(10_000):
        counter.hit(f"user{n}", START)
    counter.hit("alice", START + 125)
    assert len(counter._current) + len(counter._previous) == 1


_hits = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.floats(min_value=0, max_value=20)),
    min_size=1,
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(hits=_hits, limit=st.integers(min_value=1, max_value=8))
def test_it_answers_what_the_limits_library_answers(
    hits: list[tuple[str, float]], limit: int
) -> None:
    clock = [START]
    ours = SlidingWindowCounter(limit)
    item = RateLimitItemPerMinute(limit)
    theirs = SlidingWindowCounterRateLimiter(MemoryStorage())
    real_time = time.time
    try:
        time.time = lambda: clock[0]  # type: ignore[assignment]  # limits reads the clock
        for key, step in hits:
            clock[0] += step
            now = clock[0]
            decision = ours.hit(key, now)
            assert decision.allowed == theirs.hit(item, key), (key, now)
            stats = theirs.get_window_stats(item, key)
            assert decision.remaining == max(stats.remaining, 0)
            if stats.reset_time > now:
                assert decision.reset_seconds == max(1, -(-(stats.reset_time - now) // 1))
    finally:
        time.time = real_time  # type: ignore[method-assign]


@pytest.mark.parametrize("clients", [10, 50_000])
def test_a_hit_costs_the_same_with_many_clients(clients: int) -> None:
    """What the limits library's memory storage did not do (every hit scanned every key)."""
    counter = SlidingWindowCounter(600)
    for n in range(clients):
        counter.hit(f"user{n}", START)
    assert len(counter._current) == clients
    assert counter.hit("user0", START + 1).remaining == 598
