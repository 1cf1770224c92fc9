"""PostgreSQL's server process for a connection killed in the middle of a write batch
(``pg_terminate_backend``): the writes of that transaction answer 503, the next ones succeed on
a new connection, and every write that was answered 2xx is stored and delivered exactly once,
in order."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import httpx
import pytest
from tests.cluster.follower import Follower, assert_exactly_once
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.postgresql]

WRITERS = 12
WRITES_EACH = 25


async def terminate_backends(url: str, database: str) -> int:
    """Kill every server process of ``database`` but this one's; how many were killed."""
    connection = await asyncpg.connect(url.replace("postgresql://", "postgres://", 1))
    try:
        return int(
            await connection.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
        )
    finally:
        await connection.close()


async def test_a_connection_killed_mid_batch_fails_that_batch_only(
    server_factory: Callable[..., ServerProcess], fresh_postgres_url: str
) -> None:
    server = server_factory(backend="postgresql", storage_url=fresh_postgres_url)
    database = fresh_postgres_url.rsplit("/", 1)[1]
    follower = Follower([server.module_ws_url], server.token("watcher"), "rating.game.k").start()
    await asyncio.wait_for(follower.subscribed.wait(), 10)
    answered: dict[str, int] = {}  # rating id -> status, for every 201
    statuses: list[int] = []
    killing = True

    async def writer(index: int) -> None:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=20) as http:
            for n in range(WRITES_EACH):
                user = f"k{index}-{n}"
                answer = await http.post(
                    "/ratings",
                    json={"gameId": "k", "userId": user, "score": 1 + n % 5},
                    headers={"Authorization": f"Bearer {server.token(user)}"},
                )
                statuses.append(answer.status_code)
                if answer.status_code == 201:
                    answered[answer.json()["id"]] = 201
                else:
                    assert answer.status_code == 503, answer.text
                    assert "Retry-After" in answer.headers

    async def killer() -> int:
        killed = 0
        while killing:
            await asyncio.sleep(0.15)
            killed += await terminate_backends(fresh_postgres_url, database)
        return killed

    killer_task = asyncio.create_task(killer())
    await asyncio.gather(*(writer(i) for i in range(WRITERS)))
    killing = False
    killed = await killer_task
    assert killed > 0
    assert 503 in statuses, "some batch lost its connection mid-transaction"
    assert statuses.count(201) > len(statuses) // 2, "the rest went through"
    # Healed: a write after the storm succeeds.
    async with httpx.AsyncClient(base_url=server.base_url, timeout=20) as http:
        after = await http.post(
            "/ratings",
            json={"gameId": "k", "userId": "after", "score": 5},
            headers={"Authorization": f"Bearer {server.token('after')}"},
        )
        assert after.status_code == 201
        answered[after.json()["id"]] = 201
        summary = (await http.get("/games/k/summary")).json()
    # Every 2xx write is stored. A 503 one may be too (its COMMIT may have gone through
    # before the connection died), but then once: each user rated game k once at most.
    stored = summary["count"]
    assert len(answered) <= stored <= len(answered) + statuses.count(503)
    # Whatever is stored is delivered exactly once, in order, 2xx writes included.
    await follower.wait_for(stored, within=20)
    await follower.stop()
    assert_exactly_once(follower, stored)
    assert set(answered) <= {update["data"]["id"] for update in follower.updates}
