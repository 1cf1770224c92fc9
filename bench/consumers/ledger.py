"""What the members' ledgers (bench.consumers.members) say, counted offset by offset: every
offset of the consumer acked, none delivered again after its ack was stored, each member's
share of the work, latency from the write's send time to its first delivery, and how long a
killed member's unacked events took to reach another member."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class MemberLedger:
    """One member's ledger, parsed."""

    #: The consumer's ackFloor when this member joined.
    subscribed_at: int = -1
    #: (offset, delivery, received ns, send time ns or 0) per rating_update, in order.
    deliveries: list[tuple[int, int, int, int]] = field(default_factory=list)
    #: Per rating_update, in the same order: the rating's ``createdAt`` (ns, to the ms).
    created: list[int] = field(default_factory=list)
    #: (ns, offsets) per ack frame sent, and per ``acked`` answer.
    acks_sent: list[tuple[int, list[int]]] = field(default_factory=list)
    acks_confirmed: list[tuple[int, list[int]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> MemberLedger:
        ledger = cls()
        for line in path.read_text().splitlines():
            kind, _, rest = line.partition(" ")
            if kind == "D":
                offset, delivery, received, sent, created = map(int, rest.split())
                ledger.deliveries.append((offset, delivery, received, sent))
                ledger.created.append(created)
            elif kind in ("A", "C"):
                at, _, offsets = rest.partition(" ")
                entry = (int(at), [int(o) for o in offsets.split(",") if o])
                (ledger.acks_sent if kind == "A" else ledger.acks_confirmed).append(entry)
            elif kind == "S":
                ledger.subscribed_at = int(rest)
            elif kind == "E":
                ledger.errors.append(rest)
        return ledger

    def acked(self) -> set[int]:
        return {offset for _, offsets in self.acks_sent for offset in offsets}


@dataclass
class Counts:
    """The verdict on every offset of one run, and the figures measured from the ledgers."""

    #: Offsets the consumer owed: after its start, up to the topic's head at the end.
    offsets: int = 0
    #: Owed offsets no member acked (must be 0).
    lost: int = 0
    #: Offsets acked by more than one ack frame (0 without a kill; with one, only the killed
    #: member's last batch can be, if it died between its ledger line and the frame).
    acked_twice: int = 0
    #: Deliveries of an offset after the server had answered ``acked`` for it (must be 0).
    delivered_after_ack: int = 0
    #: Offsets delivered that the consumer did not owe: past the topic's head at the end, or
    #: at or before its start (must be 0).
    unowed: int = 0
    #: Deliveries with ``delivery`` 2 or more.
    redeliveries: int = 0
    first_deliveries: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    #: The same from the rating's ``createdAt`` (stamped by the server as the write came in,
    #: before its commit; to the millisecond): what the server adds, without the time a POST
    #: waited on the writer's side.
    created_p50_ms: float = 0.0
    created_p99_ms: float = 0.0
    #: Distinct offsets of measured writes the server confirmed acked, and over how long
    #: (first measured write to the last confirmation).
    acked: int = 0
    acked_seconds: float = 0.0
    #: Each member's first deliveries of measured writes while all members were alive (and
    #: none hung).
    per_member: list[int] = field(default_factory=list)
    #: (most - fewest) / mean of ``per_member``.
    spread: float = 0.0
    #: The killed member's unacked offsets at its death (read or still on the way to it),
    #: how many of them another member then received (all, or some are lost), and when the
    #: first and the last did (ms after the kill).
    held_at_kill: int = 0
    held_redelivered: int = 0
    redelivery_first_ms: float = 0.0
    redelivery_last_ms: float = 0.0
    errors: list[str] = field(default_factory=list)


def quantile_ms(ordered: list[int], fraction: float) -> float:
    """The ``fraction`` quantile of ``ordered`` (ns, ascending) in ms; 0 for none."""
    if not ordered:
        return 0.0
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] / 1e6, 2)


