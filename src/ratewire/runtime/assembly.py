"""Building one instance's parts from its settings, in the order they need each other.

Nothing here starts or listens: :class:`~ratewire.runtime.lifecycle.Runtime` runs what is
built. What each role builds (``server.role``): ``all`` everything; ``api`` the write side
and REST; ``stream`` the realtime side (and, without a database, history from the broker).
"""

from __future__ import annotations

import os
import secrets
import socket

from fastapi import FastAPI
from starlette.types import ASGIApp

from ratewire.api import create_app
from ratewire.api.app import create_ops_app
from ratewire.api.ops import ReadinessProbe
from ratewire.audit import AuditChain
from ratewire.audit.log import AuditLog
from ratewire.broker import Broker, LocalBroker
from ratewire.broker.announcements import Announcements, LocalAnnouncements
from ratewire.broker.base import ClusterBroker
from ratewire.broker.factory import open_cluster_broker, open_quota_chunks
from ratewire.broker.siblings import SiblingNotices
from ratewire.config import Settings
from ratewire.domain import GLOBAL_TOPIC, GameSummary, parse_topic
from ratewire.observability.latency import DeliveryTimer, GcPauses
from ratewire.observability.metrics import Metrics, MetricSources, multiprocess_dir_from_env
from ratewire.realtime.asgi import WebSocketEndpoint, mount_realtime
from ratewire.realtime.history import HistorySource, StreamHistory
from ratewire.realtime.hub import Hub
from ratewire.realtime.session import CLOSE_TOO_SLOW, RealtimeContext, Session
from ratewire.realtime.slots import ConnectionSlots
from ratewire.realtime.sse import SseEndpoint
from ratewire.runtime.delivery import Delivery, after_commit_steps
from ratewire.security.proxies import ClientAddressMiddleware, TrustedProxies
from ratewire.security.ratelimit import ConnectionRateLimiter, RequestRateLimiter
from ratewire.security.tokens import TokenService
from ratewire.services.consumers import ConsumerService
from ratewire.services.ratings import RatingService
from ratewire.services.relay import Relay
from ratewire.services.revocations import RevocationService
from ratewire.services.summaries import SummaryCache
from ratewire.services.summary_streams import SummaryStreams
from ratewire.serving.capacity import plan as plan_capacity
from ratewire.serving.listener import DescriptorBudget
from ratewire.serving.watchdogs import AcceptErrorReporter, DescriptorWatchdog
from ratewire.storage import RatingStore, open_store
from ratewire.storage.factory import UnsupportedBackend
from ratewire.webhooks.admin import WebhookAdmin
from ratewire.webhooks.deliverer import WebhookDeliverer, WebhookStats

#: How often the deny list is read again from the store (a safety net under announcements).
REVOCATION_POLL_SECONDS = 10.0


