"""The chaos checker catches what it claims: fed recorded histories with a duplicate, a hole,
a reordering, a lost acknowledged write, a write made twice, a wrong summary and a broken
audit log, it reports each, under its rule; fed the clean history, nothing."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
from bench.chaos.checker import check
from bench.chaos.history import (
    Frame,
    Gap,
    History,
    HistoryEvent,
    Subscriber,
    Write,
)


def _clean() -> History:
    """Three ratings of g1 (one replaced, one deleted), as a run would have recorded them."""
    writes = [
        Write(1, "post", "g1", "u1", "n1", 0, 1, "ok", 201, 1, "r1", 1),
        Write(2, "post", "g1", "u2", "n2", 0, 1, "ok", 201, 1, "r2", 1),
        Write(3, "put", "g1", "u1", "n3", 0, 1, "ok", 200, 1, "r1", 2),
        Write(4, "delete", "g1", "u2", "n4", 0, 1, "ok", 204, 1, "r2", 1),
        Write(5, "post", "g1", "u3", "n5", 0, 1, "unknown", None, 2),
    ]
    events = [
        HistoryEvent(1, "created", "r1", "g1", "u1", 1, 4, "n1"),
        HistoryEvent(2, "created", "r2", "g1", "u2", 1, 2, "n2"),
        HistoryEvent(3, "updated", "r1", "g1", "u1", 2, 5, "n3"),
        HistoryEvent(4, "deleted", "r2", "g1", "u2", 1, 2, "n2"),
        HistoryEvent(5, "created", "r3", "g1", "u3", 1, 1, "n5"),
    ]
    history = History(seed=7, seconds=1, games=["g1"], users=["u1", "u2", "u3"], writes=writes)
    final = history.final
    final.topics["rating.global"] = events
    final.topics["rating.game.g1"] = copy.deepcopy(events)
    for user in history.users:
        mine = [e for e in events if e.user == user]
        final.topics[f"rating.user.{user}"] = [
            HistoryEvent(i, e.event, e.rating_id, e.game, e.user, e.version, e.score, e.comment)
            for i, e in enumerate(mine, start=1)
        ]
    final.ratings = {"r1": ("g1", "u1", 5, 2, "n3"), "r3": ("g1", "u3", 1, 1, "n5")}
    final.summaries = {"g1": (2, [1, 0, 0, 0, 1])}
    final.audit_change_entries = 5
    final.audit_verify_exit = 0
    frames = [Frame(e.offset, e.event, e.rating_id, e.version, e.comment, 0.0) for e in events]
    history.subscribers = [
        Subscriber("s0", "raw", "main", "rating.global", 0, frames),
        Subscriber("s1", "sdk", "guide", "rating.game.g1", 0, copy.deepcopy(frames)),
    ]
    return history


def _duplicate(h: History) -> None:
    h.subscribers[0].frames.insert(2, copy.deepcopy(h.subscribers[0].frames[1]))


def _hole(h: History) -> None:
    del h.subscribers[1].frames[2]


def _reordering(h: History) -> None:
    frames = h.subscribers[0].frames
    frames[1], frames[2] = frames[2], frames[1]


def _lost_acknowledged_write(h: History) -> None:
    h.writes.append(Write(6, "post", "g1", "u4", "n6", 0, 1, "ok", 201, 1, "r4", 1))


def _made_twice(h: History) -> None:
    h.writes[4].nonce = "n1"  # the write without an answer and write 1 share one event...
    h.writes[0].outcome = "unknown"
    extra = HistoryEvent(6, "created", "r9", "g1", "u9", 1, 3, "n1")  # ...which exists twice
    h.final.topics["rating.global"].append(extra)
    h.final.topics["rating.game.g1"].append(copy.deepcopy(extra))
    h.final.ratings["r9"] = ("g1", "u9", 3, 1, "n1")
    h.final.summaries["g1"] = (3, [1, 0, 1, 0, 1])
    h.final.audit_change_entries = 6


def _wrong_summary(h: History) -> None:
    h.final.summaries["g1"] = (2, [0, 0, 0, 1, 1])


def _topic_hole(h: History) -> None:
    del h.final.topics["rating.game.g1"][1]


def _audit(h: History) -> None:
    h.final.audit_change_entries = 4


@pytest.mark.parametrize(
    ("damage", "rule"),
    [
        (_duplicate, "subscriber-order"),
        (_hole, "subscriber-order"),
        (_reordering, "subscriber-order"),
        (_lost_acknowledged_write, "acked-write-stored"),
        (_made_twice, "unknown-write-at-most-once"),
        (_wrong_summary, "summary"),
        (_topic_hole, "topic-gapless"),
        (_audit, "audit"),
    ],
)
def test_each_kind_of_damage_is_reported(damage: Callable[[History], None], rule: str) -> None:
    history = _clean()
    damage(history)
    rules = {violation.rule for violation in check(history).violations}
    assert rule in rules


def test_a_clean_history_and_a_reported_gap_pass() -> None:
    verdict = check(_clean())
    assert verdict.violations == []
    assert (verdict.writes_acknowledged, verdict.writes_unknown, verdict.events) == (4, 1, 5)
    history = _clean()
    del history.subscribers[0].frames[1:3]  # offsets 2 and 3 missed...
    history.subscribers[0].gaps.append(Gap(1, 3, 0.0))  # ...and the server said so
    verdict = check(history)
    assert verdict.violations == [] and verdict.gaps_reported == 1


def test_a_history_survives_its_json_form() -> None:
    history = _clean()
    assert History.from_json(history.to_json()) == history
