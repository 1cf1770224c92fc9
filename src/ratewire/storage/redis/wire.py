"""One pipelined Redis connection for the store's write path, on hiredis's RESP parser.

redis-py costs most of a write's CPU on the path a write takes (pool checkout, retry wrapper,
per-command instrumentation, its Python packer and parser). Measured with ``time.process_time``
over 4,000 creates from 32 concurrent writers (the store alone, audit off): 214 us of CPU per
write through redis-py's ``Script``, 70 to 120 us here, where commands go out on one
connection as they come, a burst in one write, and answers come back in order. The rest of
the store (reads, administration) uses redis-py.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

#: Seconds an answer may take before the connection is given up (and every caller told).
ANSWER_TIMEOUT = 5.0


def pack(args: tuple[Any, ...]) -> bytes:
    """One command in RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        else:
            data = str(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        #: Callers waiting for answers, in the order their commands went out, with the time
        #: each was sent (monotonic).
        self.waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None
        self._outbox: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport; they behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, command: bytes, future: asyncio.Future[Any], now: float) -> None:
        """Queue ``command``; everything queued in one turn of the loop goes out in one write
        (one syscall for a burst of writes, not one each)."""
        self.waiting.append((future, now))
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append(command)

    def _flush(self) -> None:
        if self.transport is not None and self.lost is None:
            self.transport.write(b"".join(self._outbox))
        self._outbox.clear()

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            future, _ = self.waiting.popleft()
            if future.done():
                continue  # its caller was cancelled
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(ResponseError(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}")
        self.fail(self.lost)

    def fail(self, error: Exception) -> None:
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)


class PipelinedConnection:
    """Commands over one connection to the Redis of ``url`` (redis:// or rediss://, with an
    optional password and database), reconnecting on the next command after a loss."""

    def __init__(self, url: str, on_reconnect: Callable[[], Awaitable[None]] | None = None) -> None:
        parts = urlsplit(url)
        #: Called after a connection replaced a lost one (Redis restarted, or the network cut).
        self._on_reconnect = on_reconnect
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._tls = parts.scheme == "rediss"
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        path = parts.path.lstrip("/")
        self._database = int(path) if path else 0
        self._protocol: _Protocol | None = None
        self._connecting = asyncio.Lock()
        self._watchdog: asyncio.Task[None] | None = None

    async def _connected(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and protocol.lost is None:
            return protocol
        async with self._connecting:
            if self._protocol is not None and self._protocol.lost is None:
                return self._protocol
            loop = asyncio.get_running_loop()
            try:
                _, protocol = await asyncio.wait_for(
                    loop.create_connection(
                        _Protocol,
                        self._host,
                        self._port,
                        ssl=ssl.create_default_context() if self._tls else None,
                    ),
                    ANSWER_TIMEOUT,
                )
            except (OSError, TimeoutError) as exc:
                raise RedisConnectionError(
                    f"cannot reach Redis at {self._host}:{self._port}: {exc}"
                ) from exc
            assert isinstance(protocol, _Protocol)
            replaced, self._protocol = self._protocol, protocol
            if self._password is not None:
                auth = (self._username, self._password) if self._username else (self._password,)
                await self._send(protocol, ("AUTH", *auth))
            if self._database:
                await self._send(protocol, ("SELECT", self._database))
            if replaced is not None and self._on_reconnect is not None:
                await self._on_reconnect()
            return protocol

    async def _send(self, protocol: _Protocol, args: tuple[Any, ...]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        protocol.send(pack(args), future, loop.time())
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.create_task(self._watch(), name="redis-answer-watchdog")
        return await future

    async def _watch(self) -> None:
        """Give the connection up when its oldest command waits too long: answers after it
        would reach the wrong callers. One task per connection, not a timer per command."""
        while (protocol := self._protocol) is not None and protocol.lost is None:
            await asyncio.sleep(ANSWER_TIMEOUT / 5)
            waiting = protocol.waiting
            if waiting and asyncio.get_running_loop().time() - waiting[0][1] > ANSWER_TIMEOUT:
                protocol.lost = RedisTimeoutError(f"Redis did not answer in {ANSWER_TIMEOUT:g} s")
                protocol.fail(protocol.lost)
                if protocol.transport is not None:
                    protocol.transport.abort()

    async def call(self, *args: Any) -> Any:
        """Send one command; its answer (bytes, int, list...), or the error Redis gave."""
        return await self._send(await self._connected(), args)

    def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None
        if self._watchdog is not None:
            self._watchdog.cancel()
