"""The rating (docs/protocol.md) and the event every change of one produces."""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

EventKind = Literal["created", "updated", "deleted"]

#: The identifier rule as a JSON-schema pattern (OpenAPI, pydantic's Rust engine: there ``$``
#: means the end of the text). Python's ``re`` lets ``$`` match before a final newline, so
#: Python code checks identifiers with ``is_identifier`` (a full match), never with this.
IDENTIFIER_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_IDENTIFIER = re.compile(r"[A-Za-z0-9_-]{1,64}")
COMMENT_MAX_CHARS = 2000
SCORE_MIN, SCORE_MAX = 1, 5
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


# C0 controls but tab and newline, DEL, C1 controls, and lone surrogates (which no database
# can store as UTF-8: PostgreSQL refused NUL with an error where SQLite stored it).
_FORBIDDEN_TEXT_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def validate_text(value: str, field_name: str) -> str:
    """Return ``value`` if every backend can store it as given, else raise ``ValueError``
    naming the field and the first offending character."""
    found = _FORBIDDEN_TEXT_RE.search(value)
    if found is not None:
        raise ValueError(
            f"{field_name} may not contain control characters other than tab and newline "
            f"(found U+{ord(found.group()):04X} at position {found.start()})"
        )
    return value


def storable_text(value: str) -> str:
    """``value``, or with what UTF-8 cannot encode (lone surrogates) escaped as ``\\udfff``:
    for text from untrusted input that is kept, not refused (no store, and no JSON encoder,
    takes a lone surrogate)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode()
    return value


def is_identifier(value: str) -> bool:
    """Whether ``value`` is, as a whole, 1..64 characters of ``[A-Za-z0-9_-]``."""
    return _IDENTIFIER.fullmatch(value) is not None


def validate_identifier(value: object, field_name: str) -> str:
    """Return ``value`` as an identifier string, or raise ``ValueError`` naming the field.

    JSON integers are accepted and mean their decimal string (the guide sent numbers).
    """
    if isinstance(value, bool):
        raise ValueError(f"{field_name} must be a string or integer, not a boolean")
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str) or not is_identifier(value):
        raise ValueError(f"{field_name} must be 1..64 characters of A-Z a-z 0-9 _ -")
    return value


def utc_now() -> datetime:
    """Now, in UTC, truncated to the millisecond the wire format carries."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def format_timestamp(moment: datetime) -> str:
    """ISO-8601 UTC with milliseconds and a ``Z``, as in the guide."""
    # isoformat is C code: a third of strftime's cost, and every write formats six of these.
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


class _MonotonicUlid:
    """ULID-style ids (48-bit ms time + 80 random bits) that sort by creation in this process.

    Sorting by id gives "newest first" listing with a stable cursor, without a second index.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = 0
        self._last_random = 0

    def __call__(self) -> str:
        with self._lock:
            ms = time.time_ns() // 1_000_000
            if ms <= self._last_ms:
                ms = self._last_ms
                rand = (self._last_random + 1) & ((1 << 80) - 1)
            else:
                rand = int.from_bytes(os.urandom(10), "big")
            self._last_ms, self._last_random = ms, rand
        value = (ms << 80) | rand
        return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


_next_ulid = _MonotonicUlid()


def new_rating_id() -> str:
    """A new rating id: ``r_`` + 26 Crockford base32 characters, increasing over time."""
    return "r_" + _next_ulid()


@dataclass(frozen=True, slots=True)
class RatingDraft:
    """What a client asks to store: validated input, before ids, timestamps and versions."""

    game_id: str
    user_id: str
    score: int
    comment: str | None = None


@dataclass(frozen=True, slots=True)
class RatingChanges:
    """A partial update; ``None`` means "leave as is" (``clear_comment`` removes the comment)."""

    score: int | None = None
    comment: str | None = None
    clear_comment: bool = False

    def apply(self, rating: Rating, now: datetime) -> Rating | None:
        """The changed rating, or ``None`` if these changes change nothing."""
        score = rating.score if self.score is None else self.score
        if self.clear_comment:
            comment = None
        elif self.comment is not None:
            comment = self.comment
        else:
            comment = rating.comment
        if score == rating.score and comment == rating.comment:
            return None
        return replace(
            rating, score=score, comment=comment, updated_at=now, version=rating.version + 1
        )


@dataclass(frozen=True, slots=True)
class Rating:
    """One user's score for one game. At most one per (game_id, user_id)."""

    id: str
    game_id: str
    user_id: str
    score: int
    comment: str | None
    created_at: datetime
    updated_at: datetime
    version: int

    @classmethod
    def new(cls, draft: RatingDraft, now: datetime) -> Rating:
        """A version-1 rating made from ``draft`` at ``now``."""
        return cls(
            id=new_rating_id(),
            game_id=draft.game_id,
            user_id=draft.user_id,
            score=draft.score,
            comment=draft.comment,
            created_at=now,
            updated_at=now,
            version=1,
        )

    def to_wire(self) -> dict[str, Any]:
        """The camelCase JSON object of docs/protocol.md."""
        updated = format_timestamp(self.updated_at)
        return {
            "id": self.id,
            "gameId": self.game_id,
            "userId": self.user_id,
            "score": self.score,
            "comment": self.comment,
            "timestamp": updated,
            "createdAt": format_timestamp(self.created_at),
            "updatedAt": updated,
            "version": self.version,
        }


@dataclass(frozen=True, slots=True)
class RatingEvent:
    """One committed change, with its offset on each of its three topics.

    ``seq`` is the offset on ``rating.global``; because every change is on that topic, it is
    also the total commit order the relay follows. ``data`` is the rating as sent to clients
    (for ``deleted``, the rating as it was).
    """

    seq: int
    kind: EventKind
    game_id: str
    user_id: str
    game_offset: int
    user_offset: int
    data: dict[str, Any]
    occurred_at: datetime = field(compare=False)
    #: Wall-clock seconds when this instance's service took the write, to the microsecond
    #: (``occurred_at`` is cut to the millisecond the wire carries, which added 0-1 ms to a
    #: commit timed from it); 0.0 for an event read back or from another instance.
    began_at: float = field(default=0.0, compare=False)
