"""The ``store`` fixture: every contract test runs once per backend, on a clean schema."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from ratewire.storage.base import RatingStore
from ratewire.storage.memory import MemoryStore
from ratewire.storage.redis.store import RedisStore
from ratewire.storage.sql import SqlStore
from tests.support.schema import drop_schema

BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgresql),
    pytest.param("mysql", id="mysql", marks=pytest.mark.mysql),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
]


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a backend with an empty schema (``memory://`` for the memory store)."""
    backend = request.param
    if backend == "memory":
        return "memory://"
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'contract.db'}"
    if backend == "redis":
        # A key prefix of its own per test: the clean slate a dropped schema gives.
        return str(request.getfixturevalue("redis_store_url"))
    return str(request.getfixturevalue("postgres_url" if backend == "postgresql" else "mysql_url"))


@pytest.fixture
def open_store(store_url: str) -> Callable[[], RatingStore]:
    """Make a (not yet started) store on the test's database (a new, empty one for memory)."""
    if store_url == "memory://":
        return MemoryStore
    if store_url.startswith("redis"):
        return lambda: RedisStore(store_url)
    return lambda: SqlStore(store_url)


@pytest.fixture
async def store(
    store_url: str, open_store: Callable[[], RatingStore]
) -> AsyncIterator[RatingStore]:
    if store_url.startswith(("postgresql", "mysql")):
        await drop_schema(store_url)
    opened = open_store()
    await opened.start()
    yield opened
    await opened.close()
