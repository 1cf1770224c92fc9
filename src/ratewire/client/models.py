"""What the client hands out: typed ratings, summaries, updates, gap markers and errors.

Field names follow Python; the wire's camelCase names are in docs/protocol.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

EventKind = Literal["created", "updated", "deleted"]


def _timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass(frozen=True, slots=True)
class Rating:
    """One user's score (1 to 5) for one game."""

    id: str
    game_id: str
    user_id: str
    score: int
    comment: str | None
    created_at: datetime
    updated_at: datetime
    version: int

    @classmethod
    def from_wire(cls, fields: dict[str, Any]) -> Rating:
        return cls(
            id=fields["id"],
            game_id=fields["gameId"],
            user_id=fields["userId"],
            score=fields["score"],
            comment=fields.get("comment"),
            created_at=_timestamp(fields.get("createdAt") or fields["timestamp"]),
            updated_at=_timestamp(fields.get("updatedAt") or fields["timestamp"]),
            version=fields.get("version", 1),
        )


@dataclass(frozen=True, slots=True)
class Summary:
    """A game's ratings at a glance. ``histogram[s]`` counts the ratings with score ``s``."""

    game_id: str
    count: int
    mean: float | None
    bayesian_mean: float | None
    histogram: dict[int, int]

    @classmethod
    def from_wire(cls, fields: dict[str, Any]) -> Summary:
        return cls(
            game_id=fields["gameId"],
            count=fields["count"],
            mean=fields.get("mean"),
            bayesian_mean=fields.get("bayesianMean"),
            histogram={int(score): n for score, n in fields["histogram"].items()},
        )


@dataclass(frozen=True, slots=True)
class Update:
    """One change of a rating, as published on ``topic`` at ``offset``.

    ``event`` is ``created``, ``updated`` or ``deleted`` (then ``rating`` is the rating as it
    was). Offsets of a topic are gapless: the next update of the topic has ``offset + 1``."""

    topic: str
    offset: int
    event: EventKind
    rating: Rating
    #: The rating as the server sent it (camelCase JSON fields).
    data: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_wire(cls, frame: dict[str, Any]) -> Update:
        data = frame["data"]
        return cls(frame["topic"], frame["offset"], frame["event"], Rating.from_wire(data), data)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A game's summary as of ``offset`` of its topic (``subscribe(..., snapshot=True)``):
    the updates that follow start after it."""

    topic: str
    offset: int
    summary: Summary


@dataclass(frozen=True, slots=True)
class SummaryUpdate:
    """The state of a summary stream (``Client.summaries``), as of ``offset``: a game's
    ``summary`` on ``summary.game.{id}`` (``offset`` is the ``rating.game.{id}`` offset it
    includes), or the ``games`` of ``summary.games.top`` (``offset``: the ``rating.global``
    offset it includes at least). Each one replaces the one before."""

    topic: str
    offset: int
    #: The game's summary (``summary.game.{id}``; None on the top list).
    summary: Summary | None
    #: The top list, best first (``summary.games.top``; empty on a game's stream).
    games: list[Summary]
    #: ``data`` as the server sent it (camelCase JSON fields).
    data: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_wire(cls, frame: dict[str, Any]) -> SummaryUpdate:
        data = frame["data"]
        if "items" in data:
            games = [Summary.from_wire(item) for item in data["items"]]
            return cls(frame["topic"], frame["offset"], None, games, data)
        return cls(frame["topic"], frame["offset"], Summary.from_wire(data), [], data)


@dataclass(frozen=True, slots=True)
class Gap:
    """The server could not replay what this subscription missed: its history no longer
    reaches ``after`` (or the epoch changed, after a restore). Updates go on from
    ``offset``; re-read whatever state you keep (``summary()``, ``list_ratings()``)."""

    topic: str
    after: int
    offset: int


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """``GET /topics/{topic}/events``: retained events after an offset."""

    topic: str
    epoch: str
    head: int
    updates: list[Update]


class RatewireError(Exception):
    """Base of every error the client raises."""


class ApiError(RatewireError):
    """A REST request answered with an error (problem+json): ``status``, ``title``,
    ``detail`` and the ``body`` as sent."""

    def __init__(self, status: int, body: dict[str, Any], method: str, path: str) -> None:
        self.status = status
        self.body = body
        self.title = str(body.get("title", ""))
        self.detail = str(body.get("detail", ""))
        super().__init__(f"{method} {path}: {status} {self.title}: {self.detail}".rstrip(": "))


class BadRequest(ApiError):
    """400 or 422: the request was invalid (``body["errors"]`` says where, for 422)."""


class Unauthorized(ApiError):
    """401: no token, or a bad, expired or revoked one."""


class Forbidden(ApiError):
    """403: the token may not do this (another user's rating, say)."""


class NotFound(ApiError):
    """404: no such rating."""


class Conflict(ApiError):
    """409: the user rated this game already (``create``; ``rate`` replaces instead)."""


class PreconditionFailed(ApiError):
    """412: ``If-Match`` named a version that is no longer current."""


class RateLimited(ApiError):
    """429: over the REST rate limit; retry after ``retry_after`` seconds."""

    def __init__(
        self, status: int, body: dict[str, Any], method: str, path: str, retry_after: float
    ) -> None:
        super().__init__(status, body, method, path)
        self.retry_after = retry_after


class ServerUnavailable(ApiError):
    """503 (storage unreachable, at capacity) or another 5xx: retry later."""


class AuthenticationError(RatewireError):
    """The stream's token was refused (close 4001) or expired (4002) and no
    ``token_provider`` can supply a new one."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{reason} (close {code}); pass token_provider= to renew tokens")
        self.code = code
        self.reason = reason


class SubscriptionRefused(RatewireError):
    """The server refused the subscription for good (forbidden or unknown topic, or a bad
    filter); the message says why."""


class GapError(RatewireError):
    """Raised instead of yielding a :class:`Gap` when ``on_gap="raise"``."""

    def __init__(self, gap: Gap) -> None:
        super().__init__(
            f"{gap.topic}: history no longer reaches offset {gap.after}; resumed at {gap.offset}"
        )
        self.gap = gap


_ERRORS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    412: PreconditionFailed,
    422: BadRequest,
}


def api_error(
    status: int, body: dict[str, Any], method: str, path: str, retry_after: str | None
) -> ApiError:
    """The typed error of an error answer."""
    if status == 429:
        return RateLimited(status, body, method, path, float(retry_after or 1))
    if status >= 500:
        return ServerUnavailable(status, body, method, path)
    return _ERRORS.get(status, ApiError)(status, body, method, path)
