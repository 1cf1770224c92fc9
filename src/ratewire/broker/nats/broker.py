"""The cluster broker on NATS JetStream: committed events travel through one stream per
epoch to every instance (names in :mod:`ratewire.broker.nats.link`).

Exactly once comes from JetStream's conditional publish, not from the lease. Each event is
one message with ``Nats-Msg-Id`` its ``seq`` and ``Nats-Expected-Last-Msg-Id`` the ``seq``
before it: the stream takes event ``n`` only right after event ``n - 1``, so nothing is
published twice, nothing out of order, and a batch that would leave a gap is refused (the
caller reads the store and comes back). A batch is pipelined: its messages go out together
and each is judged on arrival, in order. The server forgets the last message id when it
restarts after the duplicate window; a refused batch is therefore checked against the
stream's real last event and, where that is the event before the batch, published again
anchored on the stream's sequence instead (``Nats-Expected-Last-Sequence``).

The lease (a key-value entry that expires unless renewed) keeps the store polling to one
instance, and decides who seeds a stream NATS lost: only the holder may publish into an
empty stream, and only a batch complete from the store's beginning (``after`` 0), so a
stream rebuilt after JetStream lost its data is never missing an event committed meanwhile.

Every instance follows the stream with an ephemeral push consumer of its own, from the
``seq`` after the last one it handed to the hub; a consumer that stops hearing from the
server (heartbeats) or skips a delivery is replaced from the same place.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections.abc import Sequence
from typing import Any, ClassVar

import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import api
from nats.js.errors import (
    APIError,
    BadRequestError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoStreamResponseError,
)
from nats.js.kv import KeyValue

from ratewire.broker.base import BrokerUnavailable
from ratewire.broker.cluster_base import FollowingBroker
from ratewire.broker.event_codec import decode_event, encode_event
from ratewire.broker.nats import link as nats_link
from ratewire.broker.nats.reads import StreamMissing, StreamReader
from ratewire.config import BrokerSettings
from ratewire.domain import RatingEvent, Topic

log = logging.getLogger("ratewire.broker")

#: How long a published batch may wait for the stream's acknowledgements.
PUBLISH_TIMEOUT_SECONDS = 5.0
#: The consumer's heartbeat: a consumer silent for three is replaced.
HEARTBEAT_SECONDS = 1.0
#: JetStream's error code for a stream name in use with another configuration.
STREAM_CONFIG_DIFFERS = 10058
EPOCH_KEY = "epoch"
LEASE_KEY = "relay"


def _write_now(client: NatsClient) -> None:
    """Hand what nats-py has queued to the socket now. nats-py writes from a flusher task
    that runs one event-loop turn later, after whatever is ready first: on an instance that
    is fanning out the previous event (about 10 ms for 1,000 sockets), the publish waited
    behind it, where Redis's client writes in the caller's step (bench.fanout 1,000 x 50/s,
    pg-nats against pg-redis: p50 1.14x and p99 1.50x before this, 0.95x and 1.34x after,
    five alternating rounds each). The flusher finds nothing left and carries on; without
    these internals (another nats-py) it does the writing as before."""
    pending = getattr(client, "_pending", None)
    transport = getattr(client, "_transport", None)
    if pending and transport is not None and client.is_connected:
        transport.writelines(pending[:])
        client._pending = []
        client._pending_data_size = 0


class NatsBroker(FollowingBroker):
    """NATS JetStream broker: publish (any instance), follow (every instance), relay lease."""

    backend_name = "NATS"
    unreachable: ClassVar[tuple[type[BaseException], ...]] = (*nats_link.UNREACHABLE, StreamMissing)

    def __init__(self, settings: BrokerSettings) -> None:
        super().__init__(settings.lease_seconds)
        self._settings = settings
        self._names = nats_link.NatsNames(settings.prefix)
        self._owner = secrets.token_hex(8).encode()
        self._nc: NatsClient | None = None
        self._reader: StreamReader | None = None
        self._lease: KeyValue | None = None
        self._cluster: KeyValue | None = None
        self._announces_epoch = False
        self._lease_revision = 0
        # Acknowledgements of pipelined publishes, by reply subject (see _append).
        self._reply_prefix = ""
        self._acks: dict[str, asyncio.Future[bytes]] = {}
        self._tokens = itertools.count()
        # The follower: the consumer generation messages belong to, and its last delivery.
        self._generation = 0
        self._delivered = 0
        self._heard_at = 0.0
        self._replace_consumer = asyncio.Event()
        self.epoch = ""
        #: How many events the last ``publish`` call appended (see the Broker protocol).
        self.appended = 0

    def client(self) -> NatsClient:
        """The broker's connection (after :meth:`connect`), for what shares it."""
        assert self._nc is not None, "connect() first"
        return self._nc

    @property
    def _stream(self) -> str:
        return self._names.stream(self.epoch)

    @property
    def _read(self) -> StreamReader:
        assert self._reader is not None, "connect() first"
        return self._reader

    # -- lifecycle -------------------------------------------------------------------------

    async def connect(self, epoch: str | None) -> None:
        """Reach NATS and settle the epoch: the store's when this instance has one (it is
        announced for the others, and its stream made ready), else the announced one."""
        with self.translated():
            self._nc = await nats_link.connect(
                self._settings, "broker", on_reconnect=self._on_reconnect
            )
            self._reply_prefix = self._nc.new_inbox() + "."
            await self._nc.subscribe(self._reply_prefix + "*", cb=self._on_ack)
            if epoch is not None:
                self.epoch = epoch
                self._announces_epoch = True
                await self._ensure_stream()
                await self._ensure_buckets()
        if epoch is None:
            self.epoch = await self._wait_for_epoch()
        self._reader = StreamReader(self._nc, self._names, self.epoch)

    async def _announced_epoch(self) -> str | None:
        if self._cluster is None:  # looked up once, not on every poll
            self._cluster = await self._bucket(self._names.cluster_bucket, ttl=None)
        try:
            entry = await self._cluster.get(EPOCH_KEY)
        except KeyNotFoundError:
            return None
        return entry.value.decode() if entry.value else None

    async def _ensure_buckets(self) -> None:
        """The lease bucket, and the announced epoch if this instance has a database (again
        after NATS lost them: a wiped JetStream keeps nothing)."""
        self._lease = await self._bucket(self._names.lease_bucket, ttl=self._lease_seconds)
        if self._announces_epoch:
            cluster = await self._bucket(self._names.cluster_bucket, ttl=None)
            await cluster.put(EPOCH_KEY, self.epoch.encode())

    async def _on_reconnect(self) -> None:
        # A restarted server has forgotten the ephemeral consumer: make a new one now rather
        # than after three missed heartbeats.
        self._replace_consumer.set()

    async def _bucket(self, name: str, *, ttl: float | None) -> KeyValue:
        return await nats_link.bucket(
            self.client(),
            name,
            replicas=self._settings.replicas,
            ttl=ttl,
            api_timeout=PUBLISH_TIMEOUT_SECONDS,
        )

    def _stream_config(self) -> api.StreamConfig:
        return api.StreamConfig(
            name=self._stream,
            subjects=[self._names.events(self.epoch)],
            retention=api.RetentionPolicy.LIMITS,
            max_msgs=self._settings.max_events,
            discard=api.DiscardPolicy.OLD,
            storage=api.StorageType(self._settings.stream_storage),
            num_replicas=self._settings.replicas,
            allow_direct=True,
            duplicate_window=120.0,
        )

    async def _ensure_stream(self) -> None:
        """Create the epoch's stream, or bring its limits to the configured ones."""
        js = self.client().jetstream(timeout=PUBLISH_TIMEOUT_SECONDS)
        config = self._stream_config()
        try:
            await js.add_stream(config)
        except BadRequestError as exc:
            if exc.err_code != STREAM_CONFIG_DIFFERS:
                raise
            try:
                await js.update_stream(config)
            except APIError as refused:  # e.g. its storage type, fixed at creation
                log.warning(
                    "the NATS stream %s keeps its configuration (%s); delete it to apply the "
                    "settings (ratewire rebuilds it from the database)",
                    self._stream,
                    refused.description,
                )

    async def _release_lease(self) -> None:
        if self._lease is not None:
            await self._lease.delete(LEASE_KEY, last=self._lease_revision)

    async def _disconnect(self) -> None:
        if self._nc is not None:
            with contextlib.suppress(NatsError, OSError):
                await self._nc.close()

    async def ping(self) -> None:
        client = self.client()
        if not client.is_connected:
            raise BrokerUnavailable("NATS: not connected (reconnecting)")
        with self.translated():
            await client.flush(timeout=2)

    # -- publishing ------------------------------------------------------------------------

    async def cursor(self) -> int | None:
        """The ``seq`` of the last event published, or None if the stream holds none (new,
        or NATS lost it)."""
        try:
            if not (await self._read.require_stream()).state.messages:
                return None
            last = await self._read.last()
        except StreamMissing:
            return None
        except self.unreachable as exc:
            raise self.unavailable(exc) from exc
        return None if last is None else last.event.seq

    async def publish(self, events: Sequence[RatingEvent], after: int) -> int | None:
        """Append ``events`` (every event the store has with ``seq`` in ``(after, last]``).

        Returns the stream's cursor afterwards. It is below the batch's last ``seq`` when the
        batch did not reach back to the cursor (read the store after the cursor and retry), and
        None when the stream is empty (new, or NATS lost it) and this call may not seed it:
        only the lease holder may, with ``after`` 0."""
        self.appended = 0
        if not events:
            return after
        if not self.client().is_connected:
            # nats-py would buffer the messages until it reconnects; the outbox holds them.
            raise BrokerUnavailable("NATS: not connected (reconnecting)")
        with self.translated():
            return await self._publish(events, after)

    async def _publish(self, events: Sequence[RatingEvent], after: int) -> int | None:
        appended, complete = await self._append(events, None)
        self.appended += appended
        if complete:
            return events[-1].seq
        for _ in range(3):  # each round either finishes or learns the stream's real state
            try:
                state = (await self._read.require_stream()).state
            except StreamMissing:
                if not (self._leader and after == 0):
                    return None
                await self._ensure_stream()
                state = (await self._read.require_stream()).state
            last = await self._read.last() if state.messages else None
            if last is None:
                if not (self._leader and after == 0):
                    return None
                log.info(
                    "the NATS stream %s is empty: publishing the store's events from seq %d",
                    self._stream,
                    events[0].seq,
                )
                anchor = int(state.last_seq)
                pending = list(events)
            else:
                cursor = last.event.seq
                if cursor >= events[-1].seq or cursor < after:
                    return cursor  # all there, or a gap before the batch (read the store)
                # The stream's last event is inside the batch: what follows it was refused
                # only because the server no longer knew the last message id.
                anchor = last.stream_seq
                pending = [event for event in events if event.seq > cursor]
            appended, complete = await self._append(pending, anchor)
            self.appended += appended
            if complete:
                return events[-1].seq
        return await self.cursor()

    async def _append(self, events: Sequence[RatingEvent], anchor: int | None) -> tuple[int, bool]:
        """Publish ``events`` (consecutive ``seq``) in one pipelined burst; the first is
        conditional on the stream's last message id (``anchor`` None) or last sequence.

        Returns (how many the stream appended, whether every one is in the stream now)."""
        client = self.client()
        loop = asyncio.get_running_loop()
        waiting: list[tuple[str, asyncio.Future[bytes]]] = []
        try:
            for index, event in enumerate(events):
                headers = {"Nats-Msg-Id": str(event.seq)}
                if index == 0 and anchor is not None:
                    headers["Nats-Expected-Last-Sequence"] = str(anchor)
                else:
                    headers["Nats-Expected-Last-Msg-Id"] = str(event.seq - 1)
                reply = f"{self._reply_prefix}{next(self._tokens)}"
                future: asyncio.Future[bytes] = loop.create_future()
                self._acks[reply] = future
                waiting.append((reply, future))
                subject = self._names.event_subject(self.epoch, event.game_id, event.user_id)
                await client.publish(subject, encode_event(event), reply=reply, headers=headers)
            _write_now(client)
            async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
                replies = [await future for _, future in waiting]
        finally:
            for reply, _ in waiting:
                self._acks.pop(reply, None)
        appended, complete = 0, True
        for payload in replies:
            answer: dict[str, Any] = orjson.loads(payload) if payload else {}
            if "error" in answer or "seq" not in answer:
                complete = False
            elif not answer.get("duplicate"):
                appended += 1
        return appended, complete

    async def _on_ack(self, msg: Msg) -> None:
        future = self._acks.get(msg.subject)
        if future is not None and not future.done():
            # No responders (no stream for the subject) arrives as an empty status message.
            future.set_result(msg.data)

    async def _take_lease(self) -> bool:
        assert self._lease is not None
        try:
            self._lease_revision = await self._lease.create(LEASE_KEY, self._owner)
        except KeyWrongLastSequenceError:
            return False  # held by another instance
        return True

    async def _renew_lease(self) -> bool:
        assert self._lease is not None
        try:
            self._lease_revision = await self._lease.update(
                LEASE_KEY, self._owner, last=self._lease_revision
            )
        except KeyWrongLastSequenceError:
            return False  # it expired and another instance took it
        return True

    async def _lease_unreachable(self, exc: BaseException) -> None:
        if isinstance(exc, NoStreamResponseError):
            # NATS lost its buckets (a wiped store): make them again.
            with contextlib.suppress(*self.unreachable):
                await self._ensure_buckets()

    # -- history (instances without a database) --------------------------------------------

    async def topic_position(self, topic: Topic) -> tuple[int, int]:
        """(the topic's last offset, the last ``seq``) as the stream holds them."""
        try:
            return await self._read.topic_position(topic)
        except StreamMissing:
            return 0, 0
        except self.unreachable as exc:
            raise self.unavailable(exc) from exc

    async def topic_events(self, topic: Topic, since: int, limit: int) -> list[RatingEvent]:
        """The topic's events in the stream with offset above ``since``, in order."""
        try:
            return await self._read.topic_events(topic, since, limit)
        except StreamMissing:
            return []
        except self.unreachable as exc:
            raise self.unavailable(exc) from exc

    # -- following -------------------------------------------------------------------------

    async def _follow_step(self) -> None:
        await self._consume()

    async def _start_position(self) -> int:
        """The stream sequence to consume from: the message after the last event handed to
        the hub (events and stream sequences differ by a constant in one stream)."""
        state = (await self._read.require_stream()).state
        last = await self._read.last() if state.messages else None
        if last is None:
            return int(state.last_seq) + 1
        wanted = last.stream_seq + (self.consumed + 1 - last.event.seq)
        return min(max(wanted, int(state.first_seq), 1), last.stream_seq + 1)

    async def _consume(self) -> None:
        """One consumer's life: until it goes silent, skips a delivery, or fails."""
        client = self.client()
        js = client.jetstream(timeout=PUBLISH_TIMEOUT_SECONDS)
        start = await self._start_position()
        self._generation += 1
        generation = self._generation
        self._delivered = 0
        self._replace_consumer.clear()
        loop = asyncio.get_running_loop()
        self._heard_at = loop.time()
        inbox = client.new_inbox()

        async def on_message(msg: Msg) -> None:
            if generation == self._generation:
                await self._on_message(msg)

        subscription = await client.subscribe(inbox, cb=on_message)
        try:
            await js.add_consumer(
                self._stream,
                api.ConsumerConfig(
                    # Named after the prefix and this instance, so an operator listing the
                    # stream's consumers sees whose each one is.
                    name=f"{self._settings.prefix}_{self._owner.decode()}_{generation}",
                    deliver_subject=inbox,
                    deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                    opt_start_seq=start,
                    ack_policy=api.AckPolicy.NONE,
                    filter_subject=self._names.events(self.epoch),
                    flow_control=True,
                    idle_heartbeat=HEARTBEAT_SECONDS,
                    inactive_threshold=10 * HEARTBEAT_SECONDS,
                    mem_storage=True,
                    num_replicas=1,
                ),
            )
            self._following()
            while not self._replace_consumer.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(HEARTBEAT_SECONDS):
                        await self._replace_consumer.wait()
                if loop.time() - self._heard_at > 3 * HEARTBEAT_SECONDS:
                    raise TimeoutError("no heartbeat from the NATS consumer")
        finally:
            self._generation += 1  # whatever the old subscription still holds is dropped
            with contextlib.suppress(NatsError, OSError):
                await subscription.unsubscribe()

    async def _on_message(self, msg: Msg) -> None:
        self._heard_at = asyncio.get_running_loop().time()
        headers = msg.headers
        if headers and "Status" in headers:
            # Heartbeat or flow control: answer the server, and check nothing was skipped.
            if msg.reply:
                await self.client().publish(msg.reply)
            stalled = headers.get("Nats-Consumer-Stalled")
            if stalled:
                await self.client().publish(stalled)
            last = headers.get("Nats-Last-Consumer")
            if last is not None and int(last) != self._delivered:
                self._replace_consumer.set()
            return
        delivered = msg.metadata.sequence.consumer
        if delivered != self._delivered + 1:
            self._replace_consumer.set()  # a delivery was lost on the way: start again
            return
        self._delivered = delivered
        await self._delivery.deliver(decode_event(msg.data))
