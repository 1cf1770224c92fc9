"""Durable consumers end to end (docs/protocol.md, "Durable consumers"): real server processes,
members on both WebSocket endpoints sharing one consumer, redelivery after ``ackWaitMs`` and
after a member leaves, a position that survives SIGKILL, and the REST routes."""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
from asyncio.subprocess import Process
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
from tests.e2e.test_audit import wait_for_entry
from tests.e2e.wsclient import WsClient
from tests.support.consumers import WAIT, collect, member
from tests.support.server import SECRET, ServerProcess

from ratewire.client import Client, SyncClient

pytestmark = pytest.mark.e2e

ServerFactory = Callable[..., ServerProcess]
_users = itertools.count()


@pytest.fixture(scope="module")
def server(module_server_factory: ServerFactory) -> ServerProcess:
    return module_server_factory()


async def write(server: ServerProcess, game: str, count: int) -> None:
    """``count`` new ratings of ``game`` (so ``count`` events on ``rating.game.{game}``)."""
    admin = {"Authorization": f"Bearer {server.token('admin', scope='ratings:admin')}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=admin, timeout=10) as http:
        for _ in range(count):
            body = {"gameId": game, "userId": f"u{next(_users)}", "score": 3}
            assert (await http.post("/ratings", json=body)).status_code == 201


async def test_members_share_the_work_each_within_max_in_flight(server: ServerProcess) -> None:
    token, topic = server.token("crew"), "rating.game.shared"
    urls = [server.module_ws_url, server.ws_url, server.module_ws_url]  # both endpoints
    clients = [await member(url, token, topic, "crew", maxInFlight=5) for url in urls]
    try:
        await write(server, "shared", 15)
        got = await collect(clients, 15)
        offsets = [f["offset"] for frames in got for f in frames]
        # Each offset to one member, each member at most 5 unacked: so exactly 5 each.
        assert sorted(offsets) == list(range(1, 16))
        assert [len(frames) for frames in got] == [5, 5, 5]
        assert all(f["consumer"] == "crew" and f["delivery"] == 1 for fs in got for f in fs)
        assert all(f["event"] == "created" and f["data"]["gameId"] == "shared" for f in got[0])
        # One ack frame per member for its whole batch; the next 15 are shared the same way.
        for client, frames in zip(clients, got, strict=True):
            mine = [f["offset"] for f in frames]
            await client.send(action="ack", topic=topic, consumer="crew", offsets=mine, id=7)
            acked = await client.recv_type("acked", WAIT)
            assert (acked["offsets"], acked["consumer"], acked["id"]) == (sorted(mine), "crew", 7)
        await write(server, "shared", 15)
        again = await collect(clients, 15)
        assert sorted(f["offset"] for fs in again for f in fs) == list(range(16, 31))
    finally:
        for client in clients:
            await client.close()


async def test_an_event_not_acked_within_ack_wait_is_delivered_again(
    server: ServerProcess,
) -> None:
    token, topic = server.token("slow"), "rating.game.slow"
    async with await member(server.ws_url, token, topic, "slow", ackWaitMs=300) as client:
        await write(server, "slow", 1)
        first = await client.recv_type("rating_update", WAIT)
        assert (first["offset"], first["delivery"]) == (1, 1)
        again = await client.recv_type("rating_update", WAIT)  # no ack: it comes back
        assert (again["offset"], again["delivery"]) == (1, 2)
        await client.send(action="ack", topic=topic, consumer="slow", offsets=[1])
        acked = await client.recv_type("acked", WAIT)
        assert (acked["offsets"], acked["ackFloor"]) == ([1], 1)


async def test_a_member_that_leaves_hands_its_events_to_another_and_acked_never_return(
    server: ServerProcess,
) -> None:
    token, topic = server.token("relay"), "rating.game.handoff"
    first = await member(server.module_ws_url, token, topic, "handoff")
    await write(server, "handoff", 2)
    held = [f["offset"] for f in await first.updates(2, WAIT)]
    await first.send(action="ack", topic=topic, consumer="handoff", offsets=[1])
    assert (await first.recv_type("acked", WAIT))["offsets"] == [1]
    async with await member(server.ws_url, token, topic, "handoff", maxInFlight=1) as second:
        await first.close()  # 2 was never acked: the other member gets it at once
        handed = await second.recv_type("rating_update", WAIT)
        assert held == [1, 2] and (handed["offset"], handed["delivery"]) == (2, 2)
        await second.send(action="ack", topic=topic, consumer="handoff", offsets=[2])
        assert (await second.recv_type("acked", WAIT))["ackFloor"] == 2
        await write(server, "handoff", 1)
        nxt = await second.recv_type("rating_update", WAIT)
        assert (nxt["offset"], nxt["delivery"]) == (3, 1)  # nothing acked came back first


async def test_consumer_messages_are_checked(server: ServerProcess) -> None:
    async with await WsClient.open(server.ws_url, server.token("checks")) as client:
        await client.recv_type("connection_success")
        await client.send(action="subscribe", topic="rating.user.someone", consumer="c")
        assert (await client.recv_type("error"))["code"] == "forbidden"
        await client.send(action="subscribe", topic="rating.game.*", consumer="c")
        assert "offsets" in (await client.recv_type("error"))["message"]
        await client.send(action="subscribe", topic="rating.global", consumer="bad name!")
        assert "consumer name" in (await client.recv_type("error"))["message"]
        await client.send(action="subscribe", topic="rating.global", consumer="c", ackWaitMs=1)
        assert "ackWaitMs" in (await client.recv_type("error"))["message"]
        await client.send(
            action="subscribe", topic="rating.global", consumer="c", filter="x" * 1025
        )
        assert "filter" in (await client.recv_type("error"))["message"]
        await client.send(action="ack", topic="rating.global", consumer="c", offsets=[1])
        assert "subscribe first" in (await client.recv_type("error"))["message"]
        subscribed = await client.subscribe("rating.user.checks", consumer="mine")
        assert subscribed["created"] is True and subscribed["ackWaitMs"] == 30_000
        await client.send(action="ack", topic="rating.user.checks", consumer="mine", offsets=[9])
        refused = await client.recv_type("acked")
        assert (refused["offsets"], refused["refused"]) == ([], [9])
        await client.send(action="unsubscribe", topic="rating.user.checks", consumer="mine")
        assert (await client.recv_type("unsubscribed"))["consumer"] == "mine"


def test_rest_fetch_ack_get_list_and_delete(server: ServerProcess) -> None:
    auth = {"Authorization": f"Bearer {server.token('agent')}"}
    topic, game = "rating.game.rest", "rest"
    with httpx.Client(base_url=server.base_url, headers=auth, timeout=WAIT + 5) as http:
        assert http.get("/consumers/queue", params={"topic": topic}).status_code == 404
        empty = http.post("/consumers/queue/fetch", json={"topic": topic, "waitMs": 0})
        assert empty.status_code == 200 and empty.json() == {"events": []}
        asyncio.run(write(server, game, 3))
        fetched = http.post("/consumers/queue/fetch", json={"topic": topic, "max": 2}).json()
        assert [(e["offset"], e["delivery"], e["consumer"]) for e in fetched["events"]] == [
            (1, 1, "queue"),
            (2, 1, "queue"),
        ]
        assert (
            http.post("/consumers/queue/ack", json={"topic": topic, "offsets": [1, 2]}).status_code
            == 204
        )
        # A long poll answers as soon as there is an event.
        rest = http.post("/consumers/queue/fetch", json={"topic": topic, "waitMs": 10_000}).json()
        assert [e["offset"] for e in rest["events"]] == [3]
        status = http.get("/consumers/queue", params={"topic": topic}).json()
        assert {k: status[k] for k in ("name", "topic", "ackFloor", "pending", "lag")} == {
            "name": "queue",
            "topic": topic,
            "ackFloor": 2,
            "pending": 1,
            "lag": 1,
        }
        conflict = http.post("/consumers/queue/ack", json={"topic": topic, "offsets": [3, 40]})
        assert conflict.status_code == 409, conflict.text
        assert conflict.headers["content-type"].startswith("application/problem+json")
        assert conflict.json()["refused"] == [40]
        listed = http.get("/consumers").json()["items"]
        assert [(c["name"], c["ackFloor"], c["pending"]) for c in listed] == [("queue", 3, 0)]
        foreign = http.post("/consumers/q/fetch", json={"topic": "rating.user.other"})
        assert foreign.status_code == 403
        bad = http.post("/consumers/q/fetch", json={"topic": topic, "ackWaitMs": 5})
        assert bad.status_code == 422
        unknown = http.post("/consumers/nobody/ack", json={"topic": topic, "offsets": [1]})
        assert unknown.status_code == 404
        assert http.delete("/consumers/queue", params={"topic": topic}).status_code == 204
        assert http.delete("/consumers/queue", params={"topic": topic}).status_code == 404
        assert http.get("/consumers").json()["items"] == []
        # Another token sees none of them.
        other = {"Authorization": f"Bearer {server.token('someone')}"}
        assert http.get("/consumers", headers=other).json()["items"] == []
        paths = http.get("/openapi.json").json()["paths"]
        assert {"/consumers", "/consumers/{name}", "/consumers/{name}/fetch"} <= set(paths)


def test_a_consumer_filter_sends_what_it_passes_and_counts_the_rest_acked(
    server: ServerProcess,
) -> None:
    auth = {"Authorization": f"Bearer {server.token('moderator')}"}
    admin = {"Authorization": f"Bearer {server.token('admin', scope='ratings:admin')}"}
    topic, fetch = "rating.game.moderated", "/consumers/low/fetch"
    with httpx.Client(base_url=server.base_url, headers=auth, timeout=WAIT + 5) as http:
        bad = http.post(fetch, json={"topic": topic, "filter": "data.stars <= 2"})
        assert bad.status_code == 422 and "data.stars" in bad.text, bad.text
        made = http.post(fetch, json={"topic": topic, "filter": "data.score <= 2", "waitMs": 0})
        assert made.status_code == 200 and made.json() == {"events": []}
        for n, score in enumerate([1, 4, 2, 5, 3, 1]):  # offsets 1..6; 1, 3 and 6 pass
            body = {"gameId": "moderated", "userId": f"m{n}", "score": score}
            assert http.post("/ratings", json=body, headers=admin).status_code == 201
        got: list[dict[str, Any]] = []
        for _ in range(10):  # a long poll answers once something came: ask until all three
            if len(got) >= 3:
                break
            answer = http.post(fetch, json={"topic": topic, "max": 10, "waitMs": 2000}).json()
            got.extend(answer["events"])
        assert [(e["offset"], e["data"]["score"]) for e in got] == [(1, 1), (3, 2), (6, 1)]
        acked = http.post("/consumers/low/ack", json={"topic": topic, "offsets": [1, 3, 6]})
        assert acked.status_code == 204
        status = http.get("/consumers/low", params={"topic": topic}).json()
        # The events it left out count as acked: nothing is pending or behind.
        assert (status["ackFloor"], status["pending"], status["lag"]) == (6, 0, 0)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
async def test_the_position_survives_sigkill(
    server_factory: ServerFactory, backend: str, request: pytest.FixtureRequest
) -> None:
    if backend == "redis":
        url = str(request.getfixturevalue("redis_store_url"))
        server = server_factory(backend="redis", storage_url=url)
    else:
        server = server_factory()
    token, topic = server.token("durable"), "rating.game.kill"
    async with await member(server.ws_url, token, topic, "keep", ackWaitMs=500) as client:
        await write(server, "kill", 5)
        assert [f["offset"] for f in await client.updates(5, WAIT)] == [1, 2, 3, 4, 5]
        await client.send(action="ack", topic=topic, consumer="keep", offsets=[1, 2, 3])
        assert (await client.recv_type("acked", WAIT))["ackFloor"] == 3
        server.kill()
    server.start()
    async with await member(server.ws_url, token, topic, "keep") as client:
        # 4 and 5 were delivered, not acked: they come again; 1..3 never do.
        again = await client.updates(2, WAIT)
        assert [(f["offset"], f["delivery"]) for f in again] == [(4, 2), (5, 2)]
        await write(server, "kill", 1)
        assert (await client.recv_type("rating_update", WAIT))["offset"] == 6


async def test_creation_and_deletion_are_audited_and_members_in_metrics(
    server: ServerProcess,
) -> None:
    token, topic = server.token("audited"), "rating.game.audited"
    async with await member(server.ws_url, token, topic, "logged", maxInFlight=3):
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
            metrics = (await http.get("/metrics")).text
        labels = f'{{consumer="logged",owner="audited",topic="{topic}"}}'
        assert f"ratewire_consumer_members{labels} 1.0" in metrics
        assert f"ratewire_consumer_lag{labels}" in metrics
        assert f"ratewire_consumer_pending{labels}" in metrics
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        gone = await http.delete(
            "/consumers/logged",
            params={"topic": topic},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert gone.status_code == 204
    created = await wait_for_entry(server, action="consumer.create", actor="audited")
    assert created["detail"]["name"] == "logged" and created["detail"]["maxInFlight"] == 3
    deleted = await wait_for_entry(server, action="consumer.delete", actor="audited")
    assert deleted["detail"] == {"name": "logged", "topic": topic}


async def test_the_python_client_iterates_a_consumer_and_batches_its_acks(
    server: ServerProcess,
) -> None:
    token, topic = server.token("sdk"), "rating.game.sdk"
    async with Client(server.ws_url, token=token, rest_url=server.base_url) as client:
        async with client.consume(topic, "sdk", since=0, batch=4, wait_ms=5000) as queue:
            await write(server, "sdk", 6)
            seen = []
            async for item in queue:
                assert (item.consumer, item.delivery, item.update.topic) == ("sdk", 1, topic)
                seen.append(item.offset)
                item.ack()
                if len(seen) == 6:
                    break
        assert seen == [1, 2, 3, 4, 5, 6]
        status = await queue.status()  # the last acks went on leaving the block
        assert (status["ackFloor"], status["pending"]) == (6, 0)
        await write(server, "sdk", 2)
        async with client.consume(topic, "sdk", auto_ack=True, wait_ms=5000) as queue:
            offsets = []
            async for item in queue:
                offsets.append(item.offset)
                if len(offsets) == 2:
                    break
        assert offsets == [7, 8] and (await queue.status())["ackFloor"] == 8


def test_the_sync_client_shares_a_consumer(server: ServerProcess) -> None:
    topic = "rating.game.sync"
    asyncio.run(write(server, "sync", 3))
    with SyncClient(server.ws_url, token=server.token("sync"), rest_url=server.base_url) as one:
        taken = []
        for item in one.consume(topic, "sync", since=0, batch=2, wait_ms=2000):
            taken.append((item.offset, item.delivery))
            item.ack()
            if len(taken) == 3:
                break
        assert taken == [(1, 1), (2, 1), (3, 1)]
        assert one.fetch_consumer(topic, "sync") == []  # all acked: nothing comes back
        asyncio.run(write(server, "sync", 1))
        [event] = one.fetch_consumer(topic, "sync", wait_ms=5000)
        one.ack_consumer(topic, "sync", [event["offset"]])
        assert event["offset"] == 4


async def tail_consumer(server: ServerProcess, topic: str, name: str) -> Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ratewire",
        "tail",
        topic,
        "--consumer",
        name,
        "--since",
        "0",
        "--json",
        "--url",
        server.ws_url,
        "--token",
        server.token("tailer"),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "RATEWIRE_JWT__SECRET": SECRET},
    )


