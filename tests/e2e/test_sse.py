"""Server-Sent Events (``GET /stream``) on real server processes: a plain HTTP client and a
browser's ``EventSource`` (Debian's chromium) both follow topics, and resume with
``Last-Event-ID`` across a SIGKILL with every offset once and in order; gaps, revocation,
refusals, caps, heartbeats and the slow-consumer rule."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Callable

import httpx
import pytest
from playwright.async_api import Browser, async_playwright
from tests.support.debian import ensure_tool
from tests.support.server import ServerProcess
from tests.support.sse import SseEvent, SseStream

from ratewire.realtime.sse import encode_event_id

pytestmark = pytest.mark.e2e
ServerFactory = Callable[..., ServerProcess]


async def rate(server: ServerProcess, game: str, user: str, comment: str | None = None) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        answer = await http.put(
            f"/games/{game}/ratings/{user}",
            json={"score": 3, "comment": comment},
            headers={"Authorization": f"Bearer {server.token(user)}"},
        )
        assert answer.status_code in (200, 201), answer.text


def offsets(events: list[SseEvent], topic: str) -> list[int]:
    return [e.data["offset"] for e in events if e.data["topic"] == topic]


async def test_a_stream_carries_the_websocket_update_with_its_epoch_and_a_cursor(
    server_factory: ServerFactory,
) -> None:
    server = server_factory()
    stream = await SseStream.open(
        server.base_url, ["rating.game.sse1", "rating.global"], server.token("reader")
    )
    try:
        assert stream.response.status_code == 200
        headers = stream.response.headers
        assert headers["content-type"].startswith("text/event-stream")
        assert headers["cache-control"] == "no-cache"
        assert headers["x-accel-buffering"] == "no"
        subscribed = await stream.events("subscribed", 2)
        assert {e.data["topic"] for e in subscribed} == {"rating.game.sse1", "rating.global"}
        assert stream.retry is not None and stream.retry > 0
        await rate(server, "sse1", "u1", "good")
        updates = await stream.events("rating_update", 2)
        by_topic = {e.data["topic"]: e.data for e in updates}
        game = by_topic["rating.game.sse1"]
        assert (game["offset"], game["event"], game["data"]["userId"]) == (1, "created", "u1")
        assert game["epoch"] == subscribed[0].data["epoch"]
        assert game["data"]["comment"] == "good"
        assert all(e.id for e in updates) and updates[0].id != updates[1].id
    finally:
        await stream.close()


async def test_sigkill_and_restart_a_raw_client_and_an_event_source_resume_exactly_once(
    server_factory: ServerFactory,
) -> None:
    server = server_factory()
    chromium = ensure_tool("chromium", "chromium")
    topics = ["rating.game.sse2", "rating.global"]
    raw = await SseStream.open(server.base_url, topics, server.token("raw"))
    seen: list[SseEvent] = []
    async with async_playwright() as playwright:
        browser: Browser = await playwright.chromium.launch(
            executable_path=chromium, args=["--no-sandbox"]
        )
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.goto(f"{server.base_url}/healthz")  # same origin as /stream
        await page.evaluate(
            """token => {
                window.got = [];
                const source = new EventSource(
                    `/stream?topic=rating.game.sse2&topic=rating.global&token=${token}`);
                source.addEventListener("rating_update", (e) => {
                    const update = JSON.parse(e.data);
                    window.got.push([update.topic, update.offset, update.data.userId]);
                });
                window.source = source;
            }""",
            server.token("browser", ttl=600),
        )
        await page.wait_for_function("window.source.readyState === 1", timeout=15_000)
        seen += await raw.events("subscribed", 2)
        await asyncio.sleep(0.3)
        for index in range(3):
            await rate(server, "sse2", f"a{index}")
        seen += await raw.events("rating_update", 6)
        await page.wait_for_function("window.got.length >= 6", timeout=15_000)

        server.kill()
        await raw.close()
        server.start()
        for index in range(3):  # written while both are away
            await rate(server, "sse2", f"b{index}")
        assert raw.last_event_id is not None
        raw = await SseStream.open(
            server.base_url, topics, server.token("raw"), last_event_id=raw.last_event_id
        )
        seen += await raw.events("rating_update", 6)
        await rate(server, "sse2", "c0")  # and one live after the resume
        seen += await raw.events("rating_update", 2)
        await page.wait_for_function("window.got.length >= 14", timeout=20_000)
        await asyncio.sleep(0.3)  # a duplicate would arrive now
        got = await page.evaluate("window.got")
        await page.evaluate("window.source.close()")
        await browser.close()
        assert errors == []
    await raw.close()
    users = [f"a{i}" for i in range(3)] + [f"b{i}" for i in range(3)] + ["c0"]
    updates = [e for e in seen if e.event == "rating_update"]
    for topic in topics:
        assert offsets(updates, topic) == list(range(1, 8))
        assert [u[2] for u in got if u[0] == topic] == users
        assert [u[1] for u in got if u[0] == topic] == list(range(1, 8))
    assert len(got) == 14


async def test_history_that_no_longer_reaches_the_cursor_is_one_gap_event_then_live(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(
        env={
            "RATEWIRE_HISTORY__MAX_EVENTS_PER_TOPIC": "3",
            "RATEWIRE_HISTORY__PRUNE_INTERVAL_SECONDS": "0.2",
        }
    )
    first = await SseStream.open(server.base_url, ["rating.game.sse3"], server.token("r"))
    subscribed = (await first.events("subscribed", 1))[0]
    await first.close()
    epoch = subscribed.data["epoch"]
    for index in range(8):  # one user changing one rating: every event on the same 3 topics
        await rate(server, "sse3", "g1", f"take {index}")
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        for _ in range(100):  # until the pruner dropped offset 2
            answer = await http.get(
                "/topics/rating.game.sse3/events?since=1",
                headers={"Authorization": f"Bearer {server.token('r')}"},
            )
            if answer.status_code == 410:
                break
            await asyncio.sleep(0.1)
        assert answer.status_code == 410
    cursor = encode_event_id(epoch, {"rating.game.sse3": 1}).decode()
    stream = await SseStream.open(
        server.base_url, ["rating.game.sse3"], server.token("r"), last_event_id=cursor
    )
    try:
        gap = await stream.next_event()
        assert gap is not None and gap.event == "gap"
        assert gap.data == {
            "topic": "rating.game.sse3",
            "after": 1,
            "offset": 8,
            "next": 9,
            "epoch": epoch,
        }
        await rate(server, "sse3", "late")
        (live,) = await stream.events("rating_update", 1)
        assert live.data["offset"] == 9
        # A cursor of another epoch (a restored database, say) is a gap too.
        other = encode_event_id("0000000000000000", {"rating.game.sse3": 8}).decode()
        again = await SseStream.open(
            server.base_url, ["rating.game.sse3"], server.token("r"), last_event_id=other
        )
        gap = await again.next_event()
        assert gap is not None and gap.event == "gap" and gap.data["next"] == 10
        await again.close()
    finally:
        await stream.close()


async def test_a_revoked_token_ends_the_stream_within_a_second_naming_the_reason(
    server_factory: ServerFactory,
) -> None:
    server = server_factory()
    stream = await SseStream.open(server.base_url, ["rating.global"], server.token("victim"))
    await stream.events("subscribed", 1)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        answer = await http.post(
            "/admin/revocations",
            json={"sub": "victim"},
            headers={"Authorization": f"Bearer {server.token('root', scope='ratings:admin')}"},
        )
        assert answer.status_code in (200, 201), answer.text
    started = time.monotonic()
    ending = await stream.next_event(within=1)
    assert ending is not None and ending.event == "error"
    assert ending.data == {"code": 4001, "reason": "Token revoked"}
    assert await stream.next_event(within=1) is None  # the response ended
    assert time.monotonic() - started < 1
    await stream.close()


async def test_a_token_expiring_mid_stream_ends_it_with_the_reason(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(env={"RATEWIRE_JWT__LEEWAY_SECONDS": "0"})
    stream = await SseStream.open(server.base_url, ["rating.global"], server.token("s", ttl=2))
    ending = await stream.events("error", 1, within=10)
    assert ending[0].data == {"code": 4002, "reason": "Token expired"}
    await stream.close()


async def test_bad_requests_are_refused_before_the_stream_with_problem_json(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(env={"RATEWIRE_LIMITS__WS_CONNECTIONS_PER_USER": "1"})
    token = server.token("7")
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        cases = [
            ("/stream?topic=rating.global", {}, 401, "token"),
            (f"/stream?topic=rating.global&token={server.token('7', ttl=-30)}", {}, 401, ""),
            (f"/stream?token={token}", {}, 400, "topic"),
            (f"/stream?topic=rating.nope&token={token}", {}, 400, "rating.nope"),
            (f"/stream?topic=rating.user.8&token={token}", {}, 403, "rating.user.8"),
            (
                f"/stream?topic=rating.global&token={token}",
                {"Last-Event-ID": "not-a-cursor"},
                400,
                "Last-Event-ID",
            ),
        ]
        for path, headers, status, named in cases:
            answer = await http.get(path, headers=headers)
            assert answer.status_code == status, (path, answer.text)
            assert answer.headers["content-type"] == "application/problem+json"
            assert named in answer.json()["detail"]
        # The per-user connection cap counts streams as it counts WebSockets.
        held = await SseStream.open(server.base_url, ["rating.global"], token)
        await held.events("subscribed", 1)
        refused = await http.get(f"/stream?topic=rating.global&token={token}")
        assert refused.status_code == 429 and "retry-after" in refused.headers
        await held.close()


async def test_an_idle_stream_gets_heartbeat_comments(server_factory: ServerFactory) -> None:
    server = server_factory(env={"RATEWIRE_LIMITS__SSE_HEARTBEAT_SECONDS": "0.2"})
    stream = await SseStream.open(server.base_url, ["rating.global"], server.token("idle"))
    await stream.events("subscribed", 1)
    with pytest.raises(TimeoutError):
        await stream.next_event(within=1)
    assert stream.comments >= 3
    await stream.close()


async def test_a_reader_too_slow_for_its_stream_is_cut_and_resumes_with_nothing_lost(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(env={"RATEWIRE_LIMITS__SEND_BUFFER_BYTES": "16384"})
    token = server.token("slow")
    topics = ["rating.game.sse5", "rating.global"]
    first = await SseStream.open(server.base_url, topics, token)
    cursor = (await first.events("subscribed", 2))[1].id
    await first.close()
    # A reader that does not read: a small receive window, and the request sent by hand.
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader.connect(("127.0.0.1", server.http_port))
    reader.sendall(
        f"GET /stream?topic={topics[0]}&topic={topics[1]} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {token}\r\nLast-Event-ID: {cursor}\r\n\r\n".encode()
    )
    await asyncio.sleep(0.5)
    # More than the kernel buffers between them hold (up to 4 MiB on Linux), in 2 KiB events.
    writes = 1200
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:

        async def writer(first_user: int) -> None:
            for index in range(first_user, writes, 8):
                answer = await http.put(
                    f"/games/sse5/ratings/u{index}",
                    json={"score": 3, "comment": "x" * 1990},
                    headers={"Authorization": f"Bearer {server.token(f'u{index}')}"},
                )
                assert answer.status_code == 201

        await asyncio.gather(*(writer(n) for n in range(8)))
        metrics = (await http.get("/metrics")).text
    assert 'ratewire_websocket_closed_total{code="4009"}' in metrics
    received = b""
    reader.settimeout(10)
    while chunk := reader.recv(1 << 20):
        received += chunk
    reader.close()  # the server cut the connection
    assert "without completing response" not in server.log_text()
    last_id = received.rsplit(b"\nid: ", 1)[1].split(b"\n", 1)[0].decode()
    updates = re.findall(rb'"rating_update","epoch":"[0-9a-f]+","topic":"([^"]+)"', received)
    had = {topic: updates.count(topic.encode()) for topic in topics}
    assert sum(had.values()) < 2 * writes
    resumed = await SseStream.open(server.base_url, topics, token, last_event_id=last_id)
    rest = await resumed.events("rating_update", 2 * writes - sum(had.values()), within=60)
    for topic in topics:
        assert offsets(rest, topic) == list(range(had[topic] + 1, writes + 1))
    await resumed.close()
