"""Which client address a request is counted for, behind proxies."""

from __future__ import annotations

import pytest

from ratewire.security.proxies import TrustedProxies


def client_of(proxies: TrustedProxies, peer: str, **headers: str) -> str:
    lookup = {name.replace("_", "-"): value for name, value in headers.items()}
    return proxies.client_ip(peer, lookup.get)


@pytest.mark.parametrize(
    ("peer", "headers", "expected"),
    [
        # Untrusted peers: their headers mean nothing.
        ("192.0.2.9", {"x_forwarded_for": "203.0.113.1"}, "192.0.2.9"),
        # A trusted proxy reports its client.
        ("10.0.0.5", {"x_forwarded_for": "203.0.113.1"}, "203.0.113.1"),
        # A client cannot forge what lies behind the last untrusted hop.
        ("10.0.0.5", {"x_forwarded_for": "1.1.1.1, 203.0.113.1"}, "203.0.113.1"),
        # A chain of trusted proxies is walked back to the first untrusted address.
        ("10.0.0.5", {"x_forwarded_for": "203.0.113.1, 10.0.0.7"}, "203.0.113.1"),
        # Garbage in the chain stops the walk at the last address that could be read.
        ("10.0.0.5", {"x_forwarded_for": "203.0.113.1, bogus, 10.0.0.7"}, "10.0.0.7"),
        ("10.0.0.5", {"x_forwarded_for": "not-an-ip"}, "10.0.0.5"),
        ("10.0.0.5", {}, "10.0.0.5"),
        # RFC 7239 Forwarded, with ports and IPv6, takes precedence.
        ("10.0.0.5", {"forwarded": 'for="[2001:db8::1]:4711";proto=https'}, "2001:db8::1"),
        ("10.0.0.5", {"forwarded": "for=203.0.113.2:80, for=10.0.0.8"}, "203.0.113.2"),
        (
            "10.0.0.5",
            {"forwarded": "for=203.0.113.3", "x_forwarded_for": "198.51.100.1"},
            "203.0.113.3",
        ),
    ],
)
def test_client_address(peer: str, headers: dict[str, str], expected: str) -> None:
    assert client_of(TrustedProxies(["10.0.0.0/8"]), peer, **headers) == expected


def test_no_trusted_proxies_means_the_peer_always() -> None:
    proxies = TrustedProxies([])
    assert not proxies
    assert client_of(proxies, "127.0.0.1", x_forwarded_for="203.0.113.1") == "127.0.0.1"
