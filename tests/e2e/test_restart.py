"""Data written through the API survives a restart (graceful or SIGKILL) on every durable
backend."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from tests.support.server import ServerProcess

pytestmark = pytest.mark.e2e


#: SQLite's fsync policy: full (the default) and normal keep the same promise across a crash of
#: the process (normal gives up only power-loss durability).
SQLITE_NORMAL = {"RATEWIRE_STORAGE__SQLITE_SYNCHRONOUS": "normal"}


@pytest.fixture(
    params=[
        "sqlite",
        "sqlite-normal",
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("mysql", marks=pytest.mark.mysql),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
def durable(request: pytest.FixtureRequest) -> dict[str, Any]:
    """server_factory options for each durable backend."""
    if request.param == "sqlite":
        return {"backend": "sqlite"}
    if request.param == "sqlite-normal":
        return {"backend": "sqlite", "env": SQLITE_NORMAL}
    if request.param == "redis":
        return {"backend": "redis", "storage_url": str(request.getfixturevalue("redis_store_url"))}
    url = request.getfixturevalue("postgres_url" if request.param == "postgresql" else "mysql_url")
    return {"backend": request.param, "storage_url": url}


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_ratings_survive_a_restart(
    server_factory: Callable[..., ServerProcess], durable: dict[str, Any], stop: str
) -> None:
    server = server_factory(**durable)
    game = f"restart-{stop}"
    admin = {"Authorization": f"Bearer {server.token('admin', scope='ratings:admin')}"}
    with httpx.Client(base_url=server.base_url, headers=admin) as http:
        ids = [
            http.post("/ratings", json={"gameId": game, "userId": f"u{i}", "score": 1 + i}).json()[
                "id"
            ]
            for i in range(4)
        ]
        assert http.patch(f"/ratings/{ids[0]}", json={"score": 5}).status_code == 200
        assert http.delete(f"/ratings/{ids[1]}").status_code == 204
        before = http.get(f"/games/{game}/summary").json()
        listed = http.get("/ratings", params={"gameId": game}).json()["items"]
    server.kill() if stop == "sigkill" else server.terminate()
    server.start()
    with httpx.Client(base_url=server.base_url, headers=admin) as http:
        assert http.get(f"/games/{game}/summary").json() == before
        assert before["count"] == 3 and before["histogram"]["5"] == 1
        assert http.get("/ratings", params={"gameId": game}).json()["items"] == listed
        assert http.get(f"/ratings/{ids[0]}").json()["version"] == 2
        assert http.get(f"/ratings/{ids[1]}").status_code == 404
        history = http.get(f"/topics/rating.game.{game}/events").json()
        assert [e["offset"] for e in history["events"]] == [1, 2, 3, 4, 5, 6]


async def test_writes_in_flight_at_sigterm_are_answered_and_kept(
    server_factory: Callable[..., ServerProcess],
) -> None:
    import asyncio

    server = server_factory()
    auth = {"Authorization": f"Bearer {server.token('w', scope='ratings:write:any')}"}
    statuses: list[int] = []
    stored: list[str] = []
    first_answered = asyncio.Event()

    async def write(http: httpx.AsyncClient, index: int) -> None:
        try:
            response = await http.post(
                "/ratings", json={"gameId": "shutdown", "userId": f"u{index}", "score": 3}
            )
        except httpx.TransportError:
            return  # refused or cut: no answer, so no promise
        statuses.append(response.status_code)
        if response.status_code == 201:
            stored.append(response.json()["id"])
        first_answered.set()

    async with httpx.AsyncClient(base_url=server.base_url, headers=auth, timeout=20) as http:
        writers = [asyncio.create_task(write(http, i)) for i in range(200)]
        # SIGTERM once the first write is answered (however loaded the machine), with most of
        # the others still in flight.
        await asyncio.wait_for(first_answered.wait(), 30)
        server.terminate(wait=False)
        await asyncio.gather(*writers)
    assert server.wait() == 0
    assert stored and all(status == 201 for status in statuses), statuses
    server.start()
    with httpx.Client(base_url=server.base_url) as http:
        assert http.get("/games/shutdown/summary").json()["count"] == len(stored)
        for rating_id in stored[:: max(1, len(stored) // 10)]:
            assert http.get(f"/ratings/{rating_id}").status_code == 200
