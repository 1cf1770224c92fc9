"""Game summaries and top games served from memory, never older than what this instance has
seen.

Every committed event reaches this process in order: through the hub (it delivered it to
subscribers) and, for writes made here, at commit, before the 2xx goes out. Each one raises
the game's *floor*: the offset an answer for that game must have reached. A cached summary
below its game's floor is dropped; a summary read from the store while events arrived is
kept only if it reached their offsets (else it is read again). So:

- an answer is never older than any event this instance has delivered or committed;
- a read after a 2xx write to this instance sees that write (read-your-writes), also in
  cluster mode, where the instance's own event may reach its hub later than the answer.

Entries are not patched from events: an update's event carries the rating after, not the
score before, so the delta is unknown here. The summary is read again on the next request
instead (one indexed row). Top-games answers are dropped on any event.

Memory is bounded: an LRU of ``summary_cache_size`` summaries. Misses of one game share one
store read (single flight).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from ratewire.domain import GameSummary

#: A read still older than events that arrived meanwhile is retried this often, then answered.
MAX_REREADS = 3
TopKey = tuple[int, int]


class SummaryCache:
    """The LRU of game summaries and the top-games answers, with hit and miss counts."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[str, GameSummary] = OrderedDict()
        #: Floors of games being read from the store (events seen during the read).
        self._reading: dict[str, int] = {}
        self._flights: dict[str, asyncio.Future[GameSummary]] = {}
        self._top: dict[TopKey, list[GameSummary]] = {}
        self._top_generation = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    # -- what this instance sees --------------------------------------------------------------

    def saw(self, game_id: str, game_offset: int) -> None:
        """An event of ``game_id`` at ``game_offset`` was committed here or delivered here."""
        cached = self._entries.get(game_id)
        if cached is not None and cached.offset < game_offset:
            del self._entries[game_id]
        reading = self._reading.get(game_id)
        if reading is not None and reading < game_offset:
            self._reading[game_id] = game_offset
        self._top_generation += 1
        if self._top:
            self._top.clear()

    # -- answers ---------------------------------------------------------------------------

    async def summary(
        self, game_id: str, read: Callable[[str], Awaitable[GameSummary]]
    ) -> GameSummary:
        """The game's summary: from memory when it is there, else ``read`` from the store."""
        cached = self._entries.get(game_id)
        if cached is not None:
            self._entries.move_to_end(game_id)
            self.hits += 1
            return cached
        self.misses += 1
        flight = self._flights.get(game_id)
        if flight is not None:
            return await asyncio.shield(flight)
        flight = asyncio.get_running_loop().create_future()
        self._flights[game_id] = flight
        try:
            summary = await self._read_fresh(game_id, read)
        except BaseException as exc:
            flight.set_exception(exc)
            flight.exception()  # retrieved: only the waiters (if any) need it
            raise
        finally:
            del self._flights[game_id]
        flight.set_result(summary)
        return summary

    async def _read_fresh(
        self, game_id: str, read: Callable[[str], Awaitable[GameSummary]]
    ) -> GameSummary:
        summary = GameSummary.empty(game_id)
        for _ in range(MAX_REREADS):
            self._reading[game_id] = 0
            try:
                summary = await read(game_id)
            finally:
                floor = self._reading.pop(game_id, 0)
            if summary.offset >= floor:
                self._remember(summary)
                return summary
        return summary  # events keep arriving faster than reads: answer, do not keep

    def _remember(self, summary: GameSummary) -> None:
        self._entries[summary.game_id] = summary
        self._entries.move_to_end(summary.game_id)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    async def top_games(
        self, key: TopKey, read: Callable[[], Awaitable[list[GameSummary]]]
    ) -> list[GameSummary]:
        """Top games for ``key`` (limit, min count): from memory until the next event."""
        cached = self._top.get(key)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        games: list[GameSummary] = []
        for _ in range(MAX_REREADS):
            generation = self._top_generation
            games = await read()
            if generation == self._top_generation:  # no event during the read
                if len(self._top) >= 64:
                    self._top.clear()  # a handful of (limit, minCount) pairs is the norm
                self._top[key] = games
                return games
        return games
