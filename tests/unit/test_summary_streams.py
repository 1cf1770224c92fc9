"""SummaryStreams without a server: one read and one frame per group per interval however
many members, the trailing edge of a burst, and stale reads retried; options and the
permissions of a token's ``topics`` claim."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import orjson
import pytest

from ratewire.domain import GameSummary, RatingEvent, SummaryDelta, SummaryTopic
from ratewire.security.permissions import may_follow_summary
from ratewire.security.tokens import Principal
from ratewire.services.summary_streams import BadOption, SummaryStreams, stream_key


class Reader:
    """A member that keeps what it is sent."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self._sent = asyncio.Event()

    def send(self, frame: bytes) -> None:
        self.frames.append(frame)
        self._sent.set()

    async def until_count(self, count: int) -> None:
        """Wait for a frame whose summary count is ``count``."""
        while counts(self)[-1] != count:
            self._sent.clear()
            await asyncio.wait_for(self._sent.wait(), 5)


class Game:
    """A game's counters as the store would hold them; ``lag`` makes reads return the state
    before the last write (a read older than an event delivered)."""

    def __init__(self) -> None:
        self.summary = GameSummary.empty("g")
        self.before = self.summary
        self.reads = 0
        self.lag = 0

    def rate(self, score: int) -> RatingEvent:
        self.before = self.summary
        self.summary = SummaryDelta.between(None, score).applied_to(
            self.summary, self.summary.offset + 1
        )
        return RatingEvent(
            seq=self.summary.offset,
            kind="created",
            game_id="g",
            user_id="u",
            game_offset=self.summary.offset,
            user_offset=1,
            data={},
            occurred_at=datetime.now(UTC),
        )

    async def read(self, game_id: str) -> GameSummary:
        self.reads += 1
        await asyncio.sleep(0)
        if self.lag:
            self.lag -= 1
            return self.before
        return self.summary


def streams_of(game: Game) -> SummaryStreams:
    async def top(limit: int, min_count: int) -> list[GameSummary]:
        return [game.summary]

    return SummaryStreams(game.read, top, lambda s: {"count": s.count}, lambda: 0)


def counts(reader: Reader) -> list[int]:
    return [orjson.loads(frame)["data"]["count"] for frame in reader.frames]


async def test_one_read_per_interval_for_every_member_and_the_last_state_arrives() -> None:
    game = Game()
    streams = streams_of(game)
    key = stream_key(SummaryTopic("g"), 50)
    readers = [Reader() for _ in range(100)]
    for reader in readers:
        reader.send((await streams.join(key, reader)).frame)
    assert game.reads == 1 and streams.groups == 1  # the first member read, the others share
    for _ in range(30):  # a burst, within one interval
        streams.moved([game.rate(4)])
    await readers[0].until_count(30)
    assert counts(readers[0]) == [0, 30]  # conflated, the trailing edge kept
    assert game.reads == 2
    assert all(reader.frames == readers[0].frames for reader in readers)
    assert all(reader.frames[-1] is readers[0].frames[-1] for reader in readers)  # one encode
    for reader in readers:
        streams.leave(key, reader)
    assert streams.groups == 0


async def test_a_stale_read_is_read_again() -> None:
    game = Game()
    streams = streams_of(game)
    key = stream_key(SummaryTopic("g"), 50)
    reader = Reader()
    reader.send((await streams.join(key, reader)).frame)
    assert game.reads == 1 and counts(reader) == [0]
    game.lag = 1  # the next read is older than the event delivered: it does not count
    streams.moved([game.rate(5)])
    await reader.until_count(1)
    # Exactly: the join, the stale read, the read again (none while idle, none extra).
    assert counts(reader) == [0, 1] and game.reads == 3


def test_options_out_of_range_name_the_field() -> None:
    with pytest.raises(BadOption, match="intervalMs must be an integer from 50"):
        stream_key(SummaryTopic("g"), 49)
    with pytest.raises(BadOption, match=r"limit applies to summary\.games\.top only"):
        stream_key(SummaryTopic("g"), limit=3)
    with pytest.raises(BadOption, match="minCount"):
        stream_key(SummaryTopic(), min_count=0)
    assert stream_key(SummaryTopic()).options() == {"intervalMs": 1000, "limit": 10, "minCount": 1}


def test_a_topics_claim_reaches_summaries_through_their_names_or_their_events() -> None:
    def principal(*topics: str) -> Principal:
        return Principal("u", None, frozenset(), 0.0, topics or None)

    game, top = SummaryTopic("42"), SummaryTopic()
    assert may_follow_summary(principal(), game) and may_follow_summary(principal(), top)
    assert may_follow_summary(principal("rating.game.42"), game)
    assert may_follow_summary(principal("summary.game.*"), game)
    assert not may_follow_summary(principal("rating.game.42"), SummaryTopic("43"))
    assert not may_follow_summary(principal("rating.game.42"), top)
    assert may_follow_summary(principal("rating.game.*"), top)
    assert not may_follow_summary(principal("rating.user.u"), game)
