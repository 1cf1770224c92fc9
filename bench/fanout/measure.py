"""One measured run against a started target: subscribers spread over worker processes, a
warm-up, the timed writes, the drain, and the counts merged into a :class:`Result`."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.fanout.budget import budget_between, scrape_histograms
from bench.fanout.publisher import Published, publish
from bench.fanout.subscribers import (
    BUCKET_NS,
    BUCKETS,
    sse_subscriber_worker,
    subscriber_worker,
)
from bench.servers import Target, rss_bytes

SUBS_PER_SOURCE_ADDRESS = 10_000


@dataclass
class Result:
    target: str
    subs: int
    rate: float
    seconds: float
    #: The CEL filter every subscriber held (ratewire targets; None: unfiltered).
    filter: str | None = None
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
    #: Server CPU per write (each write is one event): compares filtered and unfiltered runs.
    server_cpu_ms_per_write: float = 0.0
    #: The same for the subscriber processes (the load generator shares the cores): when it
    #: nears a core's worth, the readers, not the server, set the latency.
    client_cpu_s: float = 0.0
    #: True when the publisher ran inside the (only) subscriber process (``--procs 1``).
    inline_publisher: bool = False
    #: ``plain`` (every rating_update) or ``summary`` (``--summary``: summary.game.{id}
    #: conflated to ``interval_ms``; ``delivered`` counts summary frames, none are "lost"),
    #: or ``idle`` (``--summary``'s baseline: subscribed to another game, nothing delivered).
    load: str = "plain"
    interval_ms: int = 0
    #: The server's CPU per measured write (what ``--summary`` compares between the loads).
    server_cpu_ms_per_write: float = 0.0
    #: ``--summary``: subscribers whose last state did not include the last write (the
    #: trailing edge of the run left out: must be 0).
    summaries_behind: int = 0
    #: ratewire targets: the server's latency budget over the measured writes (stage ->
    #: count, mean_ms, p50_ms, p99_ms), from /metrics (ratewire.observability.latency).
    budget: dict[str, dict[str, float]] = field(default_factory=dict)


def percentile(histogram: Sequence[int], total: int, fraction: float) -> float:
    wanted, seen = fraction * total, 0
    for bucket, count in enumerate(histogram):
        seen += count
        if seen >= wanted:
            return (bucket + 1) * BUCKET_NS / 1e6
    return float("nan")


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


def summary_drain_seconds(subs: int, interval_ms: int = 0) -> float:
    """How long after the last write a run waits for the frames in flight (and counts the
    server's CPU): with summaries, the trailing edge comes up to an interval later."""
    drain = min(5.0, 1.0 + subs / 2000)
    return max(drain, 2 * interval_ms / 1000 + 0.5) if interval_ms else drain


def _quantile_ns(values: list[int], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] / 1e6, 2)


