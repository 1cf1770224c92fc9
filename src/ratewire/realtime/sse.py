"""Server-Sent Events on the main port: ``GET /stream?topic=...`` (docs/protocol.md).

A stream is a :class:`~ratewire.realtime.session.Session` like a WebSocket connection, with
the same token rules, topic permissions, revocation, caps, capacity slots, history replay and
slow-consumer rule: only the transport differs. The endpoint subscribes the URL's topics
through the session, and :class:`SsePeer` turns the session's frames into events:

- ``rating_update``: ``data`` is the WebSocket frame with the store's ``epoch`` added, and
  ``id`` a cursor holding the epoch and the last offset of every topic of the stream, so a
  reconnect with ``Last-Event-ID`` (what ``EventSource`` sends by itself) resumes each topic
  after what it delivered;
- ``subscribed`` (with an ``id`` too, so a stream that ends before any update still resumes
  from where it began), and ``gap`` when history no longer reaches the cursor;
- ``summary`` for summary topics (``?topic=summary.game.42&intervalMs=2000``; ``limit`` and
  ``minCount`` for ``summary.games.top``): ``data`` is the WebSocket ``summary`` frame. They
  have no offsets to resume: a reconnect starts with the current state;
- ``error`` when the session ends the stream (revoked or expired token, too slow, shutdown).

Like ``/ws`` it is a raw ASGI app dispatched in front of FastAPI (:func:`mount_realtime`), so
events never pass through Starlette's middleware; the outbox counts bytes and writes each
burst of events in one body chunk.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import contextvars
import logging
import re
from dataclasses import dataclass
from http import HTTPStatus
from typing import ClassVar
from urllib.parse import parse_qs

import orjson
from starlette.types import Receive, Scope, Send

from ratewire.domain import TopicKind, is_summary_name, parse_topic
from ratewire.domain.filters import BadFilter, subscription_filter
from ratewire.realtime.handshake import (
    RATE_REFUSED_BODY,
    USER_CAP_BODY,
    MainPortEndpoint,
    Refusal,
    token_from_request,
)
from ratewire.realtime.history import StreamHistory
from ratewire.realtime.messages import ClientMessage
from ratewire.realtime.outbox import Outbox
from ratewire.realtime.session import (
    RealtimeContext,
    Session,
)
from ratewire.realtime.slots import RETRY_AFTER_SECONDS
from ratewire.realtime.summary_subscriptions import SummaryRefusal, check_summary
from ratewire.security.permissions import TopicRefusal, check_topic
from ratewire.security.tokens import InvalidToken, Principal

#: How long an ``EventSource`` waits before reconnecting (the ``retry:`` field), in ms.
RETRY_MS = 1000
#: How long an ended stream's last event may wait for the reader before the connection is cut.
CUT_AFTER_SECONDS = 1.0
#: Set (in the request's task) when a stream ends without completing its response on
#: purpose; uvicorn then closes the connection and would log it as an application error.
_CUT_SHORT: contextvars.ContextVar[bool] = contextvars.ContextVar("sse_cut_short", default=False)


class _CutShortIsExpected(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (_CUT_SHORT.get() and "without completing response" in str(record.msg))


logging.getLogger("uvicorn.error").addFilter(_CutShortIsExpected())
_UPDATE_PREFIX = b'{"type":"rating_update","topic":"'
_SUMMARY_PREFIX = b'{"type":"summary",'
#: Query parameters that are summary topics' subscribe options (JSON name -> message field).
_SUMMARY_OPTIONS = {"intervalMs": "interval_ms", "limit": "limit", "minCount": "min_count"}
_CURSOR_VERSION = "1"
_EPOCH = re.compile(r"[0-9A-Za-z_-]{1,64}")
_OFFSET = re.compile(r"[0-9]{1,18}")
_MADE_KEPT = 256


class BadLastEventId(ValueError):
    """A ``Last-Event-ID`` this server did not write."""


def encode_event_id(epoch: str, positions: dict[str, int]) -> bytes:
    """The opaque event id: the epoch and each topic's last delivered offset."""
    text = "|".join([_CURSOR_VERSION, epoch, *(f"{t}={o}" for t, o in positions.items())])
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=")


