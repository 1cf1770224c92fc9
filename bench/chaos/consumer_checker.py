"""The chaos checker's rules for durable consumers: what docs/protocol.md promises a group of
members ("every event after the consumer's start is delivered until a member acks it, and an
acked offset is never delivered again"), checked over what the members recorded.

Only what a client can know is used. An ``acked`` answer received at time T proves the ack was
stored before T; a delivery the server had already claimed for a member before then may still
arrive after T (the claim, the read of the event and the send are not one step, and an
instance paused between them sends when it wakes). So "never delivered again" is checked where
the client can tell a new claim from one in flight: a membership whose ``subscribe`` was sent
after T did not exist before T, so anything it is given was claimed after the ack; and a
membership's own ``subscribed`` answer names an ``ackFloor`` read before it joined. Deliveries
that arrive after T on a membership older than T are counted (``in_flight_at_ack``), not
excused silently.

The rules:

- ``consumer-start``: the consumer was created once, and no member was ever told a floor below
  the one it was created at (its position was never lost);
- ``consumer-owed``: every offset of the topic after the start was delivered to some member,
  and an answer covered it (an ``acked`` naming it, or an ``ackFloor`` at or past it, the
  final ``GET /consumers/{name}`` included); at the end the consumer's ``ackFloor`` is the
  topic's head and nothing is pending. Offsets the server reported lost (``"recovered":
  false``) are excused;
- ``consumer-acked-once``: an offset covered by an answer is not given to a membership that
  joined after that answer, nor to one whose own ``subscribed`` floor covered it; an ack of an
  offset a member was given is never refused;
- ``consumer-delivery``: each delivery count of an offset is given once, to one member; one
  membership is given an offset's deliveries with increasing counts; what a member is given
  at an offset is the topic's event there.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from bench.chaos.history import ConsumerGroup, Delivery, HistoryEvent, Membership
from bench.chaos.violation import Violation


@dataclass
class ConsumerCounts:
    """What the members did, summed over the run's consumers (for the report)."""

    deliveries: int = 0
    redeliveries: int = 0
    offsets_owed: int = 0
    offsets_acked: int = 0
    ack_answers: int = 0
    acks_unanswered: int = 0
    in_flight_at_ack: int = 0
    memberships: int = 0
    crashes: int = 0
    violations: int = 0

    def add(self, other: ConsumerCounts) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class _Group:
    """One consumer's record, indexed for the rules."""

    record: ConsumerGroup
    events: dict[int, HistoryEvent]
    memberships: dict[tuple[str, int], Membership] = field(default_factory=dict)
    #: Offset -> when the first answer covering it came.
    covered: dict[int, float] = field(default_factory=dict)


def check_consumer(
    group: ConsumerGroup, events: list[HistoryEvent]
) -> tuple[ConsumerCounts, list[Violation]]:
    """The counts and violations of ``group`` over its topic's final ``events``."""
    indexed = _Group(group, {event.offset: event for event in events})
    indexed.memberships = {(m.member, m.session): m for m in group.memberships}
    indexed.covered = _covered(group)
    found = _start(indexed) + _owed(indexed) + _acked_once(indexed) + _deliveries(indexed)
    counts = ConsumerCounts(
        deliveries=len(group.deliveries),
        redeliveries=sum(d.delivery > 1 for d in group.deliveries),
        offsets_owed=len(_owed_offsets(indexed)),
        offsets_acked=sum(
            o in indexed.covered or o <= (group.final_ack_floor or 0)
            for o in _owed_offsets(indexed)
        ),
        ack_answers=len(group.answers),
        acks_unanswered=group.acks_unanswered,
        in_flight_at_ack=sum(d.at > indexed.covered.get(d.offset, d.at) for d in group.deliveries),
        memberships=len(group.memberships),
        crashes=sum(m.ended == "crash" for m in group.memberships),
        violations=len(found),
    )
    return counts, found


def _covered(group: ConsumerGroup) -> dict[int, float]:
    """Offset -> the time of the first answer that said it was acked: named in ``acked``, or
    at or below an ``ackFloor`` (of ``acked`` or of ``subscribed``)."""
    floors = [(a.at, a.ack_floor) for a in group.answers]
    floors += [
        (m.answered, m.ack_floor)
        for m in group.memberships
        if m.answered is not None and m.ack_floor is not None
    ]
    covered: dict[int, float] = {}
    highest = 0
    for at, floor in sorted(floors):
        for offset in range(highest + 1, floor + 1):
            covered[offset] = at
        highest = max(highest, floor)
    for answer in group.answers:
        for offset in answer.offsets:
            covered[offset] = min(covered.get(offset, answer.at), answer.at)
    return covered


def _name(group: _Group) -> str:
    return f"consumer {group.record.name} ({group.record.topic})"


