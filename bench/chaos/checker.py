"""Reads a whole recorded history (:mod:`bench.chaos.history`) and proves the delivery promise
of docs/protocol.md over it, or names each place where it does not hold.

Written apart from the server: it imports nothing of ratewire, and trusts only what clients
saw (answers, frames) and what the final state says (REST, the database's audit rows).

The rules, each a ``rule`` name in a violation:

- ``topic-gapless``: every topic's history has offsets 1, 2, 3... with no hole;
- ``acked-write-stored``: every write answered 2xx made exactly one event (its nonce, or for a
  delete its rating id and version), and that event is on its game's and its user's topics
  exactly once;
- ``unknown-write-at-most-once``: a write with no known answer made one event or none;
- ``store-equals-history``: replaying the global history gives the stored ratings;
- ``summary``: each game's summary equals a count over the stored ratings;
- ``subscriber-order``: a subscriber saw each topic's offsets in increasing order, each once,
  with no hole that the server did not report as a gap;
- ``subscriber-content``: what a subscriber saw at an offset is the topic's event there;
- ``audit``: ``ratewire audit verify`` passed and the log has one change entry per event;
- ``consumer-start``, ``consumer-owed``, ``consumer-acked-once``, ``consumer-delivery``: a
  durable consumer's members were given every event after its start until an ack covered it,
  and never an acked one again (:mod:`bench.chaos.consumer_checker`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.chaos.consumer_checker import ConsumerCounts, check_consumer
from bench.chaos.history import History, HistoryEvent
from bench.chaos.violation import Violation


@dataclass
class Verdict:
    violations: list[Violation]
    writes_acknowledged: int
    writes_unknown: int
    frames_checked: int
    gaps_reported: int
    events: int
    consumers: ConsumerCounts = field(default_factory=ConsumerCounts)

    def summary(self) -> dict[str, Any]:
        return {
            "violations": len(self.violations),
            "writes_acknowledged": self.writes_acknowledged,
            "writes_unknown": self.writes_unknown,
            "frames_checked": self.frames_checked,
            "gaps_reported": self.gaps_reported,
            "events": self.events,
            **{f"consumer_{name}": n for name, n in asdict(self.consumers).items()},
        }


def check(history: History) -> Verdict:
    """Every violation of the promise in ``history``."""
    violations: list[Violation] = []
    topics = history.final.topics
    global_events = topics.get("rating.global", [])

    for topic, events in sorted(topics.items()):
        offsets = [event.offset for event in events]
        if offsets != list(range(1, len(offsets) + 1)):
            first_bad = next(
                (i for i, offset in enumerate(offsets) if offset != i + 1), len(offsets)
            )
            violations.append(
                Violation(
                    "topic-gapless",
                    f"{topic}: offsets are not 1..{len(offsets)} (first wrong at index "
                    f"{first_bad})",
                    offsets[max(0, first_bad - 3) : first_bad + 3],
                )
            )

    violations += _writes(history, global_events)
    violations += _store(history, global_events)
    frames, gaps, found = _subscribers(history)
    violations += found
    consumers = ConsumerCounts()
    for group in history.consumers:
        counts, found = check_consumer(group, topics.get(group.topic, []))
        consumers.add(counts)
        violations += found
    final = history.final
    if final.audit_verify_exit != 0:
        violations.append(
            Violation("audit", "ratewire audit verify failed", [final.audit_verify_output])
        )
    if final.audit_change_entries != len(global_events):
        violations.append(
            Violation(
                "audit",
                f"{final.audit_change_entries} change entries in the audit log for "
                f"{len(global_events)} events",
            )
        )
    return Verdict(
        violations,
        writes_acknowledged=sum(w.outcome == "ok" for w in history.writes),
        writes_unknown=sum(w.outcome == "unknown" for w in history.writes),
        frames_checked=frames,
        gaps_reported=gaps,
        events=len(global_events),
        consumers=consumers,
    )


def _key(event: HistoryEvent) -> tuple[str, int, str]:
    return event.rating_id, event.version, event.event


def _writes(history: History, global_events: list[HistoryEvent]) -> list[Violation]:
    found: list[Violation] = []
    by_nonce: dict[str, list[HistoryEvent]] = defaultdict(list)
    by_key: dict[tuple[str, int, str], list[HistoryEvent]] = defaultdict(list)
    for event in global_events:
        if event.event != "deleted" and event.comment:
            by_nonce[event.comment].append(event)
        by_key[_key(event)].append(event)
    per_topic: dict[str, Counter[tuple[str, int, str]]] = {
        topic: Counter(_key(e) for e in events) for topic, events in history.final.topics.items()
    }
    for write in history.writes:
        if write.op == "delete":
            made = (
                by_key.get((write.rating_id, write.version, "deleted"), [])
                if write.rating_id is not None and write.version is not None
                else []
            )
        else:
            made = by_nonce.get(write.nonce, [])
        if write.outcome == "ok":
            if len(made) != 1:
                found.append(
                    Violation(
                        "acked-write-stored",
                        f"write {write.op_id} ({write.op} {write.game}/{write.user}, answered "
                        f"{write.status}) made {len(made)} events",
                        [write.__dict__, *[e.__dict__ for e in made]],
                    )
                )
                continue
            event = made[0]
            for topic in (f"rating.game.{event.game}", f"rating.user.{event.user}"):
                count = per_topic.get(topic, Counter())[_key(event)]
                if count != 1:
                    found.append(
                        Violation(
                            "acked-write-stored",
                            f"write {write.op_id}'s event is {count} times on {topic}",
                            [event.__dict__],
                        )
                    )
        elif write.outcome == "unknown" and len(made) > 1:
            found.append(
                Violation(
                    "unknown-write-at-most-once",
                    f"write {write.op_id} ({write.op}, no answer) made {len(made)} events",
                    [write.__dict__, *[e.__dict__ for e in made]],
                )
            )
    return found


def _store(history: History, global_events: list[HistoryEvent]) -> list[Violation]:
    found: list[Violation] = []
    replayed: dict[str, tuple[str, str, int, int, str | None]] = {}
    for event in global_events:
        if event.event == "deleted":
            replayed.pop(event.rating_id, None)
        else:
            replayed[event.rating_id] = (
                event.game,
                event.user,
                event.score,
                event.version,
                event.comment,
            )
    stored = history.final.ratings
    for rating_id in sorted(set(replayed) | set(stored)):
        if replayed.get(rating_id) != stored.get(rating_id):
            found.append(
                Violation(
                    "store-equals-history",
                    f"rating {rating_id}: stored {stored.get(rating_id)}, history says "
                    f"{replayed.get(rating_id)}",
                )
            )
    counted: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for game, _, score, _, _ in stored.values():
        counted[game][score - 1] += 1
    for game in sorted(set(counted) | set(history.final.summaries)):
        expected = (sum(counted[game]), counted[game])
        summary = history.final.summaries.get(game, (0, [0, 0, 0, 0, 0]))
        if (summary[0], list(summary[1])) != expected:
            found.append(
                Violation(
                    "summary",
                    f"game {game}: summary {summary}, the stored ratings give {expected}",
                )
            )
    return found


def _subscribers(history: History) -> tuple[int, int, list[Violation]]:
    found: list[Violation] = []
    frames = gaps = 0
    topics = history.final.topics
    for sub in history.subscribers:
        events = {event.offset: event for event in topics.get(sub.topic, [])}
        gaps += len(sub.gaps)
        # The offsets the server said it could not replay are excused.
        excused = {offset for gap in sub.gaps for offset in range(gap.after + 1, gap.offset + 1)}
        seen: Counter[int] = Counter()
        previous = sub.start_offset or 0
        for frame in sub.frames:
            frames += 1
            seen[frame.offset] += 1
            if frame.offset <= previous:
                found.append(
                    Violation(
                        "subscriber-order",
                        f"{sub.name} ({sub.topic}): offset {frame.offset} after {previous}",
                        [frame.__dict__],
                    )
                )
            elif any(o not in excused for o in range(previous + 1, frame.offset)):
                missing = [o for o in range(previous + 1, frame.offset) if o not in excused]
                found.append(
                    Violation(
                        "subscriber-order",
                        f"{sub.name} ({sub.topic}): hole of {len(missing)} before offset "
                        f"{frame.offset}, not reported as a gap",
                        missing[:10],
                    )
                )
            previous = max(previous, frame.offset)
            event = events.get(frame.offset)
            if event is None or (event.rating_id, event.version, event.event) != (
                frame.rating_id,
                frame.version,
                frame.event,
            ):
                found.append(
                    Violation(
                        "subscriber-content",
                        f"{sub.name} ({sub.topic}) at offset {frame.offset}: got "
                        f"{frame.event} {frame.rating_id} v{frame.version}, history has "
                        f"{None if event is None else event.__dict__}",
                    )
                )
        # What the topic committed after the subscription started is owed, up to its end.
        head = max(events, default=0)
        owed = [
            o
            for o in range(max(sub.start_offset or 0, 0) + 1, head + 1)
            if o not in seen and o not in excused
        ]
        if sub.start_offset is not None and owed:
            found.append(
                Violation(
                    "subscriber-order",
                    f"{sub.name} ({sub.topic}) never received {len(owed)} offsets it was owed",
                    owed[:10],
                )
            )
    return frames, gaps, found
