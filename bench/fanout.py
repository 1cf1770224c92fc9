"""Fan-out benchmark: N subscribers of one game topic, a publisher writing R ratings/s over
REST, each rating carrying its send time. Reports deliveries/s, losses, send-to-receive
latency and connection rate, for ratewire and, in the same run, for the Node server modelled
on the original guide (bench/peers/guide_server.js).

    python -m bench.fanout --subs 1000 --rate 50 --seconds 10
    ratewire bench fanout --subs 2000 --rate 0 --seconds 10      # 0 = as fast as they go
    python -m bench.fanout --target cluster --procs 3            # cluster mode, PostgreSQL + Redis
    python -m bench.fanout --alternate 5                         # median ratios to the guide
    python -m bench.fanout --alternate 5 --procs 1               # the agent fleet (below)
    python -m bench.fanout --target ratewire,floor --rate 0      # beside the bare picows floor
    python -m bench.fanout --target ratewire-3w --subs 50000 --rate 1 --seconds 5 --procs 6

With ``--procs 1`` one process holds every subscription and makes the writes too, as one
agent process following 1,000 topics does (``--publisher separate`` writes from this process
instead). Every run reports POST latency, the server's and the subscribers' CPU, and the
server's stage budget; ``--py-spy DIR`` profiles the server while it is measured.

Cluster targets (PostgreSQL at RATEWIRE_BENCH_POSTGRES, Redis at RATEWIRE_BENCH_REDIS, NATS with
JetStream at RATEWIRE_BENCH_NATS): pg-local (one instance, local broker), pg-redis (one instance,
Redis broker), cluster-3 (three instances, subscribers spread over them, writes through the
first), workers-2 (`--workers 2`), and pg-nats and cluster-3-nats on the NATS broker
(``--target brokers`` runs the four broker targets in one run).

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
import shutil
import statistics
import subprocess
import sys
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
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
from ratewire.latency import STAGES

BUCKET_NS = 10_000  # 10 us
BUCKETS = 200_000  # up to 2 s; slower goes in the last bucket
SUBS_PER_SOURCE_ADDRESS = 10_000


# -- subscriber workers ---------------------------------------------------------------------------


class Tally:
    """One worker's counts: a latency histogram and the offset checks of its subscribers."""

    def __init__(self) -> None:
        self.histogram = array("q", bytes(8 * BUCKETS))
        self.totals = {"received": 0, "gaps": 0, "duplicates": 0, "max_ns": 0}

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
            elif offset != last_offset + 1:
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
) -> None:
    """Open ``count`` subscribers, report when all are subscribed, record until told to stop.

    ``source_address`` (another address in 127.0.0.0/8) gives this worker its own ephemeral
    port range: one address reaches about 28,000 connections to one server port."""
    import uvloop
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

    raise_fd_limit()
    tally = Tally()
    subscribe = json.dumps({"action": "subscribe", "topic": topic}).encode()

    class Subscriber(WSListener):  # type: ignore[misc]
        def __init__(self) -> None:
            self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.last_offset = -1

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            payload = frame.get_payload_as_bytes()
            if payload.startswith(b'{"type":"rating_update"'):
                self.last_offset = tally.update(payload, self.last_offset)
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
            conn.send(("result", tally.totals, tally.histogram.tobytes()))
            return
        _, post_url, game, rate, seconds = command
        conn.send(("published", await publish(post_url, game, rate, seconds)))


