"""A TCP proxy that can be cut and restored, to make a real server unreachable without stopping
it (a database, a load balancer, one client's connection). It runs in the caller's event loop;
``tests/support/tcp_proxy.py`` runs it on a thread of its own for synchronous tests."""

from __future__ import annotations

import asyncio
import contextlib

from bench.servers import free_port


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``target_host:target_port``. ``cut()`` drops every
    connection and refuses new ones until ``restore()``."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        #: Accept connections and drop them at once, as a TCP load balancer with no backend
        #: (or whose backend refuses) does: the client's handshake gets no answer.
        self.drop_on_accept = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError):
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.drop_on_accept:
            writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        pair = {writer, upstream_writer}
        self._writers |= pair
        await asyncio.gather(
            self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
        )
        self._writers -= pair

    async def restore(self) -> None:
        """Listen (again)."""
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    def cut(self) -> None:
        """Drop every connection and stop listening."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
