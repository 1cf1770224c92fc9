"""Request bodies (validated in one pass by pydantic) and response shapes for OpenAPI."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from ratewire.domain import COMMENT_MAX_CHARS, validate_identifier, validate_text


def _game_id(value: object) -> str:
    return validate_identifier(value, "gameId")


def _user_id(value: object) -> str:
    return validate_identifier(value, "userId")


GameId = Annotated[str, BeforeValidator(_game_id), Field(examples=["42"])]
UserId = Annotated[str, BeforeValidator(_user_id), Field(examples=["7"])]
Score = Annotated[int, Field(strict=True, ge=1, le=5, description="1..5", examples=[4])]


def _comment(value: str) -> str:
    return validate_text(value, "comment")


Comment = Annotated[str, Field(max_length=COMMENT_MAX_CHARS), AfterValidator(_comment)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RatingCreate(_Body):
    """``POST /ratings``. ``userId`` defaults to the token's ``sub``."""

    gameId: GameId
    userId: UserId | None = None
    score: Score
    comment: Comment | None = None


class RatingReplace(_Body):
    """``PUT /games/{gameId}/ratings/{userId}``: the whole rating (an absent comment clears it)."""

    score: Score
    comment: Comment | None = None


class RatingPatch(_Body):
    """``PATCH /ratings/{id}``: ``comment: null`` removes the comment."""

    score: Score | None = None
    comment: Comment | None = None

    @model_validator(mode="after")
    def _something_to_change(self) -> RatingPatch:
        if not self.model_fields_set & {"score", "comment"}:
            raise ValueError("give score and/or comment")
        if "score" in self.model_fields_set and self.score is None:
            raise ValueError("score may not be null")
        return self


class RatingOut(BaseModel):
    """A rating as the API returns it (docs/protocol.md)."""

    id: str
    gameId: str
    userId: str
    score: int
    comment: str | None
    timestamp: str
    createdAt: str
    updatedAt: str
    version: int


class RatingPageOut(BaseModel):
    items: list[RatingOut]
    nextCursor: str | None


class SummaryOut(BaseModel):
    gameId: str
    count: int
    mean: float | None
    histogram: dict[str, int]
    bayesianMean: float | None


class TopGamesOut(BaseModel):
    items: list[SummaryOut]


class ProblemOut(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given error statuses."""
    return {
        status: {"model": ProblemOut, "content": {"application/problem+json": {}}}
        for status in statuses
    }
