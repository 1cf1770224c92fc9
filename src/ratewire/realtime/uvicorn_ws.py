"""uvicorn's WebSocket protocol (``websockets-sansio``), closing cleanly on a client's protocol
error.

When a client sends an invalid frame (bad UTF-8 in a text frame, a message over the size
limit), uvicorn queues the close frame (1007, 1009) and closes the socket at once. With client
data still unread, closing turns into a TCP reset, and the client never learns why it was cut.
Here the socket stays open, discarding input, for a short grace period after the close frame,
as the module port does, so the client reads the code.

It also keeps pongs inside the connection's send budget: uvicorn writes each pong straight to
the transport, outside the flow control that bounds data frames, so a client that sent pings
and never read grew the server's memory without bound (RSS 134 -> 572 MB in 43 s, measured).
Past ``limits.send_buffer_bytes`` unsent, the client is cut as any slow reader is (4009).
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from ratewire.realtime.session import CLOSE_TOO_SLOW
from ratewire.serving.listener import DescriptorBudget

TOO_SLOW_REASON = "Client too slow"

#: Time for the client to read the close frame before the socket closes.
CLOSE_GRACE_SECONDS = 1.0


class CleanCloseWebSocketProtocol(WebSocketsSansIOProtocol):
    #: The upgraded socket was counted by the HTTP protocol; it is given back here.
    descriptor_budget: DescriptorBudget | None = None
    #: ``limits.send_buffer_bytes``: what one connection may hold unsent, pongs included.
    send_buffer_bytes: int = 1 << 20

    def connection_lost(self, exc: Exception | None) -> None:
        if self.descriptor_budget is not None:
            self.descriptor_budget.give(self.transport)
        super().connection_lost(exc)

    def handle_ping(self) -> None:
        pong = b"".join(self.conn.data_to_send())  # taken either way: it must not pile up
        if self.close_sent:
            return
        if self.transport.get_write_buffer_size() + len(pong) > self.send_buffer_bytes:
            self._cut_too_slow()
            return
        self.transport.write(pong)

    def _cut_too_slow(self) -> None:
        self.conn.send_close(CLOSE_TOO_SLOW, TOO_SLOW_REASON)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.queue.put_nowait(
            {"type": "websocket.disconnect", "code": CLOSE_TOO_SLOW, "reason": TOO_SLOW_REASON}
        )
        # It does not read, so it will not answer the close: the socket goes after the grace.
        self.close_timer = self.loop.call_later(CLOSE_GRACE_SECONDS, self.transport.abort)

    def handle_parser_exception(self) -> None:
        if self.close_sent:
            return  # the parser is dead and discards input; the close is under way
        close = self.conn.close_sent
        assert close is not None
        self.queue.put_nowait(
            {"type": "websocket.disconnect", "code": close.code, "reason": close.reason}
        )
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(CLOSE_GRACE_SECONDS, self.transport.close)


def websocket_protocol_with_budget(
    budget: DescriptorBudget, send_buffer_bytes: int
) -> type[CleanCloseWebSocketProtocol]:
    """The protocol class to give uvicorn's ``ws`` setting."""
    counted: Any = type(
        "CleanCloseCounted",
        (CleanCloseWebSocketProtocol,),
        {"descriptor_budget": budget, "send_buffer_bytes": send_buffer_bytes},
    )
    return counted  # type: ignore[no-any-return]
