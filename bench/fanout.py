"""Fan-out benchmark: N subscribers of one game topic, a publisher writing R ratings/s over
REST, each rating carrying its send time. Reports deliveries/s, losses, send-to-receive
latency and connection rate, for ratewire and, in the same run, for the Node server modelled
on the original guide (bench/peers/guide_server.js).

    python -m bench.fanout --subs 1000 --rate 50 --seconds 10
    ratewire bench fanout --subs 2000 --rate 0 --seconds 10      # 0 = as fast as they go
    python -m bench.fanout --target cluster --procs 3            # cluster mode, PostgreSQL + Redis

Cluster targets (PostgreSQL at RATEWIRE_BENCH_POSTGRES, Redis at RATEWIRE_BENCH_REDIS): pg-local
(one instance, local broker), pg-redis (one instance, Redis broker), cluster-3 (three instances,
subscribers spread over them, writes through the first) and workers-2 (`--workers 2`).

Subscribers are spread over worker processes (picows clients: the load generator shares
this 2-core machine with the server, so it must be cheap); each worker keeps a latency
histogram (10 us buckets) and per-connection offset checks, and the parent merges them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import time
from array import array
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import httpx

from bench.servers import (
    Target,
    raise_fd_limit,
    rss_bytes,
    start_cluster,
    start_node_guide,
    start_ratewire,
    start_ratewire_asgi,
    start_redis_storage,
    token,
)

BUCKET_NS = 10_000  # 10 us
BUCKETS = 200_000  # up to 2 s; slower goes in the last bucket
SUBS_PER_SOURCE_ADDRESS = 10_000


# -- subscriber workers ---------------------------------------------------------------------------


def subscriber_worker(
    conn: Connection,
    ws_url: str,
    topic: str,
    first: int,
    count: int,
    concurrency: int,
    source_address: str | None = None,
) -> None:
    """Open ``count`` subscribers, report when all are subscribed, record until told to stop.

    ``source_address`` (another address in 127.0.0.0/8) gives this worker its own ephemeral
    port range: one address reaches about 28,000 connections to one server port."""
    import uvloop
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

    raise_fd_limit()
    histogram = array("q", bytes(8 * BUCKETS))
    totals = {"received": 0, "gaps": 0, "duplicates": 0, "max_ns": 0}
    subscribe = json.dumps({"action": "subscribe", "topic": topic}).encode()

    class Subscriber(WSListener):  # type: ignore[misc]
        def __init__(self) -> None:
            self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.last_offset = -1

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            payload = frame.get_payload_as_bytes()
            if payload.startswith(b'{"type":"rating_update"'):
                now = time.time_ns()
                start = payload.find(b"t=") + 2
                latency = now - int(payload[start : payload.find(b'"', start)])
                histogram[min(BUCKETS - 1, max(0, latency // BUCKET_NS))] += 1
                totals["received"] += 1
                totals["max_ns"] = max(totals["max_ns"], latency)
                at = payload.find(b'"offset":') + 9
                offset = int(payload[at : payload.find(b",", at)])
                if self.last_offset >= 0:
                    if offset <= self.last_offset:
                        totals["duplicates"] += 1
                    elif offset != self.last_offset + 1:
                        totals["gaps"] += offset - self.last_offset - 1
                self.last_offset = offset
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
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, conn.recv)  # stop signal
        conn.send(("result", totals, histogram.tobytes()))
        for transport in transports:
            transport.disconnect()

    uvloop.run(run())


# -- publisher ------------------------------------------------------------------------------------


async def publish(post_url: str, game: str, rate: float, seconds: float) -> tuple[int, int]:
    """POST ratings for ``seconds``; at ``rate``/s, or flat out with a few connections."""
    headers = {"Authorization": f"Bearer {token('publisher', 'ratings:write:any')}"}
    ok = failed = 0
    sent = 0
    run_id = f"{os.getpid()}x{int(time.time())}"
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30) as http:

        async def one(index: int) -> None:
            nonlocal ok, failed
            body = {
                "gameId": game,
                "userId": f"p{run_id}-{index}",
                "score": 1 + index % 5,
                "comment": f"t={time.time_ns()}",
            }
            try:
                response = await http.post(post_url, json=body)
                ok, failed = (ok + 1, failed) if response.status_code == 201 else (ok, failed + 1)
            except httpx.HTTPError:
                failed += 1

        if rate > 0:
            tasks = []
            start = time.monotonic()
            while time.monotonic() < deadline:
                tasks.append(asyncio.create_task(one(sent)))
                sent += 1
                await asyncio.sleep(max(0.0, start + sent / rate - time.monotonic()))
            await asyncio.gather(*tasks)
        else:

            async def lane(lane_index: int) -> None:
                index = lane_index
                while time.monotonic() < deadline:
                    await one(index)
                    index += 8

            await asyncio.gather(*(lane(i) for i in range(8)))
    return ok, failed


# -- one run --------------------------------------------------------------------------------------


@dataclass
class Result:
    target: str
    subs: int
    rate: float
    seconds: float
    writes_ok: int = 0
    writes_failed: int = 0
    expected: int = 0
    delivered: int = 0
    lost: int = 0
    gaps: int = 0
    duplicates: int = 0
    deliveries_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    connects_per_s: float = 0.0
    idle_kib_per_connection: float = 0.0


def percentile(histogram: Sequence[int], total: int, fraction: float) -> float:
    wanted, seen = fraction * total, 0
    for bucket, count in enumerate(histogram):
        seen += count
        if seen >= wanted:
            return (bucket + 1) * BUCKET_NS / 1e6
    return float("nan")


def run_one(target: Target, subs: int, rate: float, seconds: float, procs: int) -> Result:
    result = Result(target.name, subs, rate, seconds)
    game = f"bench{int(time.time() * 1000) % 10**9}"
    topic = f"rating.game.{game}"
    ctx = mp.get_context("spawn")
    workers, pipes = [], []
    per = [subs // procs + (1 if i < subs % procs else 0) for i in range(procs)]
    first = 0
    for count in per:
        parent, child = ctx.Pipe()
        process = ctx.Process(
            target=subscriber_worker,
            args=(
                child,
                target.subscriber_urls[len(workers) % len(target.subscriber_urls)],
                topic,
                first,
                count,
                max(1, 200 // procs),
                # Past one address's ports: each worker connects from its own address.
                f"127.0.0.{2 + len(workers)}" if subs > SUBS_PER_SOURCE_ADDRESS else None,
            ),
            daemon=True,
        )
        process.start()
        workers.append(process)
        pipes.append(parent)
        first += count
    rss_before = sum(rss_bytes(pid) for pid in target.pids())
    for pipe in pipes:
        pipe.send("start")
    elapsed = max(pipe.recv()[1] for pipe in pipes)
    result.connects_per_s = round(subs / elapsed, 1)
    time.sleep(1.0)
    result.idle_kib_per_connection = round(
        (sum(rss_bytes(pid) for pid in target.pids()) - rss_before) / subs / 1024, 2
    )
    # Warm-up on another game: first requests compile statements and fill caches.
    asyncio.run(publish(target.post_url, f"warmup{game}", 20, 1.0))
    started = time.monotonic()
    result.writes_ok, result.writes_failed = asyncio.run(
        publish(target.post_url, game, rate, seconds)
    )
    publish_seconds = time.monotonic() - started
    time.sleep(min(5.0, 1.0 + subs / 2000))  # drain frames still in flight
    merged = array("q", bytes(8 * BUCKETS))
    for pipe in pipes:
        pipe.send("stop")
        _, totals, raw = pipe.recv()
        part = array("q")
        part.frombytes(raw)
        for bucket, count in enumerate(part):
            if count:
                merged[bucket] += count
        result.delivered += totals["received"]
        result.gaps += totals["gaps"]
        result.duplicates += totals["duplicates"]
        result.max_ms = max(result.max_ms, round(totals["max_ns"] / 1e6, 2))
    for process in workers:
        process.join(10)
    result.expected = result.writes_ok * subs
    result.lost = result.expected - result.delivered
    result.deliveries_per_s = round(result.delivered / publish_seconds, 1)
    if result.delivered:
        result.p50_ms = percentile(merged, result.delivered, 0.50)
        result.p99_ms = percentile(merged, result.delivered, 0.99)
    return result


def print_table(results: list[Result]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="fan-out (one game topic; send-to-receive latency)")
    for column in (
        "target",
        "subs",
        "rate/s",
        "writes",
        "delivered",
        "lost",
        "gaps/dups",
        "deliveries/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "conn/s",
        "KiB/idle conn",
    ):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(
            r.target,
            str(r.subs),
            "max" if r.rate == 0 else f"{r.rate:g}",
            str(r.writes_ok),
            str(r.delivered),
            str(r.lost),
            f"{r.gaps}/{r.duplicates}",
            f"{r.deliveries_per_s:,.0f}",
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            f"{r.max_ms:.1f}",
            f"{r.connects_per_s:,.0f}",
            f"{r.idle_kib_per_connection:.1f}",
        )
    Console(width=160).print(table)


def run_fanout(
    subs: int,
    rate: float,
    seconds: float,
    *,
    targets: Sequence[str] = ("ratewire", "node-guide"),
    procs: int = 2,
    json_out: Path | None = None,
) -> list[Result]:
    """Run the benchmark against each target in turn (same machine, same run) and report."""
    from rich.console import Console

    raise_fd_limit()
    console = Console(stderr=True)
    starters = {
        "ratewire": start_ratewire,
        "ratewire-asgi": start_ratewire_asgi,
        "node-guide": start_node_guide,
        "pg-local": lambda: start_cluster("pg-local", broker="local"),
        "pg-redis": lambda: start_cluster("pg-redis"),
        "cluster-3": lambda: start_cluster("cluster-3", instances=3),
        "workers-2": lambda: start_cluster("workers-2", workers=2),
        "redis-store": lambda: start_redis_storage("redis-store"),
    }
    results = []
    for name in targets:
        with console.status(
            f"{name}: {subs} subscribers, {'max' if rate == 0 else rate} writes/s, {seconds:g} s"
        ):
            target = starters[name]()
            try:
                results.append(run_one(target, subs, rate, seconds, procs))
            finally:
                target.stop()
    print_table(results)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": f"{os.cpu_count()} cores, {os.uname().machine}",
            "results": [asdict(r) for r in results],
        }
        json_out.write_text(json.dumps(payload, indent=2))
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subs", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50, help="writes/s; 0 = as fast as they go")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--procs", type=int, default=2, help="subscriber processes")
    parser.add_argument(
        "--target",
        choices=[
            "ratewire",
            "ratewire-asgi",
            "node-guide",
            "both",
            "all",
            "pg-local",
            "pg-redis",
            "cluster-3",
            "workers-2",
            "cluster",
            "redis-store",
            "storage",
        ],
        default="both",
    )
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    targets = {
        "both": ("ratewire", "node-guide"),
        "all": ("ratewire", "ratewire-asgi", "node-guide"),
        # Cluster mode against its single-node baselines, on PostgreSQL, in one run.
        "cluster": ("pg-local", "pg-redis", "cluster-3", "workers-2"),
        # The storage backends, single node: SQLite (the default) and Redis.
        "storage": ("ratewire", "redis-store"),
    }.get(args.target, (args.target,))
    run_fanout(
        args.subs,
        args.rate,
        args.seconds,
        targets=targets,
        procs=args.procs,
        json_out=args.json_out,
    )


if __name__ == "__main__":
    main()
