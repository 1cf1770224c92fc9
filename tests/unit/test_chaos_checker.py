"""The chaos checker catches what it claims: fed recorded histories with a duplicate, a hole,
a reordering, a lost acknowledged write, a write made twice, a wrong summary, a broken audit
log, and a durable consumer that lost, redelivered or double-counted work, it reports each,
under its rule; fed the clean history, nothing."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
from bench.chaos.checker import check
from bench.chaos.history import (
    AckAnswer,
    ConsumerGroup,
    Delivery,
    Frame,
    Gap,
    History,
    HistoryEvent,
    Membership,
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
    history.consumers = [_consumer_group(events)]
    return history


def _consumer_group(events: list[HistoryEvent]) -> ConsumerGroup:
    """Two members share the five events: m0 crashes holding offset 5, which comes back to
    it (delivery 2) once it has joined again."""

    def given(member: str, session: int, offset: int, delivery: int, at: float) -> Delivery:
        event = events[offset - 1]
        return Delivery(
            member, session, offset, delivery, event.event, event.rating_id, event.version, at
        )

    group = ConsumerGroup("workers", "rating.global", ["m0", "m1"])
    group.memberships = [
        Membership("m0", 1, 0.0, 0.1, 0, True, ended="crash"),
        Membership("m1", 1, 0.2, 0.3, 0, False),
        Membership("m0", 2, 2.0, 2.1, 4, False),
    ]
    group.deliveries = [
        given("m0", 1, 1, 1, 1.0),
        given("m0", 1, 2, 1, 1.0),
        given("m1", 1, 3, 1, 1.1),
        given("m1", 1, 4, 1, 1.1),
        given("m0", 1, 5, 1, 1.2),
        given("m0", 2, 5, 2, 2.5),
    ]
    group.answers = [
        AckAnswer("m0", 1, [1, 2], 2, [], 1.5),
        AckAnswer("m1", 1, [3, 4], 4, [], 1.6),
        AckAnswer("m0", 2, [5], 5, [], 3.0),
    ]
    group.final_ack_floor, group.final_pending = 5, 0
    return group


def _consumer_redelivered_after_ack(h: History) -> None:
    group = h.consumers[0]
    group.memberships.append(Membership("m1", 2, 3.5))  # joined after offset 3's ack...
    group.deliveries.append(copy.deepcopy(group.deliveries[2]))
    group.deliveries[-1].session, group.deliveries[-1].delivery = 2, 2  # ...and given it


def _consumer_given_below_its_floor(h: History) -> None:
    again = copy.deepcopy(h.consumers[0].deliveries[3])
    again.member, again.session, again.delivery = "m0", 2, 2  # m0 joined again at floor 4
    h.consumers[0].deliveries.append(again)


def _consumer_never_acked(h: History) -> None:
    group = h.consumers[0]
    group.answers[-1] = AckAnswer("m0", 2, [], 4, [], 3.0)
    group.final_ack_floor, group.final_pending = 4, 1


def _consumer_never_delivered(h: History) -> None:
    h.consumers[0].deliveries = [d for d in h.consumers[0].deliveries if d.offset != 3]


def _consumer_created_twice(h: History) -> None:
    h.consumers[0].memberships[2].created = True
    h.consumers[0].memberships[2].ack_floor = 0


def _consumer_delivery_count_twice(h: History) -> None:
    h.consumers[0].deliveries[-1].delivery = 1


def _consumer_ack_refused(h: History) -> None:
    h.consumers[0].answers[1].refused = [4]


def _consumer_wrong_event(h: History) -> None:
    h.consumers[0].deliveries[0].version = 7


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
        (_consumer_redelivered_after_ack, "consumer-acked-once"),
        (_consumer_given_below_its_floor, "consumer-acked-once"),
        (_consumer_ack_refused, "consumer-acked-once"),
        (_consumer_never_acked, "consumer-owed"),
        (_consumer_never_delivered, "consumer-owed"),
        (_consumer_created_twice, "consumer-start"),
        (_consumer_delivery_count_twice, "consumer-delivery"),
        (_consumer_wrong_event, "consumer-delivery"),
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


def test_a_delivery_already_in_flight_when_its_ack_was_answered_passes() -> None:
    """m1 acked offset 3 (answered at 1.6) while the server, its claim run out, had already
    given it again to m1's live connection: delivery 2 arrives at 1.7. Allowed, and counted."""
    history = _clean()
    late = copy.deepcopy(history.consumers[0].deliveries[2])
    late.delivery, late.at = 2, 1.7
    history.consumers[0].deliveries.append(late)
    verdict = check(history)
    assert verdict.violations == []
    counts = verdict.consumers
    assert (counts.deliveries, counts.redeliveries, counts.in_flight_at_ack) == (7, 2, 1)
    assert (counts.offsets_owed, counts.offsets_acked, counts.crashes) == (5, 5, 1)


def test_a_history_survives_its_json_form() -> None:
    history = _clean()
    assert History.from_json(history.to_json()) == history
