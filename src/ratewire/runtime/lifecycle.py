"""Running one instance: start its parts, listen on both ports, stop cleanly.

Shutdown order (SIGTERM): stop taking new WebSocket connections, let the relay publish
everything committed, close every WebSocket with 1001 (clients reconnect and resume), let
uvicorn finish in-flight HTTP requests, publish what those committed, close storage last.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import ssl
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from ratewire.config import Settings
from ratewire.realtime.picows_server import start_module_server
from ratewire.realtime.session import CLOSE_GOING_AWAY
from ratewire.realtime.uvicorn_ws import websocket_protocol_with_budget
from ratewire.runtime.assembly import Parts
from ratewire.runtime.banner import start_banner
from ratewire.runtime.housekeeping import announce_audit_mode, prune_forever
from ratewire.runtime.reload import reload_secrets
from ratewire.serving.http_server import HttpServer
from ratewire.serving.listener import DescriptorBudget, PausableListener, port_named
from ratewire.serving.tls import server_context

log = logging.getLogger("ratewire")
#: How long one shutdown step may take before the next one goes ahead.
SHUTDOWN_STEP_SECONDS = 5.0


class Runtime(Parts):
    """One ratewire instance: storage, service, relay, hub, REST and WebSocket servers, as
    its role (``server.role``) asks."""

    def __init__(
        self,
        settings: Settings,
        *,
        reuse_port: bool = False,
        dev: bool = False,
        notes: Sequence[str] = (),
        reread: Callable[[], Settings] | None = None,
    ) -> None:
        """``notes``: warnings to log once both ports listen. ``reread``: the settings as
        their files say now (what SIGHUP reloads the certificate and keys from)."""
        super().__init__(settings, reuse_port=reuse_port, dev=dev)
        self._notes = tuple(notes)
        self._reread = reread
        #: The TLS contexts of both ports (empty without TLS): SIGHUP reloads them in place.
        self._tls_contexts: list[ssl.SSLContext] = []
        self._dev = dev
        #: Where the start banner goes once both ports listen (``serve`` in a terminal).
        self.banner: Callable[[str], None] | None = None
        self._module_server: PausableListener | None = None
        self._metrics_task: asyncio.Task[None] | None = None
        self._prune_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        """Open storage and the broker, start the relay and the history pruner."""
        if self.store is not None:
            await self.store.start()
        announce_audit_mode(self.settings, self.store is not None)
        if self.audit_log is not None:
            self.audit_log.start()
        if self.cluster_broker is not None:
            await self._follow_the_cluster()
        else:
            assert self.local_broker is not None and self.relay is not None
            await self.local_broker.start(self.delivery.deliver_batch)
            await self.relay.start()
            self.hub.published_seq = self.relay.cursor
            if self.siblings is not None:
                self.siblings.start(self.relay.notify)
        if self.relay is not None:
            assert self.store is not None
            self._prune_task = asyncio.create_task(
                prune_forever(self.store, self.settings, audit=self.audit_log is not None),
                name="history-pruner",
            )
        if self.webhooks is not None:
            self.webhooks.start()
        if self.consumers is not None:
            self.consumers.start()
        await self.revocations.start()
        self._metrics_task = asyncio.create_task(self.metrics.sync_forever(), name="metrics")
        # Everything built so far (modules, the app, the schema, caches) lives as long as the
        # process: keep it out of the collector's full passes, which otherwise walk it all
        # and stall the event loop (measured: 58-68 ms a pass at 1,000 connections, in the
        # middle of a fan-out; ratewire_gc_pause_seconds shows them).
        gc.collect()
        gc.freeze()
        self.gc_pauses.install()

    async def _follow_the_cluster(self) -> None:
        broker = self.cluster_broker
        assert broker is not None
        await broker.connect(self.store.epoch if self.store is not None else None)
        relay_cursor = await broker.cursor()
        await broker.start(
            self.delivery.on_broker_event,
            # An api instance follows too when it caches summaries: its answers must not lag
            # behind other instances' writes longer than the stream does.
            follow=self.serves_websockets or self.summary_cache is not None,
            relay=self.relay is not None,
            gap_reader=self.store.events_after if self.store is not None else None,
            on_reset=self.delivery.ask_everyone_to_resume,
        )
        self.hub.published_seq = broker.consumed
        if self.relay is not None:
            await self.relay.start(relay_cursor or 0)

    async def _start_module_server(self, context: ssl.SSLContext | None) -> None:
        """Listen on ``modules.websocket.port`` (if enabled), with TLS if ``context``."""
        module = self.settings.modules.websocket
        if module.enabled and self.serves_websockets:
            if context is not None:
                self._tls_contexts.append(context)
            self._module_server = await start_module_server(
                self.realtime,
                self.connection_limiter,
                self.settings.server.host,
                module.port,
                context,
                reuse_port=self.reuse_port,
                budget=self.descriptor_budget,
            )

    async def close_connections(self) -> None:
        """Stop taking WebSocket connections, deliver what is committed, close with 1001."""
        if self._module_server is not None:
            self._module_server.close()
            self._module_server = None
        if self.relay is not None:
            try:
                await self.relay.flush()
            except Exception as exc:  # the store or broker is down: the outbox keeps them
                log.warning(
                    "shutdown: could not publish the last events (%s); the next relay will", exc
                )
        for session in list(self.sessions):
            session.close(CLOSE_GOING_AWAY, "Server shutting down")
        await asyncio.sleep(0.05)  # let the close frames go out

    async def stop(self) -> None:
        """After the servers: publish what in-flight requests committed, close everything.

        Each step has a deadline: with the database or Redis gone, a step may wait on
        something that never answers, and a stopping server must still stop (the outbox
        keeps whatever was committed)."""
        self.gc_pauses.uninstall()
        if self.siblings is not None:
            self.siblings.close()
        await _bounded("closing connections", self.close_connections())
        if self.relay is not None:
            await _bounded("stopping the relay", self.relay.stop())
        for task in (self._prune_task, self._metrics_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.webhooks is not None:
            await _bounded("stopping webhook deliveries", self.webhooks.stop())
        if self.consumers is not None:
            await _bounded("stopping consumers", self.consumers.stop())
        await _bounded("stopping revocation updates", self.revocations.stop())
        if self.audit_log is not None:
            await _bounded("writing the last audit entries", self.audit_log.stop())
        await _bounded("closing the broker", self.broker.close())
        await _bounded("closing the rate limiter", self.rest_limiter.close())
        if self.store is not None:
            await _bounded("closing storage", self.store.close())

    def request_stop(self) -> None:
        """Begin a graceful shutdown (what SIGTERM does)."""
        self._stopping.set()

    def reload(self) -> None:
        """Re-read the TLS certificate and key and the JWT key set, dropping no connection
        (what SIGHUP does; see :mod:`ratewire.runtime.reload`)."""
        reload_secrets(self._reread, self._tls_contexts, self.tokens)

    async def serve(self) -> None:
        """Run until SIGTERM/SIGINT, then shut down gracefully; SIGHUP reloads secrets."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        self.accept_errors.install(loop)
        if self.serves_websockets:
            log.info(self.capacity.summary())
            if (shortfall := self.capacity.shortfall()) is not None:
                log.warning(shortfall)
        await self.start()
        # What sockets of both ports may take: the limit less what is open now and a quarter
        # of the reserve for the backends and files (see ratewire.serving.listener).
        self.descriptor_budget = DescriptorBudget(
            self.capacity.descriptors
            - self.descriptors.open_descriptors()
            - max(16, self.capacity.reserve // 4)
        )
        watchdog = asyncio.create_task(self.descriptors.run(), name="descriptor-watchdog")
        http_server: HttpServer | None = None
        try:
            http_server = await self._listen()
            self._say_where()
            assert http_server.serving is not None
            stop_task = asyncio.create_task(self._stopping.wait())
            done, _ = await asyncio.wait(
                {http_server.serving, stop_task}, return_when=asyncio.FIRST_COMPLETED
            )
            if http_server.serving in done:
                stop_task.cancel()
                http_server.serving.result()  # a failed start surfaces here
                return
            log.info("shutting down")
            await self.close_connections()
            await http_server.shutdown()  # uvicorn finishes in-flight requests
        finally:
            if http_server is not None:
                http_server.close()
            watchdog.cancel()
            await self.stop()
            log.info("stopped")

    async def _listen(self) -> HttpServer:
        """Bind both ports (a port in use fails here, naming its setting) and start serving."""
        host, module = self.settings.server.host, self.settings.modules.websocket
        # The TLS files first: loading them inside port_named would blame the port.
        tls = self.settings.tls
        module_context = server_context(tls.cert, tls.key) if tls.cert else None
        with port_named("server.port", "--port", host, self.settings.server.port):
            http_server = HttpServer(
                self.asgi,
                self.settings,
                self.descriptor_budget,
                websocket_protocol_with_budget(
                    self.descriptor_budget, self.settings.limits.send_buffer_bytes
                ),
                reuse_port=self.reuse_port,
            )
        try:
            with port_named("modules.websocket.port", "--ws-port", host, module.port):
                await self._start_module_server(module_context)
            await http_server.start()
        except BaseException:
            http_server.close()
            raise
        if http_server.ssl_context is not None:
            self._tls_contexts.append(http_server.ssl_context)
        return http_server

    def _say_where(self) -> None:
        host, module = self.settings.server.host, self.settings.modules.websocket
        # uvicorn, bound to no socket of its own, no longer says where it listens.
        tls = bool(self.settings.tls.cert)
        log.info(
            "listening: REST and /ws on %s://%s:%d%s",
            "https" if tls else "http",
            host,
            self.settings.server.port,
            f", WebSockets on {'wss' if tls else 'ws'}://{host}:{module.port}"
            if self._module_server is not None
            else "",
        )
        for note in self._notes:
            log.warning(note)
        if self.banner is not None:
            roles = (self.serves_rest, self.serves_websockets)
            self.banner(start_banner(self.settings, self._dev, *roles))


async def _bounded(step: str, work: Coroutine[Any, Any, None]) -> None:
    """Run one shutdown step for at most SHUTDOWN_STEP_SECONDS; a failure is logged."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=SHUTDOWN_STEP_SECONDS)
    if not done:
        task.cancel()
        log.warning("shutdown: %s took over %.0f s; going on", step, SHUTDOWN_STEP_SECONDS)
        return
    if (error := task.exception()) is not None and not isinstance(error, Exception):
        raise error
    if error is not None:
        log.warning("shutdown: %s failed (%s)", step, error)
