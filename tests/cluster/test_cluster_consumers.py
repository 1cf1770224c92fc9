"""Durable consumers in a cluster sharing PostgreSQL, on both brokers: members on several
instances share one consumer (no offset to both), and its promise (docs/protocol.md: every
event after its start delivered until acked, an acked offset never delivered again, the same
position on every instance) holds, seen from the members, across SIGKILL of the instance
relaying the outbox, a broker restart and a broker wipe."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio
from tests.cluster.conftest import ClusterFactory, running_redis
from tests.cluster.test_cluster import lease_holder
from tests.support.consumers import WAIT, AckingMember, AckLedger, collect, member
from tests.support.nats_server import NatsServer
from tests.support.redis_server import RedisServer
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.postgresql]

FLEET, TOPIC = "fleet", "rating.global"
#: Short, so events a dead instance's members held come back soon; long beside an ack's
#: round trip, so the members' acks are in time (tests/support/consumers.py, AckLedger).
ACK_WAIT_MS = 3000


@pytest.mark.parametrize("cluster_broker", ["redis", "nats"], indirect=True)
async def test_members_on_two_instances_share_a_consumer_and_survive_one_dying(
    instance: ClusterFactory,
) -> None:
    first, second = instance(), instance()
    token, topic = first.token("fleet"), "rating.global"
    # Not 1000: a loaded run outlasted it (offsets 2 and 3 came twice, as claims due do).
    options = {"maxInFlight": 5, "ackWaitMs": ACK_WAIT_MS}
    on_first = await member(first.ws_url, token, topic, "fleet", **options)
    on_second = await member(second.module_ws_url, token, topic, "fleet", **options)
    admin = {"Authorization": f"Bearer {first.token('admin', scope='ratings:admin')}"}
    async with httpx.AsyncClient(base_url=first.base_url, headers=admin, timeout=10) as http:
        for user in range(10):
            body = {"gameId": "cluster", "userId": f"u{user}", "score": 2}
            assert (await http.post("/ratings", json=body)).status_code == 201
    got = await collect([on_first, on_second], 10)
    assert sorted(f["offset"] for frames in got for f in frames) == list(range(1, 11))
    assert [len(frames) for frames in got] == [5, 5]  # each bounded by its maxInFlight
    mine = [f["offset"] for f in got[1]]
    await on_second.send(action="ack", topic=topic, consumer="fleet", offsets=mine)
    assert (await on_second.recv_type("acked", WAIT))["offsets"] == sorted(mine)
    first.kill()  # its member's five are held until ackWaitMs passes, then come to the other
    handed = await on_second.updates(5, WAIT)
    assert sorted(f["offset"] for f in handed) == sorted(f["offset"] for f in got[0])
    assert {f["delivery"] for f in handed} == {2}
    await on_second.send(
        action="ack", topic=topic, consumer="fleet", offsets=[f["offset"] for f in handed]
    )
    assert (await on_second.recv_type("acked", WAIT))["ackFloor"] == 10
    await on_second.close()
    async with httpx.AsyncClient(base_url=second.base_url, timeout=10) as http:
        status = await http.get(
            "/consumers/fleet",
            params={"topic": topic},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert (status.json()["ackFloor"], status.json()["pending"]) == (10, 0)


async def write(servers: list[ServerProcess], tag: str, count: int) -> None:
    """``count`` new ratings (one event each on rating.global), spread over ``servers``."""
    clients = [httpx.AsyncClient(base_url=s.base_url, timeout=10) for s in servers]
    admin = {"Authorization": f"Bearer {servers[0].token('admin', scope='ratings:admin')}"}

    async def one(index: int) -> None:
        body = {"gameId": "fleet", "userId": f"{tag}{index}", "score": 1 + index % 5}
        answer = await clients[index % len(clients)].post("/ratings", json=body, headers=admin)
        assert answer.status_code == 201, answer.text

    try:
        for start in range(0, count, 4):  # four at a time: writes from several clients
            await asyncio.gather(*(one(i) for i in range(start, min(start + 4, count))))
    finally:
        for client in clients:
            await client.aclose()


async def fleet(
    servers: list[ServerProcess], ledger: AckLedger, per_instance: int = 2
) -> list[AckingMember]:
    """Members of one consumer, ``per_instance`` on each instance (on both WebSocket
    endpoints), each failing over to the next instances when its own goes away."""
    token = servers[0].token("agent")
    members = []
    for index in range(len(servers) * per_instance):
        ring = servers[index % len(servers) :] + servers[: index % len(servers)]
        urls = [s.ws_url if index % 2 else s.module_ws_url for s in ring]
        members.append(AckingMember(ledger, urls, token, TOPIC, FLEET, maxInFlight=20).start())
    for one in members:
        await asyncio.wait_for(one.joined.wait(), WAIT)
    return members


async def assert_promise_kept(
    ledger: AckLedger, servers: list[ServerProcess], start: int, head: int
) -> None:
    """Every offset after ``start`` through ``head`` acked by some member, none before it
    delivered, none delivered after its ack; every instance tells the same position."""
    expected = set(range(start + 1, head + 1))
    await ledger.until_acked(expected)
    assert sorted(expected - ledger.acked) == []
    assert min(ledger.deliveries) == start + 1 and max(ledger.deliveries) == head
    assert ledger.after_ack == []
    token = servers[0].token("agent")
    for server in servers:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
            answer = await http.get(
                f"/consumers/{FLEET}",
                params={"topic": TOPIC},
                headers={"Authorization": f"Bearer {token}"},
            )
        status = answer.json()
        assert (status["ackFloor"], status["pending"], status["lag"]) == (head, 0, 0)


@pytest.mark.parametrize("cluster_broker", ["redis", "nats"], indirect=True)
async def test_a_consumer_keeps_its_promise_when_the_relay_holder_is_sigkilled(
    instance: ClusterFactory,
) -> None:
    """The instance relaying the outbox dies under writes, with members of its own: one
    holding five events it never acked, two that join again elsewhere. What it held goes to
    the members on the other instances once ``ackWaitMs`` passes; nothing is lost, nothing
    acked comes again."""
    servers = [instance() for _ in range(3)]
    holder = lease_holder(servers)
    await write(servers, "before", 5)  # before the consumer starts: never delivered
    token = servers[0].token("agent")
    hoarder = await member(  # the consumer's first member: it starts at the head, 5
        holder.module_ws_url, token, TOPIC, FLEET, maxInFlight=5, ackWaitMs=ACK_WAIT_MS
    )
    await write(servers, "a", 5)
    held = [frame["offset"] for frame in await hoarder.updates(5, WAIT)]
    assert held == [6, 7, 8, 9, 10]  # the only member: it holds them until its server dies
    ledger = AckLedger(ACK_WAIT_MS)
    members = await fleet(servers, ledger)

    survivors = [s for s in servers if s is not holder]
    writes = asyncio.create_task(write(survivors, "b", 195))
    holder.kill()  # as the writes begin
    hoarder.connection.transport.abort()
    await writes
    await asyncio.to_thread(lease_holder, survivors)  # the relay moved (not blocking members)
    await assert_promise_kept(ledger, survivors, 5, 205)
    # What the dead instance's member held went to the others, as a second delivery.
    assert [ledger.deliveries[offset][0] for offset in held] == [2] * 5
    moved = [m for m in members if m.urls[0] in (holder.ws_url, holder.module_ws_url)]
    assert [m.connections for m in moved] == [2, 2], [(m.urls[0], m.losses) for m in moved]
    for one in members:
        await one.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """This module's Redis keeps its data on disk, so a restart is not a wipe (FLUSHALL is)."""
    yield from running_redis(tmp_path, appendonly=True, appendfsync="always")