async def test_tail_through_a_consumer_goes_on_where_it_stopped(server: ServerProcess) -> None:
    topic = "rating.game.tailed"
    await write(server, "tailed", 2)
    tail = await tail_consumer(server, topic, "tq")
    assert tail.stdout is not None
    auth = {"Authorization": f"Bearer {server.token('tailer')}"}
    try:
        lines = [orjson.loads(await asyncio.wait_for(tail.stdout.readline(), WAIT)) for _ in "ab"]
        assert [(f["offset"], f["data"]["gameId"]) for f in lines] == [(1, "tailed"), (2, "tailed")]
        async with httpx.AsyncClient(base_url=server.base_url, headers=auth) as http:
            for _ in range(100):  # printed, then acked as the next fetch begins
                status = (await http.get("/consumers/tq", params={"topic": topic})).json()
                if status["ackFloor"] == 2:
                    break
                await asyncio.sleep(0.1)
            assert status["ackFloor"] == 2
    finally:
        tail.terminate()
        await tail.wait()
    again = await tail_consumer(server, topic, "tq")
    assert again.stdout is not None
    try:
        await write(server, "tailed", 1)
        line = orjson.loads(await asyncio.wait_for(again.stdout.readline(), WAIT))
        assert line["offset"] == 3
    finally:
        again.terminate()
        await again.wait()
