"""A client written against the original guide (Node's ``ws``, ``?token=`` on the module port,
one subscribe on open) works unchanged."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from tests.support.node import npm_ci
from tests.support.server import ServerProcess

pytestmark = pytest.mark.e2e

NODE_CLIENT_DIR = Path(__file__).parent / "node"


@pytest.fixture(scope="session")
def node_client() -> Path:
    """The guide's client with its ``ws`` dependency installed from the npm registry."""
    npm_ci(NODE_CLIENT_DIR, "ws")
    return NODE_CLIENT_DIR / "guide_client.js"


async def test_guide_client_receives_rating_updates(
    node_client: Path, module_server_factory: Callable[..., ServerProcess]
) -> None:
    server = module_server_factory()
    module_url = server.module_ws_url.rstrip("/")  # the guide connects to ws://host:8081?token=
    process = await asyncio.create_subprocess_exec(
        "node",
        str(node_client),
        "--url",
        module_url,
        "--token",
        server.token("7"),
        "--topic",
        "rating.game.guide42",
        "--count",
        "2",
        "--timeout-ms",
        "15000",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    lines: list[dict[str, object]] = []

    async def read_until(kind: str) -> None:
        assert process.stdout is not None
        while True:
            line = await asyncio.wait_for(process.stdout.readline(), 15)
            assert line, f"node client ended early: {lines}"
            lines.append(json.loads(line))
            if lines[-1]["type"] == kind:
                return

    await read_until("subscribed")
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        for user, score in (("7", 5), ("8", 2)):
            response = await http.post(
                "/ratings",
                json={"gameId": "guide42", "userId": user, "score": score},
                headers={"Authorization": f"Bearer {server.token(user)}"},
            )
            assert response.status_code == 201
    assert await asyncio.wait_for(process.wait(), 20) == 0
    remaining = await process.stdout.read()
    lines += [json.loads(line) for line in remaining.splitlines() if line.strip()]
    assert lines[1]["type"] == "connection_success"
    updates = [line for line in lines if line["type"] == "rating_update"]
    assert [(u["topic"], u["offset"], u["event"]) for u in updates] == [
        ("rating.game.guide42", 1, "created"),
        ("rating.game.guide42", 2, "created"),
    ]
    assert [u["data"]["score"] for u in updates] == [5, 2]  # type: ignore[index]
