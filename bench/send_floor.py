"""The floor under a fan-out: what one socket write costs on this machine, with nothing of
ratewire around it. A picows server holds N connections from one reader process and writes
one ~300-byte frame to each, the way the hub does, three ways:

- ``picows``: ``transport.send(TEXT, payload)`` (what the hub calls per delivery),
- ``transport``: the pre-framed bytes to uvloop's transport (``underlying_transport.write``),
- ``os.write``: the pre-framed bytes straight to the socket's descriptor, no checks,

against two readers: ``raw`` (recv() into a buffer, nothing parsed) and ``picows`` (a picows
client with a Python callback per frame, like bench.fanout's subscribers). Reported: the
median and p90 per write over many rounds, the ways in a rotating order.

What it showed here (2026-12-03): 4-8 us a write whichever way, and the spread between the
ways (up to 2x) moved from run to run with the order and the reader's state more than with
the way: the loopback write and the reader's wake-up are the cost, not the Python path to
them. An ``os.write`` path guarded by the checks that make it safe (nothing queued, not
closing, no close frame sent) measured 5.6-8.9 us against picows' 7.8-8.0 in the same runs,
so the hub keeps picows' send.

    python -m bench.send_floor --subs 1000 --rounds 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import select
import socket
import statistics
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

PAYLOAD = (
    b'{"type":"rating_update","topic":"rating.game.floor","offset":1,"event":"created",'
    b'"data":{"id":"r_01JFLOOR","gameId":"floor","userId":"7","score":4,"comment":"'
    + b"x" * 150
    + b'","version":1}}'
)


def raw_reader(port: int, count: int, ready: Connection) -> None:
    """``count`` WebSocket connections that read and discard whatever arrives."""
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        sock.setblocking(False)
        sockets.append(sock)
    poller = select.epoll()
    by_fd = {sock.fileno(): sock for sock in sockets}
    for fd in by_fd:
        poller.register(fd, select.EPOLLIN)
    ready.send("ready")
    buffer = bytearray(65536)
    while True:
        for fd, _ in poller.poll():
            try:
                if not by_fd[fd].recv_into(buffer):
                    return
            except BlockingIOError:
                continue
            except OSError:
                return


def picows_reader(port: int, count: int, ready: Connection) -> None:
    """``count`` picows clients, each with a Python callback per frame."""
    import uvloop
    from picows import WSListener, ws_connect

    class Reader(WSListener):  # type: ignore[misc]
        frames = 0

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            Reader.frames += len(frame.get_payload_as_bytes())

    async def run() -> None:
        kept = [await ws_connect(Reader, f"ws://127.0.0.1:{port}/") for _ in range(count)]
        ready.send("ready")
        await asyncio.sleep(3600)
        del kept

    uvloop.run(run())


async def measure(subs: int, rounds: int, reader: str) -> dict[str, dict[str, float]]:
    from picows import WSListener, WSMsgType, ws_create_server

    from ratewire.realtime.frames import websocket_text

    peers: list[Any] = []

    class Peer(WSListener):  # type: ignore[misc]
        def on_ws_connected(self, transport: Any) -> None:
            peers.append(transport)

    server = await ws_create_server(lambda _request: Peer(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    parent, child = mp.get_context("spawn").Pipe()
    target = raw_reader if reader == "raw" else picows_reader
    process = mp.get_context("spawn").Process(target=target, args=(port, subs, child))
    process.start()
    await asyncio.get_running_loop().run_in_executor(None, parent.recv)
    while len(peers) < subs:  # noqa: ASYNC110 (picows calls back; nothing to wait on)
        await asyncio.sleep(0.05)
    framed = websocket_text(PAYLOAD)
    sends = [transport.send for transport in peers]
    writes = [transport.underlying_transport.write for transport in peers]
    fds = [transport.underlying_transport.get_extra_info("socket").fileno() for transport in peers]
    write = os.write
    results: dict[str, list[float]] = {
        "picows": [],
        "transport": [],
        "os.write": [],
    }
    try:
        ways = list(results)
        for round_index in range(rounds):
            # Every way in every round, in a rotating order: each sees the same machine,
            # and none always comes first after the pause.
            shift = round_index % len(ways)
            for way in ways[shift:] + ways[:shift]:
                started = time.perf_counter()
                if way == "picows":
                    for send in sends:
                        send(WSMsgType.TEXT, PAYLOAD)
                elif way == "transport":
                    for transport_write in writes:
                        transport_write(framed)
                else:
                    for fd in fds:
                        write(fd, framed)
                results[way].append((time.perf_counter() - started) / subs)
                await asyncio.sleep(0.02)  # what 50 writes/s leave between two events
    finally:
        process.kill()
        server.close()
    return {
        way: {
            "p50_us": round(statistics.median(values) * 1e6, 2),
            "p90_us": round(sorted(values)[int(0.9 * len(values))] * 1e6, 2),
        }
        for way, values in results.items()
    }


def main(argv: Sequence[str] | None = None) -> None:
    import uvloop
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    found = {
        reader: uvloop.run(measure(args.subs, args.rounds, reader)) for reader in ("raw", "picows")
    }
    table = Table(title=f"one socket write, {args.subs} connections (us: p50 / p90)")
    table.add_column("reader")
    for way in ("picows", "transport", "os.write"):
        table.add_column(way, justify="right")
    for reader, ways in found.items():
        table.add_row(reader, *(f"{w['p50_us']:.2f} / {w['p90_us']:.2f}" for w in ways.values()))
    Console().print(table)
    if args.json_out is not None:
        args.json_out.write_text(
            json.dumps(
                {
                    "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                    "subs": args.subs,
                    "results": found,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
