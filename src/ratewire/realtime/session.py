"""One WebSocket connection's protocol logic (docs/protocol.md), independent of the
WebSocket library: an adapter feeds it text payloads and gives it a :class:`Peer` to write to.

Messages are handled in arrival order. Those that need the store (subscribe) run in a
short-lived task per burst, so an idle connection holds no task at all.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from ratewire.audit import AuditContext
from ratewire.audit.log import AuditLog
from ratewire.config import LimitsSettings
from ratewire.domain import (
    GameSummary,
    Topic,
    TopicKind,
    is_summary_name,
)
from ratewire.domain.filters import BadFilter, EventFilter, subscription_filter
from ratewire.realtime import consumer_members, frames
from ratewire.realtime.history import (
    HistorySource,
    SnapshotUnavailable,
)
from ratewire.realtime.hub import Hub
from ratewire.realtime.messages import BadMessage, ClientMessage, decode
from ratewire.realtime.replay import replay
from ratewire.realtime.slots import ConnectionSlots
from ratewire.realtime.summary_subscriptions import SessionSummaries
from ratewire.security.permissions import TopicRefusal, check_topic
from ratewire.security.proxies import TrustedProxies
from ratewire.security.tokens import InvalidToken, Principal, TokenExpired, TokenService
from ratewire.services.consumers import ConsumerService
from ratewire.services.summary_streams import SummaryStreams

PROTOCOL_VERSION = 1

log = logging.getLogger("ratewire.realtime")
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_AUTH_FAILED = 4001
CLOSE_TOKEN_EXPIRED = 4002
CLOSE_RATE_LIMITED = 4008
CLOSE_ABNORMAL = 1006  # no close frame: the connection just went away
TOO_MANY_FOR_USER = "Too many connections for this user"
CLOSE_TOO_SLOW = 4009
#: RFC 6455's "Try Again Later": a subscribe could not be served for now.
CLOSE_TRY_AGAIN_LATER = 1013
#: Actions handled in order in the connection's task (they await the store).
_QUEUED = frozenset({"subscribe", "ack"})
#: Disconnects the audit log names apart, so they can be filtered for.
_DISCONNECT_ACTIONS = {CLOSE_RATE_LIMITED: "ws.rate_limited", CLOSE_TOO_SLOW: "ws.too_slow"}


class Peer(Protocol):
    """The transport side of one connection, provided by an adapter."""

    def send_text(self, data: bytes) -> None:
        """Queue a text frame; never blocks. Overflowing the send buffer closes with 4009."""

    def close(self, code: int, reason: str) -> None:
        """Send a close frame and disconnect."""

    async def drain(self) -> None:
        """Wait until the send buffer is low again (used between replay pages)."""


@dataclass(slots=True)
class ConnectionStats:
    """Running counts over every connection of the process (read by /metrics)."""

    opened: int = 0
    #: Close code (as text, the metric label) -> connections that ended with it.
    closed: Counter[str] = field(default_factory=Counter)
    #: Frames refused for exceeding the per-connection message rate.
    messages_refused: int = 0


@dataclass(slots=True)
class RealtimeContext:
    """What every session shares."""

    hub: Hub
    store: HistorySource
    tokens: TokenService
    limits: LimitsSettings
    summary_wire: Callable[[GameSummary], dict[str, object]]
    sessions: set[Session]
    #: Who may open a connection now (capacity and per-IP caps).
    slots: ConnectionSlots = field(default_factory=ConnectionSlots)
    #: Browser origins allowed to upgrade (modules.websocket.allowed_origins); None: any.
    allowed_origins: frozenset[str] | None = None
    #: Where connects, disconnects and refused tokens are recorded (None: audit log off).
    audit: AuditLog | None = None
    #: Proxies whose forwarded client addresses are believed (server.trusted_proxies).
    proxies: TrustedProxies = field(default_factory=lambda: TrustedProxies(()))
    stats: ConnectionStats = field(default_factory=ConnectionStats)
    #: Summary streams (None: this instance has no database to read summaries from).
    summaries: SummaryStreams | None = None
    #: Durable consumers (None: this instance has no database to keep them in).
    consumers: ConsumerService | None = None

    def now(self) -> float:
        return time.time()


class Session:
    """Protocol state of one connection: auth, subscriptions, message throttling."""

    __slots__ = (
        "_auth_timer",
        "_bucket",
        "_bucket_at",
        "_client_ip",
        "_close_code",
        "_ctx",
        "_denied",
        "_endpoint",
        "_expiry_timer",
        "_holds_user_slot",
        "_inbox",
        "_summaries",
        "_worker",
        "client_id",
        "closed",
        "consumers",
        "peer",
        "principal",
        "send",
        "send_frames",
        "topics",
    )

    def __init__(
        self, peer: Peer, ctx: RealtimeContext, client_ip: str | None = None, endpoint: str = ""
    ) -> None:
        self.peer = peer
        self._client_ip = client_ip
        self._endpoint = endpoint
        self._close_code: int | None = None  # set when the server closes
        self.send = peer.send_text  # what the hub calls, once per delivered frame
        #: What the hub calls with several frames at once; an adapter that can write
        #: pre-framed bytes in one call replaces it (picows_server).
        self.send_frames: Callable[[Sequence[bytes], bytes], None] = self._send_each
        self._ctx = ctx
        self.principal: Principal | None = None
        self.client_id = ""
        self.topics: dict[str, Topic] = {}
        #: Summary subscriptions, made on the first (most connections hold none).
        self._summaries: SessionSummaries | None = None
        #: (topic, consumer name) -> this connection's membership of that consumer.
        self.consumers: dict[tuple[str, str], consumer_members.SocketMember] = {}
        self.closed = False
        # Created on first use: a deque costs ~600 bytes, and most connections never queue.
        self._inbox: deque[ClientMessage | bytes] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._auth_timer: asyncio.TimerHandle | None = None
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._bucket = ctx.limits.ws_messages_per_client_per_second
        self._bucket_at = time.monotonic()
        self._denied = 0
        self._holds_user_slot = False

    def _send_each(self, payloads: Sequence[bytes], framed: bytes) -> None:
        for payload in payloads:
            self.send(payload)

    # -- lifecycle (called by the adapter) -------------------------------------------------

    def opened(self, token: str | Principal | InvalidToken | None) -> None:
        """The WebSocket is open. With a token (query or header; or the outcome of verifying
        it, when the adapter did at upgrade), authenticate now; without, wait for an ``auth``
        frame for ``limits.auth_timeout_seconds``."""
        self._ctx.sessions.add(self)
        self._ctx.stats.opened += 1
        if token is not None:
            self._authenticate(token, None)
            return
        loop = asyncio.get_running_loop()
        self._auth_timer = loop.call_later(
            self._ctx.limits.auth_timeout_seconds, self.close, CLOSE_AUTH_FAILED, "Invalid token"
        )

    def closed_by_peer(self, code: int | None = None) -> None:
        """The connection is gone (``code``: the close code the client sent, if any): release
        everything it held."""
        if self.closed and self not in self._ctx.sessions:
            return
        final = self._close_code or code or CLOSE_ABNORMAL
        self._ctx.stats.closed[str(final)] += 1
        if self.principal is not None and self._ctx.audit is not None:
            self._ctx.audit.record(
                _DISCONNECT_ACTIONS.get(final, "ws.disconnect"),
                self._audit_context(),
                code=final,
                endpoint=self._endpoint,
            )
        self.closed = True
        self._ctx.sessions.discard(self)
        for name in self.topics:
            self._ctx.hub.drop(name, self)
        self.topics.clear()
        if self._summaries is not None:
            self._summaries.close()
        if self.consumers:
            consumer_members.leave_all(self, self._ctx.consumers)
        if self._holds_user_slot and self.principal is not None:
            self._holds_user_slot = False
            self._ctx.slots.release_user(self.principal.sub)
        for timer in (self._auth_timer, self._expiry_timer):
            if timer is not None:
                timer.cancel()
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
        self._inbox = None

    def close(self, code: int, reason: str) -> None:
        """Close the connection from the server side."""
        if self.closed:
            return
        self.closed = True
        self._close_code = code
        for name in self.topics:
            self._ctx.hub.drop(name, self)
        if self._summaries is not None:
            self._summaries.close()
        if self.consumers:
            consumer_members.leave_all(self, self._ctx.consumers)
        self.peer.close(code, reason)

    # -- incoming frames -------------------------------------------------------------------

    def received(self, payload: bytes) -> None:
        """One complete client text frame."""
        if self.closed or not self._admit_message():
            return
        try:
            message: ClientMessage | bytes = decode(payload)
        except BadMessage as exc:
            message = frames.error("bad_request", str(exc))
        if self._inbox or self._worker is not None:
            self._enqueue(message)  # replies keep the order of the requests
            return
        if isinstance(message, bytes):
            self.send(message)
            return
        if self.principal is None:
            if message.action != "auth" or not message.token:
                self.close(CLOSE_AUTH_FAILED, "Invalid token")
                return
            self._authenticate(message.token, message.id)
            return
        if message.action not in _QUEUED:
            self._handle_now(message)  # the common case needs no task
            return
        self._enqueue(message)

    def request(self, message: ClientMessage) -> None:
        """Handle a message the adapter made itself, in order with everything before it (the
        SSE endpoint subscribes the topics of its URL this way); it is not counted against
        the client's message rate."""
        if self.closed or self.principal is None:
            return
        if message.action in _QUEUED or self._inbox or self._worker is not None:
            self._enqueue(message)
        else:
            self._handle_now(message)

    def _enqueue(self, message: ClientMessage | bytes) -> None:
        if self._inbox is None:
            self._inbox = deque()
        self._inbox.append(message)
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._drain_inbox())

    def _admit_message(self) -> bool:
        """Token bucket per connection: over the rate, error frames; keep going, 4008."""
        rate = self._ctx.limits.ws_messages_per_client_per_second
        now = time.monotonic()
        self._bucket = min(rate, self._bucket + (now - self._bucket_at) * rate)
        self._bucket_at = now
        if self._bucket >= 1:
            self._bucket -= 1
            self._denied = 0
            return True
        self._denied += 1
        self._ctx.stats.messages_refused += 1
        if self._denied > rate:
            self.close(CLOSE_RATE_LIMITED, "Message rate exceeded")
        else:
            self.send(
                frames.error("rate_limited", f"more than {rate:g} messages per second; slow down")
            )
        return False

    async def _drain_inbox(self) -> None:
        try:
            while self._inbox and not self.closed:
                message = self._inbox.popleft()
                if isinstance(message, bytes):
                    self.send(message)
                elif message.action == "subscribe":
                    try:
                        await self._subscribe(message)
                    except Exception as exc:
                        # History or the head could not be read (the database or Redis is
                        # unreachable): no subscription was made. Closing tells the client to
                        # resume in a moment; left open, it would wait for an answer forever.
                        log.warning("subscribe to %s failed: %s; closing 1013", message.topic, exc)
                        self.close(CLOSE_TRY_AGAIN_LATER, "History unavailable; resume shortly")
                        return
                elif message.action == "ack":
                    await consumer_members.ack(self, self._ctx.consumers, message)
                else:
                    self._handle_now(message)
        finally:
            self._worker = None

    def _handle_now(self, message: ClientMessage) -> None:
        action = message.action
        if action == "ping":
            self.send(frames.control("pong", message.id))
        elif action == "unsubscribe":
            self._unsubscribe(message)
        elif action == "refresh":
            self._refresh(message)
        elif action == "auth":
            self.send(frames.error("bad_request", "already authenticated", message.id))
        else:
            self.send(
                frames.error(
                    "bad_request",
                    f"unknown action {action!r}; expected subscribe, unsubscribe, ack, refresh or "
                    "ping",
                    message.id,
                )
            )

    # -- auth --------------------------------------------------------------------------------

    def _authenticate(self, token: str | Principal | InvalidToken, message_id: object) -> None:
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None
        try:
            if isinstance(token, InvalidToken):
                raise token
            principal = token if isinstance(token, Principal) else self._ctx.tokens.verify(token)
        except InvalidToken as exc:
            if self._ctx.audit is not None:
                sub, jti = exc.claimed
                self._ctx.audit.record(
                    "auth.refused",
                    self._audit_context(),
                    reason=exc.reason,
                    channel="websocket",
                    endpoint=self._endpoint,
                    sub=sub,
                    jti=jti,
                )
            self.close(CLOSE_AUTH_FAILED, exc.reason)
            return
        if not self._ctx.slots.admit_user(principal.sub):
            # An upgrade carrying the token got HTTP 429 already; this one authenticated in a
            # frame (or raced another upgrade), so it can only be closed.
            self.close(CLOSE_RATE_LIMITED, TOO_MANY_FOR_USER)
            return
        self._holds_user_slot = True
        self.principal = principal
        if self._ctx.audit is not None:
            self._ctx.audit.record("ws.connect", self._audit_context(), endpoint=self._endpoint)
        self.client_id = uuid.uuid4().hex
        self._arm_expiry(principal)
        self.send(
            frames.control(
                "connection_success",
                message_id,
                clientId=self.client_id,
                userId=principal.sub,
                protocol=PROTOCOL_VERSION,
            )
        )

    def _audit_context(self) -> AuditContext:
        principal = self.principal
        return AuditContext(
            actor=principal.sub if principal is not None else None,
            scopes=" ".join(sorted(principal.scopes)) if principal is not None else "",
            ip=self._client_ip,
        )

    def _arm_expiry(self, principal: Principal) -> None:
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
        loop = asyncio.get_running_loop()
        # Same instant verification would start refusing the token (exp + leeway).
        delay = max(0.0, self._ctx.tokens.valid_until(principal) - self._ctx.now())
        self._expiry_timer = loop.call_later(
            delay, self.close, CLOSE_TOKEN_EXPIRED, "Token expired"
        )

    def _refresh(self, message: ClientMessage) -> None:
        assert self.principal is not None
        if not message.token:
            self.send(frames.error("bad_request", "refresh needs a token", message.id))
            return
        try:
            principal = self._ctx.tokens.verify(message.token)
        except TokenExpired:
            self.send(frames.error("forbidden", "Token expired", message.id))
            return
        except InvalidToken as exc:
            self.send(frames.error("forbidden", exc.reason, message.id))
            return
        if principal.sub != self.principal.sub:
            self.send(frames.error("forbidden", "refresh token is for another user", message.id))
            return
        self.principal = principal
        self._arm_expiry(principal)
        expires = datetime.fromtimestamp(principal.expires_at, UTC)
        self.send(
            frames.control(
                "refreshed", message.id, expiresAt=expires.isoformat().replace("+00:00", "Z")
            )
        )

    # -- subscriptions -----------------------------------------------------------------------

    def _checked_topic(self, message: ClientMessage) -> Topic | None:
        if not message.topic:
            self.send(frames.error("bad_request", f"{message.action} needs a topic", message.id))
            return None
        assert self.principal is not None
        checked = check_topic(self.principal, message.topic)
        if isinstance(checked, TopicRefusal):
            self.send(frames.error(checked.code, checked.message, message.id))
            return None
        return checked

    def _checked_filter(self, topic: Topic, message: ClientMessage) -> EventFilter | bool:
        """The subscription's filter, True without one, False if refused (error sent). Asked
        after the topic check: a filter only narrows what the token may see."""
        try:
            return subscription_filter(message.filter, topic.name) or True
        except BadFilter as exc:
            self.send(frames.error("bad_filter", exc.message, message.id))
            return False

    def _unsubscribe(self, message: ClientMessage) -> None:
        if not message.topic:
            self.send(frames.error("bad_request", "unsubscribe needs a topic", message.id))
            return
        if message.consumer is not None:
            consumer_members.unsubscribe(self, self._ctx.consumers, message)
            return
        if self.topics.pop(message.topic, None) is not None:
            self._ctx.hub.drop(message.topic, self)
        elif self._summaries is not None:
            self._summaries.unsubscribe(message.topic)
        self.send(frames.control("unsubscribed", message.id, topic=message.topic))

    async def _subscribe(self, message: ClientMessage) -> None:
        summaries = self._summaries
        held = len(self.topics) + (len(summaries) if summaries is not None else 0)
        if message.topic and is_summary_name(message.topic):
            assert self.principal is not None
            if summaries is None:
                summaries = self._summaries = SessionSummaries(self._ctx.summaries, self)
            most = self._ctx.limits.max_subscriptions_per_connection
            await summaries.subscribe(self.principal, message, held, most)
            return
        topic = self._checked_topic(message)
        if topic is None:
            return
        checked_filter = self._checked_filter(topic, message)
        if checked_filter is False:
            return
        event_filter = checked_filter if isinstance(checked_filter, EventFilter) else None
        if message.consumer is not None:
            ctx, audit = self._ctx, self._audit_context()
            most = ctx.limits.max_subscriptions_per_connection
            await consumer_members.subscribe(
                self, ctx.consumers, ctx.store.epoch, message, topic, audit, most
            )
            return
        hub, store = self._ctx.hub, self._ctx.store
        if topic.name in self.topics:
            hub.drop(topic.name, self)  # subscribing again restarts it (e.g. to resume)
        elif held >= (most := self._ctx.limits.max_subscriptions_per_connection):
            # Each subscription costs the hub a set entry: one connection may not hold unbounded.
            self.send(
                frames.error(
                    "too_many_subscriptions",
                    f"a connection holds at most {most} subscriptions; unsubscribe first",
                    message.id,
                )
            )
            return
        self.topics[topic.name] = topic
        hub.begin(topic.name, self, event_filter)
        try:
            after, min_seq, said = await self._starting_point(topic, message, event_filter)
        except SnapshotUnavailable:
            self._forget(topic.name)
            self.send(
                frames.error(
                    "bad_request", "snapshots need a database; this instance has none", message.id
                )
            )
            return
        except BaseException:
            self._forget(topic.name)
            raise
        if self.closed:
            return
        self.send(
            frames.control(
                "subscribed", message.id, topic=topic.name, offset=after, epoch=store.epoch, **said
            )
        )
        hub.ready(topic.name, self, after, min_seq)

    def _forget(self, name: str) -> None:
        """Undo a subscription being made (its history could not be read)."""
        self.topics.pop(name, None)
        self._ctx.hub.drop(name, self)

    async def _starting_point(
        self, topic: Topic, message: ClientMessage, event_filter: EventFilter | None
    ) -> tuple[int, int, dict[str, object]]:
        """Where a new subscription starts: (the offset it is live after, the min_seq of that
        history read, what ``subscribed`` says besides), after sending the replay or snapshot
        it asked for. min_seq: every event history could have shown has seq <= min_seq."""
        hub, store = self._ctx.hub, self._ctx.store
        said: dict[str, object] = {}
        if event_filter is not None:
            said["filter"] = event_filter.source
        if message.since is not None:
            after, min_seq, said["recovered"] = await replay(
                store,
                topic,
                message.since,
                message.epoch,
                event_filter,
                send=self.send,
                drain=self.peer.drain,
                closed=lambda: self.closed,
                # Paced by bytes: a replay must never overflow the buffer it fills.
                budget=self._ctx.limits.send_buffer_bytes // 2,
            )
        elif message.snapshot and topic.kind is TopicKind.GAME:
            summary = await store.summary(topic.key)
            after = summary.offset
            _, min_seq = await store.topic_position(topic)
            data = self._ctx.summary_wire(summary)
            self.send(
                frames.control("snapshot", message.id, topic=topic.name, offset=after, data=data)
            )
        elif (known := hub.known_head(topic.name)) is not None:
            after, min_seq = known, hub.published_seq
        elif topic.kind is TopicKind.ALL_GAMES:
            after, min_seq = 0, hub.published_seq  # no offsets of its own: live from now
        else:
            after, min_seq = await store.topic_position(topic)
        return after, min_seq, said
