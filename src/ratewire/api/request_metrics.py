"""Counts and times every REST request by route template (``ratewire_http_*`` on /metrics).

The template (``/games/{gameId}/summary``), not the path, is the label: one series per route
whatever the ids, so the series count stays bounded.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ratewire.observability.metrics import UNMATCHED_ROUTE, Metrics

#: Where the fast paths, which skip routing, leave the template of the route they answered.
ROUTE_TEMPLATE_KEY = "ratewire.route"


def route_template(scope: Scope, routes: Sequence[BaseRoute] = ()) -> str:
    """The template of the route that answered (after the request), or ``unmatched``.

    A request refused before routing (429, 413, 415 from admission) is labelled with the
    route it was meant for, matched here against ``routes``: only those pay for a second
    match."""
    path = getattr(scope.get("route"), "path", None) or scope.get(ROUTE_TEMPLATE_KEY)
    if isinstance(path, str):
        return path
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return str(getattr(route, "path", UNMATCHED_ROUTE))
    return UNMATCHED_ROUTE


class RequestMetrics:
    """The outermost HTTP middleware: sees every answer, 429 and 413 from admission too."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = tuple(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers when the app raised before responding

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            self.metrics.observe_request(
                route_template(scope, self.routes),
                scope["method"],
                status,
                time.perf_counter() - started,
            )
