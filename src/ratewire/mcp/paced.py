"""Paced summary resources: ``rating://games/{game_id}/summary/every/{interval_ms}``.

A listener of the plain summary resource is told of every change of the game; an agent that
re-reads the summary each time may rather be told at its own pace. Listeners of a paced URI
are sent ``notifications/resources/updated`` at most once per ``interval_ms`` (50 or more),
only when the summary changed, and never without the last change of a burst: each URI that
someone listens to is backed by one ``summary.game.{id}`` stream of ratewire (the server
conflates; this process only relays), started with the first listener and ended with the
last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable

from ratewire.client import Client, RatewireError

log = logging.getLogger("ratewire.mcp")

PACED_URI = "rating://games/{game_id}/summary/every/{interval_ms}"
PACED_PATTERN = re.compile(r"rating://games/([^/]+)/summary/every/([0-9]{1,7})")
MIN_INTERVAL_MS = 50


def paced(uri: str) -> tuple[str, int] | None:
    """(game id, interval in ms) of a paced summary URI, else None."""
    match = PACED_PATTERN.fullmatch(uri)
    if match is None:
        return None
    return match.group(1), int(match.group(2))


def interval_problem(uri: str) -> str | None:
    """What is wrong with a paced URI's interval, if anything."""
    found = paced(uri)
    if found is not None and found[1] < MIN_INTERVAL_MS:
        return f"{uri}: the interval is in ms and at least {MIN_INTERVAL_MS}; got {found[1]}"
    return None


class PacedSummaries:
    """One server-side summary stream per paced URI that has listeners."""

    def __init__(self, client: Client, notify: Callable[[str], Awaitable[None]]) -> None:
        """``notify(uri)`` tells every listener of ``uri`` (the bus and legacy sessions)."""
        self._client = client
        self._notify = notify
        self._listeners: dict[str, int] = {}
        self._streams: dict[str, asyncio.Task[None]] = {}

    def acquire(self, uri: str) -> None:
        """One more listener of ``uri`` (ignored unless it is a valid paced URI)."""
        found = paced(uri)
        if found is None or found[1] < MIN_INTERVAL_MS:
            return
        self._listeners[uri] = self._listeners.get(uri, 0) + 1
        if uri not in self._streams:
            task = asyncio.get_running_loop().create_task(self._relay(uri, *found))
            self._streams[uri] = task

    def release(self, uri: str) -> None:
        """One listener of ``uri`` fewer; the stream ends with the last one."""
        left = self._listeners.get(uri, 0) - 1
        if left > 0:
            self._listeners[uri] = left
            return
        self._listeners.pop(uri, None)
        task = self._streams.pop(uri, None)
        if task is not None:
            task.cancel()

    async def _relay(self, uri: str, game_id: str, interval_ms: int) -> None:
        states = self._client.summaries(f"summary.game.{game_id}", interval_ms=interval_ms)
        try:
            # The first state comes at once: its notification tells the first listeners to
            # read (they may have listened after a change the stream already includes).
            async for _ in states:
                await self._notify(uri)
        except RatewireError as exc:
            log.error("summary stream of %s ended: %s; its notifications stop", uri, exc)
        finally:
            with contextlib.suppress(Exception):
                await states.aclose()  # type: ignore[attr-defined]

    async def close(self) -> None:
        for task in self._streams.values():
            task.cancel()
        for task in list(self._streams.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._streams.clear()
        self._listeners.clear()
