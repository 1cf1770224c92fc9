"""Durable consumers in a cluster sharing PostgreSQL: members on two instances share one
consumer (no offset to both), and the events a SIGKILLed instance's member held go to the
member on the other instance once ``ackWaitMs`` passes, on both brokers."""

from __future__ import annotations

import httpx
import pytest
from tests.cluster.conftest import ClusterFactory
from tests.support.consumers import WAIT, collect, member

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.postgresql]


@pytest.mark.parametrize("cluster_broker", ["redis", "nats"], indirect=True)
async def test_members_on_two_instances_share_a_consumer_and_survive_one_dying(
    instance: ClusterFactory,
) -> None:
    first, second = instance(), instance()
    token, topic = first.token("fleet"), "rating.global"
    options = {"maxInFlight": 5, "ackWaitMs": 1000}
    on_first = await member(first.ws_url, token, topic, "fleet", **options)
    on_second = await member(second.module_ws_url, token, topic, "fleet", **options)
    admin = {"Authorization": f"Bearer {first.token('admin', scope='ratings:admin')}"}
    async with httpx.AsyncClient(base_url=first.base_url, headers=admin, timeout=10) as http:
        for user in range(10):
            body = {"gameId": "cluster", "userId": f"u{user}", "score": 2}
            assert (await http.post("/ratings", json=body)).status_code == 201
    got = await collect([on_first, on_second], 10)
    assert sorted(f["offset"] for frames in got for f in frames) == list(range(1, 11))
    assert [len(frames) for frames in got] == [5, 5]  # each bounded by its maxInFlight
    mine = [f["offset"] for f in got[1]]
    await on_second.send(action="ack", topic=topic, consumer="fleet", offsets=mine)
    assert (await on_second.recv_type("acked", WAIT))["offsets"] == sorted(mine)
    first.kill()  # its member's five are held until ackWaitMs passes, then come to the other
    handed = await on_second.updates(5, WAIT)
    assert sorted(f["offset"] for f in handed) == sorted(f["offset"] for f in got[0])
    assert {f["delivery"] for f in handed} == {2}
    await on_second.send(
        action="ack", topic=topic, consumer="fleet", offsets=[f["offset"] for f in handed]
    )
    assert (await on_second.recv_type("acked", WAIT))["ackFloor"] == 10
    await on_second.close()
    async with httpx.AsyncClient(base_url=second.base_url, timeout=10) as http:
        status = await http.get(
            "/consumers/fleet",
            params={"topic": topic},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert (status.json()["ackFloor"], status.json()["pending"]) == (10, 0)
