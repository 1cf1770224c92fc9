"""The async client: the stream and the REST API, typed, for agents and scripts.

:class:`ClientCore` is everything of :class:`ratewire.client.Client` but its bridge to code
without an event loop (``subscribe_sync``, in ``client.api``), so that the blocking client
(``client.sync``) can run it on its thread without importing itself back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal, Self, overload
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from ratewire.client.connection import (
    Item,
    StreamConnection,
    Subscription,
    TokenProvider,
    token_claims,
)
from ratewire.client.consumers import Consumer, fetch_events, send_acks
from ratewire.client.models import (
    Gap,
    GapError,
    HistoryPage,
    PreconditionFailed,
    Rating,
    Snapshot,
    Summary,
    SummaryUpdate,
    Update,
    api_error,
)


class _Keep:
    def __repr__(self) -> str:
        return "KEEP"


#: ``rate(..., comment=KEEP)``: leave the rating's comment as it is.
KEEP: Any = _Keep()
#: Times ``rate`` re-reads and tries again when another write changed the rating meanwhile.
RATE_ATTEMPTS = 5


def rest_url_for(ws_url: str) -> str:
    """The REST base URL that goes with a WebSocket URL: the same origin for ``/ws``; for the
    module port (``ws://host:8081/``) the default REST port 8080 on the same host."""
    parts = urlsplit(ws_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    netloc = parts.netloc
    if parts.path.rstrip("/") != "/ws":
        host = parts.hostname or "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        netloc = f"{host}:8080"
    return urlunsplit((scheme, netloc, "", "", ""))


class ClientCore:
    """A ratewire client: typed updates over one WebSocket, and the REST API.

    ``url`` is a WebSocket URL (``ws://host:8081/`` or ``ws://host:8080/ws``); ``rest_url``
    the REST base URL, by default derived from it (see :func:`rest_url_for`). Give ``token``,
    or ``token_provider`` (a sync or async callable returning a fresh JWT): with a provider
    the client renews tokens before they expire (``refresh``) and after a 4001/4002 close;
    without one, those closes raise :class:`~ratewire.client.AuthenticationError`.

    Use it as an async context manager (``async with Client(...) as client``), or call
    :meth:`close`.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        token_provider: TokenProvider | None = None,
        *,
        rest_url: str | None = None,
        max_backoff: float = 10.0,
        max_queue: int = 10_000,
        timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.rest_url = (rest_url or rest_url_for(url)).rstrip("/")
        self._options: dict[str, Any] = {
            "token": token,
            "token_provider": token_provider,
            "rest_url": rest_url,
            "max_backoff": max_backoff,
            "max_queue": max_queue,
            "timeout": timeout,
        }
        self.stream = StreamConnection(
            url, token, token_provider, max_backoff=max_backoff, max_queue=max_queue
        )
        self._http = httpx.AsyncClient(base_url=self.rest_url, timeout=timeout)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the WebSocket and the HTTP connections (iterators end)."""
        await self.stream.close()
        await self._http.aclose()

    # -- the stream --------------------------------------------------------------------

    @overload
    def subscribe(
        self,
        topic: str,
        since: int | None = None,
        snapshot: Literal[False] = False,
        *,
        on_gap: Literal["yield", "raise"] = "yield",
        filter: str | None = None,
    ) -> AsyncIterator[Update | Gap]: ...

    @overload
    def subscribe(
        self,
        topic: str,
        since: int | None = None,
        *,
        snapshot: Literal[True],
        on_gap: Literal["yield", "raise"] = "yield",
        filter: str | None = None,
    ) -> AsyncIterator[Update | Gap | Snapshot]: ...

    async def subscribe(
        self,
        topic: str,
        since: int | None = None,
        snapshot: bool = False,
        *,
        on_gap: Literal["yield", "raise"] = "yield",
        filter: str | None = None,
    ) -> AsyncIterator[Update | Gap | Snapshot]:
        """Every update of ``topic`` (``rating.global``, ``rating.game.{id}``,
        ``rating.game.*``, ``rating.user.{id}``) after offset ``since`` (default: from now),
        exactly once and in order, across reconnects and server restarts.

        ``snapshot=True`` (game topics) first yields a :class:`~ratewire.client.Snapshot` of
        the game's summary, and the updates after it. When the server can no longer replay
        what was missed (its history was trimmed past ``since``, or restored), a
        :class:`~ratewire.client.Gap` is yielded (or :class:`~ratewire.client.GapError`
        raised, with ``on_gap="raise"``): re-read the state you keep, then go on.
        Several iterators share the client's one connection.

        ``filter`` (a CEL expression, e.g. ``"data.score <= 2"``) has the server send only
        the updates it passes (offsets then have gaps: they are the topic's own); a bad one
        ends the iterator with :class:`~ratewire.client.SubscriptionRefused` naming what is
        wrong. One client follows a topic with one filter at a time (ValueError otherwise)."""
        sub = await self.stream.add(topic, since, snapshot, filter)
        try:
            while True:
                item: Item | BaseException = await self._next(sub)
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, Gap) and on_gap == "raise":
                    raise GapError(item)
                if not isinstance(item, SummaryUpdate):  # never on a rating topic
                    yield item
        finally:
            await self.stream.remove(sub)

    async def summaries(
        self,
        topic: str,
        *,
        interval_ms: int = 1000,
        limit: int | None = None,
        min_count: int | None = None,
    ) -> AsyncIterator[SummaryUpdate]:
        """The state of ``summary.game.{id}`` (a game's summary) or ``summary.games.top`` (the
        top list; ``limit`` and ``min_count`` as :meth:`top_games` takes them): the current
        one at once, then at most one per ``interval_ms`` (50 or more) and only when it
        changed; the latest state always arrives. Across reconnects it starts again with the
        state then (summaries have no history to replay)."""
        if interval_ms < 50:
            raise ValueError(f"interval_ms must be at least 50; got {interval_ms}")
        options = {"intervalMs": interval_ms}
        if limit is not None:
            options["limit"] = limit
        if min_count is not None:
            options["minCount"] = min_count
        sub = await self.stream.add_summary(topic, options)
        try:
            while True:
                item = await self._next(sub)
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, SummaryUpdate):
                    yield item
        finally:
            await self.stream.remove_summary(sub)

    def consume(
        self,
        topic: str,
        name: str,
        *,
        batch: int = 10,
        wait_ms: int = 10_000,
        auto_ack: bool = False,
        since: int | None = None,
        ack_wait_ms: int | None = None,
        max_in_flight: int | None = None,
    ) -> Consumer:
        """The durable consumer ``name`` on ``topic`` (created if new: after ``since``, else
        from now), as an async iterator of :class:`~ratewire.client.ConsumedUpdate`: the
        server keeps the position, and every member of the same name and token shares the
        work. Use it in ``async with`` so the last acks are sent::

            async with client.consume("rating.global", "moderation") as queue:
                async for item in queue:
                    handle(item.update)
                    item.ack()

        Items come in batches of up to ``batch`` (a fetch waits up to ``wait_ms`` for the
        first); acks travel together, before the next fetch. ``auto_ack``: taking the next
        item acks the one before."""
        fetch: dict[str, Any] = {"topic": topic, "max": batch, "waitMs": wait_ms}
        created = {"since": since, "ackWaitMs": ack_wait_ms, "maxInFlight": max_in_flight}
        fetch.update({k: v for k, v in created.items() if v is not None})
        return Consumer(self._request, name, fetch, auto_ack=auto_ack)

    async def fetch_consumer(
        self, topic: str, name: str, max: int = 10, wait_ms: int = 0
    ) -> list[dict[str, Any]]:
        """One fetch of the durable consumer ``name`` (created from now if new): up to ``max``
        ``rating_update`` objects with ``consumer`` and ``delivery``, waiting up to ``wait_ms``
        for the first. Ack them with :meth:`ack_consumer`."""
        body = {"topic": topic, "max": max, "waitMs": wait_ms}
        return await fetch_events(self._request, name, body)

    async def ack_consumer(self, topic: str, name: str, offsets: list[int]) -> None:
        """Ack ``offsets`` of the durable consumer ``name`` in one request
        (:class:`~ratewire.client.Conflict` names offsets it never delivered)."""
        await send_acks(self._request, topic, name, offsets)

    async def _next(self, sub: Subscription) -> Item | BaseException:
        if sub.queue.empty() and self.stream.failure is not None:
            return self.stream.failure  # the stream ended for good, after what was queued
        return await sub.queue.get()

    # -- REST --------------------------------------------------------------------------

    async def _auth_headers(self, *, fresh: bool = False) -> dict[str, str]:
        return {"Authorization": f"Bearer {await self.stream.current_token(fresh=fresh)}"}

    async def _request(
        self,
        method: str,
        path: str,
        *,
        auth: bool = False,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        wait: float = 0.0,
    ) -> httpx.Response:
        """``wait``: seconds the server may hold the answer back (a long-poll), added to the
        client's timeout."""
        sent_headers = {**(headers or {}), **(await self._auth_headers() if auth else {})}
        timeout: Any = httpx.USE_CLIENT_DEFAULT
        if wait:
            timeout = httpx.Timeout(self._options["timeout"] + wait)
        answer = await self._http.request(
            method, path, json=json, params=params, headers=sent_headers, timeout=timeout
        )
        if answer.status_code == 401 and auth and self.stream.has_provider:
            sent_headers.update(await self._auth_headers(fresh=True))  # expired: renew once
            answer = await self._http.request(
                method, path, json=json, params=params, headers=sent_headers, timeout=timeout
            )
        if answer.status_code >= 400:
            try:
                body = answer.json()
            except ValueError:
                body = {"title": answer.reason_phrase, "detail": answer.text[:200]}
            raise api_error(
                answer.status_code, body, method, path, answer.headers.get("Retry-After")
            )
        return answer

    async def summary(self, game_id: str) -> Summary:
        """The game's summary (count, mean, Bayesian mean, histogram)."""
        answer = await self._request("GET", f"/games/{quote(game_id)}/summary")
        return Summary.from_wire(answer.json())

    async def top_games(self, limit: int = 10, min_count: int = 1) -> list[Summary]:
        """Games by Bayesian mean, best first."""
        answer = await self._request(
            "GET", "/games/top", params={"limit": limit, "minCount": min_count}
        )
        return [Summary.from_wire(item) for item in answer.json()["items"]]

    async def get(self, rating_id: str) -> Rating:
        """One rating (:class:`~ratewire.client.NotFound` if there is none)."""
        return Rating.from_wire((await self._request("GET", f"/ratings/{quote(rating_id)}")).json())

    async def create(
        self, game_id: str, score: int, comment: str | None = None, *, user_id: str | None = None
    ) -> Rating:
        """Create a rating (for the token's user unless ``user_id``);
        :class:`~ratewire.client.Conflict` if the user rated the game already."""
        body: dict[str, Any] = {"gameId": game_id, "score": score, "comment": comment}
        if user_id is not None:
            body["userId"] = user_id
        answer = await self._request("POST", "/ratings", auth=True, json=body)
        return Rating.from_wire(answer.json())

    async def _user(self, user_id: str | None) -> str:
        if user_id is not None:
            return user_id
        sub = token_claims(await self.stream.current_token()).get("sub")
        if not isinstance(sub, str):
            raise ValueError("the token has no sub claim; pass user_id=")
        return sub

    async def rate(
        self,
        game_id: str,
        score: int,
        comment: str | None = KEEP,
        *,
        user_id: str | None = None,
    ) -> Rating:
        """Create or replace the user's rating of ``game_id`` (``PUT``; the token's user
        unless ``user_id``). ``comment`` left out keeps the current comment; ``None`` clears
        it.

        The write names the version it read (``If-Match``), so a change made meanwhile by
        someone else is never overwritten unseen: on 412 the rating is read again and the
        write retried."""
        user = await self._user(user_id)
        path = f"/games/{quote(game_id)}/ratings/{quote(user)}"
        for _ in range(RATE_ATTEMPTS):
            current = await self._current(game_id, user)
            body: dict[str, Any] = {"score": score}
            if comment is KEEP:
                body["comment"] = current.comment if current is not None else None
            else:
                body["comment"] = comment
            headers = {"If-Match": f'"{current.version}"'} if current is not None else {}
            try:
                answer = await self._request("PUT", path, auth=True, json=body, headers=headers)
            except PreconditionFailed:
                continue  # changed (or created) meanwhile: read again
            return Rating.from_wire(answer.json())
        raise PreconditionFailed(412, {"title": "Precondition Failed"}, "PUT", path)

    async def _current(self, game_id: str, user_id: str) -> Rating | None:
        page = await self._request(
            "GET", "/ratings", params={"gameId": game_id, "userId": user_id, "limit": 1}
        )
        items = page.json()["items"]
        return Rating.from_wire(items[0]) if items else None

    async def delete(self, rating_id: str, *, version: int | None = None) -> None:
        """Delete a rating (only if still at ``version``, when given)."""
        headers = {"If-Match": f'"{version}"'} if version is not None else {}
        await self._request("DELETE", f"/ratings/{quote(rating_id)}", auth=True, headers=headers)

    async def list_ratings(
        self, *, game_id: str | None = None, user_id: str | None = None, page_size: int = 100
    ) -> AsyncIterator[Rating]:
        """Every rating of a game and/or user, newest first, page after page."""
        params: dict[str, Any] = {"limit": page_size}
        if game_id is not None:
            params["gameId"] = game_id
        if user_id is not None:
            params["userId"] = user_id
        while True:
            page = (await self._request("GET", "/ratings", params=params)).json()
            for item in page["items"]:
                yield Rating.from_wire(item)
            if not page.get("nextCursor"):
                return
            params["cursor"] = page["nextCursor"]

    async def events(self, topic: str, since: int = 0, limit: int = 100) -> HistoryPage:
        """A topic's retained history after offset ``since`` (the updates a resume would
        replay); :class:`~ratewire.client.ApiError` 410 when history no longer reaches it."""
        answer = await self._request(
            "GET",
            f"/topics/{quote(topic)}/events",
            auth=True,
            params={"since": since, "limit": limit},
        )
        page = answer.json()
        return HistoryPage(
            page["topic"],
            page["epoch"],
            page["head"],
            [Update.from_wire(frame) for frame in page["events"]],
        )


__all__ = ["KEEP", "ClientCore", "rest_url_for"]
