"""ratewire-client, the TypeScript client (clients/js): its ``node --test`` suites, which start
real ratewire processes of their own, and its ES module in a real browser (Debian's chromium,
driven by Playwright) following a topic across a server restart."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, async_playwright
from tests.support.debian import ensure_tool
from tests.support.node import npm_ci, require_node
from tests.support.server import ServerProcess

pytestmark = pytest.mark.e2e

PACKAGE = Path(__file__).resolve().parents[2] / "clients" / "js"
WAIT_MS = 20_000


@pytest.fixture(scope="module")
def built_package() -> Path:
    """The package's dependencies installed and its TypeScript compiled (``dist/``)."""
    npm_ci(PACKAGE, ".package-lock.json")
    _, npm = require_node()
    built = PACKAGE / "dist" / "index.js"
    sources = [*(PACKAGE / "src").glob("*.ts"), PACKAGE / "tsconfig.json"]
    # npm ci builds dist/ (its prepare script): build again only if a source is newer.
    if not built.exists() or max(p.stat().st_mtime for p in sources) > built.stat().st_mtime:
        build = subprocess.run(
            [npm, "run", "build"], cwd=PACKAGE, capture_output=True, text=True, timeout=300
        )
        assert build.returncode == 0, f"tsc failed:\n{build.stdout}{build.stderr}"
    return PACKAGE / "dist"


@pytest.mark.parametrize("suite", ["stream", "rest"])
def test_node_suite(built_package: Path, suite: str) -> None:
    node, _ = require_node()
    run = subprocess.run(
        [node, "--test", "--test-reporter=spec", f"test/{suite}.test.mjs"],
        cwd=PACKAGE,
        env={**os.environ, "RATEWIRE_PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, (
        f"node --test {suite} failed:\n{run.stdout[-8000:]}{run.stderr[-3000:]}"
    )


PAGE = """<!doctype html>
<meta charset="utf-8"><title>ratewire-client</title>
<script type="module">
  import { RatewireClient, Update } from "./dist/index.js";
  const params = new URLSearchParams(location.hash.slice(1));
  const client = new RatewireClient({ url: params.get("ws"), token: params.get("token"),
                                      maxBackoffMs: 500 });
  window.received = [];
  window.client = client;
  (async () => {
    for await (const item of client.subscribe("rating.game.browser", { since: 0 })) {
      if (item instanceof Update) window.received.push([item.offset, item.rating.userId]);
    }
  })().catch((error) => { window.failure = String(error); });
</script>
"""


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    chromium = ensure_tool("chromium", "chromium")
    async with async_playwright() as playwright:
        # --no-sandbox: the suite may run as root, where chromium's sandbox refuses to start.
        launched = await playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        await launched.close()


class PackageHandler(SimpleHTTPRequestHandler):
    """The test page, and the package's files beside it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, directory=str(PACKAGE), **kwargs)

    def do_GET(self) -> None:
        if self.path.startswith("/page.html"):
            body = PAGE.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def web_app() -> Iterator[str]:
    """An ordinary web server on this machine serving the page that uses the package, as an
    application's own site would (its origin is not ratewire's)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), PackageHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def test_browser_follows_a_topic_across_a_restart(
    built_package: Path,
    browser: Browser,
    web_app: str,
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.goto(f"{web_app}/page.html#ws={server.ws_url}&token={server.token('browser')}")
    await page.wait_for_function("window.client !== undefined", timeout=WAIT_MS)
    await page.wait_for_timeout(500)  # subscribed

    async def rate(user: str) -> None:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
            answer = await http.put(
                f"/games/browser/ratings/{user}",
                json={"score": 4},
                headers={"Authorization": f"Bearer {server.token(user)}"},
            )
            assert answer.status_code == 201, answer.text

    await rate("b1")
    await rate("b2")
    await page.wait_for_function("window.received.length >= 2", timeout=WAIT_MS)
    server.kill()
    server.start()
    await rate("b3")  # written while the page reconnects
    await page.wait_for_function("window.received.length >= 3", timeout=WAIT_MS)
    await page.wait_for_timeout(300)  # anything repeated would arrive now
    assert await page.evaluate("window.received") == [[1, "b1"], [2, "b2"], [3, "b3"]]
    assert await page.evaluate("window.client.connections") == 2
    assert await page.evaluate("window.failure") is None
    assert errors == []
    await page.evaluate("window.client.close()")


async def test_node_live_top10_example_keeps_the_servers_ranking(
    built_package: Path, server_factory: Callable[..., ServerProcess]
) -> None:
    examples = PACKAGE.parents[1] / "examples" / "js"
    npm_ci(examples, "ratewire-client")
    node, _ = require_node()
    server = server_factory()
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:

        async def rate(game: str, user: str, score: int) -> None:
            answer = await http.put(
                f"/games/{game}/ratings/{user}",
                json={"score": score},
                headers={"Authorization": f"Bearer {server.token(user)}"},
            )
            assert answer.status_code in (200, 201), answer.text

        await rate("chess", "a", 5)
        agent = await asyncio.create_subprocess_exec(
            node,
            str(examples / "live_top10.mjs"),
            "--url",
            server.module_ws_url,
            "--rest-url",
            server.base_url,
            "--token",
            server.token("agent"),
            "--updates",
            "4",
            stdout=asyncio.subprocess.PIPE,
        )
        assert agent.stdout is not None
        assert (await asyncio.wait_for(agent.stdout.readline(), 15)).strip() == b"top 10:"
        await asyncio.sleep(0.5)  # subscribed
        for game, user, score in (
            ("go", "a", 5),
            ("go", "b", 5),
            ("catan", "c", 2),
            ("chess", "b", 1),
        ):
            await rate(game, user, score)
        output, _ = await asyncio.wait_for(agent.communicate(), 30)
        assert agent.returncode == 0
        expected = (await http.get("/games/top", params={"limit": 10})).json()["items"]
    last = output.decode().strip().split("top 10:")[-1].strip().splitlines()
    assert [line.split()[1] for line in last] == [game["gameId"] for game in expected]
    assert [line.split()[1] for line in last] == ["go", "chess", "catan"]
