"""Which URLs a webhook may call: ``https`` (unless ``webhooks.allow_insecure_http``) to a
public address (unless ``webhooks.allow_private_networks``).

A hostname is resolved and every address it gives is checked, at registration and again at
every connection: the connection goes to the address that was checked, so a name that
resolves to a public address at registration and to 127.0.0.1 later (DNS rebinding) is
refused then too (:class:`GuardedNetworkBackend`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

import httpcore

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: Cloud metadata services that are not in a private range by the standard's own tables.
#: How long resolving a webhook's host may take.
RESOLVE_SECONDS = 5.0
METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}


class RefusedUrl(ValueError):
    """The URL may not be a webhook's; the text says why."""


#: IPv6 prefixes that carry an IPv4 address in their last 32 bits (NAT64's well-known and
#: local-use prefixes, RFC 6052 / 8215; IPv4-compatible addresses, RFC 4291 2.5.5.1).
_IPV4_IN_LAST_32_BITS = (
    ipaddress.ip_network("64:ff9b::/96"),
    ipaddress.ip_network("64:ff9b:1::/48"),
    ipaddress.ip_network("::/96"),
)


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address leads to: mapped (``::ffff:a.b.c.d``), 6to4
    (``2002:AABB:CCDD::``), Teredo's client, NAT64 and IPv4-compatible forms."""
    found = [a for a in (address.ipv4_mapped, address.sixtofour) if a is not None]
    if address.teredo is not None:
        found.append(address.teredo[1])
    # :: and ::1 are the unspecified and loopback addresses, not IPv4-compatible ones.
    if int(address) > 1 and any(address in prefix for prefix in _IPV4_IN_LAST_32_BITS):
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def refusal(address: IpAddress) -> str | None:
    """Why a webhook may not connect to ``address`` (None: it may). An IPv6 address that
    embeds an IPv4 one is judged by both: ``2002:7f00:1::`` leads to 127.0.0.1."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            # ::ffff:a.b.c.d is a.b.c.d on a dual-stack socket, nothing more (the wrapper sits
            # in ::/8, "reserved": it must not refuse a public address written this way).
            return _refusal(address.ipv4_mapped)
        for inner in embedded_ipv4(address):
            if (why := _refusal(inner)) is not None:
                return f"{why} ({inner}, embedded)"
    return _refusal(address)


def _refusal(address: IpAddress) -> str | None:
    if address in METADATA:
        return "a cloud metadata address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_private:
        return "a private address"
    if address.is_multicast or address.is_unspecified or address.is_reserved:
        return "not a unicast address"
    if not address.is_global:
        return "not a public address"
    return None


def check_scheme(url: str, *, allow_http: bool) -> tuple[str, int]:
    """The host and port of ``url``, if its form is acceptable; else :class:`RefusedUrl`."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        raise RefusedUrl(f"{url!r}: {exc}") from None
    if parts.scheme not in ("https", "http"):
        raise RefusedUrl(f"{url!r}: only https URLs are allowed")
    if parts.scheme == "http" and not allow_http:
        raise RefusedUrl(f"{url!r}: only https URLs are allowed (webhooks.allow_insecure_http)")
    if not host:
        raise RefusedUrl(f"{url!r}: no host")
    if parts.username or parts.password:
        raise RefusedUrl(f"{url!r}: credentials in the URL are not allowed; sign instead")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise RefusedUrl(f"{url!r}: bad port") from None
    return host, port


async def resolve(host: str, port: int) -> list[IpAddress]:
    """Every address ``host`` resolves to (itself, if it is one)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_SECONDS):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as exc:
        raise RefusedUrl(f"{host}: cannot be resolved ({exc or 'timed out'})") from None
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


async def checked_addresses(host: str, port: int, *, allow_private: bool) -> list[IpAddress]:
    """The addresses of ``host``, all of them acceptable; else :class:`RefusedUrl` naming the
    first that is not."""
    addresses = await resolve(host, port)
    if not allow_private:
        for address in addresses:
            if (why := refusal(address)) is not None:
                raise RefusedUrl(
                    f"{host} resolves to {address}, {why} (webhooks.allow_private_networks)"
                )
    return addresses


async def check_url(url: str, *, allow_http: bool, allow_private: bool) -> None:
    """Refuse (:class:`RefusedUrl`) a URL a webhook may not have."""
    host, port = check_scheme(url, allow_http=allow_http)
    await checked_addresses(host, port, allow_private=allow_private)


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to addresses :func:`checked_addresses`
    accepts: the address checked is the one connected to (TLS still verifies the name)."""

    def __init__(self, *, allow_private: bool) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._allow_private = allow_private

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await checked_addresses(host, port, allow_private=self._allow_private)
        error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        raise RefusedUrl("webhooks do not connect to unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
