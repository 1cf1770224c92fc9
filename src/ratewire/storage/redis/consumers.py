"""Durable consumers on the Redis backend: each consumer a hash, its claims a hash (offset ->
``delivery:member``) with their deadlines in a sorted set, its acks above the floor a set.
Claims and acks are Lua scripts, so each is one atomic step for every instance."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ratewire.storage.consumer_store import (
    AckOutcome,
    Claim,
    Consumer,
    ConsumerKey,
    consumer_id,
    split_acks,
)
from ratewire.storage.redis.side_store import RedisSideStore

# KEYS: consumer, owner's set, activity zset; ARGV: id, then field/value pairs. 1 if created.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local fields = {}
for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], redis.call('HGET', KEYS[1], 'active_at'), ARGV[1])
return 1
"""
# KEYS: consumer, claims, deadlines, activity; ARGV: member, most, head, now, id.
# Returns {cursor, offset, delivery, offset, delivery, ...}, or {} if there is no consumer.
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local most, head = tonumber(ARGV[2]), tonumber(ARGV[3])
local deadline = tonumber(ARGV[4]) + tonumber(redis.call('HGET', KEYS[1], 'ack_wait_ms'))
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[4])
local offsets = {}
for i, o in ipairs(due) do offsets[i] = tonumber(o) end
table.sort(offsets)
local out = {0}
local taken = 0
for _, o in ipairs(offsets) do
  if taken >= most then break end
  local key = string.format('%d', o)
  local delivery = tonumber(string.match(redis.call('HGET', KEYS[2], key), '^(%d+)')) + 1
  redis.call('HSET', KEYS[2], key, delivery .. ':' .. ARGV[1])
  redis.call('ZADD', KEYS[3], deadline, key)
  taken = taken + 1
  out[#out + 1] = o
  out[#out + 1] = delivery
end
local cursor = tonumber(redis.call('HGET', KEYS[1], 'cursor'))
local last = math.min(head, cursor + most - taken)
for o = cursor + 1, last do
  local key = string.format('%d', o)
  redis.call('HSET', KEYS[2], key, '1:' .. ARGV[1])
  redis.call('ZADD', KEYS[3], deadline, key)
  out[#out + 1] = o
  out[#out + 1] = 1
end
if last > cursor then
  cursor = last
  redis.call('HSET', KEYS[1], 'cursor', string.format('%d', cursor))
end
redis.call('HSET', KEYS[1], 'active_at', ARGV[4])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[5])
out[1] = cursor
return out
"""
# KEYS: consumer, claims, deadlines, acks, activity; ARGV: now, id, offsets (deduplicated).
# Returns {floor, cursor}, or {} if there is no consumer.
_ACK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local floor = tonumber(redis.call('HGET', KEYS[1], 'ack_floor'))
local cursor = tonumber(redis.call('HGET', KEYS[1], 'cursor'))
for i = 3, #ARGV do
  local o = tonumber(ARGV[i])
  if o >= 1 and o <= cursor then
    redis.call('HDEL', KEYS[2], ARGV[i])
    redis.call('ZREM', KEYS[3], ARGV[i])
    if o > floor then redis.call('SADD', KEYS[4], ARGV[i]) end
  end
end
while redis.call('SREM', KEYS[4], string.format('%d', floor + 1)) == 1 do
  floor = floor + 1
end
redis.call('HSET', KEYS[1], 'ack_floor', string.format('%d', floor), 'active_at', ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[1], ARGV[2])
return {floor, cursor}
"""
# KEYS: claims, deadlines; ARGV: member. Returns how many claims expire now.
_RELEASE = """
local claims = redis.call('HGETALL', KEYS[1])
local released = 0
for i = 1, #claims, 2 do
  if string.match(claims[i + 1], '^%d+:(.*)$') == ARGV[1] then
    redis.call('ZADD', KEYS[2], 0, claims[i])
    released = released + 1
  end
end
return released
"""

_INT_FIELDS = ("ack_floor", "cursor", "ack_wait_ms", "max_in_flight", "created_at", "active_at")


class RedisConsumerStore(RedisSideStore):
    """A :class:`~ratewire.storage.consumer_store.ConsumerStore` in the store's Redis."""

    def _lay_out(self, prefix: str) -> None:
        self._prefix = f"{prefix}:consumer:"
        self._owners = f"{prefix}:consumers:owner:"
        self._activity = f"{prefix}:consumers:active"
        self._create, self._claim, self._ack, self._release = self._scripts(
            _CREATE, _CLAIM, _ACK, _RELEASE
        )

    def _keys(self, cid: str) -> tuple[str, str, str, str]:
        """The consumer's hash, claims, deadlines and acks."""
        base = self._prefix + cid
        return base, base + ":claims", base + ":deadlines", base + ":acks"

    async def _read(self, cid: str) -> Consumer | None:
        record, claims, _, _ = self._keys(cid)
        pipe = self._client.pipeline(transaction=True)
        pipe.hgetall(record)
        pipe.hlen(claims)
        fields, pending = await pipe.execute()
        if not fields:
            return None
        text = {k.decode(): v.decode() for k, v in fields.items()}
        return Consumer(
            key=ConsumerKey(text["sub"], text["name"], text["topic"]),
            filter=text.get("filter") or None,
            pending=int(pending),
            **{name: int(text[name]) for name in _INT_FIELDS},
        )

    async def create(self, consumer: Consumer) -> tuple[Consumer, bool]:
        cid = consumer_id(consumer.key)
        fields: list[Any] = [
            "sub",
            consumer.key.sub,
            "name",
            consumer.key.name,
            "topic",
            consumer.key.topic,
            "filter",
            consumer.filter or "",
        ]
        for name in _INT_FIELDS:
            fields += [name, getattr(consumer, name)]
        async with self._reaching():
            made = await self._create(
                keys=[self._keys(cid)[0], self._owners + consumer.key.sub, self._activity],
                args=[cid, *fields],
            )
            if made:
                return consumer, True
            existing = await self._read(cid)
        assert existing is not None  # consumers are removed only with their key's owner
        return existing, False

    async def get(self, key: ConsumerKey) -> Consumer | None:
        async with self._reaching():
            return await self._read(consumer_id(key))

    async def owned_by(self, sub: str) -> list[Consumer]:
        async with self._reaching():
            ids = await self._client.smembers(self._owners + sub)
            found = [await self._read(cid.decode()) for cid in ids]
        mine = [c for c in found if c is not None]
        return sorted(mine, key=lambda c: (c.key.topic, c.key.name))

    async def remove(self, key: ConsumerKey) -> bool:
        cid = consumer_id(key)
        async with self._reaching():
            pipe = self._client.pipeline(transaction=True)
            pipe.delete(*self._keys(cid))
            pipe.srem(self._owners + key.sub, cid)
            pipe.zrem(self._activity, cid)
            deleted, _, _ = await pipe.execute()
        return bool(deleted)

    async def claim(
        self, key: ConsumerKey, member: str, most: int, head: int, now_ms: int
    ) -> tuple[list[Claim], int]:
        cid = consumer_id(key)
        record, claims, deadlines, _ = self._keys(cid)
        async with self._reaching():
            out = await self._claim(
                keys=[record, claims, deadlines, self._activity],
                args=[member, most, head, now_ms, cid],
            )
        if not out:
            return [], 0
        taken = [Claim(int(out[i]), int(out[i + 1])) for i in range(1, len(out), 2)]
        return sorted(taken, key=lambda c: c.offset), int(out[0])

    async def ack(self, key: ConsumerKey, offsets: Sequence[int], now_ms: int) -> AckOutcome:
        cid = consumer_id(key)
        unique = sorted(set(offsets))
        async with self._reaching():
            out = await self._ack(
                keys=[*self._keys(cid), self._activity], args=[now_ms, cid, *unique]
            )
        if not out:
            return AckOutcome((), tuple(unique), 0, found=False)
        floor, cursor = int(out[0]), int(out[1])
        acked, refused = split_acks(cursor, unique)
        return AckOutcome(acked, refused, floor)

    async def release(self, key: ConsumerKey, member: str) -> int:
        _, claims, deadlines, _ = self._keys(consumer_id(key))
        async with self._reaching():
            released = await self._release(keys=[claims, deadlines], args=[member])
        return int(released)

    async def remove_idle(self, before_ms: int) -> list[ConsumerKey]:
        async with self._reaching():
            ids = await self._client.zrangebyscore(self._activity, "-inf", f"({before_ms}")
        gone: list[ConsumerKey] = []
        for raw in ids:
            async with self._reaching():
                found = await self._read(raw.decode())
            if found is None:
                await self._client.zrem(self._activity, raw)
            elif found.active_at < before_ms and await self.remove(found.key):
                gone.append(found.key)
        return gone


__all__ = ["RedisConsumerStore"]
