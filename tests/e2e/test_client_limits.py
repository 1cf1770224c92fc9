"""Per-client limits that depend on who the client is: the per-user connection cap
(``limits.ws_connections_per_user``) and client addresses behind trusted proxies
(``server.trusted_proxies``), on both WebSocket endpoints and REST."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from tests.e2e.wsclient import WsClient
from tests.support.server import ServerProcess
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

pytestmark = pytest.mark.e2e


async def open_from(
    url: str, token: str, source: str, forwarded_for: str | None = None
) -> WsClient:
    """A connection from the local address ``source``, optionally claiming a client address."""
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else None
    connection = await connect(
        f"{url}?token={token}",
        additional_headers=headers,
        local_addr=(source, 0),
        open_timeout=5,
        compression=None,
    )
    client = WsClient(connection)
    assert (await client.recv())["type"] == "connection_success"
    return client


async def refused_status(opening: object) -> int:
    with pytest.raises(InvalidStatus) as refused:
        await opening  # type: ignore[misc]
    return refused.value.response.status_code


async def test_one_user_holds_at_most_ws_connections_per_user(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(env={"RATEWIRE_LIMITS__WS_CONNECTIONS_PER_USER": "2"})
    token = server.token("hog")
    first = await WsClient.open(server.module_ws_url, token)
    second = await WsClient.open(server.ws_url, token)
    for client in (first, second):
        assert (await client.recv())["type"] == "connection_success"
    for url in (server.module_ws_url, server.ws_url):
        with pytest.raises(InvalidStatus) as refused:
            await WsClient.open(url, server.token("hog"))
        assert refused.value.response.status_code == 429
        assert b"this user holds too many open connections" in refused.value.response.body
        assert "Retry-After" in refused.value.response.headers
        # Authenticating in a frame cannot be answered with 429: the connection is closed.
        async with await WsClient.open(url) as late:
            await late.send(action="auth", token=token)
            assert await late.closed_with() == (4008, "Too many connections for this user")
        async with await WsClient.open(url, server.token("someone-else")) as other:
            assert (await other.recv())["type"] == "connection_success"
    await first.close()
    await first.closed_with()
    again = await WsClient.open(server.module_ws_url, token)  # the slot came back
    assert (await again.recv())["type"] == "connection_success"
    await again.close()
    await second.close()


async def test_forwarded_addresses_count_only_from_trusted_proxies(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(
        env={
            "RATEWIRE_SERVER__TRUSTED_PROXIES": '["127.0.0.2/32"]',
            "RATEWIRE_LIMITS__WS_CONNECTIONS_PER_IP": "2",
        }
    )
    token = server.token("7")
    for url in (server.module_ws_url, server.ws_url):
        held = [
            await open_from(url, token, "127.0.0.2", "203.0.113.5"),
            await open_from(url, token, "127.0.0.2", "198.51.100.1, 203.0.113.5"),
        ]
        # Through the proxy, 203.0.113.5 is at its cap; other clients of the proxy are not.
        assert await refused_status(open_from(url, token, "127.0.0.2", "203.0.113.5")) == 429
        held.append(await open_from(url, token, "127.0.0.2", "203.0.113.6"))
        # Not a trusted proxy: its header is ignored and its own address is counted.
        held.append(await open_from(url, token, "127.0.0.3", "192.0.2.1"))
        held.append(await open_from(url, token, "127.0.0.3", "192.0.2.2"))
        assert await refused_status(open_from(url, token, "127.0.0.3", "192.0.2.3")) == 429
        for client in held:
            await client.close()
            await client.closed_with()


async def test_rest_limits_believe_forwarded_for_only_from_trusted_proxies(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(
        env={
            "RATEWIRE_SERVER__TRUSTED_PROXIES": '["127.0.0.2/32"]',
            "RATEWIRE_LIMITS__REST_REQUESTS_PER_CLIENT_PER_MINUTE": "3",
        }
    )

    async def statuses(source: str, claimed: list[str]) -> list[int]:
        transport = httpx.AsyncHTTPTransport(local_address=source)
        async with httpx.AsyncClient(base_url=server.base_url, transport=transport) as http:
            return [
                (
                    await http.get("/games/limits/summary", headers={"X-Forwarded-For": ip})
                ).status_code
                for ip in claimed
            ]

    spoofed = [f"192.0.2.{n}" for n in range(1, 6)]
    assert await statuses("127.0.0.3", spoofed) == [200, 200, 200, 429, 429]
    assert await statuses("127.0.0.2", spoofed) == [200] * 5  # five clients behind the proxy
    assert await statuses("127.0.0.2", ["198.51.100.7"] * 4) == [200, 200, 200, 429]
    forwarded = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with httpx.AsyncClient(base_url=server.base_url, transport=forwarded) as http:
        header = {"Forwarded": 'for="[2001:db8::1]:4711";proto=https'}
        codes = [(await http.get("/games/l/summary", headers=header)).status_code for _ in "1234"]
    assert codes == [200, 200, 200, 429]
    # A trusted proxy's request id is kept (its logs and ours then name requests alike);
    # anyone else gets one of ours.
    async with httpx.AsyncClient(base_url=server.base_url, transport=forwarded) as http:
        kept = await http.get("/healthz", headers={"X-Request-Id": "edge-7f3a"})
    untrusted = httpx.AsyncHTTPTransport(local_address="127.0.0.3")
    async with httpx.AsyncClient(base_url=server.base_url, transport=untrusted) as http:
        replaced = await http.get("/healthz", headers={"X-Request-Id": "edge-7f3a"})
    assert kept.headers["X-Request-Id"] == "edge-7f3a"
    assert replaced.headers["X-Request-Id"] != "edge-7f3a"


async def test_one_connection_holds_at_most_max_subscriptions(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(env={"RATEWIRE_LIMITS__MAX_SUBSCRIPTIONS_PER_CONNECTION": "3"})
    for url in (server.module_ws_url, server.ws_url):
        async with await WsClient.open(url, server.token("7")) as client:
            assert (await client.recv())["type"] == "connection_success"
            for game in ("a", "b", "c"):
                await client.subscribe(f"rating.game.{game}")
            await client.send(action="subscribe", topic="rating.game.d", id="over")
            refusal = await client.recv_type("error")
            assert (refusal["code"], refusal["id"]) == ("too_many_subscriptions", "over")
            await client.subscribe("rating.game.a")  # subscribing again is not one more
            await client.send(action="unsubscribe", topic="rating.game.b")
            await client.recv_type("unsubscribed")
            assert (await client.subscribe("rating.game.d"))["topic"] == "rating.game.d"
