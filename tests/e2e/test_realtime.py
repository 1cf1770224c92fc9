"""The WebSocket module end to end: real server processes, the third-party ``websockets``
client, both endpoints (the module port and ``/ws`` on the main port)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, cast

import httpx
import jwt
import pytest
from tests.e2e.wsclient import WsClient
from tests.support.cli import run_ratewire
from tests.support.server import ServerProcess
from websockets.exceptions import InvalidStatus

pytestmark = pytest.mark.e2e

ServerFactory = Callable[..., ServerProcess]
WRITES = 150  # events of ~2 KB for the slow-client test
# A stalled reader is cut by the send buffer, not by the heartbeat: however long the writes
# take on a loaded machine, the server's pings (unanswered while the reader is stalled) must
# not end the connection first.
SQLITE_NORMAL = {"RATEWIRE_STORAGE__SQLITE_SYNCHRONOUS": "normal"}
STALLED_READER_LIMITS = {
    "RATEWIRE_LIMITS__SEND_BUFFER_BYTES": "16384",
    "RATEWIRE_LIMITS__PING_INTERVAL_SECONDS": "600",
}


@pytest.fixture(scope="module")
def server(module_server_factory: ServerFactory) -> ServerProcess:
    """One server for the tests that do not need special limits."""
    return module_server_factory()


@pytest.fixture(scope="module", params=["full", "normal"])
def synchronous_server(
    request: pytest.FixtureRequest, module_server_factory: ServerFactory
) -> ServerProcess:
    """The shared server, and one on storage.sqlite_synchronous: normal (same promises)."""
    if request.param == "full":
        return cast(ServerProcess, request.getfixturevalue("server"))
    return module_server_factory(env=SQLITE_NORMAL)


@pytest.fixture(params=["module_port", "main_port_ws"])
def ws_url(request: pytest.FixtureRequest, server: ServerProcess) -> str:
    """Each behaviour is checked on both endpoints."""
    return server.module_ws_url if request.param == "module_port" else server.ws_url


async def post_rating(
    server: ServerProcess, game: str, user: str, score: int = 4, **extra: Any
) -> httpx.Response:
    token = server.token(user)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        return await http.post(
            "/ratings",
            json={"gameId": game, "userId": user, "score": score, **extra},
            headers={"Authorization": f"Bearer {token}"},
        )


def unique(prefix: str) -> str:
    return f"{prefix}{time.monotonic_ns()}"


# -- authentication -----------------------------------------------------------------------


async def test_query_token_gets_connection_success(server: ServerProcess, ws_url: str) -> None:
    async with await WsClient.open(ws_url, server.token("7")) as ws:
        hello = await ws.recv()
    assert hello["type"] == "connection_success"
    assert hello["userId"] == "7" and hello["protocol"] == 1 and hello["clientId"]


async def test_bearer_header_authenticates(server: ServerProcess, ws_url: str) -> None:
    headers = {"Authorization": f"Bearer {server.token('8')}"}
    async with await WsClient.open(ws_url, headers=headers) as ws:
        assert (await ws.recv())["userId"] == "8"


async def test_first_frame_auth(server: ServerProcess, ws_url: str) -> None:
    async with await WsClient.open(ws_url) as ws:
        await ws.send(action="auth", token=server.token("9"))
        assert (await ws.recv())["userId"] == "9"


@pytest.mark.parametrize(
    ("make_token", "reason"),
    [
        (lambda s: "garbage", "Invalid token"),
        (
            lambda s: jwt.encode({"sub": "7", "exp": time.time() + 60}, "wrong" * 8, "HS256"),
            "Invalid token",
        ),
        (lambda s: s.token("7", ttl=-60), "Token expired"),
    ],
    ids=["malformed", "bad-signature", "expired"],
)
async def test_bad_tokens_close_4001(
    server: ServerProcess, ws_url: str, make_token: Callable[[ServerProcess], str], reason: str
) -> None:
    ws = await WsClient.open(ws_url, make_token(server))
    assert await ws.closed_with() == (4001, reason)


async def test_no_token_and_no_auth_frame_closes_4001(
    module_server_factory: ServerFactory,
) -> None:
    server = module_server_factory(env={"RATEWIRE_LIMITS__AUTH_TIMEOUT_SECONDS": "0.5"})
    for url in (server.module_ws_url, server.ws_url):
        ws = await WsClient.open(url)
        assert (await ws.closed_with())[0] == 4001


async def test_token_expiring_on_a_live_connection_closes_4002(
    server: ServerProcess, ws_url: str
) -> None:
    # 3 s of life past the server's 5 s leeway: long enough to connect on a loaded machine
    # (with 1 s, a CI run's connect took longer and the token was refused at once, 4001).
    token = jwt.encode({"sub": "7", "exp": time.time() - 2}, server.secret, "HS256")
    ws = await WsClient.open(ws_url, token)
    assert (await ws.recv())["type"] == "connection_success"
    assert await ws.closed_with(within=12) == (4002, "Token expired")


async def test_refresh_extends_a_live_connection(server: ServerProcess, ws_url: str) -> None:
    token = jwt.encode({"sub": "7", "exp": time.time() - 2}, server.secret, "HS256")
    async with await WsClient.open(ws_url, token) as ws:
        await ws.recv()
        await ws.send(action="refresh", token=server.token("7"), id="r1")
        reply = await ws.recv()
        assert reply["type"] == "refreshed" and reply["id"] == "r1"
        await asyncio.sleep(3.5)  # past the first token's 3 s
        await ws.send(action="ping")
        assert (await ws.recv())["type"] == "pong"


async def test_tokens_never_reach_the_log(module_server_factory: ServerFactory) -> None:
    server = module_server_factory(log_level="DEBUG")  # the level that logs the most
    token = server.token("log-check")
    bearer = {"Authorization": f"Bearer {token}"}
    for url in (server.module_ws_url, server.ws_url):
        async with await WsClient.open(url, token) as ws:
            await ws.recv()
            await ws.send(action="refresh", token=token)
            await ws.recv()
        async with await WsClient.open(url, headers=bearer) as ws:
            await ws.recv()
        async with await WsClient.open(url) as ws:
            await ws.send(action="auth", token=token)
            await ws.recv()
        ws = await WsClient.open(url, "x" + token)  # refused tokens too
        await ws.closed_with()
    async with httpx.AsyncClient() as http:
        await http.get(f"{server.base_url}/ratings?token={token}", headers=bearer)
    await asyncio.sleep(0.2)
    log = server.log_text()
    assert "token=REDACTED" in log or '"level":"debug"' in log, "the log was written"
    assert token not in log


# -- the message table --------------------------------------------------------------------


async def test_subscribe_many_topics_and_receive_every_change(
    server: ServerProcess, ws_url: str
) -> None:
    game, user = unique("g"), unique("u")
    async with await WsClient.open(ws_url, server.token(user)) as ws:
        await ws.recv()
        for topic in (f"rating.game.{game}", f"rating.user.{user}", "rating.global"):
            reply = await ws.subscribe(topic)
            assert reply["topic"] == topic and isinstance(reply["epoch"], str)
        created = await post_rating(server, game, user, 4)
        assert created.status_code == 201
        rating_id = created.json()["id"]
        updates = await ws.updates(3)
        assert {u["topic"] for u in updates} == {
            f"rating.game.{game}",
            f"rating.user.{user}",
            "rating.global",
        }
        game_update = next(u for u in updates if u["topic"] == f"rating.game.{game}")
        assert game_update["offset"] == 1 and game_update["event"] == "created"
        assert game_update["data"]["id"] == rating_id and game_update["data"]["score"] == 4
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            headers = {"Authorization": f"Bearer {server.token(user)}"}
            await http.patch(f"/ratings/{rating_id}", json={"score": 2}, headers=headers)
            await http.delete(f"/ratings/{rating_id}", headers=headers)
        later = [u for u in await ws.updates(6) if u["topic"] == f"rating.game.{game}"]
        assert [(u["offset"], u["event"]) for u in later] == [(2, "updated"), (3, "deleted")]
        assert later[1]["data"]["score"] == 2, "deleted carries the rating as it was"


async def test_unsubscribe_ping_and_errors_keep_the_connection(
    server: ServerProcess, ws_url: str
) -> None:
    game = unique("g")
    async with await WsClient.open(ws_url, server.token("7")) as ws:
        await ws.recv()
        await ws.subscribe(f"rating.game.{game}")
        await ws.send(action="unsubscribe", topic=f"rating.game.{game}")
        assert await ws.recv() == {"type": "unsubscribed", "topic": f"rating.game.{game}"}
        await ws.send_raw("{not json")
        assert (await ws.recv())["code"] == "bad_request"
        await ws.send(action="fly")
        assert (await ws.recv())["code"] == "bad_request"
        await ws.send(action="subscribe", topic="rating.nothing")
        assert (await ws.recv())["code"] == "unknown_topic"
        await ws.send(action="subscribe", topic="rating.user.someone-else")
        assert (await ws.recv())["code"] == "forbidden"
        await ws.send(action="ping", id=42)
        assert await ws.recv() == {"type": "pong", "id": 42}
        assert (await post_rating(server, game, "7")).status_code == 201
        await ws.send(action="ping")
        assert (await ws.recv())["type"] == "pong", "no update after unsubscribe"


async def test_admin_may_subscribe_to_any_user(server: ServerProcess, ws_url: str) -> None:
    async with await WsClient.open(ws_url, server.token("boss", scope="ratings:admin")) as ws:
        await ws.recv()
        assert (await ws.subscribe("rating.user.someone-else"))["offset"] >= 0


async def test_snapshot_then_live(server: ServerProcess, ws_url: str) -> None:
    game = unique("g")
    for user, score in (("a", 5), ("b", 3)):
        assert (await post_rating(server, game, user + game[-6:], score)).status_code == 201
    async with await WsClient.open(ws_url, server.token("7")) as ws:
        await ws.recv()
        await ws.send(action="subscribe", topic=f"rating.game.{game}", snapshot=True)
        snapshot = await ws.recv()
        assert snapshot["type"] == "snapshot" and snapshot["offset"] == 2
        assert snapshot["data"]["count"] == 2 and snapshot["data"]["mean"] == 4.0
        assert (await ws.recv())["type"] == "subscribed"
        await post_rating(server, game, "c" + game[-6:], 1)
        assert (await ws.updates(1))[0]["offset"] == 3


@pytest.mark.parametrize("endpoint", ["module_port", "main_port_ws"])
async def test_resume_with_since_replays_what_was_missed(
    synchronous_server: ServerProcess, endpoint: str
) -> None:
    server = synchronous_server
    ws_url = server.module_ws_url if endpoint == "module_port" else server.ws_url
    game = unique("g")
    async with await WsClient.open(ws_url, server.token("7")) as ws:
        await ws.recv()
        epoch = (await ws.subscribe(f"rating.game.{game}"))["epoch"]
        await post_rating(server, game, "u1")
        [first] = await ws.updates(1)
    for user in ("u2", "u3", "u4"):  # while disconnected
        await post_rating(server, game, user)
    async with await WsClient.open(ws_url, server.token("7")) as ws:
        await ws.recv()
        await ws.send(
            action="subscribe", topic=f"rating.game.{game}", since=first["offset"], epoch=epoch
        )
        replayed = [await ws.recv() for _ in range(4)]
        assert [(m["type"], m.get("offset")) for m in replayed] == [
            ("rating_update", 2),
            ("rating_update", 3),
            ("rating_update", 4),
            ("subscribed", 4),
        ]
        assert replayed[-1]["recovered"] is True
        await post_rating(server, game, "u5")
        assert (await ws.updates(1))[0]["offset"] == 5


async def test_resume_past_retained_history_is_not_recovered(
    module_server_factory: ServerFactory,
) -> None:
    server = module_server_factory(
        env={
            "RATEWIRE_HISTORY__MAX_EVENTS_PER_TOPIC": "2",
            "RATEWIRE_HISTORY__MAX_AGE_SECONDS": "0.3",
            "RATEWIRE_HISTORY__PRUNE_INTERVAL_SECONDS": "0.2",
        }
    )
    game = unique("g")
    for user in ("u1", "u2", "u3", "u4"):
        await post_rating(server, game, user)
    await asyncio.sleep(1.0)  # pruned by age
    async with await WsClient.open(server.module_ws_url, server.token("7")) as ws:
        await ws.recv()
        await ws.send(action="subscribe", topic=f"rating.game.{game}", since=1)
        reply = await ws.recv()
        assert reply["type"] == "subscribed", "no partial replay"
        assert reply["recovered"] is False and reply["offset"] == 4
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        gone = await http.get(
            f"/topics/rating.game.{game}/events?since=1",
            headers={"Authorization": f"Bearer {server.token('7')}"},
        )
    assert gone.status_code == 410


async def test_topic_history_over_rest(server: ServerProcess) -> None:
    game = unique("g")
    for user in ("u1", "u2", "u3"):
        await post_rating(server, game, user)
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        auth = {"Authorization": f"Bearer {server.token('7')}"}
        page = (await http.get(f"/topics/rating.game.{game}/events?since=1", headers=auth)).json()
        assert [e["offset"] for e in page["events"]] == [2, 3] and page["head"] == 3
        assert page["events"][0]["type"] == "rating_update"
        forbidden = await http.get("/topics/rating.user.other/events", headers=auth)
        assert forbidden.status_code == 403
        assert (await http.get(f"/topics/rating.game.{game}/events")).status_code == 401


# -- limits and close codes ---------------------------------------------------------------


async def test_message_flood_is_throttled_then_closed_4008(
    server: ServerProcess, ws_url: str
) -> None:
    ws = await WsClient.open(ws_url, server.token("7"))
    await ws.recv()
    for _ in range(200):
        await ws.send(action="ping")
    frames: list[dict[str, Any]] = []
    code, _ = None, None
    try:
        while True:
            frames.append(await ws.recv())
    except Exception:
        code, _ = await ws.closed_with()
    assert any(f.get("code") == "rate_limited" for f in frames)
    assert code == 4008


async def test_oversized_frame_closes_1009(server: ServerProcess, ws_url: str) -> None:
    ws = await WsClient.open(ws_url, server.token("7"))
    await ws.recv()
    await ws.send_raw('{"action":"ping","pad":"' + "x" * 70_000 + '"}')
    code, _ = await ws.closed_with()
    assert code == 1009


async def test_text_frames_that_are_not_utf8_close_1007(server: ServerProcess, ws_url: str) -> None:
    ws = await WsClient.open(ws_url, server.token("7"))
    await ws.recv()
    await ws.connection.send(b'{"action":"ping","id":"\xff"}', text=True)
    await ws.send(action="ping", id="after")  # unread by the server: the close still arrives
    code, _ = await ws.closed_with()
    assert code == 1007
    # The same bytes as a binary frame are just a message that is not valid JSON.
    async with await WsClient.open(ws_url, server.token("7")) as other:
        await other.recv()
        await other.connection.send(b'{"action":"ping","id":"\xff"}')
        assert (await other.recv_type("error"))["code"] == "bad_request"


async def stalled_subscriber(server: ServerProcess, url: str, topic: str) -> WsClient:
    """A subscriber of ``topic`` that has stopped reading (resume with resume_reading())."""
    slow = await WsClient.open(url, server.token("7"))
    await slow.recv()
    await slow.subscribe(topic)
    slow.connection.transport.pause_reading()
    return slow


@pytest.mark.parametrize("synchronous", ["full", "normal"])
async def test_slow_client_is_cut_with_4009_and_can_resume(
    module_server_factory: ServerFactory, synchronous: str
) -> None:
    server = module_server_factory(
        env={**STALLED_READER_LIMITS, "RATEWIRE_STORAGE__SQLITE_SYNCHRONOUS": synchronous}
    )
    game = unique("g")
    slow = await stalled_subscriber(server, server.module_ws_url, f"rating.game.{game}")
    comment = "x" * 1900
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        auth = {"Authorization": f"Bearer {server.token('writer', scope='ratings:write:any')}"}
        for index in range(WRITES):
            body = {"gameId": game, "userId": f"u{index}", "score": 3, "comment": comment}
            assert (await http.post("/ratings", json=body, headers=auth)).status_code == 201
    slow.connection.transport.resume_reading()
    code, reason = await slow.closed_with(within=15)
    assert (code, reason) == (4009, "Client too slow")
    async with await WsClient.open(server.module_ws_url, server.token("7")) as ws:
        await ws.recv()
        await ws.send(action="subscribe", topic=f"rating.game.{game}", since=0)
        replayed = await ws.updates(WRITES, within=15)
        assert [u["offset"] for u in replayed] == list(range(1, WRITES + 1))
    # The cut is in the audit log, under its own action.
    admin = {"Authorization": f"Bearer {server.token('root', scope='ratings:admin')}"}
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        for _ in range(50):
            entries = (await http.get("/audit?action=ws.too_slow", headers=admin)).json()["items"]
            if entries:
                break
            await asyncio.sleep(0.1)
    assert entries and entries[0]["detail"]["code"] == 4009


async def test_per_ip_connection_limit_answers_429(module_server_factory: ServerFactory) -> None:
    server = module_server_factory(env={"RATEWIRE_LIMITS__WS_CONNECTIONS_PER_IP_PER_SECOND": "3"})
    for url in (server.module_ws_url, server.ws_url):
        await asyncio.sleep(1.2)  # a full bucket (the readiness probe connected too)
        statuses = []
        for _ in range(6):
            try:
                ws = await WsClient.open(url, server.token("7"))
                statuses.append(101)
                await ws.close()
            except Exception as exc:  # websockets raises InvalidStatus for a non-101 answer
                response = getattr(exc, "response", None)
                statuses.append(response.status_code if response is not None else -1)
                if response is not None:
                    assert int(response.headers["Retry-After"]) >= 1
        assert statuses.count(101) == 3 and statuses.count(429) == 3, statuses


async def test_sigterm_closes_connections_with_1001(module_server_factory: ServerFactory) -> None:
    server = module_server_factory()
    clients = [
        await WsClient.open(url, server.token("7")) for url in (server.module_ws_url, server.ws_url)
    ]
    for ws in clients:
        await ws.recv()
    server.terminate(wait=False)
    for ws in clients:
        assert (await ws.closed_with(within=10))[0] == 1001
    assert server.wait() == 0


# -- delivery guarantees ------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "sqlite-normal", pytest.param("redis", marks=pytest.mark.redis)])
def killable_storage(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Server options for a durable backend (the Redis one keeps its data in the machine's
    Redis, which outlives ratewire)."""
    if request.param == "redis":
        return {"backend": "redis", "storage_url": request.getfixturevalue("redis_store_url")}
    if request.param == "sqlite-normal":
        return {"env": SQLITE_NORMAL}
    return {}


