"""The Python client and the CLI against a real server: resume across a SIGKILL restart."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import orjson
import pytest
from tests.support.server import SECRET, ServerProcess

from ratewire.client import StreamClosed, rating_updates

pytestmark = pytest.mark.e2e


async def post(server: ServerProcess, user: str) -> None:
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        response = await http.post(
            "/ratings",
            json={"gameId": "client1", "userId": user, "score": 3},
            headers={"Authorization": f"Bearer {server.token(user)}"},
        )
        assert response.status_code == 201


async def test_rating_updates_resumes_across_a_kill(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    seen: list[dict[str, Any]] = []
    two_seen = asyncio.Event()
    stream = rating_updates(
        server.module_ws_url, server.token("reader"), "rating.game.client1", since=0
    )

    async def follow() -> None:
        async for frame in stream:
            seen.append(frame)
            if len(seen) == 2:
                two_seen.set()
            if len(seen) == 4:
                return

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.5)
    await post(server, "a")
    await post(server, "b")
    await asyncio.wait_for(two_seen.wait(), 10)
    server.kill()
    server.start()
    await post(server, "c")  # written while the client is reconnecting
    await post(server, "d")
    await asyncio.wait_for(follower, 20)
    assert [f["offset"] for f in seen] == [1, 2, 3, 4]
    assert [f["data"]["userId"] for f in seen] == ["a", "b", "c", "d"]


async def test_bad_token_ends_the_stream(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory()
    with pytest.raises(StreamClosed, match="authentication failed"):
        async for _ in rating_updates(server.module_ws_url, "bad", "rating.global"):
            pass


def test_token_command_signs_with_the_configured_key() -> None:
    env = {**os.environ, "RATEWIRE_JWT__SECRET": SECRET}
    printed = subprocess.run(
        [
            sys.executable,
            "-m",
            "ratewire",
            "token",
            "alice",
            "--scope",
            "ratings:admin",
            "--ttl",
            "120",
        ],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.strip()
    claims = jwt.decode(printed, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["scope"] == "ratings:admin"
    assert 115 <= claims["exp"] - claims["iat"] <= 120 and claims["jti"]


async def test_a_token_provider_keeps_the_stream_past_each_tokens_expiry(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(env={"RATEWIRE_JWT__LEEWAY_SECONDS": "0"})
    issued: list[str] = []

    def short_lived_token() -> str:
        # exp is whole seconds: a 2 s token lives 1 to 2 s, never too briefly to subscribe.
        issued.append(server.token("reader", ttl=2))
        return issued[-1]

    seen: list[dict[str, Any]] = []
    stream = rating_updates(server.module_ws_url, short_lived_token, "rating.game.client1", since=0)

    async def follow() -> None:
        async for frame in stream:
            seen.append(frame)
            if len(seen) == 3:
                return

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.5)
    await post(server, "a")
    await asyncio.sleep(3)  # the first token expired (4002): a new one, and a resume
    await post(server, "b")
    await post(server, "c")
    await asyncio.wait_for(follower, 10)
    assert [f["offset"] for f in seen] == [1, 2, 3]
    assert len(issued) >= 2


async def test_tail_prints_json_lines_for_pipes_and_resumes_from_since(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    for user in ("a", "b", "c"):
        await post(server, user)
    tail = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ratewire",
        "tail",
        "rating.game.client1",
        "--since",
        "1",
        "--json",
        "--url",
        server.module_ws_url,
        "--token",
        server.token("tailer"),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "RATEWIRE_JWT__SECRET": SECRET},
    )
    assert tail.stdout is not None
    try:
        lines = [orjson.loads(await asyncio.wait_for(tail.stdout.readline(), 10)) for _ in "ab"]
        await post(server, "d")
        lines.append(orjson.loads(await asyncio.wait_for(tail.stdout.readline(), 10)))
    finally:
        tail.terminate()
        await tail.wait()
    assert [(f["type"], f["offset"], f["data"]["userId"]) for f in lines] == [
        ("rating_update", 2, "b"),
        ("rating_update", 3, "c"),
        ("rating_update", 4, "d"),
    ]


def test_tail_lines_in_a_terminal_are_coloured_and_readable() -> None:
    from datetime import UTC, datetime

    from ratewire.cli.tail import _tail_line
    from ratewire.client import Gap, Rating, Update

    now = datetime(2026, 11, 25, tzinfo=UTC)
    update = Update("rating.game.42", 7, "deleted", Rating("r_1", "42", "u", 4, None, now, now, 2))
    plain = _tail_line(update, as_json=False, colour=False)
    assert plain == "rating.game.42 #7 deleted game=42 user=u score=4"
    coloured = _tail_line(update, as_json=False, colour=True)
    assert "\x1b[31m" in coloured and "★★★★" in coloured  # deleted in red, the score as stars
    gap = _tail_line(Gap("rating.game.42", 3, 9), as_json=False, colour=False)
    assert "resuming at #9" in gap
