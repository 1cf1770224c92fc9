"""Server-side filters (domain.filters): what compiles, what is refused and why, what matches."""

from __future__ import annotations

from typing import Any

import pytest

from ratewire.domain.filters import MAX_FILTER_CHARS, BadFilter, FilterInput, compile_filter

RATING: dict[str, Any] = {
    "id": "r_1",
    "gameId": "42",
    "userId": "7",
    "score": 1,
    "comment": "wants a refund",
    "version": 3,
}


def passes(expression: str, event: str = "created", **data: Any) -> bool:
    return compile_filter(expression).matches(event, "rating.global", 10, {**RATING, **data})


def test_fields_of_the_frame_are_readable() -> None:
    assert passes("data.score <= 2")
    assert not passes("data.score <= 2", score=4)
    assert passes('event == "created" && topic == "rating.global" && offset == 10')
    assert passes('data.gameId in ["1", "42"] && data.userId == "7" && data.version > 2')
    assert passes('data.comment.contains("refund")')
    assert passes('data.gameId.startsWith("4") && data.comment.endsWith("refund")')


def test_a_null_comment_is_null_and_an_error_is_no_match() -> None:
    assert passes("data.comment == null", comment=None)
    # contains() on null is an evaluation error at delivery: the filter fails closed.
    assert not passes('data.comment.contains("refund")', comment=None)
    assert passes('data.comment == null || data.comment.contains("x")', comment=None)


def test_source_is_kept_and_one_expression_compiles_once() -> None:
    first = compile_filter("data.score == 5")
    assert first.source == "data.score == 5"
    assert compile_filter("data.score == 5") is first


@pytest.mark.parametrize(
    ("expression", "says"),
    [
        ("data.score >", "syntax error"),
        ("data.stars == 1", "unknown field data.stars"),
        ("has(data.stars)", "unknown field data.stars"),
        ("user == 1", "unknown field user"),
        ('data["stars"] == 1', "unknown field stars"),
        ('data.score > "3"', "wrong type"),
        ('event == "deleted" && data.version > "1"', "wrong type"),
        ("data.score", "must give a bool"),
        ("shout(data.comment)", "unknown field or function"),
        ("x" * (MAX_FILTER_CHARS + 1), "too long"),
        ("[1, 2, 3].all(x, [1, 2, 3].exists(y, x == y))", "too costly"),
        # The library compiles a regex per evaluation: this one took 0.8 s an event.
        ('data.comment.matches("\\\\w{200}")', "matches() is not available"),
        (f"[{', '.join(map(str, range(40)))}].exists(x, x == data.version)", "too costly"),
        # A comment between a name and its parenthesis hides nothing.
        ('data.comment.matches // regex\n ("a")', "matches() is not available"),
        ("[1]. // c\n all(x, [2]. // d\n exists(y, x == y))", "too costly"),
        # Quotes inside comments and raw strings are lexed as CEL lexes them.
        ("true // it's\n && data.comment.matches('a') // '", "matches() is not available"),
        ('r"\\" + "" == "" && data.comment.matches("a") && "" == ""', "matches() is not"),
        ("", "non-empty"),
    ],
)
def test_bad_expressions_are_refused_naming_what_is_wrong(expression: str, says: str) -> None:
    with pytest.raises(BadFilter) as refused:
        compile_filter(expression)
    assert says in refused.value.message


def test_quoted_text_is_not_code() -> None:
    assert passes('data.comment != "data.stars.all(x, x).exists(y, y)"')
    assert passes("[1, 2].exists(x, x == data.score)")


def test_the_longest_expression_allowed_compiles() -> None:
    expression = "data.score == 1" + " || data.score == 1" * 50
    expression += " " * (MAX_FILTER_CHARS - len(expression))
    assert len(expression) == MAX_FILTER_CHARS
    assert passes(expression)


def test_one_input_serves_many_filters_and_topics() -> None:
    low, game = compile_filter("data.score <= 2"), compile_filter('topic == "rating.game.42"')
    frame = FilterInput()
    frame.load("updated", RATING)
    frame.place("rating.global", 5)
    assert low.test(frame) and not game.test(frame)
    frame.place("rating.game.42", 2)
    assert low.test(frame) and game.test(frame)


def test_a_webhook_filter_is_evaluated_per_topic_of_the_event() -> None:
    from datetime import UTC, datetime

    from ratewire.domain import RatingEvent
    from ratewire.domain.webhooks import matching

    event = RatingEvent(9, "created", "42", "7", 3, 2, dict(RATING), datetime.now(UTC))
    patterns = ("rating.global", "rating.game.*", "rating.user.7")
    assert matching(patterns, event) == [
        ("rating.global", 9),
        ("rating.game.42", 3),
        ("rating.user.7", 2),
    ]
    on_games = compile_filter('topic.startsWith("rating.game.") && offset == 3')
    assert matching(patterns, event, on_games) == [("rating.game.42", 3)]
    assert matching(patterns, event, compile_filter("data.score > 1")) == []
