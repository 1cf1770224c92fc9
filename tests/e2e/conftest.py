"""Fixtures that start real ``ratewire serve`` processes and stop them afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tests.support.server import ServerProcess


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