def sse_subscriber_worker(
    conn: Connection,
    stream_url: str,
    topic: str,
    first: int,
    count: int,
    concurrency: int,
    source_address: str | None = None,
) -> None:
    """:func:`subscriber_worker` over Server-Sent Events (``GET /stream``): the same counts
    and histogram, read from plain HTTP responses with asyncio streams."""
    import uvloop

    raise_fd_limit()
    tally = Tally()
    host, port = stream_url.split("//", 1)[1].split("/", 1)[0].split(":")
    readers: list[asyncio.Task[None]] = []

    async def follow(sub_token: str, ready: asyncio.Future[None]) -> None:
        extra = {"local_addr": (source_address, 0)} if source_address else {}
        reader, writer = await asyncio.open_connection(host, int(port), **extra)
        writer.write(
            f"GET /stream?topic={topic}&token={sub_token} HTTP/1.1\r\nHost: {host}\r\n"
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


# -- publisher ------------------------------------------------------------------------------------


@dataclass
class Published:
    """What the publisher saw: writes answered 201, failed, and each POST's round trip."""

    ok: int = 0
    failed: int = 0
    post_ns: list[int] = field(default_factory=list)


async def publish(
    post_url: str, game: str, rate: float, seconds: float, *, timed: bool = True
) -> Published:
    """POST ratings for ``seconds``; at ``rate``/s, or flat out with a few connections. Each
    carries its send time in ``comment`` unless not ``timed`` (a warm-up)."""
    headers = {"Authorization": f"Bearer {token('publisher', 'ratings:write:any')}"}
    stats = Published()
    sent = 0
    run_id = f"{os.getpid()}x{time.time_ns()}"
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30) as http:

        async def one(index: int) -> None:
            sent_at = time.time_ns()
            body = {
                "gameId": game,
                "userId": f"p{run_id}-{index}",
                "score": 1 + index % 5,
                "comment": f"t={sent_at}" if timed else "warm-up",
            }
            try:
                response = await http.post(post_url, json=body)
            except httpx.HTTPError:
                stats.failed += 1
                return
            stats.post_ns.append(time.time_ns() - sent_at)
            if response.status_code == 201:
                stats.ok += 1
            else:
                stats.failed += 1

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
    return stats


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
    #: The publisher's POST round trips (send to answer), over the measured writes.
    post_p50_ms: float = 0.0
    post_p99_ms: float = 0.0
    #: The server's CPU time (user + system, its processes and their children) from the
    #: first measured write until the frames in flight were drained.
    server_cpu_s: float = 0.0
    cpu_ms_per_1000_deliveries: float = 0.0
    #: The same for the subscriber processes (the load generator shares the cores): when it
    #: nears a core's worth, the readers, not the server, set the latency.
    client_cpu_s: float = 0.0
    #: True when the publisher ran inside the (only) subscriber process (``--procs 1``).
    inline_publisher: bool = False
    #: ratewire targets: the server's latency budget over the measured writes (stage ->
    #: count, mean_ms, p50_ms, p99_ms), from /metrics (ratewire.latency).
    budget: dict[str, dict[str, float]] = field(default_factory=dict)


def percentile(histogram: Sequence[int], total: int, fraction: float) -> float:
    wanted, seen = fraction * total, 0
    for bucket, count in enumerate(histogram):
        seen += count
        if seen >= wanted:
            return (bucket + 1) * BUCKET_NS / 1e6
    return float("nan")


BUDGET_SERIES = {
    "ratewire_delivery_stage_seconds": "stage",
    "ratewire_gc_pause_seconds": "generation",
}
Histograms = dict[str, tuple[list[tuple[float, float]], float]]


