"""A plain HTTP client of ``GET /stream`` (Server-Sent Events), for the tests: it parses the
event stream itself, as any HTTP client could, and keeps the last event id to resume with."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import httpx
import orjson


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str
    data: Any
    id: str | None


class SseStream:
    """One stream: ``await SseStream.open(base_url, topics, token)``; ``await next_event()``."""

    def __init__(self, response: httpx.Response, client: httpx.AsyncClient) -> None:
        self.response = response
        self._client = client
        self._lines = response.aiter_lines()
        self.last_event_id: str | None = None
        self.comments = 0
        self.retry: int | None = None
        self.ended = False

    @classmethod
    async def open(
        cls,
        base_url: str,
        topics: list[str],
        token: str | None,
        *,
        last_event_id: str | None = None,
        headers: dict[str, str] | None = None,
        filter: str | None = None,
        params: dict[str, str] | None = None,
    ) -> SseStream:
        client = httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(10, read=30))
        sent = {"Accept": "text/event-stream", **(headers or {})}
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        if last_event_id is not None:
            sent["Last-Event-ID"] = last_event_id
        query = [("topic", topic) for topic in topics] + list((params or {}).items())
        if filter is not None:
            query.append(("filter", filter))
        request = client.build_request("GET", "/stream", params=query, headers=sent)
        response = await client.send(request, stream=True)
        return cls(response, client)

    async def next_event(self, within: float = 15) -> SseEvent | None:
        """The next event (None once the stream ended)."""
        return await asyncio.wait_for(self._next_event(), within)

    async def _next_event(self) -> SseEvent | None:
        kind, data, event_id = "message", [], None
        async for line in self._lines:
            if line == "":
                if data:
                    if event_id is not None:
                        self.last_event_id = event_id
                    return SseEvent(kind, orjson.loads("\n".join(data)), event_id)
                if event_id is not None:
                    self.last_event_id = event_id
                kind, data, event_id = "message", [], None
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "":
                self.comments += 1
            elif field == "event":
                kind = value
            elif field == "data":
                data.append(value)
            elif field == "id":
                event_id = value
            elif field == "retry":
                self.retry = int(value)
        self.ended = True
        return None

    async def events(self, kind: str, count: int, within: float = 20) -> list[SseEvent]:
        """The next ``count`` events of ``kind`` (others are skipped)."""
        found: list[SseEvent] = []

        async def collect() -> None:
            while len(found) < count:
                event = await self._next_event()
                assert event is not None, f"stream ended after {len(found)} {kind} events"
                if event.event == kind:
                    found.append(event)

        await asyncio.wait_for(collect(), within)
        return found

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.response.aclose()
        await self._client.aclose()
