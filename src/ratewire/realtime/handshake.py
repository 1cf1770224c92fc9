"""What both WebSocket endpoints read from an upgrade request, and how they refuse one."""

from __future__ import annotations

from urllib.parse import parse_qs

#: Plain-text bodies of the HTTP answers that refuse an upgrade, the same on both endpoints.
RATE_REFUSED_BODY = b"too many new connections from this address; retry later\n"
AT_CAPACITY_BODY = b"this server holds as many connections as it can; retry later\n"
IP_CAP_BODY = b"too many open connections from this address; close some first\n"
ORIGIN_REFUSED_BODY = b"this origin may not open WebSockets here\n"


def origin_allowed(origin: str | None, allowed: frozenset[str] | None) -> bool:
    """Whether a browser at ``origin`` may upgrade. Only browsers send Origin, and a page on
    another site could otherwise open a WebSocket with the user's token in the URL."""
    return allowed is None or origin is None or origin.rstrip("/") in allowed


def token_from_request(path: str, authorization: str | None) -> str | None:
    """The JWT of an upgrade request: ``?token=`` (the guide's way) or a Bearer header."""
    _, _, query = path.partition("?")
    if query:
        values = parse_qs(query).get("token")
        if values and values[0]:
            return values[0]
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None
