"""uvicorn's WebSocket protocol (``websockets-sansio``), closing cleanly on a client's protocol
error.

When a client sends an invalid frame (bad UTF-8 in a text frame, a message over the size
limit), uvicorn queues the close frame (1007, 1009) and closes the socket at once. With client
data still unread, closing turns into a TCP reset, and the client never learns why it was cut.
Here the socket stays open, discarding input, for a short grace period after the close frame,
as the module port does, so the client reads the code.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from ratewire.listener import DescriptorBudget

#: Time for the client to read the close frame before the socket closes.
CLOSE_GRACE_SECONDS = 1.0


class CleanCloseWebSocketProtocol(WebSocketsSansIOProtocol):
    #: The upgraded socket was counted by the HTTP protocol; it is given back here.
    descriptor_budget: DescriptorBudget | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.descriptor_budget is not None:
            self.descriptor_budget.give(self.transport)
        super().connection_lost(exc)

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


def websocket_protocol_with_budget(budget: DescriptorBudget) -> type[CleanCloseWebSocketProtocol]:
    """The protocol class to give uvicorn's ``ws`` setting."""
    counted: Any = type(
        "CleanCloseCounted", (CleanCloseWebSocketProtocol,), {"descriptor_budget": budget}
    )
    return counted  # type: ignore[no-any-return]
