"""The in-process realtime harness: sessions wired to a fake peer, the memory store and a
real hub (no sockets)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson

from ratewire.domain import RatingDraft, RatingEvent, utc_now
from ratewire.realtime.hub import Hub
from ratewire.realtime.session import RealtimeContext, Session
from ratewire.security.tokens import TokenService
from ratewire.services.ratings import RatingService
from ratewire.storage.memory import MemoryStore

SECRET = "realtime-tests-secret-0123456789abcdef"


@dataclass
class FakePeer:
    """Records what the session sends; ``closed_with`` is (code, reason) once closed."""

    frames: list[bytes] = field(default_factory=list)
    closed_with: tuple[int, str] | None = None

    def send_text(self, data: bytes) -> None:
        assert self.closed_with is None, "sent a frame after closing"
        self.frames.append(data)

    def close(self, code: int, reason: str) -> None:
        self.closed_with = (code, reason)

    async def drain(self) -> None:
        await asyncio.sleep(0)

    def messages(self) -> list[dict[str, Any]]:
        return [orjson.loads(f) for f in self.frames]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages() if m["type"] == kind]


@dataclass
class Harness:
    store: MemoryStore
    hub: Hub
    tokens: TokenService
    ctx: RealtimeContext
    service: RatingService

    def connect(
        self, sub: str = "7", *, scope: str | None = None, token: str | None = None
    ) -> tuple[Session, FakePeer]:
        peer = FakePeer()
        session = Session(peer, self.ctx)
        session.opened(token if token is not None else self.tokens.issue(sub, scope=scope))
        return session, peer

    async def commit(self, game: str, user: str, score: int = 4) -> RatingEvent:
        """A write that is in the store but not yet published (the relay has not run)."""
        result = await self.store.create(RatingDraft(game, user, score), utc_now())
        assert result.event is not None
        return result.event

    async def write(self, game: str, user: str, score: int = 4) -> RatingEvent:
        """A write the relay has published to the hub."""
        event = await self.commit(game, user, score)
        self.hub.publish(event)
        return event


async def settle() -> None:
    """Let session workers run to completion."""
    for _ in range(20):
        await asyncio.sleep(0)


def send(session: Session, **message: Any) -> None:
    session.received(orjson.dumps(message))
