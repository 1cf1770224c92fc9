"""One WebSocket connection shared by every ``subscribe`` iterator of a client.

Exactly once, in order, across reconnects: the connection remembers, per topic, the last
offset it handed to that topic's iterators, and every (re)subscribe asks the server for what
came after it (``since``, with the topic's epoch). Each iterator also keeps its own last
offset and drops anything at or below it, so a replay that overlaps (a second iterator
joining a topic from further back) never repeats an update to an iterator that had it.

Summary streams (``summary.game.{id}``, ``summary.games.top``) carry state, not events: they
have no offsets to resume, so a reconnect subscribes them again and the server sends the
current state at once; a second iterator of a followed summary topic starts with the last
state the connection received.

Iterators' queues are bounded (``max_queue``): an iterator that falls behind stops the
connection's reader, the server's send buffer fills, and the server cuts the connection
(4009); the client reconnects and resumes, with memory bounded on both sides.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidStatus,
    InvalidURI,
    WebSocketException,
)
from websockets.typing import Subprotocol

from ratewire.client.models import (
    AuthenticationError,
    Gap,
    Snapshot,
    SubscriptionRefused,
    Summary,
    SummaryUpdate,
    Update,
)

log = logging.getLogger("ratewire.client")
RECONNECTING = "connection lost (close code %s); reconnecting and resuming"

#: A token, or a callable (sync or async) that returns a fresh one.
TokenProvider = Callable[[], str | Awaitable[str]]
Item = Update | Gap | Snapshot | SummaryUpdate
#: Close codes that mean the token: renewable through a token provider, else final.
AUTH_CLOSE_CODES = {4001: "token refused", 4002: "token expired"}
WILDCARD = "rating.game.*"
SUMMARY_PREFIX = "summary."
#: The WebSocket subprotocol the client offers (``Sec-WebSocket-Protocol``).
SUBPROTOCOL = Subprotocol("ratewire.v1")


def token_claims(token: str) -> dict[str, Any]:
    """A JWT's claims, unverified (the client only reads ``exp`` and ``sub`` from its own
    token; the server verifies)."""
    try:
        payload = token.split(".")[1]
        claims: dict[str, Any] = orjson.loads(base64.urlsafe_b64decode(payload + "=" * 4))
        return claims
    except (IndexError, ValueError):
        return {}


async def provide(provider: TokenProvider) -> str:
    """Call a sync or async token provider."""
    token = provider()
    if inspect.isawaitable(token):
        token = await token
    assert isinstance(token, str), "token_provider must return a str"
    return token


@dataclass(eq=False)
class Subscription:
    """One iterator's view of a topic."""

    topic: str
    queue: asyncio.Queue[Item | BaseException]
    snapshot: bool = False
    #: Last offset put in the queue, per concrete topic (the wildcard spans many).
    last: dict[str, int] = field(default_factory=dict)

    def offer(self, topic: str, offset: int, item: Item) -> Awaitable[None] | None:
        """Queue ``item`` unless this iterator had ``offset`` of ``topic`` already."""
        if offset <= self.last.get(topic, -1) and not isinstance(item, Gap):
            return None
        self.last[topic] = offset
        return self.queue.put(item)


