"""A webhook receiver for the tests: a plain HTTP server that records every POST and answers
what the test tells it to (500s first, 410, or nothing at all while it is down)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from ratewire.client.webhooks import verify


@dataclass(frozen=True, slots=True)
class Received:
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered

    @property
    def message_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def payload(self) -> dict[str, object]:
        return orjson.loads(self.body)  # type: ignore[no-any-return]


class Receiver:
    """``await Receiver.start()``; ``receiver.url``; ``receiver.answer = lambda n: 500``."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        #: The status to answer the n-th request (0-based) with.
        self.answer: Callable[[int], int] = lambda _: 204
        self._server: asyncio.Server | None = None
        self.port = 0

    @classmethod
    async def start(cls, port: int = 0) -> Receiver:
        receiver = cls()
        await receiver.listen(port)
        return receiver

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def listen(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port or self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        """Stop listening (connections are refused) until :meth:`listen` again."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                status = self.answer(len(self.received))
                self.received.append(Received(headers, body, status))
                writer.write(
                    b"HTTP/1.1 %d X\r\ncontent-length: 4\r\ncontent-type: text/plain\r\n\r\nnope"
                    % status
                    if status >= 300
                    else b"HTTP/1.1 %d OK\r\ncontent-length: 0\r\n\r\n" % status
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    def delivered(self, secret: str) -> list[dict[str, object]]:
        """The payloads answered 2xx, each webhook-id once (a receiver that deduplicates),
        every signature checked."""
        seen: set[str] = set()
        payloads = []
        for request in self.received:
            verify(request.headers, request.body, secret)
            if 200 <= request.status < 300 and request.message_id not in seen:
                seen.add(request.message_id)
                payloads.append(request.payload)
        return payloads

    async def wait_for(
        self, secret: str, count: int, within: float = 30
    ) -> list[dict[str, object]]:
        deadline = asyncio.get_running_loop().time() + within
        while len(delivered := self.delivered(secret)) < count:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{len(delivered)} of {count} webhooks arrived in {within} s")
            await asyncio.sleep(0.05)
        return delivered

    async def close(self) -> None:
        await self.down()