async def test_sigkill_after_2xx_loses_nothing(
    module_server_factory: ServerFactory, killable_storage: dict[str, Any]
) -> None:
    """Every write that got a 2xx is delivered once and in order, across a kill -9."""
    server = module_server_factory(**killable_storage)
    game = unique("g")
    ws = await WsClient.open(server.module_ws_url, server.token("7"))
    await ws.recv()
    epoch = (await ws.subscribe(f"rating.game.{game}"))["epoch"]
    acknowledged: list[str] = []
    received: list[dict[str, Any]] = []
    enough_acknowledged = asyncio.Event()

    async def write(index: int) -> None:
        try:
            response = await post_rating(server, game, f"k{index}")
        except httpx.HTTPError:
            return  # the kill cut this request: no 2xx, no promise
        if response.status_code == 201:
            acknowledged.append(response.json()["id"])
            if len(acknowledged) == 20:
                enough_acknowledged.set()

    async def read() -> None:
        try:
            while True:
                received.append(await ws.recv_type("rating_update", within=10))
        except Exception:
            return

    reader = asyncio.create_task(read())
    writers = [asyncio.create_task(write(i)) for i in range(60)]
    await asyncio.wait_for(enough_acknowledged.wait(), 20)
    server.kill()  # SIGKILL, while writes are in flight
    await asyncio.gather(*writers)
    await reader
    server.restart()
    async with await WsClient.open(server.module_ws_url, server.token("7")) as again:
        await again.recv()
        since = received[-1]["offset"] if received else 0
        await again.send(action="subscribe", topic=f"rating.game.{game}", since=since, epoch=epoch)
        while True:
            frame = await again.recv()
            if frame["type"] == "subscribed":
                assert frame["recovered"] is True
                break
            received.append(frame)
    offsets = [f["offset"] for f in received]
    assert offsets == list(range(1, len(offsets) + 1)), "in order, no gap, no duplicate"
    delivered_ids = {f["data"]["id"] for f in received}
    assert set(acknowledged) <= delivered_ids, "every 2xx write was delivered"


