"""The cluster broker: committed events travel through Redis Streams to every instance.

Layout (``P`` is ``broker.prefix``, ``E`` the store's epoch, so two databases sharing one Redis
can never mix their histories):

- ``P:E:events``: every event, entry id ``{seq}-0``; every instance's consumer follows it.
- ``P:E:t:{topic}``: each game and user topic's events, entry id ``{offset}-0`` (the history a
  ``stream`` instance without a database serves ``since`` resume from).
- ``P:E:cursor``: the ``seq`` of the last event published. The stream is the relay's cursor,
  so it survives every relay restart.
- ``P:epoch``: the epoch being published (read by instances that have no database).
- ``P:lease``: which relay polls the store for events nobody announced (a ``SET NX PX`` lease,
  renewed while its holder lives).

Exactly once comes from the publish script, not from the lease. It runs atomically and takes
a batch that is *complete after* some ``seq`` (the batch holds every event the store has in
``(after, last]``): it appends only events above the cursor, and only when ``after`` is at or
below the cursor, so nothing is published twice, nothing out of order, and a gap is refused
(the caller reads the store and comes back). A relay that was paused for a minute and wakes
with a stale batch therefore adds nothing already there and skips nothing. The lease only
keeps the store polling to one instance, and decides who seeds a stream that Redis lost: only
the holder may publish into a missing cursor, and only a batch complete from the store's
beginning (``after`` 0), so a stream rebuilt after a Redis restart is never missing an event
that was committed while Redis was away.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from ratewire.broker.cluster_base import FollowingBroker
from ratewire.broker.event_codec import decode_event, encode_event
from ratewire.broker.redis import link
from ratewire.domain import RatingEvent, Topic, TopicKind

_PUBLISH = """
local cursor = tonumber(redis.call('GET', KEYS[1]) or '-1')
if cursor < 0 then
  if redis.call('GET', KEYS[4]) ~= ARGV[3] or tonumber(ARGV[4]) ~= 0 then return -1 end
  cursor = 0
elseif tonumber(ARGV[4]) > cursor then
  return {cursor, 0}