def _start_profiler(
    target: Target, seconds: float, profile_dir: Path | None
) -> subprocess.Popen[bytes] | None:
    """py-spy over the server process (every thread, idle samples too) for ``seconds``;
    its raw stacks go to ``profile_dir``, one file per run (bench.profiles summarises them)."""
    if profile_dir is None or target.name == "node-guide":
        return None
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    profile_dir.mkdir(parents=True, exist_ok=True)
    out = profile_dir / f"{target.name}-{time.strftime('%H%M%S')}.txt"
    return subprocess.Popen(
        [
            *(py_spy, "record", "--pid", str(target.process.pid), "--threads", "--idle"),
            *("--nonblocking", "--rate", "250", "--format", "raw", "--duration"),
            *(str(max(1, round(seconds))), "--output", str(out)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def run_one(
    target: Target,
    subs: int,
    rate: float,
    seconds: float,
    procs: int,
    *,
    publisher: str = "auto",
    profile_dir: Path | None = None,
    event_filter: str | None = None,
    interval_ms: int = 0,
    idle: bool = False,
    drain_seconds: float | None = None,
) -> Result:
    """One measured run. With ``procs`` 1 the publisher runs in the subscriber process, as an
    agent that holds every subscription and writes too would; otherwise in this process.
    ``interval_ms`` (``--summary``): the subscribers follow ``summary.game.{id}`` at that pace
    instead of the game's every update. ``idle``: they follow another game, so the server
    pays for the writes and the open connections only (the baseline ``--summary`` subtracts).

    ``publisher`` (``--publisher``): where the writes come from ("auto": inside the
    subscriber process when there is one, else from this process). ``profile_dir``
    (``--py-spy DIR``): the server is sampled while it is measured."""
    inline = procs == 1 if publisher == "auto" else publisher == "inline"
    if target.name == "node-guide":
        event_filter = None  # the guide's server has no filters: it is the unfiltered baseline
    result = Result(
        target.name, subs, rate, seconds, event_filter, inline_publisher=inline and procs == 1
    )
    game = f"bench{int(time.time() * 1000) % 10**9}"
    topic = f"rating.game.{game}"
    if interval_ms:
        topic, result.load, result.interval_ms = f"summary.game.{game}", "summary", interval_ms
    elif idle:
        topic, result.load = f"rating.game.{game}x", "idle"
    ctx = mp.get_context("spawn")
    workers, pipes = [], []
    per = [subs // procs + (1 if i < subs % procs else 0) for i in range(procs)]
    first = 0
    for count in per:
        parent, child = ctx.Pipe()
        url = target.subscriber_urls[len(workers) % len(target.subscriber_urls)]
        if interval_ms and url.startswith("http"):
            raise ValueError(f"{target.name}: --summary needs WebSocket subscribers, not SSE")
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
                event_filter,
                *((interval_ms,) if interval_ms else ()),
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
    if drain_seconds is None:
        drain_seconds = summary_drain_seconds(subs, interval_ms)
    profiler = _start_profiler(target, seconds + drain_seconds, profile_dir)
    cpu_before = cpu_seconds(server_pids)
    client_pids = [process.pid for process in workers if process.pid is not None]
    client_cpu_before = cpu_seconds(client_pids)
    started = time.monotonic()
    if result.inline_publisher:
        pipes[0].send(("publish", target.post_url, game, rate, seconds, event_filter))
        published: Published = pipes[0].recv()[1]
    else:
        published = asyncio.run(
            publish(target.post_url, game, rate, seconds, event_filter=event_filter)
        )
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
    last_summaries: list[int] = []
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
        result.delivered += totals["summaries"]
        last_summaries.extend(totals.get("last_summaries", ()))
    for process in workers:
        process.join(10)
    if result.writes_ok:
        result.server_cpu_ms_per_write = round(1e3 * result.server_cpu_s / result.writes_ok, 3)
    if interval_ms:
        head = _game_offset(target.post_url, game)
        behind = sum(1 for offset in last_summaries if offset < head)
        result.summaries_behind = behind + subs - len(last_summaries)  # none at all: behind
        result.deliveries_per_s = round(result.delivered / publish_seconds, 1)
        return result
    if idle:
        return result  # nothing is for these subscribers: the cost of the writes alone
    result.expected = published.passing * subs
    result.lost = result.expected - result.delivered
    result.deliveries_per_s = round(result.delivered / publish_seconds, 1)
    if result.delivered:
        result.cpu_ms_per_1000_deliveries = round(1e6 * result.server_cpu_s / result.delivered, 3)
    if result.delivered:
        result.p50_ms = percentile(merged, result.delivered, 0.50)
        result.p99_ms = percentile(merged, result.delivered, 0.99)
    return result


def _game_offset(post_url: str, game: str) -> int:
    """The game topic's last offset, from the summary's ETag (``"<epoch>-<offset>"``)."""
    import urllib.request

    base = post_url.rsplit("/", 1)[0]
    with urllib.request.urlopen(f"{base}/games/{game}/summary", timeout=10) as answer:
        etag = answer.headers.get("ETag", '"-0"')
    return int(etag.strip('"').rsplit("-", 1)[1])
