"""REST rate limiting: a sliding-window counter per client.

On a single node it is the ``limits`` library's, in memory. A cluster shares one quota per
client through Redis, admitted in process from chunks each instance leases
(:mod:`ratewire.security.quota_lease`), so a request does not pay a Redis round trip.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from ratewire.config import BrokerSettings
from ratewire.security.rate_decision import RateDecision

if TYPE_CHECKING:
    from ratewire.security.quota_lease import LeasedQuota

__all__ = ["ConnectionRateLimiter", "RateDecision", "RequestRateLimiter", "shared_rate_limit_uri"]


def shared_rate_limit_uri(broker: BrokerSettings) -> str | None:
    """The Redis that instances of one cluster share quotas in: the broker's, so a client
    cannot multiply its quota by the number of instances. None on a single node."""
    if broker.backend != "redis":
        return None
    return broker.url


class RequestRateLimiter:
    """``per_minute`` requests per key (a token's ``sub``, else the client IP)."""

    def __init__(self, per_minute: float, shared_redis_url: str | None = None) -> None:
        self._limiter = SlidingWindowCounterRateLimiter(MemoryStorage())
        self._item = RateLimitItemPerMinute(max(1, int(per_minute)))
        self._shared: LeasedQuota | None = None
        if shared_redis_url:  # a cluster: ratewire[redis] is installed (its broker needs it)
            from ratewire.security.quota_lease import LeasedQuota

            self._shared = LeasedQuota(shared_redis_url, self._item.amount)
        self._refused_here = 0

    @property
    def refused(self) -> int:
        """Requests refused with 429 (for /metrics)."""
        return self._refused_here + (self._shared.refused if self._shared is not None else 0)

    async def check(self, key: str) -> RateDecision:
        """Count one request for ``key``; the decision says if it is over the limit.

        If the shared quota's store (Redis) cannot be reached the request is let through: an
        outage of the limiter must not become an outage of the API."""
        if self._shared is not None:
            return await self._shared.check(key)
        # In memory: nothing here can be unreachable.
        allowed = await self._limiter.hit(self._item, key)
        stats = await self._limiter.get_window_stats(self._item, key)
        reset = max(1, math.ceil(stats.reset_time - time.time()))
        if not allowed:
            self._refused_here += 1
        return RateDecision(allowed, self._item.amount, max(stats.remaining, 0), reset)

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
