"""``ratewire mcp --http`` as an OAuth 2.1 resource server (the MCP specification's
authorization section): every request to ``/mcp`` carries ``Authorization: Bearer <ratewire
JWT>``, checked by the ratewire it serves, and the endpoint describes itself with RFC 9728
Protected Resource Metadata.

A token is checked with ``GET /whoami`` on ratewire's REST API, so exactly what REST and
WebSockets accept is accepted here: keys and ``kid``, algorithms, the longest lifetime,
expiry, revocation. An answer is kept for at most :data:`CHECK_SECONDS`, so a revoked or
expired token is refused within that.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from collections import OrderedDict
from datetime import datetime
from typing import Any

import httpx
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.routes import create_protected_resource_routes
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import AnyHttpUrl
from starlette.routing import Route

from ratewire.config import McpSettings, TlsSettings
from ratewire.security.tokens import (
    SCOPE_ADMIN,
    SCOPE_READ,
    SCOPE_WRITE,
    SCOPE_WRITE_ANY,
    scopes_read_only,
)

log = logging.getLogger("ratewire.mcp")
#: How long a token's check is trusted before ratewire is asked again.
CHECK_SECONDS = 1.0
#: Checked tokens remembered at most (the oldest go first).
MAX_REMEMBERED = 4096
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_METADATA = re.compile(r'resource_metadata="[^"]*"')


class RatewireTokenVerifier:
    """The SDK's ``TokenVerifier``: asks ratewire what a bearer token is worth."""

    def __init__(self, rest_url: str, *, timeout: float = 5.0) -> None:
        self._http = httpx.AsyncClient(base_url=rest_url.rstrip("/"), timeout=timeout)
        self._checked: OrderedDict[str, tuple[float, AccessToken | None]] = OrderedDict()

    async def verify_token(self, token: str) -> AccessToken | None:
        """The token's identity and scopes, or None (the SDK answers 401)."""
        now = time.monotonic()
        checked = self._checked.get(token)
        if checked is not None and checked[0] > now:
            return checked[1]
        try:
            answer = await self._http.get("/whoami", headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as exc:
            # Refused, not let through: an MCP server that cannot ask must not guess.
            log.warning("cannot check a bearer token with ratewire (%s); refusing it", exc)
            return None
        access = None
        if answer.status_code == 200:
            body = answer.json()
            expires = body.get("expiresAt")
            access = AccessToken(
                token=token,
                client_id=str(body["sub"]),
                subject=str(body["sub"]),
                scopes=list(body.get("scopes") or ()),
                expires_at=int(_epoch(expires)) if expires else None,
            )
        self._checked[token] = (now + CHECK_SECONDS, access)
        self._checked.move_to_end(token)
        while len(self._checked) > MAX_REMEMBERED:
            self._checked.popitem(last=False)
        return access

    async def close(self) -> None:
        await self._http.aclose()


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def read_only(access: AccessToken) -> bool:
    """Whether the token may not write, by REST's own rule."""
    return scopes_read_only(access.scopes)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def binding_problem(host: str, settings: McpSettings, tls: TlsSettings) -> str | None:
    """Why ``host`` may not be served (beyond loopback, tokens would cross the network in
    the clear), or None."""
    if is_loopback(host) or tls.cert or settings.tls_terminated_by_proxy:
        return None
    return (
        f"ratewire mcp --http on {host} would carry bearer tokens in the clear: set tls.cert "
        "and tls.key, or mcp.tls_terminated_by_proxy: true when a proxy in front ends TLS"
    )


def resource_url(host: str, port: int, settings: McpSettings, tls: TlsSettings) -> str:
    """The MCP endpoint's URL as agents reach it (mcp.public_url, else as served)."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if tls.cert else 'http'}://{shown}:{port}/mcp"


def transport_security(host: str, settings: McpSettings) -> TransportSecuritySettings:
    """Host and Origin allow-lists (DNS-rebinding protection), always on."""
    hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
    if not is_loopback(host):
        hosts.append(f"[{host}]:*" if ":" in host else f"{host}:*")
    origins = [f"{scheme}://{name}" for scheme in ("http", "https") for name in hosts]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=settings.allowed_hosts if settings.allowed_hosts is not None else hosts,
        allowed_origins=(
            settings.allowed_origins if settings.allowed_origins is not None else origins
        ),
    )


def metadata_routes(resource: str, authorization_servers: list[str]) -> list[Any]:
    """RFC 9728 metadata at ``/.well-known/oauth-protected-resource`` and at the path-suffixed
    form (``.../mcp``) that the 401's ``resource_metadata`` names."""
    routes = create_protected_resource_routes(
        resource_url=AnyHttpUrl(resource),
        authorization_servers=[AnyHttpUrl(url) for url in authorization_servers],
        scopes_supported=[SCOPE_READ, SCOPE_WRITE, SCOPE_WRITE_ANY, SCOPE_ADMIN],
        resource_name="ratewire",
    )
    suffix = "/.well-known/oauth-protected-resource"
    bare = [route for route in routes if route.path.startswith(suffix)]
    return [*routes, Route(suffix, endpoint=bare[0].endpoint, methods=["GET", "OPTIONS"])]


class BareChallenge:
    """RFC 6750 section 3.1: a request that carried no credentials gets a challenge without an
    error code (``Bearer resource_metadata="..."``); the SDK's answer always names
    ``invalid_token``, which is right only where a token was sent."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        sent_token = scope["type"] != "http" or any(
            name == b"authorization" for name, _ in scope.get("headers", ())
        )
        if sent_token:
            await self.app(scope, receive, send)
            return

        async def challenge(message: Any) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                headers = []
                for name, value in message.get("headers", ()):
                    if name == b"www-authenticate":
                        found = _METADATA.search(value.decode("latin-1"))
                        value = b"Bearer" + (
                            f" {found.group(0)}".encode("latin-1") if found else b""
                        )
                    headers.append((name, value))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, challenge)
