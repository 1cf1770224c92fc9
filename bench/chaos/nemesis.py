"""The faults of a chaos run, injected at moments drawn from the run's seed. Up to two run at
once (never two on one target), so faults also combine: an instance paused while the broker
restarts, the database cut while an instance comes back."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Awaitable, Callable

import websockets

from bench.chaos.history import Fault
from bench.chaos.topology import LEASE_SECONDS, MAX_CONNECTIONS, Topology
from bench.servers import token
from bench.tcp_proxy import TcpProxy

KINDS = (
    "kill_instance",
    "pause_instance",
    "kill_broker",
    "cut_database",
    "cut_subscriber",
    "restart_haproxy",
    "connection_burst",
    "wipe_broker",
)


class Nemesis:
    def __init__(
        self,
        topology: Topology,
        subscriber_proxies: list[TcpProxy],
        rng: random.Random,
        faults: list[Fault],
        *,
        interval: tuple[float, float] = (0.5, 2.5),
        wipe_every: int = 40,
    ) -> None:
        self.topology = topology
        self.proxies = subscriber_proxies
        self.rng = rng
        self.faults = faults
        self.interval = interval
        self.wipe_every = wipe_every
        self.stopped = asyncio.Event()
        self._busy: set[str] = set()
        self._running: set[asyncio.Task[None]] = set()
        #: Handshakes of a connection burst that broke instead of answering 101 or 503.
        self.broken_handshakes = 0
        self._count = 0

    async def run(self) -> None:
        while not self.stopped.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopped.wait(), self.rng.uniform(*self.interval))
            if self.stopped.is_set():
                break
            if len(self._running) >= 2:
                continue
            self._count += 1
            kind = (
                "wipe_broker" if self._count % self.wipe_every == 0 else self.rng.choice(KINDS[:-1])
            )
            fault = self._pick(kind)
            if fault is None:
                continue
            target, action = fault
            task = asyncio.create_task(self._inject(kind, target, action))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        await asyncio.gather(*self._running, return_exceptions=True)

    def _pick(self, kind: str) -> tuple[str, Callable[[], Awaitable[None]]] | None:
        topology, rng = self.topology, self.rng
        if kind in ("kill_instance", "pause_instance"):
            instance = rng.choice(topology.instances)
            target = instance.name
            if kind == "kill_instance":

                async def kill() -> None:
                    await instance.kill()
                    await asyncio.sleep(rng.uniform(0.3, 1.5))
                    await instance.start()

                action = kill
            else:

                async def pause() -> None:
                    instance.signal(signal.SIGSTOP)
                    await asyncio.sleep(LEASE_SECONDS * rng.uniform(1.5, 3.0))
                    instance.signal(signal.SIGCONT)

                action = pause
        elif kind in ("kill_broker", "wipe_broker"):
            target = "broker"
            broker = topology.broker

            async def restart_broker() -> None:
                await broker.kill()
                await asyncio.sleep(rng.uniform(0.3, 1.5))
                if kind == "wipe_broker":
                    broker.wipe()
                await broker.start()

            action = restart_broker
        elif kind == "cut_database":
            target = "database"
            proxy = topology.database_proxy
            assert proxy is not None

            async def cut() -> None:
                proxy.cut()
                await asyncio.sleep(rng.uniform(0.5, 3.0))
                await proxy.restore()

            action = cut
        elif kind == "cut_subscriber":
            number = rng.randrange(len(self.proxies))
            target = f"subscriber-proxy-{number}"
            chosen = self.proxies[number]

            async def cut_one() -> None:
                chosen.cut()
                await asyncio.sleep(rng.uniform(0.1, 1.0))
                await chosen.restore()

            action = cut_one
        elif kind == "restart_haproxy":
            target = "haproxy"
            haproxy = topology.haproxy
            assert haproxy is not None

            async def restart() -> None:
                await haproxy.kill()
                await asyncio.sleep(rng.uniform(0.1, 0.8))
                await haproxy.start()

            action = restart
        else:
            # The instance's own name: never while it is killed or paused, so a connection
            # that fails is one the server broke, not one nobody was there to answer.
            instance = rng.choice(topology.instances)
            target = instance.name
            action = self._burst_at(instance.ws_port)
        if target in self._busy:
            return None
        return target, action

    def _burst_at(self, port: int) -> Callable[[], Awaitable[None]]:
        async def burst() -> None:
            async def one() -> None:
                try:
                    async with websockets.connect(
                        f"ws://127.0.0.1:{port}/?token={token('burst')}", open_timeout=5
                    ):
                        await asyncio.sleep(1.0)
                except websockets.InvalidStatus as refused:
                    if refused.response.status_code not in (429, 503):
                        self.broken_handshakes += 1
                except (OSError, websockets.WebSocketException, TimeoutError):
                    self.broken_handshakes += 1

            await asyncio.gather(*(one() for _ in range(MAX_CONNECTIONS + 20)))

        return burst

    async def _inject(self, kind: str, target: str, action: Callable[[], Awaitable[None]]) -> None:
        self._busy.add(target)
        fault = Fault(kind, target, time.time())
        self.faults.append(fault)
        try:
            await action()
        finally:
            fault.ended = time.time()
            self._busy.discard(target)
