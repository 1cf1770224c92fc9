"""The Redis storage backend on real processes: Redis itself killed with SIGKILL under writes
(append-only file, fsync on every write) keeps every acknowledged write and delivers it once;
a Redis broker on the same server reads the store's own streams instead of a copy; and the
start-up warning says what weaker persistence settings would lose."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from tests.e2e.wsclient import WsClient
from tests.support.redis_server import RedisServer
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


def own_redis(workdir: Path, **options: Any) -> RedisServer:
    try:
        return RedisServer(workdir, **options)
    except (RuntimeError, OSError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot start redis-server: {exc} (CI=true: Redis tests must run)")
        pytest.skip(f"cannot start redis-server: {exc}")


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server that fsyncs its append-only file on every write."""
    server = own_redis(tmp_path, appendonly=True, appendfsync="always")
    yield server
    server.stop()


@pytest.fixture
def volatile_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server that keeps nothing on disk (appendonly no, no snapshots)."""
    server = own_redis(tmp_path)
    yield server
    server.stop()


async def rate(http: httpx.AsyncClient, server: ServerProcess, game: str, user: str) -> str | None:
    """POST a rating; its id if the server acknowledged it (2xx), else None."""
    try:
        answer = await http.post(
            "/ratings",
            json={"gameId": game, "userId": user, "score": 3},
            headers={"Authorization": f"Bearer {server.token(user)}"},
        )
    except httpx.HTTPError:
        return None
    return answer.json()["id"] if answer.status_code == 201 else None


# Redis fixtures come before server_factory: fixtures stop in reverse, ratewire first.


async def test_redis_killed_under_writes_keeps_and_delivers_every_acknowledged_write(
    durable_redis: RedisServer, server_factory: Callable[..., ServerProcess]
) -> None:
    server = server_factory(backend="redis", storage_url=durable_redis.url)
    assert "Redis storage" not in server.log_text()  # appendfsync always keeps the promise
    game = "redis-kill"
    ws = await WsClient.open(server.module_ws_url, server.token("watcher"))
    await ws.recv()
    await ws.subscribe(f"rating.game.{game}")
    acknowledged: list[str] = []
    received: list[dict[str, Any]] = []

    async def read() -> None:
        with contextlib.suppress(Exception):  # the close at the end stops it
            while True:
                received.append(await ws.recv_type("rating_update", within=30))

    reader = asyncio.create_task(read())
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        enough = asyncio.Event()

        async def writer(first: int) -> None:
            for index in range(first, first + 40):
                if (rating_id := await rate(http, server, game, f"u{index}")) is not None:
                    acknowledged.append(rating_id)
                    if len(acknowledged) >= 20:
                        enough.set()

        writers = [asyncio.create_task(writer(n * 1000)) for n in range(4)]
        await asyncio.wait_for(enough.wait(), 30)
        durable_redis.kill()  # SIGKILL while writes are in flight
        await asyncio.sleep(0.5)
        refused = await rate(http, server, game, "during-outage")
        assert refused is None  # 503 while Redis is away, never a false 2xx
        durable_redis.start()  # reloads its append-only file
        await asyncio.gather(*writers)
        after = [await rate(http, server, game, f"after{i}") for i in range(5)]
        assert all(after), "writes succeed again once Redis is back"
        acknowledged.extend(rating_id for rating_id in after if rating_id)
        for rating_id in acknowledged:
            assert (await http.get(f"/ratings/{rating_id}")).status_code == 200, rating_id
        summary = (await http.get(f"/games/{game}/summary")).json()
    assert summary["count"] >= len(acknowledged)
    for _ in range(300):
        if {f["data"]["id"] for f in received} >= set(acknowledged):
            break
        await asyncio.sleep(0.05)
    await ws.close()
    await reader
    offsets = [frame["offset"] for frame in received]
    assert offsets == list(range(1, len(offsets) + 1)), "once each, in order, no gap"
    assert {frame["data"]["id"] for frame in received} >= set(acknowledged)


async def test_a_broker_on_the_same_redis_reads_the_stores_streams(
    volatile_redis: RedisServer, server_factory: Callable[..., ServerProcess]
) -> None:
    options = {
        "backend": "redis",
        "storage_url": volatile_redis.url,
        "env": {"RATEWIRE_BROKER__BACKEND": "redis", "RATEWIRE_BROKER__URL": volatile_redis.url},
    }
    first, second = server_factory(**options), server_factory(**options)
    ws = await WsClient.open(second.module_ws_url, second.token("watcher"))
    await ws.recv()
    await ws.subscribe("rating.global")
    async with httpx.AsyncClient(base_url=first.base_url, timeout=10) as http:
        ids = [await rate(http, first, "shared", f"u{i}") for i in range(12)]
    assert all(ids)
    updates = await ws.updates(12, within=10)
    await ws.close()
    assert [u["offset"] for u in updates] == list(range(1, 13))
    assert [u["data"]["id"] for u in updates] == ids
    client = redis.Redis(port=volatile_redis.port)
    streams = sorted(k.decode() for k in client.scan_iter(match="*:events"))
    epoch = client.get("ratewire:epoch").decode()
    # One event stream, the store's, holding each event once: nothing was copied.
    assert streams == [f"ratewire:{epoch}:events"]
    assert client.xlen(streams[0]) == 12
    client.close()


def test_start_warns_when_redis_persistence_cannot_keep_acknowledged_writes(
    volatile_redis: RedisServer, server_factory: Callable[..., ServerProcess]
) -> None:
    server = server_factory(backend="redis", storage_url=volatile_redis.url)
    assert "a Redis restart loses every rating" in server.log_text()


async def test_a_password_in_the_url_reaches_every_connection(tmp_path: Path) -> None:
    from ratewire.domain import RatingDraft, utc_now
    from ratewire.storage import StorageUnavailable
    from ratewire.storage.redis.store import RedisStore

    guarded = own_redis(tmp_path, password="s3cret-pass")
    try:
        store = RedisStore(guarded.url + "?prefix=pw")  # redis://:s3cret-pass@host:port/0
        await store.start()
        written = await store.create(RatingDraft("g", "u", 4, None), utc_now())  # the write path
        assert await store.get(written.rating.id) == written.rating  # redis-py's path
        await store.close()
        wrong = RedisStore(f"redis://:nope@127.0.0.1:{guarded.port}/0")
        with pytest.raises(StorageUnavailable):
            await wrong.start()
        await wrong.close()
    finally:
        guarded.stop()


async def test_after_a_redis_restart_reads_do_not_fail_on_dead_pooled_connections(
    durable_redis: RedisServer,
) -> None:
    """redis-py keeps idle connections in a pool and does not retry: after Redis restarts,
    each dead one failed its next command, so every pooled connection cost a reader a 503."""
    from ratewire.domain import RatingDraft, utc_now
    from ratewire.storage.base import StorageUnavailable
    from ratewire.storage.redis.store import RedisStore

    store = RedisStore(durable_redis.url)
    await store.start()
    try:
        written = await store.create(RatingDraft("g", "u1", 4, None), utc_now())
        rating_id = written.rating.id
        await asyncio.gather(*(store.get(rating_id) for _ in range(8)))  # eight pooled
        durable_redis.kill()
        durable_redis.start()
        # Writes reconnect their own connection (the first may find it dead: a 503), and
        # that drops the pool's dead ones: no read fails.
        for attempt in range(3):
            try:
                await store.create(RatingDraft("g", "u2", 3, None), utc_now())
                break
            except StorageUnavailable:
                assert attempt == 0
        await asyncio.gather(*(store.get(rating_id) for _ in range(8)))

        durable_redis.kill()
        durable_redis.start()
        # A read first: it may fail once, and the pool's other dead connections go with it.
        failed = 0
        for _ in range(8):
            try:
                await store.get(rating_id)
            except StorageUnavailable:
                failed += 1
        assert failed <= 1
    finally:
        await store.close()
