"""Webhooks in a cluster: one instance delivers a webhook at a time (a lease in the database);
when it is SIGKILLed, another takes over from the stored cursor within seconds, and the
receiver still gets every event once (by webhook-id) and in order."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from tests.cluster.conftest import ClusterFactory
from tests.support.server import ServerProcess
from tests.support.webhook_receiver import Receiver

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.postgresql]
ENV = {
    "RATEWIRE_WEBHOOKS__ALLOW_INSECURE_HTTP": "true",
    "RATEWIRE_WEBHOOKS__ALLOW_PRIVATE_NETWORKS": "true",
    "RATEWIRE_WEBHOOKS__LEASE_SECONDS": "2",
}


async def write(server: ServerProcess, users: list[str]) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        for user in users:
            answer = await http.put(
                f"/games/cwh/ratings/{user}",
                json={"score": 5},
                headers={"Authorization": f"Bearer {server.token(user)}"},
            )
            assert answer.status_code == 201, answer.text


async def test_the_delivering_instance_dies_and_another_takes_over(
    instance: ClusterFactory,
) -> None:
    servers = [instance(env=ENV), instance(env=ENV)]
    receiver = await Receiver.start()
    admin = {"Authorization": f"Bearer {servers[0].token('root', scope='ratings:admin')}"}
    async with httpx.AsyncClient(timeout=10) as http:
        created = await http.post(
            f"{servers[0].base_url}/admin/webhooks",
            json={"url": receiver.url, "topics": ["rating.game.cwh"]},
            headers=admin,
        )
        assert created.status_code == 201, created.text
        webhook = created.json()
        await write(servers[1], [f"a{i}" for i in range(10)])
        await receiver.wait_for(webhook["secret"], 10)
        state = (
            await http.get(f"{servers[1].base_url}/admin/webhooks/{webhook['id']}", headers=admin)
        ).json()
    holder = next(s for s in servers if f":{s.pid}:" in str(state["deliveredBy"]))
    survivor = next(s for s in servers if s is not holder)
    holder.kill()
    killed_at = time.monotonic()
    await write(survivor, [f"b{i}" for i in range(10)])
    delivered = await receiver.wait_for(webhook["secret"], 20, within=20)
    took_over_in = time.monotonic() - killed_at
    await asyncio.sleep(0.5)
    delivered = receiver.delivered(webhook["secret"])
    assert [p["offset"] for p in delivered] == list(range(1, 21))
    users = [p["data"]["userId"] for p in delivered]  # type: ignore[index]
    assert users == [f"a{i}" for i in range(10)] + [f"b{i}" for i in range(10)]
    assert took_over_in < 10
    async with httpx.AsyncClient(timeout=10) as http:
        state = (
            await http.get(f"{survivor.base_url}/admin/webhooks/{webhook['id']}", headers=admin)
        ).json()
    assert f":{survivor.pid}:" in str(state["deliveredBy"])
    await receiver.close()
