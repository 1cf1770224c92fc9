"""When the database goes away the API answers 503 with Retry-After (never a stack trace),
readiness says why, and a server that cannot reach its database at start says so in one line."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import httpx
import pytest

from ratewire.api import create_app
from ratewire.config import JwtSettings, Settings
from ratewire.security.tokens import TokenService
from ratewire.services.ratings import RatingService
from ratewire.storage.base import StorageUnavailable
from ratewire.storage.sql import SqlStore
from tests.conftest import POSTGRES_ADMIN_URL, _postgres_admin
from tests.support.cli import run_ratewire
from tests.support.server import free_port

pytestmark = pytest.mark.postgresql


async def test_unreachable_database_at_start() -> None:
    store = SqlStore(f"postgresql://127.0.0.1:{free_port()}/nowhere")
    with pytest.raises(StorageUnavailable, match="cannot open postgresql"):
        await store.start()
    await store.close()


def test_serve_says_so_in_one_line(tmp_path: Path) -> None:
    url = f"postgresql://127.0.0.1:{free_port()}/nowhere"
    env = {"RATEWIRE_STORAGE__BACKEND": "postgresql", "RATEWIRE_STORAGE__URL": url}
    result = run_ratewire("serve", cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("ratewire:")]
    assert line.startswith("ratewire: cannot start: cannot open postgresql") and "nowhere" in line


async def test_database_lost_while_serving_is_503(postgres_url: str) -> None:
    del postgres_url  # only to know the server is reachable (fails under CI=true if not)
    name = f"ratewire_outage_{secrets.token_hex(4)}"
    await _postgres_admin(f"CREATE DATABASE {name}")
    store = SqlStore(POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name)
    await store.start()
    settings = Settings(jwt=JwtSettings(secret="y" * 40))
    tokens = TokenService(settings.jwt)
    app = create_app(settings, RatingService(store, settings.ratings), tokens)
    auth = {"Authorization": f"Bearer {tokens.issue('7')}"}
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as http:
            created = await http.post("/ratings", json={"gameId": "1", "score": 4}, headers=auth)
            assert created.status_code == 201
            await _postgres_admin(f"DROP DATABASE {name} WITH (FORCE)")
            await asyncio.sleep(0.1)
            lost = await http.post("/ratings", json={"gameId": "2", "score": 4}, headers=auth)
            assert lost.status_code == 503, lost.text
            assert lost.headers["retry-after"] == "1"
            assert lost.headers["content-type"] == "application/problem+json"
            assert "storage unavailable" in lost.json()["detail"]
            assert (await http.get("/games/1/summary")).status_code == 503
            ready = await http.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["storage"].startswith(
                "unavailable"
            )
    finally:
        await store.close()
        await _postgres_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
