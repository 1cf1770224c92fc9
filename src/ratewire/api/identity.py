"""``GET /whoami``: what a bearer token is worth here, verified as every request verifies it
(keys, ``kid``, algorithms, the longest lifetime, revocation). For clients that hold a
token for someone else, such as ``ratewire mcp`` checking each agent's token."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
from fastapi import APIRouter
from pydantic import BaseModel
from starlette.responses import Response

from ratewire.api.routes import JSON, Caller
from ratewire.api.schemas import problem_responses

router = APIRouter(tags=["tokens"])


class WhoAmIOut(BaseModel):
    sub: str
    scopes: list[str]
    readOnly: bool
    expiresAt: str
    jti: str | None


@router.get(
    "/whoami",
    response_model=WhoAmIOut,
    responses=problem_responses(401, 429),
    summary="The verified identity of the bearer token",
)
async def whoami(caller: Caller) -> Response:
    body = {
        "sub": caller.sub,
        "scopes": sorted(caller.scopes),
        "readOnly": caller.read_only,
        "expiresAt": datetime.fromtimestamp(caller.expires_at, UTC).isoformat(),
        "jti": caller.jti,
    }
    return Response(orjson.dumps(body), media_type=JSON)
