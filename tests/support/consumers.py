"""Members of durable consumers over WebSocket, for the e2e and cluster tests."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.e2e.wsclient import WsClient

#: Long enough for a loaded machine; a wait is for an event, never an assertion on time.
WAIT = 15.0


async def member(url: str, token: str, topic: str, name: str, **options: Any) -> WsClient:
    client = await WsClient.open(url, token)
    await client.recv_type("connection_success")
    subscribed = await client.subscribe(topic, consumer=name, **options)
    assert subscribed["consumer"] == name and subscribed["topic"] == topic, subscribed
    return client


async def collect(clients: list[WsClient], total: int) -> list[list[dict[str, Any]]]:
    """Read every client's ``rating_update`` frames until ``total`` arrived in all."""
    got: list[list[dict[str, Any]]] = [[] for _ in clients]
    done = asyncio.Event()

    async def read(index: int) -> None:
        while not done.is_set():
            frame = await clients[index].recv_type("rating_update", WAIT)
            got[index].append(frame)
            if sum(map(len, got)) >= total:
                done.set()

    tasks = [asyncio.create_task(read(i)) for i in range(len(clients))]
    await asyncio.wait_for(done.wait(), WAIT)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return got
