"""Summary streams (``summary.game.{id}``, ``summary.games.top``) on a real server: the state
at once, then conflated (at most one frame per ``intervalMs``, only on change, the last change
of a burst always sent, equal to REST), on both WebSocket endpoints and SSE, and after a
restart. Counts are bounded by the time that passed, never latencies asserted."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
from tests.e2e.wsclient import WsClient
from tests.support.server import ServerProcess
from tests.support.sse import SseStream

from ratewire.client import Client, SubscriptionRefused, SummaryUpdate, SyncClient

pytestmark = pytest.mark.e2e

ServerFactory = Callable[..., ServerProcess]
CAP = 4  # subscriptions per connection on this module's server


@pytest.fixture(scope="module")
def server(module_server_factory: ServerFactory) -> ServerProcess:
    return module_server_factory(
        env={"RATEWIRE_LIMITS__MAX_SUBSCRIPTIONS_PER_CONNECTION": str(CAP)}
    )


@pytest.fixture(params=["module_port", "main_port_ws"])
def ws_url(request: pytest.FixtureRequest, server: ServerProcess) -> str:
    return server.module_ws_url if request.param == "module_port" else server.ws_url


def unique(prefix: str) -> str:
    return f"{prefix}{time.monotonic_ns()}"


async def rate(
    http: httpx.AsyncClient, server: ServerProcess, game: str, user: str, score: int, **extra: Any
) -> None:
    answer = await http.put(
        f"{server.base_url}/games/{game}/ratings/{user}",
        json={"score": score, **extra},
        headers={"Authorization": f"Bearer {server.token(user)}"},
    )
    assert answer.status_code in (200, 201), answer.text


async def rest(http: httpx.AsyncClient, server: ServerProcess, path: str) -> Any:
    answer = await http.get(f"{server.base_url}{path}")
    assert answer.status_code == 200, answer.text
    return answer.json()


async def summary_until(ws: WsClient, wanted: Any, within: float = 15) -> list[dict[str, Any]]:
    """``summary`` frames until one whose data is ``wanted`` (all of them, in order)."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + within
    while not seen or seen[-1]["data"] != wanted:
        frame = await ws.recv(max(0.1, deadline - time.monotonic()))
        assert frame["type"] == "summary", frame
        seen.append(frame)
    return seen


async def test_an_unrated_game_is_sent_at_once_with_offset_0(
    server: ServerProcess, ws_url: str
) -> None:
    game = unique("none")
    async with await WsClient.open(ws_url, server.token("a")) as ws, httpx.AsyncClient() as http:
        await ws.recv()
        subscribed = await ws.subscribe(f"summary.game.{game}", id=7)
        assert subscribed == {
            "type": "subscribed",
            "topic": f"summary.game.{game}",
            "offset": 0,
            "intervalMs": 1000,
            "id": 7,
        }
        first = await ws.recv()
        expected = await rest(http, server, f"/games/{game}/summary")
    assert first == {
        "type": "summary",
        "topic": f"summary.game.{game}",
        "offset": 0,
        "data": expected,
    }
    assert expected["count"] == 0


async def test_a_burst_is_conflated_and_its_last_state_always_arrives(
    server: ServerProcess, ws_url: str
) -> None:
    game, interval, writes = unique("burst"), 200, 40
    async with await WsClient.open(ws_url, server.token("a")) as ws, httpx.AsyncClient() as http:
        await ws.recv()
        await ws.subscribe(f"summary.game.{game}", intervalMs=interval)
        assert (await ws.recv())["offset"] == 0
        started = time.monotonic()
        for n in range(writes):
            await rate(http, server, game, f"u{n}", n % 5 + 1)
        final = await rest(http, server, f"/games/{game}/summary")
        frames = await summary_until(ws, final)
        elapsed = time.monotonic() - started
        # The trailing edge: the last frame is REST's state and names the last offset.
        assert frames[-1]["offset"] == writes and final["count"] == writes
        assert [f["offset"] for f in frames] == sorted({f["offset"] for f in frames})
        # Conflated: at most one frame per interval (plus the edges), whatever the write rate.
        assert len(frames) <= elapsed / (interval / 1000) + 2, (len(frames), elapsed)
        # Only on change: a comment changes the game (its offset) but not its summary; the
        # next frame is the score change after it, never the same state again.
        await rate(http, server, game, "u0", 1, comment="same score")
        await rate(http, server, game, "u0", 5)
        changed = await rest(http, server, f"/games/{game}/summary")
        (after,) = await summary_until(ws, changed)
        assert after["offset"] == writes + 2


