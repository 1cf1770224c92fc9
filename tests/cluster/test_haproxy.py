"""A real load balancer in front of three instances, configured by deploy/haproxy.cfg: REST
and WebSocket upgrades through it, one instance killed, clients reconnect through it and
resume. No sticky sessions."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets
from tests.cluster.conftest import ClusterFactory
from tests.cluster.follower import Follower, assert_exactly_once
from tests.support.debian import ensure_tool
from tests.support.server import ServerProcess, free_port
from tests.support.sse import SseStream
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.postgresql]
CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy.cfg"


class HAProxy:
    def __init__(self, servers: list[ServerProcess], workdir: Path) -> None:
        self.http_port, self.ws_port = free_port(), free_port()
        env = {
            **os.environ,
            "RATEWIRE_LB_HTTP_BIND": f"127.0.0.1:{self.http_port}",
            "RATEWIRE_LB_WS_BIND": f"127.0.0.1:{self.ws_port}",
        }
        for number, server in enumerate(servers, start=1):
            env[f"RATEWIRE_{number}_HTTP"] = f"127.0.0.1:{server.http_port}"
            env[f"RATEWIRE_{number}_WS"] = f"127.0.0.1:{server.ws_port}"
            env[f"RATEWIRE_{number}_CHECK_PORT"] = str(server.http_port)
        executable = ensure_tool("haproxy", "haproxy")
        checked = subprocess.run(
            [executable, "-c", "-f", str(CONFIG)], env=env, capture_output=True, text=True
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        self.log = (workdir / "haproxy.log").open("ab")
        self.process = subprocess.Popen(
            [executable, "-db", "-f", str(CONFIG)], env=env, stdout=self.log, stderr=self.log
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("haproxy did not become ready")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self.log.close()


@pytest.fixture
def cluster_behind_haproxy(
    instance: ClusterFactory, tmp_path: Path
) -> Iterator[tuple[HAProxy, list[ServerProcess]]]:
    servers = [instance() for _ in range(3)]
    balancer = HAProxy(servers, tmp_path)
    yield balancer, servers
    balancer.stop()


async def test_through_haproxy_an_instance_dies_and_clients_resume_on_the_others(
    cluster_behind_haproxy: tuple[HAProxy, list[ServerProcess]],
) -> None:
    balancer, servers = cluster_behind_haproxy
    token = servers[0].token("watcher")
    module_port = f"ws://127.0.0.1:{balancer.ws_port}/"
    main_port = f"ws://127.0.0.1:{balancer.http_port}/ws"
    followers = [
        Follower([module_port if i % 2 else main_port], token, "rating.game.lb").start()
        for i in range(9)
    ]
    for follower in followers:
        await asyncio.wait_for(follower.subscribed.wait(), 10)

    async def write(count: int, prefix: str) -> None:
        async with httpx.AsyncClient(base_url=balancer.base_url, timeout=10) as http:
            for i in range(count):
                user = f"{prefix}{i}"
                answer = await http.put(
                    f"/games/lb/ratings/{user}",
                    json={"score": 1 + i % 5},
                    headers={"Authorization": f"Bearer {servers[0].token(user)}"},
                )
                assert answer.status_code == 201, answer.text

    await write(12, "a")
    servers[1].kill()
    await write(12, "b")
    for follower in followers:
        await follower.wait_for(24, within=20)
        await follower.stop()
        assert_exactly_once(follower, 24)
    # leastconn spread the nine followers over the three instances: those on the killed one
    # came back through HAProxy.
    assert sum(follower.connections > 1 for follower in followers) >= 1


async def test_through_haproxy_a_stream_resumes_after_its_instance_dies(
    cluster_behind_haproxy: tuple[HAProxy, list[ServerProcess]],
) -> None:
    balancer, servers = cluster_behind_haproxy
    token = servers[0].token("sse-watcher")
    topics = ["rating.game.lbsse"]

    async def write(users: list[str]) -> None:
        async with httpx.AsyncClient(base_url=balancer.base_url, timeout=10) as http:
            for user in users:
                answer = await http.put(
                    f"/games/lbsse/ratings/{user}",
                    json={"score": 2},
                    headers={"Authorization": f"Bearer {servers[0].token(user)}"},
                )
                assert answer.status_code == 201, answer.text

    stream = await SseStream.open(balancer.base_url, topics, token)
    await stream.events("subscribed", 1)
    await write(["a0", "a1", "a2"])
    seen = await stream.events("rating_update", 3)
    # Kill every instance but one: whichever held the stream, it resumes on the survivor.
    servers[0].kill()
    servers[1].kill()
    await stream.close()
    await write(["b0", "b1"])
    assert stream.last_event_id is not None
    resumed = await SseStream.open(
        balancer.base_url, topics, token, last_event_id=stream.last_event_id
    )
    seen += await resumed.events("rating_update", 2)
    await resumed.close()
    assert [e.data["offset"] for e in seen] == [1, 2, 3, 4, 5]
    assert [e.data["data"]["userId"] for e in seen] == ["a0", "a1", "a2", "b0", "b1"]


async def test_through_haproxy_upgrades_are_routed_on_their_subprotocol(
    cluster_behind_haproxy: tuple[HAProxy, list[ServerProcess]],
) -> None:
    """deploy/haproxy.cfg's layer-7 rule: ratewire.v1 (alone, with a token entry, or with
    other names) and no subprotocol at all go to ratewire, which selects ratewire.v1; an
    upgrade naming only another channel's subprotocol goes to that channel's backend (none
    configured: HAProxy's 503)."""
    balancer, servers = cluster_behind_haproxy
    token = servers[0].token("router")
    for url in (f"ws://127.0.0.1:{balancer.ws_port}/", f"ws://127.0.0.1:{balancer.http_port}/ws"):
        offers: list[list[str]] = [
            ["ratewire.v1"],
            ["chat.v1", "ratewire.v1", f"token.{token}"],
            [],
        ]
        for offer in offers:
            query = "" if any(o.startswith("token.") for o in offer) else f"?token={token}"
            async with connect(
                url + query, subprotocols=[Subprotocol(o) for o in offer] or None
            ) as ws:
                assert ws.subprotocol == ("ratewire.v1" if offer else None)
                assert '"connection_success"' in str(await asyncio.wait_for(ws.recv(), 10))
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with connect(f"{url}?token={token}", subprotocols=[Subprotocol("chat.v1")]):
                pass
        assert refused.value.response.status_code == 503
