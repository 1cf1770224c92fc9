"""What both WebSocket endpoints read from an upgrade request."""

from __future__ import annotations

from urllib.parse import parse_qs


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
