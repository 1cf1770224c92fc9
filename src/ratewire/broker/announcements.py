"""Cluster announcements: control messages every instance must hear at once (today: token
revocations), apart from the ordered event stream.

Events need order and exactly-once (Streams, broker.redis.broker); a revocation needs neither, only
speed and reach: Redis pub/sub delivers it to every instance within milliseconds. Pub/sub
forgets what an instance missed while disconnected, so every entry is also kept in a hash
(``P:revocations``) that instances read when they (re)connect: an instance without a
database (``role: stream``, ``storage: none``) learns the deny list there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

import orjson

from ratewire.security.revocation import Revocation

log = logging.getLogger("ratewire.broker")
RevocationHandler = Callable[[Revocation], None]
RECONNECT_DELAY_MAX = 5.0


class Announcements(Protocol):
    async def start(self, on_revocation: RevocationHandler) -> None:
        """Begin calling ``on_revocation`` for every revocation any instance announces
        (including those announced before this instance started)."""

    async def announce(self, revocation: Revocation) -> None:
        """Tell every instance (this one included) about ``revocation``;
        :class:`~ratewire.broker.base.BrokerUnavailable` if the broker cannot be reached."""

    async def close(self) -> None: ...


def deliver_announced(payload: bytes, handler: RevocationHandler | None) -> Revocation | None:
    """Parse an announced (or kept) entry and hand it to ``handler`` while it is in force;
    the entry, or None (logged) if it is not one."""
    try:
        revocation = Revocation.from_wire(orjson.loads(payload))
    except (ValueError, KeyError, TypeError):
        log.warning("announcements: ignoring a malformed entry %r", payload[:200])
        return None
    if handler is not None and revocation.expires_at > time.time():
        handler(revocation)
    return revocation


Key = TypeVar("Key")


def deliver_kept(kept: Iterable[tuple[Key, bytes]], handler: RevocationHandler | None) -> list[Key]:
    """Hand every kept entry still in force to ``handler`` (after a (re)connect: what was
    announced while this instance was away); the keys of those to forget (expired or not
    entries at all)."""
    now = time.time()
    forget = []
    for key, payload in kept:
        revocation = deliver_announced(payload, handler)
        if revocation is None or revocation.expires_at <= now:
            forget.append(key)
    return forget


class LocalAnnouncements:
    """One process: an announcement is a direct call."""

    def __init__(self) -> None:
        self._handler: RevocationHandler | None = None

    async def start(self, on_revocation: RevocationHandler) -> None:
        self._handler = on_revocation

    async def announce(self, revocation: Revocation) -> None:
        if self._handler is not None:
            self._handler(revocation)

    async def close(self) -> None:
        self._handler = None
