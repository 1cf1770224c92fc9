"""The dashboard in a real browser (Debian's chromium, driven by Playwright): sign in, see
ratings written through the API arrive in the stream, the game's card and the top table, and
recover with every event written while the page was cut off and the server was killed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect
from tests.support.debian import ensure_tool
from tests.support.server import ServerProcess
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.e2e

WAIT_MS = 20_000


@pytest.fixture(scope="module")
def chromium() -> str:
    return ensure_tool("chromium", "chromium")


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        # --no-sandbox: the suite may run as root, where chromium's sandbox refuses to start.
        launched = await playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        await launched.close()


@pytest.fixture
def proxied(
    server_factory: Callable[..., ServerProcess],
) -> Iterator[tuple[ServerProcess, TcpProxy]]:
    """A server, and a proxy in front of it that the browser goes through (to cut it off)."""
    server = server_factory()
    proxy = TcpProxy("127.0.0.1", server.http_port)
    yield server, proxy
    proxy.close()


async def rate(
    http: httpx.AsyncClient, server: ServerProcess, game: str, user: str, score: int
) -> None:
    answer = await http.put(
        f"/games/{game}/ratings/{user}",
        json={"score": score},
        headers={"Authorization": f"Bearer {server.token(user)}"},
    )
    assert answer.status_code in (200, 201), answer.text


def stream_offsets(page: Page) -> object:
    return page.locator("#stream tbody tr").evaluate_all("rows => rows.map(r => +r.dataset.offset)")


async def test_dashboard_shows_live_ratings_and_recovers_what_it_missed(
    browser: Browser, proxied: tuple[ServerProcess, TcpProxy], tmp_path: Path
) -> None:
    server, proxy = proxied
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    page_errors: list[str] = []
    page.on("pageerror", lambda error: page_errors.append(str(error)))
    viewer = {"Authorization": f"Bearer {server.token('viewer')}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=viewer, timeout=10) as http:
        made = await http.post("/consumers/board/fetch", json={"topic": "rating.global"})
        assert made.status_code == 200, made.text
    await page.goto(f"http://127.0.0.1:{proxy.port}/dashboard?token={server.token('viewer')}")
    status = page.locator("#status")
    await expect(status).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    assert "token" not in page.url  # taken out of the address bar and history
    consumers = page.locator("#consumers tbody tr")
    await expect(consumers).to_have_count(1, timeout=WAIT_MS)  # the token's own, with its lag
    await expect(consumers.first).to_contain_text("board")

    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        for game, user, score in (("dash-a", "u1", 5), ("dash-a", "u2", 5), ("dash-a", "u3", 2)):
            await rate(http, server, game, user, score)
        await rate(http, server, "dash-b", "u4", 4)

        rows = page.locator("#stream tbody tr")
        await expect(rows).to_have_count(4, timeout=WAIT_MS)
        await expect(rows.first).to_contain_text("dash-b")  # newest first
        assert await stream_offsets(page) == [4, 3, 2, 1]
        card = page.locator('article[data-game="dash-a"]')
        await expect(card.locator('[data-field="count"]')).to_have_text("3", timeout=WAIT_MS)
        await expect(card.locator('[data-score="5"] [data-count]')).to_have_text("2")
        await expect(card.locator('[data-score="2"] [data-count]')).to_have_text("1")
        await expect(card.locator('[data-field="mean"]')).to_have_text("4.00")
        top = page.locator("#top tbody tr")
        await expect(top).to_have_count(2, timeout=WAIT_MS)
        await expect(page.locator('#top tbody tr[data-game="dash-a"]')).to_contain_text("3")
        await page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

        # Cut the page off, kill the server outright, write while the page cannot see.
        proxy.cut()
        await expect(status).to_have_attribute("data-state", "reconnecting", timeout=WAIT_MS)
        await expect(status).to_contain_text("reconnecting")
        server.kill()
        server.start()
        await rate(http, server, "dash-a", "u5", 1)
        await rate(http, server, "dash-c", "u6", 3)
        proxy.restore()

        await expect(status).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        await expect(rows).to_have_count(6, timeout=WAIT_MS)
        assert await stream_offsets(page) == [6, 5, 4, 3, 2, 1]  # resumed: none lost, none twice
        await expect(card.locator('[data-field="count"]')).to_have_text("4", timeout=WAIT_MS)
        await expect(card.locator('[data-score="1"] [data-count]')).to_have_text("1")
    assert page_errors == []


async def test_dashboard_is_usable_from_the_keyboard_and_follows_one_game(
    browser: Browser, server_factory: Callable[..., ServerProcess]
) -> None:
    server = server_factory()
    page = await browser.new_page()
    await page.goto(f"{server.base_url}/dashboard")
    csp = (await page.request.get(f"{server.base_url}/dashboard")).headers
    assert "script-src 'sha256-" in csp["content-security-policy"]
    # Signed out: focus is in the labelled token field; typing and Enter signs in.
    token_field = page.get_by_label("Access token (JWT)")
    await expect(token_field).to_be_focused()
    await page.keyboard.type(server.token("viewer"))
    await page.keyboard.press("Enter")
    await expect(page.locator("#status")).to_have_attribute("data-state", "live", timeout=WAIT_MS)

    follow = page.get_by_label("Follow game (empty: all games)")
    await follow.focus()
    await page.keyboard.type("solo")
    await page.keyboard.press("Enter")
    await expect(page.locator("#stream-topic")).to_have_text("(rating.game.solo)")
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        await rate(http, server, "other", "u1", 1)  # not followed
        await rate(http, server, "solo", "u2", 4)
        await rate(http, server, "solo", "u3", 2)
    rows = page.locator("#stream tbody tr")
    await expect(rows).to_have_count(2, timeout=WAIT_MS)
    assert await stream_offsets(page) == [2, 1]  # the game topic's own offsets
    await expect(rows.first).to_contain_text("solo")
    card = page.locator('article[data-game="solo"]')
    await expect(card.locator('[data-field="count"]')).to_have_text("2", timeout=WAIT_MS)

    # A bad token signs the page out with a reason, back at the token field.
    await page.get_by_role("button", name="Sign out").click()
    await token_field.fill("not-a-token")
    await token_field.press("Enter")
    await expect(page.locator("#status")).to_have_attribute(
        "data-state", "signed-out", timeout=WAIT_MS
    )
    await expect(page.locator("#status")).to_contain_text("token refused")
