"""One measured run: a server of its own, the members (a process each), a warm-up, the timed
writes with progress and a member SIGKILLed on the way, the drain until the consumer has acked
the topic's head, and the ledgers counted into a :class:`Result`."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx

from bench.consumers.ledger import MemberLedger, count, quantile_ms
from bench.consumers.members import member_worker
from bench.fanout.measure import cpu_seconds
from bench.fanout.publisher import Published, publish
from bench.servers import Target, _fresh_postgres, start_ratewire, token

#: Writes in flight at most (and HTTP connections): an open-loop publisher with thousands of
#: waiting tasks on 8 connections collapsed to 80-94 writes/s while the server, closed-loop,
#: took over 1,000 with the same consumer (docs/benchmarks.md, 2026-12-08).
PUBLISHER_CONNECTIONS = 32

TOPIC = "rating.global"
CONSUMER = "bench"
#: Every member is this token ``sub``: members of one consumer share its owner.
OWNER = "bench-consumers"
#: Writes a second for a second before the measured ones.
WARM_UP_WRITES = 20


@dataclass
class Settings:
    """What a run is asked to do (the command line's options)."""

    writes_per_s: float = 500
    members: int = 4
    seconds: float = 20
    #: When the first member is SIGKILLed, in seconds into the writes; None: no member is.
    kill_at: float | None = 10
    #: How long member 0 hangs (SIGSTOP: reads and acks nothing, its socket stays open)
    #: before the SIGKILL, so it dies holding events (0: a plain SIGKILL).
    hang_ms: int = 200
    ack_wait_ms: int = 30_000
    max_in_flight: int = 100
    ack_every_ms: int = 100
    backend: str = "sqlite"


@dataclass
class Kill:
    """When member 0 hung and when it was SIGKILLed (ns since the epoch; 0: it was not)."""

    hung_ns: int = 0
    killed_ns: int = 0


@dataclass
class Result:
    settings: Settings
    writes_ok: int = 0
    writes_failed: int = 0
    #: The POSTs' round trips (send to answer): when they grow, the writes, not the
    #: consumer, set the latency from send time.
    post_p50_ms: float = 0.0
    post_p99_ms: float = 0.0
    #: Untimed writes before the measured ones (their events are the consumer's too).
    warm_up_writes: int = 0
    #: The consumer at the end, as the server reports it (GET /consumers/{name}).
    ack_floor: int = 0
    head: int = 0
    pending: int = 0
    #: Whether the consumer caught up with the topic's head before the drain's deadline.
    drained: bool = False
    drain_seconds: float = 0.0
    #: Distinct offsets acked per second, first measured write to the last confirmed ack.
    acked_per_s: float = 0.0
    server_cpu_s: float = 0.0
    server_cpu_ms_per_event: float = 0.0
    client_cpu_s: float = 0.0
    #: The machine's 1-minute load average as the run began (others share these 2 cores).
    load_average: float = 0.0
    counts: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def start_server(backend: str) -> Target:
    """ratewire on ``backend`` (a fresh database of its own), limits per IP and per user
    lifted through its configuration (bench.servers); the message rate limit is left alone."""
    if backend == "sqlite":
        return start_ratewire()
    url, drop = _fresh_postgres()
    try:
        target = start_ratewire("postgresql", url, name="ratewire-postgresql")
    except BaseException:
        drop()
        raise
    target.cleanup.append(drop)
    return target


def _start_members(
    target: Target, settings: Settings, workdir: Path
) -> tuple[list[mp.process.BaseProcess], list[Connection], list[Path]]:
    ctx = mp.get_context("spawn")
    processes: list[mp.process.BaseProcess] = []
    pipes, ledgers = [], []
    joined = {"ackWaitMs": settings.ack_wait_ms, "maxInFlight": settings.max_in_flight}
    for index in range(settings.members):
        parent, child = ctx.Pipe()
        ledger = workdir / f"member-{index}.ledger"
        process = ctx.Process(
            target=member_worker,
            args=(
                *(child, target.ws_url, token(OWNER), TOPIC, CONSUMER, joined),
                *(settings.ack_every_ms, ledger),
            ),
            daemon=True,
        )
        process.start()
        deadline = time.monotonic() + 60
        while not parent.poll(0.2):
            if not process.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"member {index} did not join (ledger: {ledger.read_text()})")
        parent.recv()
        processes.append(process)
        pipes.append(parent)
        ledgers.append(ledger)
    return processes, pipes, ledgers


