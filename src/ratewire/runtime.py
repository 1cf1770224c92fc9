"""The composition root: builds every part from settings, runs the servers, stops cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from ratewire.api import create_app
from ratewire.config import Settings
from ratewire.security.tokens import TokenService
from ratewire.service import RatingService
from ratewire.storage import open_store

log = logging.getLogger("ratewire")


class _UvicornServer(uvicorn.Server):
    """uvicorn without its own signal handling: the runtime owns SIGTERM/SIGINT so it can close
    WebSocket connections (1001) and drain the relay before the HTTP server stops."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Runtime:
    """One ratewire instance: storage, service, API (and, when enabled, the realtime parts)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tokens = TokenService(settings.jwt)
        self.store = open_store(settings.storage)
        self.service = RatingService(self.store, settings.ratings)
        self.app: FastAPI = create_app(settings, self.service, self.tokens)
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        """Open storage (creating or migrating its schema)."""
        await self.store.start()

    async def stop(self) -> None:
        await self.store.close()

    def request_stop(self) -> None:
        """Begin a graceful shutdown (what SIGTERM does)."""
        self._stopping.set()

    def _uvicorn_config(self) -> uvicorn.Config:
        settings = self.settings
        return uvicorn.Config(
            self.app,
            host=settings.server.host,
            port=settings.server.port,
            http="httptools",
            ws="websockets-sansio",
            ws_per_message_deflate=False,
            ws_max_size=settings.limits.max_message_bytes,
            lifespan="off",
            log_config=None,
            access_log=False,
            ssl_certfile=settings.tls.cert,
            ssl_keyfile=settings.tls.key,
            server_header=False,
        )

    async def serve(self) -> None:
        """Run until SIGTERM/SIGINT, then shut down gracefully."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self.start()
        http_server = _UvicornServer(self._uvicorn_config())
        http_task = asyncio.create_task(http_server.serve(), name="http-server")
        try:
            stop_task = asyncio.create_task(self._stopping.wait())
            done, _ = await asyncio.wait(
                {http_task, stop_task}, return_when=asyncio.FIRST_COMPLETED
            )
            if http_task in done:
                stop_task.cancel()
                http_task.result()  # a failed start (port in use) surfaces here
                return
            log.info("shutting down")
            http_server.should_exit = True
            await http_task
        finally:
            await self.stop()
            log.info("stopped")
