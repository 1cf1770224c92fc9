"""What a chaos run records: every write and its answer (or the lack of one), every frame a
subscriber received, what each member of a durable consumer was given and what its acks were
answered, every fault, and the final state read back afterwards. Plain data, so a
history can be saved as JSON, read back and fed to the checker again."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

#: How a write ended for its client: answered 2xx; refused for good (4xx); or never known
#: (timeout, reset, 5xx after the last retry): it may have committed once, or not at all.
Outcome = Literal["ok", "refused", "unknown"]


@dataclass
class Write:
    """One logical write and what its client knows of it. ``nonce`` is written into the
    rating's comment (creates, replaces, patches), so the checker can find the event it made;
    a delete is found by the rating's id and version."""

    op_id: int
    op: Literal["post", "put", "patch", "delete"]
    game: str
    user: str
    nonce: str
    started: float
    ended: float = 0.0
    outcome: Outcome = "unknown"
    status: int | None = None
    attempts: int = 0
    #: From the 2xx answer: the rating id and the version this write produced (a delete: the
    #: version it removed).
    rating_id: str | None = None
    version: int | None = None
    #: An attempt had no answer, and a later read showed the write had landed.
    inferred: bool = False


@dataclass
class Frame:
    """One ``rating_update`` a subscriber received."""

    offset: int
    event: str
    rating_id: str
    version: int
    comment: str | None
    at: float


@dataclass
class Gap:
    """The server said it could not replay ``(after, offset]`` (``recovered: false``, a 410,
    or the SDK's Gap item)."""

    after: int
    offset: int
    at: float


@dataclass
class Subscriber:
    name: str
    kind: Literal["sdk", "raw"]
    endpoint: str
    topic: str
    #: The topic's offset when the subscription first started (frames after it are owed).
    start_offset: int | None = None
    frames: list[Frame] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    connections: int = 0


@dataclass
class Membership:
    """One connection of a consumer's member: from its ``subscribe`` to its end."""

    member: str
    #: Numbers the member's connections, from 1; deliveries and answers name it.
    session: int
    #: When the ``subscribe`` was sent: the server cannot have claimed anything for this
    #: membership before it.
    sent: float
    #: From the ``subscribed`` answer (None: none came before the connection ended).
    answered: float | None = None
    ack_floor: int | None = None
    created: bool | None = None
    #: ``"recovered": false``: history no longer reached the floor; ``first_offset`` is the
    #: first offset it could still deliver.
    recovered: bool = True
    first_offset: int | None = None
    #: How it ended: "crash" (the member dropped it, unacked events and all), "lost" (the
    #: network or the server did), or "" while it lasted to the end of the run.
    ended: str = ""


@dataclass
class Delivery:
    """One ``rating_update`` with ``consumer`` a member received."""

    member: str
    session: int
    offset: int
    delivery: int
    event: str
    rating_id: str
    version: int
    at: float


@dataclass
class AckAnswer:
    """One ``acked`` answer: the offsets it names are acked, and so is all at or below
    ``ack_floor``; ``refused`` names offsets the server says were never delivered."""

    member: str
    session: int
    offsets: list[int]
    ack_floor: int
    refused: list[int]
    at: float


@dataclass
class ConsumerGroup:
    """The members of one durable consumer and everything they saw."""

    name: str
    topic: str
    members: list[str]
    memberships: list[Membership] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    answers: list[AckAnswer] = field(default_factory=list)
    #: Acks that had no answer (the connection ended first) or were answered with an error.
    acks_unanswered: int = 0
    #: GET /consumers/{name}?topic= after the quiet period (None: it could not be read).
    final_ack_floor: int | None = None
    final_pending: int | None = None

    @property
    def start_offset(self) -> int | None:
        """The floor the consumer was created at (events after it are owed)."""
        return next((m.ack_floor for m in self.memberships if m.created), None)


@dataclass
class Fault:
    kind: str
    target: str
    started: float
    ended: float = 0.0
    #: Seconds from the fault's end to the first delivery any subscriber received after it.
    recovery: float | None = None


@dataclass
class HistoryEvent:
    """One event of a topic as ``GET /topics/{topic}/events`` returns it."""

    offset: int
    event: str
    rating_id: str
    game: str
    user: str
    version: int
    score: int
    comment: str | None


@dataclass
class FinalState:
    """Read back after the quiet period."""

    topics: dict[str, list[HistoryEvent]] = field(default_factory=dict)
    #: rating id -> (game, user, score, version, comment), from GET /ratings.
    ratings: dict[str, tuple[str, str, int, int, str | None]] = field(default_factory=dict)
    #: game -> (count, histogram 1..5), from GET /games/{id}/summary.
    summaries: dict[str, tuple[int, list[int]]] = field(default_factory=dict)
    #: Rows of audit_log whose action records a rating change.
    audit_change_entries: int = 0
    audit_verify_exit: int | None = None
    audit_verify_output: str = ""


@dataclass
class History:
    seed: int
    seconds: float
    games: list[str]
    users: list[str]
    writes: list[Write] = field(default_factory=list)
    subscribers: list[Subscriber] = field(default_factory=list)
    consumers: list[ConsumerGroup] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    final: FinalState = field(default_factory=FinalState)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> History:
        final = data["final"]
        return cls(
            seed=data["seed"],
            seconds=data["seconds"],
            games=data["games"],
            users=data["users"],
            writes=[Write(**w) for w in data["writes"]],
            subscribers=[
                Subscriber(
                    **{
                        **s,
                        "frames": [Frame(**f) for f in s["frames"]],
                        "gaps": [Gap(**g) for g in s["gaps"]],
                    }
                )
                for s in data["subscribers"]
            ],
            consumers=[
                ConsumerGroup(
                    **{
                        **c,
                        "memberships": [Membership(**m) for m in c["memberships"]],
                        "deliveries": [Delivery(**d) for d in c["deliveries"]],
                        "answers": [AckAnswer(**a) for a in c["answers"]],
                    }
                )
                for c in data.get("consumers", [])  # histories saved before consumers
            ],
            faults=[Fault(**f) for f in data["faults"]],
            final=FinalState(
                topics={
                    topic: [HistoryEvent(**e) for e in events]
                    for topic, events in final["topics"].items()
                },
                ratings={k: tuple(v) for k, v in final["ratings"].items()},  # type: ignore[misc]
                summaries={k: (v[0], list(v[1])) for k, v in final["summaries"].items()},
                audit_change_entries=final["audit_change_entries"],
                audit_verify_exit=final["audit_verify_exit"],
                audit_verify_output=final["audit_verify_output"],
            ),
        )
