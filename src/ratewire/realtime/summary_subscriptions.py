"""One connection's summary subscriptions (``summary.game.{id}``, ``summary.games.top``).

The session hands every subscribe to a ``summary.`` topic here; the state and its pacing live
in :class:`~ratewire.services.summary_streams.SummaryStreams`, shared by every connection of
the instance. Both WebSocket endpoints and SSE come through the session, so all three answer
the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from ratewire.domain import SummaryTopic, parse_summary_topic
from ratewire.realtime import frames
from ratewire.realtime.messages import ClientMessage
from ratewire.security.permissions import may_follow_summary
from ratewire.security.tokens import Principal
from ratewire.services.summary_streams import (
    BadOption,
    Member,
    StreamKey,
    SummaryStreams,
    stream_key,
)

SUMMARY_TOPICS_HINT = "summary topics are summary.game.{gameId} and summary.games.top"


@dataclass(frozen=True, slots=True)
class SummaryRefusal:
    """Why a subscribe to a summary topic is refused: the error code and its text."""

    code: str
    message: str


def check_summary(
    principal: Principal,
    name: str,
    interval_ms: int | None = None,
    limit: int | None = None,
    min_count: int | None = None,
) -> StreamKey | SummaryRefusal:
    """The stream ``principal`` asks for, or why not (every transport asks this)."""
    topic: SummaryTopic | None = parse_summary_topic(name)
    if topic is None:
        return SummaryRefusal("unknown_topic", f"no topic {name!r}; {SUMMARY_TOPICS_HINT}")
    if not may_follow_summary(principal, topic):
        return SummaryRefusal("forbidden", f"this token may not subscribe to {topic.name}")
    try:
        return stream_key(topic, interval_ms, limit, min_count)
    except BadOption as exc:
        return SummaryRefusal("bad_request", str(exc))


class SessionSummaries:
    """The summary streams one connection follows, by topic name."""

    __slots__ = ("_held", "_member", "_streams")

    def __init__(self, streams: SummaryStreams | None, member: Member) -> None:
        self._streams = streams
        self._member = member
        self._held: dict[str, StreamKey] = {}

    def __len__(self) -> int:
        return len(self._held)

    async def subscribe(
        self, principal: Principal, message: ClientMessage, held: int, most: int
    ) -> None:
        """Answer ``message`` (a subscribe to a summary topic): ``subscribed`` then, at once,
        the first ``summary`` frame; or an error frame. The connection holds ``held``
        subscriptions (of every kind), and may hold ``most``."""
        send, member = self._member.send, self._member
        assert message.topic is not None
        checked = check_summary(
            principal, message.topic, message.interval_ms, message.limit, message.min_count
        )
        if isinstance(checked, SummaryRefusal):
            send(frames.error(checked.code, checked.message, message.id))
            return
        if self._streams is None:
            send(
                frames.error(
                    "bad_request",
                    "summary streams need a database; this instance has none",
                    message.id,
                )
            )
            return
        name = checked.topic.name
        previous = self._held.pop(name, None)
        if previous is not None:
            self._streams.leave(previous, member)  # subscribing again restarts it
        elif held >= most:
            send(
                frames.error(
                    "too_many_subscriptions",
                    f"a connection holds at most {most} subscriptions; unsubscribe first",
                    message.id,
                )
            )
            return
        self._held[name] = checked
        try:
            state = await self._streams.join(checked, member)
        except BaseException:
            self._held.pop(name, None)
            raise
        if self._held.get(name) is not checked:  # closed or unsubscribed meanwhile
            self._streams.leave(checked, member)
            return
        send(
            frames.control(
                "subscribed", message.id, topic=name, offset=state.offset, **checked.options()
            )
        )
        send(state.frame)

    def unsubscribe(self, name: str) -> bool:
        """Leave ``name``'s stream; whether it was followed."""
        key = self._held.pop(name, None)
        if key is None:
            return False
        if self._streams is not None:
            self._streams.leave(key, self._member)
        return True

    def close(self) -> None:
        """The connection ended: leave every stream."""
        held, self._held = self._held, {}
        if self._streams is not None:
            for key in held.values():
                self._streams.leave(key, self._member)
