"""Where a subscription reads what it starts from (head, snapshot, replay for ``since``).

Instances with a database read the store: it holds every retained event and the summaries. A
``stream`` instance without one reads the broker's streams, which hold the last
``history.max_events_per_topic`` events of each topic on Redis and the last
``broker.max_events`` events on NATS; older ``since`` values are answered ``recovered:
false``, and snapshots are refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ratewire.domain import GameSummary, RatingEvent, Topic

if TYPE_CHECKING:
    from ratewire.broker.base import ClusterBroker


class HistorySource(Protocol):
    """What a session reads history from (a :class:`~ratewire.storage.base.RatingStore` is
    one)."""

    @property
    def epoch(self) -> str: ...

    async def topic_position(self, topic: Topic) -> tuple[int, int]:
        """(the topic's last offset, the global last offset), read at one instant."""

    async def topic_events(self, topic: Topic, since: int, limit: int) -> list[RatingEvent]:
        """The topic's retained events with offset above ``since``, in offset order."""

    async def summary(self, game_id: str) -> GameSummary:
        """The game's summary; :class:`SnapshotUnavailable` where there is no store."""


class SnapshotUnavailable(Exception):
    """This instance has no store to read a snapshot from."""


class HistoryBehind(Exception):
    """A client resumes from an offset this instance's history has not reached yet: the
    broker lost its streams and they are being rebuilt from the database. Not a gap: the events are
    in the database, and the client gets them once the rebuild is done."""


class StreamHistory:
    """History from the cluster broker's streams, for instances without a database."""

    def __init__(self, broker: ClusterBroker) -> None:
        self._broker = broker

    @property
    def epoch(self) -> str:
        return self._broker.epoch

    async def topic_position(self, topic: Topic) -> tuple[int, int]:
        return await self._broker.topic_position(topic)

    async def topic_events(self, topic: Topic, since: int, limit: int) -> list[RatingEvent]:
        return await self._broker.topic_events(topic, since, limit)

    async def summary(self, game_id: str) -> GameSummary:
        raise SnapshotUnavailable(game_id)
