"""``/consumers``: durable consumers for agents that call tools rather than hold sockets
(docs/protocol.md, "Durable consumers"). A consumer belongs to the token's ``sub``; its topic
needs the same permission as subscribing to it.

Acking offsets no member was ever given (above the consumer's cursor) answers 409 naming them;
offsets acked already are accepted again (an ack repeated after a lost answer is harmless).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from ratewire.api.admission import request_audit_context
from ratewire.api.problems import ApiProblem
from ratewire.api.routes import JSON, Caller
from ratewire.api.schemas import problem_responses
from ratewire.domain import parse_topic
from ratewire.security.permissions import may_subscribe
from ratewire.security.tokens import Principal
from ratewire.services.consumers import (
    ACK_WAIT_RANGE,
    MAX_ACK_OFFSETS,
    MAX_IN_FLIGHT_RANGE,
    ConsumerService,
    InvalidConsumer,
    UnknownConsumer,
)
from ratewire.storage.consumer_store import ConsumerKey

router = APIRouter(prefix="/consumers", tags=["consumers"])
#: Longest a fetch waits for its first event.
MAX_WAIT_MS = 30_000


async def get_consumers(request: Request) -> ConsumerService:
    service: ConsumerService = request.app.state.consumers
    return service


Consumers = Annotated[ConsumerService, Depends(get_consumers)]
Name = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
TopicQuery = Annotated[str, Query(min_length=1, max_length=100, description="the topic")]


class FetchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    topic: str = Field(..., max_length=100, description="rating.global, rating.game.{id}, ...")
    max: int = Field(10, ge=1, le=MAX_IN_FLIGHT_RANGE[1], description="events at most")
    waitMs: int = Field(0, ge=0, le=MAX_WAIT_MS, description="wait this long for the first")
    since: int | None = Field(
        None, ge=0, le=2**62, description="a new consumer starts after this offset"
    )
    ackWaitMs: int | None = Field(None, ge=ACK_WAIT_RANGE[0], le=ACK_WAIT_RANGE[1])
    maxInFlight: int | None = Field(None, ge=MAX_IN_FLIGHT_RANGE[0], le=MAX_IN_FLIGHT_RANGE[1])
    filter: str | None = Field(None, max_length=1024, description="fixed at creation")


class AckIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    topic: str = Field(..., max_length=100)
    offsets: list[Annotated[int, Field(ge=1, le=2**62)]] = Field(
        ..., min_length=1, max_length=MAX_ACK_OFFSETS
    )


class EventOut(BaseModel):
    type: str
    topic: str
    offset: int
    event: str
    data: dict[str, object]
    consumer: str
    delivery: int


class FetchOut(BaseModel):
    events: list[EventOut]


class ConsumerOut(BaseModel):
    name: str
    topic: str
    ackFloor: int
    pending: int
    lag: int
    members: int
    ackWaitMs: int
    maxInFlight: int
    filter: str | None
    createdAt: int
    activeAt: int


class ConsumersOut(BaseModel):
    items: list[ConsumerOut]


def _json(body: object) -> Response:
    return Response(orjson.dumps(body), media_type=JSON)


def _key(caller: Principal, name: str, topic: str) -> ConsumerKey:
    """The caller's consumer ``name`` on ``topic``: 404 for no such topic, 403 for one the
    token may not follow."""
    parsed = parse_topic(topic)
    if parsed is None or not parsed.has_history:
        raise ApiProblem(404, f"no topic {topic!r} with offsets", slug="unknown-topic")
    if not may_subscribe(caller, parsed):
        raise ApiProblem(403, f"this token may not follow {topic}")
    return ConsumerKey(caller.sub, name, parsed.name)


@contextmanager
def _as_problems() -> Iterator[None]:
    try:
        yield
    except UnknownConsumer as exc:
        raise ApiProblem(404, str(exc), slug="unknown-consumer") from None
    except InvalidConsumer as exc:
        raise ApiProblem(422, str(exc)) from None


@router.post(
    "/{name}/fetch",
    response_model=FetchOut,
    responses=problem_responses(401, 403, 404, 415, 422, 429, 503),
    summary="Take up to `max` events of a consumer (created if new), waiting up to `waitMs`",
)
async def fetch(
    request: Request, name: Name, body: FetchIn, caller: Caller, consumers: Consumers
) -> Response:
    key = _key(caller, name, body.topic)
    with _as_problems():
        opened = await consumers.open(
            key,
            since=body.since,
            ack_wait_ms=body.ackWaitMs,
            max_in_flight=body.maxInFlight,
            event_filter=body.filter,
            context=request_audit_context(request.scope, caller),
        )
        most = min(body.max, opened.consumer.max_in_flight)
        items = await consumers.fetch(opened, most, body.waitMs, gone=request.is_disconnected)
    return _json({"events": [item.wire(key.topic, name) for item in items]})


@router.post(
    "/{name}/ack",
    status_code=204,
    responses=problem_responses(401, 403, 404, 409, 415, 422, 429, 503),
    summary="Ack offsets delivered by the consumer (409 names any never delivered)",
)
async def ack(name: Name, body: AckIn, caller: Caller, consumers: Consumers) -> Response:
    key = _key(caller, name, body.topic)
    with _as_problems():
        outcome = await consumers.ack(key, body.offsets)
    if outcome.refused:
        raise ApiProblem(
            409,
            f"offsets {list(outcome.refused)[:20]} of {key.topic} were never delivered by "
            f"consumer {name!r} (the others named were acked)",
            slug="not-delivered",
            refused=list(outcome.refused),
            acked=list(outcome.acked),
        )
    return Response(status_code=204)


@router.get(
    "/{name}",
    response_model=ConsumerOut,
    responses=problem_responses(401, 403, 404, 429, 503),
    summary="A consumer's position: ackFloor, pending, lag, members",
)
async def get(name: Name, topic: TopicQuery, caller: Caller, consumers: Consumers) -> Response:
    key = _key(caller, name, topic)
    with _as_problems():
        consumer = await consumers.get(key)
    return _json(await consumers.status(consumer))


@router.delete(
    "/{name}",
    status_code=204,
    responses=problem_responses(401, 403, 404, 429, 503),
    summary="Delete a consumer and its position",
)
async def delete(
    request: Request, name: Name, topic: TopicQuery, caller: Caller, consumers: Consumers
) -> Response:
    key = _key(caller, name, topic)
    if not await consumers.remove(key, request_audit_context(request.scope, caller)):
        raise ApiProblem(404, f"no consumer {name!r} on {key.topic}", slug="unknown-consumer")
    return Response(status_code=204)


@router.get(
    "",
    response_model=ConsumersOut,
    responses=problem_responses(401, 429, 503),
    summary="The caller's own consumers",
)
async def owned(caller: Caller, consumers: Consumers) -> Response:
    mine = await consumers.owned_by(caller.sub)
    return _json({"items": [await consumers.status(c) for c in mine]})


__all__ = ["router"]