async def _status(http: httpx.AsyncClient) -> dict[str, Any]:
    answer = await http.get(f"/consumers/{CONSUMER}", params={"topic": TOPIC})
    answer.raise_for_status()
    found: dict[str, Any] = answer.json()
    return found


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def _measure(
    target: Target, settings: Settings, victim_pid: int | None
) -> tuple[Published, int, Kill, dict[str, Any], float]:
    """The timed writes with a progress line a second and the kill; then the drain. Returns
    what was published, the first write's time (ns), when member 0 hung and died, the
    consumer's last status and how long the drain took."""
    base = target.post_url.rsplit("/", 1)[0]
    headers = {"Authorization": f"Bearer {token(OWNER)}"}
    game = f"consumers{int(time.time() * 1000) % 10**9}"
    kill = Kill()

    async def kill_member_0() -> None:
        assert victim_pid is not None and settings.kill_at is not None
        await asyncio.sleep(max(0.0, started + settings.kill_at - time.monotonic()))
        if settings.hang_ms:
            os.kill(victim_pid, signal.SIGSTOP)
            kill.hung_ns = time.time_ns()
            await asyncio.sleep(settings.hang_ms / 1000)
        os.kill(victim_pid, signal.SIGKILL)
        kill.killed_ns = time.time_ns()
        _say(f"{time.monotonic() - started:6.1f} s  member 0 SIGKILLed")

    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=10) as http:
        started_ns, started = time.time_ns(), time.monotonic()
        writes = asyncio.create_task(
            publish(
                *(target.post_url, game, settings.writes_per_s, settings.seconds),
                connections=PUBLISHER_CONNECTIONS,
                most_in_flight=PUBLISHER_CONNECTIONS,
            )
        )
        killer = asyncio.create_task(kill_member_0()) if victim_pid else None
        while not writes.done():
            await asyncio.wait({writes}, timeout=1.0)
            status = await _status(http)
            head = status["ackFloor"] + status["lag"]
            _say(
                f"{time.monotonic() - started:6.1f} s  head {head:>7,}  "
                f"ackFloor {status['ackFloor']:>7,}  lag {status['lag']:>5,}  "
                f"pending {status['pending']:>4}  members {status['members']}"
            )
        if killer is not None:
            await killer
        published = writes.result()
        drained_at = time.monotonic()
        deadline = drained_at + settings.ack_wait_ms / 1000 + 15
        status = await _status(http)
        while (status["lag"] or status["pending"]) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            status = await _status(http)
        drain = time.monotonic() - drained_at
        _say(f"drained in {drain:.2f} s: lag {status['lag']}, pending {status['pending']}")
    return published, started_ns, kill, status, drain


def _stop_members(processes: list[mp.process.BaseProcess], pipes: list[Connection]) -> None:
    for process, pipe in zip(processes, pipes, strict=True):
        if process.is_alive():
            pipe.send("stop")
    for process, pipe in zip(processes, pipes, strict=True):
        if process.is_alive() and pipe.poll(20):
            pipe.recv()
        process.join(10)
        if process.is_alive():
            process.kill()


def run_one(settings: Settings) -> Result:
    """One run against a server started for it, stopped after."""
    result = Result(settings, load_average=os.getloadavg()[0])
    target = start_server(settings.backend)
    workdir = Path(tempfile.mkdtemp(prefix="bench-consumers-"))
    processes: list[mp.process.BaseProcess] = []
    pipes: list[Connection] = []
    try:
        processes, pipes, paths = _start_members(target, settings, workdir)
        # First requests compile statements and fill caches; these events are the consumer's
        # too (acked and counted, not timed).
        warm_up = asyncio.run(
            publish(target.post_url, "consumers-warm-up", WARM_UP_WRITES, 1.0, timed=False)
        )
        result.warm_up_writes = warm_up.ok
        server_pids = target.pids()
        client_pids = [p.pid for p in processes if p.pid is not None]
        cpu_before, client_before = cpu_seconds(server_pids), cpu_seconds(client_pids)
        victim = processes[0].pid if settings.kill_at is not None else None
        published, started_ns, kill, status, drain = asyncio.run(_measure(target, settings, victim))
        result.server_cpu_s = round(cpu_seconds(server_pids) - cpu_before, 3)
        result.client_cpu_s = round(cpu_seconds(client_pids) - client_before, 3)
        _stop_members(processes, pipes)
        result.writes_ok, result.writes_failed = published.ok, published.failed
        round_trips = sorted(published.post_ns)
        result.post_p50_ms = quantile_ms(round_trips, 0.50)
        result.post_p99_ms = quantile_ms(round_trips, 0.99)
        result.ack_floor, result.pending = status["ackFloor"], status["pending"]
        result.head = status["ackFloor"] + status["lag"]
        result.drained = not (status["lag"] or status["pending"])
        result.drain_seconds = round(drain, 3)
        counts = count(
            [MemberLedger.read(path) for path in paths],
            result.head,
            started_ns,
            killed=0 if kill.killed_ns else None,
            killed_ns=kill.killed_ns,
            hung_ns=kill.hung_ns,
        )
        result.counts = asdict(counts)
        if counts.acked_seconds:
            result.acked_per_s = round(counts.acked / counts.acked_seconds, 1)
        if counts.acked:
            result.server_cpu_ms_per_event = round(1e3 * result.server_cpu_s / counts.acked, 3)
        return result
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
        target.stop()
        shutil.rmtree(workdir, ignore_errors=True)