async def test_many_subscribers_get_the_same_frames(server: ServerProcess) -> None:
    game = unique("shared")
    async with httpx.AsyncClient() as http:
        readers = [
            await WsClient.open(server.module_ws_url, server.token(f"r{n}")) for n in range(5)
        ]
        try:
            for ws in readers:
                await ws.recv()
                await ws.subscribe(f"summary.game.{game}", intervalMs=100)
                await ws.recv()
            for n in range(10):
                await rate(http, server, game, f"u{n}", 4)
            final = await rest(http, server, f"/games/{game}/summary")
            seen = [await summary_until(ws, final) for ws in readers]
        finally:
            for ws in readers:
                await ws.close()
    # One computation per interval for the group: every member got the same frames.
    assert all(frames == seen[0] for frames in seen)


async def test_the_top_list_follows_writes_with_limit_and_min_count(
    server_factory: ServerFactory,
) -> None:
    server = server_factory()  # its own: the order depends on every game in the database
    async with (
        await WsClient.open(server.ws_url, server.token("a")) as ws,
        httpx.AsyncClient() as http,
    ):
        await ws.recv()
        for user, (game, score) in enumerate([("t1", 5), ("t2", 3), ("t3", 5), ("t3", 5)]):
            await rate(http, server, game, f"u{user}", score)
        query = "/games/top?limit=2&minCount=1"
        subscribed = await ws.subscribe("summary.games.top", intervalMs=50, limit=2, minCount=1)
        assert subscribed["limit"] == 2 and subscribed["minCount"] == 1
        assert subscribed["offset"] == 4  # the rating.global offset the list includes
        first = await ws.recv()
        assert first["data"] == await rest(http, server, query)
        assert [g["gameId"] for g in first["data"]["items"]] == ["t3", "t1"]
        for user in range(4, 8):  # t2 climbs to the top
            await rate(http, server, "t2", f"u{user}", 5)
        last = (await summary_until(ws, await rest(http, server, query)))[-1]
        assert [g["gameId"] for g in last["data"]["items"]] == ["t2", "t3"]
        # minCount leaves out the games with fewer ratings.
        await ws.subscribe("summary.games.top", limit=10, minCount=3)
        only = await ws.recv()
        assert only["data"] == await rest(http, server, "/games/top?limit=10&minCount=3")
        assert [g["gameId"] for g in only["data"]["items"]] == ["t2"]


async def test_bad_options_unknown_topics_unsubscribe_and_the_cap(
    server: ServerProcess, ws_url: str
) -> None:
    game = unique("opts")
    async with await WsClient.open(ws_url, server.token("a")) as ws, httpx.AsyncClient() as http:
        await ws.recv()
        for message, code, named in [
            ({"topic": f"summary.game.{game}", "intervalMs": 49}, "bad_request", "intervalMs"),
            ({"topic": f"summary.game.{game}", "intervalMs": "1"}, "bad_request", "intervalMs"),
            ({"topic": f"summary.game.{game}", "limit": 5}, "bad_request", "limit"),
            ({"topic": "summary.games.top", "minCount": 0}, "bad_request", "minCount"),
            ({"topic": "summary.game.no way"}, "unknown_topic", "summary.game"),
            ({"topic": "summary.everything"}, "unknown_topic", "summary.games.top"),
        ]:
            await ws.send(action="subscribe", **message)
            error = await ws.recv()
            assert error["type"] == "error" and error["code"] == code, error
            assert named in error["message"]
        # unsubscribe: no more frames of it; the rating topic written after proves the order.
        await ws.subscribe(f"summary.game.{game}", intervalMs=50)
        await ws.recv()
        await ws.send(action="unsubscribe", topic=f"summary.game.{game}")
        assert (await ws.recv())["type"] == "unsubscribed"
        await ws.subscribe(f"rating.game.{game}")
        await rate(http, server, game, "u1", 2)
        assert (await ws.recv())["type"] == "rating_update"
        await ws.subscribe(f"summary.game.{game}", intervalMs=50)  # nothing came before it
        assert (await ws.recv())["data"]["count"] == 1
        # The cap counts summary subscriptions with the others.
        for n in range(CAP - 2):
            await ws.subscribe(f"summary.game.{game}x{n}")
            await ws.recv()
        await ws.send(action="subscribe", topic="summary.games.top")
        assert (await ws.recv())["code"] == "too_many_subscriptions"
        await ws.send(action="ping")
        assert (await ws.recv())["type"] == "pong"


