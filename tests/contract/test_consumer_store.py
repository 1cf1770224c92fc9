"""The consumer store on every backend: a consumer is created once, claims hand each offset to
one member at a time (redelivering expired and released ones with their delivery count), acks
move the floor past every acked offset right above it, and idle consumers go."""

from __future__ import annotations

import asyncio

from ratewire.storage import RatingStore
from ratewire.storage.consumer_store import Claim, Consumer, ConsumerKey

NOW = 1_764_582_000_000
KEY = ConsumerKey("7", "workers", "rating.global")


def consumer(key: ConsumerKey = KEY, cursor: int = 0, active_at: int = NOW) -> Consumer:
    return Consumer(
        key=key,
        ack_floor=cursor,
        cursor=cursor,
        ack_wait_ms=1000,
        max_in_flight=10,
        created_at=NOW,
        active_at=active_at,
        filter="data.score < 3",
    )


async def test_a_consumer_is_created_once_listed_by_owner_and_removed(store: RatingStore) -> None:
    consumers = store.consumers
    made, created = await consumers.create(consumer(cursor=5))
    assert created and (made.ack_floor, made.cursor, made.filter) == (5, 5, "data.score < 3")
    again, created = await consumers.create(consumer(cursor=99))
    assert not created and again.cursor == 5  # an existing one goes on from its own position
    other = ConsumerKey("7", "auditors", "rating.game.42")
    await consumers.create(consumer(other))
    # Owners are exact: another sub (even one differing only in case) sees none of them.
    await consumers.create(consumer(ConsumerKey("Alice", "workers", "rating.global")))
    assert [c.key for c in await consumers.owned_by("7")] == [other, KEY]  # by topic
    assert [c.key.sub for c in await consumers.owned_by("alice")] == []
    assert await consumers.remove(other) is True
    assert await consumers.remove(other) is False
    assert await consumers.get(other) is None
    assert [c.key for c in await consumers.owned_by("7")] == [KEY]


async def test_claims_hand_each_offset_to_one_member_and_redeliver_when_due(
    store: RatingStore,
) -> None:
    consumers = store.consumers
    await consumers.create(consumer())
    assert await consumers.claim(KEY, "a", 2, 5, NOW) == ([Claim(1, 1), Claim(2, 1)], 2)
    assert await consumers.claim(KEY, "b", 10, 5, NOW) == (
        [Claim(3, 1), Claim(4, 1), Claim(5, 1)],
        5,
    )
    assert await consumers.claim(KEY, "c", 10, 5, NOW + 500) == ([], 5)  # all held
    held = await consumers.get(KEY)
    assert held is not None and held.pending == 5
    # a's claims are due after ack_wait_ms: the next claim takes them again, delivery 2.
    await consumers.ack(KEY, [3, 4, 5], NOW + 900)
    assert await consumers.claim(KEY, "c", 1, 5, NOW + 1001) == ([Claim(1, 2)], 5)
    assert await consumers.claim(KEY, "c", 10, 7, NOW + 1001) == (
        [Claim(2, 2), Claim(6, 1), Claim(7, 1)],
        7,
    )
    # A member that leaves releases its claims at once.
    assert await consumers.release(KEY, "c") == 4
    assert await consumers.claim(KEY, "b", 10, 7, NOW + 1002) == (
        [Claim(1, 3), Claim(2, 3), Claim(6, 2), Claim(7, 2)],
        7,
    )
    assert await consumers.claim(ConsumerKey("7", "none", "rating.global"), "a", 1, 5, NOW) == (
        [],
        0,
    )


async def test_acks_move_the_floor_and_refuse_offsets_never_delivered(store: RatingStore) -> None:
    consumers = store.consumers
    await consumers.create(consumer())
    await consumers.claim(KEY, "a", 5, 10, NOW)
    outcome = await consumers.ack(KEY, [2, 3, 9], NOW)
    assert (outcome.acked, outcome.refused, outcome.ack_floor) == ((2, 3), (9,), 0)
    outcome = await consumers.ack(KEY, [1, 1, 5], NOW)
    assert (outcome.acked, outcome.ack_floor) == ((1, 5), 3)
    outcome = await consumers.ack(KEY, [4, 2], NOW)  # 2 again: acked already, still fine
    assert (outcome.acked, outcome.refused, outcome.ack_floor) == ((2, 4), (), 5)
    after = await consumers.get(KEY)
    assert after is not None and (after.ack_floor, after.cursor, after.pending) == (5, 5, 0)
    # An acked offset is never handed out again, even after its deadline.
    assert await consumers.claim(KEY, "b", 10, 6, NOW + 10_000) == ([Claim(6, 1)], 6)
    gone = await consumers.ack(ConsumerKey("7", "none", "rating.global"), [1], NOW)
    assert gone.refused == (1,) and not gone.acked and not gone.found


async def test_concurrent_claims_never_hand_one_offset_to_two_members(store: RatingStore) -> None:
    consumers = store.consumers
    await consumers.create(consumer())
    results = await asyncio.gather(*(consumers.claim(KEY, f"m{i}", 3, 30, NOW) for i in range(8)))
    offsets = [c.offset for claims, _ in results for c in claims]
    assert sorted(offsets) == list(range(1, 25))


async def test_idle_consumers_are_removed(store: RatingStore) -> None:
    consumers = store.consumers
    await consumers.create(consumer(active_at=NOW))
    fresh = ConsumerKey("7", "fresh", "rating.global")
    await consumers.create(consumer(fresh, active_at=NOW))
    await consumers.claim(fresh, "a", 1, 1, NOW + 5000)  # activity keeps it
    assert await consumers.remove_idle(NOW + 1000) == [KEY]
    assert await consumers.get(KEY) is None and await consumers.get(fresh) is not None
