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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "bench" / "peers"
SECRET = "bench-secret-0123456789abcdef0123456789abcdef"


def raise_fd_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def token(sub: str, scope: str | None = None) -> str:
    claims: dict[str, Any] = {"sub": sub, "exp": int(time.time()) + 3600}
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

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
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


def start_ratewire(backend: str = "sqlite", storage_url: str | None = None) -> Target:
    """``ratewire serve`` with limits lifted (the benchmark is one client at a high rate)."""
    workdir = Path(tempfile.mkdtemp(prefix="ratewire-bench-"))
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
    }
    log = (workdir / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "ratewire", "serve", "--log-level", "WARNING"],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_http(f"http://127.0.0.1:{http_port}/healthz", process, "ratewire")
    return Target(
        "ratewire",
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
