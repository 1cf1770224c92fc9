"""The FastAPI application: routes, problem handlers and admission, wired to one service."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import APIRouter, FastAPI

from ratewire import __version__
from ratewire.api.admin import router as admin_router
from ratewire.api.admission import AdmissionMiddleware
from ratewire.api.audit import router as audit_router
from ratewire.api.consumers import router as consumers_router
from ratewire.api.dashboard import router as dashboard_router
from ratewire.api.fast_paths import FastPaths
from ratewire.api.identity import router as identity_router
from ratewire.api.openapi import complete_problem_responses
from ratewire.api.ops import ReadinessProbe
from ratewire.api.ops import router as ops_router
from ratewire.api.problems import install_problem_handlers
from ratewire.api.request_metrics import RequestMetrics
from ratewire.api.routes import router
from ratewire.api.topic_history import router as topic_history_router
from ratewire.api.webhooks import router as webhooks_router
from ratewire.audit.log import AuditLog
from ratewire.config import Settings
from ratewire.observability.metrics import Metrics
from ratewire.security.ratelimit import RequestRateLimiter
from ratewire.security.tokens import TokenService
from ratewire.services.consumers import ConsumerService
from ratewire.services.ratings import RatingService
from ratewire.services.revocations import RevocationService
from ratewire.webhooks.admin import WebhookAdmin

DESCRIPTION = """
Users score games from 1 to 5; every change is pushed in real time to WebSocket
subscribers of `rating.global`, `rating.game.{id}` and `rating.user.{id}`.
Writes need `Authorization: Bearer <JWT>` (`ratewire token SUB` prints one).
"""


def create_app(
    settings: Settings,
    service: RatingService,
    tokens: TokenService,
    *,
    limiter: RequestRateLimiter | None = None,
    extra_routers: tuple[APIRouter, ...] = (),
    readiness_probes: Mapping[str, ReadinessProbe] | None = None,
    revocations: RevocationService | None = None,
    audit: AuditLog | None = None,
    metrics: Metrics | None = None,
    webhooks: WebhookAdmin | None = None,
    consumers: ConsumerService | None = None,
) -> FastAPI:
    """An ASGI app serving the REST API over ``service`` (which the caller starts and stops),
    with the /admin routes when ``revocations`` is given, /admin/webhooks with ``webhooks``,
    /consumers with ``consumers``."""
    app = FastAPI(title="ratewire", version=__version__, description=DESCRIPTION)
    app.state.service = service
    app.state.revocations = revocations
    app.state.readiness_probes = {"storage": service.store.ping, **(readiness_probes or {})}
    app.state.metrics = metrics
    app.state.webhooks = webhooks
    app.state.consumers = consumers
    app.state.storage_errors = 0  # answers 503 because the store failed (for /metrics)
    install_problem_handlers(app)
    routers = [router, ops_router, topic_history_router, dashboard_router, identity_router]
    if revocations is not None:
        routers.append(admin_router)
    if audit is not None:
        routers.append(audit_router)
    if webhooks is not None:
        routers.append(webhooks_router)
    if consumers is not None:
        routers.append(consumers_router)
    routers.extend(extra_routers)
    for included in routers:
        app.include_router(included)
    complete_problem_responses(app)
    app.add_middleware(FastPaths)  # added first: admission wraps it
    app.add_middleware(
        AdmissionMiddleware,
        tokens=tokens,
        limiter=limiter or RequestRateLimiter(settings.limits.rest_requests_per_client_per_minute),
        max_body_bytes=settings.limits.max_body_bytes,
        audit=audit,
    )
    if metrics is not None:
        # Added last, so it sees every answer; the routes label requests refused unrouted.
        routes = [route for included in routers for route in included.routes]
        app.add_middleware(RequestMetrics, metrics=metrics, routes=routes)
    return app


def create_ops_app(
    readiness_probes: Mapping[str, ReadinessProbe], metrics: Metrics | None = None
) -> FastAPI:
    """The main port of a ``stream`` instance: only /healthz, /readyz and /metrics (its
    WebSocket endpoint ``/ws`` is dispatched in front of this app)."""
    app = FastAPI(title="ratewire (stream role)", version=__version__, docs_url=None)
    app.state.readiness_probes = dict(readiness_probes)
    app.state.metrics = metrics
    install_problem_handlers(app)
    app.include_router(ops_router)
    return app
