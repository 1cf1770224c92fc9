"""The WebSocket port's listening sockets, with accepting that can pause.

A refusal at capacity (503 with ``Retry-After``) needs a descriptor of its own until the
client has sent its request head and read the answer. A crowd past capacity arriving at once
(400 upgrades against 300 descriptors) used to take them all: the process ran out, and libuv,
which handles EMFILE at accept by accepting and closing at once, broke a third of the
handshakes mid-way. So accepting pauses when a refusal would leave too few descriptors (the
connections held plus the refusals in flight reach a budget below the open-files limit), and
resumes when there is room; meanwhile new clients wait in the kernel's backlog (4096), and
each one is answered in turn: 101 or 503, never a reset. Far from the limit nothing pauses,
so clients that never finish their handshake cannot stop the port for everyone.

How it pauses: the servers accept on duplicates of the listening sockets. Closing a server
closes its duplicate only; the socket, still listening, keeps its backlog, and a new server
on a new duplicate takes up where the old one stopped. uvloop calls ``connection_made`` inside
its accept loop, so a pause decided there stops that loop at once (measured: a burst of 50
connections, paused after 5, accepted 5 until resumed, and none was reset).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections.abc import Callable
from typing import Any

log = logging.getLogger("ratewire.realtime")
BACKLOG = 4096


def listening_sockets(host: str, port: int, *, reuse_port: bool = False) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for every address ``host`` resolves to (as
    ``loop.create_server`` would bind them)."""
    sockets: list[socket.socket] = []
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    seen: set[tuple[int, Any]] = set()
    for family, kind, proto, _, address in infos:
        if (family, address) in seen:
            continue
        seen.add((family, address))
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except OSError:
            sock.close()
            for opened in sockets:
                opened.close()
            raise
        sockets.append(sock)
    return sockets


class PausableListener:
    """Accepts on ``sockets`` with ``protocol_factory``. Accepting pauses when a refusal would
    bring the connections open (``open_connections()``, the WebSockets held) plus the refusals
    in flight to ``descriptor_budget``, and resumes once they are below it again."""

    #: How often a paused listener looks whether there is room again.
    RECHECK_SECONDS = 0.05

    def __init__(
        self,
        sockets: list[socket.socket],
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        ssl_context: ssl.SSLContext | None,
        descriptor_budget: int,
        open_connections: Callable[[], int],
    ) -> None:
        self._sockets = sockets
        self._factory = protocol_factory
        self._ssl = ssl_context
        self.descriptor_budget = descriptor_budget
        self._open_connections = open_connections
        self.refusing = 0
        #: Times accepting paused (logged; for tests).
        self.pauses = 0
        self._servers: list[Any] = []
        self._resuming: asyncio.Task[None] | None = None
        self._recheck: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def paused(self) -> bool:
        return not self._servers and not self._closed

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        servers = []
        for sock in self._sockets:
            duplicate = socket.socket(fileno=os.dup(sock.fileno()))
            # backlog: create_server listens again, by default with 100, which dropped SYNs
            # under a connection storm (measured: 880 connects/s instead of 2,200).
            servers.append(
                await loop.create_server(
                    self._factory, sock=duplicate, ssl=self._ssl, backlog=BACKLOG
                )
            )
        if self._closed:  # closed while starting
            for server in servers:
                server.close()
            return
        self._servers = servers

    def _in_use(self) -> int:
        return self._open_connections() + self.refusing

    def refusal_started(self) -> None:
        self.refusing += 1
        if self._servers and self._in_use() >= self.descriptor_budget:
            self.pauses += 1
            if self.pauses == 1 or self.pauses % 100 == 0:
                log.warning(
                    "descriptors short (%d connections open, %d being refused): accepting "
                    "pauses until there is room, new clients wait in the backlog; %d pauses "
                    "so far",
                    self._open_connections(),
                    self.refusing,
                    self.pauses,
                )
            for server in self._servers:
                server.close()
            self._servers = []
            self._schedule_recheck()

    def refusal_ended(self) -> None:
        self.refusing -= 1

    def _schedule_recheck(self) -> None:
        if self._recheck is None and not self._closed:
            self._recheck = asyncio.get_running_loop().call_later(
                self.RECHECK_SECONDS, self._maybe_resume
            )

    def _maybe_resume(self) -> None:
        self._recheck = None
        if not self.paused:
            return
        # Resume with some room, so as not to pause again at the next refusal.
        slack = max(1, self.refusing // 2)
        if self._in_use() + slack < self.descriptor_budget or self.refusing == 0:
            if self._resuming is None or self._resuming.done():
                self._resuming = asyncio.get_running_loop().create_task(self.start())
        else:
            self._schedule_recheck()

    def close(self) -> None:
        """Stop accepting for good and close the sockets (clients in the backlog are reset)."""
        self._closed = True
        if self._recheck is not None:
            self._recheck.cancel()
        if self._resuming is not None:
            self._resuming.cancel()
        for server in self._servers:
            server.close()
        self._servers = []
        for sock in self._sockets:
            sock.close()
