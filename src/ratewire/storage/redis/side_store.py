"""What the stores kept beside the ratings in the rating store's Redis (webhooks, consumers)
share: its client, the store's guard around each call, and their Lua scripts registered."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any


class RedisSideStore:
    """A store beside the ratings, in the rating store's Redis, under its key prefix."""

    def __init__(
        self,
        client: Any,
        prefix: str,
        reaching_redis: Callable[[], AbstractAsyncContextManager[None]],
    ) -> None:
        """``client``: the store's redis.asyncio client (answers in bytes); ``prefix``: the
        store's key prefix; ``reaching_redis``: the store's guard that turns a lost Redis into
        :class:`~ratewire.storage.base.StorageUnavailable`, entered around each call."""
        self._client = client
        self._reaching = reaching_redis
        self._lay_out(prefix)

    def _lay_out(self, prefix: str) -> None:
        """Name this store's keys under ``prefix`` and register its scripts."""
        raise NotImplementedError

    def _scripts(self, *sources: str) -> tuple[Any, ...]:
        """Each Lua source registered once (redis-py runs it by its SHA, loading it again
        after a Redis restart)."""
        return tuple(self._client.register_script(source) for source in sources)


__all__ = ["RedisSideStore"]
