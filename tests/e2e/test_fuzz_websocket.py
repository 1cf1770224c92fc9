"""Hypothesis-generated WebSocket traffic at a real server, on both endpoints: text, binary,
fragmented and invalid-UTF-8 frames, random JSON and protocol-shaped messages with wrong
types. The server must never crash or answer 5xx, must close a connection only with a code
the protocol names, must not leak connections, and must keep serving everyone else."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.e2e.wsclient import WsClient
from tests.support.server import ServerProcess
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

pytestmark = pytest.mark.e2e

#: Close codes a client may legitimately see here (docs/protocol.md and RFC 6455).
ALLOWED_CLOSE_CODES = {1000, 1002, 1003, 1007, 1009, 4001, 4008}
#: Not UTF-8: bare bytes, a truncated sequence inside a JSON string, an encoded surrogate.
NOT_UTF8 = [b"\xff\xfe", b'{"action":"ping","id":"\xc3"}', b"\xed\xa0\x80"]
ACTIONS = ["auth", "subscribe", "unsubscribe", "refresh", "ping", "bogus", ""]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
protocol_shaped = st.fixed_dictionaries(
    {"action": st.sampled_from(ACTIONS) | json_values},
    optional={
        "topic": st.sampled_from(["rating.global", "rating.game.1", "rating.user.x", "nope"])
        | json_values,
        "since": json_values,
        "epoch": json_values,
        "snapshot": json_values,
        "token": json_values,
        "id": json_values,
    },
)
# (kind, payload): how each frame goes out.
frames = st.one_of(
    st.tuples(st.just("text"), st.text(max_size=200)),
    # json, not orjson: integers beyond 64 bits are valid JSON an attacker may send.
    st.tuples(st.just("json"), json_values.map(json.dumps)),
    st.tuples(st.just("json"), protocol_shaped.map(json.dumps)),
    st.tuples(st.just("binary"), st.binary(max_size=200) | st.sampled_from(NOT_UTF8)),
    st.tuples(st.just("invalid-utf8"), st.sampled_from(NOT_UTF8)),
    st.tuples(st.just("fragmented"), st.lists(st.text(max_size=30), min_size=2, max_size=5)),
    st.tuples(st.just("huge"), st.integers(min_value=65_537, max_value=70_000)),
)


async def send_frame(connection: Any, kind: str, payload: Any) -> None:
    if kind in ("text", "json"):
        await connection.send(payload)
    elif kind == "binary":
        await connection.send(payload, text=False)
    elif kind == "invalid-utf8":
        await connection.send(payload, text=True)
    elif kind == "fragmented":
        await connection.send(iter(payload))
    else:
        await connection.send("x" * payload)


async def one_session(url: str, token: str | None, sequence: list[tuple[str, Any]]) -> None:
    target = f"{url}?token={token}" if token else url
    async with connect(target, open_timeout=5, compression=None, max_size=None) as connection:
        try:
            for kind, payload in sequence:
                await send_frame(connection, kind, payload)
            pong = await connection.ping()
            await asyncio.wait_for(pong, 5)  # still alive: it answers
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd is not None else None
            assert code in ALLOWED_CLOSE_CODES, f"closed with {code} after {sequence!r}"


@pytest.fixture(scope="module")
def fuzzed_server(module_server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return module_server_factory(
        log_level="WARNING",
        # Generated bursts may exceed the message rate: throttling (4008) is a valid answer,
        # but a higher rate lets most examples reach the session logic.
        env={"RATEWIRE_LIMITS__WS_MESSAGES_PER_CLIENT_PER_SECOND": "1000"},
    )


@pytest.mark.parametrize("endpoint", ["module_port", "main_port_ws"])
def test_generated_frames_never_break_the_server(
    fuzzed_server: ServerProcess, endpoint: str
) -> None:
    server = fuzzed_server
    url = server.module_ws_url if endpoint == "module_port" else server.ws_url
    token = server.token("fuzzer")
    game = f"fuzz-{endpoint.replace('_', '-')}"

    @given(
        with_token=st.booleans(),
        sequence=st.lists(frames, min_size=1, max_size=6),
    )
    @settings(
        max_examples=60,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def survives(with_token: bool, sequence: list[tuple[str, Any]]) -> None:
        asyncio.run(one_session(url, token if with_token else None, sequence))

    async def watch_then_check() -> None:
        watcher = await WsClient.open(server.module_ws_url, token)
        assert (await watcher.recv())["type"] == "connection_success"
        await watcher.subscribe(f"rating.game.{game}")
        await asyncio.to_thread(survives)
        # Everyone else is still served: a write reaches the watcher.
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
            written = await http.put(
                f"/games/{game}/ratings/fuzzer",
                json={"score": 2},
                headers={"Authorization": f"Bearer {token}"},
            )
        assert written.status_code in (200, 201)
        assert (await watcher.updates(1))[0]["data"]["gameId"] == game
        # No leaked connection: only the watcher is left once closes have settled (a close
        # handshake the client does not answer takes the server's 5 s; a leak never settles).
        for _ in range(150):
            if server.open_connections() == 1:
                break
            await asyncio.sleep(0.1)
        assert server.open_connections() == 1
        await watcher.close()

    asyncio.run(watch_then_check())
    assert server.process is not None and server.process.poll() is None
    assert "Traceback" not in server.log_text()