def decode_event_id(cursor: str) -> tuple[str, dict[str, int]]:
    """(epoch, offsets by topic) of an id written by :func:`encode_event_id`."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, epoch, *pairs = text.split("|")
        if version != _CURSOR_VERSION or not _EPOCH.fullmatch(epoch):
            raise ValueError(version)
        positions = {}
        for pair in pairs:
            topic, _, offset = pair.rpartition("=")
            if parse_topic(topic) is None:
                raise ValueError(topic)
            # ASCII digits that fit every store's 64-bit offsets (int() also takes "+5",
            # "5_0" and non-ASCII digits; a 20-digit one failed in the database: a 1013).
            if _OFFSET.fullmatch(offset) is None:
                raise ValueError(pair)
            positions[topic] = int(offset)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadLastEventId(
            f"Last-Event-ID {cursor[:80]!r} is not a cursor of this server"
        ) from None
    return epoch, positions


class SsePeer(Outbox):
    """Adapts one HTTP response to a :class:`Session`: frames in, events out."""

    #: Update events made lately, by (frame, epoch, cursor); the frame is kept to check that
    #: an id was not reused by a newer frame.
    _made: ClassVar[dict[tuple[int, str, tuple[tuple[str, int], ...]], tuple[bytes, bytes]]] = {}

    def __init__(
        self,
        send: Send,
        limit: int,
        heartbeat: float,
        epoch: str,
        followed: set[str],
        resumed: dict[str, int],
    ) -> None:
        super().__init__(limit)
        self._send = send
        self._heartbeat = heartbeat
        self._epoch = epoch
        self._epoch_bytes = epoch.encode()
        #: The topics with offsets of their own (all but rating.game.*).
        self._followed = followed
        #: Last offset delivered of each followed topic (the cursor): a resumed topic's from
        #: the start, a new one's from its ``subscribed``.
        self.positions = dict(resumed)
        #: Where each resumed topic was asked to start (named by a gap, if there is one).
        self._resumed = resumed
        self._wrote_since_beat = False
        self._beat_due = False
        self._beat_timer: asyncio.TimerHandle | None = None
        #: Set once the session ended the stream.
        self.closing = asyncio.Event()

    # -- the Peer protocol ---------------------------------------------------------------

    def send_text(self, data: bytes) -> None:
        if self._close is not None:
            return
        event = self._event(data)
        if event is not None:
            self._enqueue(event)

    def close(self, code: int, reason: str) -> None:
        super().close(code, reason)
        self.closing.set()

    # -- frames to events ----------------------------------------------------------------

    def _event(self, frame: bytes) -> bytes | None:
        if frame.startswith(_UPDATE_PREFIX):
            end = frame.index(b'"', len(_UPDATE_PREFIX))
            topic = frame[len(_UPDATE_PREFIX) : end].decode()
            start = end + len(b'","offset":')
            offset = int(frame[start : frame.index(b",", start)])
            if topic in self._followed:  # else it came through rating.game.*: no cursor
                self.positions[topic] = offset
            # The hub hands the same frame objects to every stream of the topic, and streams
            # of the same topics at the same offsets write the same bytes: an event is made
            # once, not once per stream.
            key = (id(frame), self._epoch, tuple(self.positions.items()))
            cache = SsePeer._made
            made = cache.get(key)
            if made is not None and made[0] is frame:
                return made[1]
            data = b'{"type":"rating_update","epoch":"%s",%s' % (
                self._epoch_bytes,
                frame[len(b'{"type":"rating_update",') :],
            )
            event = self._format(b"rating_update", data)
            if len(cache) >= _MADE_KEPT:
                cache.clear()
            cache[key] = (frame, event)
            return event
        if frame.startswith(_SUMMARY_PREFIX):
            return self._format(b"summary", frame)  # the frame as it is: one per group
        message = orjson.loads(frame)
        kind = message.get("type")
        if kind == "subscribed":
            topic, offset = message["topic"], message["offset"]
            if topic not in self._followed:
                return None
            self.positions[topic] = offset
            if message.get("recovered") is False:
                gap = {
                    "topic": topic,
                    "after": self._resumed.get(topic, 0),
                    "offset": offset,
                    "next": offset + 1,
                    "epoch": self._epoch,
                }
                return self._format(b"gap", orjson.dumps(gap))
            return self._format(b"subscribed", frame)
        if kind == "error":
            return self._format(b"error", frame)
        return None  # connection_success, pong, refreshed: nothing a stream reader needs

    def _format(self, kind: bytes, data: bytes) -> bytes:
        cursor = encode_event_id(self._epoch, self.positions)
        return b"id: %s\nevent: %s\ndata: %s\n\n" % (cursor, kind, data)

    # -- writing -------------------------------------------------------------------------

    def _beat(self) -> None:
        """Every heartbeat period: ask for a comment if nothing was written since the last.
        (A timer, not ``wait_for`` around each wait: on Python 3.11 that costs a task per
        burst per stream, measured as the largest cost of SSE fan-out.)"""
        if not self._wrote_since_beat:
            self._beat_due = True
            self._wake.set()
        self._wrote_since_beat = False
        self._beat_timer = asyncio.get_running_loop().call_later(self._heartbeat, self._beat)

    async def write_loop(self) -> None:
        """Write queued events (a burst in one chunk), comments when idle, and the end."""
        send = self._send
        self._beat_timer = asyncio.get_running_loop().call_later(self._heartbeat, self._beat)
        try:
            with contextlib.suppress(OSError, RuntimeError):
                await self._write_until_closed(send)
        finally:
            self._beat_timer.cancel()

    async def _write_until_closed(self, send: Send) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._beat_due and not self._outbox:
                self._beat_due = False
                await send(
                    {
                        "type": "http.response.body",
                        "body": b": keep-alive\n\n",
                        "more_body": True,
                    }
                )
            self._beat_due = False
            if self._outbox:
                self._wrote_since_beat = True
                chunk = b"".join(self._outbox)
                self._outbox.clear()
                self._queued = 0
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            self._drained.set()
            if self._close is not None:
                code, reason = self._close
                ending = orjson.dumps({"code": code, "reason": reason})
                await send(
                    {
                        "type": "http.response.body",
                        "body": b"event: error\ndata: %s\n\n" % ending,
                        "more_body": False,
                    }
                )
                return


class SseEndpoint(MainPortEndpoint):
    """The raw ASGI app behind ``GET /stream``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await _problem(send, 405, "use GET")
            return
        await self._admit_and_serve(scope, receive, send)

    async def _refuse_admission(self, scope: Scope, send: Send, refusal: Refusal) -> None:
        await _problem(send, refusal.status, refusal.body, retry_after=refusal.retry_after)

    async def _serve(
        self, ip: str, headers: dict[bytes, bytes], scope: Scope, receive: Receive, send: Send
    ) -> None:
        retry_after = self._limiter.acquire(ip)
        if retry_after:
            await _problem(send, 429, RATE_REFUSED_BODY, retry_after=retry_after)
            return
        request = await self._accepted(headers, scope["query_string"].decode("latin-1"))
        if isinstance(request, _Refusal):
            await _problem(send, request.status, request.detail, retry_after=request.retry_after)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),
                ],
            }
        )
        if scope["method"] == "HEAD":
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await send(
            {"type": "http.response.body", "body": b"retry: %d\n\n" % RETRY_MS, "more_body": True}
        )
        await self._stream(ip, request, receive, send)

    async def _accepted(
        self, headers: dict[bytes, bytes], query_string: str
    ) -> _Request | _Refusal:
        """The stream a request asks for, or why it is refused (before the stream starts, so
        an ``EventSource`` stops retrying)."""
        ctx = self._ctx
        query = parse_qs(query_string)
        authorization = headers.get(b"authorization", b"").decode("latin-1") or None
        token = token_from_request("?" + query_string, authorization)
        if token is None:
            return _Refusal(401, "a token is needed: Authorization: Bearer <JWT> or ?token=<JWT>")
        try:
            principal = ctx.tokens.verify(token)
        except InvalidToken as exc:
            return _Refusal(401, exc.reason)
        asked = query.get("topic", [])
        if not asked:
            return _Refusal(400, "name at least one topic: ?topic=rating.global")
        if len(asked) > (most := ctx.limits.max_subscriptions_per_connection):
            return _Refusal(400, f"a stream holds at most {most} topics")
        names = list(dict.fromkeys(asked))
        options = _summary_options(query)
        if isinstance(options, _Refusal):
            return options
        followed: set[str] = set()
        for name in names:
            if is_summary_name(name):
                summary = check_summary(principal, name, **options)
                if isinstance(summary, SummaryRefusal):
                    status = {"forbidden": 403, "unknown_topic": 400}.get(summary.code, 400)
                    return _Refusal(status, summary.message)
                continue
            checked = check_topic(principal, name)
            if isinstance(checked, TopicRefusal):
                return _Refusal(403 if checked.code == "forbidden" else 400, checked.message)
            if checked.kind is not TopicKind.ALL_GAMES:
                followed.add(name)
        # ?filter=EXPR applies to every topic of the stream; checked after the topics (it
        # only narrows what the token may see) and compiled here so a bad one is a 400.
        expression = query.get("filter", [None])[-1]
        try:
            for name in names:
                if not is_summary_name(name):  # a summary is state, not events to filter
                    subscription_filter(expression, name)
        except BadFilter as exc:
            return _Refusal(400, f"bad filter: {exc.message}")
        cursor = (
            headers.get(b"last-event-id", b"").decode("latin-1")
            or (query.get("lastEventId", [""])[0])
        )
        try:
            epoch, resume_from = decode_event_id(cursor) if cursor else (None, {})
        except BadLastEventId as exc:
            return _Refusal(400, str(exc))
        if ctx.slots.user_full(principal.sub):
            return _Refusal(429, USER_CAP_BODY, RETRY_AFTER_SECONDS)
        resumed = {name: resume_from[name] for name in followed if name in resume_from}
        if epoch == ctx.store.epoch and not isinstance(ctx.store, StreamHistory):
            ahead = await _beyond_head(ctx, resumed)
            if ahead is not None:
                return _Refusal(400, f"Last-Event-ID {cursor[:80]!r} {ahead}")
        return _Request(principal, names, followed, epoch, resumed, options, expression)

    async def _stream(self, ip: str, request: _Request, receive: Receive, send: Send) -> None:
        """Serve the accepted stream until the client goes or the session ends it."""
        ctx = self._ctx
        peer = SsePeer(
            send,
            ctx.limits.send_buffer_bytes,
            ctx.limits.sse_heartbeat_seconds,
            ctx.store.epoch,
            request.followed,
            request.resumed,
        )
        session = Session(peer, ctx, ip, "/stream")
        peer.session = session
        writer = asyncio.create_task(peer.write_loop())
        session.opened(request.principal)
        for name in request.names:
            if is_summary_name(name):
                options = request.options
                session.request(
                    ClientMessage(
                        "subscribe",
                        topic=name,
                        interval_ms=options.get("interval_ms"),
                        limit=options.get("limit"),
                        min_count=options.get("min_count"),
                    )
                )
                continue
            since = request.resumed.get(name)
            epoch = request.epoch if since is not None else None
            session.request(
                ClientMessage(
                    "subscribe", topic=name, since=since, epoch=epoch, filter=request.filter
                )
            )
        closing = asyncio.ensure_future(peer.closing.wait())
        receiving = asyncio.ensure_future(receive())
        try:
            while not writer.done():
                done, _ = await asyncio.wait(
                    {receiving, writer, closing}, return_when=asyncio.FIRST_COMPLETED
                )
                if receiving in done:
                    if receiving.result()["type"] == "http.disconnect":
                        break
                    receiving = asyncio.ensure_future(receive())
                if closing in done:
                    # The session ended the stream: the writer sends the end, unless the
                    # reader stopped reading (a 4009, say) and it waits for room that never
                    # comes; then the response is cut short and the connection closed.
                    done, _ = await asyncio.wait({writer}, timeout=CUT_AFTER_SECONDS)
                    if not done:
                        _CUT_SHORT.set(True)
                    break
        finally:
            receiving.cancel()
            closing.cancel()
            session.closed_by_peer(None)
            await peer.end(writer)