async def test_summaries_over_sse(server: ServerProcess) -> None:
    game = unique("sse")
    stream = await SseStream.open(
        server.base_url,
        [f"summary.game.{game}", f"rating.game.{game}"],
        server.token("a"),
        params={"intervalMs": "100"},
    )
    try:
        assert stream.response.status_code == 200
        (first,) = await stream.events("summary", 1)
        assert first.data["offset"] == 0 and first.data["data"]["count"] == 0
        async with httpx.AsyncClient() as http:
            for n in range(5):
                await rate(http, server, game, f"u{n}", 3)
            final = await rest(http, server, f"/games/{game}/summary")
        while True:
            (event,) = await stream.events("summary", 1)
            if event.data["data"] == final:
                break
        assert event.data["topic"] == f"summary.game.{game}" and event.data["offset"] == 5
    finally:
        await stream.close()
    async with httpx.AsyncClient() as http:
        refused = await http.get(
            f"{server.base_url}/stream",
            params={"topic": f"summary.game.{game}", "intervalMs": "10"},
            headers={"Authorization": f"Bearer {server.token('a')}"},
        )
    assert refused.status_code == 400 and "intervalMs" in refused.json()["detail"]


async def test_a_restarted_server_starts_from_the_stored_summary(
    server_factory: ServerFactory,
) -> None:
    server = server_factory()
    async with httpx.AsyncClient() as http:
        for n in range(3):
            await rate(http, server, "rs", f"u{n}", 2)
        server.restart()
        async with await WsClient.open(server.ws_url, server.token("a")) as ws:
            await ws.recv()
            await ws.subscribe("summary.game.rs", intervalMs=50)
            first = await ws.recv()
            assert first["offset"] == 3
            assert first["data"] == await rest(http, server, "/games/rs/summary")
            await rate(http, server, "rs", "u9", 5)
            last = (await summary_until(ws, await rest(http, server, "/games/rs/summary")))[-1]
            assert last["offset"] == 4 and last["data"]["count"] == 4


async def test_the_python_clients_follow_summaries(server: ServerProcess) -> None:
    game = unique("py")
    async with Client(
        server.module_ws_url, token=server.token("agent"), rest_url=server.base_url
    ) as client:
        states = client.summaries(f"summary.game.{game}", interval_ms=50)
        first = await anext(states)
        assert first.offset == 0 and first.summary is not None and first.summary.count == 0
        await client.rate(game, 4, user_id="agent")
        second = await anext(states)
        assert second.offset == 1 and second.summary is not None
        assert second.data == await client_rest(server, f"/games/{game}/summary")
        await states.aclose()
        top = client.summaries("summary.games.top", interval_ms=50, limit=1)
        assert [g.game_id for g in (await anext(top)).games] == [
            g["gameId"] for g in (await client_rest(server, "/games/top?limit=1"))["items"]
        ]
        await top.aclose()
        refused = client.summaries(f"summary.game.{game}", interval_ms=60, limit=3)
        with pytest.raises(SubscriptionRefused, match="limit"):
            await anext(refused)

    def sync_first() -> SummaryUpdate:
        with SyncClient(server.module_ws_url, token=server.token("agent")) as sync:
            for state in sync.summaries(f"summary.game.{game}", interval_ms=100):
                return state
        raise AssertionError("no state")

    state = await asyncio.to_thread(sync_first)
    assert state.summary is not None and state.summary.count == 1


async def client_rest(server: ServerProcess, path: str) -> Any:
    async with httpx.AsyncClient() as http:
        return await rest(http, server, path)


async def test_tail_prints_a_summary_topic(server: ServerProcess) -> None:
    game = unique("tail")
    tail = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ratewire",
        "tail",
        f"summary.game.{game}",
        "--interval-ms",
        "50",
        "--json",
        "--url",
        server.module_ws_url,
        "--token",
        server.token("tailer"),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "RATEWIRE_JWT__SECRET": server.secret},
    )
    assert tail.stdout is not None
    try:
        first = orjson.loads(await asyncio.wait_for(tail.stdout.readline(), 15))
        async with httpx.AsyncClient() as http:
            await rate(http, server, game, "u1", 5)
        second = orjson.loads(await asyncio.wait_for(tail.stdout.readline(), 15))
    finally:
        tail.terminate()
        await tail.wait()
    assert (first["type"], first["offset"], first["data"]["count"]) == ("summary", 0, 0)
    assert (second["offset"], second["data"]["count"]) == (1, 1)
