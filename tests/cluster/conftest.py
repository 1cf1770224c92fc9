"""Fixtures for cluster tests: a Redis (or a NATS) of the test's own, a fresh PostgreSQL
database, and instances of ``ratewire serve`` sharing both.

The broker is Redis unless a test asks for others:
``@pytest.mark.parametrize("cluster_broker", ["redis", "nats"], indirect=True)``."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.nats_server import NatsServer
from tests.support.redis_server import RedisServer
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.postgresql]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    yield from running_redis(tmp_path)


def running_redis(tmp_path: Path, **options: Any) -> Iterator[RedisServer]:
    """A redis-server of the test's own (``options`` as RedisServer takes them), stopped after;
    one that cannot start skips the test, or fails it with CI=true."""
    try:
        server = RedisServer(tmp_path, **options)
    except (RuntimeError, OSError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot start redis-server: {exc} (CI=true: cluster tests must run)")
        pytest.skip(f"cannot start redis-server: {exc}")
    yield server
    server.stop()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    try:
        server = NatsServer(tmp_path)
    except (RuntimeError, OSError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot start nats-server: {exc} (CI=true: cluster tests must run)")
        pytest.skip(f"cannot start nats-server: {exc}")
    yield server
    server.stop()


@pytest.fixture
def cluster_broker(request: pytest.FixtureRequest) -> str:
    """The broker backend the test's instances share (parametrize it indirectly)."""
    return str(getattr(request, "param", "redis"))


@pytest.fixture
def broker_server(cluster_broker: str, request: pytest.FixtureRequest) -> RedisServer | NatsServer:
    """The test's own broker server (``kill``, ``wipe``, ``start`` it for faults)."""
    server: RedisServer | NatsServer = request.getfixturevalue(f"{cluster_broker}_server")
    return server


@pytest.fixture
def broker_env(cluster_broker: str, broker_server: RedisServer | NatsServer) -> dict[str, str]:
    """The environment that points an instance at the test's broker."""
    return {"RATEWIRE_BROKER__BACKEND": cluster_broker, "RATEWIRE_BROKER__URL": broker_server.url}


ClusterFactory = Callable[..., ServerProcess]


@pytest.fixture
def instance(
    broker_env: dict[str, str],
    fresh_postgres_url: str,
    server_factory: Callable[..., ServerProcess],
) -> ClusterFactory:
    """Start one instance of the test's cluster: ``instance(role="stream", env={...})``.
    (Fixtures tear down in reverse: the instances stop before the broker and the database.)"""

    def start(
        *, role: str = "all", env: dict[str, str] | None = None, **options: Any
    ) -> ServerProcess:
        storage_url = options.pop("storage_url", fresh_postgres_url)
        backend = options.pop("backend", "postgresql")
        return server_factory(
            backend=backend,
            storage_url=storage_url,
            args=("--role", role),
            env={**broker_env, **(env or {})},
            **options,
        )

    return start