end
local appended = 0
local n = (#ARGV - 4) / 4
for i = 0, n - 1 do
  local base = 5 + i * 4
  local seq = tonumber(ARGV[base])
  if seq > cursor then
    local payload = ARGV[base + 3]
    local keep = ARGV[2]
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', keep, ARGV[base] .. '-0', 'e', payload)
    redis.call('XADD', KEYS[5 + i * 2], 'MAXLEN', '~', keep, ARGV[base + 1] .. '-0', 'e', payload)
    redis.call('XADD', KEYS[6 + i * 2], 'MAXLEN', '~', keep, ARGV[base + 2] .. '-0', 'e', payload)
    cursor = seq
    appended = appended + 1
  end
end
redis.call('SET', KEYS[1], cursor)
redis.call('SET', KEYS[3], ARGV[1])
return {cursor, appended}
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end"


def _entry_number(entry_id: bytes) -> int:
    return int(entry_id.split(b"-", 1)[0])


class RedisBroker(FollowingBroker):
    """Redis Streams broker: publish (any instance), follow (every instance), relay lease."""

    backend_name = "Redis"
    unreachable = link.UNREACHABLE

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "ratewire",
        max_events: int = 10_000,
        lease_seconds: float = 2.0,
    ) -> None:
        self._url = url
        self._prefix = prefix
        self._max_events = max_events
        self._lease_ms = int(lease_seconds * 1000)
        super().__init__(lease_seconds)
        self._owner = secrets.token_hex(8)
        self._redis = link.connect(url)
        self._reader = link.connect(url, blocking=True)  # XREAD ... BLOCK
        self._publish_script = self._redis.register_script(_PUBLISH)
        self._renew_script = self._redis.register_script(_RENEW)
        self.epoch = ""
        #: How many events the last ``publish`` call appended (see the Broker protocol).
        self.appended = 0

    # -- keys ------------------------------------------------------------------------------

    def _key(self, name: str) -> str:
        return f"{self._prefix}:{self.epoch}:{name}"

    def _topic_key(self, topic: str) -> str:
        return self._key(f"t:{topic}")

    # -- lifecycle -------------------------------------------------------------------------

    async def connect(self, epoch: str | None) -> None:
        """Reach Redis and settle the epoch: the store's when this instance has one (it is
        announced for the others), else the announced one (waiting for an announcement)."""
        if epoch is None:
            self.epoch = await self._wait_for_epoch()
            return
        self.epoch = epoch
        with self.translated():
            await self._redis.set(f"{self._prefix}:epoch", epoch)

    async def _announced_epoch(self) -> str | None:
        current: Any = await self._redis.get(f"{self._prefix}:epoch")
        return current.decode() if current else None

    async def _disconnect(self) -> None:
        await self._reader.aclose()
        await self._redis.aclose()

    async def ping(self) -> None:
        with self.translated():
            await self._redis.ping()

    # -- publishing ------------------------------------------------------------------------

    async def cursor(self) -> int | None:
        """The ``seq`` of the last event published, or None if Redis has no stream (new, or it
        lost its data)."""
        with self.translated():
            value = await self._redis.get(self._key("cursor"))
        return None if value is None else int(value)

    async def publish(self, events: Sequence[RatingEvent], after: int) -> int | None:
        """Append ``events`` (every event the store has with ``seq`` in ``(after, last]``).

        Returns the stream's cursor afterwards. It is below the batch's last ``seq`` when the
        batch did not reach back to the cursor (read the store after the cursor and retry), and
        None when the stream has no cursor (new, or Redis lost it) and this call may not seed
        it: only the lease holder may, with ``after`` 0."""
        keys = [
            self._key("cursor"),
            self._key("events"),
            f"{self._prefix}:epoch",
            f"{self._prefix}:lease",
        ]
        args: list[Any] = [self.epoch, self._max_events, self._owner, after]
        for event in events:
            keys.append(self._topic_key(f"rating.game.{event.game_id}"))
            keys.append(self._topic_key(f"rating.user.{event.user_id}"))
            args.extend((event.seq, event.game_offset, event.user_offset, encode_event(event)))
        with self.translated():
            result: Any = await self._publish_script(keys=keys, args=args)
        if not isinstance(result, list):  # -1: no cursor, and this call may not seed it
            self.appended = 0
            return None
        # What this call appended: with several relays publishing, the cursor can move past
        # events another one appended, which are not this instance's to count.
        self.appended = int(result[1])
        return int(result[0])

    @property
    def _lease_key(self) -> str:
        return f"{self._prefix}:lease"

    async def _take_lease(self) -> bool:
        return bool(await self._redis.set(self._lease_key, self._owner, nx=True, px=self._lease_ms))

    async def _renew_lease(self) -> bool:
        return bool(
            await self._renew_script(keys=[self._lease_key], args=[self._owner, self._lease_ms])
        )

    async def _release_lease(self) -> None:
        await self._redis.eval(_RELEASE, 1, self._lease_key, self._owner)

    # -- history (instances without a database) --------------------------------------------

    async def topic_position(self, topic: Topic) -> tuple[int, int]:
        """(the topic's last offset, the last ``seq``) as Redis holds them, read atomically."""
        with self.translated():
            async with self._redis.pipeline(transaction=True) as pipe:
                if topic.kind is TopicKind.GLOBAL or not topic.has_history:
                    pipe.get(self._key("cursor"))
                    (cursor,) = await pipe.execute()
                    seq = int(cursor or 0)
                    return (seq if topic.kind is TopicKind.GLOBAL else 0), seq
                pipe.xrevrange(self._topic_key(topic.name), count=1)
                pipe.get(self._key("cursor"))
                last, cursor = await pipe.execute()
        return (_entry_number(last[0][0]) if last else 0), int(cursor or 0)

    async def topic_events(self, topic: Topic, since: int, limit: int) -> list[RatingEvent]:
        """The topic's events in the stream with offset above ``since``, in order."""
        if not topic.has_history:
            return []
        key = self._key("events") if topic.kind is TopicKind.GLOBAL else self._topic_key(topic.name)
        with self.translated():
            entries: Any = await self._redis.xrange(key, min=f"{since + 1}-0", count=limit)
        return [decode_event(fields[b"e"]) for _, fields in entries]

    # -- following -------------------------------------------------------------------------

    async def _follow_step(self) -> None:
        reply: Any = await self._reader.xread(
            {self._key("events"): f"{self.consumed}-0"}, count=1000, block=1000
        )
        self._following()
        for _, entries in reply:
            await self._deliver(entries)

    async def _deliver(self, entries: list[Any]) -> None:
        delivery = self._delivery
        for entry_id, fields in entries:
            if _entry_number(entry_id) > delivery.consumed:  # else: already delivered
                await delivery.deliver(decode_event(fields[b"e"]))
