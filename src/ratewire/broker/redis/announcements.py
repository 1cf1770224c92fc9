"""Announcements through Redis pub/sub (see :mod:`ratewire.broker.announcements`), with every
entry also kept in a hash (``P:revocations``) for instances that (re)connect later."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson

from ratewire.broker.announcements import (
    RECONNECT_DELAY_MAX,
    RevocationHandler,
    deliver_announced,
    deliver_kept,
)
from ratewire.broker.base import translated
from ratewire.broker.redis import link
from ratewire.security.revocation import Revocation

log = logging.getLogger("ratewire.broker")


class RedisAnnouncements:
    """Announcements through Redis pub/sub, with the entries kept in a hash for late joiners."""

    def __init__(self, url: str, *, prefix: str) -> None:
        self._redis = link.connect(url)
        # The subscription waits indefinitely for messages: a connection with no read timeout.
        self._listener = link.connect(url, blocking=True)
        self._channel = f"{prefix}:announcements"
        self._hash = f"{prefix}:revocations"
        self._handler: RevocationHandler | None = None
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self, on_revocation: RevocationHandler) -> None:
        self._handler = on_revocation
        self._task = asyncio.create_task(self._listen(), name="announcements")
        # Subscribed before start returns: an announcement made right after is not missed.
        waiter = asyncio.create_task(self._subscribed.wait())
        await asyncio.wait({waiter, self._task}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()

    async def announce(self, revocation: Revocation) -> None:
        payload = orjson.dumps(revocation.to_wire())
        with translated("Redis", link.UNREACHABLE):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(self._hash, revocation.key, payload)
                pipe.publish(self._channel, payload)
                await pipe.execute()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._listener.aclose()
        await self._redis.aclose()

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            pubsub = self._listener.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                self._subscribed.set()
                # After subscribing: whatever was announced while this instance was away.
                await self._load_kept()
                delay = 0.1
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is not None and message["type"] == "message":
                        deliver_announced(message["data"], self._handler)
            except link.UNREACHABLE as exc:
                log.warning("announcements: Redis unreachable (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_DELAY_MAX)
            finally:
                with contextlib.suppress(*link.UNREACHABLE):
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis 8.2

    async def _load_kept(self) -> None:
        kept: dict[Any, Any] = await self._redis.hgetall(self._hash)
        forget = deliver_kept(kept.items(), self._handler)
        if forget:
            await self._redis.hdel(self._hash, *forget)
