"""Run a real ``ratewire serve`` process for end-to-end tests."""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx
import jwt

from ratewire.config import JwtSettings
from ratewire.security.tokens import TokenService

SECRET = "e2e-secret-0123456789abcdef0123456789abcdef"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServerProcess:
    """One ``ratewire serve`` on free ports, in ``workdir``; restartable on the same ports and
    database. Its stdout/stderr go to ``workdir/server.log``."""

    def __init__(
        self,
        workdir: Path,
        *,
        backend: str = "sqlite",
        storage_url: str | None = None,
        env: Mapping[str, str] | None = None,
        log_level: str = "INFO",
        args: Sequence[str] = (),
        nofile: tuple[int, int] | None = None,
    ) -> None:
        #: (soft, hard) open-files limit the process starts with, as `ulimit -Sn/-Hn` would set.
        self.nofile = nofile
        self.workdir = workdir
        self.log_level = log_level
        self.args = tuple(args)
        #: An ``api`` instance has no WebSocket port to wait for.
        self.serves_websockets = "api" not in self.args
        self.secret = SECRET
        self.http_port, self.ws_port = free_port(), free_port()
        self.env = {
            **os.environ,
            "RATEWIRE_SERVER__HOST": "127.0.0.1",
            "RATEWIRE_SERVER__PORT": str(self.http_port),
            "RATEWIRE_MODULES__WEBSOCKET__PORT": str(self.ws_port),
            "RATEWIRE_STORAGE__BACKEND": backend,
            "RATEWIRE_STORAGE__URL": storage_url or f"sqlite:///{workdir / 'ratewire.db'}",
            "RATEWIRE_JWT__SECRET": SECRET,
            "RATEWIRE_LIMITS__REST_REQUESTS_PER_CLIENT_PER_MINUTE": "1000000",
            "RATEWIRE_LIMITS__WS_CONNECTIONS_PER_IP_PER_SECOND": "1000",
            # Tests open many connections from 127.0.0.1: lifted here, tested where it matters.
            "RATEWIRE_LIMITS__WS_CONNECTIONS_PER_IP": "100000",
            "RATEWIRE_LIMITS__WS_CONNECTIONS_PER_USER": "100000",
            **(env or {}),
        }
        self._tokens = TokenService(JwtSettings(secret=SECRET))
        self.process: subprocess.Popen[bytes] | None = None
        for attempt in range(3):
            try:
                self.start()
                break
            except RuntimeError as exc:
                # free_port() releases the port it found; another process (an outgoing
                # connection's ephemeral port, another worker's server) may take it before
                # the server binds. Only the first start may move: restarts keep their ports.
                if "Address already in use" not in str(exc) or attempt == 2:
                    raise
                self.http_port, self.ws_port = free_port(), free_port()
                self.env["RATEWIRE_SERVER__PORT"] = str(self.http_port)
                self.env["RATEWIRE_MODULES__WEBSOCKET__PORT"] = str(self.ws_port)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}/ws"

    @property
    def module_ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def token(self, sub: str, *, scope: str | None = None, ttl: int | None = None) -> str:
        """A JWT signed with the server's key; a negative ``ttl`` gives an expired one."""
        if ttl is not None and ttl <= 0:
            claims = {"sub": sub, "exp": int(time.time()) + ttl}
            if scope:
                claims["scope"] = scope
            return jwt.encode(claims, SECRET, "HS256")
        return self._tokens.issue(sub, scope=scope, ttl_seconds=ttl)

    def open_connections(self) -> float:
        """The server's own count of open WebSocket connections (from ``/metrics``)."""
        metrics = httpx.get(f"{self.base_url}/metrics", timeout=5).text
        found = re.search(r"^ratewire_websocket_connections (\S+)$", metrics, re.MULTILINE)
        assert found is not None
        return float(found.group(1))

    def log_text(self) -> str:
        return (self.workdir / "server.log").read_text(errors="replace")

    #: How long a start may take before the test fails: a start is not what these tests time,
    #: and with four test workers and the servers they start on two cores, 20 s was hit.
    START_TIMEOUT = 60.0

    def start(self, timeout: float = START_TIMEOUT) -> None:
        log = (self.workdir / "server.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ratewire", "serve", "--log-level", self.log_level, *self.args],
            cwd=self.workdir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=self._limit_descriptors if self.nofile else None,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ratewire serve exited at start:\n{self.log_text()[-3000:]}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=0.5).status_code == 200:
                    if not self.serves_websockets:
                        return
                    with socket.create_connection(("127.0.0.1", self.ws_port), timeout=0.5):
                        return
            except (httpx.HTTPError, OSError):
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"ratewire serve not ready in {timeout} s:\n{self.log_text()[-3000:]}")

    def _limit_descriptors(self) -> None:
        assert self.nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, self.nofile)

    def terminate(self, *, wait: bool = True) -> None:
        """SIGTERM: a graceful shutdown."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            if wait:
                self.wait()

    def wait(self, timeout: float = 20) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: no shutdown at all."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def pause(self) -> None:
        """SIGSTOP: the process is frozen (a long GC pause, a stalled VM), sockets open."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Stop (if running) and start again on the same ports and database."""
        self.terminate()
        self.start()

    def stop(self) -> None:
        try:
            if self.process is not None and self.process.poll() is None:
                self.process.send_signal(signal.SIGCONT)  # a paused server cannot stop
            self.terminate()
        finally:  # a server that does not stop in time fails the test, and is killed anyway
            if self.process is not None and self.process.poll() is None:
                self.kill()
