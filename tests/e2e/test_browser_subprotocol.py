"""The ``ratewire.v1`` WebSocket subprotocol in a real browser (Debian's chromium, as the
dashboard tests drive it), on both endpoints: a page that offers it gets it back and streams;
one that offers none works as the guide's clients always did; the token may travel in the
list (``token.<JWT>``: browsers cannot set headers), is verified like ``?token=``, and is
never echoed nor logged; a page offering only an unknown subprotocol is accepted without one
by the server, so the browser itself fails it (RFC 6455 4.1)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page
from tests.e2e.test_dashboard import WAIT_MS, browser, chromium  # noqa: F401 (fixtures)
from tests.support.server import ServerProcess

pytestmark = pytest.mark.e2e

#: Opens a WebSocket, optionally subscribes, and reports what the page saw: the selected
#: subprotocol, the frames, whether an error event came, and the close code.
OPEN_SOCKET = """
([url, protocols, topic, frames]) => new Promise((resolve) => {
  const ws = protocols === null ? new WebSocket(url) : new WebSocket(url, protocols);
  const seen = { protocol: null, frames: [], error: false, code: null };
  window.seen = seen;
  ws.onopen = () => { seen.protocol = ws.protocol; };
  ws.onerror = () => { seen.error = true; };
  ws.onmessage = (message) => {
    const frame = JSON.parse(message.data);
    seen.frames.push(frame);
    if (frame.type === "connection_success" && topic) {
      ws.send(JSON.stringify({ action: "subscribe", topic }));
    }
    if (seen.frames.length >= frames) ws.close(1000);
  };
  ws.onclose = (closed) => { seen.code = closed.code; resolve(seen); };
})
"""
#: The same, left running (the page keeps streaming into ``window.seen``).
START_SOCKET = "(args) => { (" + OPEN_SOCKET.strip() + ")(args); }"


async def open_socket(
    page: Page, url: str, protocols: list[str] | None, *, topic: str = "", frames: int = 1
) -> dict[str, Any]:
    seen: dict[str, Any] = await page.evaluate(OPEN_SOCKET, [url, protocols, topic, frames])
    return seen


def endpoints(server: ServerProcess) -> list[str]:
    return [server.module_ws_url, server.ws_url]


async def test_a_browser_gets_ratewire_v1_back_on_both_endpoints_and_none_still_works(
    browser: Browser,  # noqa: F811
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    page = await browser.new_page()
    await page.goto(f"{server.base_url}/healthz")
    token = server.token("browser")
    for url in endpoints(server):
        for offered, selected in (
            (None, ""),
            (["ratewire.v1"], "ratewire.v1"),
            (["chat.v1", "ratewire.v1"], "ratewire.v1"),
        ):
            seen = await open_socket(page, f"{url}?token={token}", offered)
            assert seen["protocol"] == selected, (url, offered, seen)
            assert seen["error"] is False, (url, offered, seen)
            assert seen["frames"][0]["type"] == "connection_success"
            assert seen["frames"][0]["userId"] == "browser"
            assert seen["code"] == 1000
        # Only an unknown subprotocol: the server accepts without selecting one (clients
        # that tolerate that keep working); a browser must then fail the connection itself.
        seen = await open_socket(page, f"{url}?token={token}", ["chat.v1"])
        assert seen["error"] is True and seen["code"] == 1006 and seen["frames"] == []


async def test_a_browser_sends_its_token_in_the_subprotocol_list_and_streams(
    browser: Browser,  # noqa: F811
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    page = await browser.new_page()
    await page.goto(f"{server.base_url}/healthz")
    token = server.token("listed")
    for number, url in enumerate(endpoints(server)):
        game = f"sub{number}"
        offered = ["ratewire.v1", f"token.{token}"]
        await page.evaluate(START_SOCKET, [url, offered, f"rating.game.{game}", 3])
        await page.wait_for_function("() => window.seen.frames.length >= 2", timeout=WAIT_MS)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
            answer = await http.put(
                f"/games/{game}/ratings/writer",
                json={"score": 4},
                headers={"Authorization": f"Bearer {server.token('writer')}"},
            )
            assert answer.status_code == 201, answer.text
        await page.wait_for_function("() => window.seen.code !== null", timeout=WAIT_MS)
        seen = await page.evaluate("() => window.seen")
        assert seen["protocol"] == "ratewire.v1"  # the token entry is never echoed
        types = [frame["type"] for frame in seen["frames"]]
        assert types == ["connection_success", "subscribed", "rating_update"], seen
        assert seen["frames"][0]["userId"] == "listed"
        # Verified like ?token=: a bad or expired token in the list closes with 4001/4002.
        refused = await open_socket(page, url, ["ratewire.v1", "token.not.a-jwt"])
        assert refused["protocol"] == "ratewire.v1" and refused["code"] == 4001
        expired = server.token("listed", ttl=-60)
        refused = await open_socket(page, url, ["ratewire.v1", f"token.{expired}"])
        assert refused["code"] == 4001, refused
    server.stop()
    assert token not in server.log_text()
    assert token.split(".")[2] not in server.log_text()
