"""The subscribers: worker processes of picows WebSocket clients (or plain HTTP readers of
Server-Sent Events), each keeping a latency histogram and the offset checks of its
connections; the parent merges them (bench.fanout.measure)."""

from __future__ import annotations

import asyncio
import json
import time
from array import array
from multiprocessing.connection import Connection
from urllib.parse import quote

from bench.fanout.publisher import publish
from bench.servers import raise_fd_limit, token

BUCKET_NS = 10_000  # 10 us
BUCKETS = 200_000  # up to 2 s; slower goes in the last bucket


class Tally:
    """One worker's counts: a latency histogram and the offset checks of its subscribers."""

    def __init__(self, contiguous: bool = True) -> None:
        self.histogram = array("q", bytes(8 * BUCKETS))
        self.totals = {"received": 0, "gaps": 0, "duplicates": 0, "max_ns": 0, "summaries": 0}
        #: False for filtered subscribers: their offsets skip what the filter left out.
        self.contiguous = contiguous
        #: ``--summary``: each subscriber's last summary offset (by subscriber id).
        self.summary_offsets: dict[int, int] = {}

    def summary(self, subscriber: int, payload: bytes) -> None:
        """Count one ``summary`` frame (``--summary``): its offset never goes back."""
        at = payload.find(b'"offset":') + 9
        offset = int(payload[at : payload.find(b",", at)])
        last = self.summary_offsets.get(subscriber, -1)
        if offset < last:
            self.totals["duplicates"] += 1
        self.summary_offsets[subscriber] = offset
        self.totals["summaries"] += 1

    def close(self) -> None:
        """Before the totals are sent: each subscriber's last summary offset."""
        if self.summary_offsets:
            self.totals["last_summaries"] = list(self.summary_offsets.values())  # type: ignore[assignment]

    def update(self, payload: bytes, last_offset: int) -> int:
        """Count one ``rating_update`` (its send time is in the comment, ``t=<ns>``) that
        follows ``last_offset`` on its connection; returns its offset."""
        now = time.time_ns()
        totals = self.totals
        at = payload.find(b'"offset":') + 9
        offset = int(payload[at : payload.find(b",", at)])
        start = payload.find(b'"comment":"t=')
        if start >= 0:  # a warm-up write has no send time: its offset is checked, not timed
            start += 13
            latency = now - int(payload[start : payload.find(b'"', start)])
            self.histogram[min(BUCKETS - 1, max(0, latency // BUCKET_NS))] += 1
            totals["received"] += 1
            totals["max_ns"] = max(totals["max_ns"], latency)
        if last_offset >= 0:
            if offset <= last_offset:
                totals["duplicates"] += 1
            elif offset != last_offset + 1 and self.contiguous:
                totals["gaps"] += offset - last_offset - 1
        return offset


def subscriber_worker(
    conn: Connection,
    ws_url: str,
    topic: str,
    first: int,
    count: int,
    concurrency: int,
    source_address: str | None = None,
    event_filter: str | None = None,
    interval_ms: int = 0,
) -> None:
    """Open ``count`` subscribers, report when all are subscribed, record until told to stop.

    ``source_address`` (another address in 127.0.0.0/8) gives this worker its own ephemeral
    port range: one address reaches about 28,000 connections to one server port.
    ``event_filter``: every subscriber subscribes with this filter (all share it).
    ``interval_ms`` (``--summary``): ``topic`` is a summary topic, followed at that pace."""
    import uvloop
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

    raise_fd_limit()
    tally = Tally(contiguous=event_filter is None)
    asked: dict[str, object] = {"action": "subscribe", "topic": topic}
    if event_filter is not None:
        asked["filter"] = event_filter
    if interval_ms:
        asked["intervalMs"] = interval_ms
    subscribe = json.dumps(asked).encode()

    class Subscriber(WSListener):  # type: ignore[misc]
        def __init__(self) -> None:
            self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.last_offset = -1

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            payload = frame.get_payload_as_bytes()
            if payload.startswith(b'{"type":"rating_update"'):
                self.last_offset = tally.update(payload, self.last_offset)
            elif payload.startswith(b'{"type":"summary"'):
                tally.summary(id(self), payload)
            elif not self.ready.done():
                if b"connection_success" in payload:
                    transport.send(WSMsgType.TEXT, subscribe)
                elif b'"subscribed"' in payload:
                    self.last_offset = json.loads(payload).get("offset", 0)
                    self.ready.set_result(None)

    async def run() -> None:
        gate = asyncio.Semaphore(concurrency)
        tokens = [token(f"sub{first + i}") for i in range(count)]
        conn.recv()  # start signal
        started = time.monotonic()

        async def one(index: int) -> WSTransport:
            async with gate:
                extra = {"local_addr": (source_address, 0)} if source_address else {}
                transport, listener = await ws_connect(
                    Subscriber, f"{ws_url}?token={tokens[index]}", **extra
                )
                await asyncio.wait_for(listener.ready, 30)
                return transport

        transports = await asyncio.gather(*(one(i) for i in range(count)))
        conn.send(("subscribed", time.monotonic() - started))
        await follow_commands(conn, tally)
        for transport in transports:
            transport.disconnect()

    uvloop.run(run())


async def follow_commands(conn: Connection, tally: Tally) -> None:
    """A subscriber worker's commands after it subscribed: ``("publish", url, game, rate,
    seconds)`` runs the publisher in this process's loop, beside its subscribers (one agent
    process holding every subscription and writing too: ``--procs 1``); ``"stop"`` sends the
    tally and returns."""
    loop = asyncio.get_running_loop()
    while True:
        command = await loop.run_in_executor(None, conn.recv)
        if command == "stop":
            tally.close()
            conn.send(("result", tally.totals, tally.histogram.tobytes()))
            return
        _, post_url, game, rate, seconds, event_filter = command
        published = await publish(post_url, game, rate, seconds, event_filter=event_filter)
        conn.send(("published", published))


def sse_subscriber_worker(
    conn: Connection,
    stream_url: str,
    topic: str,
    first: int,
    count: int,
    concurrency: int,
    source_address: str | None = None,
    event_filter: str | None = None,
) -> None:
    """:func:`subscriber_worker` over Server-Sent Events (``GET /stream``): the same counts
    and histogram, read from plain HTTP responses with asyncio streams."""
    import uvloop

    raise_fd_limit()
    tally = Tally(contiguous=event_filter is None)
    query = f"topic={topic}" + ("" if event_filter is None else f"&filter={quote(event_filter)}")
    host, port = stream_url.split("//", 1)[1].split("/", 1)[0].split(":")
    readers: list[asyncio.Task[None]] = []

    async def follow(sub_token: str, ready: asyncio.Future[None]) -> None:
        extra = {"local_addr": (source_address, 0)} if source_address else {}
        reader, writer = await asyncio.open_connection(host, int(port), **extra)
        writer.write(
            f"GET /stream?{query}&token={sub_token} HTTP/1.1\r\nHost: {host}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        last_offset = -1
        buffered = b""
        while chunk := await reader.read(65536):
            buffered += chunk
            *events, buffered = buffered.split(b"\n\n")
            for event in events:
                at = event.find(b"data: ")
                if at < 0:
                    continue
                payload = event[at + 6 :]
                if payload.startswith(b'{"type":"rating_update"'):
                    last_offset = tally.update(payload, last_offset)
                elif b"event: subscribed" in event and not ready.done():
                    last_offset = json.loads(payload).get("offset", 0)
                    ready.set_result(None)

    async def run() -> None:
        gate = asyncio.Semaphore(concurrency)
        tokens = [token(f"sub{first + i}") for i in range(count)]
        conn.recv()  # start signal
        started = time.monotonic()
        loop = asyncio.get_running_loop()

        async def one(index: int) -> None:
            async with gate:
                ready: asyncio.Future[None] = loop.create_future()
                readers.append(asyncio.create_task(follow(tokens[index], ready)))
                await asyncio.wait_for(ready, 30)

        await asyncio.gather(*(one(i) for i in range(count)))
        conn.send(("subscribed", time.monotonic() - started))
        await follow_commands(conn, tally)
        for task in readers:
            task.cancel()

    uvloop.run(run())
