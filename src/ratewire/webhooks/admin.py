"""Managing webhooks (the use cases behind ``/admin/webhooks`` and ``ratewire webhook``):
checks what a webhook may be, keeps it in the store, and records every change in the audit
log."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ratewire.audit import AuditContext
from ratewire.audit.log import AuditLog
from ratewire.config import WebhooksSettings
from ratewire.domain import validate_text
from ratewire.domain.filters import BadFilter, compile_filter
from ratewire.domain.webhooks import (
    DeliveryAttempt,
    Webhook,
    new_secret,
    new_webhook_id,
    valid_topic_pattern,
)
from ratewire.storage.webhook_store import WebhookStore
from ratewire.webhooks.addresses import RefusedUrl, check_url

MAX_TOPICS = 20
MAX_URL = 2048
MAX_DESCRIPTION = 500


class InvalidWebhook(ValueError):
    """The request names something a webhook may not have; the text says what."""


class UnknownWebhook(LookupError):
    """No webhook has this id."""


@dataclass
class WebhookAdmin:
    store: WebhookStore
    settings: WebhooksSettings
    #: The head of rating.global: a new webhook gets the events committed after it.
    global_head: Callable[[], Awaitable[int]]
    audit: AuditLog | None = None
    #: Told after every change (this instance's deliverer looks at once).
    on_change: Callable[[], None] = lambda: None

    async def _checked_url(self, url: str) -> str:
        if not url or len(url) > MAX_URL or not url.isascii() or not url.isprintable():
            raise InvalidWebhook(f"url must be 1 to {MAX_URL} printable ASCII characters")
        try:
            await check_url(
                url,
                allow_http=self.settings.allow_insecure_http,
                allow_private=self.settings.allow_private_networks,
            )
        except RefusedUrl as exc:
            raise InvalidWebhook(str(exc)) from None
        return url

    @staticmethod
    def _checked_topics(topics: list[str]) -> tuple[str, ...]:
        if not 1 <= len(topics) <= MAX_TOPICS:
            raise InvalidWebhook(f"topics: give 1 to {MAX_TOPICS} topics")
        for topic in topics:
            if not valid_topic_pattern(topic):
                raise InvalidWebhook(
                    f"topics: no topic {topic!r}; topics are rating.global, "
                    "rating.game.{gameId}, rating.game.* and rating.user.{userId}"
                )
        return tuple(dict.fromkeys(topics))

    @staticmethod
    def _checked_filter(expression: str) -> str:
        try:
            return compile_filter(expression).source
        except BadFilter as exc:
            raise InvalidWebhook(f"filter: {exc.message}") from None

    @staticmethod
    def _checked_description(description: str) -> str:
        if len(description) > MAX_DESCRIPTION:
            raise InvalidWebhook(f"description: at most {MAX_DESCRIPTION} characters")
        try:
            return validate_text(description, "description")
        except ValueError as exc:
            raise InvalidWebhook(str(exc)) from None

    def _record(self, action: str, context: AuditContext | None, **detail: Any) -> None:
        self.on_change()
        if self.audit is not None:
            self.audit.record(action, context, **detail)

    async def create(
        self,
        url: str,
        topics: list[str],
        description: str = "",
        context: AuditContext | None = None,
        filter: str | None = None,
    ) -> Webhook:
        """Register a webhook: it gets every event of its topics committed from now on (with
        a ``filter``, those that pass it)."""
        now = int(time.time() * 1000)
        webhook = Webhook(
            id=new_webhook_id(),
            url=await self._checked_url(url),
            topics=self._checked_topics(topics),
            description=self._checked_description(description),
            secret=new_secret(),
            created_at=now,
            updated_at=now,
            cursor=await self.global_head(),
            filter=None if filter is None else self._checked_filter(filter),
        )
        await self.store.add(webhook)
        shown_filter = {} if filter is None else {"filter": filter}
        self._record(
            "webhook.create", context, webhook=webhook.id, url=url, topics=topics, **shown_filter
        )
        return webhook

    async def all(self) -> list[Webhook]:
        return await self.store.all()

    async def get(self, webhook_id: str) -> Webhook:
        webhook = await self.store.get(webhook_id)
        if webhook is None:
            raise UnknownWebhook(webhook_id)
        return webhook

    async def change(
        self,
        webhook_id: str,
        context: AuditContext | None = None,
        *,
        url: str | None = None,
        topics: list[str] | None = None,
        description: str | None = None,
        enabled: bool | None = None,
        filter: str | None = None,
    ) -> Webhook:
        """Change a webhook; ``enabled=True`` resumes a failing or disabled one from its
        cursor, ``False`` disables it; ``filter=""`` removes its filter."""
        fields: dict[str, Any] = {}
        if url is not None:
            fields["url"] = await self._checked_url(url)
        if topics is not None:
            fields["topics"] = self._checked_topics(topics)
        if description is not None:
            fields["description"] = self._checked_description(description)
        if filter is not None:
            fields["filter"] = self._checked_filter(filter) if filter else None
        if enabled is not None:
            fields["status"] = "active" if enabled else "disabled"
            fields["last_error"] = None
        if not fields:
            return await self.get(webhook_id)
        changed = await self.store.update(webhook_id, int(time.time() * 1000), **fields)
        if changed is None:
            raise UnknownWebhook(webhook_id)
        shown = {k: list(v) if k == "topics" else v for k, v in fields.items()}
        self._record("webhook.change", context, webhook=webhook_id, **shown)
        return changed

    async def delete(self, webhook_id: str, context: AuditContext | None = None) -> None:
        if not await self.store.remove(webhook_id):
            raise UnknownWebhook(webhook_id)
        self._record("webhook.delete", context, webhook=webhook_id)

    async def replay(
        self, webhook_id: str, since: int, context: AuditContext | None = None
    ) -> Webhook:
        """Deliver again every event after ``since`` (a rating.global offset), and resume a
        failing or disabled webhook."""
        if since < 0:
            raise InvalidWebhook("since must be >= 0")
        changed = await self.store.update(
            webhook_id, int(time.time() * 1000), cursor=since, status="active", last_error=None
        )
        if changed is None:
            raise UnknownWebhook(webhook_id)
        self._record("webhook.replay", context, webhook=webhook_id, since=since)
        return changed

    async def deliveries(self, webhook_id: str, limit: int) -> list[DeliveryAttempt]:
        await self.get(webhook_id)
        return await self.store.attempts(webhook_id, limit)
