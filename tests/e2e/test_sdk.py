"""The Python client (``ratewire.client``) against real server processes: every update of a
topic exactly once and in order across SIGKILL and restart, a network cut, a 4009 cut, two
topics on one connection, tokens renewed mid-stream; gap markers; the typed REST helpers; the
synchronous facade."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from tests.e2e.wsclient import WsClient
from tests.support.server import ServerProcess
from tests.support.tcp_proxy import TcpProxy
from websockets.exceptions import InvalidStatus

from ratewire.client import (
    AuthenticationError,
    BadRequest,
    Client,
    Conflict,
    Gap,
    GapError,
    NotFound,
    SyncClient,
    Update,
)

pytestmark = pytest.mark.e2e

ServerFactory = Callable[..., ServerProcess]


async def post(server: ServerProcess, game: str, user: str, **extra: Any) -> str | None:
    """A rating written through REST; its id if the server acknowledged it."""
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
            answer = await http.post(
                "/ratings",
                json={"gameId": game, "userId": user, "score": 4, **extra},
                headers={"Authorization": f"Bearer {server.token(user)}"},
            )
    except httpx.HTTPError:
        return None
    return answer.json()["id"] if answer.status_code == 201 else None


class Collector:
    """Drains one ``subscribe`` iterator into a list, until stopped."""

    def __init__(self, updates: Any, *, stalled: asyncio.Event | None = None) -> None:
        """``stalled``: after its first update the consumer is stuck until this is set."""
        self.items: list[Any] = []
        self.error: BaseException | None = None
        self._stalled = stalled
        self._task = asyncio.create_task(self._drain(updates))

    async def _drain(self, updates: Any) -> None:
        try:
            async for item in updates:
                self.items.append(item)
                if self._stalled is not None:
                    await self._stalled.wait()
        except Exception as exc:
            self.error = exc

    @property
    def updates(self) -> list[Update]:
        return [item for item in self.items if isinstance(item, Update)]

    async def wait_for(self, ids: set[str], within: float = 30) -> None:
        deadline = time.monotonic() + within
        while not ids <= {u.rating.id for u in self.updates}:
            assert self.error is None, self.error
            assert time.monotonic() < deadline, (
                f"missing {len(ids - {u.rating.id for u in self.updates})}"
            )
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def assert_exactly_once_in_order(self) -> None:
        offsets = [u.offset for u in self.updates]
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets))), offsets


async def test_every_update_once_and_in_order_across_sigkill_and_restart(
    server_factory: ServerFactory,
) -> None:
    server = server_factory()
    async with Client(server.module_ws_url, token_provider=lambda: server.token("agent")) as client:
        follower = Collector(client.subscribe("rating.game.sdk-kill", since=0))
        acked: list[str] = []
        some_acked = asyncio.Event()

        async def write(first: int, count: int) -> None:
            for index in range(first, first + count):
                if (rating_id := await post(server, "sdk-kill", f"u{index}")) is not None:
                    acked.append(rating_id)
                    if len(acked) >= 8:
                        some_acked.set()

        writers = [asyncio.create_task(write(n * 100, 15)) for n in range(4)]
        await asyncio.wait_for(some_acked.wait(), 30)  # some acknowledged, more in flight
        server.kill()  # SIGKILL while writes and deliveries are in flight
        await asyncio.gather(*writers)
        server.start()
        await write(1000, 10)
        await follower.wait_for(set(acked))
        await follower.stop()
    follower.assert_exactly_once_in_order()
    assert follower.updates[0].offset == 1
    assert client.stream.connections >= 2


async def test_a_network_cut_while_the_server_keeps_writing_loses_nothing(
    server_factory: ServerFactory,
) -> None:
    """The connection drops without a close frame and stays refused for a while; the server
    goes on committing meanwhile. The client comes back with ``since`` and fills the hole."""
    server = server_factory()
    proxy = TcpProxy("127.0.0.1", server.ws_port)
    try:
        url = f"ws://127.0.0.1:{proxy.port}/"
        async with Client(url, token_provider=lambda: server.token("agent")) as client:
            follower = Collector(client.subscribe("rating.game.sdk-cut", since=0))
            before = [await post(server, "sdk-cut", f"u{i}") for i in range(5)]
            await follower.wait_for({i for i in before if i})
            proxy.cut()
            during = [await post(server, "sdk-cut", f"u{i}") for i in range(5, 15)]
            await asyncio.sleep(0.5)  # a few refused reconnects (backoff) before the way opens
            proxy.restore()
            after = [await post(server, "sdk-cut", f"u{i}") for i in range(15, 20)]
            await follower.wait_for({i for i in before + during + after if i})
            await follower.stop()
    finally:
        proxy.close()
    follower.assert_exactly_once_in_order()
    assert [u.offset for u in follower.updates] == list(range(1, 21))
    assert client.stream.connections >= 2


async def test_handshakes_dropped_by_a_balancer_with_no_backend_are_retried(
    server_factory: ServerFactory,
) -> None:
    """A TCP balancer that has lost its backends (or restarts) still accepts connections and
    drops them before any HTTP answer. Such a failed handshake is one more reason to retry,
    not the end of the stream: found by the chaos soak (bench/chaos), where the SDK's
    subscriptions stopped for good at a restart of HAProxy."""
    server = server_factory()
    proxy = TcpProxy("127.0.0.1", server.ws_port)
    try:
        url = f"ws://127.0.0.1:{proxy.port}/"
        async with Client(url, token_provider=lambda: server.token("agent")) as client:
            follower = Collector(client.subscribe("rating.game.sdk-drop", since=0))
            before = [await post(server, "sdk-drop", f"u{i}") for i in range(3)]
            await follower.wait_for({i for i in before if i})
            proxy.drop_on_accept = True
            proxy.cut()
            proxy.restore()
            during = [await post(server, "sdk-drop", f"u{i}") for i in range(3, 8)]
            await asyncio.sleep(1.0)  # reconnects get accepted and dropped meanwhile
            proxy.drop_on_accept = False
            after = [await post(server, "sdk-drop", f"u{i}") for i in range(8, 10)]
            await follower.wait_for({i for i in before + during + after if i}, within=20)
            await follower.stop()
    finally:
        proxy.close()
    follower.assert_exactly_once_in_order()
    assert [u.offset for u in follower.updates] == list(range(1, 11))


async def test_a_consumer_too_slow_for_the_server_is_cut_with_4009_and_loses_nothing(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(env={"RATEWIRE_LIMITS__SEND_BUFFER_BYTES": "16384"})
    token = server.token("slow-agent", ttl=900)
    # One update queued at most: the reader stops, the server's buffer fills, 4009.
    async with Client(server.module_ws_url, token, max_queue=1) as client:
        stuck = asyncio.Event()
        slow = Collector(client.subscribe("rating.game.sdk-slow", since=0), stalled=stuck)
        ids = [await post(server, "sdk-slow", f"u{i}", comment="x" * 1990) for i in range(150)]
        stuck.set()
        await slow.wait_for({i for i in ids if i}, within=60)
        await slow.stop()
    slow.assert_exactly_once_in_order()
    assert len(slow.updates) == 150
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        metrics = (await http.get("/metrics")).text
    assert 'ratewire_websocket_closed_total{code="4009"}' in metrics
    assert client.stream.connections >= 2


async def test_two_topics_share_one_connection_across_a_restart(
    server_factory: ServerFactory,
) -> None:
    server = server_factory()
    async with Client(server.ws_url, token_provider=lambda: server.token("u1")) as client:
        games = Collector(client.subscribe("rating.game.sdk-two", since=0))
        mine = Collector(client.subscribe("rating.user.u1", since=0))
        first = [await post(server, "sdk-two", f"u{i}") for i in (1, 2, 3)]
        await games.wait_for({i for i in first if i})
        server.restart()  # SIGTERM: 1001, then back
        second = [await post(server, "sdk-two", f"u{i}") for i in (4, 5)]
        second.append(await post(server, "other", "u1"))
        await games.wait_for({i for i in first + second[:2] if i})
        await mine.wait_for({first[0], second[2]} - {None})  # type: ignore[arg-type]
        await games.stop()
        await mine.stop()
    games.assert_exactly_once_in_order()
    mine.assert_exactly_once_in_order()
    assert [u.offset for u in games.updates] == [1, 2, 3, 4, 5]
    assert [u.rating.game_id for u in mine.updates] == ["sdk-two", "other"]
    assert client.stream.connections == 2  # one at a time, shared by both iterators


async def test_a_token_expiring_mid_stream_is_renewed_through_the_provider(
    server_factory: ServerFactory,
) -> None:
    server = server_factory()
    issued: list[str] = []

    async def fresh_token() -> str:  # an async provider, as an agent's token service would be
        issued.append(server.token("renewing", ttl=3))
        return issued[-1]

    async with Client(server.module_ws_url, token_provider=fresh_token) as client:
        follower = Collector(client.subscribe("rating.game.sdk-renew", since=0))
        ids = []
        for index in range(8):  # about 8 s: the 3 s tokens expire twice over
            ids.append(await post(server, "sdk-renew", f"u{index}"))
            await asyncio.sleep(1)
        await follower.wait_for({i for i in ids if i})
        await follower.stop()
    follower.assert_exactly_once_in_order()
    assert len(issued) >= 3  # renewed before each expiry
    assert client.stream.connections == 1  # renewed in place (refresh), never cut with 4002


async def test_without_a_provider_an_expired_token_ends_the_stream_with_a_typed_error(
    server_factory: ServerFactory,
) -> None:
    server = server_factory()
    async with Client(server.module_ws_url, server.token("short", ttl=2)) as client:
        with pytest.raises(AuthenticationError) as raised:
            async for _ in client.subscribe("rating.global"):
                pass
    assert raised.value.code == 4002


async def test_a_gap_in_history_is_a_typed_marker_or_a_typed_exception(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(
        env={
            "RATEWIRE_HISTORY__MAX_EVENTS_PER_TOPIC": "5",
            "RATEWIRE_HISTORY__PRUNE_INTERVAL_SECONDS": "0.2",
        }
    )
    # One user changing one rating: every event is on the same three topics, so the pruner
    # keeps only the last 5 of each.
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        for index in range(12):
            answer = await http.put(
                "/games/sdk-gap/ratings/g1",
                json={"score": 1 + index % 5},
                headers={"Authorization": f"Bearer {server.token('g1')}"},
            )
            assert answer.status_code in (200, 201)
        for _ in range(100):  # until the pruner (every 0.2 s) has dropped offset 3
            history = await http.get(
                "/topics/rating.game.sdk-gap/events?since=2",
                headers={"Authorization": f"Bearer {server.token('g1')}"},
            )
            if history.status_code == 410:
                break
            await asyncio.sleep(0.1)
        assert history.status_code == 410
    async with Client(server.module_ws_url, server.token("agent")) as client:
        updates = client.subscribe("rating.game.sdk-gap", since=2)
        gap = await updates.__anext__()
        assert gap == Gap("rating.game.sdk-gap", 2, 12)
        await post(server, "sdk-gap", "someone-else")
        following = await updates.__anext__()
        assert isinstance(following, Update) and following.offset == 13
        await updates.aclose()
        with pytest.raises(GapError):
            async for _ in client.subscribe("rating.game.sdk-gap", since=1, on_gap="raise"):
                pass


async def test_rest_helpers_are_typed_and_errors_too(server_factory: ServerFactory) -> None:
    server = server_factory()
    async with Client(server.ws_url, token_provider=lambda: server.token("7")) as client:
        created = await client.create("sdk-rest", 3, "fine")
        assert (created.user_id, created.score, created.comment, created.version) == (
            "7",
            3,
            "fine",
            1,
        )
        with pytest.raises(Conflict):
            await client.create("sdk-rest", 4)
        rated = await client.rate("sdk-rest", 5)  # keeps the comment; If-Match: "1"
        assert (rated.id, rated.score, rated.comment, rated.version) == (created.id, 5, "fine", 2)
        cleared = await client.rate("sdk-rest", 5, None)
        assert cleared.comment is None and cleared.version == 3
        assert await client.get(created.id) == cleared
        with pytest.raises(NotFound):
            await client.get("r_missing")
        with pytest.raises(BadRequest) as invalid:
            await client.create("sdk-rest-2", 9)
        assert invalid.value.status == 422
    writer = server.token("bot", scope="ratings:write:any")
    async with Client(server.ws_url, writer) as client:
        for index in range(5):
            await client.create("sdk-rest", 1 + index % 5, user_id=f"o{index}")
        listed = [r async for r in client.list_ratings(game_id="sdk-rest", page_size=2)]
        assert len(listed) == 6 and [r.id for r in listed] == sorted(
            (r.id for r in listed), reverse=True
        )
        summary = await client.summary("sdk-rest")
        assert (summary.count, summary.histogram[5]) == (6, 2)
        assert "sdk-rest" in [s.game_id for s in await client.top_games(limit=5)]
        history = await client.events("rating.game.sdk-rest", since=1, limit=3)
        assert [u.offset for u in history.updates] == [2, 3, 4]
        assert history.head == 8 and history.updates[0].event == "updated"


def test_the_synchronous_facade_for_scripts(server_factory: ServerFactory) -> None:
    server = server_factory()
    with SyncClient(server.ws_url, token_provider=lambda: server.token("script")) as client:
        client.create("sdk-sync", 4)
        updates = client.subscribe("rating.game.sdk-sync", since=0)
        first = next(updates)
        assert isinstance(first, Update) and first.rating.score == 4
        assert client.summary("sdk-sync").count == 1
        assert [r.game_id for r in client.list_ratings(user_id="script")] == ["sdk-sync"]
        updates.close()
    # The async client's shortcut, with a client of its own on a thread.
    async_client = Client(server.ws_url, server.token("script"))
    for update in async_client.subscribe_sync("rating.user.script", since=0):
        assert update.rating.game_id == "sdk-sync"
        break


async def test_an_upgrade_refused_with_429_is_retried_and_nothing_is_missed(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(env={"RATEWIRE_LIMITS__WS_CONNECTIONS_PER_IP": "1"})
    # The address's one connection. (The start-up probe's socket may hold the slot a moment.)
    for _ in range(50):
        try:
            hog = await WsClient.open(server.module_ws_url, server.token("hog"))
            break
        except InvalidStatus:
            await asyncio.sleep(0.1)
    written = [await post(server, "sdk-429", f"u{i}") for i in range(3)]
    async with Client(server.module_ws_url, server.token("agent"), max_backoff=1) as client:
        follower = Collector(client.subscribe("rating.game.sdk-429", since=0))
        await asyncio.sleep(1.5)  # refused with 429 meanwhile, retrying
        assert follower.updates == []
        await hog.close()
        written.append(await post(server, "sdk-429", "u3"))
        await follower.wait_for({i for i in written if i})
        await follower.stop()
    follower.assert_exactly_once_in_order()
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        metrics = (await http.get("/metrics")).text
    refused = re.search(r'^ratewire_rate_limited_total\{limit="ws_per_ip"\} (\S+)$', metrics, re.M)
    assert refused is not None and float(refused.group(1)) >= 1
