"""Hostile input, second round: each finding of a probe of a real server (SQLite default,
default limits), answered as a client error, never a broken stream, a silenced audit log, a
500 or unbounded memory. One test per finding, on real server processes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest
from tests.e2e.wsclient import WsClient
from tests.support.server import SECRET, ServerProcess

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(module_server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return module_server_factory(
        env={
            # The SSRF check is what is tested: private addresses stay refused (the default).
            "RATEWIRE_WEBHOOKS__ALLOW_INSECURE_HTTP": "false",
        }
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def forged(claims: dict[str, Any]) -> str:
    """A token whose payload says ``claims``, signed with a key the server does not have."""
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
    # json, not orjson: json writes a lone surrogate as \\udfff, as an attacker would.
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
    return f"{header.decode()}.{payload.decode()}.{'A' * 43}"


# -- a raw WebSocket client, for frames a library refuses to send ------------------------------


def ws_connect(server: ServerProcess, endpoint: str, token: str, **options: int) -> socket.socket:
    """A socket past the upgrade to ``endpoint`` (module_port or main_port_ws)."""
    port = server.ws_port if endpoint == "module_port" else server.http_port
    path = "/" if endpoint == "module_port" else "/ws"
    sock = socket.socket()
    for option, value in options.items():
        sock.setsockopt(socket.SOL_SOCKET, getattr(socket, option), value)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path}?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(1)
    assert answer.startswith(b"HTTP/1.1 101"), answer
    return sock


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0) -> bytes:
    """One masked client frame (the zero mask leaves the payload as it is)."""
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    if len(payload) < 126:
        head = struct.pack("!BB", first, 0x80 | len(payload))
    else:
        head = struct.pack("!BBH", first, 0x80 | 126, len(payload))
    return head + b"\0\0\0\0" + payload


def read_frames(sock: socket.socket, within: float = 5) -> Iterator[tuple[int, bytes]]:
    """(opcode, payload) of each server frame until the server closes or ``within`` passes."""
    buffer = b""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        while len(buffer) >= 2:
            size, start = buffer[1] & 0x7F, 2
            if size == 126:
                if len(buffer) < 4:
                    break
                size, start = struct.unpack("!H", buffer[2:4])[0], 4
            elif size == 127:
                if len(buffer) < 10:
                    break
                size, start = struct.unpack("!Q", buffer[2:10])[0], 10
            if len(buffer) < start + size:
                break
            yield buffer[0] & 0x0F, buffer[start : start + size]
            buffer = buffer[start + size :]
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            return
        if not data:
            return
        buffer += data


def close_code(sock: socket.socket) -> int | None:
    for opcode, payload in read_frames(sock):
        if opcode == 0x8:
            return int(struct.unpack("!H", payload[:2])[0]) if payload else None
    return None


# -- 1. identifiers ending in a newline ---------------------------------------------------------


def test_identifiers_with_a_trailing_newline_are_refused_everywhere(server: ServerProcess) -> None:
    token = server.token("7")
    admin = server.token("ops", scope="ratings:admin")
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        put = http.put("/games/nl1%0A/ratings/7", json={"score": 5}, headers=bearer(token))
        post = http.post("/ratings", json={"gameId": "42\n", "score": 5}, headers=bearer(token))
        summary = http.get("/games/nl1%0A/summary")
        history = http.get("/topics/rating.game.nl1%0A/events", headers=bearer(token))
        hook = http.post(
            "/admin/webhooks",
            json={"url": "https://example.com/hook", "topics": ["rating.game.a\n"]},
            headers=bearer(admin),
        )
    assert (put.status_code, post.status_code, summary.status_code) == (422, 422, 422)
    assert "gameId" in post.json()["detail"]
    assert history.status_code in (400, 404, 422)
    assert hook.status_code == 422

    async def subscribe() -> dict[str, Any]:
        async with await WsClient.open(server.ws_url, token) as client:
            await client.recv_type("connection_success")
            await client.send(action="subscribe", topic="rating.game.a\n")
            return await client.recv_type("error")

    assert asyncio.run(subscribe())["code"] == "unknown_topic"
    minted = subprocess.run(
        [sys.executable, "-m", "ratewire", "token", "7\n"],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (minted.returncode, minted.stdout) == (2, "")
    assert "user id" in minted.stderr


# -- 2. the audit log's writer and a refused token's claims -------------------------------------


def test_a_refused_token_with_a_lone_surrogate_does_not_stop_the_audit_log(
    server: ServerProcess,
) -> None:
    admin = server.token("auditor", scope="ratings:admin")
    hostile = forged({"sub": "\udfff-attacker", "jti": "\ud800", "exp": 1})
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        refused = http.put("/games/g/ratings/x", json={"score": 1}, headers=bearer(hostile))
        assert refused.status_code == 401

        async def connect_after() -> None:
            async with await WsClient.open(server.module_ws_url, hostile) as rejected:
                assert (await rejected.closed_with())[0] == 4001
            async with await WsClient.open(server.module_ws_url, server.token("later")) as ok:
                await ok.recv_type("connection_success")

        asyncio.run(connect_after())

        def entries(action: str) -> list[dict[str, Any]]:
            page = http.get("/audit", params={"action": action}, headers=bearer(admin))
            return page.json()["items"]  # type: ignore[no-any-return]

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            connects = [e for e in entries("ws.connect") if e["actor"] == "later"]
            if connects:
                break
            time.sleep(0.2)
        assert connects, "entries after the hostile token never reached the audit log"
        hostile_entries = [
            e for e in entries("auth.refused") if "attacker" in (e["detail"].get("sub") or "")
        ]
        assert {e["detail"]["channel"] for e in hostile_entries} == {"rest", "websocket"}
        assert hostile_entries[0]["detail"]["sub"] == "\\udfff-attacker"
        ready = http.get("/readyz").json()
    assert ready["checks"]["audit"] == "ok"
    verify = subprocess.run(
        [sys.executable, "-m", "ratewire", "audit", "verify"],
        cwd=server.workdir,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "Traceback" not in server.log_text()


# -- 3. a ping flood on /ws ---------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def cut_as_too_slow(server: ServerProcess) -> float:
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=5).text
    found = re.search(r'^ratewire_websocket_closed_total\{code="4009"\} (\S+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize("endpoint", ["main_port_ws", "module_port"])
def test_a_client_that_pings_and_never_reads_is_cut_with_bounded_memory(
    server: ServerProcess, endpoint: str
) -> None:
    before, cut_before = rss_bytes(server.pid), cut_as_too_slow(server)
    sock = ws_connect(server, endpoint, server.token("pinger"), SO_RCVBUF=4096)
    burst = client_frame(0x9, b"p" * 125) * 2000  # 262 KB of pings
    sent = 0
    with contextlib.suppress(BrokenPipeError, ConnectionResetError, TimeoutError):
        while sent < 96 * 1024 * 1024:
            sock.sendall(burst)
            sent += len(burst)
    grown = rss_bytes(server.pid) - before
    # Its pongs count against the send budget: past it, the client is cut as too slow (4009),
    # and the socket goes once the close handshake's grace has passed.
    deadline = time.monotonic() + 15
    while cut_as_too_slow(server) == cut_before and time.monotonic() < deadline:
        time.sleep(0.2)
    sock.close()
    assert grown < 48 * 1024 * 1024, f"the server grew {grown >> 20} MiB"
    assert cut_as_too_slow(server) == cut_before + 1
    assert server.process is not None and server.process.poll() is None


# -- 4. ids the reply cannot carry --------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["main_port_ws", "module_port"])
def test_ids_too_deep_or_too_large_are_bad_requests_and_the_connection_stays(
    server: ServerProcess, endpoint: str
) -> None:
    url = server.module_ws_url if endpoint == "module_port" else server.ws_url

    async def probe() -> list[str]:
        codes = []
        # Before auth (the id of the auth frame), then after it.
        async with await WsClient.open(url) as client:
            await client.send_raw(
                '{"action":"auth","token":"x","id":' + "[" * 2000 + "]" * 2000 + "}"
            )
            codes.append((await client.recv_type("error"))["code"])
            await client.send(action="auth", token=server.token("ids"))
            await client.recv_type("connection_success")
            await client.send_raw('{"action":"ping","id":' + str(2**70) + "}")
            codes.append((await client.recv_type("error"))["code"])
            await client.send_raw(
                '{"action":"subscribe","topic":"rating.global","since":' + "9" * 30 + "}"
            )
            codes.append((await client.recv_type("error"))["code"])
            await client.send(action="ping", id="still-here")
            pong = await client.recv_type("pong")
            assert pong["id"] == "still-here"
        return codes

    assert asyncio.run(probe()) == ["bad_request"] * 3
    assert "Traceback" not in server.log_text()


# -- 5. If-Match values int() refuses -----------------------------------------------------------


def test_if_match_values_that_are_not_versions_are_400(server: ServerProcess) -> None:
    token = server.token("matcher")
    with httpx.Client(base_url=server.base_url, headers=bearer(token), timeout=10) as http:
        created = http.put("/games/ifmatch/ratings/matcher", json={"score": 3})
        rating_id = created.json()["id"]
        answers = [
            http.put(
                "/games/ifmatch/ratings/matcher",
                json={"score": 4},
                headers={"If-Match": '"²"'.encode("latin-1")},
            ).status_code,
            http.patch(
                f"/ratings/{rating_id}",
                json={"score": 4},
                headers={"If-Match": '"' + "9" * 5000 + '"'},
            ).status_code,
            http.delete(f"/ratings/{rating_id}", headers={"If-Match": "9" * 19}).status_code,
        ]
        assert http.get(f"/ratings/{rating_id}").json()["score"] == 3
    assert answers == [400, 400, 400]


# -- 6. a signed token whose exp is a string ----------------------------------------------------


def test_a_signed_token_with_an_exp_string_is_refused_like_any_bad_token(
    server: ServerProcess,
) -> None:
    token = jwt.encode({"sub": "strexp", "exp": str(int(time.time()) + 300)}, SECRET, "HS256")
    huge = jwt.encode({"sub": "hugeexp", "exp": 10**400}, SECRET, "HS256")
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        rest = http.put("/games/g/ratings/strexp", json={"score": 1}, headers=bearer(token))
        rest_huge = http.put("/games/g/ratings/hugeexp", json={"score": 1}, headers=bearer(huge))
        stream = http.get("/stream", params={"topic": "rating.global", "token": token})
    assert (rest.status_code, rest_huge.status_code, stream.status_code) == (401, 401, 401)
    assert "exp" in rest.json()["detail"]

    async def websocket() -> list[int | None]:
        codes = []
        for url in (server.ws_url, server.module_ws_url):
            async with await WsClient.open(url, token) as upgraded:
                codes.append((await upgraded.closed_with())[0])
            async with await WsClient.open(url) as framed:
                await framed.send(action="auth", token=token)
                codes.append((await framed.closed_with())[0])
        return codes

    assert asyncio.run(websocket()) == [4001] * 4


# -- 7. a read-only database ---------------------------------------------------------------------


def test_a_read_only_sqlite_file_is_refused_at_start(
    server_factory: Callable[..., ServerProcess],
) -> None:
    if shutil.which("chattr") is None:
        pytest.skip("chattr (e2fsprogs) is not installed")
    server = server_factory()
    server.terminate()
    database = server.workdir / "ratewire.db"
    made_immutable = subprocess.run(["chattr", "+i", str(database)], capture_output=True)
    if made_immutable.returncode != 0:
        pytest.skip(f"cannot make a file immutable here: {made_immutable.stderr.decode()}")
    try:
        started = subprocess.run(
            [sys.executable, "-m", "ratewire", "serve"],
            cwd=server.workdir,
            env=server.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        subprocess.run(["chattr", "-i", str(database)], check=True)
    assert started.returncode != 0
    last = started.stderr.strip().splitlines()[-1]
    assert last.startswith("ratewire: cannot start:") and "readonly database" in last, last
    assert "Traceback" not in started.stderr


# -- 8. webhook addresses that embed loopback or metadata ---------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://[2002:7f00:1::]/hook",  # 6to4 of 127.0.0.1
        "https://[2002:a9fe:a9fe::]/hook",  # 6to4 of 169.254.169.254
        "https://[64:ff9b::7f00:1]/hook",  # NAT64 of 127.0.0.1
        "https://[::ffff:169.254.169.254]/hook",
    ],
)
def test_webhook_urls_embedding_private_ipv4_are_refused(server: ServerProcess, url: str) -> None:
    admin = server.token("ops", scope="ratings:admin")
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        answer = http.post(
            "/admin/webhooks", json={"url": url, "topics": ["rating.global"]}, headers=bearer(admin)
        )
    assert answer.status_code == 422
    assert "embedded" in answer.json()["detail"] or "metadata" in answer.json()["detail"]


# -- 9. a forged SSE cursor; the module port's frame parser -------------------------------------


def cursor(epoch: str, offset: str) -> str:
    text = f"1|{epoch}|rating.global={offset}"
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


def test_a_forged_last_event_id_is_a_400_not_an_endless_retry(server: ServerProcess) -> None:
    token = server.token("sse-forger")
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        http.put("/games/sse-forge/ratings/sse-forger", json={"score": 2}, headers=bearer(token))
        epoch = http.get(
            "/topics/rating.global/events", params={"limit": 1}, headers=bearer(token)
        ).json()["epoch"]
        answers = []
        for offset in ("1000000", "9" * 25, "٣"):
            with http.stream(
                "GET",
                "/stream",
                params={"topic": "rating.global"},
                headers={**bearer(token), "Last-Event-ID": cursor(epoch, offset)},
            ) as answer:
                answers.append((answer.status_code, answer.headers["content-type"]))
    assert answers == [(400, "application/problem+json")] * 3


@pytest.mark.parametrize("endpoint", ["module_port", "main_port_ws"])
@pytest.mark.parametrize(
    "frames",
    [
        pytest.param([client_frame(0x1, b'{"action":"ping"}', rsv=4)], id="rsv1-set"),
        pytest.param([client_frame(0x0, b'{"action":"ping"}')], id="stray-continuation"),
        pytest.param(
            [client_frame(0x1, b'{"action":', fin=False), client_frame(0x1, b'"ping"}')],
            id="text-inside-fragmented",
        ),
    ],
)
def test_frames_that_break_rfc6455_close_with_1002_on_both_ports(
    server: ServerProcess, endpoint: str, frames: list[bytes]
) -> None:
    sock = ws_connect(server, endpoint, server.token("framer"))
    with contextlib.closing(sock):
        first = next(read_frames(sock))
        assert orjson.loads(first[1])["type"] == "connection_success"
        sock.sendall(b"".join(frames))
        assert close_code(sock) == 1002
