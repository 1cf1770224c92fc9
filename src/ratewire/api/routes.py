"""The REST routes of docs/protocol.md: ratings, summaries, rankings."""

from __future__ import annotations

import re
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Path, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.responses import Response

from ratewire.api.admission import AUTH_STATE_KEY, current_audit_context
from ratewire.api.problems import ApiProblem
from ratewire.api.schemas import (
    GameId,
    RatingCreate,
    RatingOut,
    RatingPageOut,
    RatingPatch,
    RatingReplace,
    SummaryOut,
    TopGamesOut,
    UserId,
    problem_responses,
)
from ratewire.domain import GameSummary, Rating, RatingChanges, RatingDraft, validate_identifier
from ratewire.domain.rating import IDENTIFIER_PATTERN
from ratewire.security.tokens import InvalidToken, Principal
from ratewire.services.ratings import RatingService

router = APIRouter()
_bearer = HTTPBearer(auto_error=False, description="A JWT from `ratewire token SUB`")
JSON = "application/json"


# Dependencies are async on purpose: FastAPI runs plain `def` dependencies in a worker
# thread, a thread hop per dependency per request (seen in a profile under load).
async def get_service(request: Request) -> RatingService:
    service: RatingService = request.app.state.service
    return service


async def require_principal(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
) -> Principal:
    """The verified token of this request (admission verified it), or 401."""
    auth = request.scope.get("state", {}).get(AUTH_STATE_KEY)
    if isinstance(auth, Principal):
        return auth
    if isinstance(auth, InvalidToken):
        raise ApiProblem(
            401, auth.reason, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
        )
    raise ApiProblem(
        401,
        "missing bearer token (Authorization: Bearer <JWT>)",
        headers={"WWW-Authenticate": "Bearer"},
    )


_VERSION_TAG = re.compile(r"[0-9]{1,18}")


def parse_if_match(value: str | None) -> int | None:
    """The version an ``If-Match`` header names (``"3"``, ``W/"3"`` or ``3``), or None."""
    if value is None:
        return None
    tag = value.strip().removeprefix("W/").strip('"')
    # ASCII digits only (str.isdigit also takes "²", which int() refuses), and few enough for
    # every store's 64-bit version column.
    if _VERSION_TAG.fullmatch(tag) is None:
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise ApiProblem(
            400,
            f'If-Match must name a version like "3" (at most 18 digits), got {shown!r}',
            slug="bad-if-match",
        )
    return int(tag)


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers=headers, media_type=JSON)


