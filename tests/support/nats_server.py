"""A ``nats-server -js`` of the test's own, on a free port with its own store, that a test may
kill, pause, wipe and restart."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.support.debian import ensure_tool
from tests.support.server import free_port


class NatsServer:
    """One nats-server process with JetStream, its store in ``workdir/jetstream``."""

    def __init__(self, workdir: Path, *, extra_args: tuple[str, ...] = ()) -> None:
        self.executable = ensure_tool("nats-server", "nats-server")
        self.workdir = workdir
        self.store = workdir / "jetstream"
        self.extra_args = extra_args
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10) -> None:
        log = (self.workdir / "nats.log").open("ab")
        self.process = subprocess.Popen(
            [
                self.executable,
                "-js", "-sd", str(self.store),
                "-a", "127.0.0.1", "-p", str(self.port),
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited ({self.process.returncode}); see nats.log")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    if conn.recv(4).startswith(b"INFO"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nats-server on port {self.port} did not start")

    def kill(self) -> None:
        """SIGKILL: whatever JetStream had not written to its store is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def wipe(self) -> None:
        """Kill the server and delete its store: it comes back knowing nothing."""
        self.kill()
        shutil.rmtree(self.store, ignore_errors=True)

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
