"""The hottest routes without FastAPI's routing and dependency layers:
``GET /games/{id}/summary`` (what agents that cannot hold a WebSocket poll), ``POST /ratings``
and ``PUT /games/{g}/ratings/{u}`` (the upsert agents use).

Both spent most of their time in framework layers (about 15 ASGI layers, route matching across
the routers, dependency solving). Measured with wrk on SQLite: the cached summary went from
0.60x ``/healthz`` through FastAPI to 1.3x here. These paths sit inside the admission
middleware (request ids, rate limits and tokens apply as before) and handle only the plain
successful case, with the very pydantic model the route uses. Any other request, and any
refusal, goes to the FastAPI route (a refused write changed nothing, so the route's answer is
the same), which stays the documented one; a store failure is answered 503 here, since such a
write may have committed and must not run twice. The OpenAPI document and every problem+json
answer are unchanged (tests compare them).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ratewire.api.admission import AUTH_STATE_KEY, current_audit_context, request_header
from ratewire.api.problems import problem_response, storage_unavailable_response
from ratewire.api.request_metrics import ROUTE_TEMPLATE_KEY
from ratewire.api.routes import REVALIDATE, etag_matches, parse_if_match, summary_etag
from ratewire.api.schemas import RatingCreate, RatingReplace
from ratewire.domain import RatingDraft, validate_identifier
from ratewire.domain.rating import is_identifier
from ratewire.security.tokens import Principal
from ratewire.services.ratings import Forbidden, RatingService
from ratewire.storage.base import (
    AlreadyExists,
    NotFound,
    StorageUnavailable,
    VersionMismatch,
    WriteResult,
)

log = logging.getLogger("ratewire.api")

_PREFIX, _SUFFIX = "/games/", "/summary"
_REVALIDATE = REVALIDATE.encode()


class FastPaths:
    """Serves the plain cases of ``GET /games/{id}/summary`` and ``POST /ratings``;
    everything else passes to ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["query_string"]:
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if method == "POST" and path == "/ratings":
            await self._create(scope, receive, send)
            return
        if method == "PUT" and path.startswith(_PREFIX):
            await self._upsert(scope, receive, send, path)
            return
        if method != "GET" or not path.startswith(_PREFIX) or not path.endswith(_SUFFIX):
            await self.app(scope, receive, send)
            return
        await self._summary(scope, receive, send, path)

    async def _summary(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        game_id = path[len(_PREFIX) : -len(_SUFFIX)]
        if not is_identifier(game_id):
            await self.app(scope, receive, send)  # the route explains what is wrong (422)
            return
        service: RatingService = scope["app"].state.service
        try:
            summary = await service.summary(game_id)
        except Exception:
            await self.app(scope, receive, send)  # the same error answer as the route's
            return
        etag = summary_etag(service, summary)
        scope[ROUTE_TEMPLATE_KEY] = "/games/{gameId}/summary"
        if etag_matches(request_header(scope, b"if-none-match"), etag):
            await _answer(send, 304, etag, None)
            return
        await _answer(send, 200, etag, orjson.dumps(service.summary_wire(summary)))

    async def _create(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal = scope.get("state", {}).get(AUTH_STATE_KEY)
        length = request_header(scope, b"content-length")
        if not isinstance(principal, Principal) or length is None:
            await self.app(scope, receive, send)  # 401, chunked bodies: the route's business
            return
        body, receive = await _buffered(receive)
        try:
            fields = RatingCreate.model_validate_json(body)
            user_id = fields.userId or validate_identifier(
                principal.sub, "userId (from the token's sub)"
            )
            draft = RatingDraft(fields.gameId, user_id, fields.score, fields.comment)
        except Exception:
            await self.app(scope, receive, send)  # the route explains what is wrong (422)
            return
        service: RatingService = scope["app"].state.service
        write = service.create(principal, draft, current_audit_context())
        await self._write(scope, receive, send, "/ratings", write)

    async def _upsert(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        game_id, middle, user_id = path[len(_PREFIX) :].partition("/ratings/")
        principal = scope.get("state", {}).get(AUTH_STATE_KEY)
        if (
            not middle
            or not is_identifier(game_id)
            or not is_identifier(user_id)
            or not isinstance(principal, Principal)
            or request_header(scope, b"content-length") is None
        ):
            await self.app(scope, receive, send)  # the route explains what is wrong
            return
        body, receive = await _buffered(receive)
        try:
            fields = RatingReplace.model_validate_json(body)
            draft = RatingDraft(game_id, user_id, fields.score, fields.comment)
            version = parse_if_match(request_header(scope, b"if-match"))  # the route's own rule
        except Exception:
            await self.app(scope, receive, send)  # the route explains what is wrong
            return
        service: RatingService = scope["app"].state.service
        write = service.upsert(principal, draft, version, current_audit_context())
        await self._write(scope, receive, send, "/games/{gameId}/ratings/{userId}", write)

    async def _write(
        self, scope: Scope, receive: Receive, send: Send, route: str, write: Awaitable[WriteResult]
    ) -> None:
        """Answer ``write`` as ``route`` does: 201 with a Location for a new rating, else 200.
        A refusal goes to the route, which refuses it the same way (403, 409, 412: nothing
        was written); a failure is answered here (:func:`_failed`)."""
        try:
            result = await write
        except _REFUSALS:
            await self.app(scope, receive, send)
            return
        except Exception as exc:
            await _failed(scope, receive, send, exc)
            return
        rating = result.rating
        scope[ROUTE_TEMPLATE_KEY] = route
        await _answer(
            send,
            201 if result.created else 200,
            f'"{rating.version}"',
            orjson.dumps(rating.to_wire()),
            [(b"location", f"/ratings/{rating.id}".encode())] if result.created else None,
        )


#: What the service refuses before anything is written: the route, run again, refuses it too
#: and answers in its documented way.
_REFUSALS = (Forbidden, AlreadyExists, VersionMismatch, NotFound)


async def _failed(scope: Scope, receive: Receive, send: Send, exc: Exception) -> None:
    """A write that failed is answered here, never handed to the route: it may have
    committed (a connection that died after COMMIT went out), and the route would run it a
    second time."""
    if isinstance(exc, StorageUnavailable):
        response = storage_unavailable_response(scope["app"], exc)
    else:
        log.error("unexpected error in a write", exc_info=exc)
        response = problem_response(500, "internal error; the server log has the details")
    await response(scope, receive, send)


async def _answer(
    send: Send,
    status: int,
    etag: str,
    body: bytes | None,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """The answer the FastAPI route would give: JSON (or no body, for 304), ETag and
    Cache-Control."""
    headers = [(b"etag", etag.encode()), (b"cache-control", _REVALIDATE)]
    if body is not None:
        headers[:0] = [
            (b"content-length", str(len(body)).encode()),
            (b"content-type", b"application/json"),
        ]
    await send(
        {"type": "http.response.start", "status": status, "headers": headers + (extra or [])}
    )
    await send({"type": "http.response.body", "body": body or b""})


async def _buffered(receive: Receive) -> tuple[bytes, Receive]:
    """The whole request body, and a ``receive`` that hands it out again (for the route)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay
