"""``ratewire mcp`` driven by the official MCP SDK's own client over stdio: it lists its
tools, calls each, reads the summary resource, and tells a listener of that resource when a
REST write changes the game (pushed by the WebSocket stream, not polled)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import httpx2
import jwt
import pytest
from mcp import Client as McpClient
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
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
            "watch_events",
            "fetch_ratings",
            "ack_ratings",
        }
        # A work queue over tool calls: created from now, so the next change is the first.
        queue = {"consumer": "mcp-queue", "topic": "rating.game.mcp-1"}
        assert structured(await mcp.call_tool("fetch_ratings", queue)) == {"events": []}
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
        watched = structured(
            await mcp.call_tool(
                "watch_events",
                {"topic": "rating.game.mcp-1", "since": 0, "filter": "data.score >= 5"},
            )
        )
        assert [e["rating"]["score"] for e in watched["events"]] == [5] and watched["next"] == 1
        refused = await mcp.call_tool(
            "watch_events", {"topic": "rating.global", "filter": "data.stars > 1"}
        )
        assert refused.is_error and "unknown field data.stars" in refused.content[0].text
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
            taken = structured(await mcp.call_tool("fetch_ratings", queue))["events"]
            assert [(e["offset"], e["delivery"]) for e in taken] == [(3, 1)]
            acked = structured(await mcp.call_tool("ack_ratings", {**queue, "offsets": [3]}))
            assert acked == {"acked": [3]}
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


async def test_a_paced_summary_resource_notifies_at_most_once_per_interval(
    server_factory: Callable[..., ServerProcess],
) -> None:
    """``rating://games/{id}/summary/every/{ms}``: a burst of writes is one notification per
    interval at most, and the last write is in the summary read after the last one."""
    server = server_factory()
    uri, interval, writes = "rating://games/paced/summary/every/300", 0.3, 12
    async with McpClient(
        mcp_over_stdio(server, server.token("agent")), read_timeout_seconds=20
    ) as mcp:
        assert json.loads((await mcp.read_resource(uri)).contents[0].text)["count"] == 0
        async with (
            mcp.listen(resource_subscriptions=[uri]) as sub,
            httpx.AsyncClient(base_url=server.base_url) as http,
        ):
            started = time.monotonic()
            for n in range(writes):
                answer = await http.put(
                    f"/games/paced/ratings/u{n}",
                    json={"score": 4},
                    headers={"Authorization": f"Bearer {server.token(f'u{n}')}"},
                )
                assert answer.status_code == 201
            notified = 0
            while True:
                event = await asyncio.wait_for(sub.__anext__(), 10)
                assert event.uri == uri
                notified += 1
                summary = json.loads((await mcp.read_resource(uri)).contents[0].text)
                if summary["count"] == writes:
                    break
            assert notified <= (time.monotonic() - started) / interval + 2


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


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "probe", "version": "1"},
    },
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream"}


@contextlib.asynccontextmanager
async def mcp_over_http(
    server: ServerProcess, *extra: str, env: dict[str, str] | None = None
) -> AsyncIterator[str]:
    """``ratewire mcp --http`` pointed at ``server``; yields its endpoint's URL."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ratewire", "mcp",
        "--url", server.module_ws_url,
        "--rest-url", server.base_url,
        "--token", server.token("mcp-server", ttl=900),
        "--http", str(port), *extra,
        env={**os.environ, "RATEWIRE_JWT__SECRET": SECRET, **(env or {})},
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
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        await process.wait()


def as_agent(url: str, token: str) -> McpClient:
    """The official MCP client over streamable HTTP, sending ``token`` on every request."""
    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30, read=300)
    )
    return McpClient(streamable_http_client(url, http_client=http), read_timeout_seconds=20)