@dataclass(frozen=True, slots=True)
class _Request:
    """What an accepted ``GET /stream`` follows, and from where."""

    principal: Principal
    names: list[str]
    #: The topics with offsets of their own (all but rating.game.*).
    followed: set[str]
    epoch: str | None
    #: Where each resumed topic starts (from ``Last-Event-ID``).
    resumed: dict[str, int]
    #: The summary topics' options (``intervalMs``, ``limit``, ``minCount``), by field.
    options: dict[str, int]
    #: The ``filter`` query parameter: a CEL expression every event must pass.
    filter: str | None = None


@dataclass(frozen=True, slots=True)
class _Refusal:
    status: int
    detail: str | bytes
    retry_after: int | None = None


def _summary_options(query: dict[str, list[str]]) -> dict[str, int] | _Refusal:
    """The summary options of the query string, as subscribe message fields; a 400 naming a
    parameter that is not an integer (ranges are checked with the topics)."""
    options: dict[str, int] = {}
    for parameter, name in _SUMMARY_OPTIONS.items():
        values = query.get(parameter)
        if not values:
            continue
        text = values[0]
        if not (text.isascii() and text.isdigit() and len(text) <= 18):
            return _Refusal(400, f"{parameter} must be a whole number; got {text[:40]!r}")
        options[name] = int(text)
    return options


