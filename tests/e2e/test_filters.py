"""Server-side filters (CEL) on a real server process: WebSocket subscriptions on both
endpoints live and on replay, SSE ``filter=``, a webhook's ``filter``, and the bad expressions
every transport refuses naming what is wrong (the connection stays open)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.e2e.wsclient import WsClient
from tests.support.cli import run_ratewire
from tests.support.server import ServerProcess
from tests.support.sse import SseStream
from tests.support.webhook_receiver import Receiver

from ratewire.client import Client, SubscriptionRefused, SyncClient, Update

pytestmark = pytest.mark.e2e
ServerFactory = Callable[..., ServerProcess]
LOW = "data.score <= 2"
#: Tests call receivers on 127.0.0.1 over http: both allowed here, refused by default.
LOCAL = {
    "RATEWIRE_WEBHOOKS__ALLOW_INSECURE_HTTP": "true",
    "RATEWIRE_WEBHOOKS__ALLOW_PRIVATE_NETWORKS": "true",
}
BAD = {
    "syntax": ("data.score <=", "syntax error"),
    "unknown field": ("data.stars >= 4", "unknown field data.stars"),
    "wrong type": ('data.score == 1 || data.score > "3"', "wrong type"),
    "too long": ("data.score == 1 || " * 60 + "true", "too long"),
    "too costly": (
        "[1,2,3,4,5,6,7,8].all(a, [1,2,3,4,5,6,7,8].all(b, a * b > 0))",
        "too costly",
    ),
}


@pytest.fixture(scope="module")
def server(module_server_factory: ServerFactory) -> ServerProcess:
    return module_server_factory(env=LOCAL)


async def rate(server: ServerProcess, game: str, user: str, score: int) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        answer = await http.put(
            f"/games/{game}/ratings/{user}",
            json={"score": score},
            headers={"Authorization": f"Bearer {server.token(user)}"},
        )
        assert answer.status_code in (200, 201), answer.text


def scored(frames: list[dict[str, Any]]) -> list[tuple[int, int]]:
    return [(f["offset"], f["data"]["score"]) for f in frames]


@pytest.mark.parametrize("endpoint", ["module_port", "main_port_ws"])
async def test_a_filtered_subscription_replays_and_follows_only_matching_events(
    server: ServerProcess, endpoint: str
) -> None:
    game = f"f1{endpoint}"
    for user, score in (("u1", 1), ("u2", 5), ("u3", 2), ("u4", 4)):
        await rate(server, game, user, score)
    url = server.module_ws_url if endpoint == "module_port" else server.ws_url
    async with await WsClient.open(url, server.token("reader")) as ws:
        await ws.recv_type("connection_success")
        await ws.send(action="subscribe", topic=f"rating.game.{game}", since=0, filter=LOW)
        replayed = [await ws.recv(), await ws.recv()]
        subscribed = await ws.recv()
        assert scored(replayed) == [(1, 1), (3, 2)]
        assert subscribed["type"] == "subscribed" and subscribed["filter"] == LOW
        assert subscribed["recovered"] is True and subscribed["offset"] == 4
        for user, score in (("u5", 3), ("u6", 1), ("u7", 5), ("u8", 2)):
            await rate(server, game, user, score)
        assert scored(await ws.updates(2)) == [(6, 1), (8, 2)], "gaps are the topic's own"


async def test_a_filter_on_every_game_over_websocket_and_sse(server: ServerProcess) -> None:
    low_f3 = 'data.score <= 2 && data.gameId.startsWith("f3")'  # other tests rate other games
    token = server.token("reader")
    # rating.global beside it: rating.game.* has no offsets, so no `subscribed` to wait for.
    topics = ["rating.game.*", "rating.global"]
    stream = await SseStream.open(server.base_url, topics, token, filter=low_f3)
    try:
        async with await WsClient.open(server.ws_url, token) as ws:
            await ws.recv_type("connection_success")
            assert (await ws.subscribe("rating.game.*", filter=low_f3))["filter"] == low_f3
            await stream.events("subscribed", 1)
            for game, user, score in (("f3a", "u1", 1), ("f3b", "u2", 4), ("f3b", "u3", 2)):
                await rate(server, game, user, score)
            want = [("rating.game.f3a", 1, 1), ("rating.game.f3b", 2, 2)]
            got = [(f["topic"], f["offset"], f["data"]["score"]) for f in await ws.updates(2)]
            assert got == want
            updates = [e.data for e in await stream.events("rating_update", 4)]
            on_games = [u for u in updates if u["topic"] != "rating.global"]
            assert [(u["topic"], u["offset"], u["data"]["score"]) for u in on_games] == want
    finally:
        await stream.close()


async def test_bad_filters_are_refused_naming_what_is_wrong_and_the_connection_stays_open(
    server: ServerProcess,
) -> None:
    async with await WsClient.open(server.ws_url, server.token("7")) as ws:
        await ws.recv_type("connection_success")
        for name, (expression, says) in BAD.items():
            await ws.send(action="subscribe", topic="rating.global", filter=expression, id=name)
            error = await ws.recv()
            assert error["type"] == "error" and error["code"] == "bad_filter", error
            assert says in error["message"] and error["id"] == name, error
        # A filter never widens what a token may see: the topic is refused first.
        await ws.send(action="subscribe", topic="rating.user.8", filter="true")
        assert (await ws.recv())["code"] == "forbidden"
        subscribed = await ws.subscribe("rating.user.7", filter="true")
        assert subscribed["filter"] == "true"


async def test_a_filtered_sse_stream_and_a_bad_filter_answered_400(server: ServerProcess) -> None:
    game = "f2sse"
    token = server.token("reader")
    stream = await SseStream.open(server.base_url, [f"rating.game.{game}"], token, filter=LOW)
    try:
        [subscribed] = await stream.events("subscribed", 1)
        assert subscribed.data["filter"] == LOW
        for user, score in (("u1", 4), ("u2", 2), ("u3", 5), ("u4", 1)):
            await rate(server, game, user, score)
        updates = await stream.events("rating_update", 2)
        assert [(e.data["offset"], e.data["data"]["score"]) for e in updates] == [(2, 2), (4, 1)]
    finally:
        await stream.close()
    refused = await SseStream.open(server.base_url, ["rating.global"], token, filter="data.x")
    try:
        assert refused.response.status_code == 400
        body = (await refused.response.aread()).decode()
        assert "bad filter: unknown field data.x" in body
    finally:
        await refused.close()


async def test_a_webhook_delivers_only_what_its_filter_passes(server: ServerProcess) -> None:
    admin = {"Authorization": f"Bearer {server.token('root', scope='ratings:admin')}"}
    receiver = await Receiver.start()
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
            refused = await http.post(
                "/admin/webhooks",
                json={"url": receiver.url, "topics": ["rating.game.*"], "filter": "data.x"},
                headers=admin,
            )
            assert refused.status_code == 422 and "filter: unknown field" in refused.text
            answer = await http.post(
                "/admin/webhooks",
                json={"url": receiver.url, "topics": ["rating.game.*"], "filter": LOW},
                headers=admin,
            )
            assert answer.status_code == 201, answer.text
            webhook = answer.json()
            assert webhook["filter"] == LOW
            for user, score in (("u1", 5), ("u2", 1), ("u3", 3), ("u4", 2)):
                await rate(server, "f3hook", user, score)
            delivered = await receiver.wait_for(webhook["secret"], 2)
            assert [(p["offset"], p["data"]["score"]) for p in delivered] == [(2, 1), (4, 2)]  # type: ignore[index]
            # Removing the filter ("") delivers every event again.
            changed = await http.patch(
                f"/admin/webhooks/{webhook['id']}", json={"filter": ""}, headers=admin
            )
            assert changed.status_code == 200 and changed.json()["filter"] is None
            await rate(server, "f3hook", "u5", 5)
            delivered = await receiver.wait_for(webhook["secret"], 3)
            assert delivered[-1]["offset"] == 5
    finally:
        await receiver.close()


async def test_the_python_client_follows_a_filtered_topic_and_a_bad_filter_is_typed(
    server: ServerProcess,
) -> None:
    game = "f4sdk"
    for user, score in (("u1", 2), ("u2", 4)):
        await rate(server, game, user, score)
    async with Client(server.ws_url, server.token("agent")) as client:
        updates = client.subscribe(f"rating.game.{game}", since=0, filter=LOW)
        first = await anext(updates)
        assert isinstance(first, Update) and (first.offset, first.rating.score) == (1, 2)
        with pytest.raises(ValueError, match="one filter at a time"):
            await anext(client.subscribe(f"rating.game.{game}", filter="true"))
        await rate(server, game, "u3", 5)
        await rate(server, game, "u4", 1)
        second = await anext(updates)
        assert isinstance(second, Update) and (second.offset, second.rating.score) == (4, 1)
        await updates.aclose()  # type: ignore[attr-defined]
        with pytest.raises(SubscriptionRefused, match=r"unknown field data\.stars"):
            await anext(client.subscribe("rating.global", filter="data.stars > 1"))


def test_the_synchronous_client_and_tail_take_a_filter(
    server: ServerProcess, tmp_path: Path
) -> None:
    with SyncClient(server.ws_url, token_provider=lambda: server.token("script")) as client:
        client.create("f5sync", 5)
        updates = client.subscribe("rating.user.script", since=0, filter="data.score == 5")
        first = next(updates)
        assert isinstance(first, Update) and first.rating.game_id == "f5sync"
        updates.close()
    refused = run_ratewire("tail", "rating.global", "--filter", "data.score >", cwd=tmp_path)
    assert refused.returncode == 2 and "syntax error" in refused.stderr, refused.stderr


async def test_a_filtered_sse_stream_resumes_with_only_the_matching_updates_it_missed(
    server: ServerProcess,
) -> None:
    game, token = "f6resume", server.token("reader")
    topics = [f"rating.game.{game}"]
    stream = await SseStream.open(server.base_url, topics, token, filter=LOW)
    try:
        await stream.events("subscribed", 1)
        await rate(server, game, "u1", 1)
        [first] = await stream.events("rating_update", 1)
        cursor = stream.last_event_id
    finally:
        await stream.close()
    for user, score in (("u2", 5), ("u3", 2), ("u4", 4), ("u5", 1)):
        await rate(server, game, user, score)
    resumed = await SseStream.open(server.base_url, topics, token, filter=LOW, last_event_id=cursor)
    try:
        missed = await resumed.events("rating_update", 2)
        assert first.data["offset"] == 1
        assert [(e.data["offset"], e.data["data"]["score"]) for e in missed] == [(3, 2), (5, 1)]
    finally:
        await resumed.close()
