"""``SyncClient``: the client for code without an event loop (scripts, notebooks).

It runs an async :class:`~ratewire.client.Client` on an event loop in a background thread and
waits for each call; ``subscribe`` is a plain iterator.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any, Literal, TypeVar

from ratewire.client.connection import TokenProvider
from ratewire.client.consumers import ConsumedUpdate
from ratewire.client.core import KEEP, ClientCore
from ratewire.client.models import (
    Gap,
    HistoryPage,
    Rating,
    Snapshot,
    Summary,
    SummaryUpdate,
    Update,
)

T = TypeVar("T")


class SyncClient:
    """The methods of :class:`~ratewire.client.Client`, blocking. Close it (or use ``with``)
    to stop its thread."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        token_provider: TokenProvider | None = None,
        **options: Any,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="ratewire-client", daemon=True
        )
        self._thread.start()

        async def build() -> ClientCore:
            return ClientCore(url, token, token_provider, **options)

        self.client = self._call(build())

    def _call(self, work: Awaitable[T]) -> T:
        async def run() -> T:
            return await work

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._call(self.client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def subscribe(
        self,
        topic: str,
        since: int | None = None,
        snapshot: bool = False,
        *,
        on_gap: Literal["yield", "raise"] = "yield",
        close_client: bool = False,
        filter: str | None = None,
    ) -> Iterator[Update | Gap | Snapshot]:
        """:meth:`Client.subscribe <ratewire.client.Client.subscribe>` as a plain iterator."""
        updates: AsyncIterator[Update | Gap | Snapshot] = (
            self.client.subscribe(topic, since, snapshot=True, on_gap=on_gap, filter=filter)
            if snapshot
            else self.client.subscribe(topic, since, on_gap=on_gap, filter=filter)
        )
        try:
            while True:
                try:
                    yield self._call(updates.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            if not self._loop.is_closed():
                self._call(updates.aclose())  # type: ignore[attr-defined]
            if close_client:
                self.close()

    subscribe_sync = subscribe

    def summaries(
        self,
        topic: str,
        *,
        interval_ms: int = 1000,
        limit: int | None = None,
        min_count: int | None = None,
    ) -> Iterator[SummaryUpdate]:
        """:meth:`Client.summaries <ratewire.client.Client.summaries>` as a plain iterator."""
        states = self.client.summaries(
            topic, interval_ms=interval_ms, limit=limit, min_count=min_count
        )
        try:
            while True:
                try:
                    yield self._call(states.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            if not self._loop.is_closed():
                self._call(states.aclose())  # type: ignore[attr-defined]

    def summary(self, game_id: str) -> Summary:
        return self._call(self.client.summary(game_id))

    def top_games(self, limit: int = 10, min_count: int = 1) -> list[Summary]:
        return self._call(self.client.top_games(limit, min_count))

    def get(self, rating_id: str) -> Rating:
        return self._call(self.client.get(rating_id))

    def create(
        self, game_id: str, score: int, comment: str | None = None, *, user_id: str | None = None
    ) -> Rating:
        return self._call(self.client.create(game_id, score, comment, user_id=user_id))

    def rate(
        self, game_id: str, score: int, comment: str | None = KEEP, *, user_id: str | None = None
    ) -> Rating:
        return self._call(self.client.rate(game_id, score, comment, user_id=user_id))

    def delete(self, rating_id: str, *, version: int | None = None) -> None:
        self._call(self.client.delete(rating_id, version=version))

    def list_ratings(
        self, *, game_id: str | None = None, user_id: str | None = None, page_size: int = 100
    ) -> Iterator[Rating]:
        ratings = self.client.list_ratings(game_id=game_id, user_id=user_id, page_size=page_size)
        while True:
            try:
                yield self._call(ratings.__anext__())
            except StopAsyncIteration:
                return

    def events(self, topic: str, since: int = 0, limit: int = 100) -> HistoryPage:
        return self._call(self.client.events(topic, since, limit))

    def consume(self, topic: str, name: str, **options: Any) -> Iterator[ConsumedUpdate]:
        """:meth:`Client.consume <ratewire.client.Client.consume>` as a plain iterator. The
        acks given are sent before each fetch and when the iteration ends; with ``auto_ack``
        the last item taken is not acked at the end (a plain iterator cannot tell a ``break``
        from a failure), so it comes again after ``ackWaitMs`` unless acked."""
        queue = self.client.consume(topic, name, **options)
        try:
            while True:
                yield self._call(queue.__anext__())
        finally:
            if not self._loop.is_closed():
                self._call(queue.flush())

    def fetch_consumer(
        self, topic: str, name: str, max: int = 10, wait_ms: int = 0
    ) -> list[dict[str, Any]]:
        return self._call(self.client.fetch_consumer(topic, name, max, wait_ms))

    def ack_consumer(self, topic: str, name: str, offsets: list[int]) -> None:
        self._call(self.client.ack_consumer(topic, name, offsets))
