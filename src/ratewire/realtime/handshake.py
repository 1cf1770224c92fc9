"""What both WebSocket endpoints read from an upgrade request, and how they refuse one."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from ratewire.realtime.slots import RETRY_AFTER_SECONDS
from ratewire.security.tokens import InvalidToken, Principal

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

    from ratewire.realtime.session import RealtimeContext
    from ratewire.security.ratelimit import ConnectionRateLimiter

#: Plain-text bodies of the HTTP answers that refuse an upgrade, the same on both endpoints.
RATE_REFUSED_BODY = b"too many new connections from this address; retry later\n"
AT_CAPACITY_BODY = b"this server holds as many connections as it can; retry later\n"
IP_CAP_BODY = b"too many open connections from this address; close some first\n"
ORIGIN_REFUSED_BODY = b"this origin may not open connections here\n"
USER_CAP_BODY = b"this user holds too many open connections; close some first\n"
#: What :func:`upgrade_credentials` returns when the token's user is at its connection cap.
USER_CAP_REACHED = InvalidToken("user connection cap reached")
#: The WebSocket subprotocol (``Sec-WebSocket-Protocol``) both endpoints select when offered.
SUBPROTOCOL = "ratewire.v1"
#: A subprotocol list entry ``token.<JWT>`` carries the token (browsers cannot set headers);
#: it is read like ``?token=``, never selected, never echoed, never logged.
TOKEN_SUBPROTOCOL_PREFIX = "token."


def origin_allowed(origin: str | None, allowed: frozenset[str] | None) -> bool:
    """Whether a browser at ``origin`` may upgrade. Only browsers send Origin, and a page on
    another site could otherwise open a WebSocket with the user's token in the URL."""
    return allowed is None or origin is None or origin.rstrip("/") in allowed


def offered_subprotocols(headers: Iterable[str]) -> list[str]:
    """The subprotocols a client offers, from its ``Sec-WebSocket-Protocol`` header(s)
    (comma-separated, RFC 6455 4.1)."""
    return [name.strip() for header in headers for name in header.split(",") if name.strip()]


def chosen_subprotocol(offered: Sequence[str]) -> str | None:
    """What the server answers in ``Sec-WebSocket-Protocol``: :data:`SUBPROTOCOL` when offered
    (among others); None otherwise, including when only unknown ones are offered: the upgrade
    is accepted without one (RFC 6455 4.2.2 allows it), as before subprotocols were known,
    so a non-browser client that names one by habit keeps working (a browser fails such a
    connection itself)."""
    return SUBPROTOCOL if SUBPROTOCOL in offered else None


def token_from_request(
    path: str, authorization: str | None, subprotocols: Sequence[str] = ()
) -> str | None:
    """The JWT of an upgrade request: ``?token=`` (the guide's way), a Bearer header, or a
    ``token.<JWT>`` entry of the subprotocol list (browsers), in that order."""
    _, _, query = path.partition("?")
    if query:
        values = parse_qs(query).get("token")
        if values and values[0]:
            return values[0]
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    for name in subprotocols:
        if name.startswith(TOKEN_SUBPROTOCOL_PREFIX) and len(name) > len(TOKEN_SUBPROTOCOL_PREFIX):
            return name[len(TOKEN_SUBPROTOCOL_PREFIX) :]
    return None


def upgrade_credentials(
    ctx: RealtimeContext, path: str, authorization: str | None, subprotocols: Sequence[str] = ()
) -> Principal | InvalidToken | None:
    """The upgrade's token, verified now (so a user over ``limits.ws_connections_per_user``
    gets HTTP 429 before any WebSocket work): its principal, why it is invalid (the session
    closes with 4001 once open, as the protocol says), :data:`USER_CAP_REACHED`, or None when
    the request carries no token (it may come in an ``auth`` frame)."""
    token = token_from_request(path, authorization, subprotocols)
    if token is None:
        return None
    try:
        principal = ctx.tokens.verify(token)
    except InvalidToken as exc:
        return exc
    return USER_CAP_REACHED if ctx.slots.user_full(principal.sub) else principal


@dataclass(frozen=True, slots=True)
class Refusal:
    """An HTTP answer refusing a connection before it starts."""

    status: int
    retry_after: int | None
    body: bytes


def admit(ctx: RealtimeContext, origin: bytes | None, ip: str) -> Refusal | None:
    """The first checks of a connection on the main port (``/ws`` and ``/stream``): the
    browser origin, then a connection slot for ``ip``. None when admitted: the slot is taken,
    and the caller gives it back with ``ctx.slots.release(ip)`` when the connection ends."""
    if not origin_allowed(origin.decode("latin-1") if origin else None, ctx.allowed_origins):
        return Refusal(403, None, ORIGIN_REFUSED_BODY)
    slots = ctx.slots
    admitted = slots.admit(ip)
    if admitted == slots.OVER_CAPACITY:
        return Refusal(503, RETRY_AFTER_SECONDS, AT_CAPACITY_BODY)
    if admitted == slots.OVER_IP_CAP:
        return Refusal(429, RETRY_AFTER_SECONDS, IP_CAP_BODY)
    return None


class MainPortEndpoint(ABC):
    """A realtime endpoint on the main port (``/ws``, ``/stream``): the browser origin and a
    connection slot decide first (:func:`admit`), then the endpoint serves; the slot is given
    back when the connection ends, however it ends."""

    def __init__(self, ctx: RealtimeContext, limiter: ConnectionRateLimiter) -> None:
        self._ctx = ctx
        self._limiter = limiter

    async def _admit_and_serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        client = scope.get("client")
        ip = client[0] if client else "unknown"
        refusal = admit(self._ctx, headers.get(b"origin"), ip)
        if refusal is not None:
            await self._refuse_admission(scope, send, refusal)
            return
        try:
            await self._serve(ip, headers, scope, receive, send)
        finally:
            self._ctx.slots.release(ip)

    @abstractmethod
    async def _refuse_admission(self, scope: Scope, send: Send, refusal: Refusal) -> None:
        """Answer ``refusal`` the way this endpoint answers before a connection starts."""

    @abstractmethod
    async def _serve(
        self, ip: str, headers: dict[bytes, bytes], scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Serve one admitted connection from ``ip``."""