async def wipe(broker_server: RedisServer | NatsServer) -> None:
    """The broker's data gone: Redis flushed as it runs, NATS started on an empty store."""
    if isinstance(broker_server, RedisServer):
        flusher = redis.asyncio.Redis(port=broker_server.port)
        await flusher.flushall()
        await flusher.aclose()
    else:
        broker_server.wipe()
        broker_server.start()


@pytest.mark.parametrize("cluster_broker", ["redis", "nats"], indirect=True)
async def test_a_consumer_keeps_its_promise_across_a_broker_restart_and_a_wipe(
    instance: ClusterFactory, broker_server: RedisServer | NatsServer
) -> None:
    """The broker is SIGKILLed under writes and started again with what it had stored, then
    its data is wiped. The position is in the database: members on two instances go on
    without noticing, and nothing is lost or acked twice."""
    servers = [instance() for _ in range(2)]
    lease_holder(servers)
    await write(servers, "before", 5)
    ledger = AckLedger(ACK_WAIT_MS)
    members = await fleet(servers, ledger)
    await write(servers, "a", 50)
    await ledger.until_acked(set(range(6, 56)))

    broker_server.kill()
    await write(servers, "b", 50)  # the outbox keeps them; the position is the database's
    await ledger.until_acked(set(range(56, 106)))
    assert sorted(set(range(56, 106)) - ledger.acked) == []  # members went on meanwhile
    broker_server.start()
    await write(servers, "c", 50)
    await ledger.until_acked(set(range(106, 156)))
    await wipe(broker_server)
    await write(servers, "d", 50)
    await assert_promise_kept(ledger, servers, 5, 205)
    assert all(m.connections == 1 for m in members)  # no member noticed
    for one in members:
        await one.stop()
