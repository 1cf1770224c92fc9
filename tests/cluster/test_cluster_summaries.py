"""Summaries from memory in a cluster: an instance never answers with a summary older than
an event it has delivered (written through another instance), and read-your-writes holds on
the instance that took the write."""

from __future__ import annotations

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
