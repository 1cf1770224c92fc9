"""Where webhooks, their cursors and their delivery attempts are kept: the
:class:`WebhookStore` protocol every storage backend provides (``store.webhooks``), and the
in-memory one.

Writes from a deliverer are fenced twice: by its lease (one instance delivers a webhook at a
time; a lease that expired went to another) and by the webhook's ``generation`` (an admin
changed it meanwhile: reload before going on), so neither can undo the other's change.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Protocol

from ratewire.domain.webhooks import DeliveryAttempt, Progress, Webhook

#: Delivery attempts kept per webhook (newest first); older ones are dropped as new ones come.
ATTEMPTS_KEPT = 200
#: Fields an admin may change through :meth:`WebhookStore.update`.
CHANGEABLE = frozenset({"url", "topics", "description", "status", "cursor", "last_error", "filter"})


class WebhookStore(Protocol):
    async def add(self, webhook: Webhook) -> None:
        """Register a new webhook."""

    async def get(self, webhook_id: str) -> Webhook | None: ...

    async def all(self) -> list[Webhook]:
        """Every webhook, oldest first."""

    async def update(self, webhook_id: str, now_ms: int, **fields: Any) -> Webhook | None:
        """Change ``fields`` (see :data:`CHANGEABLE`) as an admin: a new generation. None if
        there is no such webhook."""

    async def remove(self, webhook_id: str) -> bool:
        """Delete a webhook and its attempts; False if there was none."""

    async def acquire(self, webhook_id: str, owner: str, now_ms: int, lease_ms: int) -> bool:
        """Take or renew the delivery lease until ``now_ms + lease_ms``: True if ``owner``
        holds it now (it was free, expired, or already its own)."""

    async def release(self, webhook_id: str, owner: str) -> None:
        """Give the lease up (a stopping instance), if ``owner`` holds it."""

    async def save(
        self, webhook_id: str, owner: str, generation: int, progress: Progress, now_ms: int
    ) -> bool:
        """Store a deliverer's progress (cursor, status, attempts) if ``owner`` still holds an
        unexpired lease and the webhook is still at ``generation``; False (nothing written)
        otherwise."""

    async def attempts(self, webhook_id: str, limit: int) -> list[DeliveryAttempt]:
        """The newest delivery attempts, newest first."""


class MemoryWebhookStore:
    """A :class:`WebhookStore` in this process (the memory backend, and tests)."""

    def __init__(self) -> None:
        self._webhooks: dict[str, Webhook] = {}
        self._attempts: dict[str, list[DeliveryAttempt]] = {}

    async def add(self, webhook: Webhook) -> None:
        self._webhooks[webhook.id] = webhook
        self._attempts[webhook.id] = []

    async def get(self, webhook_id: str) -> Webhook | None:
        return self._webhooks.get(webhook_id)

    async def all(self) -> list[Webhook]:
        return sorted(self._webhooks.values(), key=lambda w: (w.created_at, w.id))

    async def update(self, webhook_id: str, now_ms: int, **fields: Any) -> Webhook | None:
        assert set(fields) <= CHANGEABLE, set(fields) - CHANGEABLE
        current = self._webhooks.get(webhook_id)
        if current is None:
            return None
        changed = current.changed(now_ms, **fields)
        self._webhooks[webhook_id] = changed
        return changed

    async def remove(self, webhook_id: str) -> bool:
        self._attempts.pop(webhook_id, None)
        return self._webhooks.pop(webhook_id, None) is not None

    async def acquire(self, webhook_id: str, owner: str, now_ms: int, lease_ms: int) -> bool:
        current = self._webhooks.get(webhook_id)
        if current is None:
            return False
        if current.lease_owner not in (None, owner) and current.lease_until >= now_ms:
            return False
        self._webhooks[webhook_id] = replace(
            current, lease_owner=owner, lease_until=now_ms + lease_ms
        )
        return True

    async def release(self, webhook_id: str, owner: str) -> None:
        current = self._webhooks.get(webhook_id)
        if current is not None and current.lease_owner == owner:
            self._webhooks[webhook_id] = replace(current, lease_owner=None, lease_until=0)

    async def save(
        self, webhook_id: str, owner: str, generation: int, progress: Progress, now_ms: int
    ) -> bool:
        current = self._webhooks.get(webhook_id)
        if (
            current is None
            or current.lease_owner != owner
            or current.lease_until < now_ms
            or current.generation != generation
        ):
            return False
        self._webhooks[webhook_id] = replace(
            current,
            cursor=progress.cursor,
            status=progress.status,
            last_error=progress.last_error,
        )
        kept = self._attempts.setdefault(webhook_id, [])
        kept[:0] = reversed(progress.attempts)
        del kept[ATTEMPTS_KEPT:]
        return True

    async def attempts(self, webhook_id: str, limit: int) -> list[DeliveryAttempt]:
        return self._attempts.get(webhook_id, [])[:limit]