#: Stored answers must be revalidated (cheap: ETag and 304) before each use, so no HTTP cache
#: ever serves an answer older than what this server has delivered.
REVALIDATE = "no-cache"
NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {"description": "Not Modified: the `ETag` in `If-None-Match` is current"}
}


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether ``If-None-Match`` names ``etag`` (weak comparison, as RFC 9110 asks for GET)."""
    if if_none_match is None:
        return False
    bare = etag.removeprefix("W/")
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == bare:
            return True
    return False


def summary_etag(service: RatingService, summary: GameSummary) -> str:
    """The game topic's offset names the summary's state (the epoch: which database's)."""
    return f'"{service.store.epoch}-{summary.offset}"'


def _not_modified(etag: str) -> Response:
    return Response(status_code=304, headers={"ETag": etag, "Cache-Control": REVALIDATE})


def _rating_response(rating: Rating, status: int = 200, *, location: bool = False) -> Response:
    headers = {"ETag": f'"{rating.version}"', "Cache-Control": REVALIDATE}
    if location:
        headers["Location"] = f"/ratings/{rating.id}"
    return _json(rating.to_wire(), status, headers)


Service = Annotated[RatingService, Depends(get_service)]
Caller = Annotated[Principal, Depends(require_principal)]
IfMatch = Annotated[str | None, Header(alias="If-Match", description='"<version>"')]
IfNoneMatch = Annotated[
    str | None,
    Header(alias="If-None-Match", description="the ETag of an answer you hold: 304 if current"),
]
RatingId = Annotated[str, Path(max_length=64)]
#: Documents the identifier rule (validate_identifier enforces it, with its own message).
IdentifierInPath = Path(pattern=IDENTIFIER_PATTERN)


@router.post(
    "/ratings",
    status_code=201,
    response_model=RatingOut,
    responses=problem_responses(401, 403, 409, 413, 415, 422, 429),
    summary="Create a rating",
)
async def create_rating(body: RatingCreate, service: Service, caller: Caller) -> Response:
    draft = RatingDraft(body.gameId, body.userId or caller.sub, body.score, body.comment)
    if body.userId is None:
        validate_identifier(caller.sub, "userId (from the token's sub)")
    result = await service.create(caller, draft, current_audit_context())
    return _rating_response(result.rating, 201, location=True)


@router.put(
    "/games/{gameId}/ratings/{userId}",
    response_model=RatingOut,
    responses={201: {"model": RatingOut}, **problem_responses(401, 403, 412, 415, 422, 429)},
    summary="Create or replace the rating of one user for one game (idempotent)",
)
async def upsert_rating(
    gameId: Annotated[GameId, IdentifierInPath],
    userId: Annotated[UserId, IdentifierInPath],
    body: RatingReplace,
    service: Service,
    caller: Caller,
    if_match: IfMatch = None,
) -> Response:
    draft = RatingDraft(gameId, userId, body.score, body.comment)
    result = await service.upsert(caller, draft, parse_if_match(if_match), current_audit_context())
    return _rating_response(result.rating, 201 if result.created else 200, location=result.created)


@router.get(
    "/ratings/{rating_id}",
    response_model=RatingOut,
    responses={**NOT_MODIFIED, **problem_responses(404)},
)
async def get_rating(
    rating_id: RatingId, service: Service, if_none_match: IfNoneMatch = None
) -> Response:
    rating = await service.get(rating_id)
    etag = f'"{rating.version}"'
    if etag_matches(if_none_match, etag):
        return _not_modified(etag)
    return _rating_response(rating)


@router.patch(
    "/ratings/{rating_id}",
    response_model=RatingOut,
    responses=problem_responses(401, 403, 404, 412, 415, 422),
    summary="Change score and/or comment",
)
async def patch_rating(
    rating_id: RatingId,
    body: RatingPatch,
    service: Service,
    caller: Caller,
    if_match: IfMatch = None,
) -> Response:
    changes = RatingChanges(
        score=body.score,
        comment=body.comment,
        clear_comment="comment" in body.model_fields_set and body.comment is None,
    )
    result = await service.update(
        caller, rating_id, changes, parse_if_match(if_match), current_audit_context()
    )
    return _rating_response(result.rating)


@router.delete(
    "/ratings/{rating_id}", status_code=204, responses=problem_responses(401, 403, 404, 412)
)
async def delete_rating(
    rating_id: RatingId,
    service: Service,
    caller: Caller,
    if_match: IfMatch = None,
) -> Response:
    await service.delete(caller, rating_id, parse_if_match(if_match), current_audit_context())
    return Response(status_code=204)


@router.get(
    "/ratings",
    response_model=RatingPageOut,
    responses=problem_responses(422),
    summary="List ratings",
)
async def list_ratings(
    service: Service,
    gameId: Annotated[GameId | None, Query()] = None,
    userId: Annotated[UserId | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    page = await service.list_ratings(gameId, userId, limit, cursor)
    return _json({"items": [r.to_wire() for r in page.items], "nextCursor": page.next_cursor})


@router.get("/games/top", response_model=TopGamesOut, summary="Games by Bayesian mean")
async def top_games(
    service: Service,
    limit: Annotated[int, Query(ge=1, le=500)] = 10,
    minCount: Annotated[int, Query(ge=1, le=2**31 - 1)] = 1,
) -> Response:
    games = await service.top_games(limit, minCount)
    return _json({"items": [service.summary_wire(s) for s in games]})


@router.get(
    "/games/{gameId}/summary",
    response_model=SummaryOut,
    responses={**NOT_MODIFIED, **problem_responses(422)},
)
async def game_summary(
    gameId: Annotated[GameId, IdentifierInPath],
    service: Service,
    if_none_match: IfNoneMatch = None,
) -> Response:
    summary = await service.summary(gameId)
    etag = summary_etag(service, summary)
    if etag_matches(if_none_match, etag):
        return _not_modified(etag)
    headers = {"ETag": etag, "Cache-Control": REVALIDATE}
    return _json(service.summary_wire(summary), headers=headers)
