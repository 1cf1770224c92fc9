"""Ratings written through a real server, and the check that another server (on a restored,
upgraded or copied database) serves all of them: the ratings, every topic's history without
a gap, and an audit chain that verifies."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable

import httpx

from tests.support.server import ServerProcess

GAMES = 7


async def write_ratings(live: ServerProcess, numbers: range) -> None:
    """User ``u{n}`` rates game ``g{n % 7}`` with ``1 + n % 5``, for each n, concurrently."""
    async with httpx.AsyncClient(base_url=live.base_url, timeout=10) as http:

        async def one(n: int) -> None:
            answer = await http.put(
                f"/games/g{n % GAMES}/ratings/u{n}",
                json={"score": 1 + n % 5},
                headers={"Authorization": f"Bearer {live.token(f'u{n}')}"},
            )
            assert answer.status_code == 201, answer.text

        await asyncio.gather(*(one(n) for n in numbers))


async def global_offsets(server: ServerProcess) -> tuple[list[int], int]:
    """Every offset of rating.global's history, page by page, and its head."""
    offsets: list[int] = []
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        while True:
            page = await http.get(
                f"/topics/rating.global/events?since={len(offsets)}&limit=100",
                headers={"Authorization": f"Bearer {server.token('reader')}"},
            )
            assert page.status_code == 200, page.text
            offsets += [e["offset"] for e in page.json()["events"]]
            if not page.json()["events"]:
                return offsets, int(page.json()["head"])


async def audit_verifies(backend: str, url: str) -> None:
    verify = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ratewire", "audit", "verify",
        env={**os.environ, "RATEWIRE_STORAGE__BACKEND": backend, "RATEWIRE_STORAGE__URL": url},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await verify.communicate()
    assert verify.returncode == 0, out.decode()


async def serves_everything(
    server_factory: Callable[..., ServerProcess], backend: str, url: str, least: int, most: int
) -> int:
    """A server on ``url`` serves between ``least`` and ``most`` ratings, rating.global's
    whole history from offset 1 without a gap, and an audit chain that verifies; returns how
    many ratings it serves."""
    restored = server_factory(backend=backend, storage_url=url)
    async with httpx.AsyncClient(base_url=restored.base_url, timeout=10) as http:
        counts = [(await http.get(f"/games/g{g}/summary")).json()["count"] for g in range(GAMES)]
    total = sum(counts)
    assert least <= total <= most, "at least everything written before the copy began"
    offsets, head = await global_offsets(restored)
    assert head == total and offsets == list(range(1, total + 1))
    restored.stop()
    await audit_verifies(backend, url)
    return total
