"""Connections to the cluster's Redis, as the NATS side has its own (broker.nats.link): what
every Redis part of the broker opens, and which of redis-py's errors mean "unreachable"."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisError

#: redis-py's errors (and the socket's) that mean Redis could not be reached or answered late:
#: translated into BrokerUnavailable where they leave the broker.
UNREACHABLE: tuple[type[BaseException], ...] = (RedisError, OSError)


def connect(url: str, *, blocking: bool = False) -> aioredis.Redis:
    """A client of the Redis at ``url``. ``blocking``: for reads that wait for new entries
    or messages (no read timeout), on a connection of their own so they never delay a
    command."""
    return aioredis.Redis.from_url(
        url, socket_connect_timeout=2, socket_timeout=None if blocking else 5
    )
