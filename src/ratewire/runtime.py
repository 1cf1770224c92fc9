"""The composition root: builds every part from settings, runs the servers, stops cleanly.

Shutdown order (SIGTERM): stop taking new WebSocket connections, let the relay publish
everything committed, close every WebSocket with 1001 (clients reconnect and resume), let
uvicorn finish in-flight HTTP requests, publish what those committed, close storage last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import uvicorn
from fastapi import FastAPI

from ratewire.api import create_app
from ratewire.broker import Broker, LocalBroker
from ratewire.config import Settings
from ratewire.metrics import RuntimeCollector, build_registry
from ratewire.realtime.asgi import WebSocketEndpoint, mount_websocket
from ratewire.realtime.hub import Hub
from ratewire.realtime.picows_server import start_module_server
from ratewire.realtime.session import CLOSE_GOING_AWAY, RealtimeContext, Session
from ratewire.relay import Relay
from ratewire.security.ratelimit import ConnectionRateLimiter
from ratewire.security.tokens import TokenService
from ratewire.service import RatingService
from ratewire.storage import open_store
from ratewire.storage.factory import UnsupportedBackend

log = logging.getLogger("ratewire")


class _UvicornServer(uvicorn.Server):
    """uvicorn without its own signal handling: the runtime owns SIGTERM/SIGINT (see above)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Runtime:
    """One ratewire instance: storage, service, relay, hub, REST and WebSocket servers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tokens = TokenService(settings.jwt)
        self.store = open_store(settings.storage)
        self.service = RatingService(self.store, settings.ratings)
        self.hub = Hub()
        if settings.broker.backend != "local":
            # Running alone while the operator expects a cluster would split the topics.
            raise UnsupportedBackend(
                f"broker.backend: {settings.broker.backend!r} (cluster mode) is not available "
                "yet; use 'local' and one instance per database"
            )
        self.broker: Broker = LocalBroker()
        self.relay = Relay(self.store, self.broker)
        self.service.add_listener(self.relay.notify)
        self.sessions: set[Session] = set()
        self.realtime = RealtimeContext(
            hub=self.hub,
            store=self.store,
            tokens=self.tokens,
            limits=settings.limits,
            summary_wire=self.service.summary_wire,
            sessions=self.sessions,
        )
        self.connection_limiter = ConnectionRateLimiter(
            settings.limits.ws_connections_per_ip_per_second
        )
        self.app: FastAPI = create_app(
            settings,
            self.service,
            self.tokens,
            readiness_probes={"broker": self.broker.ping},
        )
        self.app.state.metrics_registry = build_registry(
            RuntimeCollector(
                connections=lambda: len(self.sessions),
                published_seq=lambda: self.hub.published_seq,
                deliveries=lambda: self.hub.deliveries,
            )
        )
        self.asgi = mount_websocket(
            self.app, WebSocketEndpoint(self.realtime, self.connection_limiter)
        )
        self._module_server: asyncio.Server | None = None
        self._prune_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open storage, start the relay (at the store's head) and the history pruner."""
        await self.store.start()
        await self.broker.start(self.hub.publish)
        await self.relay.start()
        self.hub.published_seq = self.relay.cursor
        self._prune_task = asyncio.create_task(self._prune_forever(), name="history-pruner")

    async def start_module_server(self) -> None:
        """Listen on ``modules.websocket.port`` (if enabled)."""
        module = self.settings.modules.websocket
        if module.enabled:
            self._module_server = await start_module_server(
                self.realtime,
                self.connection_limiter,
                self.settings.server.host,
                module.port,
                self._ssl_context(),
            )

    async def close_connections(self) -> None:
        """Stop taking WebSocket connections, deliver what is committed, close with 1001."""
        if self._module_server is not None:
            self._module_server.close()
            self._module_server = None
        await self.relay.flush()
        for session in list(self.sessions):
            session.close(CLOSE_GOING_AWAY, "Server shutting down")
        await asyncio.sleep(0.05)  # let the close frames go out

    async def stop(self) -> None:
        """After the servers: publish what in-flight requests committed, close everything."""
        await self.close_connections()
        await self.relay.stop()
        if self._prune_task is not None:
            self._prune_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prune_task
        await self.broker.close()
        await self.store.close()

    def request_stop(self) -> None:
        """Begin a graceful shutdown (what SIGTERM does)."""
        self._stopping.set()

    async def _prune_forever(self) -> None:
        history = self.settings.history
        while True:
            await asyncio.sleep(history.prune_interval_seconds)
            cutoff = datetime.now(UTC) - timedelta(seconds=history.max_age_seconds)
            try:
                removed = await self.store.prune_history(history.max_events_per_topic, cutoff)
            except Exception:
                log.exception("history pruning failed; will retry")
                continue
            if removed:
                log.info("pruned %d events from history", removed)

    def _ssl_context(self) -> ssl.SSLContext | None:
        tls = self.settings.tls
        if not tls.cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls.cert, tls.key)
        return context

    def _uvicorn_config(self) -> uvicorn.Config:
        settings = self.settings
        return uvicorn.Config(
            self.asgi,
            host=settings.server.host,
            port=settings.server.port,
            http="httptools",
            ws="websockets-sansio",
            ws_per_message_deflate=False,
            ws_max_size=settings.limits.max_message_bytes,
            ws_ping_interval=settings.limits.ping_interval_seconds,
            ws_ping_timeout=settings.limits.ping_interval_seconds,
            lifespan="off",
            log_config=None,
            access_log=False,
            ssl_certfile=settings.tls.cert,
            ssl_keyfile=settings.tls.key,
            server_header=False,
            backlog=4096,
        )

    async def serve(self) -> None:
        """Run until SIGTERM/SIGINT, then shut down gracefully."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self.start()
        http_server = _UvicornServer(self._uvicorn_config())
        try:
            await self.start_module_server()
            http_task = asyncio.create_task(http_server.serve(), name="http-server")
            stop_task = asyncio.create_task(self._stopping.wait())
            done, _ = await asyncio.wait(
                {http_task, stop_task}, return_when=asyncio.FIRST_COMPLETED
            )
            if http_task in done:
                stop_task.cancel()
                http_task.result()  # a failed start (port in use) surfaces here
                return
            log.info("shutting down")
            await self.close_connections()
            http_server.should_exit = True  # uvicorn finishes in-flight requests
            await http_task
        finally:
            await self.stop()
            log.info("stopped")
