"""A thin test client over the third-party ``websockets`` library: JSON in, JSON out."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

TIMEOUT = 5.0


class WsClient:
    """One connection; ``recv`` returns decoded frames, ``closed_with`` the close (code, reason)."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection

    @classmethod
    async def open(
        cls, url: str, token: str | None = None, *, headers: dict[str, str] | None = None
    ) -> WsClient:
        if token is not None:
            url = f"{url}{'&' if '?' in url else '?'}token={token}"
        # No client keepalive: a test that stops reading must not be cut by its own client's
        # unanswered ping; the server's heartbeat is what the tests exercise.
        connection = await connect(
            url,
            additional_headers=headers,
            compression=None,
            open_timeout=TIMEOUT,
            max_size=None,
            ping_interval=None,
        )
        return cls(connection)

    async def send(self, **message: Any) -> None:
        await self.connection.send(orjson.dumps(message).decode())

    async def send_raw(self, payload: str | bytes) -> None:
        await self.connection.send(payload)

    async def recv(self, within: float = TIMEOUT) -> dict[str, Any]:
        frame = await asyncio.wait_for(self.connection.recv(), within)
        decoded: dict[str, Any] = orjson.loads(frame)
        return decoded

    async def recv_type(self, kind: str, within: float = TIMEOUT) -> dict[str, Any]:
        """The next frame of type ``kind``, skipping others."""
        while True:
            frame = await self.recv(within)
            if frame["type"] == kind:
                return frame

    async def updates(self, count: int, within: float = TIMEOUT) -> list[dict[str, Any]]:
        """The next ``count`` rating_update frames."""
        return [await self.recv_type("rating_update", within) for _ in range(count)]

    async def closed_with(self, within: float = TIMEOUT) -> tuple[int | None, str | None]:
        """Read until the server closes; the close code and reason it sent."""
        try:
            while True:
                await asyncio.wait_for(self.connection.recv(), within)
        except ConnectionClosed as closed:
            if closed.rcvd is None:
                return None, None
            return closed.rcvd.code, closed.rcvd.reason

    async def subscribe(self, topic: str, **options: Any) -> dict[str, Any]:
        await self.send(action="subscribe", topic=topic, **options)
        return await self.recv_type("subscribed")

    async def close(self) -> None:
        await self.connection.close()

    async def __aenter__(self) -> WsClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()