async def test_each_agent_acts_as_itself_over_streamable_http(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    async with mcp_over_http(server) as url:
        for agent in ("agent-a", "agent-b"):
            async with as_agent(url, server.token(agent, ttl=900)) as mcp:
                rated = structured(
                    await mcp.call_tool("submit_rating", {"game_id": "mcp-http", "score": 4})
                )
                assert rated["user_id"] == agent, "the caller's own rating, not the server's"
        async with as_agent(url, server.token("agent-a", ttl=900)) as mcp:
            summary = structured(await mcp.call_tool("game_summary", {"game_id": "mcp-http"}))
            assert summary["count"] == 2
        # The audit log names each agent as the actor of its write.
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            admin = {"Authorization": f"Bearer {server.token('root', scope='ratings:admin')}"}
            entries = (await http.get("/audit?action=rating.create", headers=admin)).json()
            actors = {e["actor"] for e in entries["items"]}
            assert {"agent-a", "agent-b"} <= actors and "mcp-server" not in actors


async def test_a_read_only_agent_cannot_call_the_write_tool(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    async with (
        mcp_over_http(server) as url,
        as_agent(url, server.token("watcher", scope="ratings:read", ttl=900)) as mcp,
    ):
        refused = await mcp.call_tool("submit_rating", {"game_id": "ro", "score": 5})
        assert refused.is_error
        text = refused.content[0].text  # type: ignore[union-attr]
        assert "403" in text and "ratings:read" in text
        assert structured(await mcp.call_tool("game_summary", {"game_id": "ro"}))["count"] == 0


async def test_http_refuses_missing_forged_expired_and_revoked_tokens(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    revoked = server.token("gone", ttl=900)
    async with mcp_over_http(server) as url, httpx.AsyncClient(timeout=10) as http:
        metadata_url = url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp")
        missing = await http.post(url, json=INITIALIZE, headers=MCP_HEADERS)
        assert missing.status_code == 401
        # No credentials, no error code (RFC 6750 3.1): only where to learn how to get one.
        assert missing.headers["www-authenticate"] == f'Bearer resource_metadata="{metadata_url}"'
        forged = jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, "not-the-key" * 4)
        for token in (forged, server.token("late", ttl=-5)):
            answer = await http.post(
                url, json=INITIALIZE, headers={**MCP_HEADERS, "Authorization": f"Bearer {token}"}
            )
            assert answer.status_code == 401
            assert 'error="invalid_token"' in answer.headers["www-authenticate"]
        good = {**MCP_HEADERS, "Authorization": f"Bearer {revoked}"}
        assert (await http.post(url, json=INITIALIZE, headers=good)).status_code == 200
        async with httpx.AsyncClient(base_url=server.base_url) as rest:
            admin = {"Authorization": f"Bearer {server.token('root', scope='ratings:admin')}"}
            assert (
                await rest.post("/admin/revocations", json={"sub": "gone"}, headers=admin)
            ).status_code == 201
        await asyncio.sleep(1.2)  # the MCP server trusts a check for a second
        assert (await http.post(url, json=INITIALIZE, headers=good)).status_code == 401
        # A token that expires mid-session is refused at its next request.
        short = {**MCP_HEADERS, "Authorization": f"Bearer {server.token('brief', ttl=2)}"}
        assert (await http.post(url, json=INITIALIZE, headers=short)).status_code == 200
        await asyncio.sleep(2 + 5 + 1.2)  # its lifetime, jwt.leeway_seconds, the check's second
        assert (await http.post(url, json=INITIALIZE, headers=short)).status_code == 401
        # RFC 9728: where agents learn what this resource is and who issues its tokens.
        for path in (metadata_url, url.replace("/mcp", "/.well-known/oauth-protected-resource")):
            described = (await http.get(path)).json()
            assert described["resource"] == url
            assert described["authorization_servers"] == [server.base_url + "/"]


async def test_http_refuses_a_foreign_host_and_names_configured_authorization_servers(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    env = {"RATEWIRE_MCP__AUTHORIZATION_SERVERS": '["https://login.example.com/"]'}
    async with mcp_over_http(server, env=env) as url, httpx.AsyncClient(timeout=10) as http:
        token = {"Authorization": f"Bearer {server.token('agent', ttl=900)}"}
        foreign = await http.post(
            url, json=INITIALIZE, headers={**MCP_HEADERS, **token, "Host": "evil.example:80"}
        )
        assert foreign.status_code in (400, 421), "DNS rebinding: a foreign Host is refused"
        metadata = (
            await http.get(url.replace("/mcp", "/.well-known/oauth-protected-resource"))
        ).json()
        assert metadata["authorization_servers"] == ["https://login.example.com/"]
    # A proxy's public name is allowed by configuration.
    proxied = {"RATEWIRE_MCP__ALLOWED_HOSTS": '["mcp.example.com"]'}
    async with mcp_over_http(server, env=proxied) as url, httpx.AsyncClient(timeout=10) as http:
        token = {"Authorization": f"Bearer {server.token('agent', ttl=900)}"}
        named = {**MCP_HEADERS, **token, "Host": "mcp.example.com"}
        assert (await http.post(url, json=INITIALIZE, headers=named)).status_code == 200


def test_http_beyond_loopback_without_tls_refuses_to_start(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    done = subprocess.run(
        [sys.executable, "-m", "ratewire", "mcp", "--rest-url", server.base_url,
         "--token", server.token("a", ttl=900), "--http", str(free_port()), "--host", "0.0.0.0"],
        env={**os.environ, "RATEWIRE_JWT__SECRET": SECRET},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "in the clear" in lines[0] and "tls_terminated_by_proxy" in lines[0]