async def test_server_pings_drop_a_dead_peer(module_server_factory: ServerFactory) -> None:
    server = module_server_factory(env={"RATEWIRE_LIMITS__PING_INTERVAL_SECONDS": "0.3"})
    dead = await WsClient.open(server.module_ws_url, server.token("7"))
    await dead.recv()
    dead.connection.transport.pause_reading()  # never sees the server's pings: never answers
    await asyncio.sleep(1.5)
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        metrics = (await http.get("/metrics")).text
    assert "ratewire_websocket_connections 0.0" in metrics
    dead.connection.transport.resume_reading()
    await dead.closed_with()


async def test_slow_client_on_the_main_port_is_cut_with_4009(
    module_server_factory: ServerFactory,
) -> None:
    # /ws cannot size its kernel buffers (ASGI hides the socket), so it takes a few MB
    # before the outbox itself overflows.
    server = module_server_factory(env=STALLED_READER_LIMITS)
    game = unique("g")
    slow = await stalled_subscriber(server, server.ws_url, f"rating.game.{game}")
    auth = {"Authorization": f"Bearer {server.token('writer', scope='ratings:write:any')}"}
    body = {"gameId": game, "score": 3, "comment": "y" * 2000}
    async with httpx.AsyncClient(base_url=server.base_url, headers=auth, timeout=30) as http:

        async def lane(first: int) -> None:
            for index in range(first, 3000, 8):
                response = await http.post("/ratings", json={**body, "userId": f"u{index}"})
                assert response.status_code == 201

        await asyncio.gather(*(lane(i) for i in range(8)))
    slow.connection.transport.resume_reading()
    assert await slow.closed_with(within=30) == (4009, "Client too slow")


