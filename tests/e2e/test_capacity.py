"""Connection capacity on real processes started with a low open-files limit: the soft limit
is raised to the hard one, the capacity is stated at start, and the limit looks like a clear
refusal (503 with Retry-After), never like a broken server."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.e2e.wsclient import WsClient
from tests.support.server import ServerProcess
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus, WebSocketException

pytestmark = pytest.mark.e2e


def open_files_limit(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-files line in /proc/PID/limits")


async def open_subscribed(url: str, token: str, count: int) -> list[WsClient]:
    """``count`` clients subscribed to rating.game.cap, opened 16 at a time."""
    clients: list[WsClient] = []
    for start in range(0, count, 16):
        batch = await asyncio.gather(
            *(WsClient.open(url, token) for _ in range(min(16, count - start)))
        )
        for client in batch:
            await client.recv_type("connection_success")
            await client.subscribe("rating.game.cap")
        clients.extend(batch)
    return clients


def test_the_soft_limit_is_raised_to_the_hard_one_at_start(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(nofile=(256, 4096))
    assert open_files_limit(server.pid) == (4096, 4096)
    line = re.search(
        r"capacity: (\d+) open files allowed .*?(\d+) WebSocket connections", server.log_text()
    )
    assert line is not None and line.group(1) == "4096"
    assert int(line.group(2)) < 4096  # a reserve is kept for REST and backends


async def test_beyond_capacity_upgrades_get_503_and_everything_else_keeps_working(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(nofile=(256, 256))
    assert open_files_limit(server.pid) == (256, 256)
    capacity = int(re.findall(r"(\d+) WebSocket connections", server.log_text())[0])
    assert 100 < capacity < 256
    token = server.token("crowd")
    half = capacity // 2
    held = await open_subscribed(server.module_ws_url, token, half)
    held += await open_subscribed(server.ws_url, token, capacity - half)

    for url in (server.module_ws_url, server.ws_url):  # both endpoints refuse the same way
        for _ in range(5):
            with pytest.raises(InvalidStatus) as refused:
                await WsClient.open(url, token)
            assert refused.value.response.status_code == 503
            assert int(refused.value.response.headers["Retry-After"]) >= 1
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/readyz")).status_code == 200
        writer = {"Authorization": f"Bearer {server.token('writer')}"}
        for score in (1, 2, 3):
            answer = await http.put(
                "/games/cap/ratings/writer", json={"score": score}, headers=writer
            )
            assert answer.status_code in (200, 201)
        metrics = (await http.get("/metrics")).text
    assert (
        re.search(r"ratewire_websocket_refused_at_capacity_total (\d+)", metrics).group(1) == "10"
    )  # type: ignore[union-attr]
    for client in held:  # every client within capacity got every event
        assert [frame["offset"] for frame in await client.updates(3)] == [1, 2, 3]
    assert "capacity: 256 open files allowed" in server.log_text()
    assert "at capacity" in server.log_text()

    for client in held[:20]:
        await client.close()
    for _ in range(50):  # room again, by itself, as soon as the server has seen the closes
        await asyncio.sleep(0.1)
        if server.open_connections() <= len(held) - 20:
            break
    again = await open_subscribed(server.ws_url, token, 10)
    for client in held[20:] + again:
        await client.close()


async def test_short_of_descriptors_accepting_pauses_and_recovers_by_itself(
    server_factory: Callable[..., ServerProcess],
) -> None:
    """max_connections above what the descriptors allow: before the process runs out (when
    libuv would accept and close), both ports stop accepting; clients wait in the backlog,
    and accepting resumes by itself once connections close."""
    server = server_factory(nofile=(256, 256), env={"RATEWIRE_LIMITS__MAX_CONNECTIONS": "1000"})
    assert "limits.max_connections 1000 needs about" in server.log_text()
    assert "ulimit -n" in server.log_text()
    token = server.token("flood")
    held: list[WsClient] = []
    waiting: list[asyncio.Task[WsClient]] = []
    for _ in range(20):  # until connections have to wait
        batch = [asyncio.create_task(WsClient.open(server.module_ws_url, token)) for _ in range(16)]
        done, pending = await asyncio.wait(batch, timeout=2)
        held += [task.result() for task in done]
        if pending:
            waiting += pending
            break
    assert waiting, "the server never ran short of descriptors"
    assert "accepting pauses until there is room" in server.log_text()
    for client in held:
        await client.close()
    # The waiting clients were in the backlog, not refused: they get in now, in order.
    late = await asyncio.wait_for(asyncio.gather(*waiting), 20)
    for client in late:
        assert (await client.recv())["type"] == "connection_success"
        await client.close()
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        assert (await http.get("/healthz")).status_code == 200
    async with await WsClient.open(server.module_ws_url, token) as client:
        assert (await client.recv())["type"] == "connection_success"


async def test_half_open_sockets_refused_at_accept_are_closed_after_the_handshake_timeout(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(
        env={
            "RATEWIRE_LIMITS__WS_CONNECTIONS_PER_IP_PER_SECOND": "1",
            "RATEWIRE_LIMITS__HANDSHAKE_TIMEOUT_SECONDS": "1",
        }
    )
    sockets = []
    for _ in range(300):  # half an upgrade request each, then nothing, from one address
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.ws_port, local_addr=("127.0.0.2", 0)
        )
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
        sockets.append((reader, writer))
    # Another client keeps being served meanwhile (once its own address's rate allows).
    await asyncio.sleep(1.1)
    async with await WsClient.open(server.module_ws_url, server.token("normal")) as client:
        assert (await client.recv())["type"] == "connection_success"
        assert (await client.subscribe("rating.global"))["type"] == "subscribed"

    async def closed_by_server(reader: asyncio.StreamReader) -> bool:
        try:
            async with asyncio.timeout(8):
                while await reader.read(4096):
                    pass
            return True
        except (TimeoutError, ConnectionError):
            return False

    closed = await asyncio.gather(*(closed_by_server(reader) for reader, _ in sockets))
    # One was admitted (the rate allows one); picows times out its handshake too.
    assert sum(closed) == len(sockets)
    for _, writer in sockets:
        writer.close()


async def test_one_address_holds_at_most_ws_connections_per_ip(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(env={"RATEWIRE_LIMITS__WS_CONNECTIONS_PER_IP": "5"})
    token = server.token("greedy")
    held = [await WsClient.open(server.module_ws_url, token) for _ in range(3)]
    held += [await WsClient.open(server.ws_url, token) for _ in range(2)]  # one count for both
    for url in (server.module_ws_url, server.ws_url):
        with pytest.raises(InvalidStatus) as refused:
            await WsClient.open(url, token)
        assert refused.value.response.status_code == 429
        assert int(refused.value.response.headers["Retry-After"]) >= 1
    await held.pop().close()
    await asyncio.sleep(0.2)
    held.append(await WsClient.open(server.module_ws_url, token))  # a slot came back
    for client in held:
        assert (await client.recv())["type"] == "connection_success"
        await client.close()


@pytest.mark.parametrize("endpoint", ["module port", "/ws"])
async def test_a_crowd_past_capacity_gets_clean_refusals_never_a_broken_handshake(
    server_factory: Callable[..., ServerProcess], endpoint: str
) -> None:
    """400 upgrades at once from 100 addresses against 300 descriptors: the refusals that
    capacity makes need descriptors too, and accepting them all at once used to exhaust the
    process, so libuv accepted and closed the rest: about 120 clients saw their handshake
    broken, on both endpoints. Now both ports stop accepting while descriptors are short, and
    the kernel's backlog holds the rest until they can be answered: every client gets 101 or
    503."""
    server = server_factory(nofile=(300, 300))
    capacity = int(re.findall(r"(\d+) WebSocket connections", server.log_text())[0])
    token = server.token("crowd")
    base = server.module_ws_url if endpoint == "module port" else server.ws_url
    url = f"{base}?token={token}"

    async def attempt(number: int) -> Any:
        address = f"127.0.0.{2 + number % 100}"
        try:
            return await connect(url, local_addr=(address, 0), open_timeout=30)
        except InvalidStatus as refused:
            return refused.response.status_code
        except (OSError, WebSocketException, TimeoutError) as broken:
            return broken

    outcomes = await asyncio.gather(*(attempt(n) for n in range(400)))
    held = [o for o in outcomes if isinstance(o, ClientConnection)]
    refused = [o for o in outcomes if o == 503]
    broken = [o for o in outcomes if o not in refused and not isinstance(o, ClientConnection)]
    try:
        assert broken == [], f"{len(broken)} broken handshakes, e.g. {broken[:3]!r}"
        assert len(held) == capacity and len(refused) == 400 - capacity
        assert "accepting pauses until there is room" in server.log_text()
    finally:
        await asyncio.gather(*(client.close() for client in held))
