"""Fixtures for cluster tests: a Redis of the test's own, a fresh PostgreSQL database, and
instances of ``ratewire serve`` sharing both."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.redis_server import RedisServer
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.postgresql]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    try:
        server = RedisServer(tmp_path)
    except (RuntimeError, OSError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot start redis-server: {exc} (CI=true: cluster tests must run)")
        pytest.skip(f"cannot start redis-server: {exc}")
    yield server
    server.stop()


ClusterFactory = Callable[..., ServerProcess]


@pytest.fixture
def instance(
    redis_server: RedisServer,
    fresh_postgres_url: str,
    server_factory: Callable[..., ServerProcess],
) -> ClusterFactory:
    """Start one instance of the test's cluster: ``instance(role="stream", env={...})``.
    (Fixtures tear down in reverse: the instances stop before Redis and the database go.)"""

    def start(
        *, role: str = "all", env: dict[str, str] | None = None, **options: Any
    ) -> ServerProcess:
        storage_url = options.pop("storage_url", fresh_postgres_url)
        backend = options.pop("backend", "postgresql")
        return server_factory(
            backend=backend,
            storage_url=storage_url,
            args=("--role", role),
            env={
                "RATEWIRE_BROKER__BACKEND": "redis",
                "RATEWIRE_BROKER__URL": redis_server.url,
                **(env or {}),
            },
            **options,
        )

    return start