class StreamConnection:
    """Connects on the first subscription, reconnects with jittered exponential backoff, and
    closes when the client does."""

    def __init__(
        self,
        url: str,
        token: str | None,
        token_provider: TokenProvider | None,
        *,
        max_backoff: float = 10.0,
        max_queue: int = 10_000,
        refresh_margin: float = 30.0,
    ) -> None:
        if token is None and token_provider is None:
            raise ValueError("a token or a token_provider is needed")
        self.url = url
        self._token = token
        self._provider = token_provider
        self._max_backoff = max_backoff
        self._max_queue = max_queue
        self._refresh_margin = refresh_margin
        self._subs: dict[str, list[Subscription]] = {}
        #: The filter (CEL expression) each filtered topic is followed with: one per topic,
        #: since the server holds one subscription per topic and connection.
        self._filters: dict[str, str] = {}
        #: Last offset handed to the topic's iterators, and the epoch it belongs to.
        self._position: dict[str, int] = {}
        self._epoch: dict[str, str] = {}
        #: Summary topics: their iterators, subscribe options and last state received.
        self._summary_subs: dict[str, list[Subscription]] = {}
        self._summary_options: dict[str, dict[str, int]] = {}
        self._summary_last: dict[str, SummaryUpdate] = {}
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        #: Connections made (1 + reconnects), for tests and logs.
        self.connections = 0
        #: Why the stream ended for good (auth without a provider, upgrade refused), if so.
        self.failure: BaseException | None = None

    @property
    def has_provider(self) -> bool:
        return self._provider is not None

    # -- iterators ---------------------------------------------------------------------

    async def add(
        self, topic: str, since: int | None, snapshot: bool, filter: str | None = None
    ) -> Subscription:
        """Register an iterator of ``topic`` (after offset ``since``, else from now; with a
        ``filter``, only the updates it passes)."""
        first = topic not in self._subs
        if not first and self._filters.get(topic) != filter:
            raise ValueError(
                f"{topic} is followed with filter {self._filters.get(topic)!r} already: one "
                "client follows a topic with one filter at a time (use another Client)"
            )
        if filter is not None:
            self._filters[topic] = filter
        sub = Subscription(topic, asyncio.Queue(self._max_queue), snapshot)
        held = self._position.get(topic)
        self._subs.setdefault(topic, []).append(sub)
        if since is not None:
            sub.last[topic] = since
        elif held is not None:
            sub.last[topic] = held  # joins a followed topic: from now on
        resubscribe = first or snapshot or (since is not None and (held is None or since < held))
        if resubscribe:
            if since is not None and (held is None or since < held):
                self._position[topic] = since
            if self._ws is not None:
                await self._subscribe(self._ws, topic, snapshot=snapshot)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="ratewire-stream")
        return sub

    async def add_summary(self, topic: str, options: dict[str, int]) -> Subscription:
        """Register an iterator of the summary topic ``topic``; ``options`` (``intervalMs``,
        ``limit``, ``minCount``) are the topic's for this connection: an iterator asking for
        others subscribes the topic again with them."""
        sub = Subscription(topic, asyncio.Queue(self._max_queue))
        subs = self._summary_subs.setdefault(topic, [])
        changed = self._summary_options.get(topic) != options
        self._summary_options[topic] = options
        subs.append(sub)
        last = self._summary_last.get(topic)
        if changed or last is None:
            if self._ws is not None:
                await self._subscribe_summary(self._ws, topic)
        else:
            await sub.queue.put(last)  # the state the others have: the server sends no other
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="ratewire-stream")
        return sub

    async def remove_summary(self, sub: Subscription) -> None:
        subs = self._summary_subs.get(sub.topic, [])
        if sub in subs:
            subs.remove(sub)
        if not subs:
            self._summary_subs.pop(sub.topic, None)
            self._summary_options.pop(sub.topic, None)
            self._summary_last.pop(sub.topic, None)
            if self._ws is not None:
                with contextlib.suppress(ConnectionClosed):
                    await self._send(self._ws, {"action": "unsubscribe", "topic": sub.topic})

    async def _subscribe_summary(self, ws: ClientConnection, topic: str) -> None:
        options = self._summary_options.get(topic, {})
        await self._send(ws, {"action": "subscribe", "topic": topic, "id": topic, **options})

    async def remove(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.topic, [])
        if sub in subs:
            subs.remove(sub)
        if not subs:
            self._subs.pop(sub.topic, None)
            self._position.pop(sub.topic, None)
            self._filters.pop(sub.topic, None)
            if self._ws is not None:
                with contextlib.suppress(ConnectionClosed):
                    await self._send(self._ws, {"action": "unsubscribe", "topic": sub.topic})

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._ws is not None:
            await self._ws.close()
            self._ws = None

    # -- the connection ----------------------------------------------------------------

    async def current_token(self, *, fresh: bool = False) -> str:
        if self._provider is not None and (fresh or self._token is None):
            self._token = await provide(self._provider)
        assert self._token is not None
        return self._token

    async def _run(self) -> None:
        try:
            await self._reconnect_forever()
        except Exception as exc:
            # Not one of the failures above: the subscriptions end with it rather than wait
            # for updates that can no longer come.
            log.exception("stream to %s failed", self.url)
            self._fail(exc)

    async def _reconnect_forever(self) -> None:
        attempt, fresh_token = 0, False
        while not self._closed:
            retry_after: float | None = None
            try:
                token = await self.current_token(fresh=fresh_token)
                fresh_token = False
                async with connect(
                    self.url,
                    additional_headers={"Authorization": f"Bearer {token}"},
                    # Named for proxies that route on it; a server that does not answer it
                    # (an older ratewire) is accepted all the same.
                    subprotocols=[SUBPROTOCOL],
                    compression=None,
                    open_timeout=10,
                    max_size=None,
                ) as ws:
                    self.connections += 1
                    if await self._session(ws, token):
                        attempt = 0
                    if not self._closed:  # the server closed it cleanly (1000, 1001)
                        log.info(RECONNECTING, ws.close_code)
            except ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd is not None else None
                if code in AUTH_CLOSE_CODES:
                    reason = closed.rcvd.reason if closed.rcvd is not None else ""
                    if self._provider is None:
                        self._fail(AuthenticationError(code, reason or AUTH_CLOSE_CODES[code]))
                        return
                    fresh_token = True  # renew and come back at once
                    attempt = 0
                    continue
                log.info(RECONNECTING, code)
            except InvalidStatus as refused:
                status = refused.response.status_code
                if status in (401, 403, 404):
                    self._fail(SubscriptionRefused(f"{self.url}: upgrade refused with {status}"))
                    return
                header = refused.response.headers.get("Retry-After")
                retry_after = float(header) if header and header.isdigit() else None
            except InvalidURI as exc:
                self._fail(SubscriptionRefused(str(exc)))
                return
            except (OSError, TimeoutError) as exc:
                log.info("cannot reach %s (%s); retrying", self.url, exc)
            except WebSocketException as exc:
                # A handshake with no valid answer (a TCP balancer with no backend accepts and
                # drops) or a broken frame: the server may well be back on the next attempt.
                log.info("connection to %s failed (%s); retrying", self.url, exc)
            finally:
                self._ws = None
            attempt += 1
            backoff = min(self._max_backoff, 0.25 * 2 ** min(attempt, 10))
            delay = backoff * (0.5 + random.random() / 2)  # jitter: clients do not return in step
            await asyncio.sleep(max(delay, retry_after or 0))

    async def _session(self, ws: ClientConnection, token: str) -> bool:
        """Run one connection until it closes (raises ConnectionClosed); True once it was
        subscribed (the backoff starts over)."""
        hello = orjson.loads(await ws.recv())
        if hello.get("type") != "connection_success":
            raise ConnectionError(f"unexpected first frame {hello}")
        self._ws = ws
        log.info("connected to %s", self.url)
        for topic in list(self._subs):
            await self._subscribe(ws, topic, snapshot=any(s.snapshot for s in self._subs[topic]))
        for topic in list(self._summary_subs):
            await self._subscribe_summary(ws, topic)
        refresher = asyncio.create_task(self._refresh_before_expiry(ws, token))
        subscribed = False
        try:
            async for raw in ws:
                frame = orjson.loads(raw)
                subscribed |= frame.get("type") == "subscribed"
                await self._dispatch(frame)
        finally:
            refresher.cancel()
        return subscribed

    async def _send(self, ws: ClientConnection, message: dict[str, Any]) -> None:
        await ws.send(orjson.dumps(message).decode())

    async def _subscribe(self, ws: ClientConnection, topic: str, *, snapshot: bool) -> None:
        message: dict[str, Any] = {"action": "subscribe", "topic": topic, "id": topic}
        position = self._position.get(topic)
        if position is not None and topic != WILDCARD:
            message["since"] = position
            if topic in self._epoch:
                message["epoch"] = self._epoch[topic]
        elif snapshot:
            message["snapshot"] = True
        if topic in self._filters:
            message["filter"] = self._filters[topic]
        await self._send(ws, message)

    async def _refresh_before_expiry(self, ws: ClientConnection, token: str) -> None:
        """Send ``refresh`` with a new token before the current one expires (the server
        would close with 4002)."""
        if self._provider is None:
            return
        while True:
            expires = token_claims(token).get("exp")
            if not isinstance(expires, int | float):
                return
            lifetime = expires - time.time()
            await asyncio.sleep(max(0.0, lifetime - min(self._refresh_margin, lifetime / 3)))
            token = await self.current_token(fresh=True)
            await self._send(ws, {"action": "refresh", "token": token})

    # -- frames ------------------------------------------------------------------------

    def _targets(self, topic: str) -> list[Subscription]:
        subs = list(self._subs.get(topic, ()))
        if topic.startswith("rating.game.") and topic != WILDCARD:
            subs.extend(self._subs.get(WILDCARD, ()))
        return subs

    async def _dispatch(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "rating_update":
            topic, offset = frame["topic"], frame["offset"]
            update = Update.from_wire(frame)
            if topic in self._subs:
                self._position[topic] = max(offset, self._position.get(topic, 0))
            for sub in self._targets(topic):
                if (put := sub.offer(topic, offset, update)) is not None:
                    await put
        elif kind == "summary":
            await self._summary(frame)
        elif kind == "subscribed":
            if not str(frame.get("topic", "")).startswith(SUMMARY_PREFIX):
                await self._subscribed(frame)
        elif kind == "snapshot":
            topic, offset = frame["topic"], frame["offset"]
            snapshot = Snapshot(topic, offset, Summary.from_wire(frame["data"]))
            self._position[topic] = offset
            for sub in self._subs.get(topic, ()):
                if sub.snapshot:
                    sub.snapshot = False
                    sub.last[topic] = offset
                    await sub.queue.put(snapshot)
        elif kind == "error" and str(frame.get("id", "")) in self._summary_subs:
            topic = str(frame.get("id"))  # a refused summary subscribe (its options, say)
            self._summary_options.pop(topic, None)
            for sub in self._summary_subs.pop(topic, []):
                await sub.queue.put(SubscriptionRefused(f"{topic}: {frame.get('message')}"))
        elif kind == "error" and frame.get("code") in ("forbidden", "unknown_topic", "bad_filter"):
            topic = str(frame.get("id", ""))
            self._filters.pop(topic, None)
            for sub in self._subs.pop(topic, []):
                await sub.queue.put(SubscriptionRefused(f"{topic}: {frame.get('message')}"))
        elif kind == "error":
            log.warning("server: %s", frame.get("message"))

    async def _summary(self, frame: dict[str, Any]) -> None:
        topic = frame["topic"]
        if topic not in self._summary_subs:
            return  # unsubscribed meanwhile
        state = self._summary_last[topic] = SummaryUpdate.from_wire(frame)
        for sub in self._summary_subs[topic]:
            await sub.queue.put(state)

    async def _subscribed(self, frame: dict[str, Any]) -> None:
        topic, offset = frame["topic"], frame.get("offset", 0)
        if frame.get("epoch"):
            self._epoch[topic] = frame["epoch"]
        if frame.get("recovered") is False:
            after = self._position.get(topic, 0)
            self._position[topic] = offset
            for sub in self._subs.get(topic, ()):
                gap = Gap(topic, sub.last.get(topic, after), offset)
                sub.last[topic] = offset
                await sub.queue.put(gap)
            return
        fresh = "recovered" not in frame  # not a resume: live from ``offset``
        if fresh:
            log.info("following %s from offset %d (live from here)", topic, offset)
        else:
            log.info("following %s: resumed, every update after the last one seen", topic)
        if fresh and (topic not in self._position or self._position[topic] < offset):
            self._position[topic] = offset
        for sub in self._subs.get(topic, ()):
            sub.last.setdefault(topic, offset)

    def _fail(self, error: BaseException) -> None:
        self.failure = error
        for subs in [*self._subs.values(), *self._summary_subs.values()]:
            for sub in subs:
                with contextlib.suppress(asyncio.QueueFull):
                    sub.queue.put_nowait(error)
