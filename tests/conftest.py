"""Session fixtures for the real database servers: a fresh database per test run, dropped at
the end. With CI=true an unreachable server fails the tests that need it; otherwise they skip
with the reason."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.server import ServerProcess

POSTGRES_ADMIN_URL = os.environ.get("RATEWIRE_TEST_POSTGRES", "postgresql://127.0.0.1:5432/test")
MYSQL_ADMIN_URL = os.environ.get("RATEWIRE_TEST_MYSQL", "mysql://root@127.0.0.1:3306/test")


def unavailable(what: str, error: BaseException) -> None:
    message = f"{what} unreachable: {type(error).__name__}: {error}"
    if os.environ.get("CI") == "true":
        pytest.fail(message + " (CI=true: database tests must run)")
    pytest.skip(message)


async def _postgres_admin(statement: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(
        POSTGRES_ADMIN_URL.replace("postgresql://", "postgres://"), timeout=5
    )
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def _mysql_admin(statement: str) -> None:
    import asyncmy
    from sqlalchemy.engine import make_url

    url = make_url(MYSQL_ADMIN_URL)
    connection = await asyncmy.connect(
        host=url.host,
        port=url.port or 3306,
        user=url.username,
        password=url.password or "",
        connect_timeout=5,
    )
    try:
        async with connection.cursor() as cursor:
            await cursor.execute(statement)
    finally:
        connection.close()


def _with_database(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name


def _postgres_database(prefix: str) -> Iterator[str]:
    name = f"{prefix}_{secrets.token_hex(4)}"
    try:
        asyncio.run(_postgres_admin(f"CREATE DATABASE {name}"))
    except (OSError, Exception) as exc:  # any failure to reach or use the server
        unavailable(f"PostgreSQL at {POSTGRES_ADMIN_URL}", exc)
    yield _with_database(POSTGRES_ADMIN_URL, name)
    asyncio.run(_postgres_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this run."""
    yield from _postgres_database("ratewire_t")


def _mysql_database(prefix: str) -> Iterator[str]:
    name = f"{prefix}_{secrets.token_hex(4)}"
    try:
        asyncio.run(_mysql_admin(f"CREATE DATABASE {name}"))
    except (OSError, Exception) as exc:
        unavailable(f"MySQL at {MYSQL_ADMIN_URL}", exc)
    yield _with_database(MYSQL_ADMIN_URL, name)
    asyncio.run(_mysql_admin(f"DROP DATABASE IF EXISTS {name}"))


@pytest.fixture(scope="session")
def mysql_url() -> Iterator[str]:
    """A fresh MariaDB/MySQL database for this run."""
    yield from _mysql_database("ratewire_t")


@pytest.fixture
def fresh_mysql_url() -> Iterator[str]:
    """A MariaDB/MySQL database of this test's own."""
    yield from _mysql_database("ratewire_m")


@pytest.fixture
def fresh_postgres_url() -> Iterator[str]:
    """A PostgreSQL database of this test's own (a cluster's instances share it)."""
    yield from _postgres_database("ratewire_c")


def _factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def start(**options: Any) -> ServerProcess:
        server = ServerProcess(tmp_path_factory.mktemp("server"), **options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers for one test: ``server_factory(backend=..., env={...})``."""
    yield from _factory(tmp_path_factory)


@pytest.fixture(scope="module")
def module_server_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., ServerProcess]]:
    """Like ``server_factory``, for servers shared by a module's tests."""
    yield from _factory(tmp_path_factory)


REDIS_TEST_URL = os.environ.get("RATEWIRE_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def redis_run_prefix() -> Iterator[str]:
    """A key prefix for this run on the machine's Redis; its keys are deleted at the end."""
    import redis

    client = redis.Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except (OSError, redis.RedisError) as exc:
        unavailable(f"Redis at {REDIS_TEST_URL}", exc)
    prefix = f"rwt_{secrets.token_hex(4)}"
    yield prefix
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture
def redis_store_url(redis_run_prefix: str) -> str:
    """A Redis storage URL with a key prefix of this test's own (an empty store)."""
    return f"{REDIS_TEST_URL}?prefix={redis_run_prefix}_{secrets.token_hex(4)}"
