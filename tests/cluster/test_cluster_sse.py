"""Server-Sent Events in a cluster: a stream on a ``stream`` instance (with and without a
database) gets the writes of an ``api`` instance, and a stream cut off resumes from its
``Last-Event-ID`` on another instance, every offset once and in order."""

from __future__ import annotations

import httpx
import pytest
from tests.cluster.conftest import ClusterFactory
from tests.support.server import ServerProcess
from tests.support.sse import SseStream

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.postgresql]


async def write(api: ServerProcess, game: str, users: list[str]) -> None:
    async with httpx.AsyncClient(base_url=api.base_url, timeout=10) as http:
        for user in users:
            answer = await http.put(
                f"/games/{game}/ratings/{user}",
                json={"score": 4},
                headers={"Authorization": f"Bearer {api.token(user)}"},
            )
            assert answer.status_code == 201, answer.text


async def test_a_stream_resumes_on_another_instance(instance: ClusterFactory) -> None:
    api = instance(role="api")
    stream_with_db = instance(role="stream")
    stream_alone = instance(role="stream", backend="none", storage_url="")
    token = api.token("watcher")
    topics = ["rating.game.csse", "rating.global"]
    first = await SseStream.open(stream_with_db.base_url, topics, token)
    await first.events("subscribed", 2)
    await write(api, "csse", [f"a{i}" for i in range(5)])
    seen = await first.events("rating_update", 10)
    await first.close()
    await write(api, "csse", [f"b{i}" for i in range(5)])  # while it is away
    assert first.last_event_id is not None
    second = await SseStream.open(
        stream_alone.base_url, topics, token, last_event_id=first.last_event_id
    )
    seen += await second.events("rating_update", 10)
    await write(api, "csse", ["c0"])
    seen += await second.events("rating_update", 2)
    await second.close()
    for topic in topics:
        ordered = [e.data for e in seen if e.data["topic"] == topic]
        assert [u["offset"] for u in ordered] == list(range(1, 12))
        assert [u["data"]["userId"] for u in ordered] == [
            *(f"a{i}" for i in range(5)),
            *(f"b{i}" for i in range(5)),
            "c0",
        ]
    assert {e.data["epoch"] for e in seen} == {seen[0].data["epoch"]}
