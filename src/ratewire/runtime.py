"""The composition root: builds every part from settings, runs the servers, stops cleanly.

Shutdown order (SIGTERM): stop taking new WebSocket connections, let the relay publish
everything committed, close every WebSocket with 1001 (clients reconnect and resume), let
uvicorn finish in-flight HTTP requests, publish what those committed, close storage last.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import secrets
import signal
import socket
import ssl
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp

from ratewire import capacity
from ratewire.api import create_app
from ratewire.api.app import create_ops_app
from ratewire.api.http_server import HttpServer
from ratewire.api.ops import ReadinessProbe
from ratewire.audit import AuditChain, AuditContext, AuditRecord
from ratewire.audit.log import AuditLog
from ratewire.banner import start_banner
from ratewire.broker import Broker, LocalBroker
from ratewire.broker.announcements import Announcements, LocalAnnouncements
from ratewire.broker.base import ClusterBroker
from ratewire.broker.factory import open_cluster_broker, open_quota_chunks
from ratewire.broker.siblings import SiblingNotices
from ratewire.config import Settings
from ratewire.domain import GLOBAL_TOPIC, RatingEvent, parse_topic
from ratewire.latency import DeliveryTimer, GcPauses
from ratewire.listener import DescriptorBudget, PausableListener, port_named
from ratewire.metrics import Metrics, MetricSources, multiprocess_dir_from_env
from ratewire.realtime.asgi import WebSocketEndpoint, mount_realtime
from ratewire.realtime.history import HistorySource, StreamHistory
from ratewire.realtime.hub import Hub
from ratewire.realtime.picows_server import start_module_server
from ratewire.realtime.session import (
    CLOSE_AUTH_FAILED,
    CLOSE_GOING_AWAY,
    CLOSE_TOO_SLOW,
    RealtimeContext,
    Session,
)
from ratewire.realtime.sse import SseEndpoint
from ratewire.realtime.uvicorn_ws import websocket_protocol_with_budget
from ratewire.relay import Relay
from ratewire.revocations import RevocationService
from ratewire.security.proxies import ClientAddressMiddleware, TrustedProxies
from ratewire.security.ratelimit import (
    ConnectionRateLimiter,
    RequestRateLimiter,
)
from ratewire.security.revocation import REVOKED_REASON, Revocation
from ratewire.security.tokens import TokenService
from ratewire.service import RatingService
from ratewire.storage import RatingStore, open_store
from ratewire.storage.factory import UnsupportedBackend
from ratewire.summaries import SummaryCache
from ratewire.webhooks.admin import WebhookAdmin
from ratewire.webhooks.deliverer import WebhookDeliverer, WebhookStats

log = logging.getLogger("ratewire")
#: How often the deny list is read again from the store (a safety net under announcements).
REVOCATION_POLL_SECONDS = 10.0
#: How often audit retention runs (each run that removes entries adds a checkpoint entry).
AUDIT_PRUNE_SECONDS = 3600.0
#: How long one shutdown step may take before the next one goes ahead.
SHUTDOWN_STEP_SECONDS = 5.0


class Runtime:
    """One ratewire instance: storage, service, relay, hub, REST and WebSocket servers, as
    its role (``server.role``) asks."""

    def __init__(
        self,
        settings: Settings,
        *,
        reuse_port: bool = False,
        dev: bool = False,
        notes: Sequence[str] = (),
    ) -> None:
        """``notes``: warnings to log once both ports listen."""
        self._notes = tuple(notes)
        self._dev = dev
        #: Where the start banner goes once both ports listen (``serve`` in a terminal).
        self.banner: Callable[[str], None] | None = None
        problem = settings.deployment_problem()
        if problem is not None:
            raise UnsupportedBackend(problem)
        self.settings = settings
        role = settings.server.role
        self.serves_rest = role in ("all", "api")
        self.serves_websockets = role in ("all", "stream")
        self.reuse_port = reuse_port
        self.tokens = TokenService(settings.jwt, dev=dev)
        self.store: RatingStore | None = (
            open_store(settings.storage) if settings.storage.backend != "none" else None
        )
        self.hub = Hub()
        self.cluster_broker: ClusterBroker | None = None
        self.local_broker: LocalBroker | None = None
        self.broker: Broker
        self.announcements: Announcements
        if settings.broker.clustered:
            self.cluster_broker, self.announcements = open_cluster_broker(settings)
            self.broker = self.cluster_broker
        else:
            self.broker = self.local_broker = LocalBroker()
            self.announcements = LocalAnnouncements()
        self.revocations = RevocationService(
            self.tokens,
            self.store,
            self.announcements,
            self._close_revoked,
            # Workers sharing a store without a cluster broker learn of each other's
            # revocations only from the store: read it often enough to keep the 1 s promise.
            poll_seconds=0.5
            if settings.server.workers > 1 and not settings.broker.clustered
            else REVOCATION_POLL_SECONDS,
        )
        self.audit_log: AuditLog | None = None
        if settings.audit.enabled and self.store is not None:
            self.store.use_audit(AuditChain(settings.audit.key))
            self.audit_log = AuditLog(self.store, flush_seconds=settings.audit.flush_seconds)
        self.service: RatingService | None = None
        self.summary_cache: SummaryCache | None = None
        self.relay: Relay | None = None
        self.webhooks: WebhookDeliverer | None = None
        self.webhook_admin: WebhookAdmin | None = None
        if self.serves_rest and self.store is not None:
            cache_size = settings.ratings.summary_cache_size
            self.summary_cache = SummaryCache(cache_size) if cache_size else None
            self.service = RatingService(self.store, settings.ratings, self.summary_cache)
            self.relay = Relay(
                self.store,
                self.broker,
                publish_now=self._deliver_batch if self.local_broker is not None else None,
            )
            self.service.add_listener(self.relay.notify)
        history: HistorySource
        if self.store is not None:
            history = self.store
        else:
            assert self.cluster_broker is not None  # deployment_problem() guarantees it
            history = StreamHistory(self.cluster_broker)
        self.sessions: set[Session] = set()
        self.realtime = RealtimeContext(
            hub=self.hub,
            store=history,
            tokens=self.tokens,
            limits=settings.limits,
            summary_wire=lambda summary: summary.to_wire(
                settings.ratings.bayesian_prior_mean, settings.ratings.bayesian_prior_weight
            ),
            sessions=self.sessions,
            allowed_origins=(
                None
                if (origins := settings.modules.websocket.allowed_origins) is None
                else frozenset(o.rstrip("/") for o in origins)
            ),
            proxies=TrustedProxies(settings.server.trusted_proxies),
            audit=self.audit_log,
        )
        self.connection_limiter = ConnectionRateLimiter(
            settings.limits.ws_connections_per_ip_per_second
        )
        probes: dict[str, ReadinessProbe] = {"broker": self.broker.ping}
        if self.audit_log is not None:
            probes["audit"] = self.audit_log.check
        self.rest_limiter = RequestRateLimiter(
            settings.limits.rest_requests_per_client_per_minute,
            open_quota_chunks(settings, self.cluster_broker),
        )
        self.metrics = Metrics(self._metric_sources(), multiprocess_dir_from_env())
        self.delivery_timer = DeliveryTimer(self.metrics.observe_stage)
        self.gc_pauses = GcPauses(self.metrics.observe_gc_pause)
        # Workers of one host on the in-process broker tell each other of their commits.
        self.siblings = (
            SiblingNotices.from_env()
            if self.local_broker is not None and self.relay is not None
            else None
        )
        if self.service is not None:
            if self.siblings is not None:
                # Before the local fan-out: the siblings write to theirs on the other cores
                # meanwhile.
                self.service.add_listener(self.siblings.announce, first=True)
            # First listener: the commit is timed before the relay delivers it.
            self.service.add_listener(self.delivery_timer.committed, first=True)
        if self.service is not None and settings.webhooks.enabled:
            self._start_webhooks(settings)
        if self.service is not None:
            self.app: FastAPI = create_app(
                settings,
                self.service,
                self.tokens,
                limiter=self.rest_limiter,
                readiness_probes=probes,
                revocations=self.revocations,
                audit=self.audit_log,
                metrics=self.metrics,
                webhooks=self.webhook_admin,
            )
        else:
            if self.store is not None:
                probes["storage"] = self.store.ping
            self.app = create_ops_app(probes, self.metrics)
        self.capacity = capacity.plan(settings.limits.max_connections)
        self.realtime.slots = capacity.ConnectionSlots(
            self.capacity.max_connections,
            settings.limits.ws_connections_per_ip,
            settings.limits.ws_connections_per_user,
        )
        self.accept_errors = capacity.AcceptErrorReporter()
        self.descriptors = capacity.DescriptorWatchdog(self.capacity.descriptors)
        self.asgi: ASGIApp = self.app
        if self.serves_websockets:
            self.asgi = mount_realtime(
                self.app,
                WebSocketEndpoint(self.realtime, self.connection_limiter),
                SseEndpoint(self.realtime, self.connection_limiter),
            )
        if self.realtime.proxies:
            self.asgi = ClientAddressMiddleware(self.asgi, self.realtime.proxies)
        self._module_server: PausableListener | None = None
        #: Sockets both ports may hold (set from the open-files limit in serve()).
        self.descriptor_budget = DescriptorBudget(1 << 30)
        self._metrics_task: asyncio.Task[None] | None = None
        self._prune_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def _start_webhooks(self, settings: Settings) -> None:
        store = self.store
        assert store is not None
        everything = parse_topic(GLOBAL_TOPIC)
        assert everything is not None
        self.webhook_admin = WebhookAdmin(
            store.webhooks,
            settings.webhooks,
            global_head=lambda: store.topic_head(everything),
            audit=self.audit_log,
        )
        owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.webhooks = WebhookDeliverer(store, settings.webhooks, owner)
        self.webhook_admin.on_change = self.webhooks.changed

    def _metric_sources(self) -> MetricSources:
        stats = self.realtime.stats

        def slots() -> capacity.ConnectionSlots:
            return self.realtime.slots

        def hook_stats() -> WebhookStats:
            return self.webhooks.stats if self.webhooks is not None else WebhookStats()

        def rate_limited() -> dict[str, int]:
            refused = {
                "ws_message": stats.messages_refused,
                "ws_connect_rate": self.connection_limiter.refused,
                "ws_per_ip": slots().refused_per_ip,
                "ws_per_user": slots().refused_per_user,
            }
            if self.service is not None:
                refused["rest"] = self.rest_limiter.refused
            return refused

        def storage_errors() -> dict[str, int]:
            errors = {"rest": int(getattr(self.app.state, "storage_errors", 0))}
            if self.relay is not None:
                errors["relay"] = self.relay.failures
            return errors

        cache = self.summary_cache
        audit = self.audit_log
        return MetricSources(
            connections=lambda: len(self.sessions),
            connections_opened=lambda: stats.opened,
            connections_closed=lambda: stats.closed,
            subscriptions=self.hub.subscriptions_by_kind,
            events_published=lambda: self.relay.published if self.relay is not None else 0,
            deliveries=lambda: self.hub.deliveries,
            slow_consumers_cut=lambda: stats.closed.get(str(CLOSE_TOO_SLOW), 0),
            relay_lag_seconds=lambda: self.relay.lag_seconds() if self.relay is not None else 0.0,
            rate_limited=rate_limited,
            storage_errors=storage_errors,
            max_connections=lambda: slots().max_connections,
            refused_at_capacity=lambda: slots().refused_at_capacity,
            accept_errors=lambda: self.accept_errors.count,
            descriptors_exhausted_seconds=lambda: self.descriptors.exhausted_seconds,
            summary_cache=lambda: (
                (0, 0, 0) if cache is None else (cache.hits, cache.misses, len(cache))
            ),
            worker_notices=lambda: self.siblings.counts if self.siblings is not None else {},
            webhook_attempts=lambda: dict(hook_stats().attempts),
            webhook_deliveries=lambda: hook_stats().delivered,
            webhook_backlog_seconds=lambda: hook_stats().backlog_seconds(),
            audit_entries_dropped=lambda: audit.dropped if audit is not None else 0,
            audit_entries_made_safe=lambda: audit.made_safe if audit is not None else 0,
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open storage and the broker, start the relay and the history pruner."""
        if self.store is not None:
            await self.store.start()
        self._announce_audit_mode()
        if self.audit_log is not None:
            self.audit_log.start()
        if self.cluster_broker is not None:
            broker = self.cluster_broker
            await broker.connect(self.store.epoch if self.store is not None else None)
            relay_cursor = await broker.cursor()
            await broker.start(
                self._on_broker_event,
                # An api instance follows too when it caches summaries: its answers must
                # not lag behind other instances' writes longer than the stream does.
                follow=self.serves_websockets or self.summary_cache is not None,
                relay=self.relay is not None,
                gap_reader=self.store.events_after if self.store is not None else None,
                on_reset=self._ask_everyone_to_resume,
            )
            self.hub.published_seq = broker.consumed
            if self.relay is not None:
                await self.relay.start(relay_cursor or 0)
        else:
            assert self.local_broker is not None and self.relay is not None
            await self.local_broker.start(self._deliver_batch)
            await self.relay.start()
            self.hub.published_seq = self.relay.cursor
            if self.siblings is not None:
                self.siblings.start(self.relay.notify)
        if self.relay is not None:
            self._prune_task = asyncio.create_task(self._prune_forever(), name="history-pruner")
        if self.webhooks is not None:
            self.webhooks.start()
        await self.revocations.start()
        self._metrics_task = asyncio.create_task(self.metrics.sync_forever(), name="metrics")
        # Everything built so far (modules, the app, the schema, caches) lives as long as the
        # process: keep it out of the collector's full passes, which otherwise walk it all
        # and stall the event loop (measured: 58-68 ms a pass at 1,000 connections, in the
        # middle of a fan-out; ratewire_gc_pause_seconds shows them).
        gc.collect()
        gc.freeze()
        self.gc_pauses.install()

    def _close_revoked(self, revocation: Revocation) -> None:
        deny = self.tokens.deny_list
        for session in list(self.sessions):
            principal = session.principal
            if principal is not None and deny.revokes(
                revocation, principal.sub, principal.jti, principal.issued_at
            ):
                session.close(CLOSE_AUTH_FAILED, REVOKED_REASON)

    def _deliver(self, event: RatingEvent) -> None:
        self._deliver_batch((event,))

    def _deliver_batch(self, events: Sequence[RatingEvent]) -> None:
        reached_hub = time.time()
        hub = self.hub
        hub.publish_batch(events)
        if self.webhooks is not None:
            self.webhooks.notify()
        timer, metrics, cache = self.delivery_timer, self.metrics, self.summary_cache
        for event in events:
            timer.delivered(
                event, reached_hub, hub.encoded_at, hub.first_write_at, hub.last_write_at
            )
            metrics.observe_delivery(event.occurred_at.timestamp())
            if cache is not None:
                cache.saw(event.game_id, event.game_offset)

    def _on_broker_event(self, event: RatingEvent) -> None:
        self._deliver(event)
        if self.relay is not None:
            self.relay.advance(event.seq)

    def _ask_everyone_to_resume(self) -> None:
        for session in list(self.sessions):
            session.close(CLOSE_GOING_AWAY, "Resume with since")

    async def start_module_server(self) -> None:
        """Listen on ``modules.websocket.port`` (if enabled)."""
        module = self.settings.modules.websocket
        if module.enabled and self.serves_websockets:
            self._module_server = await start_module_server(
                self.realtime,
                self.connection_limiter,
                self.settings.server.host,
                module.port,
                self._ssl_context(),
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
        await self._bounded("closing connections", self.close_connections())
        if self.relay is not None:
            await self._bounded("stopping the relay", self.relay.stop())
        for task in (self._prune_task, self._metrics_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.webhooks is not None:
            await self._bounded("stopping webhook deliveries", self.webhooks.stop())
        await self._bounded("stopping revocation updates", self.revocations.stop())
        if self.audit_log is not None:
            await self._bounded("writing the last audit entries", self.audit_log.stop())
        await self._bounded("closing the broker", self.broker.close())
        await self._bounded("closing the rate limiter", self.rest_limiter.close())
        if self.store is not None:
            await self._bounded("closing storage", self.store.close())

    @staticmethod
    async def _bounded(step: str, work: Coroutine[Any, Any, None]) -> None:
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

    def request_stop(self) -> None:
        """Begin a graceful shutdown (what SIGTERM does)."""
        self._stopping.set()

    def _announce_audit_mode(self) -> None:
        audit = self.settings.audit
        if not audit.enabled:
            log.warning("audit log off (audit.enabled: false): changes are not recorded")
        elif self.store is None:
            log.warning(
                "audit: this instance has no database, so its WebSocket connects, disconnects "
                "and refused tokens are not recorded (changes are, by the api instances)"
            )
        elif not audit.key or len(audit.key.encode()) < 32:
            log.warning(
                "audit.key is not set (or shorter than 32 bytes): the audit chain is plain "
                "SHA-256, so whoever can write to the database could rebuild it after an edit; "
                "set a 32+ byte RATEWIRE_AUDIT__KEY"
            )

    async def _prune_audit(self) -> None:
        assert self.store is not None
        days = self.settings.audit.retention_days
        cutoff = datetime.now(UTC) - timedelta(days=days)
        record = AuditRecord.now("audit.pruned", AuditContext(actor="ratewire"), retentionDays=days)
        removed = await self.store.prune_audit(int(cutoff.timestamp() * 1000), record)
        if removed:
            log.info("pruned %d audit entries older than %g days", removed, days)

    async def _prune_forever(self) -> None:
        history = self.settings.history
        assert self.store is not None
        audit_pruned_at = -AUDIT_PRUNE_SECONDS
        while True:
            if (
                self.audit_log is not None
                and self.settings.audit.retention_days > 0
                and time.monotonic() - audit_pruned_at >= AUDIT_PRUNE_SECONDS
            ):
                audit_pruned_at = time.monotonic()
                try:
                    await self._prune_audit()
                except Exception:
                    log.exception("audit pruning failed; will retry")
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

    async def serve(self) -> None:
        """Run until SIGTERM/SIGINT, then shut down gracefully."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        self.accept_errors.install(loop)
        if self.serves_websockets:
            log.info(self.capacity.summary())
            if (shortfall := self.capacity.shortfall()) is not None:
                log.warning(shortfall)
        await self.start()
        # What sockets of both ports may take: the limit less what is open now and a quarter
        # of the reserve for the backends and files (see ratewire.listener).
        self.descriptor_budget = DescriptorBudget(
            self.capacity.descriptors
            - self.descriptors.open_descriptors()
            - max(16, self.capacity.reserve // 4)
        )
        watchdog = asyncio.create_task(self.descriptors.run(), name="descriptor-watchdog")
        http_server: HttpServer | None = None
        host, module = self.settings.server.host, self.settings.modules.websocket
        try:
            with port_named("server.port", "--port", host, self.settings.server.port):
                http_server = HttpServer(  # binds: a port in use fails here, stops the rest
                    self.asgi,
                    self.settings,
                    self.descriptor_budget,
                    websocket_protocol_with_budget(
                        self.descriptor_budget, self.settings.limits.send_buffer_bytes
                    ),
                    reuse_port=self.reuse_port,
                )
            with port_named("modules.websocket.port", "--ws-port", host, module.port):
                await self.start_module_server()
            await http_server.start()
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