def count(
    ledgers: list[MemberLedger],
    head: int,
    started_ns: int,
    killed: int | None = None,
    killed_ns: int = 0,
    hung_ns: int = 0,
) -> Counts:
    """The verdict over ``ledgers`` (by member index) for a consumer whose topic ended at
    ``head``; ``started_ns``: the first measured write's time; ``killed``: the index of the
    member SIGKILLed at ``killed_ns``, if one was, after it hung (SIGSTOP) at ``hung_ns``
    (each member's share is counted while all were alive: before then)."""
    counts = Counts()
    start = min(ledger.subscribed_at for ledger in ledgers)
    owed = range(start + 1, head + 1)
    counts.offsets = len(owed)
    acks = Counter(
        offset for ledger in ledgers for _, batch in ledger.acks_sent for offset in batch
    )
    counts.lost = sum(1 for offset in owed if offset not in acks)
    counts.acked_twice = sum(1 for times in acks.values() if times > 1)
    confirmed_at: dict[int, int] = {}
    for ledger in ledgers:
        counts.errors += ledger.errors
        for at, batch in ledger.acks_confirmed:
            for offset in batch:
                confirmed_at[offset] = min(at, confirmed_at.get(offset, at))
    deliveries = [d for ledger in ledgers for d in ledger.deliveries]
    counts.delivered_after_ack = sum(
        1 for offset, _, received, _ in deliveries if received > confirmed_at.get(offset, received)
    )
    counts.unowed = len({offset for offset, _, _, _ in deliveries if offset not in owed})
    counts.redeliveries = sum(1 for _, delivery, _, _ in deliveries if delivery > 1)
    latencies = sorted(
        received - sent for _, delivery, received, sent in deliveries if delivery == 1 and sent
    )
    counts.first_deliveries = len(latencies)
    counts.p50_ms, counts.p99_ms = quantile_ms(latencies, 0.50), quantile_ms(latencies, 0.99)
    counts.max_ms = round(latencies[-1] / 1e6, 2) if latencies else 0.0
    from_created = sorted(
        received - created
        for ledger in ledgers
        for (_, delivery, received, sent), created in zip(
            ledger.deliveries, ledger.created, strict=True
        )
        if delivery == 1 and sent
    )
    counts.created_p50_ms = quantile_ms(from_created, 0.50)
    counts.created_p99_ms = quantile_ms(from_created, 0.99)
    timed = {offset for offset, _, _, sent in deliveries if sent}  # not the warm-up's
    measured = [at for offset, at in confirmed_at.items() if offset in timed]
    counts.acked = len(measured)
    if measured:
        counts.acked_seconds = round((max(measured) - started_ns) / 1e9, 3)
    until = (hung_ns or killed_ns) if killed is not None else None
    counts.per_member = [
        sum(
            1
            for _, delivery, received, sent in ledger.deliveries
            if delivery == 1 and sent and (until is None or received < until)
        )
        for ledger in ledgers
    ]
    mean = statistics.fmean(counts.per_member) if counts.per_member else 0.0
    if mean:
        counts.spread = round((max(counts.per_member) - min(counts.per_member)) / mean, 3)
    if killed is not None:
        _count_redelivery(counts, ledgers, killed, killed_ns)
    return counts


def _count_redelivery(
    counts: Counts, ledgers: list[MemberLedger], killed: int, killed_ns: int
) -> None:
    """The killed member's claims, and when the others received them. Its claims are what its
    ledger shows delivered and not acked, and what the server had sent it that it never read
    (those show up only as redeliveries: ``delivery`` 2 or more, after the kill)."""
    victim = ledgers[killed]
    held = {offset for offset, _, _, _ in victim.deliveries} - victim.acked()
    reached: dict[int, int] = {}
    for index, ledger in enumerate(ledgers):
        if index == killed:
            continue
        for offset, delivery, received, _ in ledger.deliveries:
            if received >= killed_ns and (offset in held or delivery > 1):
                reached[offset] = min(received, reached.get(offset, received))
    counts.held_at_kill = len(held | set(reached))
    counts.held_redelivered = len(reached)
    if reached:
        counts.redelivery_first_ms = round((min(reached.values()) - killed_ns) / 1e6, 2)
        counts.redelivery_last_ms = round((max(reached.values()) - killed_ns) / 1e6, 2)
