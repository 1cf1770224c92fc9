"""Pure domain code (no I/O): ratings, their events, topics, summaries and epoch ms."""

from ratewire.domain.rating import (
    COMMENT_MAX_CHARS,
    EventKind,
    Rating,
    RatingChanges,
    RatingDraft,
    RatingEvent,
    format_timestamp,
    is_identifier,
    new_rating_id,
    utc_now,
    validate_identifier,
    validate_text,
)
from ratewire.domain.summary import GameSummary, SummaryDelta
from ratewire.domain.time import epoch_ms, from_epoch_ms
from ratewire.domain.topics import (
    GAME_WILDCARD,
    GLOBAL_TOPIC,
    Topic,
    TopicKind,
    event_offset,
    game_topic,
    parse_topic,
    user_topic,
)

__all__ = [
    "COMMENT_MAX_CHARS",
    "GAME_WILDCARD",
    "GLOBAL_TOPIC",
    "EventKind",
    "GameSummary",
    "Rating",
    "RatingChanges",
    "RatingDraft",
    "RatingEvent",
    "SummaryDelta",
    "Topic",
    "TopicKind",
    "epoch_ms",
    "event_offset",
    "format_timestamp",
    "from_epoch_ms",
    "game_topic",
    "is_identifier",
    "new_rating_id",
    "parse_topic",
    "user_topic",
    "utc_now",
    "validate_identifier",
    "validate_text",
]
