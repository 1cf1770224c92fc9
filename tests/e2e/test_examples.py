"""The agents in examples/ run against a real server and do what the README says."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest
from tests.support.server import ServerProcess, free_port

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


async def test_the_webhook_receiver_verifies_and_handles_each_event_once(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(
        env={
            "RATEWIRE_WEBHOOKS__ALLOW_INSECURE_HTTP": "true",
            "RATEWIRE_WEBHOOKS__ALLOW_PRIVATE_NETWORKS": "true",
            "RATEWIRE_WEBHOOKS__RETRY_SCHEDULE_SECONDS": "[0.2, 0.5, 1, 1, 1, 1]",
        }
    )
    port = free_port()
    admin = {"Authorization": f"Bearer {server.token('root', scope='ratings:admin')}"}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        created = await http.post(
            "/admin/webhooks",
            json={"url": f"http://127.0.0.1:{port}/", "topics": ["rating.game.hook"]},
            headers=admin,
        )
        webhook = created.json()
        receiver = await asyncio.create_subprocess_exec(
            sys.executable, str(EXAMPLES / "webhook_receiver.py"),
            "--port", str(port), "--secret", webhook["secret"],
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert receiver.stdout is not None and receiver.stderr is not None
        assert b"listening" in await asyncio.wait_for(receiver.stderr.readline(), 15)
        for user, score in (("a", 5), ("b", 3), ("c", 1)):
            await rate(server, "hook", user, score)
        lines = [await asyncio.wait_for(receiver.stdout.readline(), 15) for _ in range(3)]
        # Delivered again (a replay): the receiver knows the ids and handles none twice.
        replay = await http.post(
            f"/admin/webhooks/{webhook['id']}/replay", json={"since": 0}, headers=admin
        )
        assert replay.status_code == 200
        duplicates = [await asyncio.wait_for(receiver.stderr.readline(), 15) for _ in range(3)]
    receiver.terminate()
    rest, _ = await receiver.communicate()
    events = [orjson.loads(line) for line in lines]
    assert [(e["offset"], e["data"]["userId"], e["data"]["score"]) for e in events] == [
        (1, "a", 5),
        (2, "b", 3),
        (3, "c", 1),
    ]
    assert all(line.startswith(b"duplicate msg_") for line in duplicates)
    assert rest == b""
