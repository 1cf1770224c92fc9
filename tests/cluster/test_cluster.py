"""Several instances sharing PostgreSQL and Redis behave as one (docs/protocol.md across
the cluster): every acknowledged write reaches every subscriber of every instance exactly
once and in order, whatever instance it was written to, and through the failures a cluster
meets."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import redis.asyncio
from tests.cluster.conftest import ClusterFactory
from tests.cluster.follower import Follower, assert_exactly_once
from tests.e2e.wsclient import WsClient
from tests.support.nats_server import NatsServer
from tests.support.redis_server import RedisServer
from tests.support.server import ServerProcess
from tests.support.tcp_proxy import TcpProxy
from websockets.exceptions import ConnectionClosed

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.postgresql]


async def rate(server: ServerProcess, game: str, user: str, score: int = 4) -> httpx.Response:
    """One upsert written through ``server`` (the token is the rating's user)."""
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        return await http.put(
            f"/games/{game}/ratings/{user}",
            json={"score": score},
            headers={"Authorization": f"Bearer {server.token(user)}"},
        )


async def get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.get(url)


def lease_holder(servers: list[ServerProcess]) -> ServerProcess:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for server in servers:
            if "holds the relay lease" in server.log_text():
                return server
        time.sleep(0.05)
    raise AssertionError("no instance took the relay lease")


@pytest.mark.parametrize("cluster_broker", ["redis", "nats"], indirect=True)
async def test_a_write_on_one_instance_reaches_subscribers_of_every_role(
    instance: ClusterFactory,
) -> None:
    # The broker keeps a short history: ~10 events a topic on Redis, 100 events on NATS.
    short_history = {
        "RATEWIRE_HISTORY__MAX_EVENTS_PER_TOPIC": "10",
        "RATEWIRE_BROKER__MAX_EVENTS": "100",
    }
    api = instance(role="api", env=short_history)
    stream_with_db = instance(role="stream", env=short_history)
    stream_alone = instance(role="stream", backend="none", storage_url="", env=short_history)
    token = api.token("watcher")
    followers = [
        Follower([server.module_ws_url], token, "rating.game.roles").start()
        for server in (stream_with_db, stream_alone)
    ]
    on_ws_path = Follower([stream_alone.ws_url], token, "rating.global").start()
    for follower in (*followers, on_ws_path):
        await asyncio.wait_for(follower.subscribed.wait(), 10)

    for i in range(250):
        assert (await rate(api, "roles", f"u{i}", 1 + i % 5)).status_code == 201
    for follower in (*followers, on_ws_path):
        await follower.wait_for(250)
        assert_exactly_once(follower, 250)
        await follower.stop()
    users = [update["data"]["userId"] for update in followers[1].updates]
    assert users == [f"u{i}" for i in range(250)]

    # Each role serves only its part.
    with pytest.raises(OSError):
        await WsClient.open(f"ws://127.0.0.1:{api.ws_port}/", token)
    assert (await get(f"{stream_with_db.base_url}/games/roles/summary")).status_code == 404
    assert (await get(f"{stream_alone.base_url}/readyz")).json()["checks"] == {"broker": "ok"}
    assert (await get(f"{api.base_url}/games/roles/summary")).json()["count"] == 250

    # Resume anywhere: offsets are the database's, the same on every instance. The instance
    # without a database answers from the stream's retained history, and says when the
    # history no longer reaches back.
    epoch = followers[0].epoch
    async with await WsClient.open(stream_with_db.module_ws_url, token) as client:
        await client.recv_type("connection_success")
        answer = await client.subscribe("rating.game.roles", since=0, epoch=epoch)
        assert answer["recovered"] is True
    async with await WsClient.open(stream_alone.module_ws_url, token) as client:
        await client.recv_type("connection_success")
        answer = await client.subscribe("rating.game.roles", since=0, epoch=epoch)
        assert answer["recovered"] is False and answer["offset"] == 250
        answer = await client.subscribe("rating.game.roles", since=245, epoch=epoch)
        assert answer["recovered"] is True
        await client.send(action="subscribe", topic="rating.game.roles", since=245, epoch=epoch)
        replayed = await client.updates(5)
        assert [frame["offset"] for frame in replayed] == [246, 247, 248, 249, 250]
        await client.send(action="subscribe", topic="rating.game.roles", snapshot=True)
        refusal = await client.recv_type("error")
        assert "database" in refusal["message"]


@pytest.mark.parametrize("cluster_broker", ["redis", "nats"], indirect=True)
async def test_sigkill_of_the_relay_holder_loses_nothing_and_clients_resume_elsewhere(
    instance: ClusterFactory,
) -> None:
    servers = [instance() for _ in range(3)]
    leader = lease_holder(servers)
    token = servers[0].token("watcher")
    followers = []
    for index in range(len(servers)):
        # Each follower starts on its own instance and fails over to the next ones.
        urls = [s.module_ws_url for s in servers[index:] + servers[:index]]
        followers.append(Follower(urls, token, "rating.global").start())
    for follower in followers:
        await asyncio.wait_for(follower.subscribed.wait(), 10)

    written = 0
    for i in range(15):
        assert (await rate(servers[i % 3], "kill", f"a{i}")).status_code == 201
        written += 1
    leader.kill()
    killed_at = time.monotonic()
    survivors = [s for s in servers if s is not leader]
    for i in range(15):
        assert (await rate(survivors[i % 2], "kill", f"b{i}")).status_code == 201
        written += 1
    new_leader = lease_holder(survivors)
    assert "holds the relay lease" in new_leader.log_text()
    assert time.monotonic() - killed_at < 5 + 1  # the lease (2 s) expired and was taken

    for follower in followers:
        await follower.wait_for(written)
        await follower.stop()
        assert_exactly_once(follower, written)
    moved = followers[servers.index(leader)]
    assert moved.connections >= 2  # it reconnected to another instance and resumed


@pytest.mark.parametrize(
    ("cluster_broker", "fault"),
    [("redis", "kill"), ("nats", "kill"), ("nats", "wipe")],
    indirect=["cluster_broker"],
)
async def test_broker_killed_and_restarted_under_writes_delivers_every_write_once(
    instance: ClusterFactory, broker_server: RedisServer | NatsServer, fault: str
) -> None:
    """kill: SIGKILL (Redis, without persistence, comes back empty; NATS comes back with
    what JetStream had on disk). wipe: NATS's store is deleted too. Either way the outbox
    in the database rebuilds what the broker lost."""
    servers = [instance() for _ in range(2)]
    lease_holder(servers)
    token = servers[0].token("watcher")
    followers = [Follower([s.module_ws_url], token, "rating.game.outage").start() for s in servers]
    for follower in followers:
        await asyncio.wait_for(follower.subscribed.wait(), 10)
    for i in range(10):
        assert (await rate(servers[i % 2], "outage", f"a{i}")).status_code == 201
    for follower in followers:
        await follower.wait_for(10)

    getattr(broker_server, fault)()
    for i in range(10):  # the outbox holds them: writes keep committing
        assert (await rate(servers[i % 2], "outage", f"b{i}")).status_code == 201
    ready = await get(f"{servers[0].base_url}/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["broker"].startswith("unavailable")
    assert ready.json()["checks"]["storage"] == "ok"
    assert all(len(f.offsets) == 10 for f in followers)

    broker_server.start()
    for i in range(10):
        assert (await rate(servers[i % 2], "outage", f"c{i}")).status_code == 201
    for follower in followers:
        await follower.wait_for(30, within=20)
        await follower.stop()
        assert_exactly_once(follower, 30)
        assert follower.connections == 1  # the WebSockets never noticed
    assert (await get(f"{servers[1].base_url}/readyz")).status_code == 200
    name = "Redis" if isinstance(broker_server, RedisServer) else "NATS"
    assert f"{name} unreachable" in servers[0].log_text()


@pytest.mark.parametrize("cluster_broker", ["redis", "nats"], indirect=True)
async def test_a_paused_relay_holder_publishes_nothing_stale_when_it_wakes(
    instance: ClusterFactory,
) -> None:
    """SIGSTOP the instance holding the lease with writes going on elsewhere: the lease
    passes, the others deliver; when it wakes (its lease long gone, its cursor stale) it
    adds nothing twice, and its own subscribers catch up on everything."""
    servers = [instance() for _ in range(3)]
    holder = lease_holder(servers)
    others = [s for s in servers if s is not holder]
    token = servers[0].token("watcher")
    followers = [Follower([s.module_ws_url], token, "rating.global").start() for s in servers]
    for follower in followers:
        await asyncio.wait_for(follower.subscribed.wait(), 10)
    for i in range(10):
        assert (await rate(servers[i % 3], "pause", f"a{i}")).status_code == 201
    for follower in followers:
        await follower.wait_for(10)

    holder.pause()
    try:
        for i in range(20):
            assert (await rate(others[i % 2], "pause", f"b{i}")).status_code == 201
        assert "holds the relay lease" in lease_holder(others).log_text()
    finally:
        holder.resume()
    for i in range(10):
        assert (await rate(servers[i % 3], "pause", f"c{i}")).status_code == 201
    for follower in followers:
        await follower.wait_for(40, within=20)
        await follower.stop()
        assert_exactly_once(follower, 40)


async def test_rest_rate_limits_are_shared_by_the_instances(instance: ClusterFactory) -> None:
    limit = {"RATEWIRE_LIMITS__REST_REQUESTS_PER_CLIENT_PER_MINUTE": "6"}
    first, second = instance(env=limit), instance(env=limit)
    answers = [
        (await rate(server, "quota", "greedy")).status_code for server in [first, second] * 3
    ]
    assert answers == [201, 200, 200, 200, 200, 200]
    refused = await rate(second, "quota", "greedy")
    assert refused.status_code == 429 and "Retry-After" in refused.headers
    assert (await rate(first, "quota", "someone-else")).status_code == 201


async def test_redis_holds_no_keys_of_another_database(
    instance: ClusterFactory, redis_server: RedisServer
) -> None:
    """Two databases behind one Redis never share a stream: the keys carry the epoch."""
    server = instance()
    assert (await rate(server, "keys", "u1")).status_code == 201
    client = redis.asyncio.Redis(port=redis_server.port)
    epoch = await client.get("ratewire:epoch")
    assert epoch is not None
    for _ in range(100):  # published right after the 201, by the relay's task
        if await client.get(f"ratewire:{epoch.decode()}:cursor") == b"1":
            break
        await asyncio.sleep(0.05)
    assert await client.xlen(f"ratewire:{epoch.decode()}:events") == 1
    await client.aclose()


async def test_database_unreachable_answers_503_keeps_subscriptions_and_recovers(
    instance: ClusterFactory, fresh_postgres_url: str
) -> None:
    proxy = TcpProxy("127.0.0.1", 5432)
    servers: list[ServerProcess] = []
    try:
        url = fresh_postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        servers.extend(instance(storage_url=url) for _ in range(2))
        token = servers[0].token("watcher")
        followers = [
            Follower([s.module_ws_url], token, "rating.game.dbdown").start() for s in servers
        ]
        for follower in followers:
            await asyncio.wait_for(follower.subscribed.wait(), 10)
        for i in range(5):
            assert (await rate(servers[i % 2], "dbdown", f"a{i}")).status_code == 201

        async with await WsClient.open(servers[1].module_ws_url, token) as bystander:
            await bystander.recv_type("connection_success")
            proxy.cut()
            refused = await rate(servers[0], "dbdown", "during")
            assert refused.status_code == 503
            assert refused.headers["content-type"] == "application/problem+json"
            assert int(refused.headers["Retry-After"]) >= 1
            assert refused.json()["status"] == 503
            ready = await get(f"{servers[1].base_url}/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["storage"].startswith("unavailable")
            await bystander.send(action="ping")  # live connections stay open and answer
            assert (await bystander.recv_type("pong"))["type"] == "pong"

            proxy.restore()  # no restart: the pools reconnect by themselves
            status = 0
            for _ in range(50):
                status = (await rate(servers[0], "dbdown", "after")).status_code
                if status == 201:
                    break
                await asyncio.sleep(0.2)
            assert status == 201
        for i in range(4):
            assert (await rate(servers[i % 2], "dbdown", f"b{i}")).status_code == 201
        for follower in followers:
            await follower.wait_for(10)
            await follower.stop()
            assert_exactly_once(follower, 10)
            assert follower.connections == 1
    finally:
        for server in servers:
            server.stop()
        proxy.close()


async def test_a_subscribe_that_cannot_read_history_closes_1013_and_resumes_later(
    instance: ClusterFactory, fresh_postgres_url: str
) -> None:
    """A resume arriving while the database is cut used to get no answer at all (the
    subscribe failed inside the server and the connection stayed open, silent), so a client
    waited forever: found by the chaos soak. Now it is closed with 1013, and the same resume
    works once the database is back."""
    proxy = TcpProxy("127.0.0.1", 5432)
    server: ServerProcess | None = None
    try:
        server = instance(
            storage_url=fresh_postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        )
        token = server.token("watcher")
        for i in range(3):
            assert (await rate(server, "histdown", f"a{i}")).status_code == 201
        async with await WsClient.open(server.module_ws_url, token) as client:
            await client.recv_type("connection_success")
            epoch = (await client.subscribe("rating.game.histdown"))["epoch"]
        proxy.cut()
        async with await WsClient.open(server.module_ws_url, token) as client:
            await client.recv_type("connection_success")
            await client.send(
                action="subscribe", topic="rating.game.histdown", since=1, epoch=epoch
            )
            assert await client.closed_with(within=15) == (
                1013,
                "History unavailable; resume shortly",
            )
        proxy.restore()
        for _ in range(50):
            async with await WsClient.open(server.module_ws_url, token) as client:
                await client.recv_type("connection_success")
                await client.send(
                    action="subscribe", topic="rating.game.histdown", since=1, epoch=epoch
                )
                try:
                    first = await client.recv()
                except ConnectionClosed:
                    first = {"type": "closed"}
                if first["type"] == "rating_update":
                    second = await client.recv()
                    subscribed = await client.recv_type("subscribed")
                    assert [first["offset"], second["offset"]] == [2, 3]
                    assert subscribed["recovered"] is True
                    return
            await asyncio.sleep(0.2)  # closed with 1013 again: the pool is reconnecting
        raise AssertionError("the resume never worked after the database came back")
    finally:
        if server is not None:
            server.stop()
        proxy.close()


@pytest.mark.parametrize("cluster_broker", ["redis", "nats"], indirect=True)
async def test_a_stream_instance_whose_broker_lost_history_says_try_again_not_gap(
    instance: ClusterFactory, broker_server: RedisServer | NatsServer
) -> None:
    """Redis restarted empty and no instance with a database has rebuilt its streams yet: a
    client resuming on a ``stream`` instance from offset 5 used to be told "not recovered"
    with the head at 0, which sent it backwards (found by the chaos soak's long run). The
    events are in the database: the instance closes with 1013, and the same resume works
    once the streams are rebuilt."""
    writer = instance()
    stream = instance(role="stream", backend="none", storage_url="")
    for i in range(5):
        assert (await rate(writer, "behind", f"u{i}")).status_code == 201
    token = writer.token("watcher")
    async with await WsClient.open(stream.module_ws_url, token) as client:
        await client.recv_type("connection_success")
        epoch = (await client.subscribe("rating.game.behind"))["epoch"]
    writer.terminate()  # nobody left to rebuild the streams
    broker_server.wipe()
    broker_server.start()  # empty
    resume = {"action": "subscribe", "topic": "rating.game.behind", "since": 5, "epoch": epoch}
    for _ in range(100):  # until the stream instance is back on its broker
        if (await get(f"{stream.base_url}/readyz")).status_code == 200:
            break
        await asyncio.sleep(0.1)
    for _ in range(3):  # every time, not once by chance
        async with await WsClient.open(stream.module_ws_url, token) as client:
            await client.recv_type("connection_success")
            await client.send(**resume)
            assert await client.closed_with(within=5) == (
                1013,
                "History unavailable; resume shortly",
            )
    writer.start()  # rebuilds the streams from the database
    assert (await rate(writer, "behind", "u5")).status_code == 201
    for _ in range(50):
        async with await WsClient.open(stream.module_ws_url, token) as client:
            await client.recv_type("connection_success")
            await client.send(**resume)
            try:
                first = await client.recv(within=3)
            except (ConnectionClosed, TimeoutError):
                first = {"type": "closed"}
            if first["type"] == "rating_update":
                assert first["offset"] == 6
                assert (await client.recv_type("subscribed"))["recovered"] is True
                return
        await asyncio.sleep(0.2)
    raise AssertionError("the resume never worked after the streams were rebuilt")
