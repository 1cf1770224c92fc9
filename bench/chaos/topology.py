"""The cluster a chaos run owns, started from nothing and torn down after: a PostgreSQL
database of its own (reached through a TCP proxy the nemesis can cut), a broker (a
``redis-server`` with its append-only file on, or a ``nats-server`` with JetStream), three
ratewire instances (two ``all``, one ``stream`` without a database) and HAProxy with
``deploy/haproxy.cfg`` in front of them.

HAProxy's REST backend takes three servers; the third slot points at the first instance
again, because a ``stream`` instance serves no REST. So REST and ``/ws`` go to the two
``all`` instances, and the guide's WebSocket port to all three.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.servers import SECRET, _fresh_postgres, free_port
from bench.tcp_proxy import TcpProxy

ROOT = Path(__file__).resolve().parents[2]
HAPROXY_CONFIG = ROOT / "deploy" / "haproxy.cfg"
AUDIT_KEY = "chaos-audit-key-0123456789abcdef0123456789"
#: Short, so that a paused relay holder loses its lease within a fault.
LEASE_SECONDS = 1.0
#: Each instance's connection cap: the subscribers fit, a burst past it is refused.
MAX_CONNECTIONS = 60
#: How long a (re)started process gets to become ready.
START_SECONDS = 60


class Managed:
    """A child process the nemesis may SIGKILL, SIGSTOP/SIGCONT and start again."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def launch(self) -> None:
        argv, env = self.command()
        log = (self.workdir / f"{self.name}.log").open("ab")
        self.process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)

    async def ready(self) -> bool:
        raise NotImplementedError

    async def start(self) -> None:
        """Launch it and wait until it is ready; launched again if it exits meanwhile (an
        instance started while the database is cut stops at once, as it should)."""
        self.launch()
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                await asyncio.sleep(0.5)
                self.launch()
                continue
            if await self.ready():
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready in {START_SECONDS} s: see {self.workdir}")

    async def wait_ready(self) -> bool:
        """Whether it became ready within START_SECONDS."""
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if await self.ready():
                return True
            await asyncio.sleep(0.2)
        return False

    def signal(self, number: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(number)

    async def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a paused process dies too
            self.process.kill()
            await asyncio.to_thread(self.process.wait, 10)

    async def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                await asyncio.to_thread(self.process.wait, 15)
            except subprocess.TimeoutExpired:
                await self.kill()


class BrokerServer(Managed):
    """A broker server of the run's own (redis-server, nats-server), its data in the run's
    directory, on a free port; ready when its first line over TCP says so."""

    #: (name, executable, package, what to send once connected, how its answer starts)
    SPEC: tuple[str, str, str, bytes, bytes]

    def __init__(self, workdir: Path) -> None:
        name, executable, package, self._probe, self._answer = self.SPEC
        super().__init__(name, workdir)
        self.port = free_port()
        self.data = workdir / f"{name}-data"
        self.data.mkdir()
        found = shutil.which(executable) or shutil.which(executable, path="/usr/sbin")
        if found is None:
            raise SystemExit(f"{executable} is not installed: apt-get install {package}")
        self.executable = found

    @property
    def url(self) -> str:
        """What the instances' ``broker.url`` is set to."""
        raise NotImplementedError

    async def ready(self) -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        try:
            if self._probe:
                writer.write(self._probe)
                await writer.drain()
            return (await asyncio.wait_for(reader.readline(), 1)).startswith(self._answer)
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()

    def wipe(self) -> None:
        """Forget everything (call while it is down): the next start is empty."""
        shutil.rmtree(self.data)
        self.data.mkdir()


class Redis(BrokerServer):
    SPEC = ("redis", "redis-server", "redis-server", b"PING\r\n", b"+PONG")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> tuple[list[str], dict[str, str]]:
        return [
            self.executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--dir", str(self.data),
        ], dict(os.environ)  # fmt: skip


class Nats(BrokerServer):
    """nats-server with JetStream; it greets every connection with an INFO line."""

    SPEC = ("nats", "nats-server", "nats-server", b"", b"INFO")

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def command(self) -> tuple[list[str], dict[str, str]]:
        return [
            self.executable, "-js", "-sd", str(self.data), "-a", "127.0.0.1", "-p", str(self.port),
        ], dict(os.environ)  # fmt: skip


#: The brokers a run can use, by ``broker.backend``.
BROKERS: dict[str, type[BrokerServer]] = {"redis": Redis, "nats": Nats}


class Instance(Managed):
    def __init__(self, name: str, workdir: Path, env: dict[str, str], role: str) -> None:
        super().__init__(name, workdir)
        self.role = role
        self.http_port, self.ws_port = free_port(), free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RATEWIRE_")},
            "RATEWIRE_SERVER__HOST": "127.0.0.1",
            "RATEWIRE_SERVER__PORT": str(self.http_port),
            "RATEWIRE_MODULES__WEBSOCKET__PORT": str(self.ws_port),
            **env,
        }

    def command(self) -> tuple[list[str], dict[str, str]]:
        argv = [sys.executable, "-m", "ratewire", "serve", "--role", self.role]
        return argv, self.env

    async def ready(self) -> bool:
        return await _answers(f"http://127.0.0.1:{self.http_port}/readyz")


