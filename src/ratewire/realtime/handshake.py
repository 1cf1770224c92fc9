"""What both WebSocket endpoints read from an upgrade request."""

from __future__ import annotations

from urllib.parse import parse_qs


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
