"""Connection capacity: how many connections this process can hold, and what happens at the
limit.

A streaming server is mostly open sockets, one descriptor each. At start the soft open-files
limit is raised to the hard one (the soft default of 1024 would otherwise cap a server that
the machine allows to hold tens of thousands), and the WebSocket side is given
``limits.max_connections``: by default the descriptors left after a reserve. The reserve
keeps ``/healthz``, ``/readyz``, ``/metrics``, REST, the database pool and Redis working while
the WebSocket side is full; a WebSocket upgrade over the limit gets HTTP 503 with
``Retry-After`` before any WebSocket work.

If the process still runs out of descriptors (a lower limit imposed later, another cause),
it says so: uvloop (libuv) handles EMFILE at accept silently, by accepting and closing the
connections it cannot keep, so a watchdog counts the open descriptors once a second and logs
while they are exhausted (at most one line a second, with the count of such seconds), and
accept errors that do reach the event loop (the stdlib loop's) are counted and logged at most
once a second. The servers keep serving what they hold and accept again by themselves once
descriptors free up: nothing to restart, no busy loop.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("ratewire.capacity")

#: Measured per idle WebSocket connection on the module port (README, fan-out table).
IDLE_CONNECTION_KIB = 13.2
#: Seconds a client refused for capacity is asked to wait before retrying.
RETRY_AFTER_SECONDS = 5
_ACCEPT_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def raise_descriptor_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns (soft, hard) afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, hard, exc)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard


def reserve_for(descriptors: int) -> int:
    """Descriptors kept back from WebSockets: REST clients, pools, files, listeners."""
    return max(64, descriptors // 10)


@dataclass(frozen=True, slots=True)
class Capacity:
    """What this process can hold."""

    descriptors: int
    hard_limit: int
    reserve: int
    max_connections: int
    configured: bool

    def summary(self) -> str:
        memory_mib = self.max_connections * IDLE_CONNECTION_KIB / 1024
        return (
            f"capacity: {self.descriptors} open files allowed (hard limit {self.hard_limit}); "
            f"{self.max_connections} WebSocket connections "
            f"({'limits.max_connections' if self.configured else 'derived'}, "
            f"{self.reserve} descriptors kept for REST and backends), "
            f"about {memory_mib:,.0f} MiB when all are idle"
        )

    def shortfall(self) -> str | None:
        """Why the configured maximum cannot be reached, and how to fix it, or None."""
        needed = self.max_connections + self.reserve
        if needed <= self.descriptors:
            return None
        return (
            f"limits.max_connections {self.max_connections} needs about {needed} open files but "
            f"only {self.descriptors} are allowed: raise the hard limit (ulimit -n {needed}, "
            f"systemd LimitNOFILE={needed}, docker run --ulimit nofile={needed}:{needed})"
        )


def plan(max_connections: int | None) -> Capacity:
    """Raise the descriptor limit and work out the WebSocket connection budget."""
    soft, hard = raise_descriptor_limit()
    reserve = reserve_for(soft)
    if max_connections is None:
        return Capacity(soft, hard, reserve, max(1, soft - reserve), configured=False)
    return Capacity(soft, hard, reserve, max_connections, configured=True)


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
        held = self._by_ip.get(ip, 0)
        if held >= self.per_ip:
            self.refused_per_ip += 1
            return False
        self._by_ip[ip] = held + 1
        return True

    def release_ip(self, ip: str) -> None:
        held = self._by_ip.pop(ip, 1) - 1
        if held > 0:
            self._by_ip[ip] = held

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
        held = self._by_user.get(sub, 0)
        if held >= self.per_user:
            self.refused_per_user += 1
            return False
        self._by_user[sub] = held + 1
        return True

    def release_user(self, sub: str) -> None:
        held = self._by_user.pop(sub, 1) - 1
        if held > 0:
            self._by_user[sub] = held

    def _report(self) -> None:
        now = time.monotonic()
        if now - self._reported_at >= 1.0:  # one line a second at most, with the count
            log.warning(
                "at capacity (%d WebSocket connections): answered 503 to %d upgrades in all",
                self.max_connections,
                self.refused_at_capacity,
            )
            self._reported_at = now


class AcceptErrorReporter:
    """An event-loop exception handler that turns a flood of accept failures (out of
    descriptors) into one counted log line per second; anything else goes to the default
    handler."""

    def __init__(self, interval: float = 1.0) -> None:
        self.count = 0
        self._unreported = 0
        self._interval = interval
        self._last = -interval

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.set_exception_handler(self)

    @staticmethod
    def is_accept_error(context: dict[str, Any]) -> bool:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _ACCEPT_ERRNOS:
            return True
        message = str(context.get("message", ""))
        return "accept" in message.lower() and "Too many open files" in str(exc or message)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if not self.is_accept_error(context):
            loop.default_exception_handler(context)
            return
        self.count += 1
        self._unreported += 1
        now = time.monotonic()
        if now - self._last >= self._interval:
            log.error(
                "cannot accept connections: out of file descriptors (%s); %d refused since the "
                "last report, %d in all; serving the open ones, accepting again when "
                "descriptors free up",
                context.get("exception") or context.get("message"),
                self._unreported,
                self.count,
            )
            self._last, self._unreported = now, 0


class DescriptorWatchdog:
    """Once a second: are the process's descriptors exhausted? Logs while they are."""

    def __init__(self, limit: int, *, interval: float = 1.0, margin: int = 4) -> None:
        self.limit = limit
        self.exhausted_seconds = 0
        self._interval = interval
        self._margin = margin
        self._exhausted = False

    def open_descriptors(self) -> int:
        try:
            return len(os.listdir("/proc/self/fd"))
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                return self.limit  # listing needs a descriptor itself: none left
            return 0  # not Linux: nothing to watch

    def check(self) -> None:
        in_use = self.open_descriptors()
        if in_use >= self.limit - self._margin:
            self.exhausted_seconds += 1
            self._exhausted = True
            log.error(
                "out of file descriptors: %d of %d in use; new connections are closed at accept "
                "until some close (%d s so far); see limits.max_connections and ulimit -n",
                in_use,
                self.limit,
                self.exhausted_seconds,
            )
        elif self._exhausted:
            self._exhausted = False
            log.warning("file descriptors available again: %d of %d in use", in_use, self.limit)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.check()