class HAProxy(Managed):
    def __init__(self, workdir: Path, instances: list[Instance]) -> None:
        super().__init__("haproxy", workdir)
        self.http_port, self.ws_port = free_port(), free_port()
        executable = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/bin")
        if executable is None:
            raise SystemExit("haproxy is not installed: apt-get install haproxy")
        self.executable = executable
        rest = [i for i in instances if i.role == "all"]
        self.env = {
            **os.environ,
            "RATEWIRE_LB_HTTP_BIND": f"127.0.0.1:{self.http_port}",
            "RATEWIRE_LB_WS_BIND": f"127.0.0.1:{self.ws_port}",
        }
        for number, instance in enumerate(instances, start=1):
            http = instance if instance.role == "all" else rest[0]
            self.env[f"RATEWIRE_{number}_HTTP"] = f"127.0.0.1:{http.http_port}"
            self.env[f"RATEWIRE_{number}_WS"] = f"127.0.0.1:{instance.ws_port}"
            self.env[f"RATEWIRE_{number}_CHECK_PORT"] = str(instance.http_port)

    def command(self) -> tuple[list[str], dict[str, str]]:
        return [self.executable, "-db", "-f", str(HAPROXY_CONFIG)], self.env

    async def ready(self) -> bool:
        return await _answers(f"http://127.0.0.1:{self.http_port}/healthz")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


class Topology:
    """Everything a run needs; :meth:`start` and :meth:`stop` (which always cleans up)."""

    def __init__(self, workdir: Path, broker: str = "redis") -> None:
        self.workdir = workdir
        self.broker_backend = broker
        self.broker = BROKERS[broker](workdir)
        self.database_url, self._drop_database = "", _no_op
        self.database_proxy: TcpProxy | None = None
        self.instances: list[Instance] = []
        self.haproxy: HAProxy | None = None
        self.prefix = f"chaos{os.getpid()}"

    def _env(self, *, database: bool) -> dict[str, str]:
        assert self.database_proxy is not None
        env = {
            "RATEWIRE_JWT__SECRET": SECRET,
            "RATEWIRE_AUDIT__KEY": AUDIT_KEY,
            "RATEWIRE_BROKER__BACKEND": self.broker_backend,
            "RATEWIRE_BROKER__URL": self.broker.url,
            "RATEWIRE_BROKER__PREFIX": self.prefix,
            "RATEWIRE_BROKER__LEASE_SECONDS": str(LEASE_SECONDS),
            "RATEWIRE_LIMITS__MAX_CONNECTIONS": str(MAX_CONNECTIONS),
            # One address opens every client here: lifted by configuration, as a benchmark's.
            "RATEWIRE_LIMITS__REST_REQUESTS_PER_CLIENT_PER_MINUTE": "1000000",
            "RATEWIRE_LIMITS__WS_CONNECTIONS_PER_IP_PER_SECOND": "100000",
            "RATEWIRE_LIMITS__WS_CONNECTIONS_PER_IP": "100000",
            "RATEWIRE_LIMITS__WS_CONNECTIONS_PER_USER": "100000",
        }
        if database:
            port = self.database_proxy.port
            env["RATEWIRE_STORAGE__BACKEND"] = "postgresql"
            env["RATEWIRE_STORAGE__URL"] = self.database_url.replace(
                "127.0.0.1:5432", f"127.0.0.1:{port}"
            )
        else:
            env["RATEWIRE_STORAGE__BACKEND"] = "none"
        return env

    @property
    def direct_database_url(self) -> str:
        """The database itself, not through the proxy (for the checker)."""
        return self.database_url

    def admin_env(self) -> dict[str, str]:
        """The environment a ``ratewire`` CLI command needs to open this cluster's store."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RATEWIRE_")}
        env.update(
            RATEWIRE_STORAGE__BACKEND="postgresql",
            RATEWIRE_STORAGE__URL=self.database_url,
            RATEWIRE_JWT__SECRET=SECRET,
            RATEWIRE_AUDIT__KEY=AUDIT_KEY,
        )
        return env

    async def start(self) -> None:
        self.database_url, self._drop_database = await asyncio.to_thread(_fresh_postgres)
        if "127.0.0.1:5432" not in self.database_url:
            raise SystemExit(
                f"the chaos run expects PostgreSQL on 127.0.0.1:5432, not {self.database_url}"
            )
        self.database_proxy = TcpProxy(5432)
        await self.database_proxy.restore()
        await self.broker.start()
        self.instances = [
            Instance("ratewire1", self.workdir, self._env(database=True), "all"),
            Instance("ratewire2", self.workdir, self._env(database=True), "all"),
            Instance("ratewire3", self.workdir, self._env(database=False), "stream"),
        ]
        await self.instances[0].start()  # creates the schema; the others find it
        await asyncio.gather(*(i.start() for i in self.instances[1:]))
        self.haproxy = HAProxy(self.workdir, self.instances)
        await self.haproxy.start()

    async def stop(self) -> None:
        if self.haproxy is not None:
            await self.haproxy.stop()
        await asyncio.gather(*(i.stop() for i in self.instances))
        await self.broker.stop()
        if self.database_proxy is not None:
            self.database_proxy.cut()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self._drop_database)


def _no_op() -> None:
    pass


async def _answers(url: str) -> bool:
    """Whether ``url`` answers 200 within half a second."""
    try:
        async with httpx.AsyncClient(timeout=0.5) as http:
            return (await http.get(url)).status_code == 200
    except httpx.HTTPError:
        return False