async def test_tokens_living_longer_than_max_ttl_are_refused_everywhere(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    now = int(time.time())
    ten_years = jwt.encode({"sub": "7", "exp": now + 10 * 365 * 86400}, server.secret, "HS256")
    long_with_iat = jwt.encode({"sub": "7", "iat": now, "exp": now + 3600}, server.secret, "HS256")
    for token in (ten_years, long_with_iat):
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            answer = await http.put(
                "/games/ttl/ratings/7",
                json={"score": 3},
                headers={"Authorization": f"Bearer {token}"},
            )
        assert answer.status_code == 401 and "longer than 900 s" in answer.json()["detail"]
        async with await WsClient.open(server.module_ws_url, token) as client:
            code, reason = await client.closed_with()
        assert code == 4001 and reason is not None and reason.startswith("Invalid token")
        async with await WsClient.open(server.module_ws_url, server.token("7")) as client:
            await client.recv_type("connection_success")
            await client.send(action="refresh", token=token)
            refusal = await client.recv_type("error")
            assert "longer than 900 s" in refusal["message"]
    refused = run_ratewire("token", "7", "--ttl", "3600", cwd=server.workdir)
    assert refused.returncode == 2 and "jwt.max_ttl_seconds is 900" in refused.stderr


async def test_browser_origins_outside_allowed_origins_get_403_on_both_endpoints(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(
        env={"RATEWIRE_MODULES__WEBSOCKET__ALLOWED_ORIGINS": '["https://ratings.example/"]'}
    )
    token = server.token("7")
    for url in (server.module_ws_url, server.ws_url):
        with pytest.raises(InvalidStatus) as refused:
            await WsClient.open(url, token, headers={"Origin": "https://evil.example"})
        assert refused.value.response.status_code == 403
        for headers in ({"Origin": "https://ratings.example"}, None):  # allowed; not a browser
            async with await WsClient.open(url, token, headers=headers) as client:
                assert (await client.recv())["type"] == "connection_success"
