"""Summary streams (``summary.game.{id}``, ``summary.games.top``): state, conflated to each
reader's pace.

Subscribers are grouped by what they receive: (topic, ``intervalMs``) and, for the top list,
(``limit``, ``minCount``). A group computes its state at most once per interval, encodes it
once, and writes the same bytes to every member; nothing is kept or done per subscriber on
the event path.

The event path (:meth:`SummaryStreams.moved`, called by the delivery with every batch this
instance delivers) only marks: the watched game's version goes up (O(1) per event) and its
groups that sleep get a timer for ``max(now, last computation + interval)``. When the timer
fires, the group reads the state (from the summary cache, else the store: every instance
sees every event, and the store holds them before they are published), and writes a frame
if the state differs from the last one it sent. If the game moved again meanwhile, the
group's next timer is set at once: so the last change of a burst is always delivered (the
trailing edge), never more than one frame per interval. A read that came back older than an
event already delivered here (a summary whose offset is below the game's *floor*) counts as
no read: the group reads again on its next tick.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from ratewire.domain import GameSummary, RatingEvent, SummaryTopic

log = logging.getLogger("ratewire.summaries")

#: ``intervalMs`` when the subscriber gives none, the least it may ask, and the most.
DEFAULT_INTERVAL_MS = 1000
MIN_INTERVAL_MS = 50
MAX_INTERVAL_MS = 3_600_000
#: The top list's options, as ``GET /games/top`` takes them.
DEFAULT_TOP_LIMIT, MAX_TOP_LIMIT = 10, 500
DEFAULT_MIN_COUNT, MAX_MIN_COUNT = 1, 2**31 - 1

ReadSummary = Callable[[str], Awaitable[GameSummary]]
ReadTop = Callable[[int, int], Awaitable[list[GameSummary]]]
Wire = Callable[[GameSummary], dict[str, object]]


class Member(Protocol):
    """A subscriber: non-blocking sends of encoded frames (a realtime session)."""

    def send(self, frame: bytes) -> None:
        """Write one frame (a slow reader is cut by its own send buffer, never awaited)."""


class BadOption(ValueError):
    """A subscribe option out of range; the text names the field and the allowed range."""


@dataclass(frozen=True, slots=True)
class StreamKey:
    """What a group of subscribers shares: the topic and its options."""

    topic: SummaryTopic
    interval_ms: int = DEFAULT_INTERVAL_MS
    limit: int = DEFAULT_TOP_LIMIT
    min_count: int = DEFAULT_MIN_COUNT

    def options(self) -> dict[str, int]:
        """The options as the protocol names them (echoed in ``subscribed``)."""
        if self.topic.is_top:
            return {"intervalMs": self.interval_ms, "limit": self.limit, "minCount": self.min_count}
        return {"intervalMs": self.interval_ms}


def _within(name: str, value: int | None, default: int, least: int, most: int) -> int:
    if value is None:
        return default
    # bool is an int in Python, but true is no interval
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
        raise BadOption(f"{name} must be an integer from {least} to {most}; got {value!r}")
    return value


def stream_key(
    topic: SummaryTopic,
    interval_ms: int | None = None,
    limit: int | None = None,
    min_count: int | None = None,
) -> StreamKey:
    """The group a subscribe with these options joins, or :class:`BadOption` naming the field.
    ``limit`` and ``minCount`` belong to the top list only."""
    interval = _within(
        "intervalMs", interval_ms, DEFAULT_INTERVAL_MS, MIN_INTERVAL_MS, MAX_INTERVAL_MS
    )
    if not topic.is_top:
        for name, value in (("limit", limit), ("minCount", min_count)):
            if value is not None:
                raise BadOption(f"{name} applies to summary.games.top only, not {topic.name}")
        return StreamKey(topic, interval)
    return StreamKey(
        topic,
        interval,
        _within("limit", limit, DEFAULT_TOP_LIMIT, 1, MAX_TOP_LIMIT),
        _within("minCount", min_count, DEFAULT_MIN_COUNT, 1, MAX_MIN_COUNT),
    )


def summary_frame(topic: str, offset: int, data_json: bytes) -> bytes:
    """``{"type":"summary","topic":T,"offset":N,"data":...}``, encoded once per group."""
    return b'{"type":"summary","topic":%s,"offset":%d,"data":%s}' % (
        orjson.dumps(topic),
        offset,
        data_json,
    )


@dataclass(slots=True)
class _Watch:
    """What moves one game's groups (or the top list's): a version bumped per event."""

    version: int = 0
    #: The highest game offset delivered here (0 for the top list): a read below it is stale.
    floor: int = 0
    groups: set[_Group] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class SummaryState:
    """One computed state: the offset it includes, its data encoded, its whole frame."""

    offset: int
    data: bytes
    frame: bytes


class _Group:
    """The subscribers of one :class:`StreamKey`, their timer and the last state sent."""

    __slots__ = (
        "_fresh",
        "_last_read_at",
        "_read",
        "_task",
        "_timer",
        "_version_sent",
        "interval",
        "joining",
        "key",
        "members",
        "sent",
        "state",
        "watch",
    )

    def __init__(
        self,
        key: StreamKey,
        watch: _Watch,
        read: Callable[[StreamKey], Awaitable[SummaryState | None]],
    ) -> None:
        self.key = key
        self.interval = key.interval_ms / 1000
        self.watch = watch
        watch.groups.add(self)
        self._read = read
        self.members: set[Member] = set()
        #: Subscribes reading their first state (the group stays while any does).
        self.joining = 0
        #: ``summary`` frames sent to members after their first (for metrics).
        self.sent = 0
        #: The last state sent to the members (None until the first read).
        self.state: SummaryState | None = None
        #: The watch's version the last state was read at (or after).
        self._version_sent = -1
        self._last_read_at = float("-inf")
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        #: Members that joined with a newer state than ``state``: (member -> its data), so
        #: the next tick does not send them the same data twice. Emptied by every tick.
        self._fresh: dict[Member, bytes] = {}

    @property
    def current(self) -> bool:
        """Whether ``state`` is still the latest (no event since it was read)."""
        return self.state is not None and self._version_sent == self.watch.version

    def wake(self) -> None:
        """The watched state moved: read it at the next tick this group may take."""
        if self._timer is not None or self._task is not None or not self.members:
            return
        loop = asyncio.get_running_loop()
        when = max(loop.time(), self._last_read_at + self.interval)
        self._timer = loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._task = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        try:
            version = self.watch.version
            self._last_read_at = asyncio.get_running_loop().time()
            try:
                state = await self._read(self.key)
            except Exception as exc:  # the store is away: keep the change, try next tick
                log.warning("summary stream %s could not be read: %s", self.key.topic.name, exc)
                state = None
            if state is not None:
                self._version_sent = version
                self.publish(state)
        finally:
            self._task = None
        if self._version_sent != self.watch.version:
            self.wake()  # moved during the read (or the read failed): the trailing edge

    def join(self, member: Member, state: SummaryState, version: int) -> None:
        """``member`` is sent ``state`` (read at ``version``); it gets every change after it.
        The first state of a new group is the group's."""
        if self.state is None:
            self.state, self._version_sent = state, version
            self._last_read_at = asyncio.get_running_loop().time()
        elif state.data != self.state.data:
            self._fresh[member] = state.data
        self.members.add(member)
        if not self.current:
            self.wake()  # moved while the joiner read

    def publish(self, state: SummaryState) -> None:
        """Send ``state`` to every member, if it differs from the last one sent."""
        previous, self.state = self.state, state
        fresh, self._fresh = self._fresh, {}
        if previous is not None and previous.data == state.data:
            return
        frame = state.frame
        for member in tuple(self.members):
            if fresh and fresh.get(member) == state.data:
                continue  # it joined with this very state
            try:
                member.send(frame)
                self.sent += 1
            except Exception:
                # One failing member must not stop the others (the hub does the same).
                log.exception("dropping a member of %s whose send failed", self.key.topic.name)
                self.members.discard(member)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
            self._task = None


