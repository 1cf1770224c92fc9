"""An in-process API over the memory store (httpx's ASGI transport, no sockets)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx
import pytest

from ratewire.api import create_app
from ratewire.config import JwtSettings, LimitsSettings, Settings
from ratewire.security.tokens import TokenService
from ratewire.services.ratings import RatingService
from ratewire.storage.memory import MemoryStore

SECRET = "api-tests-secret-0123456789abcdef0123456"


@dataclass
class Api:
    http: httpx.AsyncClient
    tokens: TokenService

    def auth(self, sub: str = "7", scope: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens.issue(sub, scope=scope)}"}


async def make_api(**limits: float) -> AsyncIterator[Api]:
    settings = Settings(
        jwt=JwtSettings(secret=SECRET),
        limits=LimitsSettings(**{"max_body_bytes": 4096, **limits}),  # type: ignore[arg-type]
    )
    store = MemoryStore()
    await store.start()
    tokens = TokenService(settings.jwt)
    app = create_app(settings, RatingService(store, settings.ratings), tokens)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ratewire") as http:
        yield Api(http, tokens)


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    async for made in make_api():
        yield made


@pytest.fixture
def api_with() -> Callable[..., AsyncIterator[Api]]:
    """An API with other limits: ``async for api in api_with(max_body_bytes=128)``."""
    return make_api
