"""The WebSocket endpoint on the main port (``/ws``), as a raw ASGI app over uvicorn.

Same session logic as the module port. It is dispatched in front of FastAPI (see
:func:`mount_realtime`) so frames do not pass through Starlette's WebSocket wrapper and every
middleware's ``send`` wrapper: measured, that halved /ws fan-out throughput. ASGI sends are
awaitables, so each connection has an outbox drained by a writer task; the outbox counts
bytes, and overflowing ``limits.send_buffer_bytes`` closes with 4009, as on the module port.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.types import ASGIApp, Receive, Scope, Send

from ratewire.realtime.handshake import (
    RATE_REFUSED_BODY,
    USER_CAP_BODY,
    USER_CAP_REACHED,
    MainPortEndpoint,
    Refusal,
    chosen_subprotocol,
    upgrade_credentials,
)
from ratewire.realtime.outbox import Outbox
from ratewire.realtime.session import CLOSE_MESSAGE_TOO_BIG, Session
from ratewire.realtime.slots import RETRY_AFTER_SECONDS


class AsgiPeer(Outbox):
    """Adapts one ASGI WebSocket connection to a :class:`Session`."""

    def __init__(self, send: Send, limit: int) -> None:
        super().__init__(limit)
        self._send = send

    def send_text(self, data: bytes) -> None:
        if self._close is None:
            self._enqueue(data)

    async def write_loop(self) -> None:
        """Send queued frames until closed (or the client is gone)."""
        send = self._send
        # uvicorn raises ClientDisconnected (an OSError) once the peer is gone.
        with contextlib.suppress(OSError, RuntimeError):
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._outbox:
                    data = self._outbox.popleft()
                    self._queued -= len(data)
                    await send({"type": "websocket.send", "text": data.decode()})
                self._drained.set()
                if self._close is not None:
                    code, reason = self._close
                    await send({"type": "websocket.close", "code": code, "reason": reason})
                    return


class WebSocketEndpoint(MainPortEndpoint):
    """The raw ASGI app behind ``/ws``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        await self._admit_and_serve(scope, receive, send)

    async def _refuse_admission(self, scope: Scope, send: Send, refusal: Refusal) -> None:
        await self._refuse(scope, send, refusal.status, refusal.retry_after, refusal.body)

    async def _serve(
        self, ip: str, headers: dict[bytes, bytes], scope: Scope, receive: Receive, send: Send
    ) -> None:
        retry_after = self._limiter.acquire(ip)
        if retry_after:
            await self._refuse(scope, send, 429, retry_after, RATE_REFUSED_BODY)
            return
        authorization = headers.get(b"authorization", b"").decode("latin-1") or None
        offered = scope.get("subprotocols") or ()
        credentials = upgrade_credentials(
            self._ctx, "?" + scope["query_string"].decode("latin-1"), authorization, offered
        )
        if credentials is USER_CAP_REACHED:
            await self._refuse(scope, send, 429, RETRY_AFTER_SECONDS, USER_CAP_BODY)
            return
        subprotocol = chosen_subprotocol(offered)
        if subprotocol is None:
            await send({"type": "websocket.accept"})  # as before subprotocols were known
        else:
            await send({"type": "websocket.accept", "subprotocol": subprotocol})
        peer = AsgiPeer(send, self._ctx.limits.send_buffer_bytes)
        session = Session(peer, self._ctx, ip, "/ws")
        peer.session = session
        writer = asyncio.create_task(peer.write_loop())
        session.opened(credentials)
        peer_code: int | None = None
        max_bytes = self._ctx.limits.max_message_bytes
        try:
            while not writer.done():
                receiving = asyncio.ensure_future(receive())
                done, _ = await asyncio.wait(
                    {receiving, writer}, return_when=asyncio.FIRST_COMPLETED
                )
                if receiving not in done:
                    receiving.cancel()
                    break
                message = receiving.result()
                if message["type"] == "websocket.disconnect":
                    peer_code = message.get("code")
                    break
                payload = message.get("bytes") or (message.get("text") or "").encode()
                if len(payload) > max_bytes:
                    # A close handshake, as on the module port: uvicorn's own limit (a larger
                    # backstop, see runtime) drops the socket, and the client never sees why.
                    session.close(CLOSE_MESSAGE_TOO_BIG, "Message too big")
                    continue
                session.received(payload)
        finally:
            session.closed_by_peer(peer_code)
            await peer.end(writer)

    @staticmethod
    async def _refuse(
        scope: Scope, send: Send, status: int, retry_after: int | None, body: bytes
    ) -> None:
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1008})  # no HTTP answer possible
            return
        headers = [(b"content-type", b"text/plain")]
        if retry_after is not None:
            headers.append((b"retry-after", str(retry_after).encode()))
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})


def mount_realtime(
    app: ASGIApp, websocket: WebSocketEndpoint, stream: ASGIApp | None = None
) -> ASGIApp:
    """``app`` with WebSocket connections to ``/ws`` handed to ``websocket``, and requests
    for ``/stream`` (Server-Sent Events) to ``stream``, directly."""

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if scope["type"] == "websocket" and path == "/ws":
            await websocket(scope, receive, send)
        elif stream is not None and scope["type"] == "http" and path == "/stream":
            await stream(scope, receive, send)
        else:
            await app(scope, receive, send)

    return dispatch
