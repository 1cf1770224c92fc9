"""Who may subscribe to (or read the history of) which topic (docs/protocol.md)."""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from ratewire.domain import (
    GAME_WILDCARD,
    SummaryTopic,
    Topic,
    TopicKind,
    game_topic,
    parse_topic,
)
from ratewire.security.tokens import Principal


def may_subscribe(principal: Principal, topic: Topic) -> bool:
    """Global and game topics: any valid token; a user topic: that user, or ``ratings:admin``.

    A token with a ``topics`` claim is further limited to the names matching its patterns
    (``*`` matches anything, as in ``rating.game.*``).
    """
    if principal.topics is not None and not any(
        fnmatchcase(topic.name, pattern) for pattern in principal.topics
    ):
        return False
    if topic.kind is TopicKind.USER:
        return topic.key == principal.sub or principal.is_admin
    return True


def may_follow_summary(principal: Principal, topic: SummaryTopic) -> bool:
    """Summary topics: any valid token (the same numbers are public over REST).

    A token with a ``topics`` claim needs a pattern matching the summary topic's name or the
    events it is made of: ``rating.game.{id}`` for a game's summary, ``rating.game.*`` for
    the top list. A claim that lets a token follow a game's ratings lets it follow their
    summary; a claim never widens to summaries of games it does not name."""
    if principal.topics is None:
        return True
    source = GAME_WILDCARD if topic.is_top else game_topic(topic.game_id)
    return any(
        fnmatchcase(topic.name, pattern) or fnmatchcase(source, pattern)
        for pattern in principal.topics
    )


@dataclass(frozen=True, slots=True)
class TopicRefusal:
    """Why a token may not follow a topic: ``unknown_topic`` or ``forbidden``, and the text."""

    code: str
    message: str


def check_topic(principal: Principal, name: str) -> Topic | TopicRefusal:
    """The topic ``name`` if ``principal`` may follow it (every transport asks this)."""
    topic = parse_topic(name)
    if topic is None:
        return TopicRefusal(
            "unknown_topic",
            f"no topic {name!r}; topics are rating.global, rating.game.{{gameId}}, "
            "rating.game.*, rating.user.{userId}, summary.game.{gameId} and summary.games.top",
        )
    if not may_subscribe(principal, topic):
        return TopicRefusal("forbidden", f"this token may not subscribe to {topic.name}")
    return topic
