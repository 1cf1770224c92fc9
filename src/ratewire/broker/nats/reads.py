"""Reading the NATS event stream without a consumer: JetStream's direct gets, answered by
any server holding the stream (``allow_direct``), one round trip each.

The stream numbers its messages itself; those sequences differ from the events' ``seq``
(a stream rebuilt from the database starts at 1 with whatever event the database still has
first), so every answer is read from the events inside the messages.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.aio.client import Client as NatsClient
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import api
from nats.js.errors import NotFoundError

from ratewire.broker.event_codec import decode_event
from ratewire.broker.nats.link import NatsNames
from ratewire.domain import RatingEvent, Topic, TopicKind
from ratewire.domain.topics import event_offset

#: A direct get is answered in microseconds by any server holding the stream; one that waits
#: longer is asking a stream that does not exist (see _get).
DIRECT_GET_TIMEOUT_SECONDS = 1.0
API_TIMEOUT_SECONDS = 5.0


class StreamMissing(Exception):
    """The stream does not exist (new cluster, or NATS lost it)."""

    def __str__(self) -> str:
        return f"no stream {self.args[0]} in NATS (yet)"


@dataclass(frozen=True)
class StoredEvent:
    """An event and where the stream holds it."""

    stream_seq: int
    event: RatingEvent


class StreamReader:
    """Direct gets on one epoch's stream."""

    def __init__(self, client: NatsClient, names: NatsNames, epoch: str) -> None:
        self._js = client.jetstream(timeout=API_TIMEOUT_SECONDS)
        self._direct = client.jetstream(timeout=DIRECT_GET_TIMEOUT_SECONDS)
        self._names = names
        self._stream = names.stream(epoch)
        self._all = names.events(epoch)
        self._epoch = epoch

    async def last(self, subject_filter: str | None = None) -> StoredEvent | None:
        """The last message matching ``subject_filter`` (default: any event), or None."""
        return await self._get(seq=None, subject=subject_filter or self._all, next=False)

    async def next(self, subject_filter: str, stream_seq: int) -> StoredEvent | None:
        """The first message matching ``subject_filter`` at or after ``stream_seq``."""
        return await self._get(seq=stream_seq, subject=subject_filter, next=True)

    async def _get(self, *, seq: int | None, subject: str, next: bool) -> StoredEvent | None:
        try:
            raw = await self._direct.get_msg(
                self._stream, seq=seq, subject=subject, direct=True, next=next
            )
        except NotFoundError:
            return None
        except NoRespondersError as exc:
            raise StreamMissing(self._stream) from exc
        except NatsTimeoutError:
            # nats-server 2.9 leaves a direct get on a missing stream unanswered.
            await self.require_stream()
            raise
        assert raw.seq is not None and raw.data is not None
        return StoredEvent(raw.seq, decode_event(raw.data))

    async def require_stream(self) -> api.StreamInfo:
        """The stream's state; :class:`StreamMissing` if there is no stream."""
        try:
            return await self._js.stream_info(self._stream)
        except NotFoundError as exc:
            raise StreamMissing(self._stream) from exc

    def topic_filter(self, topic: Topic) -> str:
        if topic.kind is TopicKind.GAME:
            return self._names.game_filter(self._epoch, topic.key)
        if topic.kind is TopicKind.USER:
            return self._names.user_filter(self._epoch, topic.key)
        return self._all

    async def topic_position(self, topic: Topic) -> tuple[int, int]:
        """(the topic's last offset, the last ``seq``), consistent with each other: the
        topic's last message is read after the stream's, and read again if it came later."""
        while True:
            last = await self.last()
            cursor = last.event.seq if last is not None else 0
            if topic.kind is TopicKind.GLOBAL or not topic.has_history:
                return (cursor if topic.kind is TopicKind.GLOBAL else 0), cursor
            mine = await self.last(self.topic_filter(topic))
            if mine is None:
                return 0, cursor
            if last is not None and mine.stream_seq <= last.stream_seq:
                return event_offset(mine.event, topic), cursor
            # The topic's event came after the cursor read: read both again.

    async def topic_events(self, topic: Topic, since: int, limit: int) -> list[RatingEvent]:
        """The topic's events in the stream with offset above ``since``, in order."""
        if not topic.has_history:
            return []
        subject_filter = self.topic_filter(topic)
        last = await self.last(subject_filter)
        if last is None or event_offset(last.event, topic) <= since:
            return []
        first = await self._first_after(topic, subject_filter, since, last.stream_seq)
        events = [first.event]
        position = first.stream_seq
        while len(events) < limit and position < last.stream_seq:
            found = await self.next(subject_filter, position + 1)
            if found is None:
                break
            events.append(found.event)
            position = found.stream_seq
        return events

    async def _first_after(
        self, topic: Topic, subject_filter: str, since: int, last_seq: int
    ) -> StoredEvent:
        """The topic's first message with offset above ``since``: a binary search over
        stream sequences (a topic's offsets grow with them), a direct get per step."""
        low, high = 1, last_seq
        found: StoredEvent | None = None
        while low <= high:
            middle = (low + high) // 2
            candidate = await self.next(subject_filter, middle)
            if candidate is None:  # trimmed meanwhile: nothing at or after ``middle``
                high = middle - 1
                continue
            if event_offset(candidate.event, topic) > since:
                found, high = candidate, middle - 1
            else:
                low = candidate.stream_seq + 1
        if found is None:
            raise StreamMissing(self._stream)  # the topic was trimmed away mid-read
        return found
