"""Outbound webhooks, as data: a registered endpoint, its topics, where its delivery stands,
and the record of each attempt. Pure: no I/O (the store keeps them, ``ratewire.webhooks``
delivers)."""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field, replace
from typing import Literal

from ratewire.domain.filters import EventFilter, FilterInput
from ratewire.domain.rating import RatingEvent
from ratewire.domain.topics import TopicKind, parse_topic

#: ``active``: delivering; ``failing``: the retry schedule ran out, the cursor waits for a
#: re-enable or a replay; ``disabled``: turned off (by an admin, or a 410 answer).
WebhookStatus = Literal["active", "failing", "disabled"]
GLOBAL = "rating.global"


def new_webhook_id() -> str:
    return "wh_" + secrets.token_hex(8)


def new_secret() -> str:
    """A signing secret in the Standard Webhooks format: ``whsec_`` and base64 of 24 bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@dataclass(frozen=True, slots=True)
class Webhook:
    """One endpoint that gets every event of its topics, in order, signed with ``secret``.

    ``cursor`` is the ``rating.global`` offset of the last event delivered (every event up
    to it went out, or was not for this webhook). ``generation`` grows with every change an
    admin makes, so a deliverer holding an older copy knows to reload it."""

    id: str
    url: str
    topics: tuple[str, ...]
    description: str
    secret: str
    created_at: int
    updated_at: int
    status: WebhookStatus = "active"
    cursor: int = 0
    generation: int = 1
    last_error: str | None = None
    lease_owner: str | None = None
    lease_until: int = 0
    #: A CEL expression (domain.filters) an event must pass to be delivered; None: every one.
    filter: str | None = None

    def changed(self, now_ms: int, **fields: object) -> Webhook:
        """A copy with ``fields`` changed by an admin (a new generation)."""
        return replace(self, updated_at=now_ms, generation=self.generation + 1, **fields)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    """One POST of one event to one webhook."""

    webhook_id: str
    message_id: str
    topic: str
    offset: int
    attempt: int
    #: ``delivered`` (2xx), ``failed`` (anything else; retried), ``gone`` (410: disabled).
    outcome: str
    status_code: int | None
    duration_ms: float
    at: int
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Progress:
    """What a deliverer writes back, fenced by its lease and the webhook's generation."""

    cursor: int
    status: WebhookStatus = "active"
    last_error: str | None = None
    attempts: list[DeliveryAttempt] = field(default_factory=list)


def valid_topic_pattern(pattern: str) -> bool:
    """Webhooks follow the topics a subscription may: ``rating.global``, ``rating.game.{id}``,
    ``rating.game.*`` and ``rating.user.{id}``."""
    return parse_topic(pattern) is not None


def event_topics(event: RatingEvent) -> list[tuple[str, int]]:
    """The (topic, offset) pairs an event was published on."""
    return [
        (GLOBAL, event.seq),
        (f"rating.game.{event.game_id}", event.game_offset),
        (f"rating.user.{event.user_id}", event.user_offset),
    ]


def matching(
    patterns: tuple[str, ...], event: RatingEvent, event_filter: EventFilter | None = None
) -> list[tuple[str, int]]:
    """The event's (topic, offset) pairs a webhook with ``patterns`` gets, in a fixed order
    (with ``event_filter``, those whose frame passes it: the topic is the event's own, a game
    topic for ``rating.game.*``)."""
    wanted = set(patterns)
    all_games = any(
        (topic := parse_topic(p)) is not None and topic.kind is TopicKind.ALL_GAMES
        for p in patterns
    )
    pairs = [
        (name, offset)
        for name, offset in event_topics(event)
        if name in wanted or (all_games and name.startswith("rating.game."))
    ]
    if event_filter is None or not pairs:
        return pairs
    frame = FilterInput()
    frame.load(event.kind, event.data)
    passing = []
    for name, offset in pairs:
        frame.place(name, offset)
        if event_filter.test(frame):
            passing.append((name, offset))
    return passing
