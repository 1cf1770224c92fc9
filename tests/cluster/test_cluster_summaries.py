"""Summaries from memory in a cluster: an instance never answers with a summary older than
an event it has delivered (written through another instance), and read-your-writes holds on
the instance that took the write."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from tests.cluster.conftest import ClusterFactory
from tests.e2e.wsclient import WsClient

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.postgresql]


async def test_cached_summaries_follow_the_cluster_and_the_own_writes(
    instance: ClusterFactory,
) -> None:
    writer_side, reader_side = instance(role="api"), instance(role="all")
    token = reader_side.token("watcher")
    async with (
        await WsClient.open(reader_side.module_ws_url, token) as watcher,
        httpx.AsyncClient(timeout=10) as http,
    ):
        await watcher.recv()
        await watcher.subscribe("rating.game.cl")
        # Cached on the reader before any write.
        assert (await http.get(f"{reader_side.base_url}/games/cl/summary")).json()["count"] == 0
        for n in range(1, 16):
            headers = {"Authorization": f"Bearer {writer_side.token(f'w{n}')}"}
            written = await http.put(
                f"{writer_side.base_url}/games/cl/ratings/w{n}", json={"score": 4}, headers=headers
            )
            assert written.status_code == 201
            # Read-your-writes on the instance that took the write.
            mine = (await http.get(f"{writer_side.base_url}/games/cl/summary")).json()
            assert mine["count"] == n
            # The reader delivered offset n: its summary (cached a moment ago) reflects it.
            update = (await watcher.updates(1))[0]
            theirs = (await http.get(f"{reader_side.base_url}/games/cl/summary")).json()
            assert update["offset"] == n and theirs["count"] >= n
        # Without subscribers either, the reader catches up (it follows the stream).
        for _ in range(50):
            top = (await http.get(f"{reader_side.base_url}/games/top")).json()["items"]
            if top and top[0]["count"] == 15:
                break
        assert top[0]["count"] == 15


async def _summaries_until(ws: WsClient, wanted: dict[str, object]) -> dict[str, dict[str, Any]]:
    """Read ``summary`` frames until the last one of each topic has the data ``wanted`` of it;
    the last frame of each topic."""
    last: dict[str, dict[str, Any]] = {}
    while any(last.get(topic, {}).get("data") != data for topic, data in wanted.items()):
        frame = await ws.recv(15)
        if frame["type"] == "summary":
            last[frame["topic"]] = frame
    return last


@pytest.mark.parametrize("cluster_broker", ["redis", "nats"], indirect=True)
async def test_summary_streams_on_any_instance_give_the_numbers_of_rest(
    instance: ClusterFactory,
) -> None:
    """Writes through an ``api`` instance; summary streams on an ``all`` instance (summary
    cache) and a ``stream`` one (no cache: reads the database) end on REST's numbers."""
    writer, cached, plain = instance(role="api"), instance(role="all"), instance(role="stream")
    game, topic = "sg", "summary.game.sg"
    async with httpx.AsyncClient(timeout=10) as http:
        readers = []
        for server in (cached, plain):
            ws = await WsClient.open(server.module_ws_url, server.token("agent"))
            readers.append(ws)
            await ws.recv()
            assert (await ws.subscribe(topic, intervalMs=100))["offset"] == 0
            assert (await ws.recv())["data"]["count"] == 0
            await ws.subscribe("summary.games.top", intervalMs=100, limit=3)
            await ws.recv()
        try:
            for n in range(12):
                headers = {"Authorization": f"Bearer {writer.token(f'w{n}')}"}
                answer = await http.put(
                    f"{writer.base_url}/games/{game}/ratings/w{n}",
                    json={"score": n % 5 + 1},
                    headers=headers,
                )
                assert answer.status_code == 201
            summary = (await http.get(f"{writer.base_url}/games/{game}/summary")).json()
            top = (await http.get(f"{writer.base_url}/games/top?limit=3")).json()
            for ws in readers:
                last = await _summaries_until(ws, {topic: summary, "summary.games.top": top})
                assert last[topic]["offset"] == 12
        finally:
            for ws in readers:
                await ws.close()
