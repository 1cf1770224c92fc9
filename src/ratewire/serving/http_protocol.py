"""uvicorn's HTTP protocol with a deadline on the request head (slowloris defence).

uvicorn waits for a request head with no time limit: a socket that sends half a request line
and nothing more holds a descriptor forever. Here every request head, the first on a
connection and each later one, must be complete within ``limits.handshake_timeout_seconds``,
or the connection is closed. It covers REST and the ``/ws`` upgrade alike.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ratewire.serving.listener import DescriptorBudget


class _HeadDeadlineProtocol(HttpToolsProtocol):
    head_timeout: float = 10.0
    #: Counts this port's sockets with the WebSocket port's (see ratewire.serving.listener).
    descriptor_budget: DescriptorBudget | None = None
    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        if self.descriptor_budget is not None:
            self.descriptor_budget.take(transport)
        super().connection_made(transport)
        self._arm_head_deadline()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_deadline is None:
            self._arm_head_deadline()

    def on_headers_complete(self) -> None:
        self._disarm_head_deadline()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        if self.descriptor_budget is not None:
            self.descriptor_budget.give(self.transport)
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        self._head_deadline = self.loop.call_later(self.head_timeout, self._head_too_slow)

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def http_protocol_with_head_timeout(
    seconds: float, budget: DescriptorBudget | None = None
) -> type[HttpToolsProtocol]:
    """The protocol class to give uvicorn's ``http`` setting."""
    return type(
        "HttpWithHeadTimeout",
        (_HeadDeadlineProtocol,),
        {"head_timeout": seconds, "descriptor_budget": budget},
    )
