"""``/admin/webhooks`` (scope ``ratings:admin``): register, list, change, delete and replay
outbound webhooks, and read their delivery attempts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from ratewire.api.admin import Admin
from ratewire.api.admission import request_audit_context
from ratewire.api.problems import ApiProblem
from ratewire.api.routes import JSON
from ratewire.api.schemas import problem_responses
from ratewire.domain.webhooks import Webhook
from ratewire.webhooks.admin import InvalidWebhook, UnknownWebhook, WebhookAdmin
from ratewire.webhooks.deliverer import now_ms

router = APIRouter(prefix="/admin/webhooks", tags=["webhooks"])


async def get_webhooks(request: Request) -> WebhookAdmin:
    admin: WebhookAdmin = request.app.state.webhooks
    return admin


Webhooks = Annotated[WebhookAdmin, Depends(get_webhooks)]


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(..., description="https URL the events are POSTed to")
    topics: list[str] = Field(
        ..., description="rating.global, rating.game.{id}, rating.game.*, rating.user.{id}"
    )
    description: str = ""
    filter: str | None = Field(
        None, description="a CEL expression an event must pass to be delivered (docs/protocol.md)"
    )


class WebhookChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = None
    topics: list[str] | None = None
    description: str | None = None
    #: true resumes a failing or disabled webhook from its cursor; false disables it.
    enabled: bool | None = None
    #: A new CEL filter; "" removes the filter.
    filter: str | None = None


class WebhookReplay(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: int = Field(
        ...,
        ge=0,
        le=2**62,
        description="deliver again every event after this rating.global offset",
    )


class WebhookOut(BaseModel):
    id: str
    url: str
    topics: list[str]
    description: str
    status: str
    cursor: int
    lastError: str | None
    createdAt: int
    updatedAt: int
    deliveredBy: str | None
    filter: str | None = None
    secret: str | None = None


def webhook_wire(webhook: Webhook, *, secret: bool = False) -> dict[str, object]:
    """A webhook as the admin API shows it (the secret only when asked: at creation)."""
    shown: dict[str, object] = {
        "id": webhook.id,
        "url": webhook.url,
        "topics": list(webhook.topics),
        "description": webhook.description,
        "status": webhook.status,
        "cursor": webhook.cursor,
        "lastError": webhook.last_error,
        "createdAt": webhook.created_at,
        "updatedAt": webhook.updated_at,
        "deliveredBy": webhook.lease_owner if webhook.lease_until >= now_ms() else None,
        "filter": webhook.filter,
    }
    if secret:
        shown["secret"] = webhook.secret
    return shown


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type=JSON)


@contextmanager
def _as_problems() -> Iterator[None]:
    """The admin use cases' refusals as problem answers: 404 unknown webhook, 422 invalid."""
    try:
        yield
    except UnknownWebhook as exc:
        raise ApiProblem(404, f"no webhook {exc.args[0]!r}") from None
    except InvalidWebhook as exc:
        raise ApiProblem(422, str(exc)) from None


@router.post(
    "",
    status_code=201,
    response_model=WebhookOut,
    responses=problem_responses(401, 403, 415, 422, 429, 503),
    summary="Register a webhook; the answer shows its signing secret, once",
)
async def create_webhook(
    body: WebhookCreate, request: Request, caller: Admin, webhooks: Webhooks
) -> Response:
    with _as_problems():
        webhook = await webhooks.create(
            body.url,
            body.topics,
            body.description,
            request_audit_context(request.scope, caller),
            filter=body.filter,
        )
    answer = _json(webhook_wire(webhook, secret=True), 201)
    answer.headers["location"] = f"/admin/webhooks/{webhook.id}"
    return answer


@router.get(
    "",
    responses=problem_responses(401, 403, 429, 503),
    summary="Every webhook, oldest first",
)
async def list_webhooks(_: Admin, webhooks: Webhooks) -> Response:
    return _json({"items": [webhook_wire(w) for w in await webhooks.all()]})


@router.get(
    "/{webhook_id}",
    response_model=WebhookOut,
    responses=problem_responses(401, 403, 404, 429, 503),
    summary="One webhook",
)
async def get_webhook(webhook_id: str, _: Admin, webhooks: Webhooks) -> Response:
    with _as_problems():
        return _json(webhook_wire(await webhooks.get(webhook_id)))


@router.patch(
    "/{webhook_id}",
    response_model=WebhookOut,
    responses=problem_responses(401, 403, 404, 415, 422, 429, 503),
    summary="Change a webhook; enabled: true resumes it from its cursor",
)
async def change_webhook(
    webhook_id: str, body: WebhookChange, request: Request, caller: Admin, webhooks: Webhooks
) -> Response:
    with _as_problems():
        webhook = await webhooks.change(
            webhook_id,
            request_audit_context(request.scope, caller),
            url=body.url,
            topics=body.topics,
            description=body.description,
            enabled=body.enabled,
            filter=body.filter,
        )
    return _json(webhook_wire(webhook))


@router.delete(
    "/{webhook_id}",
    status_code=204,
    responses=problem_responses(401, 403, 404, 429, 503),
    summary="Delete a webhook",
)
async def delete_webhook(
    webhook_id: str, request: Request, caller: Admin, webhooks: Webhooks
) -> Response:
    with _as_problems():
        await webhooks.delete(webhook_id, request_audit_context(request.scope, caller))
    return Response(status_code=204)


@router.get(
    "/{webhook_id}/deliveries",
    responses=problem_responses(401, 403, 404, 429, 503),
    summary="The newest delivery attempts: outcome, answer code, duration",
)
async def webhook_deliveries(
    webhook_id: str,
    _: Admin,
    webhooks: Webhooks,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> Response:
    with _as_problems():
        attempts = await webhooks.deliveries(webhook_id, limit)
    items = []
    for attempt in attempts:
        fields = asdict(attempt)
        items.append(
            {
                "messageId": fields["message_id"],
                "topic": fields["topic"],
                "offset": fields["offset"],
                "attempt": fields["attempt"],
                "outcome": fields["outcome"],
                "statusCode": fields["status_code"],
                "durationMs": fields["duration_ms"],
                "at": fields["at"],
                "error": fields["error"],
            }
        )
    return _json({"items": items})


@router.post(
    "/{webhook_id}/replay",
    response_model=WebhookOut,
    responses=problem_responses(401, 403, 404, 415, 422, 429, 503),
    summary="Deliver again every event after a rating.global offset (and resume the webhook)",
)
async def replay_webhook(
    webhook_id: str, body: WebhookReplay, request: Request, caller: Admin, webhooks: Webhooks
) -> Response:
    with _as_problems():
        webhook = await webhooks.replay(
            webhook_id, body.since, request_audit_context(request.scope, caller)
        )
    return _json(webhook_wire(webhook))
