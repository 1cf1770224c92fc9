"""A cluster's shared REST quota without a Redis round trip per request.

Every instance of a cluster counts requests against one quota per client (a token's ``sub``,
else its IP), kept in Redis as a sliding-window counter: the current minute's count plus the
previous minute's, weighted by how much of it the window still covers (the algorithm of the
``limits`` library's SlidingWindowCounter, which the single node uses). Instead of counting
each request there, an instance *leases* a chunk of what remains (a quarter of it, at most a
twentieth of the limit) in one Lua call and admits the next requests from that chunk in
process. The chunk counts as used in Redis the moment it is leased.

What that gives:

- never more than the limit per window, as the counter counts it: a lease is carved out of
  what remains, atomically. A chunk not used up by the end of its minute is dropped, not
  carried into the next one, so a client spread over N instances gets at most the limit plus
  N chunks in any minute-long window (chunks leased at the end of one minute still weigh
  on the next); a chunk is at most limit/20, and a quarter of what remains as the quota runs
  out;
- a request costs a Redis round trip only when its instance's chunk ran out: at the default
  600/min, one in 30 requests of a busy client (one in 7 as its quota runs low);
- a refused client is refused in process for a second before Redis is asked again;
- Redis down: requests are let through (the API must not fail with its limiter), logged once
  when it goes and once when it is back.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ratewire.security.rate_decision import RateDecision

log = logging.getLogger("ratewire.ratelimit")
WINDOW_SECONDS = 60
#: How long a refusal from Redis is trusted before Redis is asked again.
REFUSAL_SECONDS = 1.0
#: Local leases of clients idle this long are forgotten (memory bound).
IDLE_SECONDS = 2 * WINDOW_SECONDS

# KEYS: previous window, current window. ARGV: limit, weight of the previous window in
# thousandths, largest chunk, TTL of the current window's key in ms.
# Returns {granted, left after the grant}.
_LEASE = """
local prev = tonumber(redis.call('GET', KEYS[1]) or '0')
local curr = tonumber(redis.call('GET', KEYS[2]) or '0')
local left = tonumber(ARGV[1]) - math.floor(prev * tonumber(ARGV[2]) / 1000) - curr
if left <= 0 then
  return {0, 0}
end
local grant = math.min(tonumber(ARGV[3]), math.max(1, math.floor(left / 4)), left)
redis.call('INCRBY', KEYS[2], grant)
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return {grant, left - grant}
"""


@dataclass(slots=True)
class _Lease:
    window: int
    tokens: int  # admissions left in this instance's chunk
    shared_left: int  # what Redis had left after the lease (for RateLimit-Remaining)
    refused_until: float = 0.0
    used_at: float = 0.0


class LeasedQuota:
    """``per_minute`` requests per key across a cluster, admitted from leased chunks."""

    def __init__(self, redis_url: str, per_minute: int, prefix: str = "ratewire-rl") -> None:
        self.limit = per_minute
        self.chunk_max = max(1, per_minute // 20)
        self._redis = aioredis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
        self._script = self._redis.register_script(_LEASE)
        self._prefix = prefix
        self._leases: dict[str, _Lease] = {}
        self._down = False
        self._calls = 0
        #: Requests refused (for /metrics) and leases taken from Redis (for the benchmark).
        self.refused = 0
        self.leases_taken = 0

    async def check(self, key: str) -> RateDecision:
        """Count one request for ``key`` (see the module's docstring for what it promises)."""
        now = time.time()
        window = int(now // WINDOW_SECONDS)
        reset = max(1, math.ceil((window + 1) * WINDOW_SECONDS - now))
        lease = self._leases.get(key)
        if lease is not None and lease.window == window:
            lease.used_at = now
            if lease.tokens > 0:
                lease.tokens -= 1
                return RateDecision(True, self.limit, lease.tokens + lease.shared_left, reset)
            if now < lease.refused_until:
                self.refused += 1
                return RateDecision(
                    False, self.limit, 0, max(1, math.ceil(lease.refused_until - now))
                )
        elif lease is not None:
            del self._leases[key]  # last minute's chunk is dropped, not carried over
        self._calls += 1
        if self._calls % 4096 == 0:
            self._forget_idle(now)
        granted = await self._lease(key, window, now)
        if granted is None:  # Redis is down: let it through
            return RateDecision(True, self.limit, -1, 0)
        lease = self._leases[key]
        if granted == 0:
            lease.refused_until = now + REFUSAL_SECONDS
            self.refused += 1
            return RateDecision(False, self.limit, 0, reset)
        lease.tokens -= 1
        return RateDecision(True, self.limit, lease.tokens + lease.shared_left, reset)

    async def _lease(self, key: str, window: int, now: float) -> int | None:
        weight = 1 - (now - window * WINDOW_SECONDS) / WINDOW_SECONDS
        try:
            granted, left = await self._script(
                keys=[
                    f"{self._prefix}:{key}:{window - 1}",
                    f"{self._prefix}:{key}:{window}",
                ],
                args=[self.limit, int(weight * 1000), self.chunk_max, 2 * WINDOW_SECONDS * 1000],
            )
        except (RedisError, OSError) as exc:
            if not self._down:
                self._down = True
                log.warning("rate-limit store unreachable (%s); letting requests through", exc)
            return None
        if self._down:
            self._down = False
            log.info("rate-limit store reachable again; limiting requests")
        self.leases_taken += 1
        self._leases[key] = _Lease(window, int(granted), int(left), used_at=now)
        return int(granted)

    def _forget_idle(self, now: float) -> None:
        for key in [k for k, lease in self._leases.items() if now - lease.used_at > IDLE_SECONDS]:
            del self._leases[key]

    async def close(self) -> None:
        await self._redis.aclose()
