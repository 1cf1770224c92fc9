"""The send buffer of a connection whose writes are awaitables (an ASGI ``send``): frames
queue here without blocking the hub, a writer task drains them, and a buffer past
``limits.send_buffer_bytes`` closes the session with 4009. Shared by ``/ws`` (asgi.py) and
``/stream`` (sse.py); the module port writes to its sockets directly and needs none."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from ratewire.realtime.session import CLOSE_TOO_SLOW, Session


class Outbox:
    """Queued bytes, counted, with the wake-ups a writer task waits on."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._outbox: deque[bytes] = deque()
        self._queued = 0
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._close: tuple[int, str] | None = None
        self.session: Session | None = None

    def _enqueue(self, data: bytes) -> None:
        """Queue ``data``; past the limit, drop the queue and close the session (4009)."""
        self._outbox.append(data)
        self._queued += len(data)
        if self._queued > self._limit:
            self._outbox.clear()
            self._queued = 0
            if self.session is not None:
                self.session.close(CLOSE_TOO_SLOW, "Client too slow")
            return
        self._wake.set()

    def close(self, code: int, reason: str) -> None:
        if self._close is None:
            self._close = (code, reason)
            self._wake.set()

    async def end(self, writer: asyncio.Task[None]) -> None:
        """Close (if the session did not) and end ``writer``, the task draining this outbox:
        cancelled if it is still waiting to write."""
        self.close(1000, "")
        if not writer.done():
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    async def drain(self) -> None:
        """Wait until the queue is down to a quarter of the limit (replays pace on it)."""
        while self._queued > self._limit // 4 and self._close is None:
            self._drained.clear()
            await self._drained.wait()
