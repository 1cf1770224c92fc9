"""Topic names, parsing and the default subscribe permissions (docs/protocol.md)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ratewire.domain.rating import RatingEvent, is_identifier

GLOBAL_TOPIC = "rating.global"
GAME_PREFIX = "rating.game."
USER_PREFIX = "rating.user."
GAME_WILDCARD = "rating.game.*"
SUMMARY_GAME_PREFIX = "summary.game."
SUMMARY_TOP_TOPIC = "summary.games.top"


class TopicKind(Enum):
    GLOBAL = "global"
    GAME = "game"
    USER = "user"
    ALL_GAMES = "all_games"


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed topic name. ``key`` is the game or user id (empty for global / all games)."""

    kind: TopicKind
    key: str = ""

    @property
    def name(self) -> str:
        if self.kind is TopicKind.GLOBAL:
            return GLOBAL_TOPIC
        if self.kind is TopicKind.ALL_GAMES:
            return GAME_WILDCARD
        prefix = GAME_PREFIX if self.kind is TopicKind.GAME else USER_PREFIX
        return prefix + self.key

    @property
    def has_history(self) -> bool:
        """Whether the topic has its own offset sequence (the wildcard has none)."""
        return self.kind is not TopicKind.ALL_GAMES


def game_topic(game_id: str) -> str:
    return GAME_PREFIX + game_id


def user_topic(user_id: str) -> str:
    return USER_PREFIX + user_id


def parse_topic(name: str) -> Topic | None:
    """The topic named ``name``, or ``None`` if ratewire has no such topic."""
    if name == GLOBAL_TOPIC:
        return Topic(TopicKind.GLOBAL)
    if name == GAME_WILDCARD:
        return Topic(TopicKind.ALL_GAMES)
    for prefix, kind in ((GAME_PREFIX, TopicKind.GAME), (USER_PREFIX, TopicKind.USER)):
        if name.startswith(prefix):
            key = name[len(prefix) :]
            return Topic(kind, key) if is_identifier(key) else None
    return None


@dataclass(frozen=True, slots=True)
class SummaryTopic:
    """A summary stream: one game's summary (``game_id`` set) or the top list (empty).

    Kept apart from :class:`Topic`: summary topics carry state, not events, so they have no
    offsets, history, webhooks or REST events of their own, and nothing that takes a
    ``Topic`` can be handed one by mistake."""

    game_id: str = ""

    @property
    def name(self) -> str:
        return SUMMARY_GAME_PREFIX + self.game_id if self.game_id else SUMMARY_TOP_TOPIC

    @property
    def is_top(self) -> bool:
        return not self.game_id


def is_summary_name(name: str) -> bool:
    """Whether ``name`` is in the summary namespace (valid or not): ``summary.``..."""
    return name.startswith("summary.")


def parse_summary_topic(name: str) -> SummaryTopic | None:
    """The summary topic named ``name``, or ``None`` if there is no such summary topic."""
    if name == SUMMARY_TOP_TOPIC:
        return SummaryTopic()
    if name.startswith(SUMMARY_GAME_PREFIX):
        key = name[len(SUMMARY_GAME_PREFIX) :]
        return SummaryTopic(key) if is_identifier(key) else None
    return None


def event_offset(event: RatingEvent, topic: Topic) -> int:
    """The event's offset on ``topic`` (one of the three it was published on)."""
    if topic.kind is TopicKind.GLOBAL:
        return event.seq
    if topic.kind is TopicKind.USER:
        return event.user_offset
    return event.game_offset
