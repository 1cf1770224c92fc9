"""A subscriber that follows one topic across any number of reconnects, the way a client of
the protocol is told to: reconnect (to the next URL), subscribe with ``since`` and ``epoch``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import orjson
from tests.e2e.wsclient import WsClient
from tests.support.server import ServerProcess


class Follower:
    """Records every ``rating_update`` of ``topic``; ``offsets`` must end up gapless."""

    def __init__(self, urls: Sequence[str], token: str, topic: str) -> None:
        self.urls = list(urls)
        self.token = token
        self.topic = topic
        self.offsets: list[int] = []
        self.updates: list[dict[str, Any]] = []
        self.connections = 0
        self.unrecovered = 0
        self.epoch: str | None = None
        self.subscribed = asyncio.Event()
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: WsClient | None = None
        self._stopped = False

    def start(self) -> Follower:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        """Drop the connection (no closing handshake: the test is done with it) and stop."""
        # The flag too: asyncio.wait_for in Python 3.11 can swallow a cancellation that lands
        # as its inner receive completes, and the follower would go on reconnecting.
        self._stopped = True
        if self._client is not None:
            self._client.connection.transport.abort()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        attempt = 0
        while not self._stopped:
            url = self.urls[attempt % len(self.urls)]
            attempt += 1
            try:
                await self._follow(url)
            except asyncio.CancelledError:
                raise
            except Exception:  # refused, reset, closed: reconnect, as a client should
                await asyncio.sleep(0.1)

    async def _follow(self, url: str) -> None:
        client = self._client = await WsClient.open(url, self.token)
        try:
            await client.recv_type("connection_success")
            options: dict[str, Any] = {}
            if self.offsets or self.epoch is not None:
                options = {"since": self.offsets[-1] if self.offsets else 0, "epoch": self.epoch}
            await client.send(action="subscribe", topic=self.topic, **options)
            while (answer := await client.recv())["type"] != "subscribed":
                self._record(answer)  # a resume replays what was missed before `subscribed`
            if options and answer.get("recovered") is not True:
                self.unrecovered += 1
            self.epoch = answer["epoch"]
            self.connections += 1
            self.subscribed.set()
            while True:
                self._record(orjson.loads(await client.connection.recv()))
        finally:
            with contextlib.suppress(Exception):
                await client.close()

    def _record(self, frame: dict[str, Any]) -> None:
        if frame["type"] == "rating_update":
            self.offsets.append(frame["offset"])
            self.updates.append(frame)
            self._arrived.set()

    async def wait_for(self, count: int, within: float = 15) -> None:
        """Until ``count`` updates arrived (or ``within`` seconds passed)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while len(self.offsets) < count:
                    self._arrived.clear()
                    await self._arrived.wait()


async def subscribed_followers(
    server: ServerProcess, token: str, topic: str, count: int
) -> list[Follower]:
    """``count`` followers of ``topic``, half on the module port and half on ``/ws`` (with
    ``--workers``, the kernel spreads them over the workers), each subscribed."""
    followers = [
        Follower([server.module_ws_url if i % 2 else server.ws_url], token, topic).start()
        for i in range(count)
    ]
    for follower in followers:
        await asyncio.wait_for(follower.subscribed.wait(), 10)
    return followers


def assert_exactly_once(follower: Follower, count: int) -> None:
    """Offsets 1..count, each once, in order."""
    assert follower.offsets == list(range(1, count + 1)), (
        f"{follower.topic} via {follower.urls[0]}: {len(follower.offsets)} updates, "
        f"first gaps/duplicates near {_first_problem(follower.offsets)}: {follower.offsets}"
    )
    assert follower.unrecovered == 0


def _first_problem(offsets: list[int]) -> int | None:
    for index, offset in enumerate(offsets, start=1):
        if offset != index:
            return index
    return None
