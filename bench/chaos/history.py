"""What a chaos run records: every write and its answer (or the lack of one), every frame a
subscriber received, every fault, and the final state read back afterwards. Plain data, so a
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
