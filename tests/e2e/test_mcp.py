"""``ratewire mcp`` driven by the official MCP SDK's own client over stdio: it lists its
tools, calls each, reads the summary resource, and tells a listener of that resource when a
REST write changes the game (pushed by the WebSocket stream, not polled)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from mcp import Client as McpClient
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPError
from tests.support.server import SECRET, ServerProcess, free_port

pytestmark = pytest.mark.e2e


def structured(result: Any) -> Any:
    """A tool result's value (structured content when the SDK gives it, else its JSON text)."""
    assert not result.is_error, result
    if result.structured_content is not None:
        content = result.structured_content
        return content.get("result", content) if isinstance(content, dict) else content
    return json.loads(result.content[0].text)


def mcp_over_stdio(server: ServerProcess, agent_token: str) -> StdioServerParameters:
    """``ratewire mcp`` on stdio, pointed at ``server``."""
    return StdioServerParameters(
        command=sys.executable,
        args=[
            "-m", "ratewire", "mcp",
            "--url", server.module_ws_url,
            "--rest-url", server.base_url,
            "--token", agent_token,
        ],
        env={**os.environ, "RATEWIRE_JWT__SECRET": SECRET},
    )  # fmt: skip


async def test_mcp_tools_resource_and_live_notifications_over_stdio(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    agent_token = server.token("agent", scope="ratings:write:any", ttl=900)
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        for user, score in (("u1", 5), ("u2", 4)):
            answer = await http.put(
                f"/games/mcp-1/ratings/{user}",
                json={"score": score},
                headers={"Authorization": f"Bearer {server.token(user)}"},
            )
            assert answer.status_code == 201
    parameters = mcp_over_stdio(server, agent_token)
    async with McpClient(parameters, read_timeout_seconds=20) as mcp:
        tools = {tool.name for tool in (await mcp.list_tools()).tools}
        assert tools == {
            "game_summary",
            "top_games",
            "recent_ratings",
            "submit_rating",
            "events_since",
        }
        summary = structured(await mcp.call_tool("game_summary", {"game_id": "mcp-1"}))
        assert (summary["count"], summary["mean"]) == (2, 4.5)
        top = structured(await mcp.call_tool("top_games", {"limit": 5}))
        assert [game["gameId"] for game in top] == ["mcp-1"]
        recent = structured(await mcp.call_tool("recent_ratings", {"game_id": "mcp-1"}))
        assert sorted(r["user_id"] for r in recent) == ["u1", "u2"]
        history = structured(
            await mcp.call_tool("events_since", {"topic": "rating.game.mcp-1", "since": 1})
        )
        assert [e["offset"] for e in history["events"]] == [2] and history["head"] == 2
        resource = await mcp.read_resource("rating://games/mcp-1/summary")
        assert json.loads(resource.contents[0].text)["count"] == 2

        async with mcp.listen(resource_subscriptions=["rating://games/mcp-1/summary"]) as sub:
            # An agent's own write through the tool, then someone else's through REST: both
            # reach the listener as notifications/resources/updated.
            rated = structured(
                await mcp.call_tool(
                    "submit_rating", {"game_id": "mcp-1", "score": 1, "user_id": "u3"}
                )
            )
            assert rated["score"] == 1 and rated["user_id"] == "u3"
            event = await asyncio.wait_for(sub.__anext__(), 10)
            assert event.uri == "rating://games/mcp-1/summary"
            async with httpx.AsyncClient(base_url=server.base_url) as http:
                await http.put(
                    "/games/mcp-1/ratings/u4",
                    json={"score": 2},
                    headers={"Authorization": f"Bearer {server.token('u4')}"},
                )
            event = await asyncio.wait_for(sub.__anext__(), 10)
            assert event.uri == "rating://games/mcp-1/summary"
        after = json.loads(
            (await mcp.read_resource("rating://games/mcp-1/summary")).contents[0].text
        )
        assert after["count"] == 4


@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
async def test_a_handshake_era_client_subscribes_with_resources_subscribe(
    server_factory: Callable[..., ServerProcess],
) -> None:
    """Agents whose MCP client still speaks 2025-11-25 (initialize, resources/subscribe) are
    told of changes the same way."""
    server = server_factory()
    updated: asyncio.Queue[str] = asyncio.Queue()

    async def on_message(message: types.ServerNotification | Exception) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updated.put_nowait(str(message.params.uri))

    parameters = mcp_over_stdio(server, server.token("agent", ttl=900))
    async with (
        stdio_client(parameters) as (read, write),
        ClientSession(read, write, read_timeout_seconds=20, message_handler=on_message) as mcp,
    ):
        handshake = await mcp.initialize()
        assert handshake.capabilities.resources is not None
        assert handshake.capabilities.resources.subscribe is True
        with pytest.raises(MCPError, match="rating://games/"):
            await mcp.subscribe_resource("rating://users/u1")
        await mcp.subscribe_resource("rating://games/legacy-1/summary")
        await mcp.subscribe_resource("rating://games/legacy-2/summary")
        await mcp.unsubscribe_resource("rating://games/legacy-2/summary")
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            for game in ("legacy-2", "legacy-1"):  # the unsubscribed game first
                answer = await http.put(
                    f"/games/{game}/ratings/u1",
                    json={"score": 3},
                    headers={"Authorization": f"Bearer {server.token('u1')}"},
                )
                assert answer.status_code == 201
        assert await asyncio.wait_for(updated.get(), 10) == "rating://games/legacy-1/summary"
        summary = await mcp.read_resource("rating://games/legacy-1/summary")
        assert json.loads(summary.contents[0].text)["count"] == 1  # type: ignore[union-attr]
    assert updated.empty()


async def test_mcp_over_streamable_http(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory()
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ratewire", "mcp",
        "--url", server.module_ws_url,
        "--rest-url", server.base_url,
        "--token", server.token("agent", ttl=900),
        "--http", str(port),
        env={**os.environ, "RATEWIRE_JWT__SECRET": SECRET},
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(100):
                try:
                    await http.get(f"http://127.0.0.1:{port}/mcp")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
        async with McpClient(f"http://127.0.0.1:{port}/mcp", read_timeout_seconds=20) as mcp:
            rated = structured(
                await mcp.call_tool("submit_rating", {"game_id": "mcp-http", "score": 4})
            )
            assert rated["user_id"] == "agent"
            summary = structured(await mcp.call_tool("game_summary", {"game_id": "mcp-http"}))
            assert summary["count"] == 1
    finally:
        process.terminate()
        await process.wait()
