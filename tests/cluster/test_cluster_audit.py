"""Several instances writing at once extend one audit chain, which verifies."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest
from tests.cluster.conftest import ClusterFactory
from tests.support.cli import run_ratewire
from tests.support.server import SECRET, ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.postgresql]
AUDIT_KEY = "cluster-audit-key-0123456789abcdef0123"


async def write_many(server: ServerProcess, user: str, count: int) -> None:
    headers = {"Authorization": f"Bearer {server.token(user)}"}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        for n in range(count):
            answer = await http.put(
                f"/games/c{n % 3}/ratings/{user}", json={"score": n % 5 + 1}, headers=headers
            )
            assert answer.status_code in (200, 201)


async def test_instances_writing_at_once_extend_one_verifiable_chain(
    instance: ClusterFactory,
) -> None:
    servers = [instance(env={"RATEWIRE_AUDIT__KEY": AUDIT_KEY}) for _ in range(2)]
    await asyncio.gather(
        *(write_many(server, f"u{i}{j}", 25) for i, server in enumerate(servers) for j in range(3))
    )
    env = {
        "RATEWIRE_JWT__SECRET": SECRET,
        "RATEWIRE_AUDIT__KEY": AUDIT_KEY,
        "RATEWIRE_STORAGE__BACKEND": "postgresql",
        "RATEWIRE_STORAGE__URL": servers[0].env["RATEWIRE_STORAGE__URL"],
    }
    verified = await asyncio.to_thread(
        run_ratewire, "audit", "verify", cwd=servers[0].workdir, env=env
    )
    assert verified.returncode == 0, verified.stderr
    exported = await asyncio.to_thread(
        run_ratewire, "audit", "export", cwd=servers[0].workdir, env=env
    )
    entries = [orjson.loads(line) for line in exported.stdout.splitlines()]
    changes = [e for e in entries if e["action"].startswith("rating.")]
    assert len(changes) == 150
    assert sorted(e["detail"]["eventSeq"] for e in changes) == list(range(1, 151))
