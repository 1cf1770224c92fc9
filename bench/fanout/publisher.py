"""The publisher: POST ratings at a rate (or flat out), each carrying its send time."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.servers import token


@dataclass
class Published:
    """What the publisher saw: writes answered 201, failed, and each POST's round trip."""

    ok: int = 0
    failed: int = 0
    post_ns: list[int] = field(default_factory=list)
    #: Writes answered 201 whose event passes the run's filter (all of them without one).
    passing: int = 0


async def publish(
    post_url: str,
    game: str,
    rate: float,
    seconds: float,
    *,
    timed: bool = True,
    event_filter: str | None = None,
    connections: int = 8,
    most_in_flight: int | None = None,
) -> Published:
    """POST ratings for ``seconds``; at ``rate``/s, or flat out with a few connections. Each
    carries its send time in ``comment`` unless not ``timed`` (a warm-up). With
    ``event_filter``, ``passing`` counts the writes whose ``created`` event on the game's topic
    passes it (evaluated here with ratewire's filters; one reading ``offset`` sees 0).

    ``most_in_flight``: at most that many writes wait for their answer; the next waits for a
    slot, so a server slower than ``rate`` sets the pace instead of a queue of thousands of
    tasks (which made this publisher itself the bottleneck: bench.consumers, 2026-12-08)."""
    passes = _passes(event_filter, f"rating.game.{game}")
    headers = {"Authorization": f"Bearer {token('publisher', 'ratings:write:any')}"}
    stats = Published()
    sent = 0
    run_id = f"{os.getpid()}x{time.time_ns()}"
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    slots = asyncio.Semaphore(most_in_flight) if most_in_flight else None
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30) as http:

        async def one(index: int) -> None:
            sent_at = time.time_ns()
            body = {
                "gameId": game,
                "userId": f"p{run_id}-{index}",
                "score": 1 + index % 5,
                "comment": f"t={sent_at}" if timed else "warm-up",
            }
            try:
                response = await http.post(post_url, json=body)
            except httpx.HTTPError:
                stats.failed += 1
                return
            finally:
                if slots is not None:
                    slots.release()
            stats.post_ns.append(time.time_ns() - sent_at)
            if response.status_code == 201:
                stats.ok += 1
                stats.passing += passes(body)
            else:
                stats.failed += 1

        if rate > 0:
            tasks = []
            start = time.monotonic()
            while time.monotonic() < deadline:
                if slots is not None:
                    await slots.acquire()
                tasks.append(asyncio.create_task(one(sent)))
                sent += 1
                await asyncio.sleep(max(0.0, start + sent / rate - time.monotonic()))
            await asyncio.gather(*tasks)
        else:

            async def lane(lane_index: int) -> None:
                index = lane_index
                while time.monotonic() < deadline:
                    await one(index)
                    index += 8

            await asyncio.gather(*(lane(i) for i in range(8)))
    return stats


def _passes(event_filter: str | None, topic: str) -> Callable[[Mapping[str, Any]], bool]:
    """Whether a written rating's event passes ``event_filter`` (always, without one)."""
    if event_filter is None:
        return lambda _: True
    from ratewire.domain.filters import compile_filter

    compiled = compile_filter(event_filter)
    return lambda body: compiled.matches("created", topic, 0, {**body, "version": 1})
