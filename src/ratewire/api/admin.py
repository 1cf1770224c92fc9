"""Administration routes (scope ``ratings:admin``): token revocation."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.responses import Response

from ratewire.api.admission import request_audit_context
from ratewire.api.problems import ApiProblem
from ratewire.api.routes import JSON, require_principal
from ratewire.api.schemas import problem_responses
from ratewire.domain import validate_text
from ratewire.security.tokens import Principal
from ratewire.services.revocations import RevocationService

router = APIRouter(prefix="/admin", tags=["admin"])


async def require_admin(principal: Annotated[Principal, Depends(require_principal)]) -> Principal:
    """The caller's principal if it holds ``ratings:admin``; 403 else."""
    if not principal.is_admin:
        raise ApiProblem(403, "this needs a token with scope ratings:admin")
    return principal


async def get_revocations(request: Request) -> RevocationService:
    service: RevocationService = request.app.state.revocations
    return service


Admin = Annotated[Principal, Depends(require_admin)]
Revocations = Annotated[RevocationService, Depends(get_revocations)]


class RevocationCreate(BaseModel):
    """Exactly one of ``jti`` (that token) or ``sub`` (every token of that user issued until
    now)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    jti: str | None = Field(None, min_length=1, max_length=255)
    sub: str | None = Field(None, min_length=1, max_length=255)
    reason: str | None = Field(None, max_length=500)

    @model_validator(mode="after")
    def _exactly_one_target(self) -> RevocationCreate:
        if (self.jti is None) == (self.sub is None):
            raise ValueError("give exactly one of jti (one token) or sub (every token of a user)")
        for name in ("jti", "sub", "reason"):
            value = getattr(self, name)
            if value is not None:
                validate_text(value, name)
        return self


class RevocationOut(BaseModel):
    kind: str
    value: str
    revokedAt: float
    expiresAt: float
    revokedBy: str | None
    reason: str | None


class RevocationListOut(BaseModel):
    items: list[RevocationOut]


@router.post(
    "/revocations",
    status_code=201,
    response_model=RevocationOut,
    responses=problem_responses(401, 403, 415, 422, 429, 503),
    summary="Revoke one token (jti) or every current token of a user (sub)",
)
async def revoke(
    body: RevocationCreate, request: Request, caller: Admin, revocations: Revocations
) -> Response:
    audit = request_audit_context(request.scope, caller)
    if body.jti is not None:
        revocation = await revocations.revoke(
            "jti", body.jti, by=caller.sub, reason=body.reason, audit=audit
        )
    else:
        assert body.sub is not None
        revocation = await revocations.revoke(
            "sub", body.sub, by=caller.sub, reason=body.reason, audit=audit
        )
    return Response(orjson.dumps(revocation.to_wire()), 201, media_type=JSON)


@router.get(
    "/revocations",
    response_model=RevocationListOut,
    responses=problem_responses(401, 403, 429),
    summary="The revocations in force, newest first",
)
async def list_revocations(_: Admin, revocations: Revocations) -> Response:
    items = [entry.to_wire() for entry in revocations.entries()]
    return Response(orjson.dumps({"items": items}), media_type=JSON)
