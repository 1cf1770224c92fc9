"""Start the servers the benchmarks measure, on free ports, and stop them."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "bench" / "peers"
SECRET = "bench-secret-0123456789abcdef0123456789abcdef"


def raise_fd_limit(wanted: int = 200_000) -> None:
    """Soft limit up to the hard one; as root, the hard one up to ``wanted`` too (50,000
    subscribers need more than a common hard limit of 20,000). Children inherit it."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(hard, wanted), max(hard, wanted)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def token(sub: str, scope: str | None = None) -> str:
    now = int(time.time())  # within jwt.max_ttl_seconds (900): longer tokens are refused
    claims: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + 900}
    if scope:
        claims["scope"] = scope
    return jwt.encode(claims, SECRET, "HS256")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


# -- targets --------------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    ws_url: str
    post_url: str
    process: subprocess.Popen[bytes]
    workdir: Path
    #: Further instances of a cluster target (subscribers are spread over ``ws_urls``).
    others: list[subprocess.Popen[bytes]] = field(default_factory=list)
    ws_urls: list[str] = field(default_factory=list)
    cleanup: list[Callable[[], None]] = field(default_factory=list)

    @property
    def subscriber_urls(self) -> list[str]:
        return self.ws_urls or [self.ws_url]

    def following_streams(self) -> Target:
        """This target with its subscribers on Server-Sent Events (``GET /stream``)."""
        self.ws_urls = [self.post_url.rsplit("/", 1)[0] + "/stream"]
        return self

    def pids(self) -> list[int]:
        """The server processes (and a supervisor's workers) whose memory is counted."""
        pids = [self.process.pid, *(p.pid for p in self.others)]
        children = subprocess.run(
            ["pgrep", "-P", ",".join(map(str, pids))], capture_output=True, text=True
        ).stdout.split()
        return pids + [int(pid) for pid in children]

    def stop(self) -> None:
        for process in (*self.others, self.process):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in (*self.others, self.process):
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        for step in self.cleanup:
            step()
        shutil.rmtree(self.workdir, ignore_errors=True)


