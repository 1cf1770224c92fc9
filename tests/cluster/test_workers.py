"""``ratewire serve --workers N``: one host's cores, both ports shared (SO_REUSEPORT)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.cluster.follower import assert_exactly_once, subscribed_followers
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.postgresql]


def worker_pids(parent: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


async def worker_totals(http: httpx.AsyncClient, names: dict[str, float]) -> dict[str, float]:
    """The unlabelled samples ``names`` of one /metrics answer."""
    text = (await http.get("/metrics")).text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in names and not sample.labels
    }


@pytest.mark.parametrize("cluster_broker", ["redis", "nats"], indirect=True)
async def test_two_workers_share_both_ports_and_every_subscriber_gets_every_write(
    server_factory: Callable[..., ServerProcess],
    broker_env: dict[str, str],
    fresh_postgres_url: str,
) -> None:
    server = server_factory(
        backend="postgresql",
        storage_url=fresh_postgres_url,
        args=("--workers", "2"),
        env=broker_env,
    )
    workers = worker_pids(server.pid)
    assert len(workers) == 2
    token = server.token("watcher")
    # The kernel spreads connections over the workers; every one must see every write,
    # whichever worker took the write.
    followers = await subscribed_followers(server, token, "rating.global", 16)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        for i in range(12):
            user = f"w{i}"
            answer = await http.put(
                f"/games/workers/ratings/{user}",
                json={"score": 3},
                headers={"Authorization": f"Bearer {server.token(user)}"},
            )
            assert answer.status_code == 201
    for follower in followers:
        await follower.wait_for(12)
    # Any worker's /metrics answers for both (multi-process mode): each scrape, whichever
    # worker takes it, counts all 16 connections and the 12 events once.
    wanted = {"ratewire_websocket_connections": 16.0, "ratewire_events_published_total": 12.0}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        for _ in range(40):
            answers = [await worker_totals(http, wanted) for _ in range(6)]
            if all(answer == wanted for answer in answers):
                break
            await asyncio.sleep(0.25)  # workers copy their counts every second
    assert answers == [wanted] * 6
    for follower in followers:
        await follower.stop()
        assert_exactly_once(follower, 12)

    server.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    assert server.wait(20) == 0
    assert worker_pids(server.pid) == []
    assert "running 2 workers" in server.log_text()