def _start(group: _Group) -> list[Violation]:
    found: list[Violation] = []
    created = [m for m in group.record.memberships if m.created]
    if len(created) != 1 and group.record.memberships:
        found.append(
            Violation(
                "consumer-start",
                f"{_name(group)} was created {len(created)} times (its position was lost)",
                [m.__dict__ for m in created[:5]],
            )
        )
    start = group.record.start_offset or 0
    for membership in group.record.memberships:
        if membership.ack_floor is not None and membership.ack_floor < start:
            found.append(
                Violation(
                    "consumer-start",
                    f"{_name(group)}: {membership.member} joined at floor "
                    f"{membership.ack_floor}, below the start {start}",
                    [membership.__dict__],
                )
            )
    return found


def _owed_offsets(group: _Group) -> list[int]:
    """The offsets after the consumer's start, up to the topic's head, less those the server
    reported lost."""
    start = group.record.start_offset
    if start is None:
        return []
    lost = {
        offset
        for m in group.record.memberships
        if not m.recovered and m.ack_floor is not None and m.first_offset is not None
        for offset in range(m.ack_floor + 1, m.first_offset)
    }
    head = max(group.events, default=0)
    return [offset for offset in range(start + 1, head + 1) if offset not in lost]


def _owed(group: _Group) -> list[Violation]:
    found: list[Violation] = []
    record = group.record
    if record.memberships and record.start_offset is None:
        found.append(Violation("consumer-owed", f"{_name(group)}: no member saw it created"))
        return found
    delivered = {d.offset for d in record.deliveries}
    owed = _owed_offsets(group)
    # The final read is an answer too: the last ack's own answer may have been lost in a
    # crash, with no later one to name a floor past it.
    final = record.final_ack_floor or 0
    for what, missing in (
        ("delivered", [o for o in owed if o not in delivered]),
        ("acked", [o for o in owed if o not in group.covered and o > final]),
    ):
        if missing:
            found.append(
                Violation(
                    "consumer-owed",
                    f"{_name(group)}: {len(missing)} offsets after its start never {what}",
                    missing[:10],
                )
            )
    head = max(group.events, default=0)
    if (record.final_ack_floor, record.final_pending) != (head, 0):
        found.append(
            Violation(
                "consumer-owed",
                f"{_name(group)} ended at ackFloor {record.final_ack_floor} with "
                f"{record.final_pending} pending; the topic's head is {head}",
            )
        )
    return found


def _acked_once(group: _Group) -> list[Violation]:
    found: list[Violation] = []
    for delivery in group.record.deliveries:
        membership = group.memberships.get((delivery.member, delivery.session))
        if membership is None:
            continue
        covered = group.covered.get(delivery.offset)
        if membership.ack_floor is not None and delivery.offset <= membership.ack_floor:
            found.append(
                Violation(
                    "consumer-acked-once",
                    f"{_name(group)}: {delivery.member} was given offset {delivery.offset}, at "
                    f"or below the ackFloor {membership.ack_floor} it joined at",
                    [delivery.__dict__, membership.__dict__],
                )
            )
        elif covered is not None and membership.sent > covered:
            found.append(
                Violation(
                    "consumer-acked-once",
                    f"{_name(group)}: {delivery.member} was given offset {delivery.offset} "
                    f"(delivery {delivery.delivery}) on a membership that joined "
                    f"{membership.sent - covered:.3f} s after an answer said it was acked",
                    [delivery.__dict__, membership.__dict__],
                )
            )
    given = {d.offset for d in group.record.deliveries}
    for answer in group.record.answers:
        refused = [o for o in answer.refused if o in given]
        if refused:
            found.append(
                Violation(
                    "consumer-acked-once",
                    f"{_name(group)}: an ack by {answer.member} was refused offsets members "
                    f"had been given",
                    refused[:10],
                )
            )
    return found


def _deliveries(group: _Group) -> list[Violation]:
    found: list[Violation] = []
    record = group.record
    twice = [
        key
        for key, n in Counter((d.offset, d.delivery) for d in record.deliveries).items()
        if n > 1
    ]
    if twice:
        found.append(
            Violation(
                "consumer-delivery",
                f"{_name(group)}: {len(twice)} (offset, delivery) pairs given more than once",
                sorted(twice)[:10],
            )
        )
    last: dict[tuple[str, int, int], int] = defaultdict(int)
    for delivery in record.deliveries:
        key = (delivery.member, delivery.session, delivery.offset)
        if delivery.delivery <= last[key]:
            found.append(
                Violation(
                    "consumer-delivery",
                    f"{_name(group)}: {delivery.member} was given offset {delivery.offset} "
                    f"as delivery {delivery.delivery} after delivery {last[key]}",
                    [delivery.__dict__],
                )
            )
        last[key] = max(last[key], delivery.delivery)
        found += _content(group, delivery)
    return found


def _content(group: _Group, delivery: Delivery) -> list[Violation]:
    event = group.events.get(delivery.offset)
    if event is not None and (event.rating_id, event.version, event.event) == (
        delivery.rating_id,
        delivery.version,
        delivery.event,
    ):
        return []
    return [
        Violation(
            "consumer-delivery",
            f"{_name(group)} at offset {delivery.offset}: {delivery.member} was given "
            f"{delivery.event} {delivery.rating_id} v{delivery.version}, history has "
            f"{None if event is None else event.__dict__}",
        )
    ]
