"""Delivering webhooks: every event of a webhook's topics as one signed POST, in ``rating.global``
order (so in offset order on every topic), one event in flight per webhook.

A webhook is delivered by the instance that holds its lease (renewed every second, taken over
by another instance once it lapses: a SIGKILLed deliverer's webhooks move within
``webhooks.lease_seconds``). The deliverer reads events from the store's history after the
webhook's cursor; a 2xx moves the cursor, which is written back (fenced by the lease) at most
every 0.2 s and at the end of each page, so a crash repeats at most that much, with the same
``webhook-id``s: at-least-once on the wire, exactly once for a receiver that keeps the ids.

Anything but a 2xx is retried on ``webhooks.retry_schedule_seconds`` (with jitter); after the
last wait the webhook is marked ``failing`` and keeps its cursor. A 410 disables it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Literal

import httpcore
import httpx
import orjson

from ratewire import __version__
from ratewire.client.webhooks import sign
from ratewire.config import WebhooksSettings
from ratewire.domain import RatingEvent, parse_topic
from ratewire.domain.filters import BadFilter, EventFilter, compile_filter
from ratewire.domain.webhooks import (
    GLOBAL,
    DeliveryAttempt,
    Progress,
    Webhook,
    WebhookStatus,
    matching,
)
from ratewire.storage import RatingStore
from ratewire.webhooks.addresses import GuardedNetworkBackend

log = logging.getLogger("ratewire.webhooks")
PAGE = 100
#: Progress is written back at least this often while events go out.
SAVE_EVERY_SECONDS = 0.2
#: Bytes of an answer read (its status is what counts; the body only names errors).
ANSWER_BYTES = 1024
_GLOBAL = parse_topic(GLOBAL)
Outcome = Literal["delivered", "failed", "gone"]


class LeaseLost(Exception):
    """Another instance delivers this webhook now, or it was deleted."""


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class WebhookStats:
    """Counts for /metrics."""

    attempts: Counter[str] = field(default_factory=Counter)
    delivered: int = 0
    #: Webhook id -> when its oldest event not delivered yet was committed (epoch seconds).
    oldest_pending: dict[str, float] = field(default_factory=dict)

    def backlog_seconds(self) -> dict[str, float]:
        now = time.time()
        return {webhook: max(0.0, now - at) for webhook, at in self.oldest_pending.items()}


def guarded_client(settings: WebhooksSettings) -> httpx.AsyncClient:
    """An HTTP client that connects only where :mod:`ratewire.webhooks.addresses` allows,
    follows no redirect, and gives up on connecting after ``connect_timeout_seconds``."""
    transport = httpx.AsyncHTTPTransport()
    # httpx has no setting for the network backend: its pool is rebuilt around the guarded one
    # (tests/unit/test_webhook_addresses.py fails if this stops taking effect).
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        network_backend=GuardedNetworkBackend(allow_private=settings.allow_private_networks),
        max_connections=100,
        max_keepalive_connections=20,
        keepalive_expiry=5.0,
    )
    timeout = httpx.Timeout(settings.timeout_seconds, connect=settings.connect_timeout_seconds)
    return httpx.AsyncClient(
        transport=transport,
        timeout=timeout,
        follow_redirects=False,
        headers={"user-agent": f"ratewire/{__version__}"},
    )


class WebhookDeliverer:
    """Holds the leases of the webhooks this instance delivers and runs one task for each."""

    def __init__(
        self,
        store: RatingStore,
        settings: WebhooksSettings,
        owner: str,
        *,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._store = store
        self._hooks = store.webhooks
        self._settings = settings
        self._owner = owner
        self._lease_ms = int(settings.lease_seconds * 1000)
        self._client = client or guarded_client(settings)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._new_events = asyncio.Event()
        self._changed = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self.stats = WebhookStats()

    def notify(self, *_: object) -> None:
        """New events were committed: wake the webhooks waiting for some."""
        self._new_events.set()

    def changed(self) -> None:
        """A webhook was added or changed here: look at the leases now, not within a second."""
        self._changed.set()

    def start(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(self._run(), name="webhooks")

    async def stop(self) -> None:
        """Stop delivering and give the leases up, so another instance goes on at once."""
        tasks = [t for t in (self._runner, *self._tasks.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for webhook_id in list(self._tasks):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._hooks.release(webhook_id, self._owner), 2)
        self._tasks.clear()
        await self._client.aclose()

    # -- leases ---------------------------------------------------------------------------

    async def _run(self) -> None:
        interval = min(1.0, self._settings.lease_seconds / 3)
        while True:
            try:
                await self._hold_leases()
            except Exception as exc:  # the store is unreachable: the leases lapse, retry
                log.warning("webhooks: cannot read or lease webhooks (%s); retrying", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), interval)
            self._changed.clear()

    async def _hold_leases(self) -> None:
        held = set()
        for webhook in await self._hooks.all():
            if webhook.status != "active":
                continue
            if await self._hooks.acquire(webhook.id, self._owner, now_ms(), self._lease_ms):
                held.add(webhook.id)
                task = self._tasks.get(webhook.id)
                if task is None or task.done():
                    self._tasks[webhook.id] = asyncio.get_running_loop().create_task(
                        self._follow(webhook.id), name=f"webhook-{webhook.id}"
                    )
        for webhook_id in list(self._tasks):
            if webhook_id not in held:
                self._tasks.pop(webhook_id).cancel()
                self.stats.oldest_pending.pop(webhook_id, None)

    # -- one webhook ----------------------------------------------------------------------

    async def _follow(self, webhook_id: str) -> None:
        try:
            await self._deliver(webhook_id)
        except (LeaseLost, asyncio.CancelledError):
            pass
        except Exception as exc:
            log.warning(
                "webhook %s: delivery stopped (%s); the lease loop restarts it", webhook_id, exc
            )
        finally:
            self.stats.oldest_pending.pop(webhook_id, None)

    async def _deliver(self, webhook_id: str) -> None:
        webhook = await self._reload(webhook_id)
        assert _GLOBAL is not None
        while webhook.status == "active":
            waiting = self._new_events
            events = await self._store.topic_events(_GLOBAL, webhook.cursor, PAGE)
            if not events:
                self.stats.oldest_pending.pop(webhook_id, None)
                if waiting.is_set():  # something was committed while it read: read again
                    if self._new_events is waiting:
                        self._new_events = asyncio.Event()
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiting.wait(), 1.0)
                webhook = await self._reload(webhook_id)  # an admin may have changed it
                continue
            if events[0].seq != webhook.cursor + 1:
                log.warning(
                    "webhook %s: history no longer reaches offset %d of rating.global; "
                    "going on from %d",
                    webhook_id,
                    webhook.cursor + 1,
                    events[0].seq,
                )
            webhook = await self._deliver_page(webhook, events)

    async def _reload(self, webhook_id: str) -> Webhook:
        webhook = await self._hooks.get(webhook_id)
        if webhook is None or webhook.lease_owner != self._owner:
            raise LeaseLost(webhook_id)
        return webhook

    async def _deliver_page(self, webhook: Webhook, events: list[RatingEvent]) -> Webhook:
        """Deliver a page of events; the webhook as it stands after (reloaded if an admin
        changed it meanwhile)."""
        cursor = webhook.cursor
        attempts: list[DeliveryAttempt] = []
        saved_at = time.monotonic()
        event_filter = _compiled_filter(webhook)
        for event in events:
            self.stats.oldest_pending[webhook.id] = event.occurred_at.timestamp()
            for topic, offset in matching(webhook.topics, event, event_filter):
                body = orjson.dumps(
                    {
                        "type": "rating_update",
                        "topic": topic,
                        "offset": offset,
                        "epoch": self._store.epoch,
                        "event": event.kind,
                        "data": event.data,
                    }
                )
                message_id = f"msg_{self._store.epoch}_{topic}_{offset}"
                status = await self._send(
                    webhook, message_id, topic, offset, body, cursor, attempts
                )
                if status != "active":
                    error = attempts[-1].error if attempts else None
                    await self._save(webhook, Progress(cursor, status, error, attempts))
                    return await self._reload(webhook.id)
            cursor = event.seq
            if time.monotonic() - saved_at >= SAVE_EVERY_SECONDS:
                if not await self._save(webhook, Progress(cursor, "active", None, attempts)):
                    return await self._reload(webhook.id)
                attempts, saved_at = [], time.monotonic()
        if not await self._save(webhook, Progress(cursor, "active", None, attempts)):
            return await self._reload(webhook.id)
        return replace(webhook, cursor=cursor, last_error=None)

    async def _save(self, webhook: Webhook, progress: Progress) -> bool:
        """Write progress back; False if an admin changed the webhook (reload and go on)."""
        if await self._hooks.save(webhook.id, self._owner, webhook.generation, progress, now_ms()):
            return True
        await self._reload(webhook.id)  # raises LeaseLost if it is not ours any more
        return False

    async def _send(
        self,
        webhook: Webhook,
        message_id: str,
        topic: str,
        offset: int,
        body: bytes,
        cursor: int,
        attempts: list[DeliveryAttempt],
    ) -> WebhookStatus:
        """POST one event until it is delivered: ``active`` when it was, ``failing`` when the
        retry schedule ran out, ``disabled`` on a 410."""
        schedule = self._settings.retry_schedule_seconds
        for number in range(1, len(schedule) + 2):
            outcome, code, error, duration = await self._post(webhook, message_id, body)
            self.stats.attempts[outcome] += 1
            attempts.append(
                DeliveryAttempt(
                    webhook.id,
                    message_id,
                    topic,
                    offset,
                    number,
                    outcome,
                    code,
                    duration,
                    now_ms(),
                    error,
                )
            )
            if outcome == "delivered":
                self.stats.delivered += 1
                return "active"
            if outcome == "gone":
                log.warning("webhook %s answered 410: disabled", webhook.id)
                return "disabled"
            if number > len(schedule):
                break
            # The attempts so far become visible (GET .../deliveries) while it waits.
            if not await self._save(webhook, Progress(cursor, "active", error, list(attempts))):
                raise LeaseLost(webhook.id)
            attempts.clear()
            await asyncio.sleep(schedule[number - 1] * random.uniform(0.8, 1.2))
        log.warning(
            "webhook %s: %s failed %d times; marked failing", webhook.id, message_id, number
        )
        return "failing"

    async def _post(
        self, webhook: Webhook, message_id: str, body: bytes
    ) -> tuple[Outcome, int | None, str | None, float]:
        """One POST: (outcome, answer code, error, duration in ms)."""
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(message_id, timestamp, body, webhook.secret),
        }
        started = time.perf_counter()
        code: int | None = None
        error: str | None = None
        try:
            async with asyncio.timeout(self._settings.timeout_seconds):
                async with self._client.stream(
                    "POST", webhook.url, content=body, headers=headers
                ) as answer:
                    code = answer.status_code
                    # Read (at most 1 KiB of) the answer even on success: a connection whose
                    # answer was read to its end is reused, and reuse halves a POST's cost.
                    read = b""
                    async for chunk in answer.aiter_raw():
                        read += chunk
                        if len(read) >= ANSWER_BYTES:
                            break
                    if not 200 <= code < 300:
                        text = read[:ANSWER_BYTES].decode(errors="replace").strip()
                        error = f"HTTP {code}" + (f": {text[:200]}" if text else "")
        except TimeoutError:
            error = f"no answer within {self._settings.timeout_seconds:g} s"
        except Exception as exc:  # refused address, connection refused, TLS, protocol errors
            error = f"{type(exc).__name__}: {exc}"[:300]
        duration = round((time.perf_counter() - started) * 1000, 2)
        if code is not None and 200 <= code < 300:
            return "delivered", code, None, duration
        return ("gone" if code == 410 else "failed"), code, error, duration


__all__ = ["LeaseLost", "WebhookDeliverer", "WebhookStats", "guarded_client"]


def _compiled_filter(webhook: Webhook) -> EventFilter | None:
    """The webhook's filter, compiled (once per expression: compile_filter keeps them). It
    was checked when set; one this version refuses (say, after an upgrade) delivers nothing
    rather than everything: a filter exists to keep events away from an endpoint."""
    if webhook.filter is None:
        return None
    try:
        return compile_filter(webhook.filter)
    except BadFilter as exc:
        log.error("webhook %s: its filter is refused (%s); delivering nothing", webhook.id, exc)
        return compile_filter("false")
