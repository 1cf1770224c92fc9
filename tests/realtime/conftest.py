"""Fixtures for the in-process realtime tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ratewire.config import JwtSettings, LimitsSettings, RatingsSettings
from ratewire.realtime.hub import Hub
from ratewire.realtime.session import RealtimeContext
from ratewire.security.tokens import TokenService
from ratewire.services.ratings import RatingService
from ratewire.storage.memory import MemoryStore
from tests.realtime.harness import SECRET, Harness


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    store = MemoryStore()
    await store.start()
    hub = Hub()
    tokens = TokenService(JwtSettings(secret=SECRET, leeway_seconds=0))
    service = RatingService(store, RatingsSettings())
    ctx = RealtimeContext(
        hub=hub,
        store=store,
        tokens=tokens,
        limits=LimitsSettings(auth_timeout_seconds=0.2),
        summary_wire=service.summary_wire,
        sessions=set(),
    )
    yield Harness(store, hub, tokens, ctx, service)
    await store.close()
