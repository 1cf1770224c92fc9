"""The broker contract, run on every broker as tests/contract/test_store_contract.py runs on
every store: what the relay and the hub rely on, whatever ``broker.backend`` is.

Every broker: events reach the handler in ``seq`` order, and publishing a batch twice (two
relays told of the same commits) delivers each event once. The cluster brokers (Redis, NATS,
each on a server of the test's own) also: a batch that would leave a gap is refused, the relay
lease passes to another instance when its holder goes, a consumer that starts behind the
broker's retention fills the gap from the store, each database's epoch keeps its own history,
and an unreachable broker raises ratewire's own ``BrokerUnavailable``."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ratewire.broker import BrokerUnavailable, LocalBroker
from ratewire.broker.base import ClusterBroker
from ratewire.config import BrokerSettings
from ratewire.domain import RatingEvent, Topic, TopicKind
from tests.support.nats_server import NatsServer
from tests.support.redis_server import RedisServer

WITHIN = 10.0


def event(seq: int, game: str = "g", user: str = "u") -> RatingEvent:
    data = {"id": f"r{seq}", "gameId": game, "userId": user, "score": 3, "version": 1}
    return RatingEvent(seq, "created", game, user, seq, seq, data, datetime.now(UTC))


def events(first: int, last: int) -> list[RatingEvent]:
    return [event(seq) for seq in range(first, last + 1)]


async def eventually(condition: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + WITHIN
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {WITHIN} s: {what}")
        await asyncio.sleep(0.02)


# -- the brokers ---------------------------------------------------------------------------------

BrokerFactory = Callable[..., ClusterBroker]


def _started(kind: type[Any], tmp_path: Path) -> Any:
    try:
        return kind(tmp_path)
    except (RuntimeError, OSError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot start {kind.__name__}: {exc} (CI=true: broker tests must run)")
        pytest.skip(f"cannot start {kind.__name__}: {exc}")


@pytest.fixture(params=["redis", "nats"])
def broker_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    server = _started(RedisServer if request.param == "redis" else NatsServer, tmp_path)
    yield server
    server.stop()


@pytest.fixture
async def cluster_brokers(broker_server: Any) -> AsyncIterator[BrokerFactory]:
    """Make brokers (instances of one cluster) on the test's server; all closed at the end."""
    made: list[ClusterBroker] = []

    def make(*, max_events: int = 10_000, lease_seconds: float = 0.6) -> ClusterBroker:
        broker: ClusterBroker
        if isinstance(broker_server, RedisServer):
            from ratewire.broker.redis.broker import RedisBroker

            broker = RedisBroker(
                broker_server.url,
                prefix="contract",
                max_events=max_events,
                lease_seconds=lease_seconds,
            )
        else:
            from ratewire.broker.nats.broker import NatsBroker

            broker = NatsBroker(
                BrokerSettings(
                    backend="nats",
                    url=broker_server.url,
                    prefix="contract",
                    max_events=max_events,
                    lease_seconds=lease_seconds,
                )
            )
        made.append(broker)
        return broker

    yield make
    for broker in made:
        await broker.close()


async def lease_holder(make: BrokerFactory, epoch: str = "epoch1", **options: Any) -> ClusterBroker:
    """A connected broker holding the relay lease (only the holder seeds an empty stream)."""
    broker = make(**options)
    await broker.connect(epoch)
    await broker.start(lambda _: None, follow=False)
    await eventually(broker.holds_lease, "the first broker takes the free lease")
    return broker


async def follower(
    make: BrokerFactory,
    received: list[int],
    *,
    start_after: int | None = None,
    gap_reader: Any = None,
) -> ClusterBroker:
    broker = make()
    await broker.connect("epoch1")
    await broker.start(
        lambda e: received.append(e.seq),
        relay=False,
        start_after=start_after,
        gap_reader=gap_reader,
    )
    return broker


# -- every broker ----------------------------------------------------------------------------------


async def test_the_local_broker_hands_each_event_on_once_in_order() -> None:
    received: list[int] = []

    def handler(batch: Sequence[RatingEvent]) -> None:
        received.extend(e.seq for e in batch)

    broker = LocalBroker()
    await broker.start(handler)
    assert await broker.publish(events(1, 2), 0) == 2
    assert broker.appended == 2
    assert await broker.publish(events(1, 3), 0) == 3  # told twice: 1 and 2 go on once
    assert broker.appended == 1
    assert received == [1, 2, 3]
    assert broker.holds_lease()  # alone, it is the relay
    await broker.close()


