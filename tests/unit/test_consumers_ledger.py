"""bench.consumers' count sees what it is there to see: an offset no member acked, an offset
delivered again after its ack was stored, and a killed member's events reaching the others."""

from __future__ import annotations

from bench.consumers.ledger import MemberLedger, count

MS = 1_000_000


def _member(
    deliveries: list[tuple[int, int, int]], acked: list[int], confirmed_at: int = 50 * MS
) -> MemberLedger:
    """Joined at offset 0; ``deliveries``: (offset, delivery, received ms), each written at 0."""
    ledger = MemberLedger(subscribed_at=0)
    ledger.deliveries = [(o, d, at * MS, 1) for o, d, at in deliveries]
    ledger.created = [2 * MS for _ in deliveries]
    if acked:
        ledger.acks_sent = [(confirmed_at - MS, acked)]
        ledger.acks_confirmed = [(confirmed_at, acked)]
    return ledger


def test_every_offset_acked_once_is_a_clean_count() -> None:
    counts = count([_member([(1, 1, 10), (3, 1, 30)], [1, 3]), _member([(2, 1, 20)], [2])], 3, 0)
    assert (counts.offsets, counts.lost, counts.acked_twice, counts.delivered_after_ack) == (
        3, 0, 0, 0,
    )  # fmt: skip
    assert counts.per_member == [2, 1] and counts.acked == 3
    assert (counts.p50_ms, counts.max_ms) == (20.0, 30.0)
    assert counts.created_p50_ms == 18.0


def test_an_offset_no_member_acked_is_lost() -> None:
    counts = count([_member([(1, 1, 10), (2, 1, 20)], [1])], 3, 0)
    assert counts.lost == 2  # 2 was delivered and not acked, 3 never came


def test_a_delivery_after_the_stored_ack_is_counted() -> None:
    first = _member([(1, 1, 10)], [1], confirmed_at=20 * MS)
    again = _member([(1, 2, 30)], [1], confirmed_at=40 * MS)
    counts = count([first, again], 1, 0)
    assert counts.delivered_after_ack == 1 and counts.acked_twice == 1


def test_a_killed_members_held_events_are_timed_to_another_member() -> None:
    victim = _member([(1, 1, 10), (2, 1, 20)], [1])  # holds 2; 3 was on its way when it died
    other = _member([(2, 2, 130), (3, 2, 160), (4, 1, 170)], [2, 3, 4], confirmed_at=200 * MS)
    counts = count([victim, other], 4, 0, killed=0, killed_ns=100 * MS)
    assert (counts.held_at_kill, counts.held_redelivered) == (2, 2)
    assert (counts.redelivery_first_ms, counts.redelivery_last_ms) == (30.0, 60.0)
    assert counts.lost == 0 and counts.redeliveries == 2


def test_a_killed_members_event_nobody_received_is_lost() -> None:
    victim = _member([(1, 1, 10), (2, 1, 20)], [1])
    counts = count([victim, _member([], [])], 2, 0, killed=0, killed_ns=100 * MS)
    assert (counts.held_at_kill, counts.held_redelivered, counts.lost) == (1, 0, 1)
