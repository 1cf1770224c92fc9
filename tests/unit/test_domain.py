"""Pure domain rules: identifiers, timestamps, ids, summaries, partial updates, topics."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ratewire.domain import (
    GameSummary,
    Rating,
    RatingChanges,
    RatingDraft,
    SummaryDelta,
    TopicKind,
    format_timestamp,
    new_rating_id,
    parse_topic,
    validate_identifier,
)


@pytest.mark.parametrize(
    ("given", "expected"), [(42, "42"), ("abc_D-9", "abc_D-9"), ("x" * 64, "x" * 64)]
)
def test_identifiers_accepted(given: object, expected: str) -> None:
    assert validate_identifier(given, "gameId") == expected


@pytest.mark.parametrize("given", ["", "a b", "a/b", "x" * 65, True, 4.2, None, ["1"]])
def test_identifiers_refused_naming_the_field(given: object) -> None:
    with pytest.raises(ValueError, match="gameId"):
        validate_identifier(given, "gameId")


def test_timestamps_are_utc_milliseconds_with_z() -> None:
    moment = datetime(2026, 11, 23, 12, 0, 0, 123456, tzinfo=UTC)
    assert format_timestamp(moment) == "2026-11-23T12:00:00.123Z"


def test_rating_ids_sort_by_creation() -> None:
    ids = [new_rating_id() for _ in range(2000)]
    assert ids == sorted(ids) and len(set(ids)) == 2000
    assert all(i.startswith("r_") and len(i) == 28 for i in ids)


def test_summary_math() -> None:
    summary = GameSummary("g", 4, 14, (0, 1, 1, 0, 2))
    assert summary.mean == 3.5
    assert summary.bayesian_mean(3.0, 10) == pytest.approx((30 + 14) / 14)
    assert GameSummary.empty("g").mean is None
    assert GameSummary.empty("g").bayesian_mean(3.0, 0) is None
    wire = summary.to_wire(3.0, 10)
    assert wire["histogram"] == {"1": 0, "2": 1, "3": 1, "4": 0, "5": 2}


def test_summary_deltas() -> None:
    moved = SummaryDelta.between(2, 5)
    assert (moved.count, moved.total, moved.histogram) == (0, 3, (0, -1, 0, 0, 1))
    added = SummaryDelta.between(None, 4).applied_to(GameSummary.empty("g"), 1)
    assert (added.count, added.total, added.histogram, added.offset) == (1, 4, (0, 0, 0, 1, 0), 1)
    removed = SummaryDelta.between(4, None).applied_to(added, 2)
    assert (removed.count, removed.total, removed.histogram) == (0, 0, (0, 0, 0, 0, 0))


def test_partial_changes() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    rating = Rating.new(RatingDraft("g", "u", 3, "ok"), now)
    assert RatingChanges(score=3).apply(rating, now) is None
    assert RatingChanges(comment="ok").apply(rating, now) is None
    changed = RatingChanges(score=4).apply(rating, now)
    assert changed is not None and changed.comment == "ok" and changed.version == 2
    cleared = RatingChanges(clear_comment=True).apply(rating, now)
    assert cleared is not None and cleared.comment is None


@pytest.mark.parametrize(
    ("name", "kind", "key"),
    [
        ("rating.global", TopicKind.GLOBAL, ""),
        ("rating.game.42", TopicKind.GAME, "42"),
        ("rating.game.*", TopicKind.ALL_GAMES, ""),
        ("rating.user.7", TopicKind.USER, "7"),
    ],
)
def test_topics(name: str, kind: TopicKind, key: str) -> None:
    topic = parse_topic(name)
    assert topic is not None and (topic.kind, topic.key, topic.name) == (kind, key, name)


@pytest.mark.parametrize(
    "name", ["rating", "rating.game.", "rating.game.a b", "rating.other.1", "x"]
)
def test_unknown_topics(name: str) -> None:
    assert parse_topic(name) is None
