"""Who may open a WebSocket connection now: the process's capacity and the per-IP and
per-user caps. A WebSocket upgrade over the capacity gets HTTP 503 with ``Retry-After``
before any WebSocket work; over a per-IP or per-user cap, HTTP 429."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("ratewire.capacity")

#: Seconds a client refused for capacity is asked to wait before retrying.
RETRY_AFTER_SECONDS = 5


class ConnectionSlots:
    """WebSocket connections held, in all and per client IP. A slot is taken at TCP accept
    (at the upgrade request on /ws) and held through the handshake until the socket closes,
    so a burst of handshakes cannot overshoot either maximum."""

    ADMITTED, OVER_CAPACITY, OVER_IP_CAP = 0, 503, 429

    def __init__(
        self, max_connections: int = 1 << 30, per_ip: int = 1 << 30, per_user: int = 1 << 30
    ) -> None:
        self.max_connections = max_connections
        self.per_ip = per_ip
        self.per_user = per_user
        self.open = 0
        self._by_ip: dict[str, int] = {}
        self._by_user: dict[str, int] = {}
        self.refused_at_capacity = 0
        #: Connections refused because their IP or user held its maximum (for /metrics).
        self.refused_per_ip = 0
        self.refused_per_user = 0
        self._reported_at = -1.0

    def admit(self, ip: str | None) -> int:
        """:attr:`ADMITTED` (a slot taken: pair it with :meth:`release`), or the HTTP status
        to refuse with: 503 when the process is full, 429 when ``ip`` holds its maximum.
        ``ip`` None: count the connection now, its IP later (:meth:`admit_ip`; the peer is a
        trusted proxy whose client address comes with the request)."""
        if self.open >= self.max_connections:
            self.refused_at_capacity += 1
            self._report()
            return self.OVER_CAPACITY
        if ip is not None and not self.admit_ip(ip):
            return self.OVER_IP_CAP
        self.open += 1
        return self.ADMITTED

    def admit_ip(self, ip: str) -> bool:
        """Count one more connection of ``ip`` unless it holds its maximum already."""
        if _take(self._by_ip, ip, self.per_ip):
            return True
        self.refused_per_ip += 1
        return False

    def release_ip(self, ip: str) -> None:
        _give(self._by_ip, ip)

    def release(self, ip: str | None) -> None:
        """A connection admitted for ``ip`` (as given to :meth:`admit`) closed."""
        self.open -= 1
        if ip is not None:
            self.release_ip(ip)

    def user_full(self, sub: str) -> bool:
        """Whether ``sub`` holds ``per_user`` connections already (checked at upgrade, which
        is refused when it does)."""
        if self._by_user.get(sub, 0) >= self.per_user:
            self.refused_per_user += 1
            return True
        return False

    def admit_user(self, sub: str) -> bool:
        """Count one more authenticated connection of ``sub``; False when it holds its
        maximum (pair a True with :meth:`release_user`)."""
        if _take(self._by_user, sub, self.per_user):
            return True
        self.refused_per_user += 1
        return False

    def release_user(self, sub: str) -> None:
        _give(self._by_user, sub)

    def _report(self) -> None:
        now = time.monotonic()
        if now - self._reported_at >= 1.0:  # one line a second at most, with the count
            log.warning(
                "at capacity (%d WebSocket connections): answered 503 to %d upgrades in all",
                self.max_connections,
                self.refused_at_capacity,
            )
            self._reported_at = now


def _take(held_by: dict[str, int], key: str, most: int) -> bool:
    """Count one more connection of ``key`` unless it holds ``most`` already."""
    held = held_by.get(key, 0)
    if held >= most:
        return False
    held_by[key] = held + 1
    return True


def _give(held_by: dict[str, int], key: str) -> None:
    """One connection of ``key`` closed (a key that holds none is forgotten)."""
    held = held_by.pop(key, 1) - 1
    if held > 0:
        held_by[key] = held
