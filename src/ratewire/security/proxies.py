"""Which address a request comes from, when proxies stand in between (``server.trusted_proxies``).

X-Forwarded-For and Forwarded are believed only from a trusted proxy, and only as far back as
the chain stays trusted: the client address is the rightmost one that is not itself a trusted
proxy. A client cannot put a forged address in front, since every proxy appends to the
right. Anyone else's headers are ignored: the peer address is the client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: Set in the ASGI scope when the peer is a trusted proxy (its X-Request-Id is believed too).
VIA_TRUSTED_PROXY = "ratewire.via_trusted_proxy"


def _address(token: str) -> str | None:
    """The IP in one X-Forwarded-For item or Forwarded ``for=`` value, or None."""
    value = token.strip().strip('"')
    if value.startswith("["):  # [2001:db8::1]:4711
        value = value[1 : value.find("]")] if "]" in value else ""
    elif value.count(":") == 1:  # 192.0.2.1:4711
        value = value.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None  # "unknown", an obfuscated node name, garbage


def _forwarded_for(header: str) -> list[str | None]:
    addresses: list[str | None] = []
    for element in header.split(","):
        for pair in element.split(";"):
            name, _, value = pair.partition("=")
            if name.strip().lower() == "for":
                addresses.append(_address(value))
    return addresses


class TrustedProxies:
    """The configured proxy networks, and the client address they report."""

    def __init__(self, cidrs: Iterable[str]) -> None:
        self._networks: list[Network] = [ipaddress.ip_network(c, strict=False) for c in cidrs]

    def __bool__(self) -> bool:
        return bool(self._networks)

    def trusts(self, ip: str) -> bool:
        if not self._networks:
            return False  # the usual case, asked at every accept: no address parsing
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in network for network in self._networks)

    def client_ip(self, peer_ip: str, header: Callable[[str], str | None]) -> str:
        """The client's address: ``peer_ip`` unless it is a trusted proxy that reported one
        (``header(name)`` reads a request header, lower-case name)."""
        if not self._networks or not self.trusts(peer_ip):
            return peer_ip
        forwarded = header("forwarded")
        chain = (
            _forwarded_for(forwarded)
            if forwarded
            else [_address(item) for item in (header("x-forwarded-for") or "").split(",")]
        )
        client = peer_ip
        for address in reversed(chain):
            if address is None:
                break  # unparsable: nothing left of it can be trusted
            client = address
            if not self.trusts(address):
                break
        return client


class ClientAddressMiddleware:
    """Puts the client address (see :class:`TrustedProxies`) into ``scope["client"]`` for
    everything behind it: REST limits, /ws limits, logs."""

    def __init__(self, app: ASGIApp, proxies: TrustedProxies) -> None:
        self.app = app
        self.proxies = proxies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if client and scope["type"] in ("http", "websocket") and self.proxies.trusts(client[0]):
            headers = scope["headers"]

            def header(name: str) -> str | None:
                wanted = name.encode()
                values = [v.decode("latin-1") for k, v in headers if k == wanted]
                return ",".join(values) if values else None

            ip = self.proxies.client_ip(client[0], header)
            scope = {**scope, "client": (ip, 0) if ip != client[0] else client}
            scope[VIA_TRUSTED_PROXY] = True
        await self.app(scope, receive, send)
