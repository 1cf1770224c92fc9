"""A cluster's shared REST quota without a broker round trip per request.

Every instance of a cluster counts requests against one quota per client (a token's ``sub``,
else its IP), kept in the broker (a :class:`ChunkStore`: Redis, or a NATS key-value bucket)
as a sliding-window counter: the current minute's count plus the
previous minute's, weighted by how much of it the window still covers (the algorithm of the
``limits`` library's SlidingWindowCounter, which the single node uses). Instead of counting
each request there, an instance *leases* a chunk of what remains (a quarter of it, at most a
twentieth of the limit) in one atomic step (a Lua call, a compare-and-set) and admits the next
requests from that chunk in process. The chunk counts as used the moment it is leased.

What that gives:

- never more than the limit per window, as the counter counts it: a lease is carved out of
  what remains, atomically. A chunk not used up by the end of its minute is dropped, not
  carried into the next one, so a client spread over N instances gets at most the limit plus
  N chunks in any minute-long window (chunks leased at the end of one minute still weigh
  on the next); a chunk is at most limit/20, and a quarter of what remains as the quota runs
  out;
- a request costs a broker round trip only when its instance's chunk ran out: at the default
  600/min, one in 30 requests of a busy client (one in 7 as its quota runs low);
- a refused client is refused in process for a second before the broker is asked again;
- the broker down: requests are let through (the API must not fail with its limiter), logged
  once when it goes and once when it is back.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Protocol

from ratewire.security.rate_decision import RateDecision

log = logging.getLogger("ratewire.ratelimit")
WINDOW_SECONDS = 60
#: How long a refusal from the store is trusted before it is asked again.
REFUSAL_SECONDS = 1.0
#: Local leases of clients idle this long are forgotten (memory bound).
IDLE_SECONDS = 2 * WINDOW_SECONDS


class ChunkStoreUnavailable(Exception):
    """The store of the shared counts cannot be reached (the request is let through)."""


class ChunkStore(Protocol):
    """Where a cluster's per-client counts live (Redis, or a NATS key-value bucket)."""

    async def lease(
        self, key: str, window: int, previous_weight: int, limit: int, chunk_max: int
    ) -> tuple[int, int]:
        """Carve a chunk out of what ``key`` has left in minute ``window``, atomically: left
        is ``limit`` less the window's count less the previous window's count weighted by
        ``previous_weight`` thousandths; the grant is min(``chunk_max``, a quarter of it, at
        least 1), nothing when nothing is left. Returns (granted, left after the grant);
        raises :class:`ChunkStoreUnavailable`."""

    async def close(self) -> None: ...


@dataclass(slots=True)
class _Lease:
    window: int
    tokens: int  # admissions left in this instance's chunk
    shared_left: int  # what the store had left after the lease (for RateLimit-Remaining)
    refused_until: float = 0.0
    used_at: float = 0.0


class LeasedQuota:
    """``per_minute`` requests per key across a cluster, admitted from leased chunks."""

    def __init__(self, store: ChunkStore, per_minute: int) -> None:
        self.limit = per_minute
        self.chunk_max = max(1, per_minute // 20)
        self._store = store
        self._leases: dict[str, _Lease] = {}
        self._down = False
        self._calls = 0
        #: Requests refused (for /metrics) and leases taken from the store (for the benchmark).
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
        if granted is None:  # the store is down: let it through
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
            granted, left = await self._store.lease(
                key, window, int(weight * 1000), self.limit, self.chunk_max
            )
        except ChunkStoreUnavailable as exc:
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
        await self._store.close()