def wait_http(url: str, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited during start (code {process.returncode})")
        try:
            if httpx.get(url, timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer {url} within 30 s")


def start_ratewire_asgi() -> Target:
    """The same server, measured on its main-port endpoint (uvicorn's ASGI WebSocket)."""
    target = start_ratewire()
    http_port = target.post_url.split(":")[2].split("/")[0]
    target.name, target.ws_url = "ratewire-asgi", f"ws://127.0.0.1:{http_port}/ws"
    return target


def start_ratewire(
    backend: str = "sqlite",
    storage_url: str | None = None,
    *,
    env_extra: dict[str, str] | None = None,
    args: Sequence[str] = (),
    workdir: Path | None = None,
    name: str = "ratewire",
    source: Path | None = None,
) -> Target:
    """``ratewire serve`` with limits lifted (the benchmark is one client at a high rate)."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="ratewire-bench-"))
    http_port, ws_port = free_port(), free_port()
    env = {
        **os.environ,
        "RATEWIRE_SERVER__HOST": "127.0.0.1",
        "RATEWIRE_SERVER__PORT": str(http_port),
        "RATEWIRE_MODULES__WEBSOCKET__PORT": str(ws_port),
        "RATEWIRE_STORAGE__BACKEND": backend,
        "RATEWIRE_STORAGE__URL": storage_url or f"sqlite:///{workdir / 'bench.db'}",
        "RATEWIRE_JWT__SECRET": SECRET,
        "RATEWIRE_LIMITS__REST_REQUESTS_PER_CLIENT_PER_MINUTE": "1000000000",
        "RATEWIRE_LIMITS__WS_CONNECTIONS_PER_IP_PER_SECOND": "1000000",
        "RATEWIRE_LIMITS__WS_CONNECTIONS_PER_IP": "1000000",
        "RATEWIRE_LIMITS__WS_CONNECTIONS_PER_USER": "1000000",
        **(env_extra or {}),
    }
    if source is not None:
        # Another checkout's src/ (an earlier commit, for before/after runs) ahead of the
        # installed one.
        env["PYTHONPATH"] = str(source)
    log = (workdir / f"server-{http_port}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "ratewire", "serve", "--log-level", "WARNING", *args],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_http(f"http://127.0.0.1:{http_port}/healthz", process, "ratewire")
    return Target(
        name,
        f"ws://127.0.0.1:{ws_port}/",
        f"http://127.0.0.1:{http_port}/ratings",
        process,
        workdir,
    )


def start_node_guide() -> Target:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise RuntimeError(
            "node and npm are needed for the guide baseline (apt-get install nodejs npm)"
        )
    if not (PEERS / "node_modules" / "ws").is_dir():
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=PEERS, check=True, capture_output=True
        )
    workdir = Path(tempfile.mkdtemp(prefix="guide-bench-"))
    http_port, ws_port = free_port(), free_port()
    process = subprocess.Popen(
        [
            node,
            str(PEERS / "guide_server.js"),
            "--port",
            str(ws_port),
            "--http-port",
            str(http_port),
            "--secret",
            SECRET,
        ],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_http(f"http://127.0.0.1:{http_port}/healthz", process, "node guide server")
    return Target(
        "node-guide",
        f"ws://127.0.0.1:{ws_port}",
        f"http://127.0.0.1:{http_port}/ratings",
        process,
        workdir,
    )


# -- cluster targets (PostgreSQL + Redis on this machine) ----------------------------------------

POSTGRES_ADMIN = os.environ.get("RATEWIRE_BENCH_POSTGRES", "postgresql://127.0.0.1:5432/test")
REDIS_URL = os.environ.get("RATEWIRE_BENCH_REDIS", "redis://127.0.0.1:6379/0")
NATS_URL = os.environ.get("RATEWIRE_BENCH_NATS", "nats://127.0.0.1:4222")


def _fresh_postgres() -> tuple[str, Callable[[], None]]:
    """A new database for one target, and the step that drops it."""
    import asyncio
    import secrets

    import asyncpg

    name = f"ratewire_bench_{secrets.token_hex(4)}"
    admin = POSTGRES_ADMIN.replace("postgresql://", "postgres://")

    async def run(statement: str) -> None:
        connection = await asyncpg.connect(admin)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run(f"CREATE DATABASE {name}"))
    return (
        POSTGRES_ADMIN.rsplit("/", 1)[0] + "/" + name,
        lambda: asyncio.run(run(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")),
    )


def start_cluster(
    name: str,
    instances: int = 1,
    *,
    broker: str = "redis",
    workers: int = 1,
    env_extra: dict[str, str] | None = None,
) -> Target:
    """``instances`` ratewire processes on one new PostgreSQL database sharing a Redis or NATS
    broker (a prefix of their own): writes go to the first, subscribers are spread over all."""
    import secrets

    url, drop = _fresh_postgres()
    workdir = Path(tempfile.mkdtemp(prefix="ratewire-bench-"))
    prefix = f"bench-{secrets.token_hex(4)}"
    env = {
        "RATEWIRE_BROKER__BACKEND": broker,
        "RATEWIRE_BROKER__URL": NATS_URL if broker == "nats" else REDIS_URL,
        "RATEWIRE_BROKER__PREFIX": prefix,
    }
    env.update(env_extra or {})
    args = ("--workers", str(workers)) if workers > 1 else ()
    started = [
        start_ratewire("postgresql", url, env_extra=env, args=args, workdir=workdir)
        for _ in range(instances)
    ]
    first = started[0]
    return Target(
        name,
        first.ws_url,
        first.post_url,
        first.process,
        workdir,
        others=[t.process for t in started[1:]],
        ws_urls=[t.ws_url for t in started],
        cleanup=[drop, *([lambda: _drop_nats_prefix(prefix)] if broker == "nats" else [])],
    )


def _drop_nats_prefix(prefix: str) -> None:
    """Delete the streams and buckets a NATS target made (the machine's NATS keeps them)."""
    import asyncio

    import nats

    async def run() -> None:
        client = await nats.connect(NATS_URL)
        try:
            js = client.jetstream()
            for name in await js.streams_info():
                stream = name.config.name or ""
                if stream.startswith((f"{prefix}_", f"KV_{prefix}_")):
                    await js.delete_stream(stream)
        finally:
            await client.close()

    asyncio.run(run())


def start_redis_storage(
    name: str = "redis", *, appendfsync: str = "always", env_extra: dict[str, str] | None = None
) -> Target:
    """ratewire on the Redis storage backend, with a redis-server of its own that logs every
    write to its append-only file and fsyncs it as ``appendfsync`` says (``always``: as
    durable as SQLite's synchronous=FULL, which the SQLite target runs with)."""
    executable = shutil.which("redis-server")
    if executable is None:
        raise SystemExit("redis-server is not installed: apt-get install redis-server")
    workdir = Path(tempfile.mkdtemp(prefix="ratewire-bench-redis-"))
    port = free_port()
    redis_process = subprocess.Popen(
        [
            executable,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", appendfsync,
            "--dir", str(workdir),
        ],
        stdout=(workdir / "redis.log").open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while (
        subprocess.run(
            ["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True
        ).stdout.strip()
        != "PONG"
    ):
        if time.monotonic() > deadline or redis_process.poll() is not None:
            raise SystemExit(f"redis-server did not start: {(workdir / 'redis.log').read_text()}")
        time.sleep(0.05)
    target = start_ratewire("redis", url, env_extra=env_extra, workdir=workdir)
    target.name = name

    def stop_redis() -> None:
        redis_process.terminate()
        redis_process.wait(10)

    target.cleanup.append(stop_redis)
    return target
