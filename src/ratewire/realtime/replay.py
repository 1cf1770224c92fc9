"""A subscribe's ``since`` replay: every event of a topic after an offset, from the store's
history, paced so that it never overflows the send buffer it fills (docs/protocol.md,
Offsets and resume)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson

from ratewire.domain import Topic, event_offset
from ratewire.domain.filters import EventFilter, FilterInput
from ratewire.realtime import frames
from ratewire.realtime.history import HistoryBehind, HistorySource, StreamHistory

#: Events read from the store at a time.
REPLAY_PAGE = 256


async def replay(
    store: HistorySource,
    topic: Topic,
    since: int,
    epoch: str | None,
    event_filter: EventFilter | None,
    *,
    send: Callable[[bytes], None],
    drain: Callable[[], Awaitable[None]],
    closed: Callable[[], bool],
    budget: int,
) -> tuple[int, int, bool]:
    """Send every event of ``topic`` after ``since`` if history still reaches it (with a
    filter, those it passes); wait for ``drain`` after each ``budget`` bytes sent, and stop if
    the connection ``closed``.

    Returns (the last offset sent or the head, its min_seq, whether the replay was
    complete)."""
    head, min_seq = await store.topic_position(topic)
    if since > head and isinstance(store, StreamHistory) and epoch == store.epoch:
        # Redis is behind what the client saw (its streams are being rebuilt after a
        # loss): answering "not recovered" from here would send the client backwards.
        raise HistoryBehind(f"{topic.name} is at {head} here, the client at {since}")
    if not topic.has_history or (epoch is not None and epoch != store.epoch) or since > head:
        return head, min_seq, False
    if since == head:
        return head, min_seq, True
    page = await store.topic_events(topic, since, REPLAY_PAGE)
    if not page or event_offset(page[0], topic) != since + 1:
        return head, min_seq, False  # history no longer reaches since: no partial replay
    last = since
    unsent = 0
    matching = FilterInput() if event_filter is not None else None
    while page:
        for event in page:
            last = event_offset(event, topic)
            # Offsets and seqs grow together: the last event replayed has the highest seq.
            min_seq = max(min_seq, event.seq)
            if event_filter is not None and matching is not None:
                matching.load(event.kind, event.data)
                matching.place(topic.name, last)
                if not event_filter.test(matching):
                    continue
            frame = frames.rating_update(topic.name, last, event.kind, orjson.dumps(event.data))
            send(frame)
            unsent += len(frame)
            if unsent >= budget:
                await drain()
                unsent = 0
                if closed():
                    return last, min_seq, False
        if closed() or len(page) < REPLAY_PAGE:
            break
        page = await store.topic_events(topic, last, REPLAY_PAGE)
    return last, min_seq, True
