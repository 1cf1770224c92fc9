"""REST rate limiting: a sliding-window counter per client.

On a single node it is :class:`SlidingWindowCounter`, in process: the algorithm of the
``limits`` library's sliding-window counter, written here because that library's memory
storage did not fit the hot path. Each hit schedules a pass over *every* key it holds
(``MemoryStorage.__expire_events``, once the previous pass is done), so the cost of a
request grows with the number of clients: with a token per user, 20,000 users writing took
21% of the event loop in that pass and POST /ratings fell from 0.36x to 0.24x of /healthz
(bench.rest --hot-games 50; bench/results/profiles.txt). Here a hit is two dict lookups,
and keys idle for two windows go with the window they were counted in.

A cluster shares one quota per client through its broker (Redis, or a NATS key-value
bucket), admitted in process from chunks each instance leases
(:mod:`ratewire.security.quota_lease`), so a request does not pay a round trip.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from ratewire.security.rate_decision import RateDecision

if TYPE_CHECKING:
    from ratewire.security.quota_lease import ChunkStore, LeasedQuota

__all__ = ["ConnectionRateLimiter", "RateDecision", "RequestRateLimiter"]


class SlidingWindowCounter:
    """At most ``limit`` hits per key in any ``window`` seconds, approximately: the count of
    the current window plus the previous window's, weighted by the share of it the sliding
    window still covers (windows aligned on multiples of ``window``, as ``limits`` aligns
    them). The numbers it answers are those of ``limits``' SlidingWindowCounterRateLimiter."""

    __slots__ = ("_current", "_index", "_limit", "_previous", "_window")

    def __init__(self, limit: int, window: float = 60.0) -> None:
        self._limit = limit
        self._window = window
        self._index = 0  # the window _current counts
        self._current: dict[str, int] = {}
        self._previous: dict[str, int] = {}  # the window before _index

    def hit(self, key: str, now: float | None = None) -> RateDecision:
        """Count one hit for ``key`` if it fits; the decision either way."""
        now = time.time() if now is None else now
        window = self._window
        index = int(now // window)
        if index != self._index:
            # Rolling over drops every key not seen in the window before: memory stays
            # bounded by the clients of the last two windows, with no pass over them.
            self._previous = self._current if index == self._index + 1 else {}
            self._current = {}
            self._index = index
        previous = self._previous.get(key, 0)
        current = self._current.get(key, 0)
        previous_ttl = window - now % window  # until the previous window stops counting
        allowed = math.floor(previous * previous_ttl / window + current) + 1 <= self._limit
        if allowed:
            current += 1
            self._current[key] = current
        remaining = self._limit - math.floor(previous * previous_ttl / window + current)
        # When the next hit frees up: the previous window's weight drops by one hit every
        # window/previous seconds; the current window's hits stop counting at its end + 1.
        reset_in = math.inf
        if previous:
            reset_in = previous_ttl % (window / previous)
        if current:
            reset_in = min(reset_in, (previous_ttl + window) % window)
        reset = 1 if math.isinf(reset_in) else max(1, math.ceil(reset_in))
        return RateDecision(allowed, self._limit, max(remaining, 0), reset)


class RequestRateLimiter:
    """``per_minute`` requests per key (a token's ``sub``, else the client IP)."""

    def __init__(self, per_minute: float, shared: ChunkStore | None = None) -> None:
        """``shared``: where a cluster's instances count together (None: in this process)."""
        self._limit = max(1, int(per_minute))
        self._counter = SlidingWindowCounter(self._limit)
        self._shared: LeasedQuota | None = None
        if shared is not None:
            from ratewire.security.quota_lease import LeasedQuota

            self._shared = LeasedQuota(shared, self._limit)
        self._refused_here = 0

    @property
    def refused(self) -> int:
        """Requests refused with 429 (for /metrics)."""
        return self._refused_here + (self._shared.refused if self._shared is not None else 0)

    async def check(self, key: str) -> RateDecision:
        """Count one request for ``key``; the decision says if it is over the limit.

        If the shared quota's store (the broker) cannot be reached the request is let through: an
        outage of the limiter must not become an outage of the API."""
        if self._shared is not None:
            return await self._shared.check(key)
        # In memory: nothing here can be unreachable.
        decision = self._counter.hit(key)
        if not decision.allowed:
            self._refused_here += 1
        return decision

    async def close(self) -> None:
        if self._shared is not None:
            await self._shared.close()


class ConnectionRateLimiter:
    """New WebSocket connections per IP per second: a token bucket per address.

    Hand-written rather than ``limits``: it runs inside the accept callback, which is
    synchronous, and costs well under a microsecond per connection.
    """

    def __init__(self, per_second: float) -> None:
        self._rate = per_second
        self._burst = max(1.0, per_second)
        self._buckets: dict[str, tuple[float, float]] = {}  # ip -> (tokens, at)
        self._calls = 0
        #: Connections refused for coming too fast (for /metrics).
        self.refused = 0

    def acquire(self, ip: str) -> int:
        """0 if ``ip`` may connect now (and counts it), else the seconds to wait."""
        now = time.monotonic()
        tokens, at = self._buckets.get(ip, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        self._calls += 1
        if self._calls % 4096 == 0:
            self._forget_idle(now)
        if tokens >= 1:
            self._buckets[ip] = (tokens - 1, now)
            return 0
        self._buckets[ip] = (tokens, now)
        self.refused += 1
        return max(1, math.ceil((1 - tokens) / self._rate))

    def _forget_idle(self, now: float) -> None:
        full_after = self._burst / self._rate
        for ip in [ip for ip, (_, at) in self._buckets.items() if now - at > full_after]:
            del self._buckets[ip]