async def _beyond_head(ctx: RealtimeContext, resumed: dict[str, int]) -> str | None:
    """What is wrong with a cursor that resumes past a topic's last event, else None.

    In the store's own epoch no client can have seen such an offset: the cursor was forged
    or belongs elsewhere. (A broker's history may lag the database while it is rebuilt, so
    instances without a database answer it later with 1013 instead, see ``HistoryBehind``.)
    """
    for name, offset in resumed.items():
        topic = parse_topic(name)
        if topic is None:
            continue
        try:
            head, _ = await ctx.store.topic_position(topic)
        except Exception:
            return None  # storage away: the subscribe that follows says so (1013)
        if offset > head:
            return f"names offset {offset} of {name}, past its last event ({head})"
    return None


async def _problem(
    send: Send, status: int, detail: str | bytes, *, retry_after: int | None = None
) -> None:
    """An RFC 9457 answer before the stream starts (an ``EventSource`` then stops retrying);
    ``detail`` may be one of the refusal bodies the WebSocket endpoints answer with."""
    if isinstance(detail, bytes):
        detail = detail.decode().strip()
    title = HTTPStatus(status).phrase
    # The type names the status as REST's problems do (ratewire.api.problems).
    kind = f"urn:ratewire:problem:{title.lower().replace(' ', '-')}"
    body = orjson.dumps({"type": kind, "title": title, "status": status, "detail": detail})
    headers = [(b"content-type", b"application/problem+json")]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    if status == 405:
        headers.append((b"allow", b"GET"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
