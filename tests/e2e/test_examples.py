"""The agents in examples/ run against a real server and do what the README says."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from tests.support.server import ServerProcess

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


async def rate(server: ServerProcess, game: str, user: str, score: int) -> None:
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        answer = await http.put(
            f"/games/{game}/ratings/{user}",
            json={"score": score},
            headers={"Authorization": f"Bearer {server.token(user)}"},
        )
        assert answer.status_code in (200, 201)


async def run_example(server: ServerProcess, name: str, updates: int) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / name),
        "--url", server.module_ws_url,
        "--rest-url", server.base_url,
        "--token", server.token("example-agent", ttl=900),
        "--updates", str(updates),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    await asyncio.wait_for(process.stdout.readline(), 15)  # it is following now
    return process


async def test_live_top10_agent_keeps_the_servers_ranking(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    await rate(server, "chess", "a", 5)
    agent = await run_example(server, "live_top10.py", updates=4)
    for game, user, score in (("go", "a", 5), ("go", "b", 5), ("catan", "c", 2), ("chess", "b", 1)):
        await rate(server, game, user, score)
    output, _ = await asyncio.wait_for(agent.communicate(), 30)
    assert agent.returncode == 0
    last = output.decode().strip().split("top 10:")[-1].strip().splitlines()
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        expected = (await http.get("/games/top", params={"limit": 10})).json()["items"]
    assert [line.split()[1] for line in last] == [game["gameId"] for game in expected]
    assert [line.split()[1] for line in last] == ["go", "chess", "catan"]


async def test_cache_invalidation_consumer_rereads_exactly_the_changed_games(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    consumer = await run_example(server, "cache_invalidation.py", updates=3)
    assert consumer.stdout is not None
    # One change at a time: the consumer re-reads a game when its change arrives, so a second
    # write landing first would (rightly) be in that read already.
    lines = []
    for game, user, score in (("doom", "a", 4), ("zelda", "a", 5), ("doom", "b", 2)):
        await rate(server, game, user, score)
        lines.append((await asyncio.wait_for(consumer.stdout.readline(), 15)).decode().strip())
    output, _ = await asyncio.wait_for(consumer.communicate(), 30)
    lines += output.decode().strip().splitlines()
    assert lines == [
        "invalidated doom: 1 ratings, mean 4.0",
        "invalidated zelda: 1 ratings, mean 5.0",
        "invalidated doom: 2 ratings, mean 3.0",
        "hits 0, misses 3",
    ]