def scrape_histograms(metrics_url: str) -> Histograms:
    """The budget's histograms on a ratewire server: 'stage' or 'gc<N>' -> (cumulative
    buckets, sum). Empty when the target has no such series (the guide's server)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        answer = httpx.get(metrics_url, timeout=5)
    except httpx.HTTPError:
        return {}
    if answer.status_code != 200 or not answer.headers.get("content-type", "").startswith("text/"):
        return {}
    text = answer.text
    found: dict[str, tuple[list[tuple[float, float]], float]] = {}
    for family in text_string_to_metric_families(text):
        label = BUDGET_SERIES.get(family.name)
        if label is None:
            continue
        for sample in family.samples:
            key = sample.labels.get(label, "")
            if label == "generation":
                key = f"gc{key}"
            buckets, total = found.get(key, ([], 0.0))
            if sample.name.endswith("_bucket"):
                buckets.append((float(sample.labels["le"]), sample.value))
            elif sample.name.endswith("_sum"):
                total = sample.value
            found[key] = (buckets, total)
    return found


def _quantile(buckets: list[tuple[float, float]], fraction: float) -> float:
    """Linear interpolation inside the bucket that holds ``fraction`` of the count."""
    total = buckets[-1][1]
    wanted = fraction * total
    lower_bound = lower_count = 0.0
    for bound, count in buckets:
        if count >= wanted:
            if bound == float("inf"):
                return lower_bound
            share = (wanted - lower_count) / (count - lower_count) if count > lower_count else 0
            return lower_bound + share * (bound - lower_bound)
        lower_bound, lower_count = bound, count
    return lower_bound


def budget_between(before: Histograms, after: Histograms) -> dict[str, dict[str, float]]:
    """Each stage's (and GC generation's) count, mean, p50 and p99 over what happened
    between two scrapes."""
    budget = {}
    for key, (buckets, total) in after.items():
        earlier, earlier_sum = before.get(key, ([], 0.0))
        counts = dict(earlier)
        grown = [(bound, count - counts.get(bound, 0.0)) for bound, count in buckets]
        count = grown[-1][1] if grown else 0.0
        if count <= 0:
            continue
        budget[key] = {
            "count": count,
            "mean_ms": round(1000 * (total - earlier_sum) / count, 3),
            "p50_ms": round(1000 * _quantile(grown, 0.50), 3),
            "p99_ms": round(1000 * _quantile(grown, 0.99), 3),
        }
    return budget


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of ``pids`` so far, with their reaped children's
    (/proc/PID/stat fields 14-17); a process that is gone counts 0."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += sum(int(value) for value in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def _quantile_ns(values: list[int], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] / 1e6, 2)


#: Set by ``--py-spy DIR``: each ratewire run's server is sampled while it is measured.
PROFILE_DIR: Path | None = None
#: Set by ``--publisher``: where the writes come from ("auto": inside the subscriber
#: process when there is one, else from this process).
PUBLISHER = "auto"


def _start_profiler(target: Target, seconds: float) -> subprocess.Popen[bytes] | None:
    """py-spy over the server process (every thread, idle samples too) for ``seconds``;
    its raw stacks go to PROFILE_DIR, one file per run (bench.profiles summarises them)."""
    if PROFILE_DIR is None or target.name == "node-guide":
        return None
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    PROFILE_DIR.mkdir(parents=True, exist_ok=True)
    out = PROFILE_DIR / f"{target.name}-{time.strftime('%H%M%S')}.txt"
    return subprocess.Popen(
        [
            *(py_spy, "record", "--pid", str(target.process.pid), "--threads", "--idle"),
            *("--nonblocking", "--rate", "250", "--format", "raw", "--duration"),
            *(str(max(1, round(seconds))), "--output", str(out)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def run_one(target: Target, subs: int, rate: float, seconds: float, procs: int) -> Result:
    """One measured run. With ``procs`` 1 the publisher runs in the subscriber process, as an
    agent that holds every subscription and writes too would; otherwise in this process."""
    inline = procs == 1 if PUBLISHER == "auto" else PUBLISHER == "inline"
    result = Result(target.name, subs, rate, seconds, inline_publisher=inline and procs == 1)
    game = f"bench{int(time.time() * 1000) % 10**9}"
    topic = f"rating.game.{game}"
    ctx = mp.get_context("spawn")
    workers, pipes = [], []
    per = [subs // procs + (1 if i < subs % procs else 0) for i in range(procs)]
    first = 0
    for count in per:
        parent, child = ctx.Pipe()
        url = target.subscriber_urls[len(workers) % len(target.subscriber_urls)]
        process = ctx.Process(
            target=sse_subscriber_worker if url.startswith("http") else subscriber_worker,
            args=(
                child,
                url,
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
    # Warm-up on the measured topic, so every subscriber receives it: first requests compile
    # statements and fill caches, and the first fan-outs run the Node server's send path
    # through V8's tiers (cold, it took 50-200 ms an event and made the guide's p99). Its
    # writes carry no send time: they are checked for order but not counted.
    asyncio.run(publish(target.post_url, game, 20, 1.0, timed=False))
    metrics_url = target.post_url.rsplit("/", 1)[0] + "/metrics"
    histograms_before = scrape_histograms(metrics_url)
    server_pids = target.pids()
    drain_seconds = min(5.0, 1.0 + subs / 2000)
    profiler = _start_profiler(target, seconds + drain_seconds)
    cpu_before = cpu_seconds(server_pids)
    client_pids = [process.pid for process in workers if process.pid is not None]
    client_cpu_before = cpu_seconds(client_pids)
    started = time.monotonic()
    if result.inline_publisher:
        pipes[0].send(("publish", target.post_url, game, rate, seconds))
        published: Published = pipes[0].recv()[1]
    else:
        published = asyncio.run(publish(target.post_url, game, rate, seconds))
    publish_seconds = time.monotonic() - started
    time.sleep(drain_seconds)  # drain frames still in flight
    if profiler is not None:
        profiler.wait(30)
    result.server_cpu_s = round(cpu_seconds(server_pids) - cpu_before, 3)
    result.client_cpu_s = round(cpu_seconds(client_pids) - client_cpu_before, 3)
    result.writes_ok, result.writes_failed = published.ok, published.failed
    result.post_p50_ms = _quantile_ns(published.post_ns, 0.50)
    result.post_p99_ms = _quantile_ns(published.post_ns, 0.99)
    result.budget = budget_between(histograms_before, scrape_histograms(metrics_url))
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
        result.cpu_ms_per_1000_deliveries = round(1e6 * result.server_cpu_s / result.delivered, 3)
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
        "POST p50/p99",
        "CPU ms/1k",
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
            f"{r.post_p50_ms:.1f}/{r.post_p99_ms:.1f}",
            f"{r.cpu_ms_per_1000_deliveries:.1f}",
            f"{r.connects_per_s:,.0f}",
            f"{r.idle_kib_per_connection:.1f}",
        )
    Console(width=160).print(table)


def print_budget(results: list[Result]) -> None:
    """The server-side latency budget of each ratewire run (stage by stage, and GC)."""
    from rich.console import Console
    from rich.table import Table

    with_budget = [r for r in results if r.budget]
    if not with_budget:
        return
    table = Table(title="latency budget (server side, per event; ms: mean / p50 / p99)")
    table.add_column("stage")
    for r in with_budget:
        table.add_column(r.target, justify="right")
    keys = [k for k in (*STAGES, "gc0", "gc1", "gc2") if any(k in r.budget for r in with_budget)]
    for key in keys:
        cells = []
        for r in with_budget:
            b = r.budget.get(key)
            cells.append(
                "-"
                if b is None
                else f"{b['mean_ms']:.2f} / {b['p50_ms']:.2f} / {b['p99_ms']:.2f}"
                + (f" (x{b['count']:.0f})" if key.startswith("gc") else "")
            )
        table.add_row(key, *cells)
    Console(width=160).print(table)


def _floor() -> Target:
    from bench.ws_impls import start

    target = start("picows")
    target.name = "floor"
    return target


STARTERS: dict[str, Callable[[], Target]] = {
    "ratewire": start_ratewire,
    "ratewire-normal": lambda: start_ratewire(
        env_extra={"RATEWIRE_STORAGE__SQLITE_SYNCHRONOUS": "normal"}, name="ratewire-normal"
    ),
    # No durable store at all (memory): what the pipeline costs without the commit.
    "ratewire-memory": lambda: start_ratewire("memory", "memory://", name="ratewire-memory"),
    "ratewire-2w": lambda: start_ratewire(args=("--workers", "2"), name="ratewire-2w"),
    # Past one process's open-files limit (20,000 here): 50,000 subscribers on one host.
    "ratewire-3w": lambda: start_ratewire(args=("--workers", "3"), name="ratewire-3w"),
    # An earlier checkout's server (RATEWIRE_BENCH_BEFORE_SRC: its src/ directory), for
    # before/after runs in the same rounds.
    "ratewire-before": lambda: start_ratewire(
        name="ratewire-before", source=Path(os.environ["RATEWIRE_BENCH_BEFORE_SRC"])
    ),
    "ratewire-asgi": start_ratewire_asgi,
    # The same server, its subscribers on Server-Sent Events (GET /stream) instead.
    "ratewire-sse": lambda: start_ratewire(name="ratewire-sse").following_streams(),
    "node-guide": start_node_guide,
    # The floor: a bare picows server that fans out each POST at once, with no storage,
    # history or auth beyond the token (bench/ws_impls.py).
    "floor": _floor,
    "pg-local": lambda: start_cluster("pg-local", broker="local"),
    "pg-redis": lambda: start_cluster("pg-redis"),
    "pg-nats": lambda: start_cluster("pg-nats", broker="nats"),
    "cluster-3": lambda: start_cluster("cluster-3", instances=3),
    "cluster-3-nats": lambda: start_cluster("cluster-3-nats", instances=3, broker="nats"),
    "workers-2": lambda: start_cluster("workers-2", workers=2),
    "redis-store": lambda: start_redis_storage("redis-store"),
}


def _measure(name: str, subs: int, rate: float, seconds: float, procs: int) -> Result:
    from rich.console import Console

    with Console(stderr=True).status(
        f"{name}: {subs} subscribers, {'max' if rate == 0 else rate} writes/s, {seconds:g} s"
    ):
        target = STARTERS[name]()
        try:
            return run_one(target, subs, rate, seconds, procs)
        finally:
            target.stop()


def _write_json(json_out: Path, payload: dict[str, object]) -> None:
    json_out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{os.cpu_count()} cores, {os.uname().machine}",
        **payload,
    }
    json_out.write_text(json.dumps(payload, indent=2) + "\n")


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
    raise_fd_limit()
    results = [_measure(name, subs, rate, seconds, procs) for name in targets]
    print_table(results)
    print_budget(results)
    if json_out is not None:
        _write_json(json_out, {"results": [asdict(r) for r in results]})
    return results


@dataclass
class RatioSummary:
    """One target against the guide's server over alternating rounds."""

    target: str
    #: Per round: the target's figure divided by the guide's in the same round.
    p50: list[float]
    p99: list[float]
    deliveries: list[float]
    #: The publisher's POST p50, and server CPU per delivery, against the guide's.
    post_p50: list[float] = field(default_factory=list)
    cpu_per_delivery: list[float] = field(default_factory=list)

    @staticmethod
    def spread(values: list[float]) -> dict[str, float]:
        return {
            "median": round(statistics.median(values), 3),
            "min": round(min(values), 3),
            "max": round(max(values), 3),
        }

    def as_dict(self) -> dict[str, object]:
        return {
            "target": self.target,
            "p50_ratio": {"runs": self.p50, **self.spread(self.p50)},
            "p99_ratio": {"runs": self.p99, **self.spread(self.p99)},
            "deliveries_ratio": {"runs": self.deliveries, **self.spread(self.deliveries)},
            "post_p50_ratio": {"runs": self.post_p50, **self.spread(self.post_p50)},
            "cpu_per_delivery_ratio": {
                "runs": self.cpu_per_delivery,
                **self.spread(self.cpu_per_delivery),
            },
        }