class Parts:
    """Every part of one instance, built from ``settings`` (see the module's docstring)."""

    def __init__(self, settings: Settings, *, reuse_port: bool = False, dev: bool = False) -> None:
        problem = settings.deployment_problem()
        if problem is not None:
            raise UnsupportedBackend(problem)
        self.settings = settings
        self.serves_rest = settings.server.role in ("all", "api")
        self.serves_websockets = settings.server.role in ("all", "stream")
        self.reuse_port = reuse_port
        self.tokens = TokenService(settings.jwt, dev=dev)
        self.hub = Hub()
        self.sessions: set[Session] = set()
        self._build_storage_and_broker()
        self.metrics = Metrics(self._metric_sources(), multiprocess_dir_from_env())
        self.delivery_timer = DeliveryTimer(self.metrics.observe_stage)
        if self.store is not None:
            self.store.observe_commits(self.metrics.observe_stage)
        self.gc_pauses = GcPauses(self.metrics.observe_gc_pause)
        self._build_write_side()
        self._build_realtime_side()
        self.app, self.asgi = self._build_apps()
        #: Sockets both ports may hold (set from the open-files limit when serving).
        self.descriptor_budget = DescriptorBudget(1 << 30)

    def _build_storage_and_broker(self) -> None:
        settings = self.settings
        self.store: RatingStore | None = (
            open_store(settings.storage) if settings.storage.backend != "none" else None
        )
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
        self.audit_log: AuditLog | None = None
        if settings.audit.enabled and self.store is not None:
            self.store.use_audit(AuditChain(settings.audit.key))
            self.audit_log = AuditLog(self.store, flush_seconds=settings.audit.flush_seconds)

    def _build_write_side(self) -> None:
        """The summary cache, webhooks, the delivery path, the relay and the rating service
        (the last three only where this instance writes: REST with a store)."""
        settings = self.settings
        writes = self.serves_rest and self.store is not None
        size = settings.ratings.summary_cache_size
        self.summary_cache = SummaryCache(size) if writes and size else None
        self.summary_streams = self._summary_streams()
        self.webhooks: WebhookDeliverer | None = None
        self.webhook_admin: WebhookAdmin | None = None
        if writes and settings.webhooks.enabled:
            self._build_webhooks()
        self.delivery = Delivery(
            self.hub,
            self.sessions,
            self.tokens,
            self.delivery_timer,
            self.metrics,
            self.summary_cache,
            self.webhooks,
            self.summary_streams,
        )
        self.revocations = RevocationService(
            self.tokens,
            self.store,
            self.announcements,
            self.delivery.close_revoked,
            # Workers sharing a store without a cluster broker learn of each other's
            # revocations only from the store: read it often enough to keep the 1 s promise.
            poll_seconds=0.5
            if settings.server.workers > 1 and not settings.broker.clustered
            else REVOCATION_POLL_SECONDS,
        )
        self.relay: Relay | None = None
        self.service: RatingService | None = None
        self.siblings: SiblingNotices | None = None
        if not writes:
            return
        assert self.store is not None
        local = self.local_broker is not None
        self.relay = Relay(
            self.store, self.broker, publish_now=self.delivery.deliver_batch if local else None
        )
        self.delivery.relay = self.relay
        # Workers of one host on the in-process broker tell each other of their commits.
        self.siblings = SiblingNotices.from_env() if local else None
        self.service = RatingService(
            self.store,
            settings.ratings,
            self.summary_cache,
            after_commit=after_commit_steps(self.delivery_timer, self.siblings, self.relay),
        )

    def _summary_streams(self) -> SummaryStreams | None:
        """Summary streams where this instance serves WebSockets and has a database: they
        read what ``GET /games/{id}/summary`` and ``GET /games/top`` answer, through the
        summary cache when there is one (the rating service is built later: looked up then)."""
        store = self.store
        if store is None or not self.serves_websockets:
            return None
        ratings = self.settings.ratings
        prior = ratings.bayesian_prior_mean, ratings.bayesian_prior_weight
        cache = self.summary_cache

        async def read_summary(game_id: str) -> GameSummary:
            if cache is None:
                return await store.summary(game_id)
            return await cache.summary(game_id, store.summary)

        async def read_top(limit: int, min_count: int) -> list[GameSummary]:
            if self.service is not None:
                return await self.service.top_games(limit, min_count)
            return await store.top_games(limit, min_count, *prior)

        hub = self.hub
        return SummaryStreams(
            read_summary,
            read_top,
            lambda summary: summary.to_wire(*prior),
            lambda: hub.published_seq,
        )

    def _build_webhooks(self) -> None:
        store = self.store
        assert store is not None
        everything = parse_topic(GLOBAL_TOPIC)
        assert everything is not None
        self.webhook_admin = WebhookAdmin(
            store.webhooks,
            self.settings.webhooks,
            global_head=lambda: store.topic_head(everything),
            audit=self.audit_log,
        )
        owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.webhooks = WebhookDeliverer(store, self.settings.webhooks, owner)
        self.webhook_admin.on_change = self.webhooks.changed

    def _build_realtime_side(self) -> None:
        settings = self.settings
        history: HistorySource
        if self.store is not None:
            history = self.store
        else:
            assert self.cluster_broker is not None  # deployment_problem() guarantees it
            history = StreamHistory(self.cluster_broker)
        prior = settings.ratings.bayesian_prior_mean, settings.ratings.bayesian_prior_weight
        origins = settings.modules.websocket.allowed_origins
        self.capacity = plan_capacity(settings.limits.max_connections)
        # Durable consumers live in the database; an instance without one cannot keep them.
        self.consumers = (
            ConsumerService(
                self.store,
                retention_days=settings.consumers.retention_days,
                audit=self.audit_log,
            )
            if self.store is not None
            else None
        )
        self.delivery.consumers = self.consumers
        self.realtime = RealtimeContext(
            hub=self.hub,
            store=history,
            tokens=self.tokens,
            limits=settings.limits,
            summary_wire=lambda summary: summary.to_wire(*prior),
            sessions=self.sessions,
            slots=ConnectionSlots(
                self.capacity.max_connections,
                settings.limits.ws_connections_per_ip,
                settings.limits.ws_connections_per_user,
            ),
            allowed_origins=None if origins is None else frozenset(o.rstrip("/") for o in origins),
            proxies=TrustedProxies(settings.server.trusted_proxies),
            audit=self.audit_log,
            summaries=self.summary_streams,
            consumers=self.consumers,
        )
        self.connection_limiter = ConnectionRateLimiter(
            settings.limits.ws_connections_per_ip_per_second
        )
        self.rest_limiter = RequestRateLimiter(
            settings.limits.rest_requests_per_client_per_minute,
            open_quota_chunks(settings, self.cluster_broker),
        )
        self.accept_errors = AcceptErrorReporter()
        self.descriptors = DescriptorWatchdog(self.capacity.descriptors)

    def _build_apps(self) -> tuple[FastAPI, ASGIApp]:
        """The FastAPI app (REST, or only the operations endpoints), and in front of it the
        WebSocket and SSE endpoints and the trusted proxies' address rewriting."""
        probes: dict[str, ReadinessProbe] = {"broker": self.broker.ping}
        if self.audit_log is not None:
            probes["audit"] = self.audit_log.check
        if self.service is not None:
            app = create_app(
                self.settings,
                self.service,
                self.tokens,
                limiter=self.rest_limiter,
                readiness_probes=probes,
                revocations=self.revocations,
                audit=self.audit_log,
                metrics=self.metrics,
                webhooks=self.webhook_admin,
                consumers=self.consumers,
            )
        else:
            if self.store is not None:
                probes["storage"] = self.store.ping
            app = create_ops_app(probes, self.metrics)
        asgi: ASGIApp = app
        if self.serves_websockets:
            asgi = mount_realtime(
                app,
                WebSocketEndpoint(self.realtime, self.connection_limiter),
                SseEndpoint(self.realtime, self.connection_limiter),
            )
        if self.realtime.proxies:
            asgi = ClientAddressMiddleware(asgi, self.realtime.proxies)
        return app, asgi

    def _metric_sources(self) -> MetricSources:
        """Where each series is read at scrape time: the parts, looked up then (some are
        built after the metrics)."""

        def slots() -> ConnectionSlots:
            return self.realtime.slots

        def hook_stats() -> WebhookStats:
            return self.webhooks.stats if self.webhooks is not None else WebhookStats()

        def rate_limited() -> dict[str, int]:
            refused = {
                "ws_message": self.realtime.stats.messages_refused,
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

        def summary_cache() -> tuple[int, int, int]:
            cache = self.summary_cache
            return (0, 0, 0) if cache is None else (cache.hits, cache.misses, len(cache))

        def summary_streams() -> tuple[int, int, int, int]:
            streams = self.summary_streams
            if streams is None:
                return (0, 0, 0, 0)
            return (streams.groups, streams.members, streams.reads, streams.frames_sent)

        return MetricSources(
            connections=lambda: len(self.sessions),
            connections_opened=lambda: self.realtime.stats.opened,
            connections_closed=lambda: self.realtime.stats.closed,
            subscriptions=self.hub.subscriptions_by_kind,
            events_published=lambda: self.relay.published if self.relay is not None else 0,
            deliveries=lambda: self.hub.deliveries,
            slow_consumers_cut=lambda: self.realtime.stats.closed.get(str(CLOSE_TOO_SLOW), 0),
            relay_lag_seconds=lambda: self.relay.lag_seconds() if self.relay is not None else 0.0,
            rate_limited=rate_limited,
            storage_errors=storage_errors,
            max_connections=lambda: slots().max_connections,
            refused_at_capacity=lambda: slots().refused_at_capacity,
            accept_errors=lambda: self.accept_errors.count,
            descriptors_exhausted_seconds=lambda: self.descriptors.exhausted_seconds,
            summary_cache=summary_cache,
            worker_notices=lambda: self.siblings.counts if self.siblings is not None else {},
            webhook_attempts=lambda: dict(hook_stats().attempts),
            webhook_deliveries=lambda: hook_stats().delivered,
            webhook_backlog_seconds=lambda: hook_stats().backlog_seconds(),
            audit_entries_dropped=lambda: self.audit_log.dropped if self.audit_log else 0,
            audit_entries_made_safe=lambda: self.audit_log.made_safe if self.audit_log else 0,
            consumers=lambda: self.consumers.gauges() if self.consumers is not None else {},
            summary_streams=summary_streams,
            filters=lambda: (self.hub.filter_group_count(), self.hub.filter_evaluations),
        )
