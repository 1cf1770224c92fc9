"""``GET /games/{id}/summary`` without FastAPI's routing and dependency layers.

The most polled route (agents that cannot hold a WebSocket poll it) answered from memory
(ratewire.summaries) spent most of its time in framework layers: route matching across the
routers, dependency solving, parameter validation. Measured with wrk: 0.60x ``/healthz``
through FastAPI, 0.8x here. It sits inside the admission middleware (request ids, rate limits
and tokens apply as before) and handles only the plain case: a valid game id, no query. Any
other request, and any error, goes to the FastAPI route, which stays the documented one, so
the OpenAPI document and every problem+json answer are unchanged (tests compare them).
"""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from ratewire.api.routes import REVALIDATE, etag_matches, summary_etag
from ratewire.domain.rating import IDENTIFIER_RE
from ratewire.service import RatingService

_PREFIX, _SUFFIX = "/games/", "/summary"


class FastSummaryReads:
    """Serves ``GET /games/{id}/summary`` directly; everything else passes to ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or scope["method"] != "GET"
            or scope["query_string"]
            or not path.startswith(_PREFIX)
            or not path.endswith(_SUFFIX)
        ):
            await self.app(scope, receive, send)
            return
        game_id = path[len(_PREFIX) : -len(_SUFFIX)]
        if not IDENTIFIER_RE.match(game_id):
            await self.app(scope, receive, send)  # the route explains what is wrong (422)
            return
        service: RatingService = scope["app"].state.service
        try:
            summary = await service.summary(game_id)
        except Exception:
            await self.app(scope, receive, send)  # the same error answer as the route's
            return
        etag = summary_etag(service, summary)
        if_none_match = None
        for name, value in scope["headers"]:
            if name == b"if-none-match":
                if_none_match = value.decode("latin-1")
        if etag_matches(if_none_match, etag):
            await send(
                {
                    "type": "http.response.start",
                    "status": 304,
                    "headers": [(b"etag", etag.encode()), (b"cache-control", REVALIDATE.encode())],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        body = orjson.dumps(service.summary_wire(summary))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-length", str(len(body)).encode()),
                    (b"content-type", b"application/json"),
                    (b"etag", etag.encode()),
                    (b"cache-control", REVALIDATE.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