class SummaryStreams:
    """Every summary stream of this instance (see the module's docstring)."""

    def __init__(
        self,
        read_summary: ReadSummary,
        read_top: ReadTop,
        wire: Wire,
        global_position: Callable[[], int],
    ) -> None:
        """``read_summary``/``read_top`` answer as ``GET /games/{id}/summary`` and
        ``GET /games/top`` do (through the summary cache where there is one); ``wire`` turns a
        summary into its JSON object; ``global_position`` is the ``seq`` of the last event
        delivered here (the offset a top list includes at least)."""
        self._read_summary = read_summary
        self._read_top = read_top
        self._wire = wire
        self._global_position = global_position
        self._games: dict[str, _Watch] = {}
        self._top: _Watch | None = None
        self._groups: dict[StreamKey, _Group] = {}
        #: Computations made (for tests and metrics: one per group per tick, not per member).
        self.reads = 0
        #: ``summary`` frames sent: first states, plus the updates of groups since dropped.
        self._sent_elsewhere = 0

    @property
    def groups(self) -> int:
        """Summary streams computed here (one per topic and options, however many read it)."""
        return len(self._groups)

    @property
    def members(self) -> int:
        """Subscriptions to summary streams here."""
        return sum(len(group.members) for group in self._groups.values())

    @property
    def frames_sent(self) -> int:
        """``summary`` frames sent since the start (O(groups): for /metrics)."""
        return self._sent_elsewhere + sum(group.sent for group in self._groups.values())

    # -- the event path --------------------------------------------------------------------

    def moved(self, events: Sequence[RatingEvent]) -> None:
        """These events were delivered here: mark what they move (O(1) per event)."""
        games, top = self._games, self._top
        if not games and top is None:
            return
        for event in events:
            watch = games.get(event.game_id)
            if watch is not None:
                watch.version += 1
                if event.game_offset > watch.floor:
                    watch.floor = event.game_offset
                for group in watch.groups:
                    group.wake()
        if top is not None:
            top.version += 1
            for group in top.groups:
                group.wake()

    # -- subscribers ---------------------------------------------------------------------

    async def join(self, key: StreamKey, member: Member) -> SummaryState:
        """Add ``member`` to ``key``'s group; the state to send it first, now (the group's
        current state, or a fresh read if the state moved since). The caller sends it and
        then nothing else of this group comes before it. Raises what the read raises."""
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(key, self._watch(key.topic), self._compute)
        version = group.watch.version
        if group.current:
            assert group.state is not None
            state = group.state
        else:
            group.joining += 1
            try:
                read = await self._compute(key)
                if read is None:  # older than what was delivered here: read once more
                    read = await self._compute(key, stale_ok=True)
            except BaseException:
                group.joining -= 1
                self._drop_if_empty(group)
                raise
            group.joining -= 1
            assert read is not None  # stale_ok: always a state
            state = read
        group.join(member, state, version)
        self._sent_elsewhere += 1  # the caller sends it
        return state

    def leave(self, key: StreamKey, member: Member) -> None:
        """Stop sending ``key``'s frames to ``member`` (unsubscribe, close)."""
        group = self._groups.get(key)
        if group is not None:
            group.members.discard(member)
            self._drop_if_empty(group)

    def _drop_if_empty(self, group: _Group) -> None:
        if group.members or group.joining or self._groups.get(group.key) is not group:
            return
        group.stop()
        del self._groups[group.key]
        self._sent_elsewhere += group.sent
        watch = group.watch
        watch.groups.discard(group)
        if watch.groups:
            return
        if group.key.topic.is_top:
            self._top = None
        else:
            self._games.pop(group.key.topic.game_id, None)

    def _watch(self, topic: SummaryTopic) -> _Watch:
        if topic.is_top:
            if self._top is None:
                self._top = _Watch()
            watch = self._top
        else:
            watch = self._games.setdefault(topic.game_id, _Watch())
        return watch

    # -- reads -------------------------------------------------------------------------------

    async def _compute(self, key: StreamKey, *, stale_ok: bool = False) -> SummaryState | None:
        """The state of ``key`` now, encoded; None if the read is older than an event already
        delivered here (the caller reads again later)."""
        self.reads += 1
        topic = key.topic
        if topic.is_top:
            offset = self._global_position()  # read before: the list includes at least it
            games = await self._read_top(key.limit, key.min_count)
            data = orjson.dumps({"items": [self._wire(game) for game in games]})
        else:
            summary = await self._read_summary(topic.game_id)
            watch = self._games.get(topic.game_id)
            if not stale_ok and watch is not None and summary.offset < watch.floor:
                return None
            offset = summary.offset
            data = orjson.dumps(self._wire(summary))
        return SummaryState(offset, data, summary_frame(topic.name, offset, data))