def _ratio(ours: float, guide: float) -> float:
    return round(ours / guide, 3) if guide else float("nan")


def run_alternating(
    subs: int,
    rate: float,
    seconds: float,
    rounds: int,
    *,
    targets: Sequence[str] = ("ratewire", "node-guide"),
    procs: int = 2,
    json_out: Path | None = None,
) -> list[RatioSummary]:
    """``rounds`` rounds of every target, the order rotated each round; each non-guide
    target's p50, p99 and deliveries/s divided by the guide's of the same round. Single runs
    on a shared 2-core machine swing by 2x: the median of these ratios is the figure."""
    from rich.console import Console
    from rich.table import Table

    raise_fd_limit()
    names = list(dict.fromkeys([*targets, "node-guide"]))
    results: list[list[Result]] = []
    for index in range(rounds):
        order = names[index % len(names) :] + names[: index % len(names)]
        by_name = {name: _measure(name, subs, rate, seconds, procs) for name in order}
        results.append([by_name[name] for name in names])
        print_table(results[-1])
    summaries = []
    for position, name in enumerate(names):
        if name == "node-guide":
            continue
        guide_at = names.index("node-guide")
        pairs = [(r[position], r[guide_at]) for r in results]
        summaries.append(
            RatioSummary(
                name,
                [round(ours.p50_ms / guide.p50_ms, 3) for ours, guide in pairs],
                [round(ours.p99_ms / guide.p99_ms, 3) for ours, guide in pairs],
                [round(ours.deliveries_per_s / guide.deliveries_per_s, 3) for ours, guide in pairs],
                [_ratio(ours.post_p50_ms, guide.post_p50_ms) for ours, guide in pairs],
                [
                    _ratio(ours.cpu_ms_per_1000_deliveries, guide.cpu_ms_per_1000_deliveries)
                    for ours, guide in pairs
                ],
            )
        )
    table = Table(
        title=f"{rounds} alternating rounds: ratio to the guide's server (median, min-max)"
    )
    for column in (
        "target",
        "p50 ratio",
        "p99 ratio",
        "deliveries/s ratio",
        "POST p50 ratio",
        "CPU/delivery ratio",
        "lost",
        "gaps/dups",
    ):
        table.add_column(column, justify="right")
    for summary in summaries:
        position = names.index(summary.target)
        runs = [r[position] for r in results]
        cells = []
        for values in (
            summary.p50,
            summary.p99,
            summary.deliveries,
            summary.post_p50,
            summary.cpu_per_delivery,
        ):
            spread = RatioSummary.spread(values)
            cells.append(f"{spread['median']:.2f} ({spread['min']:.2f}-{spread['max']:.2f})")
        table.add_row(
            summary.target,
            *cells,
            str(sum(r.lost for r in runs)),
            f"{sum(r.gaps for r in runs)}/{sum(r.duplicates for r in runs)}",
        )
    Console(width=160).print(table)
    print_budget([r for round_results in results for r in round_results][: len(names)])
    if json_out is not None:
        _write_json(
            json_out,
            {
                "subs": subs,
                "rate": rate,
                "seconds": seconds,
                "rounds": [[asdict(r) for r in round_results] for round_results in results],
                "ratios": [summary.as_dict() for summary in summaries],
            },
        )
    return summaries


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subs", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50, help="writes/s; 0 = as fast as they go")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--procs", type=int, default=2, help="subscriber processes")
    presets: dict[str, tuple[str, ...]] = {
        "both": ("ratewire", "node-guide"),
        "all": ("ratewire", "ratewire-asgi", "node-guide"),
        # The embedded default three ways (synchronous full and normal, two workers) and the
        # guide's server.
        "embedded": ("ratewire", "ratewire-normal", "ratewire-2w", "node-guide"),
        # Cluster mode against its single-node baselines, on PostgreSQL, in one run.
        "cluster": ("pg-local", "pg-redis", "cluster-3", "workers-2"),
        # The two cluster brokers side by side, one instance and three.
        "brokers": ("pg-redis", "pg-nats", "cluster-3", "cluster-3-nats"),
        # WebSockets and Server-Sent Events on one server build, in one run.
        "transports": ("ratewire", "ratewire-sse"),
        # The storage backends, single node: SQLite (the default) and Redis.
        "storage": ("ratewire", "redis-store"),
    }
    parser.add_argument(
        "--target",
        default="both",
        help=f"a target ({', '.join(STARTERS)}), a comma-separated list of them, or a preset "
        f"({', '.join(presets)})",
    )
    parser.add_argument(
        "--alternate",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="run the targets and the guide's server ROUNDS times, alternating, and report the "
        "median and spread of each ratio to the guide (5 is what the README's figures use)",
    )
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument(
        "--publisher",
        choices=("auto", "inline", "separate"),
        default="auto",
        help="where the writes are made: inline (in the one subscriber process, as an agent "
        "that holds every subscription and writes too), separate (this process); auto: inline "
        "with --procs 1",
    )
    parser.add_argument(
        "--py-spy",
        type=Path,
        default=None,
        metavar="DIR",
        help="sample each ratewire server with py-spy while it is measured; raw stacks to DIR "
        "(python -m bench.profiles DIR/*.txt summarises them)",
    )
    args = parser.parse_args(argv)
    global PROFILE_DIR, PUBLISHER
    PROFILE_DIR, PUBLISHER = args.py_spy, args.publisher
    targets = presets.get(args.target) or tuple(args.target.split(","))
    unknown = [name for name in targets if name not in STARTERS]
    if unknown:
        parser.error(f"--target: unknown target {', '.join(unknown)}")
    if args.alternate:
        run_alternating(
            args.subs,
            args.rate,
            args.seconds,
            args.alternate,
            targets=targets,
            procs=args.procs,
            json_out=args.json_out,
        )
        return
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
