"""The shared REST quota's counts in Redis (see :mod:`ratewire.security.quota_lease`): one
Lua call carves a chunk out of what a client has left, atomically."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from ratewire.broker.redis import link
from ratewire.security.quota_lease import WINDOW_SECONDS, ChunkStoreUnavailable

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


class RedisQuotaChunks:
    """Per-client, per-window counts under ``prefix:{key}:{window}``."""

    def __init__(self, url: str, prefix: str = "ratewire-rl") -> None:
        self._redis = aioredis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._script = self._redis.register_script(_LEASE)
        self._prefix = prefix

    async def lease(
        self, key: str, window: int, previous_weight: int, limit: int, chunk_max: int
    ) -> tuple[int, int]:
        try:
            result: Any = await self._script(
                keys=[f"{self._prefix}:{key}:{window - 1}", f"{self._prefix}:{key}:{window}"],
                args=[limit, previous_weight, chunk_max, 2 * WINDOW_SECONDS * 1000],
            )
        except link.UNREACHABLE as exc:
            raise ChunkStoreUnavailable(str(exc)) from exc
        return int(result[0]), int(result[1])

    async def close(self) -> None:
        await self._redis.aclose()
