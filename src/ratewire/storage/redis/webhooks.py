"""Webhooks on the Redis backend: each webhook one JSON value, its attempts a capped list,
changed by small Lua scripts so a lease check and the write it guards are one step."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import orjson

from ratewire.domain.webhooks import DeliveryAttempt, Progress, Webhook
from ratewire.storage.redis.side_store import RedisSideStore
from ratewire.storage.webhook_store import ATTEMPTS_KEPT, CHANGEABLE

# How every script below starts: KEYS[1]'s webhook, decoded; none there answers nil (None:
# no webhook, lease not held, progress not saved).
_WEBHOOK = """
local raw = redis.call('GET', KEYS[1])
if not raw then return nil end
local webhook = cjson.decode(raw)
"""
# KEYS[1] webhook; ARGV: now_ms, changes (JSON). Returns the new JSON, or nil.
_UPDATE = (
    _WEBHOOK
    + """
for k, v in pairs(cjson.decode(ARGV[2])) do webhook[k] = v end
webhook['generation'] = webhook['generation'] + 1
webhook['updated_at'] = tonumber(ARGV[1])
local encoded = cjson.encode(webhook)
redis.call('SET', KEYS[1], encoded)
return encoded
"""
)
# KEYS[1] webhook; ARGV: owner, now_ms, lease_ms. Returns 1 if owner holds the lease now.
_ACQUIRE = (
    _WEBHOOK
    + """
local holder = webhook['lease_owner']
local now = tonumber(ARGV[2])
if holder ~= cjson.null and holder ~= ARGV[1] and webhook['lease_until'] >= now then
  return 0
end
webhook['lease_owner'] = ARGV[1]
webhook['lease_until'] = now + tonumber(ARGV[3])
redis.call('SET', KEYS[1], cjson.encode(webhook))
return 1
"""
)
# KEYS[1] webhook; ARGV: owner.
_RELEASE = (
    _WEBHOOK
    + """
if webhook['lease_owner'] ~= ARGV[1] then return 0 end
webhook['lease_owner'] = cjson.null
webhook['lease_until'] = 0
redis.call('SET', KEYS[1], cjson.encode(webhook))
return 1
"""
)
# KEYS[1] webhook, KEYS[2] its attempts; ARGV: owner, generation, now_ms, progress (JSON),
# kept, attempts (JSON each, oldest first).
_SAVE = (
    _WEBHOOK
    + """
if webhook['lease_owner'] ~= ARGV[1] or webhook['lease_until'] < tonumber(ARGV[3])
   or webhook['generation'] ~= tonumber(ARGV[2]) then
  return 0
end
local progress = cjson.decode(ARGV[4])
webhook['cursor'] = progress['cursor']
webhook['status'] = progress['status']
webhook['last_error'] = progress['last_error']
redis.call('SET', KEYS[1], cjson.encode(webhook))
for i = 6, #ARGV do redis.call('LPUSH', KEYS[2], ARGV[i]) end
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[5]) - 1)
return 1
"""
)


def _webhook(raw: bytes) -> Webhook:
    fields = orjson.loads(raw)
    fields["topics"] = tuple(fields["topics"])
    return Webhook(**fields)


class RedisWebhookStore(RedisSideStore):
    """A :class:`~ratewire.storage.webhook_store.WebhookStore` in the store's Redis."""

    def _lay_out(self, prefix: str) -> None:
        self._index = f"{prefix}:webhooks"
        self._prefix = f"{prefix}:webhook:"
        self._update, self._acquire, self._release, self._save = self._scripts(
            _UPDATE, _ACQUIRE, _RELEASE, _SAVE
        )

    def _key(self, webhook_id: str) -> str:
        return self._prefix + webhook_id

    async def add(self, webhook: Webhook) -> None:
        async with self._reaching():
            pipe = self._client.pipeline(transaction=True)
            pipe.set(self._key(webhook.id), orjson.dumps(asdict(webhook)))
            pipe.zadd(self._index, {webhook.id: webhook.created_at})
            await pipe.execute()

    async def get(self, webhook_id: str) -> Webhook | None:
        async with self._reaching():
            raw = await self._client.get(self._key(webhook_id))
        return None if raw is None else _webhook(raw)

    async def all(self) -> list[Webhook]:
        async with self._reaching():
            ids = await self._client.zrange(self._index, 0, -1)
            if not ids:
                return []
            raws = await self._client.mget([self._key(i.decode()) for i in ids])
        return [_webhook(raw) for raw in raws if raw is not None]

    async def update(self, webhook_id: str, now_ms: int, **fields: Any) -> Webhook | None:
        assert set(fields) <= CHANGEABLE, set(fields) - CHANGEABLE
        changes = {k: list(v) if k == "topics" else v for k, v in fields.items()}
        async with self._reaching():
            raw = await self._update(
                keys=[self._key(webhook_id)], args=[now_ms, orjson.dumps(changes)]
            )
        return None if raw is None else _webhook(raw)

    async def remove(self, webhook_id: str) -> bool:
        async with self._reaching():
            pipe = self._client.pipeline(transaction=True)
            pipe.delete(self._key(webhook_id), self._key(webhook_id) + ":attempts")
            pipe.zrem(self._index, webhook_id)
            deleted, _ = await pipe.execute()
        return bool(deleted)

    async def acquire(self, webhook_id: str, owner: str, now_ms: int, lease_ms: int) -> bool:
        async with self._reaching():
            held = await self._acquire(keys=[self._key(webhook_id)], args=[owner, now_ms, lease_ms])
        return bool(held)

    async def release(self, webhook_id: str, owner: str) -> None:
        async with self._reaching():
            await self._release(keys=[self._key(webhook_id)], args=[owner])

    async def save(
        self, webhook_id: str, owner: str, generation: int, progress: Progress, now_ms: int
    ) -> bool:
        state = {
            "cursor": progress.cursor,
            "status": progress.status,
            "last_error": progress.last_error,
        }
        attempts = [orjson.dumps(asdict(a)) for a in progress.attempts]
        key = self._key(webhook_id)
        async with self._reaching():
            saved = await self._save(
                keys=[key, key + ":attempts"],
                args=[owner, generation, now_ms, orjson.dumps(state), ATTEMPTS_KEPT, *attempts],
            )
        return bool(saved)

    async def attempts(self, webhook_id: str, limit: int) -> list[DeliveryAttempt]:
        async with self._reaching():
            raws = await self._client.lrange(self._key(webhook_id) + ":attempts", 0, limit - 1)
        return [DeliveryAttempt(**orjson.loads(raw)) for raw in raws]


__all__ = ["RedisWebhookStore"]
