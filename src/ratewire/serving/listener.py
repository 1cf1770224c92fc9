"""Listening sockets whose accepting can pause, and the descriptor budget that pauses them.

Every socket either port accepts holds a descriptor until it closes, whether it becomes a
WebSocket, a REST request or a refusal (503 with ``Retry-After`` needs the request head in
before it can be answered cleanly). A crowd past capacity arriving at once (400 upgrades
against 300 descriptors) used to take them all: the process ran out, and libuv, which handles
EMFILE at accept by accepting and closing at once, broke a third of the handshakes mid-way.
So :class:`DescriptorBudget` counts the accepted sockets of both ports, and when they reach
what the open-files limit leaves for them, every listener pauses; new clients wait in the
kernel's backlog (4096) until sockets close, and each is answered in turn: 101 or 503, never
a reset. Far from the limit nothing pauses, so clients that never finish their handshake
cannot stop a port for everyone (they are closed at the handshake timeout).

How a listener pauses: its servers accept on duplicates of the listening sockets. Closing a
server closes its duplicate only; the socket, still listening, keeps its backlog, and a new
server on a new duplicate takes up where the old one stopped. uvloop calls
``connection_made`` inside its accept loop, so a pause decided there stops that loop at once
(measured: a burst of 50 connections, paused after 5, accepted 5 until resumed, and none was
reset).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import ssl
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger("ratewire.capacity")
BACKLOG = 4096


class PortUnavailable(OSError):
    """A port could not be bound; its text names the setting, the option and the port."""

    def __str__(self) -> str:
        return str(self.strerror)


@contextlib.contextmanager
def port_named(setting: str, option: str, host: str, port: int) -> Iterator[None]:
    """Turns a failure to bind ``host:port`` into one line naming ``setting`` (and the
    ``serve`` option that overrides it), the port and what to do about it."""
    try:
        yield
    except PortUnavailable:
        raise
    except OSError as exc:
        advice = {
            errno.EADDRINUSE: "another process listens there; stop it or choose another port",
            errno.EACCES: "this user may not bind it (ports below 1024 need privileges); "
            "choose a port of 1024 or more",
            errno.EADDRNOTAVAIL: f"{host!r} is not an address of this machine (server.host, "
            "--host)",
        }.get(exc.errno or 0, "choose another port or address")
        raise PortUnavailable(
            exc.errno or 0,
            f"{setting} {port} ({option}) on {host or '*'}: {exc.strerror or exc}; {advice}",
        ) from exc


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


class DescriptorBudget:
    """The sockets both ports have accepted and not yet closed, against ``limit``: at the
    limit every registered listener pauses, and they resume once some have closed."""

    #: How often paused listeners look whether there is room again.
    RECHECK_SECONDS = 0.05

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._open: set[int] = set()
        self._listeners: list[PausableListener] = []
        self._recheck: asyncio.TimerHandle | None = None
        #: Times accepting paused (logged).
        self.pauses = 0

    def register(self, listener: PausableListener) -> None:
        self._listeners.append(listener)

    def take(self, transport: object) -> None:
        """A socket was accepted (its protocol's ``connection_made``)."""
        self._open.add(id(transport))
        if len(self._open) >= self.limit and self._recheck is None:
            self._pause()

    def give(self, transport: object) -> None:
        """A socket closed (``connection_lost``; twice is harmless)."""
        self._open.discard(id(transport))

    def _pause(self) -> None:
        self.pauses += 1
        if self.pauses == 1 or self.pauses % 100 == 0:
            log.warning(
                "descriptors short (%d sockets open of %d allowed for connections): "
                "accepting pauses until there is room, new clients wait in the backlog; "
                "%d pauses so far",
                len(self._open),
                self.limit,
                self.pauses,
            )
        for listener in self._listeners:
            listener.pause()
        self._recheck = asyncio.get_running_loop().call_later(
            self.RECHECK_SECONDS, self._maybe_resume
        )

    def _maybe_resume(self) -> None:
        # Resume with some room, so as not to pause again at the next accept.
        if len(self._open) < self.limit - max(1, self.limit // 50):
            self._recheck = None
            for listener in self._listeners:
                listener.resume()
        else:
            self._recheck = asyncio.get_running_loop().call_later(
                self.RECHECK_SECONDS, self._maybe_resume
            )


class PausableListener:
    """Accepts on ``sockets`` with ``protocol_factory`` (whose protocols report to a
    :class:`DescriptorBudget`); :meth:`pause` and :meth:`resume` keep the backlog."""

    def __init__(
        self,
        sockets: list[socket.socket],
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        ssl_context: ssl.SSLContext | None,
        budget: DescriptorBudget,
    ) -> None:
        self._sockets = sockets
        self._factory = protocol_factory
        self._ssl = ssl_context
        self._servers: list[Any] = []
        self._resuming: asyncio.Task[None] | None = None
        self._closed = False
        budget.register(self)

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

    def pause(self) -> None:
        for server in self._servers:
            server.close()
        self._servers = []

    def resume(self) -> None:
        if self.paused and (self._resuming is None or self._resuming.done()):
            self._resuming = asyncio.get_running_loop().create_task(self.start())

    def close(self) -> None:
        """Stop accepting for good and close the sockets (clients in the backlog are reset)."""
        self._closed = True
        if self._resuming is not None:
            self._resuming.cancel()
        self.pause()
        for sock in self._sockets:
            sock.close()
