"""Connection exhaustion: 2,000 sockets from several source addresses send half a request head
and then nothing, on the WebSocket module port and on the main port (REST and /ws). A normal
client still connects, subscribes and receives meanwhile, and once
``limits.handshake_timeout_seconds`` has passed the server has closed every one of them and
holds no more descriptors than before."""

from __future__ import annotations

import asyncio
import os
import resource
import time
from collections.abc import Callable

import httpx
import pytest
from tests.e2e.wsclient import WsClient
from tests.support.server import ServerProcess

pytestmark = pytest.mark.e2e

SOURCES = [f"127.0.0.{n}" for n in range(10, 30)]  # 20 addresses
PER_SOURCE_AND_PORT = 50  # x 20 addresses x 2 ports = 2,000 sockets
# Long enough for 2,000 sockets to be opened and counted before the first is cut: at 4 s a
# slow day (the machine at 0.4x its usual speed) counted 1,533 still held.
TIMEOUT_SECONDS = 8


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def half_open(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(b"GET /?token=x HTTP/1.1\r\nHost: ratewire\r\nUpgrade: websock")
    await writer.drain()
    return reader, writer


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        # Until EOF (a refusal may come first); the server cuts at TIMEOUT_SECONDS at the latest.
        await asyncio.wait_for(reader.read(), TIMEOUT_SECONDS + 5)
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


@pytest.fixture
def many_descriptors() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 8192)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


@pytest.mark.usefixtures("many_descriptors")
async def test_half_open_sockets_are_closed_and_normal_clients_keep_working(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(
        env={
            "RATEWIRE_LIMITS__HANDSHAKE_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS),
            # The defaults (10 upgrades/s and 100 open per address) stay in force.
            "RATEWIRE_LIMITS__WS_CONNECTIONS_PER_IP_PER_SECOND": "10",
            "RATEWIRE_LIMITS__WS_CONNECTIONS_PER_IP": "100",
        }
    )
    baseline = open_descriptors(server.pid)
    attackers = await asyncio.gather(
        *(
            half_open(port, source)
            for port in (server.ws_port, server.http_port)
            for source in SOURCES
            for _ in range(PER_SOURCE_AND_PORT)
        )
    )
    assert len(attackers) == 2000
    held = open_descriptors(server.pid)
    assert held >= baseline + 1900, "the server should be holding the half-open sockets now"

    # Meanwhile a normal client is served on every endpoint.
    token = server.token("7")
    clients = [await WsClient.open(url, token) for url in (server.module_ws_url, server.ws_url)]
    for client in clients:
        assert (await client.recv())["type"] == "connection_success"
        await client.subscribe("rating.game.slow")
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        written = await http.put(
            "/games/slow/ratings/7",
            json={"score": 3},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert written.status_code == 201
    for client in clients:
        update = (await client.updates(1))[0]
        assert update["data"]["gameId"] == "slow"
    # ... while the attack was still being held (else this proved nothing).
    assert open_descriptors(server.pid) >= baseline + 1900

    outcomes = await asyncio.gather(*(closed_by_server(reader) for reader, _ in attackers))
    assert all(outcomes), f"{outcomes.count(False)} half-open sockets were never closed"
    for _, writer in attackers:
        writer.close()
    deadline = time.monotonic() + 5
    while open_descriptors(server.pid) > baseline + 10 and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    assert open_descriptors(server.pid) <= baseline + 10  # our two clients, and some slack
    for client in clients:
        await client.close()
