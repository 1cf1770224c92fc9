"""``GET /audit``: the audit log, for administrators (scope ``ratings:admin``)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel
from starlette.responses import Response

from ratewire.api.admin import Admin
from ratewire.api.problems import ApiProblem
from ratewire.api.routes import JSON
from ratewire.api.schemas import problem_responses
from ratewire.audit import AuditQuery
from ratewire.domain import epoch_ms
from ratewire.services.ratings import RatingService

router = APIRouter(tags=["admin"])


class AuditEntryOut(BaseModel):
    seq: int
    at: str
    action: str
    actor: str | None
    scopes: list[str]
    ip: str | None
    requestId: str | None
    ratingId: str | None
    detail: dict[str, Any]
    mac: str


class AuditPageOut(BaseModel):
    items: list[AuditEntryOut]
    nextCursor: str | None


def _cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"audit:{seq}".encode()).decode().rstrip("=")


def _seq_of(cursor: str) -> int:
    try:
        decoded = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, seq = decoded.partition(":")
        if kind == "audit" and seq.isdigit():
            return int(seq)
    except (ValueError, UnicodeDecodeError):
        pass
    raise ApiProblem(422, f"cursor {cursor!r} is not one this server handed out")


def _ms(moment: datetime | None) -> int | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # times without a zone are UTC
    return epoch_ms(moment)


@router.get(
    "/audit",
    response_model=AuditPageOut,
    responses=problem_responses(401, 403, 422, 429, 503),
    summary="Audit log entries, newest first (filters combine with AND)",
)
async def audit_log(
    request: Request,
    _: Admin,
    actor: Annotated[str | None, Query(max_length=255)] = None,
    action: Annotated[str | None, Query(max_length=32)] = None,
    ratingId: Annotated[str | None, Query(max_length=40)] = None,
    ip: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[datetime | None, Query(description="ISO 8601; from this time on")] = None,
    until: Annotated[datetime | None, Query(description="ISO 8601; before this time")] = None,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    service: RatingService = request.app.state.service
    query = AuditQuery(
        actor=actor,
        action=action,
        rating_id=ratingId,
        ip=ip,
        since_ms=_ms(since),
        until_ms=_ms(until),
        before_seq=_seq_of(cursor) if cursor else None,
        limit=limit + 1,
    )
    entries = await service.store.audit_entries(query)
    more = len(entries) > limit
    entries = entries[:limit]
    body = {
        "items": [entry.to_wire() for entry in entries],
        "nextCursor": _cursor(entries[-1].seq) if more else None,
    }
    return Response(orjson.dumps(body), media_type=JSON)


__all__ = ["router"]
