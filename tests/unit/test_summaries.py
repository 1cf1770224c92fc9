"""The in-memory summaries: hits, misses, eviction, and never older than events seen."""

from __future__ import annotations

import asyncio

from ratewire.domain import GameSummary
from ratewire.services.summaries import SummaryCache


def summary(game: str, count: int, offset: int) -> GameSummary:
    return GameSummary(game, count, 3 * count, (0, 0, count, 0, 0), offset)


class FakeStore:
    """Answers with whatever ``state`` holds; counts reads; may pause inside a read."""

    def __init__(self) -> None:
        self.state: dict[str, GameSummary] = {}
        self.reads = 0
        self.gate: asyncio.Event | None = None

    async def read(self, game: str) -> GameSummary:
        self.reads += 1
        answer = self.state.get(game, GameSummary.empty(game))
        if self.gate is not None:
            await self.gate.wait()
        return answer


async def test_a_second_read_is_a_hit_until_an_event_of_that_game() -> None:
    cache, store = SummaryCache(10), FakeStore()
    store.state["a"] = summary("a", 1, 1)
    assert (await cache.summary("a", store.read)).count == 1
    assert (await cache.summary("a", store.read)).count == 1
    assert (store.reads, cache.hits, cache.misses) == (1, 1, 1)
    store.state["a"] = summary("a", 2, 2)
    cache.saw("b", 7)  # another game: no effect on a
    assert (await cache.summary("a", store.read)).count == 1
    cache.saw("a", 2)
    assert (await cache.summary("a", store.read)).count == 2
    assert store.reads == 2


async def test_a_read_overtaken_by_an_event_is_read_again() -> None:
    cache, store = SummaryCache(10), FakeStore()
    store.state["a"] = summary("a", 1, 1)
    store.gate = asyncio.Event()
    reading = asyncio.create_task(cache.summary("a", store.read))
    await asyncio.sleep(0)
    # The event commits and is delivered while the first read is under way (it saw offset 1).
    store.state["a"] = summary("a", 2, 2)
    cache.saw("a", 2)
    store.gate.set()
    assert (await reading).count == 2
    assert store.reads == 2


async def test_concurrent_misses_share_one_read_and_the_lru_is_bounded() -> None:
    cache, store = SummaryCache(2), FakeStore()
    store.gate = asyncio.Event()
    readers = [asyncio.create_task(cache.summary("a", store.read)) for _ in range(5)]
    await asyncio.sleep(0)
    store.gate.set()
    await asyncio.gather(*readers)
    assert store.reads == 1
    store.gate = None
    for game in ("b", "c"):
        await cache.summary(game, store.read)
    assert len(cache) == 2
    await cache.summary("a", store.read)  # evicted (least recently used): read again
    assert store.reads == 4


async def test_top_games_are_dropped_on_any_event() -> None:
    cache = SummaryCache(10)
    reads = 0

    async def read() -> list[GameSummary]:
        nonlocal reads
        reads += 1
        return [summary("a", reads, reads)]

    assert (await cache.top_games((10, 1), read))[0].count == 1
    assert (await cache.top_games((10, 1), read))[0].count == 1
    cache.saw("z", 1)
    assert (await cache.top_games((10, 1), read))[0].count == 2
