"""``GET /topics/{topic}/events``: a topic's retained history over REST (docs/protocol.md).

The same events, offsets and epoch a WebSocket resume with ``since`` would replay; the same
permissions as subscribing.
"""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Path, Query
from starlette.responses import Response

from ratewire.api.problems import ApiProblem
from ratewire.api.routes import Caller, Service
from ratewire.api.schemas import problem_responses
from ratewire.domain import event_offset, parse_topic
from ratewire.security.permissions import may_subscribe

router = APIRouter()


@router.get(
    "/topics/{topic}/events",
    responses=problem_responses(401, 403, 404, 410),
    summary="History of a topic (what `since` resume replays)",
)
async def topic_events(
    topic: Annotated[str, Path(max_length=80)],
    service: Service,
    caller: Caller,
    since: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    parsed = parse_topic(topic)
    if parsed is None or not parsed.has_history:
        raise ApiProblem(404, f"no topic {topic!r} with a history", slug="unknown-topic")
    if not may_subscribe(caller, parsed):
        raise ApiProblem(403, f"this token may not read {topic}")
    store = service.store
    head = await store.topic_head(parsed)
    events = await store.topic_events(parsed, since, limit) if since < head else []
    if since < head and (not events or event_offset(events[0], parsed) != since + 1):
        oldest = await store.topic_events(parsed, 0, 1)
        raise ApiProblem(
            410,
            f"history of {topic} no longer reaches offset {since}; the oldest retained is "
            f"{event_offset(oldest[0], parsed) if oldest else head + 1}; re-sync through REST",
            slug="history-gone",
            head=head,
            epoch=store.epoch,
        )
    body = {
        "topic": parsed.name,
        "epoch": store.epoch,
        "head": head,
        "events": [
            {
                "type": "rating_update",
                "topic": parsed.name,
                "offset": event_offset(event, parsed),
                "event": event.kind,
                "data": event.data,
            }
            for event in events
        ],
    }
    return Response(orjson.dumps(body), media_type="application/json")


__all__ = ["router"]