async def test_events_reach_every_follower_once_in_order_however_often_published(
    cluster_brokers: BrokerFactory,
) -> None:
    first = await lease_holder(cluster_brokers)
    second = cluster_brokers()
    await second.connect("epoch1")
    received: list[int] = []
    await follower(cluster_brokers, received, start_after=0)
    assert await first.publish(events(1, 2), 0) == 2
    assert first.appended == 2
    assert await second.publish(events(1, 3), 0) == 3  # 1 and 2 were there already
    assert second.appended == 1
    assert await second.publish(events(1, 3), 0) == 3
    assert second.appended == 0
    await eventually(lambda: len(received) >= 3, "three events delivered")
    await asyncio.sleep(0.2)  # nothing more comes
    assert received == [1, 2, 3]
    history = await first.topic_events(Topic(TopicKind.GLOBAL), 0, 10)
    assert [e.seq for e in history] == [1, 2, 3]
    assert await first.topic_position(Topic(TopicKind.GLOBAL)) == (3, 3)


async def test_a_batch_that_would_leave_a_gap_is_refused(cluster_brokers: BrokerFactory) -> None:
    holder = await lease_holder(cluster_brokers)
    other = cluster_brokers()
    await other.connect("epoch1")
    assert await other.publish(events(1, 1), 0) is None  # only the holder seeds
    assert await holder.publish(events(1, 2), 0) == 2
    assert await other.publish(events(4, 5), 3) == 2  # 3 is missing: read the store from 2
    assert other.appended == 0
    assert await holder.cursor() == 2


async def test_the_lease_passes_on_when_its_holder_goes(cluster_brokers: BrokerFactory) -> None:
    holder = await lease_holder(cluster_brokers)
    waiting = cluster_brokers()
    await waiting.connect("epoch1")
    await waiting.start(lambda _: None, follow=False)
    await asyncio.sleep(0.5)
    assert not waiting.holds_lease()  # one holder at a time
    await holder.close()
    await eventually(waiting.holds_lease, "the other instance takes the lease")


async def test_a_follower_behind_the_retention_fills_its_gap_from_the_store(
    cluster_brokers: BrokerFactory,
) -> None:
    committed = events(1, 400)
    holder = await lease_holder(cluster_brokers, max_events=100)
    assert await holder.publish(committed, 0) == 400
    reads: list[tuple[int, int]] = []

    async def read_store(after: int, limit: int) -> list[RatingEvent]:
        reads.append((after, limit))
        return [e for e in committed if e.seq > after][:limit]

    received: list[int] = []
    await follower(cluster_brokers, received, start_after=0, gap_reader=read_store)
    await eventually(lambda: len(received) >= 400, "all 400 events delivered")
    assert received == list(range(1, 401))
    assert reads and reads[0][0] == 0  # the broker no longer held event 1: the store did


async def test_each_epoch_keeps_its_own_history_and_is_announced(
    cluster_brokers: BrokerFactory,
) -> None:
    old = await lease_holder(cluster_brokers, epoch="first")
    assert await old.publish(events(1, 2), 0) == 2
    without_database = cluster_brokers()
    await without_database.connect(None)
    assert without_database.epoch == "first"
    assert await without_database.cursor() == 2
    renewed = cluster_brokers()
    await renewed.connect("second")  # another database: its numbers start again
    assert await renewed.cursor() is None
    late = cluster_brokers()
    await late.connect(None)
    assert late.epoch == "second"


async def test_an_unreachable_broker_raises_broker_unavailable(
    cluster_brokers: BrokerFactory, broker_server: Any
) -> None:
    holder = await lease_holder(cluster_brokers)
    assert await holder.publish(events(1, 1), 0) == 1
    broker_server.kill()
    for call in (
        holder.ping(),
        holder.publish(events(2, 2), 1),
        holder.topic_position(Topic(TopicKind.GAME, "g")),
    ):
        with pytest.raises(BrokerUnavailable):
            async with asyncio.timeout(WITHIN):
                await call
    await eventually(lambda: not holder.holds_lease(), "the lease is given up while away")
