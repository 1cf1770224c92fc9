"""Revocation across a cluster: revoked through one instance, connections on every other
instance (with or without a database of their own) close with 4001 within a second, and an
instance started afterwards refuses the token too."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import jwt
import pytest
from tests.cluster.conftest import ClusterFactory
from tests.e2e.wsclient import WsClient
from tests.support.server import SECRET

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.postgresql]


@pytest.mark.parametrize("cluster_broker", ["redis", "nats"], indirect=True)
async def test_a_revocation_reaches_every_instance_within_a_second(
    instance: ClusterFactory,
) -> None:
    api = instance(role="api")
    full = instance(role="all")
    stream_alone = instance(role="stream", backend="none", storage_url="")
    victim = api.token("7")
    jti = jwt.decode(victim, SECRET, algorithms=["HS256"])["jti"]
    live = []
    for url in (full.module_ws_url, full.ws_url, stream_alone.module_ws_url, stream_alone.ws_url):
        client = await WsClient.open(url, victim)
        assert (await client.recv())["type"] == "connection_success"
        live.append(client)

    async with httpx.AsyncClient(base_url=api.base_url, timeout=10) as http:
        answer = await http.post(
            "/admin/revocations",
            json={"jti": jti},
            headers={"Authorization": f"Bearer {api.token('root', scope='ratings:admin')}"},
        )
    assert answer.status_code == 201
    # The promise is one second; on a quiet machine it takes milliseconds.
    for client in live:
        assert await client.closed_with(within=1.0) == (4001, "Token revoked")

    late = instance(role="stream", backend="none", storage_url="")  # learns it from the broker
    for server in (full, stream_alone, late):
        async with await WsClient.open(server.module_ws_url, victim) as client:
            assert await client.closed_with() == (4001, "Token revoked")
    async with httpx.AsyncClient(base_url=full.base_url, timeout=10) as http:
        refused = await http.put(
            "/games/c/ratings/7", json={"score": 2}, headers={"Authorization": f"Bearer {victim}"}
        )
    assert refused.status_code == 401 and refused.json()["detail"] == "Token revoked"


@pytest.mark.parametrize("cluster_broker", ["redis", "nats"], indirect=True)
async def test_a_revocation_while_the_broker_is_down_is_stored_and_reaches_the_others_later(
    instance: ClusterFactory, broker_server: Any
) -> None:
    # Broker errors are translated into one type at the boundary: on NATS a closed
    # connection raised neither RedisError nor OSError, and the revocation answered 500.
    api = instance(role="api")
    full = instance(role="all")
    victim = api.token("8")
    jti = jwt.decode(victim, SECRET, algorithms=["HS256"])["jti"]
    broker_server.kill()
    try:
        async with httpx.AsyncClient(base_url=api.base_url, timeout=15) as http:
            answer = await http.post(
                "/admin/revocations",
                json={"jti": jti},
                headers={"Authorization": f"Bearer {api.token('root', scope='ratings:admin')}"},
            )
            assert answer.status_code == 201, answer.text
            # In force at once where it was made.
            refused = await http.put(
                "/games/c/ratings/8",
                json={"score": 2},
                headers={"Authorization": f"Bearer {victim}"},
            )
            assert refused.status_code == 401
    finally:
        broker_server.start()
    # The other instance learns it from the shared database (it was never announced), at
    # its next poll of the store (every 10 s).
    async with httpx.AsyncClient(base_url=full.base_url, timeout=10) as http:
        for _ in range(200):
            answer = await http.put(
                "/games/c/ratings/8",
                json={"score": 2},
                headers={"Authorization": f"Bearer {victim}"},
            )
            if answer.status_code == 401:
                break
            await asyncio.sleep(0.1)
    assert answer.status_code == 401 and answer.json()["detail"] == "Token revoked"
    assert "Traceback" not in api.log_text()
