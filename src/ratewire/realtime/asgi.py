"""The WebSocket endpoint on the main port (``/ws``), over uvicorn's ASGI WebSocket.

Same session logic as the module port. ASGI sends are awaitables, so each connection has an
outbox drained by a writer task; the outbox counts bytes and overflowing
``limits.send_buffer_bytes`` closes with 4009, as on the module port.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable

from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from ratewire.realtime.picows_server import token_from_request
from ratewire.realtime.session import CLOSE_TOO_SLOW, RealtimeContext, Session
from ratewire.security.ratelimit import ConnectionRateLimiter


class AsgiPeer:
    """Adapts one Starlette WebSocket to a :class:`Session`."""

    def __init__(self, websocket: WebSocket, limit: int) -> None:
        self._ws = websocket
        self._limit = limit
        self._outbox: deque[bytes] = deque()
        self._queued = 0
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._close: tuple[int, str] | None = None
        self.session: Session | None = None

    def send_text(self, data: bytes) -> None:
        if self._close is not None:
            return
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

    async def drain(self) -> None:
        while self._queued > self._limit // 4 and self._close is None:
            self._drained.clear()
            await self._drained.wait()

    async def write_loop(self) -> None:
        """Send queued frames until closed."""
        ws = self._ws
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox:
                data = self._outbox.popleft()
                self._queued -= len(data)
                await ws.send_text(data.decode())
            self._drained.set()
            if self._close is not None:
                code, reason = self._close
                with contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError):
                    await ws.close(code, reason)
                return


def make_ws_endpoint(
    ctx: RealtimeContext, limiter: ConnectionRateLimiter
) -> Callable[[WebSocket], Awaitable[None]]:
    """The ``/ws`` route handler."""

    async def ws_endpoint(websocket: WebSocket) -> None:
        client = websocket.client
        retry_after = limiter.acquire(client.host if client else "unknown")
        if retry_after:
            await websocket.send_denial_response(
                PlainTextResponse(
                    "too many new connections from this address; retry later\n",
                    429,
                    headers={"Retry-After": str(retry_after)},
                )
            )
            return
        await websocket.accept()
        peer = AsgiPeer(websocket, ctx.limits.send_buffer_bytes)
        session = Session(peer, ctx)
        peer.session = session
        writer = asyncio.create_task(peer.write_loop())
        session.opened(
            token_from_request("?" + websocket.url.query, websocket.headers.get("authorization"))
        )
        try:
            while not writer.done():
                receive = asyncio.ensure_future(websocket.receive())
                done, _ = await asyncio.wait({receive, writer}, return_when=asyncio.FIRST_COMPLETED)
                if receive not in done:
                    receive.cancel()
                    break
                message = receive.result()
                if message["type"] == "websocket.disconnect":
                    break
                payload = message.get("bytes") or (message.get("text") or "").encode()
                session.received(payload)
        finally:
            session.closed_by_peer()
            peer.close(1000, "")
            if not writer.done():
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer

    return ws_endpoint
